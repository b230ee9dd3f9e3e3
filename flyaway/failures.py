"""The one failure path: how an exception leaving an activity becomes a Temporal failure, and how it is written.

Every worker registers :class:`FailureInterceptor`, so no activity maps its own errors:

- flyaway's own errors (:mod:`flyaway.errors`), and ``OSError``s no retry fixes, leave as
  non-retryable ``ApplicationError``s typed by their class name;
- any other exception (a client library's, a network error) leaves as a retryable
  ``ApplicationError`` of its class name, so Temporal tries the activity again;
- either way the message is scrubbed of every registered secret value and the original chain is
  cut, since a cause's message or arguments could hold a value the scrubber does not know.

Temporal's own exceptions (an ``ApplicationError`` an activity raised itself, a cancellation) pass
through untouched.

A non-retryable failure is flyaway's answer to something a person must fix (an invalid plan, denied
access, corrupt data, an abort): its message says what and where, and the Python stack trace under
it in the Temporal UI only hides that, so :class:`PlainFailureConverter` leaves it out. Every other
failure keeps its trace.

Temporal keeps the failure of a retried activity's last attempt with the pending activity, where
``flyaway status`` and the UI read it while the stage retries, only up to 4 KiB
(``limit.mutableStateActivityFailureSize.error``), and puts "Failure exceeds size limit." in place of
a larger one; a botocore error's trace alone is about 5 KiB. So each level of a failure keeps the
start of its message and the end of its stack trace (the frames that raised), within the sizes below.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DefaultFailureConverter, PayloadConverter
from temporalio.exceptions import ApplicationError, TemporalError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from flyaway.errors import FlyawayError, permanent_os_error
from flyaway.redaction import scrub

log = structlog.get_logger(__name__)


def activity_failure(error: BaseException) -> BaseException:
    """What ``error`` leaves an activity as: itself (Temporal's own, or not an ``Exception``), or a typed,
    scrubbed ``ApplicationError``."""
    if isinstance(error, TemporalError) or not isinstance(error, Exception):
        return error
    final: FlyawayError | None = error if isinstance(error, FlyawayError) else None
    if isinstance(error, OSError):
        final = permanent_os_error(error)
    if final is not None:
        log.error("activity failed for good", error=scrub(str(final)), error_type=type(final).__name__)
        return ApplicationError(scrub(str(final)), type=type(final).__name__, non_retryable=True)
    message = scrub(str(error))
    log.warning("activity failed; Temporal will retry it", error=message, error_type=type(error).__name__)
    return ApplicationError(message, type=type(error).__name__).with_traceback(error.__traceback__)


@contextmanager
def activity_failures() -> Iterator[None]:
    """Let what the block raises leave as :func:`activity_failure` says (the original chain cut)."""
    try:
        yield
    except BaseException as error:
        failure = activity_failure(error)
        if failure is error:
            raise
        raise failure from None


class FailureInterceptor(Interceptor):
    """Maps every exception that leaves an activity through :func:`activity_failure`."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _MapFailures(next)


class _MapFailures(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        with activity_failures():
            return await self.next.execute_activity(input)


class WorkerActivityEnvironment(ActivityEnvironment):
    """An ``ActivityEnvironment`` (activities run in this process, as the CLI's plan check and the tests run
    them) whose activities fail the way :class:`FailureInterceptor` makes them fail on a worker."""

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with activity_failures():
            result = super().run(fn, *args, **kwargs)
        return _mapped(result) if inspect.isawaitable(result) else result


async def _mapped(result: Awaitable[Any]) -> Any:
    with activity_failures():
        return await result


class PlainFailureConverter(DefaultFailureConverter):
    def to_failure(self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure) -> None:
        if isinstance(exception, ApplicationError) and exception.non_retryable:
            exception.__traceback__ = None
        super().to_failure(exception, payload_converter, failure)
        _fit(failure, payload_converter)


MESSAGE_CHARS = 2_000
STACK_TRACE_CHARS = 1_200


def _shorter(message: str, stack_trace: str) -> tuple[str, str]:
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS - 1] + "…"
    if len(stack_trace) > STACK_TRACE_CHARS:
        stack_trace = "…" + stack_trace[1 - STACK_TRACE_CHARS:]
    return message, stack_trace


def _fit(failure: Failure, payload_converter: PayloadConverter) -> None:
    """Cut this level of ``failure`` to the sizes above (its causes were cut as they were converted), also
    where the codec will encrypt its message and stack trace (``encoded_attributes``, still plain JSON here)."""
    if not failure.HasField("encoded_attributes"):
        failure.message, failure.stack_trace = _shorter(failure.message, failure.stack_trace)
        return
    attributes: Any = payload_converter.from_payloads([failure.encoded_attributes])[0]
    if isinstance(attributes, dict):
        message, stack_trace = _shorter(str(attributes.get("message", "")), str(attributes.get("stack_trace", "")))
        failure.encoded_attributes.CopyFrom(
            payload_converter.to_payloads([{"message": message, "stack_trace": stack_trace}])[0])
