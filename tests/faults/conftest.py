"""The fault suite's proxy in front of moto, and a worker that cuts stalled requests after a few seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.env import TEST_AWS_ENV
from tests.support.figures import STALL_SECONDS
from tests.support.proxies import RecordingProxy
from tests.support.servers import MotoServer, TemporalDevServer, WorkerProcess


@pytest.fixture
def recording_proxy(moto_server: MotoServer) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(moto_server.port)
    # a stall holds its connection far longer than a few cuts of one request take, so one waited out shows
    # (with a cut of 20 s, FLYAWAY_FAULTS_STALL_SECONDS=20, three stalls of one part in a row take 60 s)
    proxy.stall_seconds = max(proxy.stall_seconds, 10 * STALL_SECONDS)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def stall_cutting_worker(temporal_server: TemporalDevServer, task_queue: str,
                         tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker whose storage requests are cut after ``STALL_SECONDS`` without a byte (3 s unless set)."""
    process = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log",
                            {**TEST_AWS_ENV, "FLYAWAY_STALL_SECONDS": str(STALL_SECONDS)})
    process.start()
    yield process
    process.stop()
