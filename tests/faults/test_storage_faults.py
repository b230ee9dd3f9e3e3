"""A local -> S3 copy through a proxy that fails 20% of object-data requests at random."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from flyaway.models.status import MigrationState
from flyaway.starter.dev import write_random_file
from tests.faults import MiB, RecordingProxy, report
from tests.harness import (
    TemporalDevServer,
    WorkerProcess,
    run_migration,
    s3_location,
    weights_plan,
)
from tests.test_resume import s3_sha256

pytestmark = pytest.mark.slow
SEED = 9
SMALL_FILES = 50


def weights_folder(folder: Path) -> dict[str, str]:
    """A 96 MiB file and small files, by key with their sha256."""
    folder.mkdir()
    shas = {"model.safetensors": write_random_file(folder / "model.safetensors", 96 * MiB)}
    for number in range(SMALL_FILES):
        key = f"tokenizer/piece-{number:02d}.bin"
        (folder / "tokenizer").mkdir(exist_ok=True)
        shas[key] = write_random_file(folder / key, 1024 + number * 997)
    return shas


def test_5xx_resets_and_stalls_on_a_fifth_of_requests_cost_only_the_failed_requests(
        temporal_server: TemporalDevServer, worker: WorkerProcess, recording_proxy: RecordingProxy, s3: Any,
        bucket: str, tmp_path: Path) -> None:
    recording_proxy.chaos(0.2, SEED)
    shas = weights_folder(tmp_path / "w")
    total = sum(os.path.getsize(path) for path in (tmp_path / "w").rglob("*") if path.is_file())
    plan = weights_plan("storage-chaos", {"kind": "local", "path": str(tmp_path / "w")},
                        s3_location(recording_proxy.endpoint, bucket, "m"), part_size="8MiB", concurrency=4)
    started = time.monotonic()
    result = run_migration(temporal_server, plan, worker.task_queue, timeout=120)
    elapsed = time.monotonic() - started

    assert result.status.state == MigrationState.completed
    for key, sha in shas.items():
        assert s3_sha256(s3, bucket, f"m/{key}") == sha, key
    resent = recording_proxy.uploaded - total
    recovery = recording_proxy.recovery_seconds()
    report("storage_faults", faults=dict(recording_proxy.faults), failed_request_bytes=recording_proxy.failed_bytes,
           resent_bytes=resent, copied_bytes=total, migration_seconds=round(elapsed, 1),
           recovery_seconds_median=round(statistics.median(recovery), 2),
           recovery_seconds_max=round(max(recovery), 2))
    assert set(recording_proxy.faults) == {"slowdown", "reset", "stall"}, recording_proxy.faults
    assert 0 < resent <= recording_proxy.failed_bytes  # each failed request sent again, nothing else
