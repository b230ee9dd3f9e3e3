"""The teardown stage: its plan section, what it finds on Fly and what it did there.

Teardown is the one stage that destroys things, so its records name every Machine, volume
and IP it touches; they hold ids, names and states only (a Machine's config carries env
values, so it never goes into a record).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from flyaway.models.base import Duration, FlyAppName, Record, StrictModel, at_least


class TeardownStage(StrictModel):
    """Stop and destroy the Fly app's Machines once the new side holds all traffic.

    Runs only after the weights manifest is verified and the canary stage finished at 100% on
    the new side (or, without a canary stage, when ``no_traffic_stage_ok`` says so), and after
    ``flyaway approve NAME teardown`` unless ``approval_required`` is false. Every volume is
    snapshotted before anything is destroyed.
    """

    app: FlyAppName = Field(description="the Fly app to tear down")
    delete_volumes: bool = Field(False, description="delete the volumes once their snapshots exist")
    delete_app: bool = Field(False, description="delete the app itself at the end; Fly deletes its volumes and "
                                                "their snapshots with it, so this needs delete_volumes too")
    approval_required: bool = Field(True, description="wait for `flyaway approve NAME teardown`")
    no_traffic_stage_ok: bool = Field(False, description="allow teardown in a plan without a canary stage: you "
                                                         "moved the traffic yourself")
    stop_timeout: Duration = Field(timedelta(minutes=5), description="longest wait for the Machines to stop")
    heartbeat_timeout: Annotated[Duration, at_least(timedelta(seconds=1))] = Field(
        timedelta(seconds=60), description="a teardown step that does not report for this long is retried (at "
                                           "least 1s)")

    @field_validator("stop_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("must be a positive duration")
        return value

    @model_validator(mode="after")
    def _app_deletion_is_volume_deletion(self) -> TeardownStage:
        if self.delete_app and not self.delete_volumes:
            raise ValueError("delete_app deletes the app's volumes and their snapshots too; set delete_volumes: "
                             "true as well to say you mean it")
        return self


class MachineSummary(Record):
    id: str
    name: str
    state: str
    region: str
    image: str = ""


class VolumeSummary(Record):
    id: str
    name: str
    region: str
    size_gb: int
    attached_machine_id: str | None = None


class TeardownInventory(Record):
    """What a teardown of ``app`` would act on right now (``exists`` is false once the app is gone)."""

    app: str
    exists: bool = True
    machines: list[MachineSummary] = Field(default_factory=list)
    volumes: list[VolumeSummary] = Field(default_factory=list)
    public_ips: list[str] = Field(default_factory=list)


class TeardownReport(Record):
    """What the teardown stage did: the snapshot of each volume (volume id -> snapshot id) and counts."""

    app: str
    machines_destroyed: int = 0
    snapshots: dict[str, str] = Field(default_factory=dict)
    ips_released: int = 0
    volumes_deleted: int = 0
    app_deleted: bool = False

    def summary(self) -> str:
        parts = [f"{self.machines_destroyed} machines destroyed", f"{len(self.snapshots)} volumes snapshotted",
                 f"{self.ips_released} IPs released"]
        if self.volumes_deleted:
            parts.append(f"{self.volumes_deleted} volumes deleted")
        if self.app_deleted:
            parts.append("app deleted")
        return ", ".join(parts)
