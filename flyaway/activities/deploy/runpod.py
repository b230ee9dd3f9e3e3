"""RunPod: a load-balancing serverless endpoint (through :class:`flyaway.providers.runpod.RunpodApi`).

Load-balancing endpoints' workers serve HTTP themselves (``PORT``, ``HEALTH_CHECK_PATH``) the way
the Fly app did; a queue-based endpoint would need RunPod's handler in the image. The endpoint
carries the image and its container settings itself, so no template is needed.

The endpoint is found by name (``GET /v2/serverless``), created (``POST``) when missing, and
otherwise patched with only the fields that differ (``PATCH /v2/serverless/{id}``), so a re-run
changes nothing. Secrets go into env as RunPod's ``{{ RUNPOD_SECRET_<name> }}`` placeholders;
the weights' network volume is attached and the workers placed in its datacenter.
"""

from __future__ import annotations

import asyncio
import shlex
from typing import Any

import structlog

from flyaway.activities.deploy.base import DEPLOYERS, Applied, plain_env
from flyaway.activities.deploy.health import HealthProbe
from flyaway.errors import InvalidPlan
from flyaway.models.deploy import RUNPOD_VOLUME_PATH, DeployOutcome, RunpodDeploy, WeightsVolume
from flyaway.providers.runpod import RunpodApi

log = structlog.get_logger(__name__)
LOAD_BALANCER = "LOAD_BALANCER"


@DEPLOYERS.register("runpod")
class RunpodDeployer:
    def __init__(self, stage: RunpodDeploy, image: str, secrets: dict[str, str],
                 weights: WeightsVolume | None) -> None:
        self.stage, self.image, self.secrets, self.weights = stage, image, secrets, weights
        self._api = RunpodApi(stage.api_url, stage.api_key_env)

    def desired(self) -> dict[str, Any]:
        """The endpoint as the plan wants it, in the API's create shape."""
        stage = self.stage
        env = plain_env(stage, self.secrets, self.weights, RUNPOD_VOLUME_PATH)
        env |= {"PORT": str(stage.port), "PORT_HEALTH": str(stage.port), "HEALTH_CHECK_PATH": stage.health.path}
        env |= self.secrets
        return {
            "name": stage.endpoint_name, "type": LOAD_BALANCER, "image": self.image,
            "args": shlex.join(stage.cmd) if stage.cmd else "", "env": env, "ports": [f"{stage.port}/http"],
            "disk": stage.disk_gb, "registry": stage.registry_auth_id,
            "gpu": {"pools": stage.gpu_pools, "count": stage.gpu_count},
            "workers": {"min": stage.workers_min, "max": stage.workers_max,
                        "idleTimeout": int(stage.idle_timeout.total_seconds())},
            "scaling": {"type": "REQUEST_COUNT", "requestCount": stage.requests_per_worker},
            "flashboot": "FLASHBOOT" if stage.flashboot else "OFF",
            "networkVolumes": [self.weights.name] if self.weights else [],
            "dataCenterIds": [self.weights.location] if self.weights and self.weights.location else [],
        }

    async def apply(self) -> Applied:
        return await asyncio.to_thread(self._apply)

    def _apply(self) -> Applied:
        desired, name = self.desired(), self.stage.endpoint_name
        existing = self._find()
        if existing is None:
            endpoint = self._api.create_endpoint(desired, f"create endpoint '{name}'", self._find)
            outcome = DeployOutcome.created
        else:
            _check_type(existing, name)
            changes = _changes(existing, desired)
            endpoint = existing
            if changes:
                endpoint = self._api.update_endpoint(existing["id"], changes, f"update endpoint '{name}'")
            outcome = DeployOutcome.updated if changes else DeployOutcome.unchanged
        base = str(endpoint.get("requestUrls", {}).get("base") or "").rstrip("/")
        if not base:
            raise InvalidPlan(f"RunPod endpoint {endpoint['id']} reports no request URL")
        log.info("RunPod endpoint applied", endpoint=endpoint["id"], outcome=outcome.value, url=base)
        return Applied(service=endpoint["id"], endpoint_url=base, outcome=outcome,
                       probe=HealthProbe(base + self.stage.health.path, headers=self._api.auth))

    async def check(self) -> None:
        """The key, by listing endpoints; an endpoint of the name that flyaway could not take over."""
        existing = await asyncio.to_thread(self._find)
        if existing is not None:
            _check_type(existing, self.stage.endpoint_name)

    def _find(self) -> dict[str, Any] | None:
        name = self.stage.endpoint_name
        matches = [e for e in self._api.endpoints(f"list endpoints (looking for '{name}')") if e.get("name") == name]
        if len(matches) > 1:
            raise InvalidPlan(f"{len(matches)} RunPod endpoints are named '{name}' "
                              f"({', '.join(e['id'] for e in matches)}); delete the extra ones")
        return matches[0] if matches else None

    async def aclose(self) -> None:
        self._api.close()


def _check_type(endpoint: dict[str, Any], name: str) -> None:
    if endpoint.get("type") != LOAD_BALANCER:
        raise InvalidPlan(f"RunPod endpoint '{name}' ({endpoint['id']}) is a {endpoint.get('type')} endpoint; "
                          f"flyaway deploys load-balancing ones: pick another endpoint_name or delete it")


def _changes(existing: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The fields to PATCH: those whose value differs (nested ones compared by what flyaway sets)."""
    changes = {}
    for key, value in desired.items():
        if key == "type":
            continue
        current = existing.get(key)
        if isinstance(value, dict) and isinstance(current, dict) and key != "env":
            differs = any(current.get(k) != v for k, v in value.items())
        else:
            differs = current != value
        if differs:
            changes[key] = value
    return changes
