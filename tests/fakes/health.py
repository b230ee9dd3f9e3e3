"""A new service starting up: its health path answers 503 until it is ready, then 200.

Stands in for the URL a platform gives the deployed service, so the deploy stage's health
check runs against a real HTTP server. Records every request's path and headers.
"""

from __future__ import annotations

import threading

from tests.support.servers import HttpServer, JsonHandler


class _Handler(JsonHandler):
    def do_GET(self) -> None:
        status = self.owner.answer(self.path, dict(self.headers))
        self.send_json(status, {"status": "ok" if status == 200 else "starting"})


class StartingService(HttpServer):
    handler = _Handler

    def __init__(self, path: str = "/health", ready_after: int = 0) -> None:
        self.path = path
        #: health requests answered 503 before the service is ready (-1: never ready)
        self.ready_after = ready_after
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()

    def answer(self, path: str, headers: dict[str, str]) -> int:
        with self._lock:
            self.requests.append((path, headers))
            if path != self.path:
                return 404
            seen = sum(1 for p, _ in self.requests if p == self.path)
            return 200 if 0 <= self.ready_after < seen else 503
