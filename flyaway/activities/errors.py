"""Error types that tell Temporal whether retrying can help.

Activities raise these (or plain exceptions for transient trouble). Every class here maps
to a non-retryable ``ApplicationError`` whose ``type`` is the class name, so a workflow can
tell bad input from an outage, and the message is one line that names the field or the
resource and what to do.
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError


class FlyawayError(Exception):
    """A failure that retrying will not fix: the operator has to act."""

    def to_application_error(self) -> ApplicationError:
        return ApplicationError(str(self), type=type(self).__name__, non_retryable=True)


class InvalidPlan(FlyawayError):
    """The plan is malformed or names something that cannot work."""


class MissingCredentials(FlyawayError):
    """A credential the plan needs is not in the worker's environment."""


class AccessDenied(FlyawayError):
    """The provider refused the request with the credentials we have."""


class NotFound(FlyawayError):
    """A bucket, volume, app or object the plan names does not exist."""


class SourceObjectMissing(FlyawayError):
    """A file listed at the source disappeared before it could be copied."""


class DataCorruption(FlyawayError):
    """Bytes at the destination do not match the checksum of the source bytes, again and again."""


class LimitExceeded(FlyawayError):
    """A file or a request is over a limit the destination publishes."""


class Unreachable(FlyawayError):
    """An endpoint did not answer while the plan was being checked (a typo is likelier than an outage)."""


class TimedOut(FlyawayError):
    """Something flyaway waits for (a Fly fork, an agent, a snapshot) did not happen within its deadline."""


NON_RETRYABLE_ERROR_TYPES = [cls.__name__ for cls in
                             (InvalidPlan, MissingCredentials, AccessDenied, NotFound,
                              SourceObjectMissing, DataCorruption, LimitExceeded, Unreachable, TimedOut)]
