"""flyaway's error vocabulary: the kinds of failure that retrying will not fix.

Providers and activities raise these (or plain exceptions for transient trouble). The worker's
failure path (:mod:`flyaway.failures`) turns each into a non-retryable ``ApplicationError`` whose
``type`` is the class name, so a workflow can tell bad input from an outage, and the message is
one line that names the field or the resource and what to do. Nothing here imports Temporal.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager


class FlyawayError(Exception):
    """A failure that retrying will not fix: the operator has to act."""


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


#: errors of the disk or the file system that no retry fixes, with what the operator does about them.
#: Others (EIO, ENOSPC while space is freed, ESTALE, EAGAIN, network errors) stay retryable.
_PERMANENT_OS_ERRORS: dict[int, tuple[type[FlyawayError], str]] = {
    errno.ENAMETOOLONG: (LimitExceeded, "the name is longer than the file system takes; rename it at the source "
                                        "or leave it out with exclude"),
    errno.EISDIR: (InvalidPlan, "a folder stands where a file goes; move it away at the destination"),
    errno.ENOTDIR: (InvalidPlan, "a file stands where a folder goes; move it away at the destination"),
    errno.EEXIST: (InvalidPlan, "a file stands where a folder goes; move it away at the destination"),
    errno.EROFS: (AccessDenied, "the file system is read-only; mount it writable or choose another destination"),
    errno.EACCES: (AccessDenied, "the worker may not touch it; fix its permissions"),
    errno.EPERM: (AccessDenied, "the worker may not touch it; fix its permissions"),
    errno.ELOOP: (InvalidPlan, "too many symbolic links; replace the link with what it points to"),
}


def permanent_os_error(error: OSError) -> FlyawayError | None:
    """The flyaway error an ``OSError`` stands for when retrying cannot fix it, else None (retry)."""
    kind = _PERMANENT_OS_ERRORS.get(error.errno or 0)
    if kind is None:
        return None
    error_type, advice = kind
    where = f"{error.filename}: " if error.filename else ""
    return error_type(f"{where}{error.strerror or type(error).__name__}; {advice}")


@contextmanager
def decoding_state(what: str) -> Iterator[None]:
    """Decode flyaway's own state read back from ``what``: bytes that do not decode stay that way on every
    retry, so they are ``DataCorruption`` of that state, not an error to retry."""
    try:
        yield
    except (ValueError, KeyError, TypeError) as error:  # UnicodeDecodeError, JSONDecodeError, ValidationError,
        # or JSON of another shape
        raise DataCorruption(f"{what}: flyaway's state there does not decode ({type(error).__name__}); delete it "
                             f"and retry the stage, which copies again what it recorded") from None
