"""The fly_volume source: a fork of the volume, mounted in an agent Machine that runs the real
``flyaway agent`` (here a local process whose volume is a local folder, see fly_hosts),
copies to moto and to the GCS emulator; the agent and the fork are removed afterwards, on
abort and when a later run finds them; bad input fails clearly and leaves nothing running."""

from __future__ import annotations

import base64
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from flyaway.activities.fly.agent import cleanup_fly_source, prepare_fly_source
from flyaway.activities.storage.fly_volume import FlyVolumeSource
from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials, NotFound
from flyaway.failures import WorkerActivityEnvironment
from flyaway.models.fly_agent import AgentCleanupRequest, AgentRequest
from flyaway.models.locations import FlyVolumeLocation
from flyaway.models.plan import WeightsStage
from flyaway.models.status import MigrationState
from flyaway.providers.fly import agent as fly_agent
from flyaway.providers.fly.agent import AGENT_SECRET_PREFIX, VOLUME_ROLE, AgentNames, agent_environment
from tests.fakes.fly_machines import FakeFlyMachinesAPI, FakeMachine, FakeVolume, Reply
from tests.support.env import TEST_AWS_ENV
from tests.support.fly_hosts import LocalFlyHosts
from tests.support.leaks import payloads_in
from tests.support.migrations import (
    abort_migration,
    eventually,
    migration_failure,
    migration_result,
    migration_status,
    run_async,
    run_migration,
    start_migration,
)
from tests.support.plans import manifest_key, s3_location, weights_plan
from tests.support.servers import GcsEmulator, MotoServer, TemporalDevServer, WorkerProcess
from tests.support.trees import make_tree

TOKEN = "fo1_fly-volume-test-token"
APP = "gpu-app"
KEY_ENV = "TEST_AGENT_TEMPORAL_KEY"
MiB = 1024 * 1024


class FlyApp:
    """The fake Fly API with one app serving from a volume; ``hosts`` run its agent Machines, if set."""

    def __init__(self, fake: FakeFlyMachinesAPI) -> None:
        self.fake = fake
        self.hosts: LocalFlyHosts | None = None
        fake.add_app(APP)
        self.volume: FakeVolume = fake.add_volume(APP, "weights", region="ord")
        self.web: FakeMachine = fake.add_machine(APP, "web", config={
            "image": "registry.fly.io/gpu-app:deployment-1", "mounts": [{"volume": self.volume.id, "path": "/w"}]})

    def agents(self) -> list[FakeMachine]:
        return [m for m in self.fake.apps[APP].machines.values() if m.name.startswith("flyaway-agent-")]

    def forks(self) -> list[FakeVolume]:
        """The volume's forks, and their forks, in the order they were made."""
        forks: list[FakeVolume] = []
        for volume in self.fake.apps[APP].volumes.values():
            if volume.source_volume_id in {self.volume.id, *(fork.id for fork in forks)}:
                forks.append(volume)
        return forks

    def assert_nothing_left(self) -> None:
        assert [m.state for m in self.agents()] == ["destroyed"] * len(self.agents())
        assert [v.state for v in self.forks()] == ["destroyed"] * len(self.forks())
        assert self.hosts is None or self.hosts.running() == []
        assert [name for name in self.fake.apps[APP].secrets if name.startswith(AGENT_SECRET_PREFIX)] == [], \
            "the agents' app secrets went with them"
        assert self.web.state == "started" and self.volume.state == "created", "the app kept serving"


@pytest.fixture
def fly_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlyApp]:
    """The fake API alone: Machines it creates run nowhere."""
    monkeypatch.setattr(fly_agent, "POLL_SECONDS", 0.1)
    with FakeFlyMachinesAPI(TOKEN) as fake:
        fake.fork_ready_delay = 0.5
        monkeypatch.setenv("FLY_API_TOKEN", TOKEN)
        monkeypatch.setenv("FLY_API_BASE_URL", fake.base_url)
        yield FlyApp(fake)


@pytest.fixture
def fly(fly_api: FlyApp, tmp_path: Path) -> Iterator[FlyApp]:
    """The fake API whose agent Machines run as local processes."""
    hosts = fly_api.hosts = LocalFlyHosts(fly_api.fake, tmp_path / "fly")
    yield fly_api
    hosts.close()


@pytest.fixture
def temporal_key() -> str:
    return f"tk-{uuid.uuid4().hex}"


@pytest.fixture
def fly_worker(temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path, fly: FlyApp,
               gcs_emulator: GcsEmulator, temporal_key: str) -> Iterator[WorkerProcess]:
    env = {**TEST_AWS_ENV, "FLY_API_TOKEN": TOKEN, "FLY_API_BASE_URL": fly.fake.base_url, KEY_ENV: temporal_key,
           "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint}
    process = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log", env)
    process.start()
    yield process
    process.stop()


def fly_source(server: TemporalDevServer, mount: Path, **fields: Any) -> dict[str, Any]:
    return {"kind": "fly_volume", "app": APP, "volume": "weights", "region": "ord",
            "agent_image": "registry.fly.io/gpu-app:flyaway-agent", "mount_path": str(mount),
            "agent_temporal": {"address": server.address, "tls": False, "api_key_env": KEY_ENV},
            "fork_timeout": "20s", "agent_start_timeout": "60s", **fields}


async def history_payloads(server: TemporalDevServer, workflow_ids: list[str]) -> str:
    client = await server.client()
    data = []
    for workflow_id in workflow_ids:
        async for execution in client.list_workflows(f'WorkflowId = "{workflow_id}"'):
            history = await client.get_workflow_handle(workflow_id, run_id=execution.run_id).fetch_history()
            data += [p.data.decode(errors="replace") for event in history.events for p in payloads_in(event)]
    return "\n".join(data)


@pytest.mark.slow
def test_copy_to_s3_through_the_agent_then_agent_and_fork_are_gone(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FlyApp, moto_server: MotoServer,
        s3: Any, bucket: str, tmp_path: Path, temporal_key: str) -> None:
    assert fly.hosts is not None
    contents = make_tree(fly.hosts.volume_dir(fly.volume.id))
    plan = weights_plan("fly-to-s3", fly_source(temporal_server, tmp_path / "mnt"),
                        s3_location(moto_server.endpoint, bucket, "m"), part_size="5MiB", concurrency=4)

    result = run_migration(temporal_server, plan, fly_worker.task_queue, timeout=120)

    assert result.status.state == MigrationState.completed
    for key, data in contents.items():
        assert s3.get_object(Bucket=bucket, Key=f"m/{key}")["Body"].read() == data, key
    manifest = s3.get_object(Bucket=bucket, Key=f"m/{manifest_key(plan['name'])}")["Body"].read().decode().splitlines()
    assert sorted(json.loads(line)["key"] for line in manifest) == sorted(contents)
    [agent] = fly.agents()
    [fork] = fly.forks()
    assert agent.mounted_volume_ids == [fork.id] and agent.region == "ord"
    assert agent.config["init"]["cmd"][:3] == ["agent", "--task-queue", f"flyaway-agent-{fork.id}"]
    config = fly.hosts.machine_as_the_api_returns_it(APP, agent.id)
    for value in (temporal_key, TEST_AWS_ENV["AWS_ACCESS_KEY_ID"], TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"]):
        assert value not in config, "a credential in the Machine's config"
        assert value in agent.boot_env.values(), "the agent got it as an app secret at boot"
    assert fly.hosts is not None and '"listed source"' in fly.hosts.log_of(agent.id)
    assert '"listed source"' not in fly_worker.logs(), "the agent, not the main worker, read the fork"
    fly.assert_nothing_left()
    payloads = run_async(history_payloads(temporal_server, ["migration-fly-to-s3", "migration-fly-to-s3-weights"]))
    assert KEY_ENV in payloads and temporal_key not in payloads, "the key's name is in history, never its value"


@pytest.mark.slow
def test_three_agents_on_forks_of_one_fork_copy_one_migration_then_all_are_gone(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FlyApp, moto_server: MotoServer,
        s3: Any, bucket: str, tmp_path: Path) -> None:
    assert fly.hosts is not None
    shards = {f"model-0000{n}-of-00006.safetensors": 2 * MiB + n for n in range(1, 7)}
    contents = make_tree(fly.hosts.volume_dir(fly.volume.id), {**shards, "config.json": 611})
    # a unit holds at most piece_size bytes: one per shard (a fork's files are read twice, never split)
    plan = weights_plan("fly-three-agents", fly_source(temporal_server, tmp_path / "mnt", agents=3),
                        s3_location(moto_server.endpoint, bucket, "m"), part_size="1MiB", concurrency=2,
                        parallelism=3, piece_size="2MiB")

    result = run_migration(temporal_server, plan, fly_worker.task_queue, timeout=180)

    assert result.status.state == MigrationState.completed
    for key, data in contents.items():
        assert s3.get_object(Bucket=bucket, Key=f"m/{key}")["Body"].read() == data, key
    agents, forks = fly.agents(), fly.forks()
    assert len(agents) == 3 and len(forks) == 3
    assert [fork.source_volume_id for fork in forks] == [fly.volume.id, forks[0].id, forks[0].id], \
        "the forks after the first are forks of the first"
    assert sorted(volume for agent in agents for volume in agent.mounted_volume_ids) == sorted(f.id for f in forks)
    assert {tuple(agent.config["init"]["cmd"][:3]) for agent in agents} == {
        ("agent", "--task-queue", f"flyaway-agent-{forks[0].id}")}, "one task queue for every agent"
    logs = [fly.hosts.log_of(agent.id) for agent in agents]
    assert all('"agent started"' in log for log in logs), "every agent booted with what it needs"
    copies = [log.count('"copying unit"') for log in logs]
    print(f"copy activities per agent: {copies}")
    assert sum(copies) >= len(shards), "every unit ran on an agent"
    assert '"copying unit"' not in fly_worker.logs(), "the main worker read nothing"
    fly.assert_nothing_left()


@pytest.mark.slow
def test_an_agent_killed_mid_copy_leaves_its_units_to_the_other_agent(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FlyApp, moto_server: MotoServer,
        s3: Any, bucket: str, tmp_path: Path) -> None:
    assert fly.hosts is not None
    contents = make_tree(fly.hosts.volume_dir(fly.volume.id), {f"shard-{n}.bin": 4 * MiB + n for n in range(4)})
    plan = weights_plan("fly-agent-killed", fly_source(temporal_server, tmp_path / "mnt", agents=2),
                        s3_location(moto_server.endpoint, bucket, "m"), part_size="1MiB", concurrency=2,
                        parallelism=2, piece_size="4MiB", bandwidth_limit="2MiB")
    workflow_id = run_async(start_migration(temporal_server, plan, fly_worker.task_queue))

    def copying() -> str | None:
        return next((agent.id for agent in fly.agents() if '"copying unit"' in fly.hosts.log_of(agent.id)), None)

    victim = eventually(copying, 60, what="an agent to copy a unit")
    os.killpg(fly.hosts.processes[victim].pid, signal.SIGKILL)
    result = run_async(migration_result(temporal_server, workflow_id, 180))

    assert result.status.state == MigrationState.completed
    for key, data in contents.items():
        assert s3.get_object(Bucket=bucket, Key=f"m/{key}")["Body"].read() == data, key
    [survivor] = [agent.id for agent in fly.agents() if agent.id != victim]
    assert '"attempt": 2' in fly.hosts.log_of(survivor), "the killed agent's unit ran again on the other"
    fly.assert_nothing_left()


@pytest.mark.slow
def test_copy_to_gcs_through_the_agent(temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FlyApp,
                                       gcs_emulator: GcsEmulator, gcs: Any, gcs_bucket: str, tmp_path: Path) -> None:
    assert fly.hosts is not None
    contents = make_tree(fly.hosts.volume_dir(fly.volume.id), {"config.json": 611, "model.bin": 3 * MiB + 5})
    plan = weights_plan("fly-to-gcs", fly_source(temporal_server, tmp_path / "mnt",
                                                 agent_env=["STORAGE_EMULATOR_HOST"]),
                        {"kind": "gcs", "bucket": gcs_bucket, "prefix": "m"}, part_size="1MiB")

    result = run_migration(temporal_server, plan, fly_worker.task_queue, timeout=120)

    assert result.status.state == MigrationState.completed
    for key, data in contents.items():
        assert gcs.bucket(gcs_bucket).blob(f"m/{key}").download_as_bytes() == data, key
    fly.assert_nothing_left()


@pytest.mark.slow
def test_abort_removes_the_agent_and_the_fork(temporal_server: TemporalDevServer, fly_worker: WorkerProcess,
                                             fly: FlyApp, moto_server: MotoServer, bucket: str,
                                             tmp_path: Path) -> None:
    assert fly.hosts is not None
    make_tree(fly.hosts.volume_dir(fly.volume.id), {"model.bin": 40 * MiB})
    plan = weights_plan("fly-abort", fly_source(temporal_server, tmp_path / "mnt"),
                        s3_location(moto_server.endpoint, bucket, "m"), part_size="5MiB", concurrency=1,
                        bandwidth_limit="2MiB")
    workflow_id = run_async(start_migration(temporal_server, plan, fly_worker.task_queue))
    eventually(lambda: run_async(migration_status(temporal_server, workflow_id)).bytes_total, 60,
               what="the agent to list the fork")
    assert [m.state for m in fly.agents()] == ["started"]

    abort_migration(temporal_server, workflow_id, "wrong bucket")
    fly.assert_nothing_left()


def test_unknown_app_fails_the_plan_check_and_creates_nothing(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FlyApp, moto_server: MotoServer,
        bucket: str, tmp_path: Path) -> None:
    plan = weights_plan("fly-no-app", fly_source(temporal_server, tmp_path / "mnt", app="no-such-app"),
                        s3_location(moto_server.endpoint, bucket, "m"))

    message = migration_failure(temporal_server, plan, fly_worker.task_queue).message
    assert "invalid plan: NotFound: Fly app 'no-such-app' not found" in message
    assert fly.agents() == [] and fly.forks() == []


# ---- the check and the agent's activities, against the fake API without Temporal --------------------

def location(**fields: Any) -> FlyVolumeLocation:
    data = {"kind": "fly_volume", "app": APP, "volume": "weights", "agent_image": "img",
            "agent_temporal": {"address": "temporal.example:7233"}, "fork_timeout": "1s", **fields}
    return FlyVolumeLocation.model_validate(data)


def stage_of(source: FlyVolumeLocation) -> WeightsStage:
    return WeightsStage.model_validate({"source": source.model_dump(), "parallelism": source.agents, "destination": {
        "kind": "s3", "bucket": "b-weights"}})


def test_check_names_what_is_wrong(fly_api: FlyApp) -> None:
    fly = fly_api
    FlyVolumeSource(location(volume=fly.volume.id, region="ord")).check()
    with pytest.raises(InvalidPlan, match=r"not in region 'ams' \(vol_\w+ in ord\); fix weights.source.region"):
        FlyVolumeSource(location(region="ams")).check()
    with pytest.raises(NotFound, match=r"has no volume 'models'; its volumes: weights \(vol_\w+, ord\)"):
        FlyVolumeSource(location(volume="models")).check()
    fly.fake.add_volume(APP, "weights", region="iad")
    with pytest.raises(InvalidPlan, match=r"has 2 volumes named 'weights'.*name one by its id"):
        FlyVolumeSource(location()).check()
    FlyVolumeSource(location(region="iad")).check()
    fly.fake.denied_apps.add(APP)
    with pytest.raises(AccessDenied, match="FLY_API_TOKEN is valid and may manage app 'gpu-app'"):
        FlyVolumeSource(location()).check()


def prepare(source: FlyVolumeLocation, run_id: str = "run-1") -> Any:
    return WorkerActivityEnvironment().run(prepare_fly_source,
                                     AgentRequest(stage=stage_of(source), migration_id="migration-m", run_id=run_id))


def test_a_fork_that_never_becomes_ready_is_deleted(fly_api: FlyApp) -> None:
    fly = fly_api
    fly.fake.fork_ready_delay = None
    with pytest.raises(ApplicationError, match=r"fork vol_\w+ of Fly app 'gpu-app' was still 'hydrating' after 1 s"
                       ) as failure:
        prepare(location())
    assert failure.value.type == "TimedOut" and failure.value.non_retryable
    assert [v.state for v in fly.forks()] == ["destroyed"] and fly.agents() == []


def test_a_variable_the_agent_needs_is_missing_before_anything_is_created(fly_api: FlyApp) -> None:
    with pytest.raises(ApplicationError, match="api_key_env names UNSET_TEST_TEMPORAL_KEY, which is not set") as failure:
        prepare(location(agent_temporal={"address": "t.example:7233", "api_key_env": "UNSET_TEST_TEMPORAL_KEY"}))
    assert failure.value.type == "MissingCredentials"
    assert fly_api.fake.requests_to("POST", ".*") == []


def test_a_token_that_may_not_create_machines_leaves_no_fork(fly_api: FlyApp) -> None:
    fly = fly_api
    fly.fake.fail_next("POST", f"/apps/{APP}/machines", 403, message="unauthorized")
    with pytest.raises(ApplicationError, match="Fly API refused POST /apps/gpu-app/machines") as failure:
        prepare(location())
    assert failure.value.type == "AccessDenied"
    assert [v.state for v in fly.forks()] == ["destroyed"] and fly.agents() == []


def test_a_retry_reuses_its_run_a_later_run_removes_leftovers_and_cleanup_removes_all(
        fly_api: FlyApp) -> None:
    fly = fly_api
    source = location(fork_timeout="20s")
    first = prepare(source, "run-1")
    again = prepare(source, "run-1")
    assert again == first and len(fly.agents()) == 1 and len(fly.forks()) == 1, "a retry makes nothing new"

    second = prepare(source, "run-2")
    states = {m.id: m.state for m in fly.agents()}
    assert states == {first.machine_id: "destroyed", second.machine_id: "started"}
    assert {v.id: v.state for v in fly.forks()} == {first.fork_volume_id: "destroyed",
                                                    second.fork_volume_id: "created"}
    assert second.task_queue == f"flyaway-agent-{second.fork_volume_id}"

    kept = WorkerActivityEnvironment().run(cleanup_fly_source, AgentCleanupRequest(
        source=location(keep_fork=True), migration_id="migration-m"))
    assert kept.machines_destroyed == [second.machine_id] and kept.forks_kept == [second.fork_volume_id]
    report = WorkerActivityEnvironment().run(cleanup_fly_source, AgentCleanupRequest(source=source,
                                                                               migration_id="migration-m"))
    assert report.forks_deleted == [second.fork_volume_id] and report.machines_destroyed == []
    assert fly.web.state == "started", "only agents are touched"


def test_n_agents_mount_forks_of_the_first_fork_and_a_retry_makes_nothing_new(fly_api: FlyApp) -> None:
    fly = fly_api
    source = location(fork_timeout="20s", agents=3)
    agent = prepare(source)
    assert prepare(source) == agent and len(fly.agents()) == 3 and len(fly.forks()) == 3, "a retry makes nothing new"
    forks = fly.forks()
    assert agent.fork_volume_ids == [fork.id for fork in forks] and agent.fork_volume_id == forks[0].id
    assert [fork.source_volume_id for fork in forks] == [fly.volume.id, forks[0].id, forks[0].id]
    machines = {m.id: m for m in fly.agents()}
    assert agent.machine_ids == list(machines) and agent.machine_id == agent.machine_ids[0]
    assert [machines[i].mounted_volume_ids for i in agent.machine_ids] == [[fork.id] for fork in forks]
    assert {machines[i].config["init"]["cmd"][2] for i in agent.machine_ids} == {agent.task_queue}
    names = AgentNames.for_run("migration-m", VOLUME_ROLE, "run-1")
    assert [fork.name for fork in forks] == [names.fork, names.fork + "_1", names.fork + "_2"]

    report = WorkerActivityEnvironment().run(cleanup_fly_source, AgentCleanupRequest(source=source,
                                                                               migration_id="migration-m"))
    assert sorted(report.machines_destroyed) == sorted(agent.machine_ids)
    assert report.forks_deleted == [forks[2].id, forks[1].id, forks[0].id], "a fork's forks go before it"
    fly.assert_nothing_left()


def test_parallelism_below_the_agents_is_refused() -> None:
    with pytest.raises(ValueError, match=r"parallelism \(2\) is below source.agents \(3\).*"
                                         r"set parallelism to at least 3"):
        WeightsStage.model_validate({"source": location(agents=3).model_dump(), "parallelism": 2,
                                     "destination": {"kind": "s3", "bucket": "b-weights"}})


def test_cleanup_never_touches_a_machine_without_the_agent_metadata(fly_api: FlyApp) -> None:
    fly = fly_api
    names = AgentNames.for_run("migration-m", VOLUME_ROLE, "run-1")
    impostor = fly.fake.add_machine(APP, names.machine, config={"image": "x", "metadata": {"flyaway_run": "x"}})
    # an API that ignored the metadata filter would list every Machine
    fly.fake.list_machines = lambda app, query, body: Reply(200, [m.to_json() for m in app.machines.values()])
    WorkerActivityEnvironment().run(cleanup_fly_source, AgentCleanupRequest(source=location(), migration_id="migration-m"))
    assert impostor.state == "started"


def test_agent_environment_comes_from_the_worker(tmp_path: Path) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text('{"type": "service_account"}')
    environ = {"TEMPORAL_CLOUD_KEY": "secret-key", "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
               "HTTPS_PROXY": "http://proxy:3128", "FLYAWAY_CODEC_KEYS": "k1:abc"}
    source = location(agent_temporal={"address": "ns.acct.tmprl.cloud:7233", "api_key_env": "TEMPORAL_CLOUD_KEY"},
                      agent_env=["HTTPS_PROXY"])
    to_gcs = WeightsStage.model_validate({"source": source.model_dump(),
                                          "destination": {"kind": "gcs", "bucket": "bb-w"}})

    env, files = agent_environment(source, to_gcs.destination, "ns.acct", environ)

    assert env == {"TEMPORAL_ADDRESS": "ns.acct.tmprl.cloud:7233", "TEMPORAL_NAMESPACE": "ns.acct",
                   "TEMPORAL_API_KEY": "secret-key", "HTTPS_PROXY": "http://proxy:3128", "FLYAWAY_CODEC_KEYS": "k1:abc",
                   "GOOGLE_APPLICATION_CREDENTIALS": "/etc/flyaway/GOOGLE_APPLICATION_CREDENTIALS.json"}
    assert [(f.guest_path, base64.b64decode(f.raw_value or "")) for f in files] == [
        ("/etc/flyaway/GOOGLE_APPLICATION_CREDENTIALS.json", b'{"type": "service_account"}')]
    with pytest.raises(MissingCredentials, match=r"agent_temporal.api_key_env names TEMPORAL_CLOUD_KEY, which is not set"):
        agent_environment(source, to_gcs.destination, "ns.acct", {})
    s3 = stage_of(source)
    with pytest.raises(MissingCredentials, match=r"weights.destination names AWS_ACCESS_KEY_ID"):
        agent_environment(source, s3.destination, "ns.acct", {"TEMPORAL_CLOUD_KEY": "k", "HTTPS_PROXY": "p"})
