"""Data of the volume agent: what the copy workflow asks for and what it gets back."""

from __future__ import annotations

from pydantic import Field

from flyaway.models.base import Record
from flyaway.models.plan import FlyVolumeLocation, WeightsStage


class FlyAgent(Record):
    """A running volume agent: the fork it mounts and the task queue its worker polls."""

    app: str
    region: str
    source_volume_id: str
    fork_volume_id: str
    machine_id: str
    task_queue: str


class AgentRequest(Record):
    """Start (or find again) the agent of one run of a migration's copy of ``stage``."""

    stage: WeightsStage
    migration_id: str
    run_id: str = Field(description="the copy run the agent belongs to; agents of other runs are leftovers")

    @property
    def source(self) -> FlyVolumeLocation:
        assert isinstance(self.stage.source, FlyVolumeLocation)
        return self.stage.source


class AgentCleanupRequest(Record):
    """Remove every agent and fork of a migration (forks stay when ``source.keep_fork``)."""

    source: FlyVolumeLocation
    migration_id: str


class AgentCleanupReport(Record):
    machines_destroyed: list[str] = Field(default_factory=list)
    forks_deleted: list[str] = Field(default_factory=list)
    forks_kept: list[str] = Field(default_factory=list)
