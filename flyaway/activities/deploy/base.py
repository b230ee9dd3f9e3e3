"""What every platform's deployer shares: the result of applying a service, and its plain environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from flyaway.activities.deploy.health import HealthProbe
from flyaway.errors import InvalidPlan
from flyaway.models.deploy import CloudRunDeploy, DeployOutcome, ModalDeploy, RunpodDeploy, WeightsVolume
from flyaway.registry import Registry


@dataclass(frozen=True)
class Applied:
    """A service created or updated on its platform (and, where the platform waits, ready there)."""

    service: str
    endpoint_url: str
    outcome: DeployOutcome
    #: what flyaway GETs until it answers 200; None when the platform's own probe is all there is
    probe: HealthProbe | None


class Deployer(Protocol):
    """Creates or updates one service on its platform, idempotently."""

    async def check(self) -> None:
        """Raise a ``FlyawayError`` unless the credentials are there and the platform lets them in."""

    async def apply(self) -> Applied:
        """Create the service or bring it to the plan's settings."""

    async def aclose(self) -> None: ...


#: a deployer by the deploy section's ``platform``, made from (section, image, secrets' references, weights)
DEPLOYERS: Registry[Callable[[Any, str, dict[str, str], WeightsVolume | None], Deployer]] = Registry(
    "deployer", "flyaway.activities.deploy", ("cloud_run", "runpod", "modal"))


def plain_env(stage: CloudRunDeploy | RunpodDeploy | ModalDeploy, secrets: dict[str, str],
              weights: WeightsVolume | None, mount_path: str) -> dict[str, str]:
    """The plan's variables, plus ``weights_path_env`` pointing at the weights' folder (the volume
    mounted at ``mount_path``). A name that is also a secret is refused: the platforms take one each."""
    env = dict(stage.env)
    if stage.weights_path_env and weights is not None:
        env[stage.weights_path_env] = weights.folder(mount_path)
    clashes = sorted(set(env) & set(secrets))
    if clashes:
        raise InvalidPlan(f"deploy.env: {', '.join(clashes)} also come from the secrets stage; remove them from "
                          f"env (or from the secrets moved)")
    return env
