"""The fault suite: every migration here ends completed and verified, copying nothing twice beyond
the requests that failed or the parts in flight, and each test prints its figures (faults
injected, bytes re-sent, time to recover) and appends them to ``artifacts/faults.jsonl``.

- ``test_storage_faults``: 5xx, reset connections and stalls that hold the connection open, on 20%
  of object-data requests, in front of an S3 destination and then an S3 source: each copy ends
  within a bound relative to the same copy without faults.
- ``test_worker_kills``: the worker SIGKILLed at 5 random points of a weights + secrets migration.
- ``test_many_migrations``: 20 migrations at once on one worker.

Stopping and restarting the Temporal server mid-copy is
``tests/test_resume.py::test_a_restarted_temporal_server_does_not_lose_the_copy``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.harness import REPO, S3FaultProxy

FIGURES = REPO / "artifacts" / "faults.jsonl"
MiB = 1024 * 1024
#: the fault suite's worker cuts a request after this many seconds without a byte (FLYAWAY_STALL_SECONDS)
STALL_SECONDS = 3


def report(test: str, **figures: Any) -> None:
    """Print the figures (shown with ``pytest -s``) and append them as one JSON line for the record."""
    line = json.dumps({"test": test, **figures}, sort_keys=True)
    print(f"\n{test}: {line}")
    FIGURES.parent.mkdir(exist_ok=True)
    with FIGURES.open("a") as out:
        out.write(line + "\n")


class RecordingProxy(S3FaultProxy):
    """Remembers when each request first failed and when it last got through, to time recovery
    and to count the parts that landed (each part's path is the same on every try)."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.failed_at: dict[str, float] = {}
        self.landed_at: dict[str, float] = {}
        self.received_at = 0.0

    def draw_fault(self, command: str, path: str, size: int) -> str | None:
        self.received_at = time.monotonic()  # a whole request arrived
        fault = super().draw_fault(command, path, size)
        if fault is not None:
            self.failed_at.setdefault(f"{command} {path}", time.monotonic())
        return fault

    def hold(self, command: str, path: str, status: int) -> float:
        if status < 300:
            self.landed_at[f"{command} {path}"] = time.monotonic()
        return 0.0

    def recovery_seconds(self) -> list[float]:
        """For each request that failed, how long until a try of it got through."""
        return [self.landed_at[request] - failed for request, failed in self.failed_at.items()]

    def landed_parts(self) -> int:
        return sum(request.startswith("PUT ") and "partNumber=" in request for request in list(self.landed_at))
