"""How failures are written into Temporal's history: flyaway's own clear errors carry no Python stack trace.

A non-retryable ``ApplicationError`` is flyaway's answer to something a person must fix (an invalid
plan, denied access, corrupt data, an abort): its message says what and where, and the Python
stack trace under it in the Temporal UI only hides that. Every other failure keeps its trace.
The worker's log keeps the trace of every error.
"""

from __future__ import annotations

from temporalio.api.failure.v1 import Failure
from temporalio.converter import DefaultFailureConverter, PayloadConverter
from temporalio.exceptions import ApplicationError


class PlainFailureConverter(DefaultFailureConverter):
    def to_failure(self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure) -> None:
        if isinstance(exception, ApplicationError) and exception.non_retryable:
            exception.__traceback__ = None
        super().to_failure(exception, payload_converter, failure)
