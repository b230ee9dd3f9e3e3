"""Outages in the middle of a copy: a killed worker, a restarted Temporal server, access denied
until the operator fixes it. Each ends completed and verified, re-sending at most what was in flight."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flyaway.activities.storage.checksums import sha256_of_file
from flyaway.models.status import MigrationState
from flyaway.starter.cli import app
from flyaway.starter.dev import write_random_file
from tests.support.env import TEST_AWS_ENV
from tests.support.migrations import eventually, migration_result, migration_status, run_async, start_migration
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import S3FaultProxy
from tests.support.s3 import s3_sha256
from tests.support.servers import TemporalDevServer, WorkerProcess

MiB = 1024 * 1024
PART = 16 * MiB
CONCURRENCY = 4
pytestmark = pytest.mark.slow


def big_file_plan(name: str, folder: Path, size: int, endpoint: str, bucket: str,
                  **weights: Any) -> tuple[dict[str, Any], str]:
    folder.mkdir(parents=True, exist_ok=True)
    sha = write_random_file(folder / "model.safetensors", size)
    (folder / "config.json").write_text('{"hidden_size": 4096}')
    plan = weights_plan(name, {"kind": "local", "path": str(folder)}, s3_location(endpoint, bucket, "m"),
                        part_size="16MiB", concurrency=CONCURRENCY, **weights)
    return plan, sha


def test_a_killed_worker_costs_at_most_the_parts_in_flight(
        temporal_server: TemporalDevServer, worker: WorkerProcess, s3_proxy: S3FaultProxy, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    size = 512 * MiB
    plan, sha = big_file_plan("kill-resume", tmp_path / "w", size, s3_proxy.endpoint, bucket)

    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    eventually(lambda: s3_proxy.uploaded >= 160 * MiB, 120, what="a third of the file to be uploaded")
    worker.kill()
    at_kill = s3_proxy.uploaded
    assert at_kill < size, "the copy finished before the kill; the test proves nothing"
    worker.start()
    result = run_async(migration_result(temporal_server, workflow_id, timeout=300))

    assert result.status.state == MigrationState.completed
    assert s3_sha256(s3, bucket, "m/model.safetensors") == sha
    resent = s3_proxy.uploaded - size - len('{"hidden_size": 4096}')
    print(f"\nkilled at {at_kill / MiB:.0f} MiB; re-sent {resent / MiB:.1f} MiB "
          f"(bound {CONCURRENCY * PART / MiB:.0f} MiB); new worker's peak RSS {worker.peak_rss / MiB:.0f} MiB")
    assert 0 <= resent <= CONCURRENCY * PART
    assert "resuming upload" in worker.logs()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_restarted_temporal_server_does_not_lose_the_copy(
        own_server: TemporalDevServer, s3_proxy: S3FaultProxy, s3: Any, bucket: str, tmp_path: Path,
        task_queue: str) -> None:
    size = 256 * MiB
    # slow enough (16 MiB/s) that the server is down and back well before the copy could end
    plan, sha = big_file_plan("server-restart", tmp_path / "w", size, s3_proxy.endpoint, bucket,
                              bandwidth_limit="16MiB")
    worker = WorkerProcess(own_server, task_queue, tmp_path / "worker.log", TEST_AWS_ENV)
    worker.start()
    try:
        workflow_id = run_async(start_migration(own_server, plan, task_queue))
        eventually(lambda: s3_proxy.uploaded >= 48 * MiB, 120, what="the copy to be under way")
        stopped_at = s3_proxy.uploaded
        own_server.stop()
        own_server.start()
        restarted_at = s3_proxy.uploaded
        result = run_async(migration_result(own_server, workflow_id, timeout=300))
    finally:
        worker.stop()
    assert restarted_at < size, "the copy finished before the restart; the test proves nothing"
    print(f"\nserver stopped at {stopped_at / MiB:.0f} MiB, back at {restarted_at / MiB:.0f} MiB")
    assert result.status.state == MigrationState.completed
    assert s3_sha256(s3, bucket, "m/model.safetensors") == sha
    assert s3_proxy.uploaded - size <= CONCURRENCY * PART + 64


def landed_bytes(s3: Any, bucket: str, key: str) -> int:
    uploads = [u for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) if u["Key"] == key]
    assert len(uploads) == 1, uploads
    parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=uploads[0]["UploadId"]).get("Parts", [])
    return sum(part["Size"] for part in parts)


def test_access_denied_waits_for_the_operator_and_retry_resends_nothing_that_landed(
        temporal_server: TemporalDevServer, worker: WorkerProcess, s3_proxy: S3FaultProxy, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    size = 256 * MiB
    plan, sha = big_file_plan("denied-then-retry", tmp_path / "w", size, s3_proxy.endpoint, bucket)
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    eventually(lambda: s3_proxy.uploaded >= 64 * MiB, 120, what="the copy to be under way")
    s3_proxy.mode = "deny"

    status = eventually(lambda: (s := run_async(migration_status(temporal_server, workflow_id))).state
                        == MigrationState.waiting_for_operator and s, 120, what="waiting_for_operator")
    assert status.stage == "weights"
    assert status.last_error is not None and "AccessDenied" in status.last_error
    assert "access denied" in status.last_error and f"s3://{bucket}" in status.last_error
    landed = landed_bytes(s3, bucket, "m/model.safetensors")
    assert 0 < landed < size

    refused = CliRunner().invoke(app, ["pause", workflow_id, "--address", temporal_server.address])
    assert refused.exit_code == 0  # pausing a waiting migration is allowed ...
    refused = CliRunner().invoke(app, ["pause", workflow_id, "--address", temporal_server.address])
    assert refused.exit_code == 2 and "already paused" in refused.stderr  # ... twice is not
    assert CliRunner().invoke(app, ["resume", workflow_id, "--address", temporal_server.address]).exit_code == 0

    s3_proxy.mode = "pass"
    before_retry = s3_proxy.uploaded
    retried = CliRunner().invoke(app, ["retry", workflow_id, "--address", temporal_server.address])
    assert retried.exit_code == 0, retried.stderr
    result = run_async(migration_result(temporal_server, workflow_id, timeout=300))

    assert result.status.state == MigrationState.completed
    assert s3_sha256(s3, bucket, "m/model.safetensors") == sha
    after_retry = s3_proxy.uploaded - before_retry
    print(f"\nlanded before deny {landed / MiB:.0f} MiB; sent after retry {after_retry / MiB:.0f} MiB")
    assert after_retry <= size - landed + len('{"hidden_size": 4096}')
    assert sha256_of_file(tmp_path / "w" / "model.safetensors") == sha
