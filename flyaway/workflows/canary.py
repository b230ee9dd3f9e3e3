"""``CanaryWorkflow``: move traffic to the new endpoint in steps, judged by analyses, rolled back on failure.

A child of the migration. Each step sets the new side's weight (with the manual router: says
what to change and waits for ``approve``), then holds it: an analysis runs at once and at
every interval (counted from the start of the one before, so an analysis that takes longer than
the interval is followed at once, with no timer), and the step passes when its pause is over,
the latest analysis was Successful, the canary is not paused and, where the step asks for it,
``approve`` came.

- More failed analyses in a step than ``failure_limit``: weight 0 on the new side at once,
  state ``rolled_back``, and the workflow fails with a ``RolledBack`` error. The migration's
  stage machine turns that into ``waiting_for_operator``, so the one operator wait of the
  migration (``retry`` / ``abort``, their validators, the CLI, the search attributes) serves
  the canary too, and nothing waits inside a rolled-back child. ``retry`` starts a fresh
  canary that checks the router again and begins at the first step (Argo's retry of an
  aborted rollout).
- More inconclusive analyses than ``inconclusive_limit``: the canary pauses instead, holding
  its weight, and tells the migration, which shows ``paused`` until ``resume``.
- ``promote`` skips the remaining steps and their analyses and sets 100.
- Cancellation (the migration's ``abort``) sets weight 0 before the workflow ends.

With passive metrics (the endpoints' own Prometheus pages) an analysis judges the traffic of
the interval before it: the pages are read when the step's weight is in place, and the first
analysis comes one interval later. An operator's signal takes effect at once but does not cut
that interval short, so no verdict rests on a few seconds of traffic. Router analytics
(Cloudflare's counts per origin) work the same way over spans of the workflow's own clock:
from the moment the weight is in place to the first analysis, then from one analysis to the next.

Analyses keep running while paused or waiting for approval, so a new side that breaks
meanwhile is still rolled back. Every state the status query shows, and everything a run
needs to resume, lives in :class:`CanaryStatus`: it is carried over when the workflow continues
as new, and signalled to the migration on every change of state, step, weight, verdict or gate.
A new analysis with the same verdict is signalled only for a step's first
``REPORTED_ANALYSES_PER_STEP`` analyses and then at every power of two, so the migration's
history grows with the log of a long hold or approval wait, not with its length (the
``progress`` query always has the latest numbers).
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.traffic.activities import (
        check_metrics,
        check_router,
        read_metrics,
        run_analysis,
        set_weight,
    )
    from flyaway.errors import NON_RETRYABLE_ERROR_TYPES
    from flyaway.models.canary import (
        AnalysisResult,
        AnalysisSettings,
        AnalyticsWindow,
        CanaryInput,
        CanaryResult,
        CanaryStage,
        CanaryState,
        CanaryStatus,
        CanaryStep,
        MetricsSnapshots,
        Route53RouterConfig,
        StepOutcome,
        StepRecord,
        Verdict,
        WeightChange,
        WeightState,
    )

CANARY_PROGRESS_SIGNAL = "canary_progress"
#: checking the router: a few tries, then it is the plan's fault
CHECK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3,
                          non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)
#: weight changes and analyses wait out an outage of the router or the endpoints (a rollback must
#: land eventually); bad input and missing rights are not retried
TRAFFIC_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                            non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)
#: the activities heartbeat every 5 s: a dead worker's weight change is retried within this
HEARTBEAT_TIMEOUT = timedelta(seconds=30)
#: a Route53 change can take a few minutes to reach every name server
WEIGHT_TIMEOUT = timedelta(minutes=15)
HISTORY_EVENTS_BEFORE_CONTINUE = 2_000
REPORTED_ANALYSES_PER_STEP = 10
#: one analytics query, its per-request retries included
ROUTER_ANALYTICS_SECONDS = 120


def analysis_timeout(settings: AnalysisSettings) -> timedelta:
    """Long enough for every probe request to time out, in waves of ``concurrency``, and the metrics pages
    and the router's analytics after them, plus a margin."""
    waves = math.ceil(settings.requests_per_probe / settings.concurrency)
    pages = settings.metrics.timeout_seconds if settings.metrics else 0
    analytics = ROUTER_ANALYTICS_SECONDS if settings.router_analytics else 0
    return timedelta(seconds=sum(waves * probe.timeout_seconds for probe in settings.probes) + pages + analytics
                     + 30)


def _analyses(count: int, verdict: str) -> str:
    return f"{count} {verdict} {'analysis' if count == 1 else 'analyses'}"


@workflow.defn(name="CanaryWorkflow")
class CanaryWorkflow:
    def __init__(self) -> None:
        self._stage: CanaryStage | None = None
        self._name = ""
        self._status: CanaryStatus | None = None
        self._approval = False
        self._nudged = False
        self._reported: dict[str, Any] | None = None
        #: when the last analysis of this run started: the next one is due an interval later
        self._analysis_started: datetime | None = None

    @property
    def stage(self) -> CanaryStage:
        assert self._stage is not None
        return self._stage

    @property
    def status(self) -> CanaryStatus:
        assert self._status is not None
        return self._status

    @workflow.run
    async def run(self, request: CanaryInput) -> CanaryResult:
        stage = request.stage
        assert stage.new_endpoint is not None, "the migration resolves the new endpoint"
        self._stage, self._name = stage, request.migration_name
        self._status = request.progress or CanaryStatus(router=stage.router.kind, new_endpoint=stage.new_endpoint,
                                                        steps_total=len(stage.steps))
        try:
            if request.progress is None:
                self.status.weight = await self._activity(check_router, [stage], timedelta(minutes=5),
                                                          CHECK_RETRY, WeightState)
                if stage.analysis.passive:  # pages, metrics and analytics, before any weight changes
                    await self._activity(check_metrics, [stage], timedelta(minutes=5), CHECK_RETRY, None)
            result = await self._run_steps()
            await workflow.wait_condition(workflow.all_handlers_finished)
            return result
        except asyncio.CancelledError:
            await self._end_at_zero(CanaryState.ABORTED, StepOutcome.ABORTED,
                                    "aborted by the operator: all traffic goes back to the Fly endpoint")
            raise

    async def _run_steps(self) -> CanaryResult:
        status, last = self.status, len(self.stage.steps) - 1
        while True:
            outcome = await self._run_step(status.step)
            if outcome is StepOutcome.ROLLED_BACK:
                raise await self._roll_back()
            if status.step == last:
                return await self._complete()
            status.step = last if outcome is StepOutcome.PROMOTED else status.step + 1

    # ---- one step --------------------------------------------------------------------------

    async def _run_step(self, index: int) -> StepOutcome:
        step = self.stage.steps[index]
        record = self._record(index, step)
        if record.applied_at is None:
            await self._apply(record)
        outcome = await self._hold(step, record)
        if outcome is not StepOutcome.ROLLED_BACK:
            record.ended_at, record.outcome = workflow.now(), outcome
        return outcome

    def _record(self, index: int, step: CanaryStep) -> StepRecord:
        """The record of step ``index``: the open one when a run resumes it, else a new one."""
        status = self.status
        if status.history and status.history[-1].index == index and status.history[-1].ended_at is None:
            return status.history[-1]
        record = StepRecord(index=index, weight=step.weight, started_at=workflow.now())
        status.history.append(record)
        status.step_failures = status.step_inconclusives = 0
        return record

    async def _apply(self, record: StepRecord) -> None:
        """Set the step's weight; with the manual router, wait until the operator approves having made it."""
        status = self.status
        status.state, status.approval = CanaryState.PROGRESSING, None
        change = await self._set_weight(record.weight)
        if not change.state.confirmed:
            await self._gate(f"make this change: {change.change}")
        status.weight = change.state
        if self.stage.analysis.metrics is not None:  # the step's first interval starts at its weight
            status.metrics_baseline = await self._activity(read_metrics, [self.stage], timedelta(minutes=5),
                                                           TRAFFIC_RETRY, MetricsSnapshots)
        record.applied_at = status.analytics_since = workflow.now()
        await self._report()

    async def _hold(self, step: CanaryStep, record: StepRecord) -> StepOutcome:
        status, settings = self.status, self.stage.analysis
        while True:
            if record.analyses or settings.passive:  # passive sources need an interval's traffic first
                self._take_approval(record)
                await self._continue_as_new_if_long()
                left, due = self._hold_left(step, record), self._next_analysis_in(record)
                cut_short = await self._sleep(min(due, left) if left else due)
                if cut_short and settings.passive and not status.promote_requested:
                    # act on the operator's signal now, but judge the metrics only over a whole interval
                    if self._settled(step, record):
                        return StepOutcome.PASSED
                    await self._report()
                    continue
            if status.promote_requested:
                return StepOutcome.PROMOTED
            window = None
            if settings.router_analytics:  # from the workflow's clock, so a replay asks about the same span
                assert status.analytics_since is not None
                window = AnalyticsWindow(start=status.analytics_since, end=workflow.now())
                status.analytics_since = window.end
            self._analysis_started = workflow.now()
            result = await self._activity(run_analysis, [self.stage, status.metrics_baseline, window],
                                          analysis_timeout(settings), TRAFFIC_RETRY, AnalysisResult)
            if result.readings is not None:  # the next interval starts where this one ended
                status.metrics_baseline, result.readings = result.readings, None
            self._count(result, record)
            if result.verdict is Verdict.FAILED and status.step_failures > settings.failure_limit:
                return StepOutcome.ROLLED_BACK
            if (result.verdict is Verdict.INCONCLUSIVE and status.step_inconclusives > settings.inconclusive_limit
                    and not status.paused):
                status.paused = True
                status.message = (f"paused after {_analyses(status.step_inconclusives, 'inconclusive')} "
                                  f"(inconclusive_limit {settings.inconclusive_limit}): {'; '.join(result.reasons)}; "
                                  f"`flyaway resume {self._name}` goes on, `flyaway promote` or `flyaway abort` end it")
            if self._settled(step, record):
                return StepOutcome.PASSED
            await self._report()

    def _settled(self, step: CanaryStep, record: StepRecord) -> bool:
        """Take an approval that came; True when the step may end, else show what it waits for."""
        self._take_approval(record)
        if self._may_leave(step, record):
            return True
        self._show_waiting(step, record)
        return False

    def _next_analysis_in(self, record: StepRecord) -> float:
        """Seconds until the next analysis is due: an interval after the last one started, or after the step's
        weight was set (so analyses keep their pace however long each takes; one that took longer than the
        interval is followed at once, with no timer)."""
        assert record.applied_at is not None
        since = max(record.applied_at, self._analysis_started or record.applied_at)
        return max(0.0, self.stage.analysis.interval_seconds - (workflow.now() - since).total_seconds())

    def _hold_left(self, step: CanaryStep, record: StepRecord) -> float:
        assert record.applied_at is not None
        return max(0.0, step.pause_seconds - (workflow.now() - record.applied_at).total_seconds())

    def _count(self, result: AnalysisResult, record: StepRecord) -> None:
        status = self.status
        status.last_analysis = result
        if result.verdict is Verdict.SUCCESSFUL:
            record.successful += 1
        elif result.verdict is Verdict.FAILED:
            record.failed += 1
            status.step_failures += 1
        else:
            record.inconclusive += 1
            status.step_inconclusives += 1

    def _ready(self, step: CanaryStep, record: StepRecord) -> bool:
        """Held long enough, the latest analysis (one of this step's) Successful, not paused: all but the approval."""
        last = self.status.last_analysis
        return (self._hold_left(step, record) == 0 and record.analyses > 0 and last is not None
                and last.verdict is Verdict.SUCCESSFUL and not self.status.paused)

    def _may_leave(self, step: CanaryStep, record: StepRecord) -> bool:
        return self._ready(step, record) and (record.approved or not step.wait_for_approval)

    def _show_waiting(self, step: CanaryStep, record: StepRecord) -> None:
        status = self.status
        status.approval = None
        if status.paused:
            status.state = CanaryState.PAUSED
        elif step.wait_for_approval and self._ready(step, record):
            status.state = CanaryState.WAITING_FOR_APPROVAL
            status.approval = (f"step {record.index + 1}/{status.steps_total} holds {record.weight}% on the new side "
                               f"and passes its analyses; approve to go on")
        else:
            status.state = CanaryState.PROGRESSING

    def _take_approval(self, record: StepRecord) -> None:
        """An ``approve`` that came while the step's gate was shown approves the step."""
        if self._approval and self.status.approval is not None:
            record.approved = True
            self.status.approval = None
        self._approval = False

    # ---- gates, ends and reports -----------------------------------------------------------

    async def _gate(self, what: str) -> None:
        status = self.status
        status.state, status.approval = CanaryState.WAITING_FOR_APPROVAL, what
        self._approval = False
        await self._report()
        await workflow.wait_condition(lambda: self._approval)
        self._approval = False
        status.state, status.approval = CanaryState.PROGRESSING, None

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``, or less when an operator signal comes: True when a signal cut it short."""
        self._nudged = False
        if seconds <= 0:
            return False
        try:
            await workflow.wait_condition(lambda: self._nudged or self._approval or self.status.promote_requested,
                                          timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _roll_back(self) -> ApplicationError:
        status = self.status
        record = status.history[-1]
        reasons = "; ".join(status.last_analysis.reasons) if status.last_analysis else "analysis failed"
        await self._end_at_zero(CanaryState.ROLLED_BACK, StepOutcome.ROLLED_BACK,
                                f"rolled back at step {record.index + 1} ({record.weight}%) after "
                                f"{_analyses(status.step_failures, 'failed')}: {reasons}")
        return ApplicationError(f"canary {status.message}. Fix the new side, then `flyaway retry {self._name}` "
                                f"restarts the canary at its first step (or `flyaway abort {self._name}`)",
                                type="RolledBack", non_retryable=True)

    async def _end_at_zero(self, state: CanaryState, outcome: StepOutcome, message: str) -> None:
        """Send all traffic back to the Fly endpoint and end the open step with ``outcome``."""
        status = self.status
        record = status.history[-1] if status.history and status.history[-1].ended_at is None else None
        if record is not None:
            record.ended_at, record.outcome = workflow.now(), outcome
        change = await self._set_weight(0)
        status.weight, status.state, status.approval, status.paused = change.state, state, None, False
        status.message = message if change.state.confirmed else f"{message}; move all traffic back now: {change.change}"
        await self._report()

    async def _complete(self) -> CanaryResult:
        status, stage = self.status, self.stage
        assert status.weight is not None and stage.new_endpoint is not None
        ttl = status.propagation_seconds
        routed_name = stage.router.record_name if isinstance(stage.router, Route53RouterConfig) else None
        report = (f"{status.weight.new_weight}% of traffic goes to the new endpoint: clients should use "
                  f"{stage.new_endpoint}")
        if routed_name:
            report += f", or keep using {routed_name}, which leads there now"
        report += (f"; resolvers may still send clients to Fly for {ttl} s (the DNS TTL): wait that long before "
                   f"teardown" if ttl else "; the router's change is immediate")
        status.state, status.approval, status.paused, status.message = CanaryState.COMPLETED, None, False, report
        await self._report()
        return CanaryResult(completed=True, new_weight=status.weight.new_weight, old_weight=status.weight.old_weight,
                            client_base_url=stage.new_endpoint, routed_name=routed_name, dns_ttl_seconds=ttl,
                            teardown_not_before=workflow.now() + timedelta(seconds=ttl), report=report,
                            history=status.history)

    async def _set_weight(self, percent: int) -> WeightChange:
        change: WeightChange = await self._activity(set_weight, [self.stage, percent], WEIGHT_TIMEOUT,
                                                    TRAFFIC_RETRY, WeightChange)
        self.status.change, self.status.propagation_seconds = change.change, change.propagation_seconds
        return change

    async def _activity(self, fn: Any, args: list[Any], timeout: timedelta, retry: RetryPolicy,
                        result_type: type | None) -> Any:
        return await workflow.execute_activity(fn, args=args, result_type=result_type,
                                               start_to_close_timeout=timeout, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                                               retry_policy=retry)

    async def _report(self) -> None:
        """Tell the parent migration what its status query should show, when that changed enough (see above)."""
        parent = workflow.info().parent
        if parent is None:
            return
        shown = self._reported_state()
        analyses = self.status.history[-1].analyses if self.status.history else 0
        if (shown == self._reported and analyses > REPORTED_ANALYSES_PER_STEP
                and analyses & (analyses - 1)):  # not a power of two
            return
        self._reported = shown
        await workflow.get_external_workflow_handle(parent.workflow_id).signal(CANARY_PROGRESS_SIGNAL, self.status)

    def _reported_state(self) -> dict[str, Any]:
        """The status without what every analysis changes (its numbers, baselines, the step's counts)."""
        status = self.status
        shown = status.model_dump(mode="json", exclude={"last_analysis", "metrics_baseline", "analytics_since",
                                                        "history"})
        shown["verdict"] = status.last_analysis.verdict.value if status.last_analysis else None
        shown["steps"] = [(r.index, r.applied_at is not None, r.approved, r.outcome) for r in status.history]
        return shown

    async def _continue_as_new_if_long(self) -> None:
        info = workflow.info()
        if info.get_current_history_length() > HISTORY_EVENTS_BEFORE_CONTINUE or info.is_continue_as_new_suggested():
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(CanaryInput(stage=self.stage, migration_name=self._name, progress=self.status))

    # ---- what the migration forwards ---------------------------------------------------------

    @workflow.query
    def progress(self) -> CanaryStatus | None:
        return self._status

    @workflow.signal
    def pause(self) -> None:
        if self._status is not None:
            self._status.paused, self._status.message = True, "paused by the operator"
            self._nudged = True

    @workflow.signal
    def resume(self) -> None:
        if self._status is not None:
            self._status.paused, self._status.message, self._status.step_inconclusives = False, None, 0
            self._nudged = True

    @workflow.signal
    def approve(self) -> None:
        self._approval = self._nudged = True

    @workflow.signal
    def promote(self) -> None:
        if self._status is not None:
            self._status.promote_requested = True
            self._nudged = True
