"""``MigrationWorkflow``: runs a plan's stages in order and waits for the operator when one fails.

The plan arrives as plain JSON (the Temporal UI sends exactly what was typed) and is
validated here, so a bad plan fails the workflow at once with a non-retryable error instead
of failing workflow tasks forever. A stage that fails for good at run time does not end the
migration: it waits in ``waiting_for_operator``, checkpoints intact, for ``retry`` or ``abort``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.fly_teardown import check_teardown
    from flyaway.activities.deploy.activities import check_deploy
    from flyaway.activities.image_activities import check_image_stage
    from flyaway.activities.secrets.activities import check_secrets
    from flyaway.activities.storage.activities import abort_uploads, check_weights
    from flyaway.activities.traffic.activities import check_router
    from flyaway.models.canary import CanaryStatus
    from flyaway.models.copy import CopySettings, CopyWeightsInput, CopyWeightsResult
    from flyaway.models.plan import STAGES, MigrationPlan, parse_plan
    from flyaway.models.status import (
        MigrationResult,
        MigrationState,
        MigrationStatus,
        StageState,
        StageStatus,
        TuneRequest,
    )
    from flyaway.workflows.canary import CANARY_PROGRESS_SIGNAL
    from flyaway.workflows.copy_weights import PROGRESS_SIGNAL, CopyWeightsWorkflow
    from flyaway.workflows.fly_source import remove_agents
    from flyaway.workflows.stages import STAGE_RUNNERS, StageRefused
    from flyaway.workflows.stages import canary as canary_stage
    from flyaway.workflows.stages import deploy as deploy_stage
    from flyaway.workflows.stages import image as _image_stage  # noqa: F401  (registers the runner)
    from flyaway.workflows.stages import secrets as _secrets_stage  # noqa: F401  (registers the runner)
    from flyaway.workflows.stages import teardown as _teardown_stage  # noqa: F401  (registers the runner)

STAGE_ATTRIBUTE = SearchAttributeKey.for_keyword("FlyawayStage")
STATE_ATTRIBUTE = SearchAttributeKey.for_keyword("FlyawayState")
PROGRESS_ATTRIBUTE = SearchAttributeKey.for_float("FlyawayProgress")
SEARCH_ATTRIBUTES = (STAGE_ATTRIBUTE, STATE_ATTRIBUTE, PROGRESS_ATTRIBUTE)
#: checking the plan against the outside world: a few tries, then it is the plan's fault
CHECK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)


def failure_message(error: BaseException) -> str:
    """The innermost message of a failure chain: what actually went wrong, not where."""
    while isinstance(error, (ActivityError, ChildWorkflowError)) and error.cause is not None:
        error = error.cause
    if isinstance(error, ApplicationError) and error.type:
        return f"{error.type}: {error.message}"
    return error.message if isinstance(error, FailureError) else str(error)


@workflow.defn(name="MigrationWorkflow")
class MigrationWorkflow:
    def __init__(self) -> None:
        self._plan: MigrationPlan | None = None
        self._status = MigrationStatus(name="", stages=[StageStatus(name=s) for s in STAGES])
        self._paused = False
        self._retry_requested = False
        self._abort_reason: str | None = None
        self._child: workflow.ChildWorkflowHandle[Any, Any] | None = None
        self._settings: CopySettings | None = None
        self._copy_started: float | None = None
        self._copy_bytes_at_start = 0
        self.results: dict[str, Any] = {}

    # ---- what stage runners see (flyaway.workflows.stages.StageContext) -------------------------

    @property
    def plan(self) -> MigrationPlan:
        assert self._plan is not None
        return self._plan

    def stage_status(self, name: str) -> StageStatus:
        return self._status.stage_status(name)

    async def wait_for_approval(self, stage: str) -> None:
        self.stage_status(stage).detail = f"waiting for `flyaway approve {self.plan.name} {stage}`"
        await workflow.wait_condition(lambda: stage in self._status.approvals or self._abort_reason is not None)
        await self._abort_if_asked(self.plan)

    async def wait_while_paused(self) -> None:
        await workflow.wait_condition(lambda: not self._paused or self._abort_reason is not None)
        await self._abort_if_asked(self.plan)

    # ---- the run ---------------------------------------------------------------------------

    @workflow.run
    async def run(self, plan_data: dict[str, Any]) -> MigrationResult:
        try:
            plan = parse_plan(plan_data)
        except ValueError as error:
            raise ApplicationError(f"invalid plan: {error}", type="InvalidPlan", non_retryable=True) from None
        self._plan = plan
        self._status.name = plan.name
        self._settings = CopySettings(concurrency=plan.weights.concurrency,
                                      bandwidth_limit=plan.weights.bandwidth_limit)
        self._status.concurrency = plan.weights.concurrency
        self._status.bandwidth_limit = plan.weights.bandwidth_limit
        for stage in self._status.stages:
            if stage.name not in plan.stages_present():
                stage.state = StageState.skipped
                stage.detail = "not in the plan"
        await self._check(plan)
        for name in plan.stages_present():
            self.results[name] = await self._run_stage(name, plan)
        self._set_state(MigrationState.completed, stage=None)
        weights: CopyWeightsResult = self.results["weights"]
        return MigrationResult(name=plan.name, status=self._status, manifest_key=weights.verify.manifest_key)

    async def _check(self, plan: MigrationPlan) -> None:
        """The plan against the outside world: credentials, endpoints, buckets, permissions."""
        self._set_state(MigrationState.validating, stage="validate")
        try:
            await workflow.execute_activity(check_weights, plan.weights, start_to_close_timeout=timedelta(minutes=5),
                                            retry_policy=CHECK_RETRY)
            if plan.secrets is not None:
                await workflow.execute_activity(check_secrets, plan.secrets, start_to_close_timeout=timedelta(minutes=5),
                                                retry_policy=CHECK_RETRY)
            if plan.image is not None:  # the source image and both registry logins
                await workflow.execute_activity(check_image_stage, plan.image,
                                                start_to_close_timeout=timedelta(minutes=5), retry_policy=CHECK_RETRY)
            if plan.deploy is not None:  # the fly.toml, the platform's credentials and rights
                await workflow.execute_activity(check_deploy, deploy_stage.deploy_request(plan, {}),
                                                start_to_close_timeout=timedelta(minutes=5), retry_policy=CHECK_RETRY)
            if plan.canary is not None:  # records, pool and rights, before any weight changes
                await workflow.execute_activity(check_router, plan.canary,
                                                start_to_close_timeout=timedelta(minutes=5), retry_policy=CHECK_RETRY)
            if plan.teardown is not None:  # the app and the token's rights, before hours of copying
                await workflow.execute_activity(check_teardown, plan.teardown,
                                                start_to_close_timeout=timedelta(minutes=5), retry_policy=CHECK_RETRY)
        except ActivityError as error:
            raise ApplicationError(f"invalid plan: {failure_message(error)}", type="InvalidPlan",
                                   non_retryable=True) from None

    async def _run_stage(self, name: str, plan: MigrationPlan) -> Any:
        stage = self._status.stage_status(name)
        while True:
            await self.wait_while_paused()
            self._set_state(MigrationState.running, stage=name)
            stage.state, stage.error = StageState.running, None
            try:
                result = await (self._copy_weights(plan) if name == "weights" else STAGE_RUNNERS[name](self))
            except (ActivityError, ChildWorkflowError, StageRefused) as error:
                await self._abort_if_asked(plan)
                message = failure_message(error)
                stage.state, stage.error = StageState.waiting_for_operator, message
                self._status.last_error = f"{name}: {message}"
                self._set_state(MigrationState.waiting_for_operator, stage=name)
                workflow.logger.warning("stage %s waits for the operator: %s", name, message)
                await workflow.wait_condition(lambda: self._retry_requested or self._abort_reason is not None)
                await self._abort_if_asked(plan)
                self._retry_requested = False
                continue
            stage.state = StageState.completed
            return result

    async def run_child(self, run: Any, arg: Any, stage: str) -> Any:
        """Run ``stage``'s child workflow to its end; the operator's signals go to it, ``abort`` cancels it."""
        self._child = await workflow.start_child_workflow(run, arg, id=f"{workflow.info().workflow_id}-{stage}",
                                                          task_queue=workflow.info().task_queue)
        await workflow.wait_condition(lambda: self._child is None or self._child.done()
                                      or self._abort_reason is not None)
        child, self._child = self._child, None
        assert child is not None
        if not child.done():
            child.cancel()
        return await child

    async def _copy_weights(self, plan: MigrationPlan) -> CopyWeightsResult:
        assert self._settings is not None
        self._copy_started = None
        result: CopyWeightsResult = await self.run_child(
            CopyWeightsWorkflow.run, CopyWeightsInput(stage=plan.weights, settings=self._settings, paused=self._paused),
            "weights")
        status = self._status
        status.files_done, status.bytes_done = status.files_total, status.bytes_total
        status.stage_status("weights").detail = (
            f"{result.counters.files_copied} copied, {result.counters.files_skipped} unchanged, "
            f"{result.verify.files_verified} verified")
        return result

    async def _abort_if_asked(self, plan: MigrationPlan) -> None:
        if self._abort_reason is None:
            return
        if self._child is not None and not self._child.done():
            self._child.cancel()
        await workflow.execute_activity(abort_uploads, plan.weights, start_to_close_timeout=timedelta(minutes=30),
                                        retry_policy=RetryPolicy(maximum_attempts=5))
        for stage_plan in (plan.weights, plan.secrets):
            if stage_plan is not None:
                await remove_agents(stage_plan, workflow.info().workflow_id, best_effort=True)
        for stage in self._status.stages:
            if stage.state in (StageState.pending, StageState.running, StageState.waiting_for_operator):
                stage.state = StageState.aborted
        self._set_state(MigrationState.aborted, stage=self._status.stage)
        raise ApplicationError(f"aborted by the operator: {self._abort_reason}", type="Aborted", non_retryable=True)

    def _set_state(self, state: MigrationState, stage: str | None) -> None:
        if self._paused and state == MigrationState.running:
            state = MigrationState.paused
        self._status.state, self._status.stage = state, stage
        progress = 100.0 * self._status.bytes_done / self._status.bytes_total if self._status.bytes_total else 0.0
        workflow.upsert_search_attributes([STATE_ATTRIBUTE.value_set(state.value),
                                           STAGE_ATTRIBUTE.value_set(stage or "none"),
                                           PROGRESS_ATTRIBUTE.value_set(round(progress, 1))])

    # ---- progress from the copy --------------------------------------------------------------

    @workflow.signal(name=PROGRESS_SIGNAL)
    def copy_progress(self, progress: CopyWeightsInput) -> None:
        status = self._status
        if progress.listing is not None:
            status.files_total, status.bytes_total = progress.listing.files_total, progress.listing.bytes_total
        counters = progress.counters
        status.files_done = counters.files_copied + counters.files_skipped
        status.bytes_done = counters.bytes_copied + counters.bytes_skipped
        now = workflow.time()
        if self._copy_started is None:
            self._copy_started, self._copy_bytes_at_start = now, status.bytes_done
        elapsed = now - self._copy_started
        if elapsed > 0:
            status.rate_bytes_per_second = (status.bytes_done - self._copy_bytes_at_start) / elapsed
        remaining = status.bytes_total - status.bytes_done
        status.eta_seconds = remaining / status.rate_bytes_per_second if status.rate_bytes_per_second > 0 else None
        status.stage_status("weights").detail = f"{status.files_done}/{status.files_total} files"

    @workflow.signal(name=CANARY_PROGRESS_SIGNAL)
    def canary_progress(self, canary: CanaryStatus) -> None:
        """The canary child's state; a canary that paused itself shows the migration paused."""
        self._status.canary = canary
        self._status.stage_status("canary").detail = canary.summary()
        paused = canary.paused or self._paused
        if self._status.state == (MigrationState.running if paused else MigrationState.paused):
            self._set_state(MigrationState.paused if paused else MigrationState.running, "canary")

    # ---- what an operator can see and do -------------------------------------------------------

    @workflow.query
    def status(self) -> MigrationStatus:
        return self._status

    def _require_active(self) -> None:
        if self._plan is None:
            raise ValueError("the migration has not started yet")
        if self._status.state in (MigrationState.completed, MigrationState.aborted) or self._abort_reason:
            raise ValueError(f"the migration is {self._status.state.value}")

    @workflow.update
    async def pause(self) -> MigrationStatus:
        self._paused = True
        if self._status.state == MigrationState.running:
            self._status.state = MigrationState.paused
        await self._signal_child("pause")
        return self._status

    @pause.validator
    def _validate_pause(self) -> None:
        self._require_active()
        if self._paused:
            raise ValueError("the migration is already paused")

    @workflow.update
    async def resume(self) -> MigrationStatus:
        self._paused = False
        if self._status.state == MigrationState.paused:
            self._status.state = MigrationState.running
        await self._signal_child("resume")
        return self._status

    @resume.validator
    def _validate_resume(self) -> None:
        self._require_active()
        if not self._paused and self._status.state != MigrationState.paused:
            raise ValueError("the migration is not paused")

    @workflow.update
    def retry(self) -> MigrationStatus:
        self._retry_requested = True
        return self._status

    @retry.validator
    def _validate_retry(self) -> None:
        self._require_active()
        if self._status.state != MigrationState.waiting_for_operator:
            raise ValueError(f"nothing to retry: the migration is {self._status.state.value}, "
                             f"not waiting_for_operator")

    @workflow.update
    def abort(self, reason: str) -> MigrationStatus:
        self._abort_reason = reason
        return self._status

    @abort.validator
    def _validate_abort(self, reason: str) -> None:
        self._require_active()
        if not reason.strip():
            raise ValueError("give a reason for the abort")

    @workflow.update
    async def approve(self, stage: str) -> MigrationStatus:
        if stage == "canary":  # the canary's current gate, not the stage once and for all
            await self._signal_child("approve")
        else:
            self._status.approvals.append(stage)
        return self._status

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
    async def promote(self) -> MigrationStatus:
        """Skip the canary's remaining steps: all traffic to the new endpoint now."""
        await self._signal_child("promote")
        return self._status

    @promote.validator
    def _validate_promote(self) -> None:
        self._require_active()
        canary_stage.check_promotable(self._status.canary)

    @workflow.update
    async def tune(self, request: TuneRequest) -> MigrationStatus:
        assert self._settings is not None
        if request.concurrency is not None:
            self._settings.concurrency = request.concurrency
        if request.bandwidth_limit is not None:
            self._settings.bandwidth_limit = request.bandwidth_limit or None
        self._status.concurrency = self._settings.concurrency
        self._status.bandwidth_limit = self._settings.bandwidth_limit
        if self._status.stage == "weights":
            await self._signal_child("tune", self._settings)
        return self._status

    @tune.validator
    def _validate_tune(self, request: TuneRequest) -> None:
        self._require_active()
        if request.concurrency is None and request.bandwidth_limit is None:
            raise ValueError("give a concurrency, a bandwidth limit, or both")

    async def _signal_child(self, name: str, *args: Any) -> None:
        if self._child is not None and not self._child.done():
            await self._child.signal(name, *args)
