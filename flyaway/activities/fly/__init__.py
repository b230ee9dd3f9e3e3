"""Activities on Fly: its agent Machines (``agent``) and the teardown stage (``teardown``).

What they share: a client whose waits let them heartbeat, and final errors. Fly activities
are synchronous (the client is), so they run in the worker's thread pool, where
``activity.heartbeat`` may be called from the activity's own thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import structlog
from temporalio import activity

from flyaway.activities.errors import FlyawayError
from flyaway.providers.fly.client import MAX_WAIT_WINDOW_SECONDS, FlyClient
from flyaway.redaction import scrub

P = ParamSpec("P")
R = TypeVar("R")
log = structlog.get_logger(__name__)


def activity_client(app: str) -> FlyClient:
    """A client for ``app`` whose ``wait`` calls return often enough to heartbeat in time."""
    timeout = activity.info().heartbeat_timeout
    window = MAX_WAIT_WINDOW_SECONDS if timeout is None else int(timeout.total_seconds() / 3)
    return FlyClient(app, wait_window_seconds=max(1, min(MAX_WAIT_WINDOW_SECONDS, window)))


def final_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """flyaway's own errors leave a Fly activity as non-retryable ``ApplicationError``s, scrubbed."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except FlyawayError as error:
            log.error("fly activity failed for good", error=str(error), error_type=type(error).__name__)
            raise type(error)(scrub(str(error))).to_application_error() from None

    return wrapper
