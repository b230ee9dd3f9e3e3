"""The teardown stage against the fake Fly API: its gate (refusals destroy nothing), the approval,
the order of the steps (snapshots listed before any volume is deleted), the dry run, and a
worker killed in the middle of a teardown."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flyaway.models.canary import CanaryResult
from flyaway.models.copy import CopyCounters, CopyWeightsResult, VerifyResult
from flyaway.models.plan import parse_plan
from flyaway.models.status import ControlResult, MigrationState, StageResults, StageState
from flyaway.starter.cli import app as cli_app
from flyaway.workflows.stages.teardown import teardown_refusal
from tests.fakes.fly_machines import FakeFlyMachinesAPI, RecordedRequest
from tests.support.migrations import eventually, migration_result, migration_status, run_async, start_migration
from tests.support.plans import weights_plan
from tests.support.servers import TemporalDevServer, WorkerProcess
from tests.support.trees import make_tree

TOKEN = "fo1_teardown-test-token"
APP = "old-app"
PUBLIC_IPS = ["137.66.1.1", "2a09:8280:1::1"]
PRIVATE_IP = "fdaa:0:1:a7b::3"


# ---- the gate, as a function of the plan and the earlier stages' results ---------------------------

def plan_with(**teardown: Any) -> Any:
    return parse_plan({"name": "p", "weights": {"source": {"kind": "local", "path": "/a"},
                                                "destination": {"kind": "local", "path": "/b"}},
                       "teardown": {"app": APP, **teardown}})


def weights_result(files: int) -> CopyWeightsResult:
    return CopyWeightsResult(files_total=files, bytes_total=files, counters=CopyCounters(),
                             verify=VerifyResult(files_verified=files, bytes_verified=files, manifest_key="m"))


def canary_result(completed: bool, new_weight: int) -> CanaryResult:
    return CanaryResult(completed=completed, new_weight=new_weight, old_weight=100 - new_weight,
                        client_base_url="https://new.example.net", dns_ttl_seconds=0,
                        teardown_not_before=datetime(2026, 7, 31, tzinfo=UTC), report="", history=[])


def test_the_gate_needs_a_verified_manifest_and_all_traffic_moved() -> None:
    plan = plan_with(no_traffic_stage_ok=True)
    assert teardown_refusal(plan, StageResults()) == "the weights stage has not verified its manifest"
    assert "manifest is empty" in (teardown_refusal(plan, StageResults(weights=weights_result(0))) or "")
    assert teardown_refusal(plan, StageResults(weights=weights_result(3))) is None
    short = weights_result(3).model_copy(update={"files_total": 4})
    assert "verified 3 of 4" in (teardown_refusal(plan, StageResults(weights=short)) or "")

    with_canary = plan.model_copy(update={"canary": {"steps": [{"weight": 100}]}})
    done = StageResults(weights=weights_result(3))
    assert teardown_refusal(with_canary, done) == "the canary stage has not finished"
    assert "ended with 0% of the traffic on the new side" in (
        teardown_refusal(with_canary, done.with_result("canary", canary_result(False, 0))) or "")
    assert "Fly's traffic weight is 5%" in (teardown_refusal(
        with_canary, done.with_result("canary", canary_result(True, 95).model_copy(
            update={"new_weight": 100, "old_weight": 5}))) or "")
    assert teardown_refusal(with_canary, done.with_result("canary", canary_result(True, 100))) is None


def test_the_plan_must_say_how_traffic_moved_and_that_app_deletion_deletes_volumes() -> None:
    with pytest.raises(ValueError, match=r"no canary stage.*no_traffic_stage_ok: true"):
        plan_with()
    with pytest.raises(ValueError, match=r"plan.teardown: delete_app deletes the app's volumes and their snapshots"):
        plan_with(no_traffic_stage_ok=True, delete_app=True)


# ---- the stage, end to end through Temporal ----------------------------------------------------

@pytest.fixture
def fly(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFlyMachinesAPI]:
    """An app with a running and a stopped Machine, a volume each, two public IPs and a private one."""
    with FakeFlyMachinesAPI(TOKEN) as fake:
        fake.add_app(APP)
        for name, region, state in (("web-1", "ord", "started"), ("web-2", "iad", "stopped")):
            volume = fake.add_volume(APP, "data", region=region)
            fake.add_machine(APP, name, region=region, state=state, config={
                "image": "registry.fly.io/old-app:deployment-7", "mounts": [{"volume": volume.id, "path": "/data"}]})
        for ip in (*PUBLIC_IPS, PRIVATE_IP):
            fake.add_ip(APP, ip)
        monkeypatch.setenv("FLY_API_TOKEN", TOKEN)
        monkeypatch.setenv("FLY_API_BASE_URL", fake.base_url)
        yield fake


@pytest.fixture
def fly_worker(temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path,
               fly: FakeFlyMachinesAPI) -> Iterator[WorkerProcess]:
    process = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log",
                            {"FLY_API_TOKEN": TOKEN, "FLY_API_BASE_URL": fly.base_url})
    process.start()
    yield process
    process.stop()


def teardown_plan(name: str, tmp_path: Path, files: dict[str, int], **teardown: Any) -> dict[str, Any]:
    make_tree(tmp_path / "src", files)
    (tmp_path / "src").mkdir(exist_ok=True)
    plan = weights_plan(name, {"kind": "local", "path": str(tmp_path / "src")},
                        {"kind": "local", "path": str(tmp_path / "dst")})
    plan["teardown"] = {"app": APP, "no_traffic_stage_ok": True, "heartbeat_timeout": "3s", "stop_timeout": "60s",
                        **teardown}
    return plan


STEPS = [("cordon", "POST", r"/machines/[^/]+/cordon"), ("stop", "POST", r"/machines/[^/]+/stop"),
         ("snapshot", "POST", r"/volumes/[^/]+/snapshots"), ("destroy", "DELETE", r"/machines/[^/]+"),
         ("release", "DELETE", r"/ip_assignments/.+"), ("delete_volume", "DELETE", r"/volumes/[^/]+"),
         ("delete_app", "DELETE", "")]


def step_of(request: RecordedRequest) -> str | None:
    return next((step for step, method, path in STEPS
                 if request.method == method and re.fullmatch(f"/apps/{APP}{path}", request.path)), None)


def changes(fly: FakeFlyMachinesAPI) -> list[tuple[int, str, RecordedRequest]]:
    """Every request that changed something, with its position in the log and its step."""
    return [(i, step, r) for i, r in enumerate(fly.requests) if r.method != "GET" and (step := step_of(r))]


def assert_steps_in_order(fly: FakeFlyMachinesAPI) -> None:
    """Every request of a step comes after every request of the steps before it (a retried stop
    step cordons again, so cordon and stop may interleave)."""
    done = [step for _, step, _ in changes(fly)]
    names = [name for name, _, _ in STEPS]
    for i, earlier in enumerate(names):
        for later in names[i + 1:]:
            if {earlier, later} == {"cordon", "stop"} or earlier not in done or later not in done:
                continue
            last = len(done) - 1 - done[::-1].index(earlier)
            assert last < done.index(later), f"{later} before {earlier} ended: {done}"


def assert_snapshot_listed_before_each_volume_delete(fly: FakeFlyMachinesAPI) -> None:
    deletes = [(i, r.path.rsplit("/", 1)[1]) for i, step, r in changes(fly) if step == "delete_volume"]
    assert deletes, "no volume was deleted"
    for position, volume_id in deletes:
        listed = [r for r in fly.requests[:position] if r.method == "GET" and r.status == 200
                  and r.path == f"/apps/{APP}/volumes/{volume_id}/snapshots"
                  and any(s["status"] == "created" for s in r.response)]
        assert listed, f"volume {volume_id} was deleted before a snapshot of it was listed"


def test_teardown_waits_for_approval_then_runs_in_order(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FakeFlyMachinesAPI,
        tmp_path: Path) -> None:
    plan = teardown_plan("teardown-approved", tmp_path, {"config.json": 100, "model.bin": 5000},
                         delete_volumes=True, delete_app=True)
    workflow_id = run_async(start_migration(temporal_server, plan, fly_worker.task_queue))
    eventually(lambda: run_async(migration_status(temporal_server, workflow_id)).stage_status(
        "teardown").detail.startswith("waiting for `flyaway approve teardown-approved teardown`"), 60,
        what="the teardown to wait for approval")
    assert changes(fly) == [], "nothing is touched before the approval"

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    dry = CliRunner().invoke(cli_app, ["teardown", "--dry-run", str(plan_file)])
    assert dry.exit_code == 0, dry.output
    machines, volumes = fly.apps[APP].machines.values(), fly.apps[APP].volumes.values()
    for thing in [*(m.id for m in machines), *(v.id for v in volumes), *PUBLIC_IPS]:
        assert thing in dry.output
    assert PRIVATE_IP not in dry.output
    assert "1. cordon, stop and destroy 2 machines" in dry.output
    assert "2. snapshot 2 volumes, then delete them once their snapshots are listed" in dry.output
    assert "4. delete the app 'old-app'; Fly deletes its volumes and their snapshots with it" in dry.output
    assert changes(fly) == [], "the dry run changed nothing"
    refused = CliRunner().invoke(cli_app, ["teardown", str(plan_file)])
    assert refused.exit_code == 2 and "add --dry-run" in refused.output

    async def approve_and_wait() -> Any:
        client = await temporal_server.client()
        await client.get_workflow_handle(workflow_id).execute_update("approve", "teardown")
        return await migration_result(temporal_server, workflow_id, timeout=60)

    result = run_async(approve_and_wait())
    assert result.status.state == MigrationState.completed
    assert result.status.stage_status("teardown").detail == (
        "2 machines destroyed, 2 volumes snapshotted, 2 IPs released, 2 volumes deleted, app deleted")
    assert_steps_in_order(fly)
    assert_snapshot_listed_before_each_volume_delete(fly)
    assert {m.state for m in machines} == {"destroyed"} and all(m.cordoned for m in machines)
    assert {v.state for v in volumes} == {"destroyed"} and APP not in fly.apps


def test_teardown_of_an_empty_copy_is_refused_and_touches_nothing(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FakeFlyMachinesAPI,
        tmp_path: Path) -> None:
    plan = teardown_plan("teardown-refused", tmp_path, {}, approval_required=False, delete_volumes=True)
    workflow_id = run_async(start_migration(temporal_server, plan, fly_worker.task_queue))
    status = eventually(lambda: (s := run_async(migration_status(temporal_server, workflow_id))).state
                        == MigrationState.waiting_for_operator and s, 60, what="the refusal")
    stage = status.stage_status("teardown")
    assert stage.state == StageState.waiting_for_operator
    assert stage.error == ("StageRefused: teardown of Fly app 'old-app' refused, nothing was touched: the verified "
                           "weights manifest is empty: nothing was copied off Fly")
    assert changes(fly) == []

    async def abort() -> None:
        client = await temporal_server.client()
        await client.get_workflow_handle(workflow_id).execute_update("abort", "nothing to tear down")

    run_async(abort())


@pytest.mark.slow
def test_a_worker_killed_while_machines_stop_then_the_retry_ends_in_the_same_state(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FakeFlyMachinesAPI,
        tmp_path: Path) -> None:
    fly.machine_stop_delay = 4.0
    plan = teardown_plan("teardown-crash", tmp_path, {"model.bin": 5000}, approval_required=False,
                         delete_volumes=True)
    workflow_id = run_async(start_migration(temporal_server, plan, fly_worker.task_queue))
    eventually(lambda: any(step == "stop" for _, step, _ in changes(fly)), 60, what="a Machine to be stopping")
    fly_worker.kill()
    assert not any(step == "snapshot" for _, step, _ in changes(fly))
    fly_worker.start()

    result = run_async(migration_result(temporal_server, workflow_id, timeout=90))

    assert result.status.state == MigrationState.completed
    assert_steps_in_order(fly)
    assert_snapshot_listed_before_each_volume_delete(fly)
    app = fly.apps[APP]
    assert {m.state for m in app.machines.values()} == {"destroyed"}
    assert {v.state for v in app.volumes.values()} == {"destroyed"}
    assert {volume_id: len(snapshots) for volume_id, snapshots in app.snapshots.items()} == dict.fromkeys(
        app.volumes, 1), "one snapshot per volume, none taken twice"
    assert list(app.ips) == [PRIVATE_IP]


def test_approving_the_teardown_early_answers_what_it_still_waits_for(
        temporal_server: TemporalDevServer, fly_worker: WorkerProcess, fly: FakeFlyMachinesAPI,
        tmp_path: Path) -> None:
    plan = teardown_plan("teardown-early", tmp_path, {"model.bin": 16 << 20})
    plan["weights"] |= {"part_size": "1MiB", "bandwidth_limit": "1MiB"}
    workflow_id = run_async(start_migration(temporal_server, plan, fly_worker.task_queue))
    eventually(lambda: run_async(migration_status(temporal_server, workflow_id)).stage == "weights", 60,
               what="the copy")

    async def approve_then_abort() -> ControlResult:
        handle = (await temporal_server.client()).get_workflow_handle(workflow_id)
        answer = await handle.execute_update("approve", "teardown", result_type=ControlResult)
        await handle.execute_update("abort", "test over", result_type=ControlResult)
        return answer

    answer = run_async(approve_then_abort())
    assert answer.approvals == ["teardown"] and answer.stage == "weights"
    assert answer.message == ("teardown approved; it runs once its gate is met: "
                              "the weights stage has not verified its manifest")
    assert changes(fly) == []
