"""Gathers a :class:`MigrationReport` from Temporal: the migration's histories, its children's, its status.

- Stages: the ``FlyawayState``/``FlyawayStage`` search attributes the migration upserts on every
  change of state give each stage's start, end and waits for the operator; the operator's
  updates (with the identity of the client that sent them) say who approved, retried or aborted.
- Weights: the copy child's batch results and timings, and its final result (the manifest).
- Canary: every analysis the canary children ran, and how each canary ended.
- New side and Fly: the deploy activity's result, the canary's DNS TTL, the teardown's steps.
- Status: the ``status`` query (the result's copy for a completed migration); for a closed
  migration with no worker to answer, what the history tells.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError

from flyaway.models.canary import AnalysisResult, CanaryResult, CanaryStatus, WeightChange
from flyaway.models.copy import CopyCounters, CopyWeightsResult
from flyaway.models.deploy import DeployResult, ServiceScaling
from flyaway.models.plan import STAGES, MigrationPlan, parse_plan
from flyaway.models.status import MigrationResult, MigrationState, MigrationStatus, StageState, StageStatus
from flyaway.models.teardown import TeardownInventory
from flyaway.report import prices
from flyaway.report.history import Decoder, E, ReportError, RunHistory, children, migration_chain
from flyaway.report.model import (
    CanaryInterval,
    CanaryReport,
    CanaryRun,
    CostEstimate,
    FlyReport,
    MigrationReport,
    NewSideReport,
    OperatorAction,
    OperatorWait,
    StageReport,
    ThroughputPoint,
    Verification,
    WeightsReport,
)
from flyaway.starter.display import snapshot

#: how long the status query may take before the report falls back to the history alone
QUERY_TIMEOUT = timedelta(seconds=10)


def _time(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


class Collector:
    def __init__(self, client: Client, workflow_id: str, table: prices.ReferenceTable) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.decoder = Decoder(client)
        self.table = table

    async def collect(self) -> MigrationReport:
        handle = self.client.get_workflow_handle(self.workflow_id)
        description = await handle.describe()
        runs = await migration_chain(self.client, self.workflow_id)
        plan_data = await self.decoder.first(runs[0].first.workflow_execution_started_event_attributes.input, dict)
        try:
            plan = parse_plan(plan_data)
        except ValueError:
            raise ReportError(f"{self.workflow_id} was started with an invalid plan; nothing ran to report "
                              f"(`flyaway status` shows why)") from None
        status = await self._status(description.status, runs, plan)
        failure = await self._failure(runs[-1])
        copies = await children(self.client, runs, "-weights")
        canaries = await children(self.client, runs, "-canary")
        report = MigrationReport(
            name=plan.name, workflow_id=self.workflow_id, run_status=description.status.name.lower() if description.status else "unknown",
            state=status.state.value, generated_at=datetime.now(UTC), started_at=description.start_time,
            closed_at=description.close_time, failure=failure, last_error=status.last_error)
        report.operator_actions = await self._operator_actions(runs)
        report.stages = self._stages(status, runs, {"weights": copies, "canary": canaries}, report.operator_actions)
        report.weights = await self._weights(status, copies)
        if description.status == WorkflowExecutionStatus.RUNNING and status.stage == "weights":
            # what `flyaway status` shows: the batches done plus what the copy in flight reported in its heartbeat
            live = await snapshot(self.client, self.workflow_id)
            report.weights.files_done, report.weights.bytes_done = live.files_done, live.bytes_done
        if plan.canary is not None:
            report.canary = await self._canary(status, canaries)
        deploy = await self._deploy_result(runs)
        if plan.deploy is not None:
            report.new_side = self._new_side(deploy)
            report.cost = self._cost(plan, deploy)
        report.fly = await self._fly(plan, status, runs, canaries)
        return report

    # ---- status -----------------------------------------------------------------------------------

    async def _status(self, run_status: WorkflowExecutionStatus | None, runs: list[RunHistory],
                      plan: MigrationPlan) -> MigrationStatus:
        """The status query's answer; the result's copy when completed; else rebuilt from the history."""
        last = runs[-1].last
        if last.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            result: MigrationResult = await self.decoder.first(
                last.workflow_execution_completed_event_attributes.result, MigrationResult)
            return result.status
        try:
            status: MigrationStatus = await self.client.get_workflow_handle(self.workflow_id).query(
                "status", result_type=MigrationStatus, rpc_timeout=QUERY_TIMEOUT)
            return status
        except (RPCError, RuntimeError, WorkflowQueryFailedError):
            if run_status == WorkflowExecutionStatus.RUNNING:
                raise
            return _status_from_history(runs, plan)

    async def _failure(self, run: RunHistory) -> str | None:
        last = run.last
        if last.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            return await self.decoder.failure_message(last.workflow_execution_failed_event_attributes.failure)
        if last.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
            return f"terminated: {last.workflow_execution_terminated_event_attributes.reason}"
        return None

    # ---- stages -----------------------------------------------------------------------------------

    async def _operator_actions(self, runs: list[RunHistory]) -> list[OperatorAction]:
        actions = []
        for run in runs:
            for event in run.of_type(E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED):
                request = event.workflow_execution_update_accepted_event_attributes.accepted_request
                argument = await self.decoder.first(request.input.args)
                actions.append(OperatorAction(at=_time(event), action=request.input.name,
                                              argument=_argument_text(argument), identity=request.meta.identity))
        return actions

    def _stages(self, status: MigrationStatus, runs: list[RunHistory], children_of: dict[str, list[list[RunHistory]]],
                actions: list[OperatorAction]) -> list[StageReport]:
        """Each stage's span, waits and approvals from the state changes; its activity attempts are those the
        migration scheduled while the stage was current, and those of the stage's child workflows."""
        reports = {stage.name: StageReport(name=stage.name, state=stage.state.value, detail=stage.detail,
                                           error=stage.error) for stage in status.stages}
        changes = _state_changes(runs)
        for (state, stage, at), following in zip(changes, [*changes[1:], None], strict=True):
            report = reports.get(stage or "")
            if report is None:
                continue
            report.started_at = report.started_at or at
            if state in ("completed", "aborted"):
                report.ended_at = at
            elif following is not None and following[1] != stage:
                report.ended_at = following[2]
            if state == "waiting_for_operator":
                report.waits.append(OperatorWait(started_at=at, ended_at=following[2] if following else None,
                                                 reason=report.error))
        for stage, report in reports.items():
            retries = [action for action in actions if action.action == "retry"
                       and any(wait.started_at <= action.at for wait in report.waits)
                       and any(wait.ended_at is None or action.at <= wait.ended_at for wait in report.waits)]
            report.runs = (1 + len(retries)) if report.started_at else 0
            report.approvals = [action for action in actions if action.action == "approve"
                                and action.argument == stage]
        for run in runs:
            for activity in run.activities:
                stage = _stage_at(changes, _time(activity.scheduled))
                if stage in reports:
                    reports[stage].activity_attempts += activity.attempt
        for stage, chains in children_of.items():
            reports[stage].activity_attempts += sum(activity.attempt for chain in chains for run in chain
                                                    for activity in run.activities)
        return [reports[name] for name in STAGES if name in reports]

    # ---- weights ----------------------------------------------------------------------------------

    async def _weights(self, status: MigrationStatus, copies: list[list[RunHistory]]) -> WeightsReport:
        weights = WeightsReport(files_total=status.files_total, bytes_total=status.bytes_total,
                                files_done=status.files_done, bytes_done=status.bytes_done)
        totals = dict.fromkeys(("files_copied", "files_skipped", "bytes_copied", "bytes_skipped", "bytes_uploaded", "parts_reused", "bytes_reused", "parts_resent"), 0)
        for chain in copies:
            listed = [activity for run in chain for activity in run.named("flyaway.weights.list") if activity.completed]
            origin = listed[-1].closed_at if listed else None
            for run in chain:
                for batch in run.named("flyaway.weights.copy_batch"):
                    weights.batch_attempts_retried += batch.attempt - 1
                    if not batch.completed:
                        continue
                    result: CopyCounters = await self.decoder.result(batch, CopyCounters)
                    for name in totals:
                        totals[name] += getattr(result, name)
                    weights.batches += 1
                    origin = origin or batch.started_at
                    assert origin is not None and batch.started_at is not None and batch.closed_at is not None
                    weights.throughput.append(ThroughputPoint(
                        started_seconds=(batch.started_at - origin).total_seconds(),
                        ended_seconds=(batch.closed_at - origin).total_seconds(), bytes_copied=result.bytes_copied,
                        bytes_done=totals["bytes_copied"] + totals["bytes_skipped"]))
            verified = await self._copy_result(chain)
            if verified is not None:
                weights.verification = Verification(
                    files_verified=verified.verify.files_verified, bytes_verified=verified.verify.bytes_verified,
                    files_without_source_checksum=verified.verify.files_without_source_checksum,
                    manifest_location=verified.verify.manifest_key, manifest_sha256=verified.verify.manifest_sha256)
        for name in ("files_copied", "files_skipped", "bytes_copied", "bytes_skipped", "bytes_uploaded",
                     "parts_reused", "parts_resent"):
            setattr(weights, name, totals[name])
        weights.bytes_resent = max(0, totals["bytes_uploaded"] + totals["bytes_reused"] - totals["bytes_copied"])
        busy = sum(point.ended_seconds - point.started_seconds for point in weights.throughput)
        if busy > 0:
            weights.average_bytes_per_second = weights.bytes_copied / busy
        return weights

    async def _copy_result(self, chain: list[RunHistory]) -> CopyWeightsResult | None:
        last = chain[-1].last
        if last.event_type != E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            return None
        result: CopyWeightsResult = await self.decoder.first(
            last.workflow_execution_completed_event_attributes.result, CopyWeightsResult)
        return result

    # ---- canary -----------------------------------------------------------------------------------

    async def _canary(self, status: MigrationStatus, canaries: list[list[RunHistory]]) -> CanaryReport:
        latest: CanaryStatus | None = status.canary
        report = CanaryReport(state=latest.state.value if latest else None, steps=latest.history if latest else [])
        for number, chain in enumerate(canaries, start=1):
            run = CanaryRun(number=number, state=await self._canary_end(chain))
            if run.state.startswith("failed: RolledBack"):
                run.state, run.rollback_reason = "rolled_back", run.state.removeprefix("failed: RolledBack: ")
            report.runs.append(run)
            weight = None
            for history in chain:
                for activity in history.activities:
                    if not activity.completed:
                        continue
                    if activity.name == "flyaway.traffic.set_weight":
                        change: WeightChange = await self.decoder.result(activity, WeightChange)
                        weight = change.state.new_weight
                    elif activity.name == "flyaway.traffic.analyse":
                        analysis: AnalysisResult = await self.decoder.result(activity, AnalysisResult)
                        report.intervals.append(_interval(number, len(report.intervals) + 1, activity.closed_at,
                                                          weight, analysis))
        rollbacks = [run.rollback_reason for run in report.runs if run.rollback_reason]
        if latest is not None and latest.state.value == "rolled_back":
            report.rolled_back, report.rollback_reason = True, latest.message
        elif rollbacks:  # an earlier canary rolled back, a retry ran another
            report.rolled_back, report.rollback_reason = True, rollbacks[-1]
        return report

    async def _canary_end(self, chain: list[RunHistory]) -> str:
        last = chain[-1].last
        if last.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            return "completed"
        if last.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            message = await self.decoder.failure_message(last.workflow_execution_failed_event_attributes.failure)
            return f"failed: {message}"
        return "canceled" if last.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED else "running"

    async def _canary_result(self, canaries: list[list[RunHistory]]) -> CanaryResult | None:
        if not canaries or canaries[-1][-1].last.event_type != E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            return None
        last = canaries[-1][-1].last
        result: CanaryResult = await self.decoder.first(last.workflow_execution_completed_event_attributes.result,
                                                        CanaryResult)
        return result

    # ---- the new side, its cost, and Fly ---------------------------------------------------------------

    async def _deploy_result(self, runs: list[RunHistory]) -> DeployResult | None:
        done = [activity for run in runs for activity in run.named("flyaway.deploy.service") if activity.completed]
        return await self.decoder.result(done[-1], DeployResult) if done else None

    def _new_side(self, deploy: DeployResult | None) -> NewSideReport:
        if deploy is None:
            return NewSideReport()
        side = NewSideReport(platform=deploy.platform, service=deploy.service, endpoint_url=deploy.endpoint_url,
                             reference=self.table.cold_start_of(deploy.platform))
        start = deploy.cold_start
        if start is not None:
            side.cold_start_seconds, side.from_zero_seconds = start.seconds_to_healthy, start.from_zero_seconds
        if deploy.scaling is not None and deploy.scaling.min_instances > 0:
            side.from_zero_note = (f"not applicable: at least {deploy.scaling.min_instances} instance(s) stay up, "
                                   f"the service never scales to zero")
        elif start is not None and start.from_zero_seconds is None:
            side.from_zero_note = "not measured: set deploy.health.measure_from_zero to time a start from zero"
        elif start is None:
            side.from_zero_note = "not measured: the platform's own probe decided the service was up"
        return side

    def _cost(self, plan: MigrationPlan, deploy: DeployResult | None) -> list[CostEstimate]:
        """Before the deploy ran, the plan's own section stands for the scaling (without its fly.toml)."""
        assert plan.deploy is not None
        scaling = deploy.scaling if deploy is not None and deploy.scaling else ServiceScaling.of(plan.deploy)
        fly = deploy.fly_scaling if deploy is not None else None
        return [prices.target_cost(self.table, plan.deploy.platform, scaling),
                prices.fly_cost(self.table, fly, scaling)]

    async def _fly(self, plan: MigrationPlan, status: MigrationStatus, runs: list[RunHistory],
                   canaries: list[list[RunHistory]]) -> FlyReport:
        fly = FlyReport(app=plan.teardown.app if plan.teardown else None)
        canary = await self._canary_result(canaries)
        if canary is not None:
            fly.dns_name, fly.dns_ttl_seconds = canary.routed_name, canary.dns_ttl_seconds
            fly.dns_cached_until = canary.teardown_not_before
        if plan.teardown is None:
            return fly
        fly.teardown_state = status.stage_status("teardown").state.value
        steps = {activity.name.rsplit(".", 1)[-1]: activity for run in runs for activity in run.activities
                 if activity.name.startswith("flyaway.fly.teardown.") and activity.completed}
        if "inventory" in steps:
            inventory: TeardownInventory = await self.decoder.result(steps["inventory"], TeardownInventory)
            fly.machines_found = len(inventory.machines)
            fly.volumes_kept = [volume.id for volume in inventory.volumes]
        if "snapshot" in steps:
            fly.snapshots = await self.decoder.result(steps["snapshot"], dict)
        if "destroy" in steps:
            fly.machines_destroyed = await self.decoder.result(steps["destroy"], int)
        if "release_ips" in steps:
            fly.ips_released = await self.decoder.result(steps["release_ips"], int)
        if "delete_volumes" in steps:
            fly.volumes_kept = [volume for volume in fly.volumes_kept if volume not in fly.snapshots]
        if "delete_app" in steps:
            fly.app_deleted = bool(await self.decoder.result(steps["delete_app"], bool))
            fly.volumes_kept = []
        if fly.machines_found is not None:
            fly.machines_left = fly.machines_found - fly.machines_destroyed
        return fly


def _status_from_history(runs: list[RunHistory], plan: MigrationPlan) -> MigrationStatus:
    """A closed migration without a worker to answer the query: states from its search attributes."""
    status = MigrationStatus(name=plan.name, stages=[
        StageStatus(name=name) if name in plan.stages_present()
        else StageStatus(name=name, state=StageState.skipped, detail="not in the plan") for name in STAGES])
    for state, stage, _ in _state_changes(runs):
        if status.stage in STAGES and status.stage != stage:
            status.stage_status(status.stage).state = StageState.completed
        status.state, status.stage = MigrationState(state), stage
        if stage in STAGES and state in StageState.__members__:
            status.stage_status(stage).state = StageState(state)
    return status


def _state_changes(runs: list[RunHistory]) -> list[tuple[str, str | None, datetime]]:
    """(state, stage, when) for every upsert of the migration's search attributes, in order."""
    changes: list[tuple[str, str | None, datetime]] = []
    for run in runs:
        for event in run.of_type(E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES):
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            if "FlyawayState" not in fields:
                continue
            state = json.loads(fields["FlyawayState"].data)
            stage = json.loads(fields["FlyawayStage"].data) if "FlyawayStage" in fields else None
            changes.append((state, None if stage == "none" else stage, _time(event)))
    return changes


def _stage_at(changes: list[tuple[str, str | None, datetime]], when: datetime) -> str | None:
    """The stage that was current at ``when`` (None before the first change, or between stages)."""
    current = None
    for _, stage, at in changes:
        if at > when:
            break
        current = stage
    return current


def _argument_text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _interval(run: int, number: int, at: datetime | None, weight: int | None,
              analysis: AnalysisResult) -> CanaryInterval:
    """An analysis as an interval of the report; passive metrics stand in when the plan has no probes."""
    old, new = analysis.old, analysis.new
    if new is None and analysis.passive is not None:
        old, new = analysis.passive.old, analysis.passive.new
    assert at is not None
    return CanaryInterval(canary_run=run, number=number, at=at.replace(tzinfo=at.tzinfo or UTC),
                          weight=weight, verdict=analysis.verdict.value, old=old, new=new, reasons=analysis.reasons)

