"""A fake of the Cloudflare API v4 load-balancer endpoints flyaway's router uses.

Served under ``/client/v4`` with the published envelope ``{"success", "errors", "messages",
"result"}``:

- ``GET|PATCH /accounts/{account_id}/load_balancers/pools/{pool_id}`` (PATCH overwrites the
  supplied properties, e.g. the whole ``origins`` list)
- ``GET /zones/{zone_id}/load_balancers/{load_balancer_id}``
- ``POST /graphql``: the GraphQL Analytics API, executed by graphql-core against the part of
  Cloudflare's schema flyaway reads (``viewer.zones(filter: {zoneTag})
  .loadBalancingRequestsAdaptiveGroups(limit, filter: {datetime_geq, datetime_leq, ...})`` with
  ``count`` and ``dimensions``), grouped by the dimensions the query selects. Answers are
  ``{"data", "errors"}``: a query the schema rejects gets ``data: null`` and its errors, a zone
  the fake does not hold "does not have access to the path". The requests counted are the ones
  ``serve`` sent through a load balancer (split by its pool's origin weights) or ``record_requests``.

Tokens are bearer tokens with ``read`` or ``write`` rights. An unknown token gets 403 with
code 9109, a read token writing gets 403 with code 10000, an unknown route or identifier
400 with codes 7003/7000, a missing pool or load balancer 404. ``fail_next`` answers that
many requests with 503 first.
"""

from __future__ import annotations

import copy
import re
import threading
from datetime import UTC, datetime
from typing import Any, Literal

from graphql import GraphQLResolveInfo, build_schema, graphql_sync

from tests.support.servers import HttpServer, JsonHandler

PREFIX = "/client/v4"
_POOL = re.compile(rf"^{PREFIX}/accounts/([^/]+)/load_balancers/pools/([^/]+)$")
_BALANCER = re.compile(rf"^{PREFIX}/zones/([^/]+)/load_balancers/([^/]+)$")
_POOL_WRITABLE = {"origins", "name", "description", "enabled", "minimum_origins", "monitor", "origin_steering"}
_ANALYTICS_SCHEMA = build_schema("""
scalar string
scalar Time
scalar uint64
type Query { viewer: Viewer }
type Viewer { zones(filter: ZoneFilter!): [Zone!]! }
input ZoneFilter { zoneTag: string, zoneTag_in: [string] }
type Zone {
  zoneTag: string
  loadBalancingRequestsAdaptiveGroups(limit: uint64!, filter: LoadBalancingFilter,
                                      orderBy: [string]): [LoadBalancingGroup!]!
}
input LoadBalancingFilter {
  datetime_geq: Time, datetime_leq: Time, datetime_gt: Time, datetime_lt: Time,
  lbName: string, selectedPoolId: string, selectedPoolName: string, selectedOriginName: string
}
type LoadBalancingGroup { count: uint64!, dimensions: LoadBalancingDimensions }
type LoadBalancingDimensions {
  datetime: Time, lbName: string, selectedPoolId: string, selectedPoolName: string, selectedOriginName: string
}
""")
_TIME_BOUNDS = {"datetime_geq": lambda at, bound: at >= bound, "datetime_leq": lambda at, bound: at <= bound,
                "datetime_gt": lambda at, bound: at > bound, "datetime_lt": lambda at, bound: at < bound}


def envelope(result: Any = None, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"success": not errors, "errors": errors or [], "messages": [], "result": result}


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _Handler(JsonHandler):
    def _route(self) -> None:
        fake: FakeCloudflare = self.owner
        status, body = fake.handle(self.command, self.path, self.headers.get("Authorization", ""), self.read_json())
        self.send_json(status, body)

    do_GET = do_PATCH = do_PUT = do_POST = do_DELETE = _route


class FakeCloudflare(HttpServer):
    handler = _Handler

    def __init__(self, account_id: str = "0123456789abcdef0123456789abcdef") -> None:
        self.account_id = account_id
        self.tokens: dict[str, Literal["read", "write"]] = {}
        self.pools: dict[str, dict[str, Any]] = {}
        self.load_balancers: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, dict[str, Any]]] = []
        #: requests the load balancers sent: zone, datetime and the dimensions of the analytics dataset
        self.lb_requests: list[dict[str, Any]] = []
        self.graphql_queries: list[dict[str, Any]] = []
        self.fail_next = 0
        self._lock = threading.Lock()

    @property
    def api_base_url(self) -> str:
        return self.endpoint + PREFIX

    def add_pool(self, pool_id: str, origins: list[dict[str, Any]]) -> None:
        self.pools[pool_id] = {"id": pool_id, "name": f"pool-{pool_id[:6]}", "enabled": True, "minimum_origins": 1,
                               "origin_steering": {"policy": "random"}, "origins": _as_served(origins),
                               "created_on": _now(), "modified_on": _now()}

    def add_load_balancer(self, zone_id: str, balancer_id: str, default_pools: list[str], fallback_pool: str,
                          proxied: bool = True, ttl: int = 30) -> None:
        self.load_balancers[(zone_id, balancer_id)] = {
            "id": balancer_id, "name": "api.example.com", "enabled": True, "proxied": proxied, "ttl": ttl,
            "default_pools": default_pools, "fallback_pool": fallback_pool, "steering_policy": "off"}

    def record_requests(self, zone_id: str, balancer_name: str, pool_id: str, origin_name: str, count: int,
                        at: datetime | None = None) -> None:
        """``count`` requests the load balancer sent ``origin_name`` of ``pool_id`` at ``at`` (now)."""
        pool = self.pools.get(pool_id, {})
        self.lb_requests.append({"zone": zone_id, "datetime": at or datetime.now(UTC), "count": count,
                                 "lbName": balancer_name, "selectedPoolId": pool_id,
                                 "selectedPoolName": pool.get("name"), "selectedOriginName": origin_name})

    def serve(self, zone_id: str, balancer_id: str, requests: int) -> None:
        """Send ``requests`` through a load balancer now: its first default pool splits them by origin weight."""
        with self._lock:
            balancer = self.load_balancers[(zone_id, balancer_id)]
            pool = self.pools[balancer["default_pools"][0]]
            shares = {o["name"]: o.get("weight", 1.0) if o.get("enabled", True) else 0.0 for o in pool["origins"]}
        total = sum(shares.values())
        for name, share in shares.items():
            if share and total:
                self.record_requests(zone_id, balancer["name"], pool["id"], name, round(requests * share / total))

    def origin(self, pool_id: str, name: str) -> dict[str, Any]:
        return next(o for o in self.pools[pool_id]["origins"] if o["name"] == name)

    def handle(self, method: str, path: str, authorization: str, body: Any) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return 503, envelope(errors=[{"code": 1000, "message": "Service temporarily unavailable"}])
            denied = self._authorize("GET" if path == f"{PREFIX}/graphql" else method, authorization)
            if denied:
                return denied
            if path == f"{PREFIX}/graphql" and method == "POST":
                return 200, self._graphql(body if isinstance(body, dict) else {})
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

    def _graphql(self, body: dict[str, Any]) -> dict[str, Any]:
        self.graphql_queries.append(copy.deepcopy(body))
        result = graphql_sync(_ANALYTICS_SCHEMA, str(body.get("query") or ""),
                              root_value={"viewer": {"zones": self._zones}},
                              variable_values=body.get("variables") or {})
        errors = [{"message": error.message, "path": error.path,
                   "extensions": {"timestamp": _now()}} for error in result.errors or []]
        return {"data": result.data if not errors else None, "errors": errors or None}

    def _zones(self, info: GraphQLResolveInfo, filter: dict[str, Any]) -> list[dict[str, Any]]:
        tags = filter.get("zoneTag_in") or [filter.get("zoneTag")]
        known = {request["zone"] for request in self.lb_requests} | {zone for zone, _ in self.load_balancers}
        for index, tag in enumerate(tags):
            if tag not in known:
                raise PermissionError(f"zone '{tag}' does not have access to the path "
                                      f"viewer.zones.{index}")  # the API's wording for a zone out of reach
        return [{"zoneTag": tag, "loadBalancingRequestsAdaptiveGroups": self._lb_groups(tag)} for tag in tags]

    def _lb_groups(self, zone_id: str) -> Any:
        def resolve(info: GraphQLResolveInfo, limit: int, filter: dict[str, Any] | None = None,
                    orderBy: list[str] | None = None) -> list[dict[str, Any]]:
            wanted = _selected_dimensions(info)
            groups: dict[tuple[Any, ...], int] = {}
            for request in self.lb_requests:
                if request["zone"] == zone_id and _matches(request, filter or {}):
                    key = tuple(request[name] for name in wanted)
                    groups[key] = groups.get(key, 0) + request["count"]
            return [{"count": count, "dimensions": {name: (value.isoformat() if isinstance(value, datetime)
                                                            else value) for name, value in zip(wanted, key, strict=True)}}
                    for key, count in groups.items()][:limit]
        return resolve

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


def _selected_dimensions(info: GraphQLResolveInfo) -> list[str]:
    """The dimensions a query asks for: the groups are formed by them, as the API does."""
    selection = info.field_nodes[0].selection_set
    for field in selection.selections if selection else []:
        if getattr(field, "name", None) and field.name.value == "dimensions" and field.selection_set:
            return [sub.name.value for sub in field.selection_set.selections]
    return []


def _matches(request: dict[str, Any], conditions: dict[str, Any]) -> bool:
    for name, value in conditions.items():
        if name in _TIME_BOUNDS:
            if not _TIME_BOUNDS[name](request["datetime"], datetime.fromisoformat(value)):
                return False
        elif request.get(name) != value:
            return False
    return True


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
