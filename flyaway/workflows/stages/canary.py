"""The canary stage: resolve the new endpoint, run ``CanaryWorkflow`` as a child, keep its report.

The child reports its state to the migration by signal (the migration's status query shows
it) and receives the operator's pause, resume, approve and promote the same way. A rollback
ends the child with a ``RolledBack`` failure, which the stage machine turns into
``waiting_for_operator``; ``retry`` runs this stage, hence a fresh canary, again.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from flyaway.models.canary import CanaryInput, CanaryResult, CanaryState, CanaryStatus
    from flyaway.models.deploy import DeployResult
    from flyaway.workflows.canary import CanaryWorkflow
    from flyaway.workflows.stages.base import StageContext, StageRefused

#: where the canary may be steered: a running child that has not ended
STEERABLE = (CanaryState.PROGRESSING, CanaryState.WAITING_FOR_APPROVAL, CanaryState.PAUSED)


def deployed_endpoint(result: DeployResult | None) -> str | None:
    """The base URL the deploy stage reported for the new service, if it ran."""
    return str(result.endpoint_url).rstrip("/") if result is not None and result.endpoint_url else None


async def run_canary(context: StageContext) -> CanaryResult:
    stage = context.plan.canary
    assert stage is not None
    endpoint = stage.new_endpoint or deployed_endpoint(context.results.deploy)
    if endpoint is None:
        raise StageRefused("canary.new_endpoint is not set and the deploy stage reported no endpoint_url")
    request = CanaryInput(stage=stage.model_copy(update={"new_endpoint": endpoint}),
                          migration_name=context.plan.name)
    result: CanaryResult = await context.run_child(CanaryWorkflow.run, request, "canary")
    context.stage_status("canary").detail = result.report
    return result


def check_approvable(canary: CanaryStatus | None) -> None:
    """Raise ValueError unless the canary waits for ``approve`` right now."""
    if canary is None or canary.approval is None:
        state = "not started" if canary is None else canary.state.value
        raise ValueError(f"the canary is not waiting for an approval (it is {state})")


def check_promotable(canary: CanaryStatus | None) -> None:
    """Raise ValueError unless the canary runs and can still skip its remaining steps."""
    if canary is None or canary.state not in STEERABLE:
        state = "not started" if canary is None else canary.state.value
        raise ValueError(f"there is no running canary to promote (it is {state})")
    if canary.promote_requested:
        raise ValueError("the canary is already being promoted")
