"""The fault suite's proxy in front of moto."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults import RecordingProxy
from tests.harness import MotoServer


@pytest.fixture
def recording_proxy(moto_server: MotoServer) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(moto_server.port)
    proxy.start()
    yield proxy
    proxy.stop()
