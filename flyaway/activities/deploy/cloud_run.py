"""Cloud Run: one service with a GPU (through :class:`flyaway.providers.google.CloudRun`).

The service is written whole from the plan: the image, env (plain values and Secret Manager
references pinned to the version the secrets stage wrote), the weights bucket mounted
read-only as a Cloud Storage volume, a startup probe on the health path, GPU, CPU, memory and
scaling. A label carries a digest of that spec: a re-run finding the same digest on a ready
service changes nothing; otherwise the service is created or replaced and the long-running
operation is followed until Cloud Run has the new revision serving (its startup probe passed).
"""

from __future__ import annotations

import asyncio

import structlog

from flyaway.activities.deploy.base import DEPLOYERS, Applied, plain_env
from flyaway.activities.deploy.health import HealthProbe, poll_until
from flyaway.errors import InvalidPlan
from flyaway.models.deploy import CloudRunDeploy, DeployOutcome, WeightsVolume
from flyaway.providers.google import CloudRun, Operation, Service, cloud_run_service, is_current

log = structlog.get_logger(__name__)


@DEPLOYERS.register("cloud_run")
class CloudRunDeployer:
    def __init__(self, stage: CloudRunDeploy, image: str, secrets: dict[str, str],
                 weights: WeightsVolume | None) -> None:
        self.stage, self.image, self.secrets, self.weights = stage, image, secrets, weights
        self._run = CloudRun(stage)

    def desired(self) -> Service:
        stage = self.stage
        env = plain_env(stage, self.secrets, self.weights, stage.weights_mount_path)
        return cloud_run_service(stage, self.image, env, self.secrets, self.weights.name if self.weights else None)

    async def apply(self) -> Applied:
        desired = self.desired()
        existing = await asyncio.to_thread(self._run.get)
        if existing is not None and is_current(existing, desired):
            service, outcome = existing, DeployOutcome.unchanged
        else:
            operation = await asyncio.to_thread(self._run.write, desired, existing is not None)
            service = await self._finish(operation)
            outcome = DeployOutcome.updated if existing is not None else DeployOutcome.created
        if not service.uri:
            raise InvalidPlan(f"Cloud Run service {self.stage.service_name} has no URL (default_uri_disabled?)")
        probe = HealthProbe(service.uri + self.stage.health.path) if self.stage.public else None
        log.info("Cloud Run service applied", service=service.name, outcome=outcome.value, uri=service.uri)
        return Applied(service=service.name, endpoint_url=service.uri, outcome=outcome, probe=probe)

    async def check(self) -> None:
        """Credentials and rights, by reading the service (missing is fine)."""
        await asyncio.to_thread(self._run.get)

    async def _finish(self, operation: Operation) -> Service:
        """Follow the rollout until Cloud Run reports it done, then its outcome."""
        async def rolled_out() -> str | None:
            return None if await asyncio.to_thread(self._run.rolled_out, operation) else "rolling out"

        await poll_until(rolled_out, self.stage.health, f"Cloud Run rollout of {self.stage.service_name}")
        return self._run.outcome(operation)

    async def aclose(self) -> None:
        self._run.close()
