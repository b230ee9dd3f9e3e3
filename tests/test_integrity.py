"""Bytes that arrive corrupted, and source files that change during the copy."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from flyaway.models.status import MigrationState
from flyaway.starter.dev import write_random_file
from tests.harness import (
    S3FaultProxy,
    TemporalDevServer,
    WorkerProcess,
    eventually,
    migration_result,
    migration_status,
    run_async,
    s3_location,
    start_migration,
    weights_plan,
)

MiB = 1024 * 1024


def two_files(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"model.safetensors": write_random_file(folder / "model.safetensors", 24 * MiB),
            "config.json": write_random_file(folder / "config.json", 4096)}


def test_a_corrupted_part_is_caught_and_sent_again(temporal_server: TemporalDevServer, worker: WorkerProcess,
                                                   s3_proxy: S3FaultProxy, s3: Any, bucket: str,
                                                   tmp_path: Path) -> None:
    shas = two_files(tmp_path / "w")
    s3_proxy.corrupt = 2
    plan = weights_plan("corrupt-once", {"kind": "local", "path": str(tmp_path / "w")},
                        s3_location(s3_proxy.endpoint, bucket, "m"), part_size="8MiB", concurrency=2)
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    result = run_async(migration_result(temporal_server, workflow_id, timeout=120))

    assert result.status.state == MigrationState.completed
    assert s3_proxy.corrupted == 2
    for key, sha in shas.items():
        body = s3.get_object(Bucket=bucket, Key=f"m/{key}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha, key


def test_persistent_corruption_asks_the_operator_naming_the_file(
        temporal_server: TemporalDevServer, worker: WorkerProcess, s3_proxy: S3FaultProxy, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    two_files(tmp_path / "w")
    s3_proxy.corrupt = -1
    plan = weights_plan("corrupt-always", {"kind": "local", "path": str(tmp_path / "w")},
                        s3_location(s3_proxy.endpoint, bucket, "m"), part_size="8MiB", concurrency=2,
                        include=["model.safetensors"])
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    status = eventually(lambda: (s := run_async(migration_status(temporal_server, workflow_id))).state
                        == MigrationState.waiting_for_operator and s, 120, what="waiting_for_operator")
    assert status.last_error is not None
    assert "DataCorruption" in status.last_error and "model.safetensors" in status.last_error
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "m/model.safetensors" not in keys


def test_a_file_rewritten_during_the_copy_ends_with_its_new_content(
        temporal_server: TemporalDevServer, worker: WorkerProcess, s3_proxy: S3FaultProxy, s3: Any, bucket: str,
        tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    write_random_file(folder / "model.safetensors", 64 * MiB)
    plan = weights_plan("changing-source", {"kind": "local", "path": str(folder)},
                        s3_location(s3_proxy.endpoint, bucket, "m"), part_size="8MiB", concurrency=2,
                        bandwidth_limit="8MiB")
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    eventually(lambda: s3_proxy.uploaded >= 8 * MiB, 60, interval=0.05, what="the copy to be under way")
    new_sha = write_random_file(folder / "model.safetensors", 64 * MiB)
    rewritten_at = s3_proxy.uploaded
    result = run_async(migration_result(temporal_server, workflow_id, timeout=120))

    assert rewritten_at < 64 * MiB
    assert result.status.state == MigrationState.completed
    body = s3.get_object(Bucket=bucket, Key="m/model.safetensors")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == new_sha
    assert "source file changed while copying" in worker.logs()
