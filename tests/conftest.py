"""Session servers (Temporal dev server, moto, GCS emulator) and per-test workers, buckets and proxies."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.env import TEST_AWS_ENV, TEST_POLICY_ENV, TEST_RUNPOD_ENV
from tests.support.proxies import RunPodLimitsProxy, S3FaultProxy
from tests.support.s3 import s3_client
from tests.support.servers import GcsEmulator, MotoServer, TemporalDevServer, WorkerProcess

#: fixtures of the fake hub and the fake Modal SDK, for every test module that copies through them
pytest_plugins = ["tests.support.providers"]

for _name, _value in {**TEST_AWS_ENV, **TEST_POLICY_ENV}.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto_server: MotoServer) -> Any:
    return s3_client(moto_server.endpoint)


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    """A fresh bucket; emptied afterwards so moto's memory stays small."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def s3_proxy(moto_server: MotoServer) -> Iterator[S3FaultProxy]:
    proxy = S3FaultProxy(moto_server.port)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def task_queue() -> str:
    return f"flyaway-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker(temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A running worker on this test's own task queue."""
    process = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log", TEST_AWS_ENV)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def runpod_proxy(moto_server: MotoServer) -> Iterator[RunPodLimitsProxy]:
    """moto with RunPod's S3 API limits; its buckets stand in for network volumes."""
    proxy = RunPodLimitsProxy(moto_server.port)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs"))
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def gcs(gcs_emulator: GcsEmulator) -> Any:
    """A google-cloud-storage client of the emulator."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": gcs_emulator.endpoint})


@pytest.fixture
def gcs_bucket(gcs: Any) -> Iterator[str]:
    """A fresh bucket in the emulator, emptied afterwards (the in-memory emulator forgets the rest)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(name)
    yield name
    for blob in gcs.bucket(name).list_blobs():
        blob.delete()


@pytest.fixture
def provider_worker(temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path,
                    gcs_emulator: GcsEmulator) -> Iterator[WorkerProcess]:
    """A worker whose environment reaches moto (AWS, Tigris and RunPod keys) and the GCS emulator."""
    env = {**TEST_AWS_ENV, **TEST_RUNPOD_ENV, "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint}
    process = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log", env)
    process.start()
    yield process
    process.stop()
