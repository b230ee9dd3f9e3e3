"""What every provider's requests share: which failures are transient, retries of one request with
tenacity, and the reading of an error body.

Temporal retries a whole activity; this retries one request inside it, so a single reset
connection or 503 costs one request rather than the activity's work so far. One rule says what is
worth another request (:func:`transient_status`): no answer at all, 408, 429 and 5xx but 501. A
provider whose SDK raises its own exceptions maps them to a status and asks the same rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from flyaway.redaction import scrub

T = TypeVar("T")
log = structlog.get_logger(__name__)

#: how long one request is retried before the activity gives up and Temporal retries it
REQUEST_RETRY_SECONDS = 60.0
#: seconds to open a connection; a healthy endpoint answers a SYN in milliseconds
CONNECT_TIMEOUT_SECONDS = 5.0


def transient_status(status: int | None) -> bool:
    """An answer worth another request: none at all (``None``), 408, 429, or a 5xx other than 501 (Not
    Implemented stays so)."""
    return status is None or status in (408, 429) or (status >= 500 and status != 501)


class ProviderUnavailable(Exception):
    """A provider answered with a transient status (429, 5xx): worth another request."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def is_transient(error: BaseException) -> bool:
    """For httpx clients: network trouble (timeouts included), and answers :func:`transient_status` accepts."""
    if isinstance(error, ProviderUnavailable):
        return True
    if isinstance(error, httpx.HTTPStatusError):
        return transient_status(error.response.status_code)
    return isinstance(error, httpx.TransportError)


def problem(response: httpx.Response, limit: int = 500) -> str:
    """An error body on one scrubbed line: an RFC 9457 problem's detail (else title) and field errors, or the
    body's text."""
    try:
        body = response.json()
        parts = [body.get("detail") or body.get("title"), *(body.get("errors") or [])]
        text = "; ".join(str(part) for part in parts if part) or str(body)
    except (ValueError, AttributeError):
        text = response.text
    return scrub(" ".join(text.split()) or response.reason_phrase)[:limit]


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
