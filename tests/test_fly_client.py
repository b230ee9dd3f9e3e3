"""The real FlyClient against the fake Machines API on loopback."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials, NotFound
from flyaway.providers.fly.api import MachineConfig, MachineGuest, MachineMount
from flyaway.providers.fly.client import (
    DEFAULT_BASE_URL,
    FlyApiUnavailable,
    FlyClient,
    MachineWaitTimeout,
    authorization_header,
    parse_retry_after,
)
from tests.fakes.fly_machines import FakeFlyMachinesAPI, FakeMachine, RecordedRequest

TOKEN = "fo1_test-token-d41d8cd98f00b204e980"
APP = "gpu-app"


@pytest.fixture
def fake() -> Any:
    with FakeFlyMachinesAPI(TOKEN) as api:
        api.add_app(APP)
        yield api


@pytest.fixture
def client(fake: FakeFlyMachinesAPI, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("FLY_API_TOKEN", TOKEN)
    with FlyClient(APP, base_url=fake.base_url, wait_window_seconds=1, retry_seconds=10) as fly:
        yield fly


def agent_config(volume_id: str | None = None) -> MachineConfig:
    mounts = [MachineMount(volume=volume_id, path="/data")] if volume_id else []
    return MachineConfig(image="ghcr.io/flyaway/agent:1", env={"TASK_QUEUE": "fork-1"}, mounts=mounts,
                         guest=MachineGuest(cpu_kind="performance", cpus=2, memory_mb=4096))


# -- configuration and credentials ----------------------------------------------------------

def test_missing_token_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLY_API_TOKEN", raising=False)
    with pytest.raises(MissingCredentials, match="FLY_API_TOKEN"):
        FlyClient(APP)


def test_base_url_defaults_to_machines_dev_and_env_overrides_it(
        fake: FakeFlyMachinesAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLY_API_TOKEN", TOKEN)
    monkeypatch.delenv("FLY_API_BASE_URL", raising=False)
    with FlyClient(APP) as fly:
        assert fly.base_url == DEFAULT_BASE_URL == "https://api.machines.dev/v1"
    monkeypatch.setenv("FLY_API_BASE_URL", fake.base_url)
    with FlyClient(APP) as fly:
        assert fly.get_app().name == APP
    assert fake.requests[-1].path == f"/apps/{APP}"


def test_authorization_scheme_follows_the_token_kind() -> None:
    assert authorization_header("fm2_abc,fm2_def") == "FlyV1 fm2_abc,fm2_def"
    assert authorization_header("FlyV1 fm2_abc") == "FlyV1 fm2_abc"
    assert authorization_header("oauth-token") == "Bearer oauth-token"


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    in_five = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    assert 3.0 < (parse_retry_after(in_five) or 0) <= 5.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# -- apps and machines ----------------------------------------------------------------------

def test_get_app(client: FlyClient) -> None:
    app = client.get_app()
    assert app.name == APP
    assert app.organization is not None and app.organization.slug == "personal"


def test_unknown_app_is_not_found(fake: FakeFlyMachinesAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLY_API_TOKEN", TOKEN)
    with FlyClient("no-such-app", base_url=fake.base_url) as fly, \
            pytest.raises(NotFound, match="Fly app 'no-such-app' not found"):
        fly.list_machines()


def test_list_machines_filters_by_region_and_metadata(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    fake.add_machine(APP, "web-ord", region="ord")
    fake.add_machine(APP, "web-ams", region="ams")
    fake.add_machine(APP, "agent", region="ord",
                     config={"image": "agent:1", "metadata": {"flyaway_fork": "f1", "other": "x"}})
    assert {m.name for m in client.list_machines()} == {"web-ord", "web-ams", "agent"}
    assert {m.name for m in client.list_machines(region="ams")} == {"web-ams"}
    assert [m.name for m in client.list_machines(metadata={"flyaway_fork": "f1"})] == ["agent"]
    assert client.list_machines(metadata={"flyaway_fork": "f2"}) == []


def test_get_machine_reads_config_and_image(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    volume = fake.add_volume(APP, "models")
    made = fake.add_machine(APP, "web", config={"image": "registry.fly.io/gpu-app:deployment-7",
                                                "env": {"PORT": "8000"},
                                                "mounts": [{"volume": volume.id, "path": "/models"}],
                                                "guest": {"gpu_kind": "a100-40gb", "gpus": 1}})
    machine = client.get_machine(made.id)
    assert machine.state == "started" and machine.instance_id == made.instance_id
    assert machine.config is not None and machine.config.guest is not None
    assert machine.config.guest.gpu_kind == "a100-40gb"
    assert machine.config.mounts == [MachineMount(volume=volume.id, path="/models")]
    assert machine.image_ref is not None and machine.image_ref.registry == "registry.fly.io"
    assert machine.image_ref.tag == "deployment-7"


def test_unknown_machine_is_not_found_naming_it(client: FlyClient) -> None:
    with pytest.raises(NotFound, match=f"machine 'm-404' of app '{APP}'"):
        client.get_machine("m-404")


def test_create_machine_mounts_the_volume_and_runs_the_hook(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    created: list[FakeMachine] = []
    fake.on_machine_created = created.append
    volume = fake.add_volume(APP, "fork_1", region="ams")
    machine = client.create_machine(agent_config(volume.id), region="ams", name="flyaway-agent-1",
                                    metadata={"flyaway_fork": volume.id})
    assert machine.name == "flyaway-agent-1" and machine.region == "ams"
    assert machine.metadata == {"flyaway_fork": volume.id}
    assert [hooked.id for hooked in created] == [machine.id]
    assert created[0].config["env"] == {"TASK_QUEUE": "fork-1"}
    assert created[0].mounted_volume_ids == [volume.id]
    assert client.get_volume(volume.id).attached_machine_id == machine.id
    body = fake.requests_to("POST", f"/apps/{APP}/machines")[0].body
    assert body["config"]["guest"] == {"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096}


def test_machine_in_another_region_than_its_volume_is_invalid(client: FlyClient,
                                                              fake: FakeFlyMachinesAPI) -> None:
    volume = fake.add_volume(APP, "models", region="ord")
    with pytest.raises(InvalidPlan, match="is in region ord") as caught:
        client.create_machine(agent_config(volume.id), region="ams", name="agent")
    assert "HTTP 422" in str(caught.value)


@pytest.mark.parametrize("inject", ["server_error", "reset"])
def test_create_after_an_ambiguous_failure_makes_one_machine(client: FlyClient, fake: FakeFlyMachinesAPI,
                                                             inject: str) -> None:
    if inject == "reset":
        fake.reset_next("POST", f"/apps/{APP}/machines", after=True)
    else:
        fake.fail_next("POST", f"/apps/{APP}/machines", 502, after=True)
    machine = client.create_machine(agent_config(), region="ord", name="agent-once")
    assert [m.id for m in client.list_machines()] == [machine.id]
    assert len(fake.requests_to("POST", f"/apps/{APP}/machines")) == 1


def test_create_retries_a_rate_limited_post(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    fake.fail_next("POST", f"/apps/{APP}/machines", 429, headers={"Retry-After": "0"})
    client.create_machine(agent_config(), region="ord", name="agent")
    assert len(fake.requests_to("POST", f"/apps/{APP}/machines")) == 2
    assert len(fake.apps[APP].machines) == 1


def test_wait_loops_across_several_windows(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    fake.machine_start_delay = 2.5
    machine = client.create_machine(agent_config(), region="ord", name="slow-agent")
    assert machine.state == "created"
    started = time.monotonic()
    client.wait_machine(machine.id, "started", instance_id=machine.instance_id, timeout=20)
    assert time.monotonic() - started >= 2.0
    waits = fake.requests_to("GET", f"/apps/{APP}/machines/{machine.id}/wait")
    assert len(waits) >= 3
    assert [w.status for w in waits[:-1]] == [408] * (len(waits) - 1) and waits[-1].status == 200
    assert all(w.query["timeout"] == ["1"] and w.query["state"] == ["started"] for w in waits)
    assert all(w.query["instance_id"] == [machine.instance_id] for w in waits)


def test_wait_timeout_names_the_state_reached(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    fake.machine_start_delay = None
    machine = client.create_machine(agent_config(), region="ord", name="stuck-agent")
    started = time.monotonic()
    with pytest.raises(MachineWaitTimeout, match=r"did not reach state 'started' within 1.5 s .*'created'"):
        client.wait_machine(machine.id, "started", timeout=1.5)
    assert 1.4 <= time.monotonic() - started < 5


def test_waiting_for_a_gone_machine_to_be_destroyed_succeeds(client: FlyClient) -> None:
    client.wait_machine("gone-machine", "destroyed", timeout=5)


def test_cordon_stop_wait_and_destroy(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    made = fake.add_machine(APP, "web")
    client.cordon(made.id)
    assert made.cordoned
    with pytest.raises(InvalidPlan, match="failed_precondition"):
        client.destroy(made.id)
    fake.machine_stop_delay = 0.5
    client.stop(made.id, timeout="10s")
    assert fake.requests_to("POST", f"/apps/{APP}/machines/{made.id}/stop")[0].body == {"timeout": "10s"}
    client.wait_machine(made.id, "stopped", timeout=10)
    client.destroy(made.id)
    assert made.state == "destroyed"
    assert client.list_machines() == []
    client.destroy(made.id)  # already gone: 404 counts as success
    client.wait_machine(made.id, "destroyed", timeout=5)


def test_force_destroy_of_a_running_machine(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    destroyed: list[FakeMachine] = []
    fake.on_machine_destroyed = destroyed.append
    made = fake.add_machine(APP, "web")
    client.destroy(made.id, force=True)
    assert made.state == "destroyed" and destroyed == [made]
    assert fake.requests_to("DELETE", f"/apps/{APP}/machines/{made.id}")[0].query == {"force": ["true"]}


# -- volumes and snapshots ------------------------------------------------------------------

def test_fork_volume_keeps_region_and_size_and_becomes_ready(client: FlyClient,
                                                             fake: FakeFlyMachinesAPI) -> None:
    source = fake.add_volume(APP, "models", region="ams", size_gb=200)
    fake.fork_ready_delay = None
    fork = client.fork_volume(source.id, name="flyaway_fork_1")
    assert (fork.name, fork.region, fork.size_gb, fork.state) == ("flyaway_fork_1", "ams", 200, "hydrating")
    assert fake.apps[APP].volumes[fork.id].source_volume_id == source.id
    fake.set_volume_state(APP, fork.id, "created")
    assert client.get_volume(fork.id).state == "created"
    assert {v.id for v in client.list_volumes()} == {source.id, fork.id}


def test_fork_of_an_unknown_volume_is_not_found(client: FlyClient) -> None:
    with pytest.raises(NotFound, match="volume 'vol_missing'"):
        client.fork_volume("vol_missing", name="flyaway_fork_2")


def test_fork_after_an_ambiguous_failure_makes_one_volume(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    source = fake.add_volume(APP, "models")
    fake.fail_next("POST", f"/apps/{APP}/volumes", 500, after=True)
    fork = client.fork_volume(source.id, name="flyaway_fork_3", region="ord")
    assert sorted(v.name for v in client.list_volumes()) == ["flyaway_fork_3", "models"]
    assert fork.name == "flyaway_fork_3"


def test_snapshots(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    volume = fake.add_volume(APP, "models")
    assert client.list_snapshots(volume.id) == []
    client.create_snapshot(volume.id)
    [snapshot] = client.list_snapshots(volume.id)
    assert snapshot.id.startswith("vs_") and snapshot.status == "created" and snapshot.created_at


def test_delete_volume_refused_while_attached_then_idempotent(client: FlyClient,
                                                             fake: FakeFlyMachinesAPI) -> None:
    volume = fake.add_volume(APP, "models")
    machine = fake.add_machine(APP, "web", config={"image": "app:1",
                                                   "mounts": [{"volume": volume.id, "path": "/m"}]})
    with pytest.raises(InvalidPlan, match="attached"):
        client.delete_volume(volume.id)
    client.destroy(machine.id, force=True)
    client.delete_volume(volume.id)
    assert client.list_volumes() == []
    assert [v.state for v in client.list_volumes(include_destroyed=True)] == ["destroyed"]
    client.delete_volume(volume.id)  # already gone: 404 counts as success
    with pytest.raises(NotFound):
        client.get_volume(volume.id)


# -- secrets and IPs ------------------------------------------------------------------------

def test_secrets_are_names_and_digests_only(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    fake.add_secret(APP, "HF_TOKEN", "hf_super-secret-value")
    [secret] = client.list_secrets()
    assert secret.name == "HF_TOKEN" and secret.digest
    assert "hf_super-secret-value" not in secret.model_dump_json()
    assert "show_secrets" not in fake.requests_to("GET", f"/apps/{APP}/secrets")[0].query


def test_list_and_release_ips(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    fake.add_ip(APP, "2a09:8280:1::4f:1")
    fake.add_ip(APP, "66.241.124.9", shared=True)
    fake.add_ip(APP, "fdaa:0:1:a7b::2")
    ips = {ip.ip: ip for ip in client.list_ips()}
    assert ips["66.241.124.9"].shared and ips["fdaa:0:1:a7b::2"].is_private
    client.release_ip("2a09:8280:1::4f:1")
    client.release_ip("2a09:8280:1::4f:1")  # already released: 404 counts as success
    assert sorted(fake.apps[APP].ips) == ["66.241.124.9", "fdaa:0:1:a7b::2"]


# -- rate limits, retries and errors --------------------------------------------------------

def test_429_waits_for_retry_after(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    fake.fail_next("GET", f"/apps/{APP}/volumes", 429, headers={"Retry-After": "1"}, message="rate limited")
    started = time.monotonic()
    assert client.list_volumes() == []
    first, second = fake.requests_to("GET", f"/apps/{APP}/volumes")
    assert second.at - first.at >= 0.95  # the default backoff would start at 0.2 s
    assert time.monotonic() - started >= 0.95


@pytest.mark.parametrize("inject", ["503", "reset"])
def test_transient_failures_are_retried(client: FlyClient, fake: FakeFlyMachinesAPI, inject: str) -> None:
    made = fake.add_machine(APP, "web")
    path = f"/apps/{APP}/machines/{made.id}"
    if inject == "reset":
        fake.reset_next("GET", path, times=2)
    else:
        fake.fail_next("GET", path, 503, times=2)
    assert client.get_machine(made.id).id == made.id
    assert len(fake.requests_to("GET", path)) == 3


def test_5xx_until_the_retry_budget_runs_out(fake: FakeFlyMachinesAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLY_API_TOKEN", TOKEN)
    fake.fail_next("GET", f"/apps/{APP}/volumes", 500, times=1000, message="flaps is sad")
    with structlog.testing.capture_logs() as logs, \
            FlyClient(APP, base_url=fake.base_url, retry_seconds=1) as fly, \
            pytest.raises(FlyApiUnavailable, match="HTTP 500: flaps is sad") as caught:
        fly.list_volumes()
    assert caught.value.status == 500
    assert len(fake.requests_to("GET", f"/apps/{APP}/volumes")) >= 2
    assert logs and TOKEN not in repr(logs)


@pytest.mark.parametrize("status", [401, 403])
def test_denied_access_is_one_line_without_the_token(fake: FakeFlyMachinesAPI, monkeypatch: pytest.MonkeyPatch,
                                                     status: int) -> None:
    token = TOKEN if status == 403 else "fo1_wrong-token-5f4dcc3b5aa765d61d83"
    fake.denied_apps = {APP} if status == 403 else set()
    monkeypatch.setenv("FLY_API_TOKEN", token)
    with FlyClient(APP, base_url=fake.base_url) as fly, pytest.raises(AccessDenied) as caught:
        fly.list_machines()
    message = str(caught.value)
    assert f"HTTP {status}" in message and "FLY_API_TOKEN" in message and APP in message
    assert "\n" not in message and token not in message
    assert len(fake.requests) == 1  # not retried


def test_rejected_request_is_invalid_plan_with_the_api_message(client: FlyClient) -> None:
    with pytest.raises(InvalidPlan, match="image is required"):
        client.create_machine(MachineConfig(image=""), region="ord", name="bad")


# -- the fake against the published OpenAPI document ----------------------------------------

def _drop_nulls(value: Any) -> Any:
    """The API sends ``null`` where the document says ``string`` (``attached_machine_id`` of a
    detached volume; fly-go reads it into a pointer), so nulls are not checked."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _operation(spec: dict[str, Any], exchange: RecordedRequest) -> tuple[str, dict[str, Any]] | None:
    """The documented operation for a recorded exchange (paths may or may not start with /v1)."""
    for template, item in spec["paths"].items():
        parts = re.split(r"\{[^}]+\}", template.removeprefix("/v1"))
        if exchange.method.lower() in item and re.fullmatch("[^/]+".join(map(re.escape, parts)), exchange.path):
            return template, item[exchange.method.lower()]
    return None


def _anchored(schema: Any) -> Any:
    """Point the document's local ``$ref``s at the registry entry holding the whole document."""
    if isinstance(schema, dict):
        return {k: ("urn:fly" + v if k == "$ref" else _anchored(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_anchored(v) for v in schema]
    return schema


@pytest.mark.skipif(not os.environ.get("FLY_OPENAPI_SPEC"),
                    reason="set FLY_OPENAPI_SPEC to the Machines API OpenAPI document "
                           "(superfly/fly-openapi-sdk go/api/openapi.yaml or docs.machines.dev/spec/openapi3.json)")
def test_fake_exchanges_match_the_openapi_document(client: FlyClient, fake: FakeFlyMachinesAPI) -> None:
    validators = pytest.importorskip("openapi_schema_validator")
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    spec = yaml.safe_load(Path(os.environ["FLY_OPENAPI_SPEC"]).read_text())
    registry = Registry().with_resource("urn:fly", Resource.from_contents(spec, default_specification=DRAFT4))

    def check(schema: dict[str, Any], instance: Any, where: str) -> None:
        validator = validators.OAS30Validator(_anchored(schema), registry=registry)
        errors = list(validator.iter_errors(_drop_nulls(instance)))
        assert not errors, f"{where}: {[e.message for e in errors]}"

    volume = fake.add_volume(APP, "models", region="ord")
    fake.add_machine(APP, "web", config={"image": "registry.fly.io/gpu-app:deployment-1",
                                         "mounts": [{"volume": volume.id, "path": "/models"}]})
    client.get_app()
    fork = client.fork_volume(volume.id, name="flyaway_fork")
    agent = client.create_machine(agent_config(fork.id), region="ord", name="agent")
    client.wait_machine(agent.id, "started", timeout=5)
    client.get_machine(agent.id)
    client.list_machines()
    client.get_volume(fork.id)
    client.create_snapshot(volume.id)
    client.list_snapshots(volume.id)
    client.stop(agent.id)
    client.destroy(agent.id, force=True)
    client.delete_volume(fork.id)
    client.list_secrets()
    client.list_ips()

    checked = 0
    for exchange in fake.requests:
        found = _operation(spec, exchange)
        if found is None or not 200 <= (exchange.status or 0) < 300:
            continue  # secrets and IP assignments are missing from older copies of the document
        template, operation = found
        where = f"{exchange.method} {template}"
        assert str(exchange.status) in operation["responses"], f"{where}: status {exchange.status} not documented"
        request_schema = (operation.get("requestBody") or {}).get("content", {}).get("application/json", {})
        if exchange.body and request_schema:
            check(request_schema["schema"], exchange.body, where + " request")
        response_schema = operation["responses"][str(exchange.status)].get("content", {}) \
            .get("application/json", {}).get("schema")
        if response_schema:
            check(response_schema, exchange.response, where + " response")
        checked += 1
    assert checked >= 12
