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
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def stall_cutting_worker(temporal_server: TemporalDevServer, task_queue: str,
                         tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker whose storage requests are cut after ``STALL_SECONDS`` without a byte (20 s by default)."""
    process = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log",
                            {**TEST_AWS_ENV, "FLYAWAY_STALL_SECONDS": str(STALL_SECONDS)})
    process.start()
    yield process
    process.stop()
