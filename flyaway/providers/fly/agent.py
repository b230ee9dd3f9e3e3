"""The agent on Fly: a Machine in the app running ``flyaway agent`` on its own task queue, then removed.

A ``fly_volume`` source's agent mounts a fork of the volume (made first, deleted with the agent);
with ``agents: N``, N agents poll one task queue, each on its own fork (the first fork's forks), and
the copy's fan-out hands its activities to whichever is free. A ``fly_app`` source's agent needs no
volume: Fly puts the app's secrets into its env, as into every Machine of the app.

Everything an agent run makes is named after its migration, its role and its run, so any later
call finds it without a record of its own:

- the agent Machine carries the metadata ``flyaway_role`` (``volume-agent`` or ``secrets-agent``),
  ``flyaway_migration`` and ``flyaway_run``, and a name unique per run (the client finds it again
  by that name after an ambiguous create);
- the fork is named ``flyaway_<migration tag>_<run tag>`` (volumes have no metadata, and their
  names are at most 30 characters), the forks of further agents ``..._<n>``, and their Machines
  ``...-<n>``.

A retried :func:`prepare_agent` reuses what earlier attempts of its run made; agents (and forks) of other
runs of the same migration and role are leftovers of a run that crashed, and it removes them first.

The agent Machine gets what it needs from this worker's environment: the Temporal connection
(the API key's value, never its name's value in a plan or in history), the destination's
credentials, the payload codec keys, and the variables the plan lists in ``agent_env``. Only the
Temporal address, namespace and TLS setting and the worker's policy go into the Machine's config
(which anyone with a read token for the app can fetch from the Machines API). Every value goes in
as an app secret named ``FLYAWAY_AGENT_<migration>_<role>_<run>_<NAME>``, set just before the Machine
is created and unset when its agents are removed (success, failure, abort, or a later run finding a
leftover); Fly puts it into the env of Machines that boot meanwhile, and the agent takes back the
names it stands for (:func:`adopt_agent_secrets`). A Google key file travels as a Machine file whose
content is such a secret. Fly adds the app's own secrets to that env at boot, so a secret named like
one of those variables would leave the agent one value for two meanings: :func:`prepare_agent`
refuses that before creating anything.

Nothing here knows Temporal: long waits call the ``heartbeat`` they are given (an activity passes
its own), and the activities in :mod:`flyaway.activities.fly.agent` only open the client.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from flyaway.codec import KEYS_ENV
from flyaway.errors import FlyawayError, InvalidPlan, MissingCredentials, NotFound, TimedOut
from flyaway.models.credentials import CredentialUser
from flyaway.models.fly_agent import AgentCleanupReport, AgentRequest, FlyAgent
from flyaway.models.locations import DestinationLocation, FlyVolumeLocation
from flyaway.models.secrets import FlyAppSource, SecretDestination
from flyaway.policy import POLICY_ENVS, load_policy
from flyaway.providers.fly.api import (
    Machine,
    MachineConfig,
    MachineFile,
    MachineGuest,
    MachineInit,
    MachineMount,
    MachineRestart,
    Volume,
)
from flyaway.providers.fly.client import FlyClient, MachineWaitTimeout

log = structlog.get_logger(__name__)

VOLUME_ROLE = "volume-agent"
SECRETS_ROLE = "secrets-agent"
AGENT_TASK_QUEUE_PREFIX = "flyaway-agent-"
#: a fork is "hydrating" while Fly copies its blocks, then "created": ready to mount
READY_VOLUME_STATE = "created"
POLL_SECONDS = 2.0
DETACH_TIMEOUT_SECONDS = 120.0
DESTROY_TIMEOUT_SECONDS = 120.0
#: where a key file the destination reads (a Google service account's) lands in the agent Machine
KEY_FILE_DIR = "/etc/flyaway/"
#: app secrets flyaway sets for its agents start with this; the plain env variable below names one agent's prefix
AGENT_SECRET_PREFIX = "FLYAWAY_AGENT_"
AGENT_SECRETS_ENV = "FLYAWAY_AGENT_SECRETS"
#: the agent's env that is no secret: it stays in the Machine's config
_PLAIN_ENV = frozenset({"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_TLS", *POLICY_ENVS})


AgentSource = FlyVolumeLocation | FlyAppSource
#: called while a wait goes on, so whoever waits can show it is alive
Heartbeat = Callable[[], None]


def _tag(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def role_of(source: AgentSource) -> str:
    return VOLUME_ROLE if isinstance(source, FlyVolumeLocation) else SECRETS_ROLE


def _deletes_forks(source: AgentSource) -> bool:
    return isinstance(source, FlyVolumeLocation) and not source.keep_fork


@dataclass(frozen=True)
class AgentNames:
    """Names and metadata of a migration's agents of one role; ``run_tag`` is set for one run's."""

    migration_id: str
    role: str
    run_tag: str = ""

    @classmethod
    def for_run(cls, migration_id: str, role: str, run_id: str) -> AgentNames:
        return cls(migration_id, role, _tag(run_id))

    @property
    def fork_prefix(self) -> str:
        return f"flyaway_{_tag(self.migration_id)}_"

    @property
    def fork(self) -> str:
        return self.fork_prefix + self.run_tag

    @property
    def machine(self) -> str:
        return f"flyaway-agent-{_tag(self.migration_id)}-{self.run_tag}"

    def fork_of(self, index: int) -> str:
        """The fork of the run's agent number ``index`` (0: the first, named as a run with one agent)."""
        return self.fork + (f"_{index}" if index else "")

    def machine_of(self, index: int) -> str:
        return self.machine + (f"-{index}" if index else "")

    @property
    def migration_metadata(self) -> dict[str, str]:
        return {"flyaway_role": self.role, "flyaway_migration": self.migration_id}

    @property
    def run_metadata(self) -> dict[str, str]:
        return {**self.migration_metadata, "flyaway_run": self.run_tag}

    def run_of_machine(self, machine: Machine) -> str | None:
        """The run tag of one of this migration's agents, None for any other Machine."""
        metadata = machine.metadata
        if any(metadata.get(key) != value for key, value in self.migration_metadata.items()):
            return None
        return metadata.get("flyaway_run", "")

    def run_of_fork(self, volume: Volume) -> str | None:
        if not volume.name.startswith(self.fork_prefix):
            return None
        return volume.name.removeprefix(self.fork_prefix).partition("_")[0]

    @property
    def _secret_migration_prefix(self) -> str:
        return f"{AGENT_SECRET_PREFIX}{_tag(self.migration_id)}_{self.role.partition('-')[0]}_".upper()

    @property
    def secret_prefix(self) -> str:
        """What the names of this run's app secrets start with."""
        return f"{self._secret_migration_prefix}{self.run_tag.upper()}_"

    def run_of_secret(self, name: str) -> str | None:
        """The run tag of one of this migration's agent secrets (of this role), None for any other secret."""
        if not name.startswith(self._secret_migration_prefix):
            return None
        return name.removeprefix(self._secret_migration_prefix).partition("_")[0].lower()


def resolve_volume(client: FlyClient, location: FlyVolumeLocation) -> Volume:
    """The volume the plan names (by id, else by name), checked against the plan's region."""
    volumes = client.list_volumes()
    by_id = [v for v in volumes if v.id == location.volume]
    matches = by_id or [v for v in volumes if v.name == location.volume]
    where = f"Fly app '{location.app}'"
    if not matches:
        known = ", ".join(sorted(f"{v.name} ({v.id}, {v.region})" for v in volumes)) or "none"
        raise NotFound(f"{where} has no volume '{location.volume}'; its volumes: {known}")
    if location.region is not None:
        in_region = [v for v in matches if v.region == location.region]
        if not in_region:
            found = ", ".join(sorted(f"{v.id} in {v.region}" for v in matches))
            raise InvalidPlan(f"volume '{location.volume}' of {where} is not in region '{location.region}' "
                              f"({found}); fix weights.source.region")
        matches = in_region
    if len(matches) > 1:
        ids = ", ".join(sorted(f"{v.id} ({v.region})" for v in matches))
        raise InvalidPlan(f"{where} has {len(matches)} volumes named '{location.volume}' ({ids}); name one by "
                          f"its id in weights.source.volume")
    return matches[0]


# ---- the agent Machine's config ----------------------------------------------------------------

def _worker_value(name: str, environ: Mapping[str, str], field: str) -> str:
    value = environ.get(name)
    if not value:
        raise MissingCredentials(f"{field} names {name}, which is not set in the worker's environment; the agent "
                                 f"Machine gets its value from there")
    return value


def _key_file(name: str, path: Path) -> MachineFile:
    """The key file variable ``name`` points to on the worker, as a file of the agent Machine."""
    if not path.is_file():
        raise MissingCredentials(f"{name} names {path}, which is not a file on the worker")
    return MachineFile(guest_path=f"{KEY_FILE_DIR}{name}.json", raw_value=base64.b64encode(path.read_bytes()).decode())


def agent_environment(source: AgentSource, destination: DestinationLocation | SecretDestination, namespace: str,
                      environ: Mapping[str, str]) -> tuple[dict[str, str], list[MachineFile]]:
    """The agent Machine's env and files, with values from the worker's environment ``environ``;
    ``namespace`` is the migration's."""
    section = "weights" if isinstance(source, FlyVolumeLocation) else "secrets"
    temporal = source.agent_temporal
    env = {"TEMPORAL_ADDRESS": temporal.address, "TEMPORAL_NAMESPACE": namespace}
    if temporal.tls is not None:
        env["TEMPORAL_TLS"] = "true" if temporal.tls else "false"
    if temporal.api_key_env:
        env["TEMPORAL_API_KEY"] = _worker_value(temporal.api_key_env, environ,
                                                f"{section}.source.agent_temporal.api_key_env")
    files: list[MachineFile] = []
    if isinstance(destination, CredentialUser):  # the variables its adapter reads, as its own section says
        for name in destination.credential_envs():
            if name not in destination.credential_files():
                env[name] = _worker_value(name, environ, f"{section}.destination")
            elif environ.get(name):
                files.append(_key_file(name, Path(environ[name])))
                env[name] = files[-1].guest_path
    if environ.get(KEYS_ENV):
        env[KEYS_ENV] = environ[KEYS_ENV]
    for name in source.agent_env:
        env[name] = _worker_value(name, environ, f"{section}.source.agent_env")
    return env, files


def check_secret_names(source: AgentSource, env: Mapping[str, str], secret_names: list[str]) -> None:
    """Fly adds the app's secrets to the agent's env: one named like a variable flyaway gives the agent
    would leave the agent only one of the two values, whichever Fly lets win."""
    clashes = sorted(set(env) & set(secret_names))
    if clashes:
        raise InvalidPlan(f"Fly app '{source.app}' has secrets named {', '.join(clashes)}, which the agent Machine "
                          f"is also given from the worker (Temporal connection, destination credentials, "
                          f"agent_env); name the credentials by other variables (the destination's *_env fields) "
                          f"or unset those secrets in the app")


def agent_config(source: AgentSource, destination: DestinationLocation | SecretDestination,
                 mounts: list[MachineMount], task_queue: str, namespace: str, secret_prefix: str,
                 environ: Mapping[str, str] = os.environ) -> tuple[MachineConfig, dict[str, str]]:
    """An agent Machine (with the fork mounted, for a volume) running ``flyaway agent`` on its own queue,
    and the app secrets (named with ``secret_prefix``) that carry every value its config must not show."""
    env, files = agent_environment(source, destination, namespace, environ)
    env.update(load_policy(environ).to_env())
    key_files = {file.guest_path for file in files}
    secrets = {secret_prefix + name: value for name, value in env.items()
               if name not in _PLAIN_ENV and value not in key_files}
    env = {name: value for name, value in env.items() if secret_prefix + name not in secrets}
    env[AGENT_SECRETS_ENV] = secret_prefix
    for index, file in enumerate(files):
        secrets[f"{secret_prefix}FILE_{index}"] = file.raw_value or ""
    files = [MachineFile(guest_path=file.guest_path, secret_name=f"{secret_prefix}FILE_{index}")
             for index, file in enumerate(files)]
    return MachineConfig(
        image=source.agent_image, env=env, files=files, mounts=mounts,
        guest=MachineGuest(cpu_kind="performance", cpus=source.agent_cpus, memory_mb=source.agent_memory_mb),
        init=MachineInit(entrypoint=["flyaway"], cmd=["agent", "--task-queue", task_queue, "--json-logs"]),
        restart=MachineRestart(policy="on-failure", max_retries=5), auto_destroy=False), secrets


def adopt_agent_secrets(environ: MutableMapping[str, str] = os.environ) -> None:
    """In the agent: take this agent's app secrets back under the names they stand for, and drop every
    agent secret Fly put into the env (another agent's, or a leftover's), which is no app secret to copy."""
    prefix = environ.pop(AGENT_SECRETS_ENV, "")
    for name in [name for name in environ if name.startswith(AGENT_SECRET_PREFIX)]:
        value = environ.pop(name)
        if prefix and name.startswith(prefix):
            environ[name.removeprefix(prefix)] = value


def app_secret_names(client: FlyClient) -> list[str]:
    """The app's own secrets: flyaway's agent secrets left out."""
    return sorted(secret.name for secret in client.list_secrets() if not secret.name.startswith(AGENT_SECRET_PREFIX))


# ---- finding, starting and removing agents -----------------------------------------------------

def _poll(check: Callable[[], bool], timeout: float, on_timeout: Callable[[], FlyawayError],
          heartbeat: Heartbeat) -> None:
    """Call ``check`` every few seconds, heartbeating, until it is true; raise ``on_timeout()`` when time is up."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise on_timeout()
        heartbeat()
        time.sleep(POLL_SECONDS)


def _wait_ready(client: FlyClient, fork: Volume, timeout: float, heartbeat: Heartbeat) -> None:
    current = fork

    def ready() -> bool:
        nonlocal current
        current = client.get_volume(fork.id)
        return current.state == READY_VOLUME_STATE

    _poll(ready, timeout, lambda: TimedOut(
        f"fork {fork.id} of Fly app '{client.app}' was still '{current.state}' after {timeout:g} s; a large volume "
        f"may need a longer weights.source.fork_timeout"), heartbeat)


def _wait_detached(client: FlyClient, volume_id: str, heartbeat: Heartbeat) -> None:
    def detached() -> bool:
        try:
            return client.get_volume(volume_id).attached_machine_id is None
        except NotFound:
            return True

    _poll(detached, DETACH_TIMEOUT_SECONDS, lambda: TimedOut(
        f"volume {volume_id} of Fly app '{client.app}' is still attached to a Machine after "
        f"{DETACH_TIMEOUT_SECONDS:g} s"), heartbeat)


def remove_agents(client: FlyClient, names: AgentNames, runs: Callable[[str], bool], delete_forks: bool,
                  heartbeat: Heartbeat) -> AgentCleanupReport:
    """Destroy the migration's agent Machines of the ``runs`` chosen, then delete (or keep) their forks
    (volume agents only: a secrets agent has none)."""
    report = AgentCleanupReport()
    # the API filters by metadata already; checking it again here means that a filter the API
    # ignored can never make this destroy the app's own Machines
    machines = [m for m in client.list_machines(metadata=names.migration_metadata)
                if m.state != "destroyed" and (run := names.run_of_machine(m)) is not None and runs(run)]
    for machine in machines:
        client.destroy(machine.id, force=True)
    for machine in machines:
        client.wait_machine(machine.id, "destroyed", timeout=DESTROY_TIMEOUT_SECONDS, progress=heartbeat)
        report.machines_destroyed.append(machine.id)
    secrets = [secret.name for secret in client.list_secrets()
               if (run := names.run_of_secret(secret.name)) is not None and runs(run)]
    if secrets:
        client.set_secrets(dict.fromkeys(secrets))
    # a fork of a fork (an agent after the first) goes before the fork it was made from
    for fork in sorted(client.list_volumes() if names.role == VOLUME_ROLE else [], key=lambda v: v.name, reverse=True):
        run = names.run_of_fork(fork)
        if run is None or not runs(run):
            continue
        if not delete_forks:
            report.forks_kept.append(fork.id)
            continue
        _wait_detached(client, fork.id, heartbeat)
        client.delete_volume(fork.id)
        report.forks_deleted.append(fork.id)
    if report.machines_destroyed or report.forks_deleted:
        log.info("fly agents removed", app=client.app, migration=names.migration_id, role=names.role,
                 machines=report.machines_destroyed, forks=report.forks_deleted)
    return report


def _fork(client: FlyClient, name: str, of: Volume) -> Volume:
    """The fork named ``name`` (made by an earlier attempt of the run), else a new fork of ``of``."""
    fork = next((v for v in client.list_volumes() if v.name == name), None)
    return fork if fork is not None else client.fork_volume(of.id, name=name, region=of.region)


def _ready_forks(client: FlyClient, source: FlyVolumeLocation, names: AgentNames, volume: Volume,
                 heartbeat: Heartbeat) -> list[Volume]:
    """One fork per agent: the first of the volume, the others (made at once) of the first, which nothing
    writes, so every agent reads the same bytes however the app changes its volume meanwhile."""
    timeout = source.fork_timeout.total_seconds()
    first = _fork(client, names.fork_of(0), volume)
    _wait_ready(client, first, timeout, heartbeat)
    others = [_fork(client, names.fork_of(index), first) for index in range(1, source.agents)]
    for fork in others:
        _wait_ready(client, fork, timeout, heartbeat)
    return [first, *others]


def _start_agent(client: FlyClient, request: AgentRequest, names: AgentNames, volume: Volume | None,
                 secret_names: list[str], namespace: str, heartbeat: Heartbeat) -> FlyAgent:
    """Start the run's agent Machines (one per fork, for a volume), all polling one task queue."""
    source = request.source
    forks: list[Volume | None] = [None]
    mounts: list[list[MachineMount]] = [[]]
    if isinstance(source, FlyVolumeLocation) and volume is not None:
        forks = list(_ready_forks(client, source, names, volume, heartbeat))
        mounts = [[MachineMount(volume=fork.id, path=source.mount_path)] for fork in forks if fork]
    first_fork = forks[0]
    task_queue = AGENT_TASK_QUEUE_PREFIX + first_fork.id if first_fork else names.machine
    machines = {m.name: m for m in client.list_machines(metadata=names.run_metadata) if m.state != "destroyed"}
    missing = [index for index in range(len(forks)) if names.machine_of(index) not in machines]
    for index in missing:
        fork = forks[index]
        config, secrets = agent_config(source, request.stage.destination, mounts[index], task_queue,
                                       namespace, names.secret_prefix)
        if index == missing[0]:
            client.set_secrets(secrets)  # before the Machines boot: Fly injects the secrets set by then
        machines[names.machine_of(index)] = client.create_machine(
            config, region=fork.region if fork else None, name=names.machine_of(index), metadata=names.run_metadata)
    agents = [machines[names.machine_of(index)] for index in range(len(forks))]
    timeout = source.agent_start_timeout.total_seconds()
    for machine in agents:
        try:
            client.wait_machine(machine.id, "started", timeout=timeout, progress=heartbeat)
        except MachineWaitTimeout as error:
            raise TimedOut(f"the agent Machine did not start: {error}; see `fly logs -a {client.app} "
                           f"--machine {machine.id}`") from None
    fork_ids = [fork.id for fork in forks if fork]
    log.info("fly agents started", app=client.app, role=names.role, machine_ids=[m.id for m in agents],
             forks=fork_ids, task_queue=task_queue)
    return FlyAgent(app=client.app, region=agents[0].region, machine_id=agents[0].id, task_queue=task_queue,
                    source_volume_id=volume.id if volume else None, fork_volume_id=fork_ids[0] if fork_ids else None,
                    machine_ids=[m.id for m in agents], fork_volume_ids=fork_ids, secret_names=secret_names)


def prepare_agent(client: FlyClient, request: AgentRequest, namespace: str, heartbeat: Heartbeat) -> FlyAgent:
    """Start the agent Machine of ``request``'s run (on a fork of the volume, for a volume) in ``namespace``;
    reuses what an earlier attempt of the run made, removes the leftovers of other runs first.

    A failure that retrying cannot fix removes what this run made before it is raised.
    """
    source = request.source
    names = AgentNames.for_run(request.migration_id, role_of(source), request.run_id)
    # a variable the agent needs and the worker lacks fails here, before anything is created
    env, _ = agent_environment(source, request.stage.destination, namespace, os.environ)
    secret_names = app_secret_names(client)
    check_secret_names(source, env, secret_names)
    volume = resolve_volume(client, source) if isinstance(source, FlyVolumeLocation) else None
    remove_agents(client, names, lambda run: run != names.run_tag, _deletes_forks(source), heartbeat)
    try:
        return _start_agent(client, request, names, volume, secret_names, namespace, heartbeat)
    except FlyawayError:
        remove_agents(client, names, lambda run: run == names.run_tag, True, heartbeat)
        raise


def cleanup_agents(client: FlyClient, source: AgentSource, migration_id: str,
                   heartbeat: Heartbeat) -> AgentCleanupReport:
    """Destroy every agent Machine of the migration for ``source`` and delete their forks (unless ``keep_fork``);
    nothing to do in an app that is gone."""
    try:
        client.get_app()
    except NotFound:
        return AgentCleanupReport()
    return remove_agents(client, AgentNames(migration_id, role_of(source)), lambda run: True,
                         _deletes_forks(source), heartbeat)
