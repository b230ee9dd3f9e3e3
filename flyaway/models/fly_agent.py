"""Data of the agent Machine: what a stage asks for and what it gets back.

Two stages start an agent in a Fly app: the weights copy of a ``fly_volume`` source (the agent
mounts a fork of the volume) and the secrets stage of a ``fly_app`` source (the agent reads the
app's secrets from its own env).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from flyaway.models.base import Record
from flyaway.models.locations import FlyVolumeLocation
from flyaway.models.plan import WeightsStage
from flyaway.models.secrets import FlyAppSource, SecretsStage

AgentSource = Annotated[FlyVolumeLocation | FlyAppSource, Field(discriminator="kind")]


class FlyAgent(Record):
    """A running agent: the task queue its worker polls and, for a volume, the fork it mounts; with
    ``agents: N``, the first of N agents (each on its own fork) that poll the same queue."""

    app: str
    region: str
    machine_id: str
    task_queue: str
    source_volume_id: str | None = None
    fork_volume_id: str | None = None
    machine_ids: list[str] = Field(default_factory=list, description="every agent Machine polling the task queue "
                                                                      "(machine_id first); empty: machine_id alone")
    fork_volume_ids: list[str] = Field(default_factory=list, description="the fork each of machine_ids mounts")
    secret_names: list[str] = Field(
        default_factory=list, description="names of the app's secrets, which Fly put into the agent's env (its env "
                                          "holds more than those)")


class AgentRequest(Record):
    """Start (or find again) the agent of one run of a migration's ``stage``."""

    stage: WeightsStage | SecretsStage
    migration_id: str
    run_id: str = Field(description="the run the agent belongs to; agents of other runs are leftovers")

    @property
    def source(self) -> FlyVolumeLocation | FlyAppSource:
        assert isinstance(self.stage.source, (FlyVolumeLocation, FlyAppSource))
        return self.stage.source


class AgentCleanupRequest(Record):
    """Remove every agent of a migration for ``source`` (and the forks of a volume, unless ``keep_fork``)."""

    source: AgentSource
    migration_id: str


class AgentCleanupReport(Record):
    machines_destroyed: list[str] = Field(default_factory=list)
    forks_deleted: list[str] = Field(default_factory=list)
    forks_kept: list[str] = Field(default_factory=list)
