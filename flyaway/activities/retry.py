"""Per-request retries with tenacity: transient trouble is retried with jittered backoff.

Temporal retries a whole activity; this retries one request inside it, so a single reset
connection or 503 costs one request rather than the activity's work so far.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

T = TypeVar("T")
log = structlog.get_logger(__name__)

#: how long one request is retried before the activity gives up and Temporal retries it
REQUEST_RETRY_SECONDS = 60.0
#: seconds to open a connection; a healthy endpoint answers a SYN in milliseconds
CONNECT_TIMEOUT_SECONDS = 5.0


def stall_seconds() -> float:
    """How long a storage request may go without moving a byte before it is cut and sent again.

    Sized to a part, not to a whole request: a healthy connection moves bytes every second, so
    20 s of silence means a stalled connection, which a retry on a new one fixes. The worker's
    ``FLYAWAY_STALL_SECONDS`` changes it (tests cut their proxy's stalls quicker)."""
    return float(os.environ.get("FLYAWAY_STALL_SECONDS") or 20.0)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("request failed, retrying", attempt=state.attempt_number,
                error=f"{type(exc).__name__}: {exc}", sleep=round(state.upcoming_sleep, 2))


def retrying(is_transient: Callable[[BaseException], bool],
             max_seconds: float = REQUEST_RETRY_SECONDS) -> Retrying:
    """A tenacity ``Retrying`` that retries errors ``is_transient`` accepts, with jitter."""
    return Retrying(retry=retry_if_exception(is_transient), stop=stop_after_delay(max_seconds),
                    wait=wait_random_exponential(multiplier=0.2, max=10.0), reraise=True,
                    before_sleep=_log_retry)


def async_retrying(is_transient: Callable[[BaseException], bool],
                   max_seconds: float = REQUEST_RETRY_SECONDS) -> AsyncRetrying:
    """The asyncio twin of :func:`retrying`."""
    return AsyncRetrying(retry=retry_if_exception(is_transient), stop=stop_after_delay(max_seconds),
                         wait=wait_random_exponential(multiplier=0.2, max=10.0), reraise=True,
                         before_sleep=_log_retry)


def call_with_retries(fn: Callable[[], T], is_transient: Callable[[BaseException], bool],
                      max_seconds: float = REQUEST_RETRY_SECONDS) -> T:
    """Call ``fn`` until it succeeds, a non-transient error is raised, or time runs out."""
    for attempt in retrying(is_transient, max_seconds):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover
