"""``CopyWeightsWorkflow``: list, copy in batches, verify. Deterministic orchestration only.

It holds a cursor (a byte offset into the listing stored at the destination) and counters,
never file lists, and continues as new before its history grows large, so a copy of any
number of files fits.

A step that fails for good (retries exhausted, a non-retryable error) does not fail this workflow
when a migration runs it: the migration shows the error and waits for the operator, whose
``retry`` runs the step again here. So a retried migration has one copy child, not a failed one
and a new one beside it; ``abort`` cancels it as usual.

Controls act on the batch in flight: ``pause`` cancels it (the next attempt resumes from what
landed), ``tune`` does not touch it (the copy activity reads the ``settings`` query every
couple of seconds and applies them at its next part), and a cancellation (the migration's
``abort``) cancels it, waits until the activity has stopped writing, and ends the workflow
cancelled without starting anything else. Progress inside a batch goes from the activity
straight to the migration, on change and in steps of a share of the listing, so history stays
bounded however long a batch runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError
from temporalio.workflow import ActivityHandle

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.storage.activities import copy_batch, list_source, verify_copy
    from flyaway.errors import NON_RETRYABLE_ERROR_TYPES
    from flyaway.models.copy import (
        BatchRequest,
        BatchResult,
        CopySettings,
        CopyWeightsInput,
        CopyWeightsResult,
        ListingResult,
    )
    from flyaway.models.fly_agent import FlyAgent
    from flyaway.models.locations import FlyVolumeLocation
    from flyaway.models.plan import WeightsStage
    from flyaway.workflows.fly_source import AGENT_SCHEDULE_TO_START, agent_stage, run_on_agent
    from flyaway.workflows.stages import failure_message

#: continue as new after this many batches or history events, well before Temporal's own limits
BATCHES_BEFORE_CONTINUE = 40
HISTORY_EVENTS_BEFORE_CONTINUE = 2_000
T = TypeVar("T")
PROGRESS_SIGNAL = "copy_progress"
COPY_STUCK_SIGNAL = "copy_stuck"
#: most progress reports the copy activities send the migration over a whole copy (history stays bounded)
PROGRESS_REPORTS_PER_COPY = 400


def copy_retry_policy(stage: WeightsStage) -> RetryPolicy:
    """Outages are waited out (no attempt limit unless the plan sets one); bad input is not retried."""
    return RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                       maximum_interval=stage.retry_max_interval, maximum_attempts=stage.max_attempts or 0,
                       non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)


@workflow.defn(name="CopyWeightsWorkflow")
class CopyWeightsWorkflow:
    def __init__(self) -> None:
        self._input: CopyWeightsInput | None = None
        self._interrupted = False
        self._retry_requested = False
        self._stage: WeightsStage | None = None
        #: where the copy activities run: the volume agent's queue for a fly_volume source, else the workflow's
        self._task_queue: str | None = None
        self._schedule_to_start: timedelta | None = None

    @workflow.run
    async def run(self, request: CopyWeightsInput) -> CopyWeightsResult:
        """Copy; a fly_volume source is read by a volume agent, removed once verified or when the copy fails."""
        self._input = request
        if not isinstance(request.stage.source, FlyVolumeLocation):
            return await self._copy(request)

        async def copy_on(agent: FlyAgent) -> CopyWeightsResult:
            request.agent = agent  # kept across continue-as-new
            return await self._copy(request)

        return await run_on_agent(request.stage, request.agent, copy_on)

    async def _copy(self, request: CopyWeightsInput) -> CopyWeightsResult:
        stage = self._stage = agent_stage(request.stage, request.agent)
        if request.agent is not None:
            self._task_queue, self._schedule_to_start = request.agent.task_queue, AGENT_SCHEDULE_TO_START
        if request.listing is None:
            request.listing = await self._with_operator(lambda: workflow.execute_activity(
                list_source, args=[stage, workflow.info().run_id], result_type=ListingResult,
                start_to_close_timeout=timedelta(hours=2), heartbeat_timeout=timedelta(minutes=5),
                retry_policy=copy_retry_policy(stage), task_queue=self._task_queue,
                schedule_to_start_timeout=self._schedule_to_start))
            await self._report()
        listing = request.listing
        batches = 0
        while listing.files_total:
            await workflow.wait_condition(lambda: not request.paused)
            self._show(f"copying from listing offset {request.offset}")
            result = await self._with_operator(lambda: self._copy_one_batch(request))
            if result is None:
                continue
            request.counters.add(result)
            request.offset = result.next_offset
            batches += 1
            await self._report()
            if result.done:
                break
            if (batches >= BATCHES_BEFORE_CONTINUE
                    or workflow.info().get_current_history_length() > HISTORY_EVENTS_BEFORE_CONTINUE
                    or workflow.info().is_continue_as_new_suggested()):
                workflow.continue_as_new(request)
        self._show("verifying every listed file at the destination")
        verified = await self._with_operator(lambda: workflow.execute_activity(
            verify_copy, args=[stage, listing], start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=timedelta(minutes=5), retry_policy=copy_retry_policy(stage), task_queue=self._task_queue,
            schedule_to_start_timeout=self._schedule_to_start))
        return CopyWeightsResult(files_total=listing.files_total, bytes_total=listing.bytes_total,
                                 counters=request.counters, verify=verified)

    async def _copy_one_batch(self, request: CopyWeightsInput) -> BatchResult | None:
        """Run one batch; None if a pause interrupted it (it resumes on the next try).

        The workflow's own cancellation (the migration aborts) is never mistaken for a pause: it
        cancels the activity, waits until the activity stopped, and propagates.
        """
        assert request.listing is not None and self._stage is not None
        self._interrupted = False
        handle = workflow.start_activity(
            copy_batch,
            BatchRequest(stage=self._stage, listing_id=request.listing.listing_id, offset=request.offset,
                         settings=request.settings, report_to=self._report_to(),
                         report_step=max(1, request.listing.bytes_total // PROGRESS_REPORTS_PER_COPY)),
            result_type=BatchResult, start_to_close_timeout=timedelta(hours=48),
            # The plan's heartbeat_timeout, 30 s by default: a copy heartbeats every couple of seconds
            # while it runs (also while a part waits for the bandwidth limit), so 30 s of silence means
            # its worker is gone, and another worker takes the batch over that soon, resuming from the
            # parts that landed; long enough that a loaded worker is not mistaken for a dead one.
            heartbeat_timeout=self._stage.heartbeat_timeout, retry_policy=copy_retry_policy(self._stage),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            task_queue=self._task_queue, schedule_to_start_timeout=self._schedule_to_start)
        try:
            await workflow.wait_condition(lambda: handle.done() or self._interrupted)
            if not handle.done():
                handle.cancel()
                await workflow.wait_condition(handle.done)
        except asyncio.CancelledError:
            await self._stop(handle)
            raise
        try:
            return handle.result()
        except ActivityError as error:
            if isinstance(error.cause, CancelledError) and self._interrupted:
                return None
            raise

    async def _with_operator(self, step: Callable[[], Awaitable[T]]) -> T:
        """Run ``step``; when it fails for good under a migration, tell the migration why and run it again
        on the operator's ``retry`` (see the module's docstring)."""
        while True:
            try:
                return await step()
            except ActivityError as error:
                parent = workflow.info().parent
                if parent is None:
                    raise
                message = failure_message(error)
                self._retry_requested = False
                self._show(f"waiting for the operator: {message}")
                await workflow.get_external_workflow_handle(parent.workflow_id).signal(COPY_STUCK_SIGNAL, message)
                await workflow.wait_condition(lambda: self._retry_requested)

    @staticmethod
    async def _stop(handle: ActivityHandle[BatchResult]) -> None:
        """Cancel the batch and wait until the activity has stopped, so nothing writes after the workflow ends."""
        handle.cancel()
        await workflow.wait_condition(handle.done)

    def _report_to(self) -> str | None:
        parent = workflow.info().parent
        return parent.workflow_id if parent is not None else None

    def _show(self, what: str) -> None:
        """The copy's current step and counters, for the Temporal UI's workflow page."""
        if self._input is None:
            return
        c, listing = self._input.counters, self._input.listing
        total = f" of {listing.files_total} files ({listing.bytes_total:,} bytes)" if listing else ""
        workflow.set_current_details(f"{what}\n\n{c.files_copied + c.files_skipped} files, "
                                     f"{c.bytes_copied + c.bytes_skipped:,} bytes done{total} at the last batch"
                                     + ("\n\n**paused**" if self._input.paused else ""))

    async def _report(self) -> None:
        """Tell the parent migration how far the copy is (one signal per batch)."""
        parent = workflow.info().parent
        if parent is None or self._input is None:
            return
        await workflow.get_external_workflow_handle(parent.workflow_id).signal(PROGRESS_SIGNAL, self.progress())

    @workflow.query
    def progress(self) -> CopyWeightsInput | None:
        return self._input

    @workflow.query
    def settings(self) -> CopySettings | None:
        """What the copy activity in flight applies at its next part (it polls this)."""
        return self._input.settings if self._input is not None else None

    @workflow.signal
    def pause(self) -> None:
        if self._input is not None:
            self._input.paused = True
            self._interrupted = True
            self._show("paused: the batch in flight stops, no new part starts")

    @workflow.signal
    def resume(self) -> None:
        if self._input is not None:
            self._input.paused = False
            self._show("resumed")

    @workflow.signal
    def retry(self) -> None:
        self._retry_requested = True

    @workflow.signal
    def tune(self, settings: CopySettings) -> None:
        if self._input is not None:
            self._input.settings = settings
