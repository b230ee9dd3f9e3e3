"""The migration plan: the only input of ``MigrationWorkflow``.

A plan never holds a secret value: credentials are named by the environment variables the
worker reads them from. Everything here is checked before anything runs.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import ByteSize, Field, PositiveInt, ValidationError, field_validator, model_validator

from flyaway.models.base import Duration, Size, StrictModel, at_least
from flyaway.models.canary import CanaryStage
from flyaway.models.deploy import DeployStage, check_deploy
from flyaway.models.image import ImageStage
from flyaway.models.locations import (
    DestinationLocation,
    FlyVolumeLocation,
    GiB,
    LocalLocation,
    MiB,
    SourceLocation,
    storage_root,
)
from flyaway.models.secrets import SecretsStage
from flyaway.models.teardown import TeardownStage

#: stages in the order a migration runs them
STAGES = ("weights", "image", "secrets", "deploy", "canary", "teardown")

_PLAN_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: a copy heartbeats every 2 s while bytes move (storage/activities.py); a timeout shorter than a few
#: heartbeats would fail attempts that work
MIN_COPY_HEARTBEAT_TIMEOUT = timedelta(seconds=5)


class WeightsStage(StrictModel):
    """Copy model weights from a source to a destination, verified byte for byte."""

    source: SourceLocation
    destination: DestinationLocation
    include: list[str] = Field(default_factory=list,
                               description="glob patterns of keys to copy (all when empty)")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of keys to leave out")
    part_size: Size = Field(ByteSize(16 * MiB),
                                description="bytes per part; grown as needed so no file has over 10,000 parts")
    concurrency: PositiveInt = Field(8, le=256, description="parts and small files in flight at once")
    bandwidth_limit: Size | None = Field(None, description="bytes per second for this copy, all streams together")
    parallelism: PositiveInt = Field(1, le=64, description="copy activities in flight at once, each on its own "
                                     "range of the listing, taken by any worker on the task queue")
    piece_size: Size = Field(ByteSize(1 * GiB), description="with parallelism above 1 when the listing is written: "
                             "most bytes one copy activity takes; a larger file is split into pieces of about "
                             "this size that several workers upload into one multipart upload")
    batch_files: PositiveInt = Field(1000, description="most files one copy activity takes")
    batch_bytes: Size = Field(ByteSize(64 * GiB), description="most bytes one copy activity takes")
    max_attempts: PositiveInt | None = Field(
        None, le=10_000, description="attempts per copy activity before the operator is asked; unlimited when absent")
    heartbeat_timeout: Annotated[Duration, at_least(MIN_COPY_HEARTBEAT_TIMEOUT)] = Field(
        timedelta(seconds=30), description="a copy that does not report for this long is retried: its worker is "
                                           "taken for gone (at least 5s)")
    retry_max_interval: Annotated[Duration, at_least(timedelta(seconds=1))] = Field(
        timedelta(seconds=60), description="longest wait between two retries (at least 1s)")

    @field_validator("part_size")
    @classmethod
    def _part_size(cls, value: ByteSize) -> ByteSize:
        if value < 1 * MiB or value > 5 * GiB:
            raise ValueError(f"{value} bytes is out of range; give a part size from 1MiB to 5GiB")
        return value

    @field_validator("bandwidth_limit", "batch_bytes", "piece_size")
    @classmethod
    def _positive(cls, value: ByteSize | None) -> ByteSize | None:
        if value is not None and value <= 0:
            raise ValueError("must be a positive number of bytes")
        return value

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, values: list[str]) -> list[str]:
        for pattern in values:
            if pattern.startswith("/") or ".." in pattern.split("/"):
                raise ValueError(f"pattern '{pattern}' escapes the source prefix")
        return values

    @model_validator(mode="after")
    def _destination_outside_source(self) -> WeightsStage:
        """A destination in its source would list its own copies (and flyaway's state) as source files."""
        source, destination = storage_root(self.source), storage_root(self.destination)
        if source is None or destination is None or source[0] != destination[0]:
            return self
        if destination[1] == source[1]:
            where = "the same place as"
        elif source[1] == "" or destination[1].startswith(source[1] + "/"):
            where = "inside"
        else:
            return self
        raise ValueError(f"destination {self.destination.describe()} is {where} its source "
                         f"{self.source.describe()}; choose a destination outside the source")

    @model_validator(mode="after")
    def _every_agent_gets_work(self) -> WeightsStage:
        if isinstance(self.source, FlyVolumeLocation) and self.parallelism < self.source.agents:
            raise ValueError(f"parallelism ({self.parallelism}) is below source.agents "
                             f"({self.source.agents}): an agent reads only while a copy activity is handed to it; "
                             f"set parallelism to at least {self.source.agents}")
        return self

    @model_validator(mode="after")
    def _agent_reaches_destination(self) -> WeightsStage:
        if isinstance(self.source, FlyVolumeLocation) and isinstance(self.destination, LocalLocation):
            raise ValueError("a fly_volume source is copied by an agent Machine on Fly, whose disk goes away with "
                             "it; choose a destination it reaches over the network (s3, gcs, runpod_volume, "
                             "modal_volume)")
        return self


class MigrationPlan(StrictModel):
    """One migration: where the weights go and, later, the image, secrets, service and traffic."""

    name: str = Field(description="lowercase letters, digits and '-'; the workflow id is migration-<name>")
    description: str = ""
    weights: WeightsStage
    image: ImageStage | None = None
    secrets: SecretsStage | None = None
    deploy: DeployStage | None = None
    canary: CanaryStage | None = None
    teardown: TeardownStage | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _PLAN_NAME.match(value):
            raise ValueError(f"'{value}' is not a valid name; use 1-63 lowercase letters, digits and '-'")
        return value

    @model_validator(mode="after")
    def _teardown_knows_the_traffic_moved(self) -> MigrationPlan:
        if self.teardown is not None and self.canary is None and not self.teardown.no_traffic_stage_ok:
            raise ValueError("teardown: the plan has no canary stage, so nothing shows the new side holds the "
                             "traffic; add a canary stage, or set teardown.no_traffic_stage_ok: true if you moved "
                             "it yourself")
        return self

    @model_validator(mode="after")
    def _deploy_fits_the_other_stages(self) -> MigrationPlan:
        if self.deploy is not None:
            check_deploy(self.deploy, has_image_stage=self.image is not None,
                         weights_kind=self.weights.destination.kind,
                         secrets_kind=self.secrets.destination.kind if self.secrets else None)
        return self

    @model_validator(mode="after")
    def _canary_has_a_new_endpoint(self) -> MigrationPlan:
        if self.canary is not None and self.canary.new_endpoint is None and self.deploy is None:
            raise ValueError("canary.new_endpoint: required, since the plan has no deploy stage to provide it")
        return self

    @property
    def workflow_id(self) -> str:
        return f"migration-{self.name}"

    def stages_present(self) -> list[str]:
        return [stage for stage in STAGES if getattr(self, stage) is not None]


@functools.cache
def _kind_tags() -> frozenset[str]:
    """Every tag of every tagged union in the plan: pydantic puts them in error paths; people do not."""
    tags: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            tags.update(node.get("discriminator", {}).get("mapping", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(MigrationPlan.model_json_schema())
    return frozenset(tags)


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: ``plan.<field path>: <what is wrong>``."""
    lines = []
    for item in error.errors():
        loc = item["loc"][:-2] if item["loc"][-1:] == ("[key]",) else item["loc"]  # a bad key: the message names it
        path = ".".join(str(part) for part in loc if part not in _kind_tags())
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against `flyaway schema`"
        elif item["type"] == "union_tag_invalid":
            ctx = item.get("ctx", {})
            message = f"unknown kind '{ctx.get('tag')}'; expected one of {ctx.get('expected_tags')}"
        elif item["type"] == "missing":
            message = "required field is missing"
        lines.append(f"plan.{path}: {message}" if path else f"plan: {message}")
    return lines


def parse_plan(data: Any) -> MigrationPlan:
    """Validate plan data; raises ``ValueError`` whose text is one line per problem."""
    if not isinstance(data, dict):
        raise ValueError(f"plan: expected a mapping of fields, got {type(data).__name__}")
    try:
        return MigrationPlan.model_validate(data)
    except ValidationError as error:
        raise ValueError("\n".join(describe_validation_error(error))) from None
