"""What an operator does to a running migration: pause, resume, tune, approve, retry, abort.
Rejected updates give a clear reason and leave nothing in the workflow history."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from typer.testing import CliRunner

from flyaway.activities.storage.base import STATE_DIR
from flyaway.models.status import MigrationState
from flyaway.starter.cli import app
from flyaway.starter.dev import free_port, write_random_file
from tests.support.env import REPO
from tests.support.migrations import eventually, migration_result, migration_status, run_async, start_migration
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import S3FaultProxy
from tests.support.servers import TemporalDevServer, WorkerProcess

MiB = 1024 * 1024
runner = CliRunner()


def cli(server: TemporalDevServer, *args: str) -> Any:
    return runner.invoke(app, [*args, "--address", server.address])


async def update_events(server: TemporalDevServer, workflow_id: str) -> list[int]:
    client = await server.client()
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return [event.event_type for event in history.events
            if event.event_type in (EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
                                    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_REJECTED)]


def slow_plan(name: str, tmp_path: Path, destination: dict[str, Any]) -> dict[str, Any]:
    folder = tmp_path / "w"
    folder.mkdir()
    write_random_file(folder / "model.safetensors", 96 * MiB)
    return weights_plan(name, {"kind": "local", "path": str(folder)}, destination, part_size="8MiB",
                        concurrency=2, bandwidth_limit="12MiB")


def test_pause_tune_resume_and_rejected_updates(temporal_server: TemporalDevServer, worker: WorkerProcess,
                                                tmp_path: Path) -> None:
    plan = slow_plan("controls", tmp_path, {"kind": "local", "path": str(tmp_path / "dest")})
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    eventually(lambda: run_async(migration_status(temporal_server, workflow_id)).state == MigrationState.running, 30)

    for args, reason in ((("resume", "controls"), "the migration is not paused"),
                         (("retry", "controls"), "nothing to retry: the migration is running"),
                         (("approve", "controls", "teardown"), "stage 'teardown' is not in this migration's plan"),
                         (("approve", "controls", "everything"), "unknown stage 'everything'"),
                         (("tune", "controls"), "give a concurrency, a bandwidth limit or a parallelism")):
        result = cli(temporal_server, *args)
        assert result.exit_code == 2, (args, result.stdout)
        assert reason in result.stderr, (args, result.stderr)
    assert run_async(update_events(temporal_server, workflow_id)) == []

    assert cli(temporal_server, "pause", "controls").exit_code == 0
    paused = run_async(migration_status(temporal_server, workflow_id))
    assert paused.state == MigrationState.paused
    done_at_pause = paused.bytes_done
    tuned = cli(temporal_server, "tune", "controls", "--concurrency", "4", "--bandwidth", "0")
    assert tuned.exit_code == 0, tuned.stderr
    status = run_async(migration_status(temporal_server, workflow_id))
    assert (status.concurrency, status.bandwidth_limit, status.state) == (4, None, MigrationState.paused)
    assert status.bytes_done == done_at_pause
    assert cli(temporal_server, "resume", "controls").exit_code == 0

    result = run_async(migration_result(temporal_server, workflow_id, timeout=120))
    assert result.status.state == MigrationState.completed
    assert (tmp_path / "dest" / "model.safetensors").read_bytes() == (tmp_path / "w" / "model.safetensors").read_bytes()
    accepted = run_async(update_events(temporal_server, workflow_id))
    assert accepted == [EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED] * 3


def test_abort_drops_unfinished_uploads(temporal_server: TemporalDevServer, worker: WorkerProcess,
                                        s3_proxy: S3FaultProxy, s3: Any, bucket: str, tmp_path: Path) -> None:
    plan = slow_plan("abort-me", tmp_path, s3_location(s3_proxy.endpoint, bucket, "m"))
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    eventually(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), 60, what="an upload under way")

    result = cli(temporal_server, "abort", "abort-me", "--reason", "wrong bucket")
    assert result.exit_code == 0, result.stderr
    with pytest.raises(WorkflowFailureError) as failure:
        run_async(migration_result(temporal_server, workflow_id, timeout=60))
    assert "aborted by the operator: wrong bucket" in str(failure.value.cause)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [key for key in keys if key.startswith(f"m/{STATE_DIR}/") and "/uploads/" in key]
    assert "m/model.safetensors" not in keys
    refused = cli(temporal_server, "pause", "abort-me")
    assert refused.exit_code == 2 and "pause refused: migration-abort-me has ended (aborted)" in refused.stderr


def test_status_and_steering_name_a_missing_migration(temporal_server: TemporalDevServer) -> None:
    for args in (("status", "nope"), ("pause", "nope")):
        result = cli(temporal_server, *args)
        assert result.exit_code == 2
        assert "no migration migration-nope" in result.stderr


@pytest.mark.slow
def test_readme_demo_command_completes_with_a_verified_manifest(tmp_path: Path) -> None:
    """`flyaway dev --demo` (README command 1), smaller and with --exit so it ends."""
    port, ui_port, s3_port = free_port(), free_port(), free_port()
    done = subprocess.run(
        [sys.executable, "-m", "flyaway.starter.cli", "dev", "--demo", "--exit", "--demo-size", "40MiB",
         "--state-dir", str(tmp_path), "--port", str(port), "--ui-port", str(ui_port), "--s3-port", str(s3_port)],
        cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (f"demo S3 server (moto) at http://127.0.0.1:{s3_port} (--s3-port), bucket flyaway-demo, region "
            f"us-east-1; the plan names its keys FLYAWAY_DEMO_ACCESS_KEY_ID and FLYAWAY_DEMO_SECRET_ACCESS_KEY") \
        in " ".join(done.stdout.split())
    assert not [line for line in done.stderr.splitlines() if line.startswith("{")]  # piped, yet no JSON log lines
    assert "demo migration completed and verified" in done.stdout
    assert f"http://localhost:{ui_port}/namespaces/default/workflows/migration-demo" in done.stdout
    assert done.stdout.count(" yes ") == 5  # every manifest entry matches the local file's sha256
    report = tmp_path / "demo" / "report.html"  # it ends with the demo's report
    assert done.stdout.rstrip().endswith(f"the demo's report (`flyaway report demo`): {report}")
    assert '"state": "completed"' in report.with_suffix(".json").read_text()
