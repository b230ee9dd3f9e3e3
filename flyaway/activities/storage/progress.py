"""What a running copy activity exchanges with the outside: heartbeats, the migration's progress, tuned settings.

- It heartbeats every ``HEARTBEAT_SECONDS`` (details: ``CopyProgress``), so Temporal sees it alive and an
  operator's cancellation (pause, abort) reaches it within seconds (the worker's heartbeat throttle is
  set low to match, see ``flyaway.workers.main``).
- It reads the ``settings`` query of its copy workflow as often and applies what an operator tuned at the
  next part, without restarting the batch.
- It signals its migration the bytes and files landed so far, on change, at most every ``REPORT_SECONDS``
  times the copy's ``parallelism`` and only after ``report_step`` more bytes landed (the copy workflow sets the step to a share of the
  listing), so the migration's history stays bounded however long a batch runs. An attempt that fails is
  not reported: ``flyaway status`` reads the failure from the pending activity.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from flyaway.activities.storage.engine import CopyEngine
from flyaway.models.copy import BatchRequest, CopyProgress, CopySettings

log = structlog.get_logger(__name__)

HEARTBEAT_SECONDS = 2.0
REPORT_SECONDS = 5.0
LIVE_PROGRESS_SIGNAL = "copy_live_progress"
SETTINGS_QUERY = "settings"
RPC_TIMEOUT = timedelta(seconds=5)


def _client() -> Client | None:
    try:
        return activity.client()
    except RuntimeError:  # run outside a worker (ActivityEnvironment): nobody to ask or tell
        return None


class CopyReporter:
    """Runs beside one copy attempt's engine for as long as the attempt runs."""

    def __init__(self, engine: CopyEngine, request: BatchRequest) -> None:
        self.engine = engine
        self.request = request
        self.info = activity.info()
        self.client = _client()
        self.started = time.monotonic()
        self.reported_at = float("-inf")
        self.reported_bytes = 0

    def progress(self) -> CopyProgress:
        c = self.engine.counters
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return CopyProgress(unit=self.request.unit, files_done=c.files_copied + c.files_skipped,
                            bytes_done=c.bytes_done, bytes_uploaded=c.bytes_uploaded,
                            rate_bytes_per_second=c.bytes_uploaded / elapsed, uploads=dict(c.uploads))

    async def run(self) -> None:
        while True:
            progress = self.progress()
            activity.heartbeat(progress)
            await self._apply_tuned_settings()
            if self._report_due(progress):
                await self._report(progress.model_copy(update={"uploads": {}}))
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def _report_due(self, progress: CopyProgress) -> bool:
        moved = progress.bytes_done - self.reported_bytes
        # the copy's activities in flight share the pace, so the migration hears about as often however many run
        if moved <= 0 or time.monotonic() - self.reported_at < REPORT_SECONDS * self.request.settings.parallelism:
            return False
        return self.reported_bytes == 0 or moved >= self.request.report_step

    async def _report(self, progress: CopyProgress) -> None:
        if self.client is None or self.request.report_to is None:
            return
        self.reported_at, self.reported_bytes = time.monotonic(), progress.bytes_done
        try:
            await self.client.get_workflow_handle(self.request.report_to).signal(
                LIVE_PROGRESS_SIGNAL, progress, rpc_timeout=RPC_TIMEOUT)
        except RPCError as error:  # progress is advisory: the copy goes on
            log.info("could not report progress to the migration", error=str(error))

    async def _apply_tuned_settings(self) -> None:
        if self.client is None or self.info.workflow_id is None:
            return
        try:
            settings = await self.client.get_workflow_handle(self.info.workflow_id).query(
                SETTINGS_QUERY, result_type=CopySettings, rpc_timeout=RPC_TIMEOUT)
        except (RPCError, WorkflowQueryFailedError) as error:
            log.info("could not read the copy's settings", error=str(error))
            return
        if settings is not None and settings != self.request.settings:
            log.info("applying tuned settings", concurrency=settings.concurrency,
                     bandwidth_limit=settings.bandwidth_limit)
            self.request.settings = settings
            self.engine.tune(settings)
