"""Every source x destination pair through the one engine, every byte checked at the destination.

Sources: tigris and s3 (moto), hf (fake hub), local. Destinations: gcs (gcp-storage-emulator),
runpod_volume (moto behind RunPod's limits), modal_volume (fake SDK), s3 (moto), local. The
fixture set has nested folders, unicode and spaces in names, an empty file and a file of
several parts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flyaway.activities.storage.base import STATE_DIR
from flyaway.models.status import MigrationState
from tests.fakes.hf_hub import FakeHub
from tests.support.env import TEST_RUNPOD_ENV
from tests.support.migrations import migration_result, run_async, start_migration
from tests.support.plans import s3_location, weights_plan
from tests.support.providers import hf_location, modal_location, tree, worker_env
from tests.support.proxies import RunPodLimitsProxy
from tests.support.servers import GcsEmulator, TemporalDevServer, WorkerProcess
from tests.support.trees import make_tree

SOURCES = ("tigris", "s3", "hf", "local")
DESTINATIONS = ("gcs", "runpod_volume", "modal_volume", "s3", "local")
pytestmark = pytest.mark.slow


@pytest.fixture
def matrix_worker(temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path, hub: FakeHub,
                  modal_dir: Path, gcs_emulator: GcsEmulator) -> Iterator[WorkerProcess]:
    env = {**worker_env(hub, modal_dir), **TEST_RUNPOD_ENV, "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint}
    process = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log", env)
    process.start()
    yield process
    process.stop()


def s3_tree(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            key = item["Key"][len(prefix) + 1:]
            if not key.startswith(f"{STATE_DIR}/"):
                found[key] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def test_every_source_to_every_destination(
        temporal_server: TemporalDevServer, matrix_worker: WorkerProcess, moto_server: Any, s3: Any, bucket: str,
        hub: FakeHub, modal_dir: Path, gcs: Any, gcs_bucket: str, runpod_proxy: RunPodLimitsProxy,
        tmp_path: Path) -> None:
    contents = make_tree(tmp_path / "source", seed=11)
    repo = f"acme/matrix-{uuid.uuid4().hex[:6]}"
    hub.add_repo(repo, contents)
    for key, data in contents.items():
        s3.put_object(Bucket=bucket, Key=f"source/{key}", Body=data)
    sources: dict[str, dict[str, Any]] = {
        "tigris": {"kind": "tigris", "bucket": bucket, "prefix": "source", "endpoint_url": moto_server.endpoint,
                   "addressing_style": "path"},
        "s3": s3_location(moto_server.endpoint, bucket, "source"),
        "hf": hf_location(repo),
        "local": {"kind": "local", "path": str(tmp_path / "source")},
    }

    def destination(kind: str, pair: str) -> tuple[dict[str, Any], Callable[[], dict[str, bytes]]]:
        if kind == "gcs":
            return ({"kind": "gcs", "bucket": gcs_bucket, "prefix": pair},
                    lambda: {blob.name[len(pair) + 1:]: blob.download_as_bytes()
                             for blob in gcs.bucket(gcs_bucket).list_blobs(prefix=f"{pair}/")
                             if not blob.name.startswith(f"{pair}/{STATE_DIR}/")})
        if kind == "runpod_volume":
            return ({"kind": "runpod_volume", "volume_id": bucket, "datacenter": "EUR-IS-1", "prefix": pair,
                     "endpoint_url": runpod_proxy.endpoint}, lambda: s3_tree(s3, bucket, pair))
        if kind == "modal_volume":
            return (modal_location(tmp_path / "staging", pair),
                    lambda: tree(modal_dir / "main" / "weights" / pair))
        if kind == "s3":
            return s3_location(moto_server.endpoint, bucket, pair), lambda: s3_tree(s3, bucket, pair)
        return {"kind": "local", "path": str(tmp_path / pair)}, lambda: tree(tmp_path / pair)

    pairs = {}
    for source in SOURCES:
        for kind in DESTINATIONS:
            pair = f"{source}-to-{kind}".replace("_", "-")
            location, read_back = destination(kind, pair)
            plan = weights_plan(f"matrix-{pair}-{uuid.uuid4().hex[:4]}", sources[source], location,
                                part_size="5MiB", concurrency=4,
                                heartbeat_timeout="30s")  # 20 copies share 2 cores: heartbeats may lag
            pairs[pair] = (plan, read_back)

    async def run_all() -> dict[str, Any]:
        ids = {pair: await start_migration(temporal_server, plan, matrix_worker.task_queue)
               for pair, (plan, _) in pairs.items()}
        results = await asyncio.gather(*(migration_result(temporal_server, workflow_id, timeout=600)
                                         for workflow_id in ids.values()))
        return dict(zip(ids, results, strict=True))

    results = run_async(run_all())
    for pair, (_, read_back) in pairs.items():
        assert results[pair].status.state == MigrationState.completed, pair
        assert read_back() == contents, pair
