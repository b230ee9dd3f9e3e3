"""A stand-in inference endpoint: healthy, failing every fifth request, or slow.

The mode can change while it runs, so one server can play a new side that breaks and then
recovers. Failures are deterministic (every fifth request), so a 20% rate is exactly 20%.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

from tests.fakes.loopback import JsonHandler, LoopbackServer

Mode = Literal["healthy", "failing", "slow"]


class _Handler(JsonHandler):
    def _answer(self) -> None:
        self.read_json()
        status = self.owner.next_status(dict(self.headers))
        self.send_json(status, {"ok": status == 200, "choices": [{"text": "hi"}]})

    do_GET = do_POST = _answer


class FakeEndpoint(LoopbackServer):
    handler = _Handler

    def __init__(self, mode: Mode = "healthy", slow_seconds: float = 0.3, fail_every: int = 5) -> None:
        self.mode: Mode = mode
        self.slow_seconds = slow_seconds
        self.fail_every = fail_every
        self.requests = 0
        self.last_headers: dict[str, str] = {}
        self._lock = threading.Lock()

    def next_status(self, headers: dict[str, str]) -> int:
        with self._lock:
            self.requests += 1
            number = self.requests
            self.last_headers = headers
        if self.mode == "slow":
            time.sleep(self.slow_seconds)
        if self.mode == "failing" and number % self.fail_every == 0:
            return 500
        return 200
