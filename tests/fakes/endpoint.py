"""A stand-in inference endpoint: healthy, failing every fifth request, or slow; with vLLM's metrics.

The mode can change while it runs, so one server can play a new side that breaks and then
recovers. Failures are deterministic (every fifth request), so a 20% rate is exactly 20%.

Like vLLM's OpenAI server, it serves a Prometheus page at ``/metrics``, rendered by
``prometheus_client`` in the text exposition format, with vLLM's names, labels and latency
buckets: ``vllm:request_success_total`` by ``finished_reason`` ("stop" for an answer, "error"
for a failure) and ``vllm:e2e_request_latency_seconds``. Only inference requests (``/v1/...``)
are counted, as vLLM does; ``/health`` and the page itself are not. ``restart()`` starts the
counters again from zero, as a restarted server would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tests.support.servers import HttpServer, JsonHandler

Mode = Literal["healthy", "failing", "slow"]
MODEL = "tiny"
#: vLLM's buckets for vllm:e2e_request_latency_seconds
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)


class _Handler(JsonHandler):
    def _answer(self) -> None:
        if self.path == "/metrics":
            self._metrics_page()
            return
        started = time.perf_counter()
        self.read_json()
        status = self.owner.next_status(dict(self.headers))
        if self.path.startswith("/v1/"):
            self.owner.metrics.observe(status == 200, time.perf_counter() - started)
        self.send_json(status, {"ok": status == 200, "choices": [{"text": "hi"}]})

    def _metrics_page(self) -> None:
        self.owner.page_headers = dict(self.headers)
        data = self.owner.metrics.page()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


class VllmMetrics:
    """One server process's metrics, as vLLM registers them (children created at start, at zero)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._finished = Counter("vllm:request_success", "Count of successfully processed requests.",
                                 ["model_name", "finished_reason"], registry=self.registry)
        self._latency = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                                  ["model_name"], buckets=LATENCY_BUCKETS, registry=self.registry)
        for reason in ("stop", "length", "abort", "error"):
            self._finished.labels(MODEL, reason)
        self._latency.labels(MODEL)
        started = Gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                        registry=self.registry)
        started.set(time.time())

    def observe(self, ok: bool, seconds: float) -> None:
        self._finished.labels(MODEL, "stop" if ok else "error").inc()
        self._latency.labels(MODEL).observe(seconds)

    def page(self) -> bytes:
        return generate_latest(self.registry)


class FakeEndpoint(HttpServer):
    handler = _Handler

    def __init__(self, mode: Mode = "healthy", slow_seconds: float = 0.3, fail_every: int = 5) -> None:
        self.mode: Mode = mode
        self.slow_seconds = slow_seconds
        self.fail_every = fail_every
        self.requests = 0
        self.last_headers: dict[str, str] = {}
        self.page_headers: dict[str, str] = {}  # of the last request for /metrics
        self.metrics = VllmMetrics()
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

    def restart(self) -> None:
        """Counters back to zero and a new process start time, as after a restart of the server."""
        self.metrics = VllmMetrics()


@contextmanager
def client_traffic(*endpoints: FakeEndpoint, pause_seconds: float = 0.01) -> Iterator[None]:
    """Clients sending tiny completions to each endpoint, one after another, until the block ends."""
    stop = threading.Event()

    def send(endpoint: FakeEndpoint) -> None:
        with httpx.Client(base_url=endpoint.endpoint, timeout=5) as client:
            while not stop.is_set():
                client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
                stop.wait(pause_seconds)

    threads = [threading.Thread(target=send, args=(endpoint,), daemon=True) for endpoint in endpoints]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()
