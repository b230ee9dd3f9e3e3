"""The deploy stage: one activity creates or updates the service and waits until it is healthy.

It runs the image stage's copy (pinned by digest) unless the section names an image, with the
secrets stage's references and the weights destination mounted. The fields the plan sets
itself go along, so the activity knows which ones a fly.toml may fill in.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.deploy.activities import deploy_service
    from flyaway.errors import NON_RETRYABLE_ERROR_TYPES
    from flyaway.models.deploy import DeployRequest, DeployResult, WeightsVolume
    from flyaway.models.plan import MigrationPlan
    from flyaway.models.status import StageResults
    from flyaway.workflows.stages.base import StageContext

#: a few tries for what is neither bad input nor a refusal (a failed `modal deploy`, an API outage)
DEPLOY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=2),
                           maximum_attempts=5, non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)


def deploy_request(plan: MigrationPlan, results: StageResults) -> DeployRequest:
    """The activity's input from the plan and the results so far. Before the image stage ran (the
    check), the image stands for the tag the image stage will push."""
    stage = plan.deploy
    assert stage is not None
    copied, secrets = results.image, results.secrets
    image = stage.image or (copied.destination_image if copied else plan.image.destination if plan.image else None)
    assert image is not None  # the plan requires an image stage or deploy.image
    return DeployRequest(stage=stage, explicit=sorted(stage.model_fields_set), image=image,
                         secrets=secrets.references() if secrets else {},
                         weights=WeightsVolume.of(plan.weights.destination) if stage.mount_weights else None)


async def run_deploy(context: StageContext) -> DeployResult:
    request = deploy_request(context.plan, context.results)
    # the rollout and the health check each get the plan's deadline (and a start from zero, when measured)
    health = request.stage.health
    result = await workflow.execute_activity(deploy_service, request,
                                             start_to_close_timeout=2 * health.deadline + health.from_zero_allowance()
                                             + timedelta(minutes=15),
                                             heartbeat_timeout=timedelta(minutes=2), retry_policy=DEPLOY_RETRY)
    context.stage_status("deploy").detail = result.summary()
    return result
