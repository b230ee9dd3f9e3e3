"""A fake of RunPod's REST API v2 serverless endpoints (``docs.runpod.io/api-reference-v2/serverless``).

- ``GET   /v2/serverless`` -> ``{"endpoints": [Endpoint]}``
- ``POST  /v2/serverless`` ``CreateEndpointRequest`` -> 201 Endpoint
- ``GET   /v2/serverless/{id}`` -> Endpoint
- ``PATCH /v2/serverless/{id}`` ``UpdateEndpointRequest`` (partial) -> Endpoint

Creates are checked as the published schema says: ``name``, ``type`` (QUEUE | LOAD_BALANCER) and,
without ``templateId``, ``image`` are required; a load-balancing endpoint scales on
``REQUEST_COUNT``; ``gpu.pools`` non-empty; ``workers.idleTimeout`` 1-3600; ``flashboot`` one of
OFF, FLASHBOOT, PRIORITY_FLASHBOOT; a network volume must exist (:attr:`volumes`, id ->
datacenter) and the endpoint be placed in its datacenter. ``type`` cannot be patched. Errors are
RFC 9457 problems ``{title, status, detail, errors}``: 400 for schema violations, 401 without
``Authorization: Bearer <api_key>``, 403 when :attr:`denied`, 404 unknown ids. Load-balancing
endpoints report ``requestUrls.base`` = :attr:`endpoint_base` (a local server standing in for
``https://<id>.api.runpod.ai``). :attr:`fail_next` answers that many requests with 503 first.
"""

from __future__ import annotations

import re
import secrets as random_tokens
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from tests.support.servers import HttpServer, JsonHandler

_ONE = re.compile(r"^/v2/serverless/([^/]+)$")
_POOLS = {"AMPERE_16", "AMPERE_24", "ADA_24", "AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO", "HOPPER_141"}
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 503: "Service Unavailable"}
_PATCHABLE = {"name", "image", "args", "env", "ports", "disk", "registry", "gpu", "workers", "scaling", "flashboot",
              "networkVolumes", "dataCenterIds", "templateId", "timeout", "cpu"}


class GatewayPage(str):
    """An HTML page answered with 200 in place of the API's JSON, as a gateway that lost the answer sends."""


class Problem(Exception):
    def __init__(self, status: int, detail: str, errors: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors or []


class _Handler(JsonHandler):
    def _route(self) -> None:
        fake: FakeRunpodServerless = self.owner
        try:
            status, body = fake.handle(self.command, urlsplit(self.path).path,
                                       self.headers.get("Authorization", ""), self.read_json())
        except Problem as problem:
            status, body = problem.status, {"title": _TITLES[problem.status], "status": problem.status,
                                            "detail": problem.detail, "errors": problem.errors}
        if isinstance(body, GatewayPage):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_json(status, body)

    do_GET = do_POST = do_PATCH = _route


def _check(endpoint: dict[str, Any], volumes: dict[str, str]) -> None:
    errors = []
    if endpoint.get("type") not in ("QUEUE", "LOAD_BALANCER"):
        errors.append("type: must be QUEUE or LOAD_BALANCER")
    if not endpoint.get("name"):
        errors.append("name: required")
    if not endpoint.get("image") and not endpoint.get("templateId"):
        errors.append("image: required without templateId")
    scaling = endpoint.get("scaling") or {}
    if endpoint.get("type") == "LOAD_BALANCER" and scaling.get("type") != "REQUEST_COUNT":
        errors.append("scaling: load-balancing endpoints scale on REQUEST_COUNT")
    pools = (endpoint.get("gpu") or {}).get("pools") or []
    if not pools or set(pools) - _POOLS:
        errors.append(f"gpu.pools: unknown or empty {pools}")
    idle = (endpoint.get("workers") or {}).get("idleTimeout", 5)
    if not 1 <= idle <= 3600:
        errors.append("workers.idleTimeout: must be 1-3600")
    if endpoint.get("flashboot", "OFF") not in ("OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT"):
        errors.append("flashboot: must be OFF, FLASHBOOT or PRIORITY_FLASHBOOT")
    for volume in endpoint.get("networkVolumes") or []:
        if volume not in volumes:
            errors.append(f"networkVolumes: {volume} does not exist")
        elif volumes[volume] not in (endpoint.get("dataCenterIds") or [volumes[volume]]):
            errors.append(f"dataCenterIds: must include {volumes[volume]}, where network volume {volume} is")
    if errors:
        raise Problem(400, "The request body is invalid.", errors)


class FakeRunpodServerless(HttpServer):
    handler = _Handler

    def __init__(self, api_key: str = "rp-deploy-key", endpoint_base: str = "https://example.api.runpod.ai") -> None:
        self.api_key = api_key
        self.endpoint_base = endpoint_base
        self.denied = False
        self.fail_next = 0
        #: numbers of the requests (0 is the first this fake gets) done but answered with a ``GatewayPage``
        self.garbled: set[int] = set()
        #: network volume id -> datacenter
        self.volumes: dict[str, str] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @property
    def api_url(self) -> str:
        return self.endpoint + "/v2"

    def handle(self, method: str, path: str, authorization: str, body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((method, path))
            if len(self.requests) - 1 in self.garbled:
                status, _ = self._answer(method, path, authorization, body)
                return status, GatewayPage("<html><body>upstream answer lost</body></html>")
            return self._answer(method, path, authorization, body)

    def _answer(self, method: str, path: str, authorization: str, body: Any) -> tuple[int, Any]:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise Problem(503, "Service temporarily unavailable.")
        if authorization != f"Bearer {self.api_key}":
            raise Problem(401, "Missing or invalid API key.")
        if self.denied:
            raise Problem(403, "This API key may not manage serverless endpoints.")
        if path == "/v2/serverless" and method == "GET":
            return 200, {"endpoints": list(self.endpoints.values())}
        if path == "/v2/serverless" and method == "POST":
            return 201, self._create(body or {})
        if (match := _ONE.match(path)) and method in ("GET", "PATCH"):
            endpoint = self.endpoints.get(match.group(1))
            if endpoint is None:
                raise Problem(404, f"Endpoint {match.group(1)} not found.")
            return 200, self._update(endpoint, body or {}) if method == "PATCH" else endpoint
        raise Problem(404, f"No route for {method} {path}.")

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        _check(body, self.volumes)
        endpoint_id = random_tokens.token_hex(7)
        endpoint = {"id": endpoint_id, "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "flashboot": "OFF", "registry": None, "timeout": 300000, "dataCenterIds": [],
                    "networkVolumes": [], **body}
        endpoint["requestUrls"] = ({"base": self.endpoint_base, "health": f"{self.endpoint_base}/ping"}
                                   if body["type"] == "LOAD_BALANCER" else
                                   {"runSync": f"https://api.runpod.ai/v2/{endpoint_id}/runsync"})
        self.endpoints[endpoint_id] = endpoint
        return endpoint

    def _update(self, endpoint: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - _PATCHABLE)
        if unknown:
            raise Problem(400, "The request body is invalid.", [f"{key}: cannot be updated" for key in unknown])
        merged = {**endpoint, **body}
        if "gpu" in body:
            merged["gpu"] = {**endpoint.get("gpu", {}), **body["gpu"]}
        _check(merged, self.volumes)
        endpoint.update(merged)
        return endpoint
