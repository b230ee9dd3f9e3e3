"""Cutting a copy attempt that heartbeats but moves no bytes.

A single request that stalls is cut by its socket timeouts (``retry.stall_seconds``) and sent
again. What those cannot see (a hang outside a socket, bytes trickling in just often enough) would
keep an attempt alive for ever, since its heartbeat goes on; so the attempt watches its own byte
counters too, and gives up when none moved for longer than any healthy gap. Temporal then retries
it, and the new attempt resumes from the parts that landed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from flyaway.activities.storage.engine import CopyEngine

T = TypeVar("T")

#: no healthy copy goes this long without a byte landing: longer than a CompleteMultipartUpload may
#: take (s3.COMPLETE_READ_TIMEOUT_SECONDS), or a part in flight on a slow link
STALLED_AFTER_SECONDS = 900.0
CHECK_SECONDS = 5.0


class CopyStalled(Exception):
    """No byte moved for too long; retryable: the next attempt resumes from the checkpoint."""


def _moved(engine: CopyEngine) -> tuple[int, ...]:
    c = engine.counters
    return c.bytes_done, c.bytes_uploaded, c.files_copied, c.files_skipped, c.parts_reused


def stalled_after(engine: CopyEngine, floor: float = STALLED_AFTER_SECONDS) -> float:
    """The longest healthy gap between two parts landing: ``floor``, or more under a bandwidth limit
    that makes every stream's part wait its turn."""
    rate = engine.bandwidth.rate
    return max(floor, 4 * engine.concurrency * engine.part_size / rate) if rate else floor


async def _until_stalled(engine: CopyEngine, floor: float, check_seconds: float) -> None:
    moved, since = _moved(engine), time.monotonic()
    while True:
        await asyncio.sleep(check_seconds)
        now = _moved(engine)
        if now != moved:
            moved, since = now, time.monotonic()
        elif time.monotonic() - since > stalled_after(engine, floor):
            raise CopyStalled(f"no bytes moved for {time.monotonic() - since:.0f} s; this attempt is cut and the "
                              f"copy resumes from the parts that landed")


async def cut_when_stalled(engine: CopyEngine, copy: Awaitable[T], floor: float = STALLED_AFTER_SECONDS,
                           check_seconds: float = CHECK_SECONDS) -> T:
    """Await ``copy``; cancel it and raise ``CopyStalled`` once ``engine``'s counters stop moving."""
    copying = asyncio.ensure_future(copy)
    watching = asyncio.create_task(_until_stalled(engine, floor, check_seconds))
    try:
        await asyncio.wait({copying, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (copying, watching):
            if not task.done():
                task.cancel()
                await asyncio.wait({task})  # unlike awaiting the task, a cancellation of ours still ends us
    if copying.done() and not copying.cancelled():
        return copying.result()
    watching.result()  # raises CopyStalled
    raise AssertionError("unreachable")
