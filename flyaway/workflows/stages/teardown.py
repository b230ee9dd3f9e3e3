"""The teardown stage: a gate, the operator's approval, then the Fly steps in their safe order.

The gate is checked in the workflow from what earlier stages returned: the weights manifest
verified (and not empty), and the canary finished with all traffic on the new side, Fly's
weight at 0 (or, in a plan without a canary stage, ``no_traffic_stage_ok``). A gate not met
raises :class:`StageRefused` before any activity runs: the migration waits for the operator
with the reason, and nothing on Fly is touched. After the approval, the stage waits out the DNS
TTL of the canary's last weight change (``teardown_not_before``) before it stops any Machine.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.fly.teardown import (
        SNAPSHOT_TIMEOUT_SECONDS,
        delete_app,
        delete_volumes,
        destroy_machines,
        release_ips,
        snapshot_volumes,
        stop_machines,
        teardown_inventory,
    )
    from flyaway.errors import NON_RETRYABLE_ERROR_TYPES
    from flyaway.models.plan import MigrationPlan
    from flyaway.models.status import StageResults
    from flyaway.models.teardown import TeardownReport, TeardownStage
    from flyaway.workflows.stages.base import StageContext, StageRefused

#: Fly outages are waited out; refusals, missing rights and deadlines go to the operator
TEARDOWN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1),
                             non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)
STEP_TIMEOUT = timedelta(minutes=15)


def teardown_refusal(plan: MigrationPlan, results: StageResults) -> str | None:
    """Why the teardown may not run yet, or None when its gate is met (approval aside)."""
    weights = results.weights
    if weights is None:
        return "the weights stage has not verified its manifest"
    if not weights.verify.files_verified:
        return "the verified weights manifest is empty: nothing was copied off Fly"
    if weights.verify.files_verified != weights.files_total:
        return f"the weights stage verified {weights.verify.files_verified} of {weights.files_total} listed files"
    if plan.canary is None:
        if plan.teardown is None or not plan.teardown.no_traffic_stage_ok:
            return "the plan has no canary stage and does not set teardown.no_traffic_stage_ok"
        return None
    canary = results.canary
    if canary is None:
        return "the canary stage has not finished"
    if not canary.completed or canary.new_weight != 100:
        return f"the canary stage ended with {canary.new_weight}% of the traffic on the new side, not 100%"
    if canary.old_weight != 0:
        return f"Fly's traffic weight is {canary.old_weight}%, not 0"
    return None


async def _wait_out_dns_ttl(context: StageContext) -> None:
    """Sleep (a durable timer) until resolvers can no longer send clients to Fly, so no request meets a stopped app."""
    canary = context.results.canary
    not_before = canary.teardown_not_before if canary is not None else None
    if not_before is None or workflow.now() >= not_before:
        return
    context.stage_status("teardown").detail = (f"waiting for the DNS TTL until {not_before.isoformat()}: resolvers "
                                               f"may still send clients to Fly")
    await workflow.sleep(not_before - workflow.now())


async def _step(context: StageContext, detail: str, activity: Any, *args: Any,
                timeout: timedelta = STEP_TIMEOUT) -> Any:
    stage = context.plan.teardown
    assert stage is not None
    await context.wait_while_paused()
    context.stage_status("teardown").detail = detail
    return await workflow.execute_activity(activity, args=[stage, *args], start_to_close_timeout=timeout,
                                           heartbeat_timeout=stage.heartbeat_timeout, retry_policy=TEARDOWN_RETRY)


async def run_teardown(context: StageContext) -> TeardownReport:
    stage: TeardownStage | None = context.plan.teardown
    assert stage is not None
    reason = teardown_refusal(context.plan, context.results)
    if reason is not None:
        raise StageRefused(f"teardown of Fly app '{stage.app}' refused, nothing was touched: {reason}")
    if stage.approval_required:
        await context.wait_for_approval("teardown")
    await _wait_out_dns_ttl(context)
    inventory = await _step(context, "reading the app", teardown_inventory)
    report = TeardownReport(app=stage.app)
    await _step(context, f"cordoning and stopping {len(inventory.machines)} machines", stop_machines,
                timeout=stage.stop_timeout + STEP_TIMEOUT)
    report.snapshots = await _step(context, f"snapshotting {len(inventory.volumes)} volumes", snapshot_volumes,
                                   timeout=timedelta(seconds=SNAPSHOT_TIMEOUT_SECONDS) + STEP_TIMEOUT)
    report.machines_destroyed = await _step(context, "destroying machines", destroy_machines)
    report.ips_released = await _step(context, "releasing public IPs", release_ips)
    if stage.delete_volumes:
        report.volumes_deleted = await _step(context, "deleting snapshotted volumes", delete_volumes, report.snapshots)
    if stage.delete_app:
        report.app_deleted = await _step(context, "deleting the app", delete_app)
    context.stage_status("teardown").detail = report.summary()
    return report
