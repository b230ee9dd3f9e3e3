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


#: The default of :func:`stall_seconds`, kept at 20 s rather than made shorter (issue 15). What a stall costs
#: is this cut, on one stream: under the fault suite's mix (20 % of object requests failing, half of them
#: stalls; 96 MiB and 50 files in 8 MiB parts over 4 streams; ``FLYAWAY_FAULTS_STALL_SECONDS=20 pytest
#: tests/faults/test_storage_faults.py -s``) a copy took 20x its clean time to S3 and 24x from S3 at 20 s,
#: 1.4x and 3.1x at the suite's 3 s. The multiple is about 1 + stall share x cut / a request's clean time,
#: whatever the copy's size, so no fixed cut keeps it small on a fast link, and a shorter one risks worse: a
#: store whose think time (before a GET's first byte, or after a part's last byte while it writes the part:
#: seconds for a 500 MB RunPod part) exceeds the cut has every try of that request cut alike, so the copy
#: never lands it. At a real-world stall rate (0.1 % of 16 MiB parts at 100 MB/s) 20 s costs about 12 %.
#: The right cut is adaptive: from the observed durations of the same kind of request (S3's guidance:
#: retry the slowest 5 % of large requests, small ones after about 2 s), doubled for each consecutive cut of
#: one request so a slow store is never cut for ever. That needs a timeout per request (a boto3 client fixes
#: its read timeout when made), so it belongs here, in the providers' per-request retry, as the next step.
STALL_SECONDS = 20.0


def stall_seconds() -> float:
    """How long a storage request may go without moving a byte before it is cut and sent again.

    A gap between bytes, not a deadline for the request, so a part of any size keeps moving under it;
    silence that long means a stalled connection, which a retry on a new one fixes. The worker's
    ``FLYAWAY_STALL_SECONDS`` changes it (tests cut their proxy's stalls quicker); see ``STALL_SECONDS``."""
    return float(os.environ.get("FLYAWAY_STALL_SECONDS") or STALL_SECONDS)


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
