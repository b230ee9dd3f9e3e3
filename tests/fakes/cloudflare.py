"""A fake of the Cloudflare API v4 load-balancer endpoints flyaway's router uses.

Served under ``/client/v4`` with the published envelope ``{"success", "errors", "messages",
"result"}``:

- ``GET|PATCH /accounts/{account_id}/load_balancers/pools/{pool_id}`` (PATCH overwrites the
  supplied properties, e.g. the whole ``origins`` list)
- ``GET /zones/{zone_id}/load_balancers/{load_balancer_id}``

Tokens are bearer tokens with ``read`` or ``write`` rights. An unknown token gets 403 with
code 9109, a read token writing gets 403 with code 10000, an unknown route or identifier
400 with codes 7003/7000, a missing pool or load balancer 404. ``fail_next`` answers that
many requests with 503 first.
"""

from __future__ import annotations

import copy
import re
import threading
from datetime import datetime, timezone
from typing import Any, Literal

from tests.fakes.loopback import JsonHandler, LoopbackServer

PREFIX = "/client/v4"
_POOL = re.compile(rf"^{PREFIX}/accounts/([^/]+)/load_balancers/pools/([^/]+)$")
_BALANCER = re.compile(rf"^{PREFIX}/zones/([^/]+)/load_balancers/([^/]+)$")
_POOL_WRITABLE = {"origins", "name", "description", "enabled", "minimum_origins", "monitor", "origin_steering"}


def envelope(result: Any = None, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"success": not errors, "errors": errors or [], "messages": [], "result": result}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class _Handler(JsonHandler):
    def _route(self) -> None:
        fake: FakeCloudflare = self.owner
        status, body = fake.handle(self.command, self.path, self.headers.get("Authorization", ""), self.read_json())
        self.send_json(status, body)

    do_GET = do_PATCH = do_PUT = do_POST = do_DELETE = _route


class FakeCloudflare(LoopbackServer):
    handler = _Handler

    def __init__(self, account_id: str = "0123456789abcdef0123456789abcdef") -> None:
        self.account_id = account_id
        self.tokens: dict[str, Literal["read", "write"]] = {}
        self.pools: dict[str, dict[str, Any]] = {}
        self.load_balancers: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.fail_next = 0
        self._lock = threading.Lock()

    @property
    def api_base_url(self) -> str:
        return self.url + PREFIX

    def add_pool(self, pool_id: str, origins: list[dict[str, Any]]) -> None:
        self.pools[pool_id] = {"id": pool_id, "name": f"pool-{pool_id[:6]}", "enabled": True, "minimum_origins": 1,
                               "origin_steering": {"policy": "random"}, "origins": _as_served(origins),
                               "created_on": _now(), "modified_on": _now()}

    def add_load_balancer(self, zone_id: str, balancer_id: str, default_pools: list[str], fallback_pool: str,
                          proxied: bool = True, ttl: int = 30) -> None:
        self.load_balancers[(zone_id, balancer_id)] = {
            "id": balancer_id, "name": "api.example.com", "enabled": True, "proxied": proxied, "ttl": ttl,
            "default_pools": default_pools, "fallback_pool": fallback_pool, "steering_policy": "off"}

    def origin(self, pool_id: str, name: str) -> dict[str, Any]:
        return next(o for o in self.pools[pool_id]["origins"] if o["name"] == name)

    def handle(self, method: str, path: str, authorization: str, body: Any) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return 503, envelope(errors=[{"code": 1000, "message": "Service temporarily unavailable"}])
            denied = self._authorize(method, authorization)
            if denied:
                return denied
            if match := _POOL.match(path):
                return self._pool(method, match.group(1), match.group(2), body)
            if (match := _BALANCER.match(path)) and method == "GET":
                balancer = self.load_balancers.get((match.group(1), match.group(2)))
                if balancer is None:
                    return 404, envelope(errors=[{"code": 1002, "message": "load balancer not found"}])
                return 200, envelope(copy.deepcopy(balancer))
            return 400, envelope(errors=[
                {"code": 7003, "message": f"Could not route to {path}, perhaps your object identifier is invalid?"},
                {"code": 7000, "message": "No route for that URI"}])

    def _authorize(self, method: str, authorization: str) -> tuple[int, dict[str, Any]] | None:
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or not token:
            return 400, envelope(errors=[{"code": 9106,
                                          "message": "Missing X-Auth-Key, X-Auth-Email or Authorization headers"}])
        rights = self.tokens.get(token)
        if rights is None:
            return 403, envelope(errors=[{"code": 9109, "message": "Invalid access token"}])
        if method != "GET" and rights != "write":
            return 403, envelope(errors=[{"code": 10000, "message": "Authentication error"}])
        return None

    def _pool(self, method: str, account_id: str, pool_id: str, body: Any) -> tuple[int, dict[str, Any]]:
        pool = self.pools.get(pool_id) if account_id == self.account_id else None
        if pool is None:
            return 404, envelope(errors=[{"code": 1003, "message": "pool not found"}])
        if method == "PATCH":
            error = _invalid_pool_patch(body)
            if error:
                return 400, envelope(errors=[{"code": 1002, "message": error}])
            pool.update(copy.deepcopy(body))
            pool["origins"] = _as_served(pool["origins"])
            pool["modified_on"] = _now()
            self.writes.append((pool_id, copy.deepcopy(body)))
        elif method != "GET":
            return 405, envelope(errors=[{"code": 10405, "message": "Method not allowed"}])
        return 200, envelope(copy.deepcopy(pool))


def _invalid_pool_patch(body: Any) -> str | None:
    """Cloudflare's checks on what flyaway sends: known fields, origins with a name, weights 0..1 by 0.01."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if set(body) - _POOL_WRITABLE:
        return f"unknown or read-only pool fields: {sorted(set(body) - _POOL_WRITABLE)}"
    for origin in body.get("origins", []):
        if set(origin) - {"name", "address", "enabled", "weight", "header", "virtual_network_id", "port"}:
            return f"origin has read-only or unknown fields: {sorted(origin)}"
        weight = origin.get("weight", 1)
        if not 0 <= weight <= 1 or abs(weight * 100 - round(weight * 100)) > 1e-9:
            return f"origin weight {weight} must be between 0 and 1 in steps of 0.01: validation failed"
    return None


def _as_served(origins: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Origins as the API returns them: a disabled one carries its read-only ``disabled_at``."""
    served = copy.deepcopy(origins)
    for origin in served:
        if origin.get("enabled", True):
            origin.pop("disabled_at", None)
        else:
            origin.setdefault("disabled_at", _now())
    return served
