"""RunPod: a load-balancing serverless endpoint through the REST API v2 (``api.runpod.io/v2``).

v2, not ``rest.runpod.io/v1``: RunPod retired v1 on 2026-11-15, and only v2 creates
load-balancing endpoints, whose workers serve HTTP themselves (``PORT``, ``HEALTH_CHECK_PATH``)
the way the Fly app did; a queue-based endpoint would need RunPod's handler in the image. The
endpoint carries the image and its container settings itself, so no template is needed.

The endpoint is found by name (``GET /v2/serverless``), created (``POST``) when missing, and
otherwise patched with only the fields that differ (``PATCH /v2/serverless/{id}``), so a re-run
changes nothing. Secrets go into env as RunPod's ``{{ RUNPOD_SECRET_<name> }}`` placeholders;
the weights' network volume is attached and the workers placed in its datacenter.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

import httpx
import structlog

from flyaway.activities.deploy.base import Applied, plain_env
from flyaway.activities.deploy.health import HealthProbe
from flyaway.activities.retry import async_retrying
from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials, NotFound
from flyaway.models.deploy import RUNPOD_VOLUME_PATH, DeployOutcome, RunpodDeploy, WeightsVolume
from flyaway.redaction import register_secret, scrub

log = structlog.get_logger(__name__)
LOAD_BALANCER = "LOAD_BALANCER"


class RunpodUnavailable(Exception):
    """429 or 5xx: retried per request."""


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, (RunpodUnavailable, httpx.TransportError))


def _problem(response: httpx.Response) -> str:
    """An RFC 9457 problem's detail and errors (v2's error body), or the body's text."""
    try:
        body = response.json()
        text = "; ".join([str(body.get("detail") or body.get("title") or body), *map(str, body.get("errors") or [])])
    except (ValueError, AttributeError):
        text = response.text or response.reason_phrase
    return scrub(" ".join(text.split()))[:500]


class RunpodDeployer:
    def __init__(self, stage: RunpodDeploy, image: str, secrets: dict[str, str],
                 weights: WeightsVolume | None) -> None:
        self.stage, self.image, self.secrets, self.weights = stage, image, secrets, weights
        api_key = os.environ.get(stage.api_key_env, "").strip()
        if not api_key:
            raise MissingCredentials(f"{stage.api_key_env} is not set in the worker's environment; create a RunPod "
                                     f"API key with read/write access")
        register_secret(api_key)
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._http = httpx.AsyncClient(base_url=stage.api_url, headers=self._auth, timeout=60)

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
        desired = self.desired()
        existing = await self._find()
        if existing is None:
            endpoint, outcome = await self._create(desired), DeployOutcome.created
        else:
            _check_type(existing, self.stage.endpoint_name)
            changes = _changes(existing, desired)
            endpoint = existing
            if changes:
                endpoint = await self._request("PATCH", f"/serverless/{existing['id']}", "update the endpoint",
                                               json=changes)
            outcome = DeployOutcome.updated if changes else DeployOutcome.unchanged
        base = str(endpoint.get("requestUrls", {}).get("base") or "").rstrip("/")
        if not base:
            raise InvalidPlan(f"RunPod endpoint {endpoint['id']} reports no request URL")
        log.info("RunPod endpoint applied", endpoint=endpoint["id"], outcome=outcome.value, url=base)
        return Applied(service=endpoint["id"], endpoint_url=base, outcome=outcome,
                       probe=HealthProbe(base + self.stage.health.path, headers=self._auth))

    async def check(self) -> None:
        """The key, by listing endpoints; an endpoint of the name that flyaway could not take over."""
        existing = await self._find()
        if existing is not None:
            _check_type(existing, self.stage.endpoint_name)

    async def _find(self) -> dict[str, Any] | None:
        listed = await self._request("GET", "/serverless", "list endpoints")
        matches = [e for e in listed.get("endpoints", []) if e.get("name") == self.stage.endpoint_name]
        if len(matches) > 1:
            raise InvalidPlan(f"{len(matches)} RunPod endpoints are named '{self.stage.endpoint_name}' "
                              f"({', '.join(e['id'] for e in matches)}); delete the extra ones")
        return matches[0] if matches else None

    async def _create(self, desired: dict[str, Any]) -> dict[str, Any]:
        """POST the endpoint; before a retry, look again: a create whose answer was lost may have landed."""
        async for attempt in async_retrying(_is_transient):
            with attempt:
                if attempt.retry_state.attempt_number > 1 and (landed := await self._find()) is not None:
                    return landed
                return await self._send("POST", "/serverless", "create the endpoint", json=desired)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """A read or a PATCH (repeating either is harmless), retried while transient."""
        async for attempt in async_retrying(_is_transient):
            with attempt:
                return await self._send(method, path, what, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code == 429 or response.status_code >= 500:
            raise RunpodUnavailable(f"RunPod answered {response.status_code} to {method} {path}")
        where = f"RunPod endpoint '{self.stage.endpoint_name}'"
        if response.status_code in (401, 403):
            raise AccessDenied(f"{where}: RunPod refused to {what} ({response.status_code}: {_problem(response)}); "
                               f"check {self.stage.api_key_env}")
        if response.status_code == 404:
            raise NotFound(f"{where}: RunPod could not {what}: {_problem(response)}")
        if response.is_error:
            raise InvalidPlan(f"{where}: RunPod rejected the request to {what} ({response.status_code}): "
                              f"{_problem(response)}")
        return response.json()

    async def aclose(self) -> None:
        await self._http.aclose()


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
