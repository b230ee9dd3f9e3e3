"""20 small migrations at once on one worker, local -> S3 and local -> local."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from flyaway.models.status import MigrationResult, MigrationState
from flyaway.starter.dev import write_random_file
from tests.support.figures import report
from tests.support.migrations import migration_result, run_async, start_migration
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import RecordingProxy
from tests.support.s3 import s3_sha256
from tests.support.servers import TemporalDevServer, WorkerProcess
from tests.support.trees import MiB

pytestmark = pytest.mark.slow
MIGRATIONS = 20
FILES = {"model.safetensors": 7 * MiB, "config.json": 611, "tokenizer.json": 48_213, "generation_config.json": 0}


def small_weights(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    return {key: write_random_file(folder / key, size) for key, size in FILES.items()}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_twenty_migrations_at_once_on_one_worker(
        temporal_server: TemporalDevServer, worker: WorkerProcess, recording_proxy: RecordingProxy, s3: Any,
        bucket: str, tmp_path: Path) -> None:
    plans, shas = [], []
    for number in range(MIGRATIONS):
        source = tmp_path / f"source-{number}"
        shas.append(small_weights(source))
        destination = (s3_location(recording_proxy.endpoint, bucket, f"m{number}") if number % 2 == 0
                       else {"kind": "local", "path": str(tmp_path / f"landed-{number}")})
        plans.append(weights_plan(f"many-{number}-{worker.task_queue}", {"kind": "local", "path": str(source)},
                                  destination, part_size="5MiB", concurrency=2))

    async def run_all() -> list[MigrationResult]:
        ids = await asyncio.gather(*(start_migration(temporal_server, plan, worker.task_queue) for plan in plans))
        return await asyncio.gather(*(migration_result(temporal_server, workflow_id, timeout=85)
                                      for workflow_id in ids))

    started = time.monotonic()
    results = run_async(run_all())
    elapsed = time.monotonic() - started

    for number, result in enumerate(results):
        assert result.status.state == MigrationState.completed, number
        for key, sha in shas[number].items():
            landed = (s3_sha256(s3, bucket, f"m{number}/{key}") if number % 2 == 0
                      else file_sha256(tmp_path / f"landed-{number}" / key))
            assert landed == sha, (number, key)
    to_s3 = MIGRATIONS // 2 * sum(FILES.values())
    report("many_migrations", migrations=MIGRATIONS, bytes_per_migration=sum(FILES.values()),
           resent_bytes_to_s3=recording_proxy.uploaded - to_s3, wall_seconds=round(elapsed, 1),
           worker_peak_rss_mib=worker.peak_rss // MiB)
    assert recording_proxy.uploaded == to_s3
