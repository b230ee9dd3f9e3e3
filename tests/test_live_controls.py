"""Controls take effect within seconds, whatever came before, and progress shows while a batch runs.

Bytes are counted at the S3 proxy in front of the destination, so "stopped" means no byte
arrived, not that a state field changed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

from flyaway.models.plan import WeightsStage
from flyaway.models.status import ControlResult, MigrationState, StageState
from flyaway.starter.dev import write_random_file
from tests.support.migrations import (
    eventually,
    migration_result,
    migration_status,
    run_async,
    shown_status,
    start_migration,
)
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import S3FaultProxy
from tests.support.servers import TemporalDevServer, WorkerProcess

MiB = 1024 * 1024


def limited_plan(name: str, tmp_path: Path, destination: dict[str, Any], size: int = 96 * MiB,
                 **weights: Any) -> dict[str, Any]:
    folder = tmp_path / "w"
    folder.mkdir()
    write_random_file(folder / "model.safetensors", size)
    settings = {"part_size": "8MiB", "concurrency": 2, "bandwidth_limit": "4MiB", **weights}
    return weights_plan(name, {"kind": "local", "path": str(folder)}, destination, **settings)


def control(server: TemporalDevServer, workflow_id: str, name: str, *args: Any) -> ControlResult:
    async def go() -> ControlResult:
        client = await server.client()
        return await client.get_workflow_handle(workflow_id).execute_update(name, args=list(args),
                                                                             result_type=ControlResult)
    return run_async(go())


def quiet_after(proxy: S3FaultProxy, settle: float, watch: float) -> int:
    """Bytes uploaded once ``settle`` seconds passed, after checking nothing more arrives for ``watch`` seconds."""
    time.sleep(settle)
    landed = proxy.uploaded
    time.sleep(watch)
    assert proxy.uploaded == landed, f"{proxy.uploaded - landed} bytes arrived {settle} s after the control"
    return landed


def copy_attempts_scheduled(server: TemporalDevServer, workflow_id: str) -> int:
    async def go() -> int:
        client = await server.client()
        history = await client.get_workflow_handle(f"{workflow_id}-weights").fetch_history()
        return sum(event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                   and event.activity_task_scheduled_event_attributes.activity_type.name == "flyaway.weights.copy_batch"
                   for event in history.events)
    return run_async(go())


def child_status(server: TemporalDevServer, workflow_id: str) -> WorkflowExecutionStatus:
    async def go() -> WorkflowExecutionStatus:
        client = await server.client()
        return (await client.get_workflow_handle(f"{workflow_id}-weights").describe()).status
    return run_async(go())


def test_progress_pause_resume_tune_abort(temporal_server: TemporalDevServer, worker: WorkerProcess,
                                          s3_proxy: S3FaultProxy, s3: Any, bucket: str, tmp_path: Path) -> None:
    plan = limited_plan("live", tmp_path, s3_location(s3_proxy.endpoint, bucket, "m"))
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))

    # progress while the first (and only) batch runs, well before it ends
    started = time.monotonic()
    moving = eventually(lambda: (s := run_async(migration_status(temporal_server, workflow_id))).bytes_done and s,
                        10, what="bytes done > 0 in the status query")
    assert moving.bytes_done < moving.bytes_total == 96 * MiB
    assert moving.rate_bytes_per_second > 0 and moving.eta_seconds is not None
    assert time.monotonic() - started < 10

    paused = control(temporal_server, workflow_id, "pause")
    assert (paused.action, paused.state) == ("pause", MigrationState.paused)
    at_pause = quiet_after(s3_proxy, 5, 3)
    assert at_pause < 96 * MiB
    assert run_async(migration_status(temporal_server, workflow_id)).state == MigrationState.paused

    resumed = control(temporal_server, workflow_id, "resume")
    assert resumed.state == MigrationState.running
    eventually(lambda: s3_proxy.uploaded > at_pause, 20, what="bytes after resume")

    attempts = copy_attempts_scheduled(temporal_server, workflow_id)
    tuned = control(temporal_server, workflow_id, "tune", {"concurrency": 1, "bandwidth_limit": 2 * MiB})
    assert (tuned.concurrency, tuned.bandwidth_limit, tuned.state) == (1, 2 * MiB, MigrationState.running)
    assert "concurrency 1, bandwidth 2.0 MiB/s" in tuned.message
    eventually(lambda: "applying tuned settings" in worker.logs(), 10, what="the copy applying the new settings")
    after_tune = s3_proxy.uploaded
    eventually(lambda: s3_proxy.uploaded > after_tune, 20, what="bytes after tune")
    assert copy_attempts_scheduled(temporal_server, workflow_id) == attempts  # the batch was not restarted

    asked = time.monotonic()
    aborted = control(temporal_server, workflow_id, "abort", "wrong bucket")
    assert time.monotonic() - asked < 10
    assert aborted.state == MigrationState.aborted and "unfinished uploads dropped" in aborted.message
    quiet_after(s3_proxy, 0, 3)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(WorkflowFailureError) as failure:
        run_async(migration_result(temporal_server, workflow_id, timeout=30))
    assert "aborted by the operator: wrong bucket" in str(failure.value.cause)
    assert child_status(temporal_server, workflow_id) == WorkflowExecutionStatus.CANCELED
    status = run_async(migration_status(temporal_server, workflow_id))
    assert status.state == MigrationState.aborted
    assert status.stage_status("weights").state == StageState.aborted


def test_abort_right_after_tune_ends_aborted(temporal_server: TemporalDevServer, worker: WorkerProcess,
                                             s3_proxy: S3FaultProxy, s3: Any, bucket: str, tmp_path: Path) -> None:
    """The reported bug: a tune, then an abort at once; the copy used to go on to completed."""
    plan = limited_plan("tune-abort", tmp_path, s3_location(s3_proxy.endpoint, bucket, "m"), concurrency=4)
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    eventually(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), 30, what="an upload under way")

    control(temporal_server, workflow_id, "tune", {"concurrency": 2, "bandwidth_limit": 4 * MiB})
    asked = time.monotonic()
    aborted = control(temporal_server, workflow_id, "abort", "changed my mind")
    assert aborted.state == MigrationState.aborted
    assert time.monotonic() - asked < 10
    quiet_after(s3_proxy, 0, 3)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "m/model.safetensors" not in keys
    assert child_status(temporal_server, workflow_id) == WorkflowExecutionStatus.CANCELED


class FailingPartsProxy(S3FaultProxy):
    """Refuses every UploadPart with a 400 (an error no request retry hides) while ``failing`` is set."""

    failing = True

    def refusal(self, command: str, path: str, size: int) -> tuple[int, str] | None:
        if self.failing and command == "PUT" and "partNumber=" in path:
            return 400, "InvalidArgument"
        return super().refusal(command, path, size)


def test_status_shows_retrying_with_the_error_until_the_stage_succeeds(
        temporal_server: TemporalDevServer, worker: WorkerProcess, moto_server: Any, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    proxy = FailingPartsProxy(moto_server.port)
    proxy.start()
    try:
        plan = limited_plan("retrying", tmp_path, s3_location(proxy.endpoint, bucket, "m"), size=24 * MiB,
                            bandwidth_limit=None)
        workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
        retrying = eventually(
            lambda: (s := run_async(shown_status(temporal_server, workflow_id))).stage_status(
                "weights").attempt >= 2 and s, 60, what="the weights stage retrying its second attempt")
        weights = retrying.stage_status("weights")
        assert weights.state == StageState.retrying and retrying.state == MigrationState.running
        assert weights.error is not None and "InvalidArgument" in weights.error
        assert retrying.last_error is not None and "retrying" in retrying.last_error

        proxy.failing = False
        result = run_async(migration_result(temporal_server, workflow_id, timeout=120))
        assert result.status.state == MigrationState.completed
        assert result.status.last_error is None
        assert result.status.stage_status("weights").error is None
        assert result.status.stage_status("weights").state == StageState.completed
    finally:
        proxy.stop()


@pytest.mark.slow
def test_a_killed_worker_s_copy_moves_on_within_the_heartbeat_timeout(
        temporal_server: TemporalDevServer, worker: WorkerProcess, s3_proxy: S3FaultProxy, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    """kill -9 mid-copy: another worker takes the batch over after the copy's heartbeat timeout (the
    default the plan does not override), plus the seconds a new worker needs to start and attempt (up to
    30 on a loaded 2-core CI machine)."""
    timeout = WeightsStage.model_fields["heartbeat_timeout"].default.total_seconds()
    assert 10 <= timeout <= 60
    plan = limited_plan("kill", tmp_path, s3_location(s3_proxy.endpoint, bucket, "m"), size=64 * MiB,
                        heartbeat_timeout=f"{timeout:.0f}s")
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    eventually(lambda: s3_proxy.uploaded >= 16 * MiB, 60, what="16 MiB landed")

    worker.kill()
    killed = time.monotonic()
    successor = WorkerProcess(temporal_server, worker.task_queue, tmp_path / "successor.log", worker.env)
    successor.start()
    try:
        time.sleep(1)
        at_kill = s3_proxy.uploaded
        eventually(lambda: s3_proxy.uploaded > at_kill, timeout + 45, what="bytes from the successor")
        took = time.monotonic() - killed
        assert took <= timeout + 30, f"the copy moved on {took:.0f} s after the kill"
        result = run_async(migration_result(temporal_server, workflow_id, timeout=120))
        assert result.status.state == MigrationState.completed
    finally:
        successor.stop()


def test_an_invalid_plan_fails_with_its_message_and_no_stack_trace(
        temporal_server: TemporalDevServer, worker: WorkerProcess, tmp_path: Path) -> None:
    plan = weights_plan("no-such-folder", {"kind": "local", "path": str(tmp_path / "missing")},
                        {"kind": "local", "path": str(tmp_path / "dest")})
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))

    async def closing_failure() -> Any:
        client = await temporal_server.client()
        with pytest.raises(WorkflowFailureError):
            await client.get_workflow_handle(workflow_id).result()
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        return history.events[-1].workflow_execution_failed_event_attributes.failure

    failure = run_async(closing_failure())
    assert failure.message.startswith("invalid plan: ") and str(tmp_path / "missing") in failure.message
    assert failure.application_failure_info.type == "InvalidPlan"
    assert failure.stack_trace == ""


def copy_children(server: TemporalDevServer, workflow_id: str) -> list[WorkflowExecutionStatus | None]:
    async def go() -> list[WorkflowExecutionStatus | None]:
        client = await server.client()
        return [run.status async for run in client.list_workflows(f'WorkflowId = "{workflow_id}-weights"')]
    return run_async(go())


def test_a_retried_copy_keeps_one_child_that_completes(
        temporal_server: TemporalDevServer, worker: WorkerProcess, moto_server: Any, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    """Retries exhausted: the migration waits for the operator with the error, the copy waits in its own
    workflow, and ``retry`` goes on there, so no failed copy child is left beside the one that completes."""
    proxy = FailingPartsProxy(moto_server.port)
    proxy.start()
    try:
        plan = limited_plan("retried", tmp_path, s3_location(proxy.endpoint, bucket, "m"), size=24 * MiB,
                            bandwidth_limit=None, max_attempts=2)
        workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
        stuck = eventually(lambda: (s := run_async(migration_status(temporal_server, workflow_id))).state
                           == MigrationState.waiting_for_operator and s, 60, what="waiting_for_operator")
        assert stuck.stage == "weights" and stuck.stage_status("weights").state == StageState.waiting_for_operator
        assert "InvalidArgument" in (stuck.stage_status("weights").error or "")

        proxy.failing = False
        retried = control(temporal_server, workflow_id, "retry")
        assert (retried.state, retried.stage) == (MigrationState.running, "weights")
        result = run_async(migration_result(temporal_server, workflow_id, timeout=120))
        assert result.status.state == MigrationState.completed and result.status.last_error is None
        assert copy_children(temporal_server, workflow_id) == [WorkflowExecutionStatus.COMPLETED]
    finally:
        proxy.stop()


def test_the_migration_continues_as_new_between_stages_carrying_its_state(tmp_path: Path, task_queue: str) -> None:
    # a server that suggests continuing as new after a handful of events, as a long history would
    server = TemporalDevServer(tmp_path, dynamic_config={"limit.historyCount.suggestContinueAsNew": "5"})
    worker = WorkerProcess(server, task_queue, tmp_path / "worker.log", {})
    try:
        server.start()
        worker.start()
        plan = limited_plan("carried", tmp_path, {"kind": "local", "path": str(tmp_path / "dest")}, size=4 * MiB,
                            bandwidth_limit=None)
        workflow_id = run_async(start_migration(server, plan, task_queue))
        result = run_async(migration_result(server, workflow_id, timeout=60))

        async def runs() -> list[str]:
            client = await server.client()
            return [run.run_id async for run in client.list_workflows(f'WorkflowId = "{workflow_id}"')]
        assert len(run_async(runs())) == 2, "validated in the first run, copied in the second"
        assert result.status.state == MigrationState.completed
        assert (result.status.files_done, result.status.bytes_done) == (1, 4 * MiB)
        assert result.status.stage_status("image").state == StageState.skipped
        assert result.manifest_key is not None
        assert (tmp_path / "dest" / "model.safetensors").read_bytes() == (tmp_path / "w" / "model.safetensors").read_bytes()
    finally:
        worker.stop()
        server.stop()
