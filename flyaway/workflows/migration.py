"""``MigrationWorkflow``: runs a plan's stages in order and waits for the operator when one fails.

The plan arrives as plain JSON (the Temporal UI sends exactly what was typed) and is
validated here, so a bad plan fails the workflow at once with a non-retryable error instead
of failing workflow tasks forever. A stage that fails for good at run time does not end the
migration: it waits in ``waiting_for_operator``, checkpoints intact, for ``retry`` or ``abort``.

Every control answers with a :class:`ControlResult` describing the state after it took effect.
``abort`` takes effect whatever the migration is doing: the stage in flight is cancelled and
waited for (the copy's activity stops writing first), then every unfinished upload is dropped,
and the migration ends ``aborted``. Cancelling the workflow (the Temporal UI's button) is an abort
too. The migration continues as new, carrying its status and the stages' results, before a stage
starts once its history is long (a stage runs as a child workflow or a few activities, so
that is the point where nothing is in flight). The copy's progress arrives from its activity while a batch runs (see
``flyaway.activities.storage.progress``) and is shown in the ``status`` query and on the UI's page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.storage.activities import abort_uploads
    from flyaway.activities.storage.progress import LIVE_PROGRESS_SIGNAL
    from flyaway.models.canary import CanaryStatus
    from flyaway.models.copy import CopyProgress, CopySettings, CopyWeightsInput, CopyWeightsResult
    from flyaway.models.plan import STAGES, MigrationPlan, parse_plan
    from flyaway.models.status import (
        ControlAction,
        ControlResult,
        MigrationCarry,
        MigrationResult,
        MigrationState,
        MigrationStatus,
        StageResult,
        StageResults,
        StageState,
        StageStatus,
        TuneRequest,
    )
    from flyaway.workflows.canary import CANARY_PROGRESS_SIGNAL
    from flyaway.workflows.copy_weights import COPY_STUCK_SIGNAL, PROGRESS_SIGNAL, CopyWeightsWorkflow
    from flyaway.workflows.fly_source import remove_agents
    from flyaway.workflows.stages import Stage, canary as canary_stage, plan_checks, plan_stages
    from flyaway.workflows.stages.base import StageRefused, failure_message
    from flyaway.workflows.stages.teardown import teardown_refusal

T = TypeVar("T")
STAGE_ATTRIBUTE = SearchAttributeKey.for_keyword("FlyawayStage")
STATE_ATTRIBUTE = SearchAttributeKey.for_keyword("FlyawayState")
PROGRESS_ATTRIBUTE = SearchAttributeKey.for_float("FlyawayProgress")
SEARCH_ATTRIBUTES = (STAGE_ATTRIBUTE, STATE_ATTRIBUTE, PROGRESS_ATTRIBUTE)
#: checking the plan against the outside world: a few tries, then it is the plan's fault
CHECK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
ENDED = (MigrationState.completed, MigrationState.aborted)
#: the plan is checked in the order the stages run; a migration started before checked the secrets
#: before the image, and replays that way (drop it once no migration from before 2026-12 runs)
CHECKS_IN_STAGE_ORDER = "checks-in-stage-order"
_EARLIER_CHECK_ORDER = ("weights", "secrets", "image", "deploy", "canary", "teardown")
#: continue as new before a stage starts once history is this long (Temporal warns at 10,240 events)
HISTORY_EVENTS_BEFORE_CONTINUE = 5_000


def size_text(count: float) -> str:
    """Bytes for people: 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


@workflow.defn(name="MigrationWorkflow")
class MigrationWorkflow:
    def __init__(self) -> None:
        self._plan: MigrationPlan | None = None
        self._status = MigrationStatus(name="", stages=[StageStatus(name=s) for s in STAGES])
        self._paused = False
        self._retry_requested = False
        self._abort_reason: str | None = None
        self._cancelled = False
        self._uploads_dropped = 0
        self._child: workflow.ChildWorkflowHandle[Any, Any] | None = None
        self._settings: CopySettings | None = None
        #: files and bytes the copy had done when its last unit ended, and what its units in flight have done since
        self._copy_files_done = 0
        self._copy_bytes_done = 0
        self._copy_next_unit = 0
        self._copy_in_flight: list[int] = []
        self._live: dict[int, CopyProgress] = {}
        self.results = StageResults()

    # ---- what stage runners see (flyaway.workflows.stages.StageContext) -------------------------

    @property
    def plan(self) -> MigrationPlan:
        assert self._plan is not None
        return self._plan

    def stage_status(self, name: str) -> StageStatus:
        return self._status.stage_status(name)

    async def wait_for_approval(self, stage: str) -> None:
        """Return once approved; an abort cancels the stage, and this wait with it."""
        self.stage_status(stage).detail = f"waiting for `flyaway approve {self.plan.name} {stage}`"
        self._show()
        await workflow.wait_condition(lambda: stage in self._status.approvals)

    async def wait_while_paused(self) -> None:
        await workflow.wait_condition(lambda: not self._paused)

    # ---- the run ---------------------------------------------------------------------------

    @workflow.run
    async def run(self, plan_data: dict[str, Any], carried: MigrationCarry | None = None) -> MigrationResult:
        """``carried`` is what an earlier run of this migration handed over when it continued as new."""
        try:
            plan = parse_plan(plan_data)
        except ValueError as error:
            raise ApplicationError(f"invalid plan: {error}", type="InvalidPlan", non_retryable=True) from None
        self._plan = plan
        if carried is None:
            self._start(plan)
            await self._unless_aborted(self._check(plan))
        else:
            self._status, self._settings, self._paused = carried.status, carried.settings, carried.paused
            self.results = carried.results
        done = self.results.completed()
        for index, stage in enumerate(stage for stage in plan_stages(plan) if stage.name not in done):
            if index or carried is None:  # a run continues as new only after it did some work
                self._continue_as_new_if_long(plan_data)
            self.results = self.results.with_result(stage.name, await self._run_stage(stage))
        self._set_state(MigrationState.completed, stage=None)
        await workflow.wait_condition(workflow.all_handlers_finished)
        weights = self.results.weights
        assert weights is not None
        return MigrationResult(name=plan.name, status=self._status, manifest_key=weights.verify.manifest_key)

    def _start(self, plan: MigrationPlan) -> None:
        self._status.name = plan.name
        self._settings = CopySettings(concurrency=plan.weights.concurrency,
                                      bandwidth_limit=plan.weights.bandwidth_limit, parallelism=plan.weights.parallelism)
        self._status.concurrency = plan.weights.concurrency
        self._status.parallelism = plan.weights.parallelism
        self._status.bandwidth_limit = plan.weights.bandwidth_limit
        for stage in self._status.stages:
            if stage.name not in plan.stages_present():
                stage.state = StageState.skipped
                stage.detail = "not in the plan"

    def _continue_as_new_if_long(self, plan_data: dict[str, Any]) -> None:
        """Between stages nothing is in flight, and handlers only answer at once there (none awaits)."""
        info = workflow.info()
        if ((info.get_current_history_length() > HISTORY_EVENTS_BEFORE_CONTINUE or info.is_continue_as_new_suggested())
                and workflow.all_handlers_finished()):
            assert self._settings is not None
            workflow.continue_as_new(args=[plan_data, MigrationCarry(
                status=self._status, results=self.results, settings=self._settings,
                paused=self._paused)])

    async def _unless_aborted(self, work: Awaitable[T]) -> T:
        """Await ``work``; an abort (or a cancellation of this workflow) cancels it, waits until it has
        stopped (a copy activity stops writing first), and ends the migration aborted."""
        task = asyncio.ensure_future(work)
        try:
            await workflow.wait_condition(lambda: task.done() or self._abort_reason is not None)
        except asyncio.CancelledError:
            self._cancelled = True
            self._abort_reason = self._abort_reason or "the workflow was cancelled"
        if not task.done():
            task.cancel()
            await workflow.wait_condition(task.done)
        if self._abort_reason is not None:
            await self._abort()
        return task.result()

    async def _check(self, plan: MigrationPlan) -> None:
        """The plan against the outside world: credentials, endpoints, buckets, permissions."""
        self._set_state(MigrationState.validating, stage="validate")
        try:
            checks = plan_checks(plan)
            if not workflow.patched(CHECKS_IN_STAGE_ORDER):
                checks.sort(key=lambda check: _EARLIER_CHECK_ORDER.index(check[0]))
            for _stage, check, argument in checks:
                await workflow.execute_activity(check, argument, start_to_close_timeout=timedelta(minutes=5),
                                                retry_policy=CHECK_RETRY)
        except ActivityError as error:
            raise ApplicationError(f"invalid plan: {failure_message(error)}", type="InvalidPlan",
                                   non_retryable=True) from None

    async def _run_stage(self, stage_run: Stage) -> StageResult:
        name = stage_run.name
        stage = self._status.stage_status(name)
        while True:
            await self._unless_aborted(self.wait_while_paused())
            self._set_state(MigrationState.running, stage=name)
            stage.state = StageState.running
            try:
                result = await self._unless_aborted(stage_run.run(self))
            except (ActivityError, ChildWorkflowError, StageRefused) as error:
                message = failure_message(error)
                stage.state, stage.error = StageState.waiting_for_operator, message
                self._status.last_error = f"{name}: {message}"
                self._set_state(MigrationState.waiting_for_operator, stage=name)
                workflow.logger.warning("stage %s waits for the operator: %s", name, message)
                await self._unless_aborted(workflow.wait_condition(lambda: self._retry_requested))
                self._retry_requested = False
                continue
            stage.state, stage.error = StageState.completed, None
            if self._status.last_error and self._status.last_error.startswith(f"{name}: "):
                self._status.last_error = None
            self._show()
            return result

    async def run_child(self, run: Any, arg: Any, stage: str) -> Any:
        """Run ``stage``'s child workflow to its end; the operator's signals go to it, ``abort`` cancels it
        (and waits until it has stopped)."""
        self._child = await workflow.start_child_workflow(
            run, arg, id=f"{workflow.info().workflow_id}-{stage}", task_queue=workflow.info().task_queue,
            static_summary=f"the {stage} stage of migration {self.plan.name}")
        try:
            return await self._child
        finally:
            self._child = None

    async def copy_weights(self) -> CopyWeightsResult:
        assert self._settings is not None
        result: CopyWeightsResult = await self.run_child(
            CopyWeightsWorkflow.run, CopyWeightsInput(stage=self.plan.weights, settings=self._settings,
                                                      paused=self._paused),
            "weights")
        status = self._status
        status.files_done, status.bytes_done = status.files_total, status.bytes_total
        status.stage_status("weights").detail = (
            f"{result.counters.files_copied} copied, {result.counters.files_skipped} unchanged, "
            f"{result.verify.files_verified} of {result.files_total} verified, "
            f"{result.verify.files_without_source_checksum} without a source checksum")
        return result

    async def _abort(self) -> None:
        """End the migration aborted, once the stage in flight has stopped: drop every unfinished upload
        (the copy's activity has stopped writing, so none appears after) and remove the Fly agents."""
        plan = self.plan
        stage = self._status.stage if self._status.stage in STAGES else "weights"  # "validate" is no stage of the plan
        self._status.stage_status(stage).detail = "aborting: dropping unfinished uploads"
        self._show()
        self._uploads_dropped = await workflow.execute_activity(
            abort_uploads, plan.weights, start_to_close_timeout=timedelta(minutes=30),
            retry_policy=RetryPolicy(maximum_attempts=5), summary="drop the copy's unfinished uploads")
        for stage_plan in (plan.weights, plan.secrets):
            if stage_plan is not None:
                await remove_agents(stage_plan, workflow.info().workflow_id, best_effort=True)
        for unfinished in self._status.stages:
            if unfinished.state in (StageState.pending, StageState.running, StageState.waiting_for_operator):
                unfinished.state = StageState.aborted
        self._set_state(MigrationState.aborted, stage=self._status.stage)
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._cancelled:
            raise asyncio.CancelledError(f"aborted: {self._abort_reason}")
        raise ApplicationError(f"aborted by the operator: {self._abort_reason}", type="Aborted", non_retryable=True)

    def _set_state(self, state: MigrationState, stage: str | None) -> None:
        if self._paused and state == MigrationState.running:
            state = MigrationState.paused
        self._status.state, self._status.stage = state, stage
        progress = 100.0 * self._status.bytes_done / self._status.bytes_total if self._status.bytes_total else 0.0
        workflow.upsert_search_attributes([STATE_ATTRIBUTE.value_set(state.value),
                                           STAGE_ATTRIBUTE.value_set(stage or "none"),
                                           PROGRESS_ATTRIBUTE.value_set(round(progress, 1))])
        self._show()

    def _show(self) -> None:
        """The migration's state and progress on the Temporal UI's workflow page (its current details)."""
        status = self._status
        lines = [f"**{status.state.value}**" + (f", stage {status.stage}" if status.stage else "")]
        if status.bytes_total:
            rate = f" at {size_text(status.rate_bytes_per_second)}/s" if status.rate_bytes_per_second else ""
            eta = f", about {status.eta_seconds:.0f} s left" if status.eta_seconds is not None else ""
            lines.append(f"weights: {size_text(status.bytes_done)} of {size_text(status.bytes_total)}, "
                         f"{status.files_done}/{status.files_total} files{rate}{eta}")
        limit = f"{size_text(status.bandwidth_limit)}/s" if status.bandwidth_limit else "unlimited"
        lines.append(f"concurrency {status.concurrency}, bandwidth {limit}, parallelism {status.parallelism}")
        for stage in status.stages:
            if stage.state not in (StageState.pending, StageState.skipped):
                lines.append(f"- {stage.name}: {stage.state.value}" + (f" ({stage.detail})" if stage.detail else ""))
        if status.last_error:
            lines.append(f"last error: {status.last_error}")
        workflow.set_current_details("\n".join(lines))

    # ---- progress from the copy --------------------------------------------------------------

    @workflow.signal(name=PROGRESS_SIGNAL)
    def copy_progress(self, progress: CopyWeightsInput) -> None:
        """The copy workflow's counters after its listing and after each batch."""
        status = self._status
        if progress.listing is not None:
            status.files_total, status.bytes_total = progress.listing.files_total, progress.listing.bytes_total
        counters = progress.counters
        self._copy_files_done = counters.files_copied + counters.files_skipped
        self._copy_bytes_done = counters.bytes_copied + counters.bytes_skipped
        self._copy_next_unit, self._copy_in_flight = progress.next_unit, progress.in_flight
        self._live = {unit: live for unit, live in self._live.items() if self._unit_running(unit)}
        self._show_copy_live()

    @workflow.signal(name=COPY_STUCK_SIGNAL)
    def copy_stuck(self, message: str) -> None:
        """The copy failed for good and waits (as its own workflow) for the operator's ``retry`` or ``abort``."""
        stage = self._status.stage_status("weights")
        stage.state, stage.error = StageState.waiting_for_operator, message
        self._status.last_error = f"weights: {message}"
        self._set_state(MigrationState.waiting_for_operator, stage="weights")
        workflow.logger.warning("stage weights waits for the operator: %s", message)

    @workflow.signal(name=LIVE_PROGRESS_SIGNAL)
    def copy_live_progress(self, progress: CopyProgress) -> None:
        """What a copy activity in flight has done so far; one of a unit that has ended is stale.
        (Its retries are not reported here: ``flyaway status`` reads them from the pending activity.)"""
        if not self._unit_running(progress.unit) or self._status.stage != "weights":
            return
        self._live[progress.unit] = progress
        self._status.rate_bytes_per_second = sum(live.rate_bytes_per_second for live in self._live.values())
        self._show_copy_live()

    def _unit_running(self, unit: int) -> bool:
        """Whether a unit may still be in flight: started after the copy last reported, or in flight then."""
        return unit >= self._copy_next_unit or unit in self._copy_in_flight

    def _show_copy_live(self) -> None:
        self._show_copy_progress(self._copy_files_done + sum(live.files_done for live in self._live.values()),
                                 self._copy_bytes_done + sum(live.bytes_done for live in self._live.values()))

    def _show_copy_progress(self, files_done: int, bytes_done: int) -> None:
        status = self._status
        status.files_done, status.bytes_done = min(files_done, status.files_total), min(bytes_done, status.bytes_total)
        remaining = status.bytes_total - status.bytes_done
        status.eta_seconds = remaining / status.rate_bytes_per_second if status.rate_bytes_per_second > 0 else None
        status.stage_status("weights").detail = f"{status.files_done}/{status.files_total} files"
        self._show()

    @workflow.signal(name=CANARY_PROGRESS_SIGNAL)
    def canary_progress(self, canary: CanaryStatus) -> None:
        """The canary child's state; a canary that paused itself shows the migration paused."""
        self._status.canary = canary
        self._status.stage_status("canary").detail = canary.summary()
        paused = canary.paused or self._paused
        if self._status.state == (MigrationState.running if paused else MigrationState.paused):
            self._set_state(MigrationState.paused if paused else MigrationState.running, "canary")

    # ---- what an operator can see and do -------------------------------------------------------
    # Validators refuse what does not apply, with the reason (a refused update leaves no event);
    # handlers answer with the state and settings after the control took effect.

    @workflow.query
    def status(self) -> MigrationStatus:
        return self._status

    def _answer(self, action: ControlAction, message: str) -> ControlResult:
        status = self._status
        return ControlResult(action=action, name=status.name, state=status.state, stage=status.stage,
                             message=message, concurrency=status.concurrency,
                             bandwidth_limit=status.bandwidth_limit, approvals=list(status.approvals))

    def _require_active(self) -> None:
        if self._plan is None:
            raise ValueError("the migration has not started yet")
        if self._status.state in ENDED:
            raise ValueError(f"the migration has ended ({self._status.state.value})")
        if self._abort_reason is not None:
            raise ValueError("the migration is being aborted")

    @workflow.update
    async def pause(self) -> ControlResult:
        self._paused = True
        if self._status.state == MigrationState.running:
            self._set_state(MigrationState.paused, self._status.stage)
        await self._signal_child("pause")
        return self._answer(ControlAction.pause, "paused: no new part starts; parts in flight finish or are "
                                                 "cancelled, and what landed is kept")

    @pause.validator
    def _validate_pause(self) -> None:
        self._require_active()
        if self._paused:
            raise ValueError("the migration is already paused")

    @workflow.update
    async def resume(self) -> ControlResult:
        self._paused = False
        if self._status.state == MigrationState.paused:
            self._set_state(MigrationState.running, self._status.stage)
        await self._signal_child("resume")
        return self._answer(ControlAction.resume, "resumed from what landed")

    @resume.validator
    def _validate_resume(self) -> None:
        self._require_active()
        if not self._paused and self._status.state != MigrationState.paused:
            raise ValueError("the migration is not paused")

    @workflow.update
    async def retry(self) -> ControlResult:
        if self._status.stage == "weights" and self._child is not None:
            await self._signal_child("retry")  # the copy waits in its own workflow
        else:
            self._retry_requested = True
        stage = self._status.stage
        if stage is not None:
            self._status.stage_status(stage).state = StageState.running
        self._set_state(MigrationState.running, stage)
        return self._answer(ControlAction.retry, f"retrying the {stage} stage from where it stopped")

    @retry.validator
    def _validate_retry(self) -> None:
        self._require_active()
        if self._status.state != MigrationState.waiting_for_operator or self._retry_requested:
            raise ValueError(f"nothing to retry: the migration is {self._status.state.value}, "
                             f"not waiting_for_operator")

    @workflow.update
    async def abort(self, reason: str) -> ControlResult:
        """Takes effect whatever came before; answers once the migration has ended (asking again waits too)."""
        self._abort_reason = self._abort_reason or reason
        await workflow.wait_condition(lambda: self._status.state in ENDED)
        if self._status.state != MigrationState.aborted:
            return self._answer(ControlAction.abort, f"the migration {self._status.state.value} before the abort")
        return self._answer(ControlAction.abort, f"aborted ({self._abort_reason}): the stage in flight stopped, "
                                                 f"{self._uploads_dropped} unfinished uploads dropped")

    @abort.validator
    def _validate_abort(self, reason: str) -> None:
        if self._plan is None:
            raise ValueError("the migration has not started yet")
        if self._status.state in ENDED:
            raise ValueError(f"the migration has ended ({self._status.state.value}); there is nothing to abort")
        if not reason.strip():
            raise ValueError("give a reason for the abort")

    @workflow.update
    async def approve(self, stage: str) -> ControlResult:
        if stage == "canary":  # the canary's current gate, not the stage once and for all
            await self._signal_child("approve")
            return self._answer(ControlAction.approve, "approved the canary's current gate")
        self._status.approvals.append(stage)
        waits_for = teardown_refusal(self.plan, self.results) if stage == "teardown" else None
        if waits_for is not None:
            return self._answer(ControlAction.approve, f"teardown approved; it runs once its gate is met: {waits_for}")
        return self._answer(ControlAction.approve, f"approved the {stage} stage")

    @approve.validator
    def _validate_approve(self, stage: str) -> None:
        self._require_active()
        assert self._plan is not None
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}'; stages are {', '.join(STAGES)}")
        if stage not in self._plan.stages_present():
            raise ValueError(f"stage '{stage}' is not in this migration's plan")
        if stage == "canary":
            canary_stage.check_approvable(self._status.canary)
        elif stage in self._status.approvals:
            raise ValueError(f"stage '{stage}' is already approved")

    @workflow.update
    async def promote(self) -> ControlResult:
        """Skip the canary's remaining steps: all traffic to the new endpoint now."""
        await self._signal_child("promote")
        return self._answer(ControlAction.promote, "promoting: the canary moves all traffic to the new endpoint")

    @promote.validator
    def _validate_promote(self) -> None:
        self._require_active()
        canary_stage.check_promotable(self._status.canary)

    @workflow.update
    async def tune(self, request: TuneRequest) -> ControlResult:
        assert self._settings is not None
        if request.concurrency is not None:
            self._settings.concurrency = request.concurrency
        if request.bandwidth_limit is not None:
            self._settings.bandwidth_limit = request.bandwidth_limit or None
        if request.parallelism is not None:
            self._settings.parallelism = request.parallelism
        self._status.parallelism = self._settings.parallelism
        self._status.concurrency = self._settings.concurrency
        self._status.bandwidth_limit = self._settings.bandwidth_limit
        copying = self._status.stage == "weights"
        if copying:
            await self._signal_child("tune", self._settings)
        self._show()
        limit = f"{size_text(self._settings.bandwidth_limit)}/s" if self._settings.bandwidth_limit else "unlimited"
        return self._answer(ControlAction.tune, f"concurrency {self._settings.concurrency}, bandwidth {limit}, "
                                                f"parallelism {self._settings.parallelism}: "
                                                + ("the copy applies them at its next part" if copying
                                                   else "the copy will use them"))

    @tune.validator
    def _validate_tune(self, request: TuneRequest) -> None:
        self._require_active()
        if request.concurrency is None and request.bandwidth_limit is None and request.parallelism is None:
            raise ValueError("give a concurrency, a bandwidth limit or a parallelism")

    async def _signal_child(self, name: str, *args: Any) -> None:
        if self._child is not None and not self._child.done():
            await self._child.signal(name, *args)
