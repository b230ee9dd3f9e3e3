"""Cloudflare load-balancer origin weights as a traffic router (through :mod:`flyaway.providers.cloudflare`).

The plan names a pool holding two origins, the Fly one and the new one. Origin weights are
0..1 in steps of 0.01 and the traffic share of an origin is its weight over the pool's sum,
so new=p/100 and fly=(100-p)/100 is exactly p percent. The pool is read, its origin list
patched with the two weights changed and everything else as it was, then read again.
"""

from __future__ import annotations

from typing import Any

import structlog

from flyaway.activities.traffic import ROUTERS
from flyaway.errors import InvalidPlan, NotFound
from flyaway.models.canary import CanaryStage, CloudflareRouterConfig, WeightState
from flyaway.providers.cloudflare import CloudflareApi

log = structlog.get_logger(__name__)

#: origin fields the pool API accepts back; read-only ones (disabled_at, healthy, ...) are dropped
_ORIGIN_FIELDS = ("name", "address", "enabled", "weight", "header", "virtual_network_id", "port")


def _share(origin: dict[str, Any]) -> float:
    """The weight an origin really gets: a disabled origin takes no traffic; weight defaults to 1."""
    return float(origin.get("weight", 1.0)) if origin.get("enabled", True) else 0.0


class CloudflareRouter:
    def __init__(self, config: CloudflareRouterConfig) -> None:
        self._config = config
        self._api = CloudflareApi(config.api_base_url, config.token_env)
        self._pool_path = f"/accounts/{config.account_id}/load_balancers/pools/{config.pool_id}"

    def _pool(self) -> dict[str, Any]:
        cfg = self._config
        pool: dict[str, Any] = self._api.request(
            "GET", self._pool_path, f"pool {cfg.pool_id} (router.pool_id) in account {cfg.account_id} (router.account_id)")
        return pool

    def _origins(self, pool: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Fly and the new origin of the pool, or a NotFound naming the plan field."""
        by_name = {origin.get("name"): origin for origin in pool.get("origins") or []}
        pair = []
        for field, name in (("fly_origin_name", self._config.fly_origin_name),
                            ("new_origin_name", self._config.new_origin_name)):
            if name not in by_name:
                raise NotFound(f"router.{field}: pool {self._config.pool_id} has no origin '{name}' "
                               f"(origins: {sorted(str(n) for n in by_name) or 'none'})")
            pair.append(by_name[name])
        return pair[0], pair[1]

    def check(self) -> WeightState:
        """Token and its write rights, pool, both origins, and (if named) the load balancer serving the pool."""
        pool = self._pool()
        fly, new = self._origins(pool)
        ours = {self._config.fly_origin_name, self._config.new_origin_name}
        others = [o.get("name") for o in pool.get("origins") or [] if o.get("name") not in ours and _share(o) > 0]
        if others:
            raise InvalidPlan(f"router.pool_id: pool {self._config.pool_id} sends traffic to other origins too "
                              f"({', '.join(map(str, others))}); the canary's percentages would be wrong")
        self._check_load_balancer()
        # prove write rights with a patch that changes nothing
        self._patch_origins([self._with_weight(origin, None) for origin in pool["origins"]])
        return WeightState.from_shares(_share(new), _share(fly))

    def _load_balancer(self) -> dict[str, Any] | None:
        cfg = self._config
        if cfg.load_balancer_id is None:
            return None
        balancer: dict[str, Any] = self._api.request(
            "GET", f"/zones/{cfg.zone_id}/load_balancers/{cfg.load_balancer_id}",
            f"load balancer {cfg.load_balancer_id} (router.load_balancer_id) in zone {cfg.zone_id} (router.zone_id)")
        return balancer

    def _check_load_balancer(self) -> None:
        balancer = self._load_balancer()
        if balancer is None:
            return
        pools = set(balancer.get("default_pools") or []) | {balancer.get("fallback_pool")}
        if self._config.pool_id not in pools:
            raise InvalidPlan(f"router.pool_id: load balancer {self._config.load_balancer_id} does not use pool "
                              f"{self._config.pool_id} (default pools: {balancer.get('default_pools')})")

    def get_weight(self) -> WeightState:
        fly, new = self._origins(self._pool())
        return WeightState.from_shares(_share(new), _share(fly))

    def set_weight(self, new_percent: int) -> WeightState:
        pool = self._pool()
        fly, new = self._origins(pool)
        targets = {self._config.fly_origin_name: round((100 - new_percent) / 100, 2),
                   self._config.new_origin_name: round(new_percent / 100, 2)}
        if _share(fly) == targets[fly["name"]] and _share(new) == targets[new["name"]]:
            return WeightState.from_shares(_share(new), _share(fly))
        origins = [self._with_weight(origin, targets.get(origin.get("name"))) for origin in pool["origins"]]
        self._patch_origins(origins)
        log.info("cloudflare origin weights changed", pool=self._config.pool_id, new_percent=new_percent)
        state = self.get_weight()
        if state.new_weight != new_percent:
            raise RuntimeError(f"Cloudflare reads back new={state.new_weight}% after setting {new_percent}%")
        return state

    def _patch_origins(self, origins: list[dict[str, Any]]) -> None:
        self._api.request("PATCH", self._pool_path, f"the origins of pool {self._config.pool_id} (router.pool_id)",
                      {"origins": origins})

    @staticmethod
    def _with_weight(origin: dict[str, Any], weight: float | None) -> dict[str, Any]:
        """The origin as the API accepts it back; ours get their weight and, above 0, are enabled."""
        writable = {key: origin[key] for key in _ORIGIN_FIELDS if key in origin}
        if weight is not None:
            writable["weight"] = weight
            if weight > 0:
                writable["enabled"] = True
        return writable

    def describe_change(self, new_percent: int) -> str:
        cfg = self._config
        return (f"Cloudflare pool {cfg.pool_id}: origin '{cfg.new_origin_name}' weight {new_percent / 100:.2f}, "
                f"origin '{cfg.fly_origin_name}' weight {(100 - new_percent) / 100:.2f}")

    def propagation_seconds(self) -> int:
        """0 behind Cloudflare's proxy; a DNS-only (grey-clouded) load balancer's answers live for its TTL."""
        balancer = self._load_balancer()
        if balancer is None or balancer.get("proxied", True):
            return 0
        return int(balancer.get("ttl") or 30)


@ROUTERS.register("cloudflare")
def cloudflare_router(stage: CanaryStage) -> CloudflareRouter:
    assert isinstance(stage.router, CloudflareRouterConfig)
    return CloudflareRouter(stage.router)
