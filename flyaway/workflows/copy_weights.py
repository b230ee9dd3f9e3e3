"""``CopyWeightsWorkflow``: list, copy in batches, verify. Deterministic orchestration only.

It holds a cursor (a byte offset into the listing stored at the destination) and counters,
never file lists, and continues as new before its history grows large, so a copy of any
number of files fits. Pausing or re-tuning cancels the batch in flight; the next batch
attempt resumes from what landed.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.errors import NON_RETRYABLE_ERROR_TYPES
    from flyaway.activities.storage.activities import copy_batch, list_source, verify_copy
    from flyaway.models.copy import (
        BatchRequest,
        BatchResult,
        CopySettings,
        CopyWeightsInput,
        CopyWeightsResult,
        ListingResult,
    )
    from flyaway.models.plan import FlyVolumeLocation, WeightsStage
    from flyaway.models.fly_agent import FlyAgent
    from flyaway.workflows.fly_source import AGENT_SCHEDULE_TO_START, agent_stage, run_on_agent

#: continue as new after this many batches or history events, well before Temporal's own limits
BATCHES_BEFORE_CONTINUE = 40
HISTORY_EVENTS_BEFORE_CONTINUE = 2_000
PROGRESS_SIGNAL = "copy_progress"


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
            request.listing = await workflow.execute_activity(
                list_source, args=[stage, workflow.info().run_id], result_type=ListingResult,
                start_to_close_timeout=timedelta(hours=2), heartbeat_timeout=timedelta(minutes=5),
                retry_policy=copy_retry_policy(stage), task_queue=self._task_queue,
                schedule_to_start_timeout=self._schedule_to_start)
            await self._report()
        listing = request.listing
        batches = 0
        while listing.files_total:
            await workflow.wait_condition(lambda: not request.paused)
            result = await self._copy_one_batch(request)
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
        verified = await workflow.execute_activity(
            verify_copy, args=[stage, listing.listing_id], start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=timedelta(minutes=5), retry_policy=copy_retry_policy(stage), task_queue=self._task_queue,
            schedule_to_start_timeout=self._schedule_to_start)
        return CopyWeightsResult(files_total=listing.files_total, bytes_total=listing.bytes_total,
                                 counters=request.counters, verify=verified)

    async def _copy_one_batch(self, request: CopyWeightsInput) -> BatchResult | None:
        """Run one batch; None if a pause or a tune interrupted it (it resumes on the next try)."""
        assert request.listing is not None and self._stage is not None
        self._interrupted = False
        handle = workflow.start_activity(
            copy_batch,
            BatchRequest(stage=self._stage, listing_id=request.listing.listing_id, offset=request.offset,
                         settings=request.settings),
            result_type=BatchResult, start_to_close_timeout=timedelta(hours=48),
            heartbeat_timeout=self._stage.heartbeat_timeout, retry_policy=copy_retry_policy(self._stage),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            task_queue=self._task_queue, schedule_to_start_timeout=self._schedule_to_start)
        await workflow.wait_condition(lambda: handle.done() or self._interrupted)
        if not handle.done():
            handle.cancel()
        try:
            return await handle
        except ActivityError as error:
            if isinstance(error.cause, CancelledError) and self._interrupted:
                return None
            raise

    async def _report(self) -> None:
        """Tell the parent migration how far the copy is (one signal per batch)."""
        parent = workflow.info().parent
        if parent is None or self._input is None:
            return
        await workflow.get_external_workflow_handle(parent.workflow_id).signal(PROGRESS_SIGNAL, self.progress())

    @workflow.query
    def progress(self) -> CopyWeightsInput | None:
        return self._input

    @workflow.signal
    def pause(self) -> None:
        if self._input is not None:
            self._input.paused = True
            self._interrupted = True

    @workflow.signal
    def resume(self) -> None:
        if self._input is not None:
            self._input.paused = False

    @workflow.signal
    def tune(self, settings: CopySettings) -> None:
        if self._input is not None:
            self._input.settings = settings
            self._interrupted = True
