"""End to end through the dev server and a worker: local -> gcs, tigris -> runpod_volume, tigris -> gcs.
Every byte lands, the manifest is right, no state is left behind, and RunPod's limits hold."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from flyaway.activities.storage.base import STATE_DIR
from flyaway.models.status import MigrationState
from tests.support.migrations import run_migration
from tests.support.plans import gcs_location, manifest_key, runpod_location, tigris_location, weights_plan
from tests.support.proxies import RunPodLimitsProxy
from tests.support.servers import TemporalDevServer, WorkerProcess
from tests.support.trees import make_tree

PREFIX = "models/llama"


def sizes_and_hashes(contents: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    return {key: (len(data), hashlib.sha256(data).hexdigest()) for key, data in contents.items()}


def parse_manifest(body: bytes) -> dict[str, dict[str, Any]]:
    return {entry["key"]: entry for entry in map(json.loads, body.decode().splitlines())}


def read_gcs(gcs: Any, bucket: str, prefix: str) -> tuple[dict[str, bytes], list[str]]:
    """(objects by relative key, names of flyaway's state files) below ``prefix``."""
    objects, state = {}, []
    for blob in gcs.list_blobs(bucket, prefix=f"{prefix}/"):
        rel = blob.name[len(prefix) + 1:]
        if rel.startswith(f"{STATE_DIR}/"):
            state.append(rel)
        else:
            objects[rel] = blob.download_as_bytes()
    return objects, state


def read_s3(s3: Any, bucket: str, prefix: str) -> tuple[dict[str, bytes], list[str]]:
    objects, state = {}, []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            rel = item["Key"][len(prefix) + 1:]
            if rel.startswith(f"{STATE_DIR}/"):
                state.append(rel)
            else:
                objects[rel] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects, state


def assert_copied(objects: dict[str, bytes], state: list[str], manifest: bytes, contents: dict[str, bytes],
                  plan_name: str) -> None:
    assert objects == contents
    entries = parse_manifest(manifest)
    assert {key: (e["size"], e["sha256"]) for key, e in entries.items()} == sizes_and_hashes(contents)
    assert entries["nested/deeper/shard-00001.bin"]["parts"] == 3
    assert state == [manifest_key(plan_name)], f"leftover state {state}"


def put_tree(s3: Any, bucket: str, prefix: str, contents: dict[str, bytes]) -> None:
    for key, data in contents.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)


def test_local_to_gcs(temporal_server: TemporalDevServer, provider_worker: WorkerProcess, gcs: Any,
                      gcs_bucket: str, tmp_path: Path) -> None:
    contents = make_tree(tmp_path / "weights")
    plan = weights_plan("local-to-gcs", {"kind": "local", "path": str(tmp_path / "weights")},
                        gcs_location(gcs_bucket, PREFIX), part_size="5MiB", concurrency=4)

    result = run_migration(temporal_server, plan, provider_worker.task_queue)

    assert result.status.state == MigrationState.completed
    objects, state = read_gcs(gcs, gcs_bucket, PREFIX)
    manifest = gcs.bucket(gcs_bucket).blob(f"{PREFIX}/{manifest_key(plan['name'])}").download_as_bytes()
    assert_copied(objects, state, manifest, contents, plan["name"])
    again = run_migration(temporal_server, plan, provider_worker.task_queue)
    assert again.status.stage_status("weights").detail.startswith(f"0 copied, {len(contents)} unchanged")


def test_tigris_to_runpod_volume(temporal_server: TemporalDevServer, provider_worker: WorkerProcess,
                                 moto_server: Any, s3: Any, bucket: str, runpod_proxy: RunPodLimitsProxy,
                                 tmp_path: Path) -> None:
    """The Tigris bucket and the network volume are two prefixes of one moto bucket; the volume is
    reached through the proxy that refuses what RunPod refuses."""
    contents = make_tree(tmp_path / "src", seed=3)
    put_tree(s3, bucket, "tigris", contents)
    plan = weights_plan("tigris-to-runpod", tigris_location(moto_server.endpoint, bucket, "tigris"),
                        runpod_location(runpod_proxy.endpoint, bucket, PREFIX), part_size="5MiB", concurrency=4)

    result = run_migration(temporal_server, plan, provider_worker.task_queue)

    assert result.status.state == MigrationState.completed, result.status.last_error
    objects, state = read_s3(s3, bucket, PREFIX)
    manifest = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{manifest_key(plan['name'])}")["Body"].read()
    assert_copied(objects, state, manifest, contents, plan["name"])
    assert runpod_proxy.refused == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_tigris_to_gcs(temporal_server: TemporalDevServer, provider_worker: WorkerProcess, moto_server: Any,
                       s3: Any, bucket: str, gcs: Any, gcs_bucket: str, tmp_path: Path) -> None:
    contents = make_tree(tmp_path / "src", seed=5)
    put_tree(s3, bucket, "hub", contents)
    plan = weights_plan("tigris-to-gcs", tigris_location(moto_server.endpoint, bucket, "hub"),
                        gcs_location(gcs_bucket, PREFIX), part_size="5MiB", concurrency=4)

    result = run_migration(temporal_server, plan, provider_worker.task_queue)

    assert result.status.state == MigrationState.completed, result.status.last_error
    objects, state = read_gcs(gcs, gcs_bucket, PREFIX)
    manifest = gcs.bucket(gcs_bucket).blob(f"{PREFIX}/{manifest_key(plan['name'])}").download_as_bytes()
    assert_copied(objects, state, manifest, contents, plan["name"])
