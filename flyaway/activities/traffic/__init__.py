"""Traffic routers behind one interface, plus the probes and the analysis of a canary.

Routers are synchronous (boto3, httpx.Client): run them in a thread-pool activity. Every
router is built from the plan alone and holds no state between activity calls; each module
registers its router's factory for its plan kind in :data:`ROUTERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from flyaway.activities.traffic.analysis import analyse
from flyaway.activities.traffic.probes import probe_both, probe_endpoint
from flyaway.models.canary import CanaryStage, WeightState
from flyaway.registry import Registry


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


#: a router's factory by the kind of the canary's ``router`` section
ROUTERS: Registry[Callable[[CanaryStage], Router]] = Registry(
    "router", "flyaway.activities.traffic", ("manual", "route53", "cloudflare"))


def router_for(stage: CanaryStage) -> Router:
    """The router the plan's canary stage names."""
    return ROUTERS[stage.router.kind](stage)


__all__ = ["ROUTERS", "Router", "analyse", "probe_both", "probe_endpoint", "router_for"]
