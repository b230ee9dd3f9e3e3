"""One migration over several workers: units of the listing run on every worker of the queue, and a large
file is split into pieces that land in one multipart upload, each part's sha256 in the manifest."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flyaway.models.status import ControlResult, MigrationState, TuneRequest
from tests.support.env import TEST_AWS_ENV
from tests.support.migrations import (
    TWO_ACTIVITIES,
    eventually,
    migration_result,
    run_async,
    run_migration,
    running_workers,
    start_migration,
)
from tests.support.plans import manifest_key, s3_location, weights_plan
from tests.support.servers import TemporalDevServer, WorkerProcess
from tests.support.trees import make_tree

MiB = 1024 * 1024
PART = 5 * MiB
BIG = 9 * PART + 123  # ten parts, the last one short: five pieces of two parts


@pytest.fixture
def two_workers(temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    with running_workers(temporal_server, task_queue, tmp_path, 2, TEST_AWS_ENV, TWO_ACTIVITIES) as workers:
        yield workers


def source_tree(root: Path) -> dict[str, bytes]:
    contents = make_tree(root)
    big = os.urandom(BIG)
    (root / "big.safetensors").write_bytes(big)
    return {**contents, "big.safetensors": big}


def check_split_entry(entry: dict[str, Any], data: bytes) -> None:
    parts = [data[start:start + PART] for start in range(0, len(data), PART)]
    assert entry["sha256_of"] == "parts" and entry["part_size"] == PART and entry["parts"] == len(parts)
    assert entry["part_sha256"] == [hashlib.sha256(part).hexdigest() for part in parts]
    assert entry["sha256"] == hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).hexdigest()


def check_manifest(manifest: dict[str, dict[str, Any]], contents: dict[str, bytes]) -> None:
    """Files over the piece size were split and say so; the others carry their own sha256."""
    assert manifest["big.safetensors"]["sha256_of"] == "parts"
    for key, data in contents.items():
        if len(data) > 10 * MiB:
            check_split_entry(manifest[key], data)
        else:
            assert manifest[key]["sha256_of"] == "file" and manifest[key]["sha256"] == hashlib.sha256(data).hexdigest()


def test_local_to_s3_spreads_over_two_workers(
        temporal_server: TemporalDevServer, two_workers: list[WorkerProcess], moto_server: Any,
        s3: Any, bucket: str, tmp_path: Path) -> None:
    contents = source_tree(tmp_path / "weights")
    worker = two_workers[0]
    plan = weights_plan("fan-out-s3", {"kind": "local", "path": str(tmp_path / "weights")},
                        s3_location(moto_server.endpoint, bucket, "m"), part_size="5MiB", piece_size="10MiB",
                        concurrency=2, parallelism=4, batch_files=3)

    result = run_migration(temporal_server, plan, worker.task_queue)

    assert result.status.state == MigrationState.completed
    for key, data in contents.items():
        assert s3.get_object(Bucket=bucket, Key=f"m/{key}")["Body"].read() == data, key
    body = s3.get_object(Bucket=bucket, Key=f"m/{manifest_key(plan['name'])}")["Body"].read()
    manifest = {entry["key"]: entry for entry in map(json.loads, body.decode().splitlines())}
    check_manifest(manifest, contents)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert all("unit copied" in process.logs() for process in two_workers)

    again = run_migration(temporal_server, plan, worker.task_queue)
    assert again.status.stage_status("weights").detail.startswith(f"0 copied, {len(contents)} unchanged")


def test_local_to_local_split_file(temporal_server: TemporalDevServer, two_workers: list[WorkerProcess],
                                   tmp_path: Path) -> None:
    contents = source_tree(tmp_path / "weights")
    plan = weights_plan("fan-out-local", {"kind": "local", "path": str(tmp_path / "weights")},
                        {"kind": "local", "path": str(tmp_path / "out")}, part_size="5MiB", piece_size="10MiB",
                        parallelism=3)

    result = run_migration(temporal_server, plan, two_workers[0].task_queue)

    assert result.status.state == MigrationState.completed
    for key, data in contents.items():
        assert (tmp_path / "out" / key).read_bytes() == data, key
    manifest = {entry["key"]: entry for entry in map(json.loads, (tmp_path / "out" / manifest_key(
        plan["name"])).read_text().splitlines())}
    check_manifest(manifest, contents)


def units_in_flight(worker: WorkerProcess) -> int:
    """How many units the worker is running now, by its log."""
    running = 0
    for line in worker.logs().splitlines():
        event = json.loads(line).get("event") if line.startswith("{") else None
        running += (event == "copying unit") - (event == "unit copied")
    return running


def test_parallelism_tuned_live(temporal_server: TemporalDevServer, worker: WorkerProcess, tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "big.safetensors").write_bytes(os.urandom(48 * MiB))
    plan = weights_plan("fan-out-tune", {"kind": "local", "path": str(tmp_path / "weights")},
                        {"kind": "local", "path": str(tmp_path / "out")}, part_size="4MiB", piece_size="8MiB",
                        concurrency=1, parallelism=2, bandwidth_limit="4MiB")  # six pieces, 2 s each

    async def tune() -> tuple[str, ControlResult]:
        workflow_id = await start_migration(temporal_server, plan, worker.task_queue)
        eventually(lambda: units_in_flight(worker) == 2, 30, interval=0.05, what="two units in flight")
        handle = (await temporal_server.client()).get_workflow_handle(workflow_id)
        return workflow_id, await handle.execute_update("tune", TuneRequest(parallelism=4), result_type=ControlResult)

    workflow_id, tuned = run_async(tune())
    assert tuned.state == MigrationState.running and "parallelism 4" in tuned.message
    eventually(lambda: units_in_flight(worker) >= 3, 30, interval=0.05, what="more units in flight after tune")
    result = run_async(migration_result(temporal_server, workflow_id))
    assert result.status.state == MigrationState.completed and result.status.parallelism == 4
    assert (tmp_path / "out" / "big.safetensors").read_bytes() == (tmp_path / "weights" / "big.safetensors").read_bytes()
