"""Waiting for a new service: poll until it answers its health check or the deadline passes.

Polling sends a heartbeat each round (when run inside an activity), so Temporal sees a live
activity through model loading that takes many minutes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import structlog
from temporalio import activity

from flyaway.errors import Unreachable
from flyaway.models.deploy import SCALE_DOWN_MARGIN_SECONDS, HealthCheck
from flyaway.redaction import scrub

log = structlog.get_logger(__name__)
#: longest single health request; a server that takes longer is not ready
REQUEST_TIMEOUT_SECONDS = 30.0


def heartbeat(detail: str) -> None:
    if activity.in_activity():
        activity.heartbeat(detail)


@dataclass(frozen=True)
class HealthProbe:
    """What to GET, and headers the platform needs on it (RunPod's API key: never logged or returned)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)


async def poll_until(check: Callable[[], Awaitable[str | None]], health: HealthCheck, what: str) -> None:
    """Call ``check`` every ``health.interval`` until it returns None (done); it returns what it saw
    otherwise. ``Unreachable`` with the last thing seen once ``health.deadline`` has passed."""
    deadline = time.monotonic() + health.deadline.total_seconds()
    while True:
        seen = await check()
        if seen is None:
            return
        heartbeat(f"{what}: {seen}")
        if time.monotonic() >= deadline:
            raise Unreachable(f"{what} did not happen within {health.deadline}; last seen: {seen}")
        await asyncio.sleep(health.interval.total_seconds())


async def wait_healthy(probe: HealthProbe, health: HealthCheck) -> None:
    """GET ``probe.url`` until it answers 200 (redirects followed)."""
    timeout = min(REQUEST_TIMEOUT_SECONDS, max(1.0, health.interval.total_seconds()))
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True, headers=probe.headers) as client:

        async def answered() -> str | None:
            try:
                response = await client.get(probe.url)
            except httpx.HTTPError as error:
                return scrub(f"{type(error).__name__}: {error}") or type(error).__name__
            return None if response.status_code == 200 else f"HTTP {response.status_code}"

        await poll_until(answered, health, f"GET {probe.url} answering 200")
    log.info("new service is healthy", url=probe.url)


async def measure_from_zero(probe: HealthProbe, health: HealthCheck, idle_seconds: float) -> tuple[float, float]:
    """Leave the service idle for its platform's idle window and a margin (heartbeating), so the platform
    scales it to zero, then time the first request until it answers 200. Returns (idle wait, seconds)."""
    idle = idle_seconds + SCALE_DOWN_MARGIN_SECONDS
    waited_until = time.monotonic() + idle
    while (left := waited_until - time.monotonic()) > 0:
        heartbeat(f"idle for {left:.0f}s more, so the service scales to zero before a start from zero is timed")
        await asyncio.sleep(min(left, 30.0))
    started = time.monotonic()
    await wait_healthy(probe, health)
    return round(idle, 3), round(time.monotonic() - started, 3)
