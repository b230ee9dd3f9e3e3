"""What flyaway reads from and sends to the Fly Machines API.

Field names follow the Machines API OpenAPI document (``docs.machines.dev``; a copy is in
``superfly/fly-openapi-sdk``). Only the fields flyaway uses are modelled; the rest of each
response is ignored (``Record`` drops unknown fields), so a new field on Fly's side breaks
nothing. A secret's value is deliberately not a field: flyaway lists names and digests only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from flyaway.models.base import Record

WaitState = Literal["started", "stopped", "suspended", "destroyed"]
"""States the ``wait`` endpoint can wait for (the API also knows ``failed`` and ``settled``)."""

#: volume states in which a volume is on its way out; fly-go hides them from volume lists too
DESTROYED_VOLUME_STATES = frozenset({"scheduling_destroy", "fork_cleanup", "waiting_for_detach",
                                     "pending_destroy", "destroying", "destroyed"})


class AppOrganization(Record):
    name: str | None = None
    slug: str | None = None


class App(Record):
    id: str | None = None
    name: str
    status: str | None = None
    organization: AppOrganization | None = None


class MachineMount(Record):
    """``config.mounts[]``: the volume id and where it appears inside the Machine."""

    volume: str
    path: str
    name: str | None = None


class MachineGuest(Record):
    cpu_kind: str | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    gpu_kind: str | None = None
    gpus: int | None = None


class MachineRestart(Record):
    policy: Literal["no", "always", "on-failure"] | None = None
    max_retries: int | None = None


class MachineInit(Record):
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    exec: list[str] | None = None


class MachineFile(Record):
    """``config.files[]``: a file written into the Machine before it starts (``raw_value`` is base64)."""

    guest_path: str
    raw_value: str | None = None
    secret_name: str | None = None


class MachineConfig(Record):
    """``fly.MachineConfig``: the part of a Machine's configuration flyaway reads or sets."""

    image: str
    env: dict[str, str] = Field(default_factory=dict)
    mounts: list[MachineMount] = Field(default_factory=list)
    files: list[MachineFile] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    guest: MachineGuest | None = None
    init: MachineInit | None = None
    restart: MachineRestart | None = None
    auto_destroy: bool | None = None


class ImageRef(Record):
    registry: str | None = None
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None


class Machine(Record):
    id: str
    name: str = ""
    state: str
    region: str
    #: unique per version of the Machine; the ``wait`` endpoint takes it
    instance_id: str | None = None
    private_ip: str | None = None
    config: MachineConfig | None = None
    image_ref: ImageRef | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def metadata(self) -> dict[str, str]:
        return self.config.metadata if self.config else {}


class Volume(Record):
    id: str
    name: str
    state: str
    region: str
    size_gb: int
    zone: str | None = None
    encrypted: bool | None = None
    attached_machine_id: str | None = None
    attached_alloc_id: str | None = None
    snapshot_retention: int | None = None
    auto_backup_enabled: bool | None = None
    created_at: datetime | None = None

    @property
    def is_destroyed(self) -> bool:
        return self.state in DESTROYED_VOLUME_STATES


class VolumeSnapshot(Record):
    id: str
    status: str | None = None
    size: int | None = None
    volume_size: int | None = None
    digest: str | None = None
    retention_days: int | None = None
    created_at: datetime | None = None


class Secret(Record):
    """``AppSecret`` without its ``value``: names and digests are all flyaway ever reads here."""

    name: str
    digest: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class IPAssignment(Record):
    ip: str
    region: str | None = None
    service_name: str | None = None
    shared: bool = False
    created_at: datetime | None = None

    @property
    def is_private(self) -> bool:
        """Flycast addresses live in Fly's private ``fdaa::/16`` network."""
        return self.ip.startswith("fdaa:")
