"""The deploy stage's activity: create or update the service, then wait until it answers its health check.

Settings come from the plan's section, filled in from the app's fly.toml where the plan names
one (the plan's own values win). The platform's deployer applies the service idempotently; the
activity then polls the new endpoint, heartbeating, until it answers 200 or the plan's deadline
passes. Bad input, refused credentials and a service that never becomes healthy fail for good
(the operator looks); anything else is retried.
"""

from __future__ import annotations

import asyncio

import structlog
from temporalio import activity

from flyaway.activities.deploy.base import Deployer
from flyaway.activities.deploy.fly_toml import apply_translation, read_fly_toml, translate
from flyaway.activities.deploy.health import wait_healthy
from flyaway.activities.storage.activities import non_retryable_errors
from flyaway.models.deploy import CloudRunDeploy, DeployRequest, DeployResult, ModalDeploy, RunpodDeploy

log = structlog.get_logger(__name__)


def effective_stage(request: DeployRequest) -> tuple[CloudRunDeploy | RunpodDeploy | ModalDeploy, list[str]]:
    """The section with the fly.toml's settings applied under the plan's, and what the fly.toml has
    that the platform cannot do."""
    stage = request.stage
    if stage.fly_toml is None:
        return stage, []
    translation = translate(read_fly_toml(stage.fly_toml), stage.platform)
    return apply_translation(stage, request.explicit, translation), translation.unsupported


def open_deployer(stage: CloudRunDeploy | RunpodDeploy | ModalDeploy, request: DeployRequest) -> Deployer:
    """The platform's deployer; each imports its SDK (google-cloud-run, modal) only when a plan uses it."""
    arguments = (request.image, request.secrets, request.weights)
    if isinstance(stage, CloudRunDeploy):
        from flyaway.activities.deploy.cloud_run import CloudRunDeployer
        return CloudRunDeployer(stage, *arguments)
    if isinstance(stage, RunpodDeploy):
        from flyaway.activities.deploy.runpod import RunpodDeployer
        return RunpodDeployer(stage, *arguments)
    from flyaway.activities.deploy.modal import ModalDeployer
    return ModalDeployer(stage, *arguments)


@activity.defn(name="flyaway.deploy.check")
@non_retryable_errors
async def check_deploy(request: DeployRequest) -> list[str]:
    """Everything short of deploying, before the migration starts: the fly.toml applies, the credentials
    are there and the platform lets them in. Returns the fly.toml's settings that have no equivalent."""
    stage, unsupported = await asyncio.to_thread(effective_stage, request)
    deployer = open_deployer(stage, request)
    try:
        await deployer.check()
    finally:
        await deployer.aclose()
    return unsupported


@activity.defn(name="flyaway.deploy.service")
@non_retryable_errors
async def deploy_service(request: DeployRequest) -> DeployResult:
    """Create or update the service on its platform and wait until it is healthy."""
    stage, unsupported = await asyncio.to_thread(effective_stage, request)
    deployer = open_deployer(stage, request)
    try:
        applied = await deployer.apply()
    finally:
        await deployer.aclose()
    if applied.probe is not None:
        await wait_healthy(applied.probe, stage.health)
    result = DeployResult(platform=stage.platform, service=applied.service, endpoint_url=applied.endpoint_url,
                          health_url=applied.probe.url if applied.probe else None, image=request.image,
                          outcome=applied.outcome, unsupported=unsupported)
    log.info("deployed", summary=result.summary())
    return result


DEPLOY_ACTIVITIES = [check_deploy, deploy_service]
