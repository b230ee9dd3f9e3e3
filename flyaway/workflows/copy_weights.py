"""``CopyWeightsWorkflow``: list, copy unit by unit, verify. Deterministic orchestration only.

The listing, stored at the destination, is cut into units (a range of its lines, or a piece of a
large file: see ``activities.storage.activities``), one copy activity each. Up to ``parallelism``
of them run at once, on whichever workers poll the queue, so one migration spreads over every
worker. The workflow holds a cursor (the next unit's number), the few units in flight and
counters, never file lists, and continues as new before its history grows large (it lets the
units in flight finish first), so a copy of any number of files fits.

A step that fails for good (retries exhausted, a non-retryable error) does not fail this workflow
when a migration runs it: the migration shows the error and waits for the operator, whose
``retry`` runs the step again here. So a retried migration has one copy child, not a failed one
and a new one beside it; ``abort`` cancels it as usual.

Controls act on the units in flight: ``pause`` cancels them (each runs again on resume, from what
landed), ``tune`` does not touch them (each copy activity reads the ``settings`` query every
couple of seconds and applies them at its next part; a new ``parallelism`` decides how many units
the workflow keeps in flight from then on), and a cancellation (the migration's ``abort``)
cancels them, waits until every activity has stopped writing, and ends the workflow cancelled
without starting anything else. Progress inside a unit goes from the activity straight to the
migration, on change and in steps of a share of the listing, so history stays bounded however
long a unit runs.
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
        CopyCounters,
        CopySettings,
        CopyWeightsInput,
        CopyWeightsResult,
    )
    from flyaway.models.fly_agent import FlyAgent
    from flyaway.models.locations import FlyVolumeLocation
    from flyaway.models.plan import WeightsStage
    from flyaway.workflows.fly_source import AGENT_SCHEDULE_TO_START, agent_stage, run_on_agent
    from flyaway.workflows.stages.base import failure_message

#: continue as new after this many units or history events, well before Temporal's own limits
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
        #: the copy activities in flight, by unit
        self._handles: dict[int, ActivityHandle[CopyCounters]] = {}
        #: units a pause cancelled: each runs again on resume
        self._interrupted: set[int] = set()
        self._failure: ActivityError | None = None
        #: the tasks running units (kept so none is collected while it runs)
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled = False
        #: units finished since the migration was last told
        self._unreported = 0
        #: how many times the operator asked to retry; a step waiting for it waits for the next one
        self._retries = 0
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
                list_source, args=[stage, workflow.info().run_id],
                start_to_close_timeout=timedelta(hours=2), heartbeat_timeout=timedelta(minutes=5),
                retry_policy=copy_retry_policy(stage), task_queue=self._task_queue,
                schedule_to_start_timeout=self._schedule_to_start))
            await self._report()
        listing = request.listing
        await self._copy_units(request)
        assert listing is not None
        if self._unreported:
            await self._report()
        self._show("verifying every listed file at the destination")
        verified = await self._with_operator(lambda: workflow.execute_activity(
            verify_copy, args=[stage, listing], start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=timedelta(minutes=5), retry_policy=copy_retry_policy(stage), task_queue=self._task_queue,
            schedule_to_start_timeout=self._schedule_to_start))
        await workflow.wait_condition(workflow.all_handlers_finished)
        return CopyWeightsResult(files_total=listing.files_total, bytes_total=listing.bytes_total,
                                 counters=request.counters, verify=verified)

    def _has_units(self, request: CopyWeightsInput) -> bool:
        assert request.listing is not None
        return bool(request.redo) or request.next_unit < request.listing.units_total

    async def _copy_units(self, request: CopyWeightsInput) -> None:
        """Keep up to ``parallelism`` units in flight until every unit has run; continue as new (once the
        units in flight are done) when history grows long."""
        started = 0
        try:
            while self._has_units(request) or request.in_flight:
                await workflow.wait_condition(lambda: self._failure is not None or self._can_start(request)
                                              or (not request.in_flight and not self._has_units(request)))
                if self._failure is not None:
                    raise self._failure
                if not self._can_start(request):
                    continue
                if (started >= BATCHES_BEFORE_CONTINUE
                        or workflow.info().get_current_history_length() > HISTORY_EVENTS_BEFORE_CONTINUE
                        or workflow.info().is_continue_as_new_suggested()):
                    await workflow.wait_condition(lambda: not request.in_flight or self._failure is not None)
                    if self._failure is not None:
                        raise self._failure
                    if self._unreported:
                        await self._report()
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(request)
                unit = request.redo.pop(0) if request.redo else request.next_unit
                request.next_unit = max(request.next_unit, unit + 1)
                request.in_flight.append(unit)
                started += 1
                task = asyncio.create_task(self._run_unit(request, unit))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except asyncio.CancelledError:
            self._cancelled = True
            for handle in self._handles.values():
                handle.cancel()
            await workflow.wait_condition(lambda: not self._handles)
            raise

    def _can_start(self, request: CopyWeightsInput) -> bool:
        return (not request.paused and self._has_units(request)
                and len(request.in_flight) < request.settings.parallelism)

    async def _run_unit(self, request: CopyWeightsInput, unit: int) -> None:
        try:
            result = await self._with_operator(lambda: self._copy_unit(request, unit))
        except ActivityError as error:  # the run loop raises it
            if self._failure is None and not self._cancelled:
                self._failure = error
            return
        finally:
            request.in_flight.remove(unit)
        if result is None:
            request.redo.append(unit)
            return
        request.counters.add(result)
        self._show(f"copying: {len(request.in_flight)} units in flight, unit {unit} done")
        self._unreported += 1
        if self._unreported >= request.settings.parallelism:
            await self._report()

    async def _copy_unit(self, request: CopyWeightsInput, unit: int) -> CopyCounters | None:
        """Run one unit; None if a pause interrupted it (it runs again on resume).

        The workflow's own cancellation (the migration aborts) is never mistaken for a pause: the run loop
        cancels every unit, waits until each activity stopped, and propagates.
        """
        assert request.listing is not None and self._stage is not None
        self._interrupted.discard(unit)
        handle = self._handles[unit] = workflow.start_activity(
            copy_batch,
            BatchRequest(stage=self._stage, listing_id=request.listing.listing_id, unit=unit,
                         settings=request.settings, report_to=self._report_to(),
                         report_step=max(1, request.listing.bytes_total // PROGRESS_REPORTS_PER_COPY)),
            start_to_close_timeout=timedelta(hours=48),
            # The plan's heartbeat_timeout, 30 s by default: a copy heartbeats every couple of seconds
            # while it runs (also while a part waits for the bandwidth limit), so 30 s of silence means
            # its worker is gone, and another worker takes the unit over that soon, resuming from the
            # parts that landed; long enough that a loaded worker is not mistaken for a dead one.
            heartbeat_timeout=self._stage.heartbeat_timeout, retry_policy=copy_retry_policy(self._stage),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            task_queue=self._task_queue, schedule_to_start_timeout=self._schedule_to_start)
        try:
            result: CopyCounters = await handle
            return result
        except ActivityError as error:
            if isinstance(error.cause, CancelledError) and unit in self._interrupted and not self._cancelled:
                return None
            raise
        finally:
            del self._handles[unit]

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
                if self._cancelled:
                    raise
                message = failure_message(error)
                retries = self._retries
                self._show(f"waiting for the operator: {message}")
                await workflow.get_external_workflow_handle(parent.workflow_id).signal(COPY_STUCK_SIGNAL, message)
                await workflow.wait_condition(lambda retries=retries: self._retries > retries)  # type: ignore[misc]

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
                                     f"{c.bytes_copied + c.bytes_skipped:,} bytes done{total} at the last unit"
                                     + ("\n\n**paused**" if self._input.paused else ""))

    async def _report(self) -> None:
        """Tell the parent migration how far the copy is: after the listing, then once per ``parallelism`` units
        (each unit's activity reports its own progress meanwhile), so history grows by a few events per unit."""
        self._unreported = 0
        parent = workflow.info().parent
        if parent is None or self._input is None:
            return
        await workflow.get_external_workflow_handle(parent.workflow_id).signal(PROGRESS_SIGNAL, self.progress())

    @workflow.query
    def progress(self) -> CopyWeightsInput | None:
        return self._input

    @workflow.query
    def settings(self) -> CopySettings | None:
        """What the copy activities in flight apply at their next part (they poll this)."""
        return self._input.settings if self._input is not None else None

    @workflow.signal
    def pause(self) -> None:
        if self._input is not None:
            self._input.paused = True
            self._interrupted.update(self._handles)
            for handle in self._handles.values():
                handle.cancel()
            self._show("paused: the units in flight stop, no new part starts")

    @workflow.signal
    def resume(self) -> None:
        if self._input is not None:
            self._input.paused = False
            self._show("resumed")

    @workflow.signal
    def retry(self) -> None:
        self._retries += 1

    @workflow.signal
    def tune(self, settings: CopySettings) -> None:
        if self._input is not None:
            self._input.settings = settings
