"""The deploy stage's activity: create or update the service, then wait until it answers its health check.

Settings come from the plan's section, filled in from the app's fly.toml where the plan names
one (the plan's own values win). The platform's deployer applies the service idempotently; the
activity then polls the new endpoint, heartbeating, until it answers 200 or the plan's deadline
passes. Bad input, refused credentials and a service that never becomes healthy fail for good
(the operator looks); anything else is retried.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from temporalio import activity

from flyaway.activities.deploy.base import DEPLOYERS, Deployer
from flyaway.activities.deploy.fly_toml import apply_translation, read_fly_toml, translate
from flyaway.activities.deploy.health import measure_from_zero, wait_healthy
from flyaway.models.deploy import (
    CloudRunDeploy,
    ColdStart,
    DeployRequest,
    DeployResult,
    FlyScaling,
    ModalDeploy,
    RunpodDeploy,
    ServiceScaling,
)

log = structlog.get_logger(__name__)


def effective_stage(request: DeployRequest) -> tuple[CloudRunDeploy | RunpodDeploy | ModalDeploy, list[str],
                                                     FlyScaling | None]:
    """The section with the fly.toml's settings applied under the plan's, what the fly.toml has that the
    platform cannot do, and the Fly app's own scaling (for the report's cost comparison)."""
    stage = request.stage
    if stage.fly_toml is None:
        return stage, [], None
    service = read_fly_toml(stage.fly_toml)
    translation = translate(service, stage.platform)
    fly = FlyScaling(gpu=service.gpu_kind, gpus_per_machine=service.gpus, min_machines_running=service.min_running)
    return apply_translation(stage, request.explicit, translation), translation.unsupported, fly


def open_deployer(stage: CloudRunDeploy | RunpodDeploy | ModalDeploy, request: DeployRequest) -> Deployer:
    """The platform's deployer; each imports its SDK (google-cloud-run, modal) only when a plan uses it."""
    return DEPLOYERS[stage.platform](stage, request.image, request.secrets, request.weights)


@activity.defn(name="flyaway.deploy.check")
async def check_deploy(request: DeployRequest) -> list[str]:
    """Everything short of deploying, before the migration starts: the fly.toml applies, the credentials
    are there and the platform lets them in. Returns the fly.toml's settings that have no equivalent."""
    stage, unsupported, _ = await asyncio.to_thread(effective_stage, request)
    deployer = open_deployer(stage, request)
    try:
        await deployer.check()
    finally:
        await deployer.aclose()
    return unsupported


@activity.defn(name="flyaway.deploy.service")
async def deploy_service(request: DeployRequest) -> DeployResult:
    """Create or update the service on its platform and wait until it is healthy, timing how long that took
    (and, when the plan asks, a start from zero)."""
    stage, unsupported, fly = await asyncio.to_thread(effective_stage, request)
    scaling = ServiceScaling.of(stage)
    deployer = open_deployer(stage, request)
    called = time.monotonic()
    try:
        applied = await deployer.apply()
    finally:
        await deployer.aclose()
    cold_start = None
    if applied.probe is not None:
        await wait_healthy(applied.probe, stage.health)
        cold_start = ColdStart(seconds_to_healthy=round(time.monotonic() - called, 3))
        if stage.health.measure_from_zero and scaling.min_instances == 0:
            cold_start.idle_wait_seconds, cold_start.from_zero_seconds = await measure_from_zero(
                applied.probe, stage.health, scaling.idle_timeout_seconds)
    result = DeployResult(platform=stage.platform, service=applied.service, endpoint_url=applied.endpoint_url,
                          health_url=applied.probe.url if applied.probe else None, image=request.image,
                          outcome=applied.outcome, unsupported=unsupported, scaling=scaling, fly_scaling=fly,
                          cold_start=cold_start)
    log.info("deployed", summary=result.summary())
    return result


DEPLOY_ACTIVITIES = [check_deploy, deploy_service]
