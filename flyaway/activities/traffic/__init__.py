"""Traffic routers behind one interface, plus the probes and the analysis of a canary.

Routers are synchronous (boto3, httpx.Client): run them in a thread-pool activity. Every
router is built from the plan alone and holds no state between activity calls.
"""

from __future__ import annotations

from typing import Protocol

from flyaway.activities.traffic.analysis import analyse
from flyaway.activities.traffic.cloudflare import CloudflareRouter
from flyaway.activities.traffic.manual import ManualRouter
from flyaway.activities.traffic.probes import probe_both, probe_endpoint
from flyaway.activities.traffic.route53 import Route53Router
from flyaway.models.canary import (
    CanaryStage,
    CloudflareRouterConfig,
    ManualRouterConfig,
    Route53RouterConfig,
    WeightState,
)


class Router(Protocol):
    """Moves a share of traffic between the Fly endpoint (old) and the new one, in percent."""

    def check(self) -> WeightState:
        """Verify the records/pools exist and the credentials work, changing nothing.

        Raises NotFound, AccessDenied, MissingCredentials or InvalidPlan naming the plan
        field; returns the current split.
        """

    def get_weight(self) -> WeightState:
        """The split as the router reports it now."""

    def set_weight(self, new_percent: int) -> WeightState:
        """Give the new side ``new_percent`` and the old side the rest; idempotent, read back."""

    def describe_change(self, new_percent: int) -> str:
        """The change ``set_weight(new_percent)`` makes, in words an operator can act on."""

    def propagation_seconds(self) -> int:
        """How long clients may keep using the previous split (a DNS TTL), 0 when immediate."""


def router_for(stage: CanaryStage) -> Router:
    """The router the plan's canary stage names."""
    config = stage.router
    if isinstance(config, Route53RouterConfig):
        return Route53Router(config)
    if isinstance(config, CloudflareRouterConfig):
        return CloudflareRouter(config)
    if isinstance(config, ManualRouterConfig):
        return ManualRouter(config, stage.old_endpoint, stage.new_endpoint or "(the deploy stage's endpoint)")
    raise TypeError(f"unknown router kind: {type(config).__name__}")


__all__ = ["CloudflareRouter", "ManualRouter", "Route53Router", "Router", "analyse", "probe_both", "probe_endpoint",
           "router_for"]
