"""A worker SIGKILLed in the middle of a large file, for GCS and a RunPod volume: the copy ends
verified after a restart, and re-sends at most the parts that were in flight."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flyaway.models.status import MigrationState
from flyaway.starter.dev import write_random_file
from tests.support.env import TEST_AWS_ENV
from tests.support.migrations import eventually, migration_result, run_async, start_migration
from tests.support.plans import gcs_location, runpod_location, weights_plan
from tests.support.proxies import RunPodLimitsProxy, S3FaultProxy
from tests.support.servers import GcsEmulator, TemporalDevServer, WorkerProcess

MiB = 1024 * 1024
PART = 16 * MiB
CONCURRENCY = 4
SIZE = 256 * MiB
CONFIG = b'{"hidden_size": 4096}'
pytestmark = pytest.mark.slow


def weights_folder(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_bytes(CONFIG)
    return write_random_file(folder / "model.safetensors", SIZE)


def kill_and_restart(server: TemporalDevServer, worker: WorkerProcess, proxy: S3FaultProxy,
                     plan: dict[str, Any]) -> tuple[int, Any]:
    """Start the copy, SIGKILL the worker a third of the way in, start it again; (bytes sent at the kill, result)."""
    workflow_id = run_async(start_migration(server, plan, worker.task_queue))
    eventually(lambda: proxy.uploaded >= 96 * MiB, 180, what="a third of the file to be uploaded")
    worker.kill()
    at_kill = proxy.uploaded
    assert at_kill < SIZE, "the copy finished before the kill; the test proves nothing"
    worker.start()
    return at_kill, run_async(migration_result(server, workflow_id, timeout=300))


@pytest.fixture
def gcs_proxy(gcs_emulator: GcsEmulator) -> Iterator[S3FaultProxy]:
    """A counting proxy in front of the emulator (the proxy forwards any HTTP, not only S3)."""
    proxy = S3FaultProxy(gcs_emulator.port)
    proxy.start()
    yield proxy
    proxy.stop()


def test_gcs_resumes_its_session_after_a_kill_resending_at_most_the_part_in_flight(
        temporal_server: TemporalDevServer, gcs_proxy: S3FaultProxy, gcs: Any, gcs_bucket: str, task_queue: str,
        tmp_path: Path) -> None:
    sha = weights_folder(tmp_path / "w")
    # a session (composite_uploads: false): the proxy counts PUTs, which are a session's chunks; a composite
    # upload's parts are POSTs (tests/test_gcs_composite.py kills one between compose and record)
    plan = weights_plan("gcs-kill-resume", {"kind": "local", "path": str(tmp_path / "w")},
                        {**gcs_location(gcs_bucket, "m"), "composite_uploads": False}, part_size="16MiB",
                        concurrency=CONCURRENCY)
    worker = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log",
                           {**TEST_AWS_ENV, "STORAGE_EMULATOR_HOST": gcs_proxy.endpoint})
    worker.start()
    try:
        at_kill, result = kill_and_restart(temporal_server, worker, gcs_proxy, plan)
    finally:
        worker.stop()

    assert result.status.state == MigrationState.completed, result.status.last_error
    blob = gcs.bucket(gcs_bucket).blob("m/model.safetensors")
    assert hashlib.sha256(blob.download_as_bytes()).hexdigest() == sha
    resent = gcs_proxy.uploaded - SIZE  # chunk PUTs only: small files and state are single POSTs
    print(f"\nkilled at {at_kill / MiB:.0f} MiB; re-sent {resent / MiB:.1f} MiB (bound: one part, "
          f"{PART / MiB:.0f} MiB, as a session takes its parts one at a time)")
    assert 0 <= resent <= PART
    assert "resuming upload" in worker.logs()


def test_runpod_volume_resumes_after_a_kill_resending_at_most_the_parts_in_flight(
        temporal_server: TemporalDevServer, provider_worker: WorkerProcess, runpod_proxy: RunPodLimitsProxy,
        s3: Any, bucket: str, tmp_path: Path) -> None:
    sha = weights_folder(tmp_path / "w")
    plan = weights_plan("runpod-kill-resume", {"kind": "local", "path": str(tmp_path / "w")},
                        runpod_location(runpod_proxy.endpoint, bucket, "m"), part_size="16MiB",
                        concurrency=CONCURRENCY)

    at_kill, result = kill_and_restart(temporal_server, provider_worker, runpod_proxy, plan)

    assert result.status.state == MigrationState.completed, result.status.last_error
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key="m/model.safetensors")["Body"].iter_chunks(8 * MiB):
        digest.update(chunk)
    assert digest.hexdigest() == sha
    resent = runpod_proxy.uploaded - SIZE - len(CONFIG)
    print(f"\nkilled at {at_kill / MiB:.0f} MiB; re-sent {resent / MiB:.1f} MiB "
          f"(bound {CONCURRENCY * PART / MiB:.0f} MiB)")
    assert 0 <= resent <= CONCURRENCY * PART
    assert runpod_proxy.refused == []
    assert "resuming upload" in provider_worker.logs()
