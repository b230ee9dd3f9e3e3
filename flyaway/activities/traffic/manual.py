"""The manual router: an operator moves the traffic, flyaway says exactly what to change.

Nothing can be read from or written to the operator's routing, so ``set_weight`` only
describes the change and reports it unconfirmed; the workflow waits for ``approve`` and then
counts the approved weight as the current one.
"""

from __future__ import annotations

import structlog

from flyaway.activities.traffic import ROUTERS
from flyaway.models.canary import CanaryStage, ManualRouterConfig, WeightState

log = structlog.get_logger(__name__)


class ManualRouter:
    def __init__(self, config: ManualRouterConfig, old_endpoint: str, new_endpoint: str) -> None:
        self._config = config
        self._old_endpoint = old_endpoint
        self._new_endpoint = new_endpoint
        self._last = WeightState.split(0, confirmed=False)

    def check(self) -> WeightState:
        """Nothing to verify: the routing is outside flyaway's reach."""
        return self._last

    def get_weight(self) -> WeightState:
        """The weight last asked for on this router (unconfirmed; the workflow keeps the approved one)."""
        return self._last

    def set_weight(self, new_percent: int) -> WeightState:
        log.info("manual traffic change needed", change=self.describe_change(new_percent))
        self._last = WeightState.split(new_percent, confirmed=False)
        return self._last

    def describe_change(self, new_percent: int) -> str:
        old_percent = 100 - new_percent
        change = (f"Send {new_percent}% of traffic to the new endpoint {self._new_endpoint} and "
                  f"{old_percent}% to the Fly endpoint {self._old_endpoint}, then approve.")
        instructions = self._config.instructions.replace("{new_weight}", str(new_percent)).replace(
            "{old_weight}", str(old_percent))
        return f"{change}\n{instructions}" if instructions else change

    def propagation_seconds(self) -> int:
        """Unknown to flyaway; the operator waits out their own caches before approving."""
        return 0


@ROUTERS.register("manual")
def manual_router(stage: CanaryStage) -> ManualRouter:
    assert isinstance(stage.router, ManualRouterConfig)
    return ManualRouter(stage.router, stage.old_endpoint, stage.new_endpoint or "(the deploy stage's endpoint)")
