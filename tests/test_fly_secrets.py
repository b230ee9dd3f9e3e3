"""The fly_app secrets source end to end: the fake Fly API puts the app's secrets into the env of an
agent Machine it creates in the app, which runs the real ``flyaway agent`` (a local process, see
fly_hosts) and writes the values to the Secret Manager fake itself; the agent is removed afterwards,
also when the sync fails, and no value reaches the workflow history, the logs or the Fly API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from flyaway.activities.fly.agent import cleanup_fly_source, prepare_fly_source
from flyaway.activities.secrets.base import digest_key
from flyaway.codec import KEYS_ENV, EncryptionCodec, generate_key
from flyaway.failures import WorkerActivityEnvironment
from flyaway.models.fly_agent import AgentCleanupRequest, AgentRequest
from flyaway.models.secrets import GcpSecretManagerDestination, SecretsReport, SecretsStage, secret_digest
from flyaway.models.status import MigrationState, MigrationStatus, StageState
from tests.fakes.fly_machines import FakeFlyMachinesAPI, FakeMachine
from tests.fakes.gcp_secret_manager import FakeSecretManager
from tests.support.fly_hosts import LocalFlyHosts
from tests.support.leaks import assert_no_value, executions, history_texts, secret_values, temporal_show
from tests.support.migrations import (
    abort_migration,
    eventually,
    migration_failure,
    migration_status,
    run_async,
    run_migration,
    start_migration,
)
from tests.support.servers import TemporalDevServer, WorkerProcess

TOKEN = "fo1_fly-secrets-test-token"
APP = "gpu-app"
PROJECT = "fly-secrets-test"
KEY_ENV = "TEST_AGENT_TEMPORAL_KEY"


class FlyApp:
    """The fake Fly API with one app serving; Machines it creates with a ``flyaway`` command run locally."""

    def __init__(self, fake: FakeFlyMachinesAPI, root: Path) -> None:
        self.fake = fake
        self.hosts = LocalFlyHosts(fake, root)
        fake.add_app(APP)
        self.web: FakeMachine = fake.add_machine(APP, "web")

    def set_secrets(self, values: dict[str, str]) -> None:
        """As ``fly secrets set`` does it: through the Machines API."""
        response = httpx.post(f"{self.fake.base_url}/apps/{APP}/secrets", json={"values": values},
                              headers={"Authorization": f"Bearer {TOKEN}"})
        response.raise_for_status()
        assert all("value" not in secret for secret in response.json()["secrets"])

    def agents(self) -> list[FakeMachine]:
        return [m for m in self.fake.apps[APP].machines.values()
                if m.config.get("metadata", {}).get("flyaway_role") == "secrets-agent"]

    def assert_no_agent_left(self) -> None:
        assert [m.state for m in self.agents()] == ["destroyed"] * len(self.agents())
        assert self.hosts.running() == []
        assert self.hosts.agent_secrets(APP) == [], "the agents' app secrets went with them"
        assert self.web.state == "started", "the app kept serving"

    def requests_by_flyaway(self) -> str:
        """Everything flyaway sent to the Fly API (the test's own ``secrets set`` left out)."""
        return json.dumps([[r.method, r.path, r.query, r.body] for r in self.fake.requests
                           if (r.method, r.path) != ("POST", f"/apps/{APP}/secrets")])


@pytest.fixture
def fly(tmp_path: Path) -> Iterator[FlyApp]:
    with FakeFlyMachinesAPI(TOKEN) as fake:
        app = FlyApp(fake, tmp_path / "fly")
        yield app
        app.hosts.close()


@pytest.fixture
def gcp() -> Iterator[FakeSecretManager]:
    with FakeSecretManager() as fake:
        yield fake


@pytest.fixture
def temporal_key() -> str:
    return f"tk-{uuid.uuid4().hex}"


@pytest.fixture
def codec_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = generate_key("fly-secrets")
    monkeypatch.setenv(KEYS_ENV, key)  # the worker, the agent (through the worker) and this test's client
    return key


@pytest.fixture
def fly_worker(temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path, fly: FlyApp,
               temporal_key: str, codec_key: str) -> Iterator[WorkerProcess]:
    env = {"FLY_API_TOKEN": TOKEN, "FLY_API_BASE_URL": fly.fake.base_url, KEY_ENV: temporal_key}
    process = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log", env)
    process.start()
    yield process
    process.stop()


def secrets_plan(name: str, tmp_path: Path, server: TemporalDevServer, gcp: FakeSecretManager,
                 **secrets: Any) -> dict[str, Any]:
    weights = tmp_path / "weights"
    weights.mkdir(exist_ok=True)
    (weights / "config.json").write_text('{"model": "tiny"}')
    return {"name": name,
            "weights": {"source": {"kind": "local", "path": str(weights)},
                        "destination": {"kind": "local", "path": str(tmp_path / f"landed-{name}")}},
            "secrets": {"source": {"kind": "fly_app", "app": APP, "agent_image": f"registry.fly.io/{APP}:flyaway-agent",
                                   "agent_temporal": {"address": server.address, "tls": False, "api_key_env": KEY_ENV},
                                   "agent_start_timeout": "60s"},
                        "destination": {"kind": "gcp_secret_manager", "project": PROJECT, "endpoint": gcp.endpoint,
                                        "prefix": "fly-"},
                        **secrets}}


async def sync_reports(server: TemporalDevServer, workflow_id: str) -> list[SecretsReport]:
    """The results of the migration's sync activities, decoded as a key holder sees them."""
    client = await server.client()
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    synced = {event.event_id for event in history.events
              if event.activity_task_scheduled_event_attributes.activity_type.name == "flyaway.secrets.sync"}
    reports = []
    for event in history.events:
        completed = event.activity_task_completed_event_attributes
        if event.HasField("activity_task_completed_event_attributes") and completed.scheduled_event_id in synced:
            reports += await client.data_converter.decode(completed.result.payloads, [SecretsReport])
    return reports


@pytest.mark.slow
def test_fly_app_secrets_move_through_an_agent_machine_and_never_show(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FlyApp, gcp: FakeSecretManager,
        tmp_path: Path, temporal_key: str) -> None:
    values = secret_values()
    fly.set_secrets(values)

    first = run_migration(temporal_server, secrets_plan("fly-secrets", tmp_path, temporal_server, gcp),
                          fly_worker.task_queue, timeout=120)

    assert first.status.stage_status("secrets").state == StageState.completed
    for name, value in values.items():
        assert gcp.value(PROJECT, f"fly-{name}") == value.encode()
    [report] = run_async(sync_reports(temporal_server, "migration-fly-secrets"))
    assert {r.name: (r.outcome, r.digest) for r in report.secrets} == {
        name: ("created", secret_digest(value, digest_key(GcpSecretManagerDestination(
            kind="gcp_secret_manager", project=PROJECT, endpoint=gcp.endpoint, prefix="fly-"))))
        for name, value in values.items()}
    [agent] = fly.agents()
    assert agent.config["init"]["cmd"][:2] == ["agent", "--task-queue"] and agent.mounted_volume_ids == []
    config = fly.hosts.machine_as_the_api_returns_it(APP, agent.id)
    assert temporal_key not in config and temporal_key in agent.boot_env.values(), "an app secret, not config"
    assert not set(values) & set(agent.config["env"]), "the values came from Fly at boot, not from flyaway"
    assert "secrets synced" in fly.hosts.log_of(agent.id) and "secrets synced" not in fly_worker.logs(), \
        "the agent, not the main worker, read and wrote the values"
    fly.assert_no_agent_left()
    assert fly.fake.requests_to("POST", f"/apps/{APP}/volumes") == [], "a secrets agent needs no fork"

    again = run_migration(temporal_server, secrets_plan("fly-secrets-again", tmp_path, temporal_server, gcp),
                          fly_worker.task_queue, timeout=120)

    assert again.status.state == MigrationState.completed
    [report] = run_async(sync_reports(temporal_server, "migration-fly-secrets-again"))
    assert {r.name: r.outcome for r in report.secrets} == dict.fromkeys(values, "unchanged")
    assert gcp.version_count(PROJECT) == len(values), "a re-run adds no version"
    assert len(fly.agents()) == 2
    fly.assert_no_agent_left()

    async def histories() -> tuple[list[tuple[str, str]], list[str]]:
        client = await temporal_server.client()
        runs = await executions(client, fly_worker.task_queue)
        return runs, await history_texts(client, EncryptionCodec.from_env(), runs)

    runs, texts = run_async(histories())
    assert any("LEAK_HF_TOKEN" in text for text in texts), "decoding found no payloads: the search is blind"
    for text in texts:
        assert_no_value(values, "the history (client API, decoded)", text)
    for workflow, run in runs:
        assert_no_value(values, f"`temporal workflow show` of {workflow}", temporal_show(temporal_server, workflow, run))
    assert_no_value(values, "the worker log", fly_worker.logs())
    for machine in fly.agents():
        assert_no_value(values, f"the agent {machine.id}'s log", fly.hosts.log_of(machine.id))
    assert_no_value(values, "what flyaway sent to the Fly API", fly.requests_by_flyaway())


@pytest.mark.slow
def test_a_failed_sync_removes_the_agent_and_abort_ends_the_migration(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FlyApp, gcp: FakeSecretManager,
        tmp_path: Path) -> None:
    fly.set_secrets({"HF_TOKEN": "hf_value_1234"})
    gcp.read_only.add(PROJECT)  # the plan check only reads, so it passes; the first write is refused
    workflow_id = run_async(start_migration(temporal_server, secrets_plan("fly-secrets-denied", tmp_path,
                                                                          temporal_server, gcp),
                                            fly_worker.task_queue))

    def waiting() -> MigrationStatus | None:
        status = run_async(migration_status(temporal_server, workflow_id))
        return status if status.state == MigrationState.waiting_for_operator else None

    status = eventually(waiting, timeout=90, what="the secrets stage to wait for the operator")

    assert status.stage == "secrets" and "AccessDenied" in (status.last_error or "")
    assert len(fly.agents()) == 1
    fly.assert_no_agent_left()
    assert gcp.secrets == {}

    assert abort_migration(temporal_server, workflow_id, "no rights").type == "Aborted"
    fly.assert_no_agent_left()


def test_a_name_the_fly_app_lacks_fails_before_anything_is_written(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FlyApp, gcp: FakeSecretManager,
        tmp_path: Path) -> None:
    fly.set_secrets({"HF_TOKEN": "hf_value_1234"})
    plan = secrets_plan("fly-secrets-missing", tmp_path, temporal_server, gcp, names=["HF_TOKEN", "OPENAI_API_KEY"])

    message = migration_failure(temporal_server, plan, fly_worker.task_queue).message
    assert message == ("invalid plan: InvalidPlan: Fly app gpu-app lacks OPENAI_API_KEY; nothing was written (list "
                       "only names it holds, or set on_missing: skip)")
    assert gcp.secrets == {} and fly.agents() == []
    assert fly.fake.requests_to("POST", f"/apps/{APP}/machines") == []


# ---- the agent's activities for a fly_app source, against the fake API without Temporal ------------------

@pytest.fixture
def fly_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFlyMachinesAPI]:
    """The fake API alone: Machines it creates run nowhere."""
    with FakeFlyMachinesAPI(TOKEN) as fake:
        fake.add_app(APP)
        fake.add_secret(APP, "HF_TOKEN", "hf_value_1234")
        monkeypatch.setenv("FLY_API_TOKEN", TOKEN)
        monkeypatch.setenv("FLY_API_BASE_URL", fake.base_url)
        yield fake


def agent_request(run_id: str, **source: Any) -> AgentRequest:
    stage = SecretsStage.model_validate({"source": {
        "kind": "fly_app", "app": APP, "agent_image": "img", "agent_temporal": {"address": "temporal.example:7233"},
        **source}, "destination": {"kind": "gcp_secret_manager", "project": PROJECT, "endpoint": "http://127.0.0.1:9"}})
    return AgentRequest(stage=stage, migration_id="migration-m", run_id=run_id)


def test_a_secrets_agent_has_no_volume_and_is_kept_apart_from_volume_agents(fly_api: FakeFlyMachinesAPI) -> None:
    volume_agent = fly_api.add_machine(APP, "flyaway-agent-volume", config={"image": "img", "metadata": {
        "flyaway_role": "volume-agent", "flyaway_migration": "migration-m", "flyaway_run": "other"}})

    first = WorkerActivityEnvironment().run(prepare_fly_source, agent_request("run-1"))
    second = WorkerActivityEnvironment().run(prepare_fly_source, agent_request("run-2"))

    assert second.secret_names == ["HF_TOKEN"] and second.fork_volume_id is None
    assert second.task_queue.startswith("flyaway-agent-") and second.task_queue != first.task_queue
    machines = fly_api.apps[APP].machines
    assert machines[second.machine_id].mounted_volume_ids == []
    assert machines[second.machine_id].boot_env["HF_TOKEN"] == "hf_value_1234", "Fly gave it the app's secrets"
    assert machines[first.machine_id].state == "destroyed", "a leftover of another run is removed"
    assert volume_agent.state == "started", "a volume agent of the same migration is not a leftover"
    report = WorkerActivityEnvironment().run(cleanup_fly_source, AgentCleanupRequest(
        source=agent_request("any").source, migration_id="migration-m"))
    assert report.machines_destroyed == [second.machine_id] and volume_agent.state == "started"
    assert fly_api.requests_to("GET", f"/apps/{APP}/volumes") == [], "a secrets agent never looks at volumes"


def test_an_app_secret_named_like_the_agents_own_variable_is_refused_before_anything_is_created(
        fly_api: FakeFlyMachinesAPI) -> None:
    fly_api.add_secret(APP, "TEMPORAL_ADDRESS", "somewhere.else:7233")
    with pytest.raises(ApplicationError, match="Fly app 'gpu-app' has secrets named TEMPORAL_ADDRESS") as failure:
        WorkerActivityEnvironment().run(prepare_fly_source, agent_request("run-1"))
    assert failure.value.type == "InvalidPlan" and failure.value.non_retryable
    assert fly_api.requests_to("POST", ".*") == []
