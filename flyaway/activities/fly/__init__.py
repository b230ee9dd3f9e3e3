"""Activities on Fly: its agent Machines (``agent``) and the teardown stage (``teardown``).

What they share: a client whose waits let them heartbeat. Fly activities are synchronous (the
client is), so they run in the worker's thread pool, where ``activity.heartbeat`` may be called
from the activity's own thread.
"""

from __future__ import annotations

from temporalio import activity

from flyaway.providers.fly.client import MAX_WAIT_WINDOW_SECONDS, FlyClient


def activity_client(app: str) -> FlyClient:
    """A client for ``app`` whose ``wait`` calls return often enough to heartbeat in time."""
    timeout = activity.info().heartbeat_timeout
    window = MAX_WAIT_WINDOW_SECONDS if timeout is None else int(timeout.total_seconds() / 3)
    return FlyClient(app, wait_window_seconds=max(1, min(MAX_WAIT_WINDOW_SECONDS, window)))
