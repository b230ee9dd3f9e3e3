"""Bytes that arrive corrupted, and source files that change during the copy."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from flyaway.models.status import MigrationState
from flyaway.starter.dev import write_random_file
from tests.support.migrations import eventually, migration_result, migration_status, run_async, start_migration
from tests.support.plans import s3_location, weights_plan
from tests.support.proxies import S3FaultProxy
from tests.support.s3 import plain_client, put_multipart
from tests.support.servers import TemporalDevServer, WorkerProcess

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
                        == MigrationState.waiting_for_operator and s, 300, what="waiting_for_operator")
    assert status.last_error is not None
    assert "DataCorruption" in status.last_error and "model.safetensors" in status.last_error
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "m/model.safetensors" not in keys
    # one attempt, ended by the corruption itself: parts still sending when the file was given up did not
    # outlive it (they used to retry against the aborted upload and the attempt ended cancelled, 6 times over)
    assert worker.logs().count("Completing activity as failed") == 1, worker.logs()[-3000:]


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


def test_an_s3_source_that_flips_a_byte_in_every_5th_read_ends_completed_with_every_byte_right(
        temporal_server: TemporalDevServer, worker: WorkerProcess, s3_proxy: S3FaultProxy, moto_server: Any,
        bucket: str, tmp_path: Path) -> None:
    """Ten single-part objects (their ETag is their MD5), one with a SHA256 checksum and one of twelve parts with a
    CRC32 each (as the AWS SDKs upload), read through a proxy that flips one byte in every 5th object GET: a
    small file is read again whole, a part of the large one on its own, and the copy completes with every
    byte right. (An object whose parts tell no checksum of their own is read again whole, and a large one
    then ends DataCorruption naming it: tests/test_source_integrity.py.)"""
    client = plain_client(moto_server.endpoint)
    contents = {f"shard-{i:02d}.bin": os.urandom(300_000) for i in range(10)}
    for key, data in contents.items():
        client.put_object(Bucket=bucket, Key=f"src/{key}", Body=data)
    contents["tokenizer.json"] = os.urandom(50_000)
    client.put_object(Bucket=bucket, Key="src/tokenizer.json", Body=contents["tokenizer.json"],
                      ChecksumAlgorithm="SHA256")
    parts = [os.urandom(5 * MiB) for _ in range(11)] + [os.urandom(4096)]
    put_multipart(client, bucket, "src/model.safetensors", parts, checksum="CRC32")
    contents["model.safetensors"] = b"".join(parts)
    s3_proxy.flip_every = 5
    plan = weights_plan("flip-every-5th", s3_location(s3_proxy.endpoint, bucket, "src"),
                        {"kind": "local", "path": str(tmp_path / "out")}, part_size="5MiB", concurrency=2)
    started = time.monotonic()
    workflow_id = run_async(start_migration(temporal_server, plan, worker.task_queue))
    status = eventually(lambda: (s := run_async(migration_status(temporal_server, workflow_id))).state
                        in (MigrationState.completed, MigrationState.waiting_for_operator) and s, 180,
                        what="the copy to end")

    landed = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    print(f"\nflip every 5th GET: {s3_proxy.flipped} flips, {status.state} in {time.monotonic() - started:.1f} s")
    assert s3_proxy.flipped >= 3
    assert status.state == MigrationState.completed, status.last_error
    assert landed == contents
    logs = worker.logs()
    assert "bytes read do not match the source's checksum" in logs  # a small file, read again whole
    assert "a source part read wrong; reading that part again" in logs
