"""The deploy stage of the plan: the service on the target platform, and what deploying it returns.

One section per platform, a tagged union on ``platform``. Settings a section leaves out can
come from the app's ``fly.toml`` (``fly_toml``, read on the worker): the plan's own values win,
then the fly.toml's, then the defaults here. The image is the image stage's copy, pinned by
digest, or the section's ``image``. Secrets are the secrets stage's references, never values.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, PositiveInt, field_validator, model_validator

from flyaway.models.base import Duration, EnvName, Record, StrictModel, join_key
from flyaway.models.canary import BaseUrl
from flyaway.models.credentials import CredentialUser, present
from flyaway.models.image import ImageText

if TYPE_CHECKING:
    from flyaway.models.locations import DestinationLocation

Platform = Literal["cloud_run", "runpod", "modal"]
PLATFORM_NAMES: dict[str, str] = {"cloud_run": "Cloud Run", "runpod": "RunPod", "modal": "Modal"}
#: the weights destination kind each platform mounts, and the secret store whose references it reads
WEIGHTS_KIND = {"cloud_run": "gcs", "runpod": "runpod_volume", "modal": "modal_volume"}
SECRETS_KIND = {"cloud_run": "gcp_secret_manager", "runpod": "runpod", "modal": "modal"}
#: where RunPod mounts an endpoint's network volume (fixed by RunPod for serverless workers)
RUNPOD_VOLUME_PATH = "/runpod-volume"
#: Cloud Run keeps an idle instance up to 15 minutes before it scales it away (not configurable)
CLOUD_RUN_IDLE_SECONDS = 15 * 60
#: waited beyond a platform's idle window before a start from zero is timed
SCALE_DOWN_MARGIN_SECONDS = 60.0

_GCP_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_GCP_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_CLOUD_RUN_SERVICE = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
_CLOUD_RUN_CPU = re.compile(r"^[0-9]+(\.[0-9]+)?$|^[0-9]+m$")
_QUANTITY = re.compile(r"^([0-9]+)(Mi|Gi)$")
_RUNPOD_POOL = re.compile(r"^[A-Z]+_[0-9]+(_PRO)?$")
_MODAL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_MODAL_GPU = re.compile(r"^[A-Za-z0-9-]+(:[1-8])?$")


def check_container_path(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"'{value}' must be an absolute path inside the container, without '..'")
    return value


ContainerPath = Annotated[str, AfterValidator(check_container_path)]


def memory_mib(quantity: str) -> int:
    """``16Gi`` -> 16384; Cloud Run's memory limits are written this way."""
    match = _QUANTITY.match(quantity)
    if not match:
        raise ValueError(f"'{quantity}' is not a memory size like 512Mi or 32Gi")
    return int(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


class HealthCheck(StrictModel):
    """How flyaway (and the platform's startup probe, where it has one) tells the new service is up."""

    path: str = Field("/health", description="path that answers 200 once the server is ready (vLLM: /health)")
    deadline: Duration = Field(timedelta(minutes=30),
                               description="longest wait for the new service to become healthy (model loading "
                                           "included)")
    interval: Duration = Field(timedelta(seconds=10), description="time between two checks")
    measure_from_zero: bool = Field(False, description="when the service scales to zero: after it is healthy, wait "
                                                       "out the platform's idle window and time a start from zero "
                                                       "(the report shows it; adds up to an hour to the stage)")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError(f"'{value}' is not a URL path like /health")
        return value

    @model_validator(mode="after")
    def _durations(self) -> HealthCheck:
        if not 0 < self.interval.total_seconds() <= 60 or self.deadline < self.interval:
            raise ValueError("give an interval from above 0s to 1m, no longer than the deadline (each check "
                             "is also a heartbeat)")
        return self

    def from_zero_allowance(self) -> timedelta:
        """What measuring a start from zero may add to the stage: the longest idle window (1 h), a margin
        for the platform to scale down, and a second wait until healthy."""
        if not self.measure_from_zero:
            return timedelta(0)
        return timedelta(hours=1) + timedelta(seconds=SCALE_DOWN_MARGIN_SECONDS) + self.deadline


class DeployBase(StrictModel):
    """What every platform's section has."""

    image: ImageText | None = Field(None, description="image to run; absent: the image stage's copy, pinned by digest")
    fly_toml: str | None = Field(
        None, description="absolute path of the app's fly.toml on the worker; its settings fill in what this "
                          "section leaves out (`flyaway translate` prints them)")
    port: int = Field(8000, ge=1, le=65535, description="the port the server listens on (vLLM's default: 8000)")
    env: dict[EnvName, str] = Field(default_factory=dict,
                                    description="plain variables (secrets come from the secrets stage)")
    cmd: list[str] | None = Field(None, description="replaces the image's CMD (Modal: the whole command that "
                                                    "starts the server)")
    mount_weights: bool = Field(True, description="mount the weights destination into the service")
    weights_path_env: EnvName | None = Field(
        None, description="variable set to the weights' folder inside the container, e.g. MODEL_DIR")
    health: HealthCheck = Field(default_factory=HealthCheck)

    @field_validator("fly_toml")
    @classmethod
    def _fly_toml(cls, value: str | None) -> str | None:
        path = None if value is None else PurePosixPath(value)
        if path is not None and (not path.is_absolute() or ".." in path.parts):
            raise ValueError(f"'{value}' must be the absolute path of the fly.toml on the worker, without '..'")
        return value

    @property
    def platform_name(self) -> str:
        return PLATFORM_NAMES[self.platform]  # type: ignore[attr-defined]


class CloudRunDeploy(CredentialUser, DeployBase):
    """A Cloud Run service (v2 API) with a GPU, the weights bucket mounted read-only."""

    provider = "cloud_run"
    official_hosts = ("*.googleapis.com",)

    platform: Literal["cloud_run"]
    project: str = Field(description="GCP project id")
    region: str = Field(description="Cloud Run region with GPUs, e.g. europe-west4 or us-central1")
    service: str = Field(description="service name (lowercase letters, digits, '-'; at most 49)")
    gpu: str | None = Field("nvidia-l4", description="GPU type (template.node_selector.accelerator); null: no GPU")
    gpu_zonal_redundancy: bool = Field(False, description="reserve GPU capacity in other zones (costs more)")
    cpu: str = Field("8", description="CPU limit; at least 4 with a GPU")
    memory: str = Field("32Gi", description="memory limit; at least 16Gi with a GPU")
    min_instances: int = Field(0, ge=0, description="instances kept running (0: scale to zero)")
    max_instances: PositiveInt = Field(1, description="most instances; bounded by the project's GPU quota")
    concurrency: PositiveInt | None = Field(None, le=1000, description="most requests one instance serves at once")
    weights_mount_path: ContainerPath = Field("/models", description="where the weights bucket appears")
    public: bool = Field(True, description="anyone may call the service (invoker IAM check off); false: only "
                                           "IAM-authorized callers, and flyaway trusts Cloud Run's startup probe "
                                           "instead of calling the service itself")
    service_account: str | None = Field(None, description="identity the service runs as; the project's "
                                                          "default compute account when absent")
    credentials_env: EnvName = Field(
        "GOOGLE_APPLICATION_CREDENTIALS",
        description="variable holding the path of a service-account key file; Application Default "
                    "Credentials when unset (anonymous when api_endpoint is set, for tests)")
    api_endpoint: BaseUrl | None = Field(None, description="Cloud Run API address override (tests)")

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        if not _GCP_PROJECT.match(value):
            raise ValueError(f"'{value}' is not a GCP project id (6-30 lowercase letters, digits, '-')")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _GCP_REGION.match(value):
            raise ValueError(f"'{value}' is not a GCP region like europe-west4")
        return value

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        if not _CLOUD_RUN_SERVICE.match(value):
            raise ValueError(f"'{value}' is not a Cloud Run service name (lowercase letters, digits, '-', "
                             f"starting with a letter, at most 49)")
        return value

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str) -> str:
        if not _CLOUD_RUN_CPU.match(value):
            raise ValueError(f"'{value}' is not a CPU limit like 4, 8 or 1000m")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        memory_mib(value)
        return value

    @model_validator(mode="after")
    def _gpu_minimums(self) -> CloudRunDeploy:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) is over max_instances ({self.max_instances})")
        if self.gpu and (self.cpus < 4 or memory_mib(self.memory) < 16 * 1024):
            raise ValueError(f"a Cloud Run GPU needs cpu >= 4 and memory >= 16Gi (got {self.cpu}, {self.memory})")
        if self.cpus > 8 or memory_mib(self.memory) > 32 * 1024:
            raise ValueError(f"Cloud Run's largest instance has 8 CPUs and 32Gi (got {self.cpu}, {self.memory})")
        return self

    @property
    def cpus(self) -> float:
        return float(self.cpu[:-1]) / 1000 if self.cpu.endswith("m") else float(self.cpu)

    @property
    def service_name(self) -> str:
        return f"projects/{self.project}/locations/{self.region}/services/{self.service}"

    def credential_envs(self) -> list[str]:
        return [self.credentials_env]

    def credential_files(self) -> list[str]:
        return [self.credentials_env]

    def endpoint_overrides(self) -> list[str]:
        return present(self.api_endpoint)


class RunpodDeploy(CredentialUser, DeployBase):
    """A RunPod load-balancing serverless endpoint: HTTP straight to the workers' server."""

    provider = "runpod"
    official_hosts = ("*.runpod.io",)

    platform: Literal["runpod"]
    endpoint_name: str = Field(min_length=1, max_length=191, description="endpoint name, unique in the account")
    gpu_pools: list[str] = Field(default_factory=lambda: ["AMPERE_24"], min_length=1,
                                 description="GPU pool ids in order of preference (AMPERE_24: L4, A5000, 3090; "
                                             "ADA_48_PRO: L40S, L40; AMPERE_80: A100 80GB; ADA_80_PRO: H100)")
    gpu_count: int = Field(1, ge=1, le=8, description="GPUs per worker")
    workers_min: int = Field(0, ge=0, description="workers kept running (0: scale to zero)")
    workers_max: PositiveInt = Field(1, description="most workers")
    idle_timeout: Duration = Field(timedelta(minutes=5), description="an idle worker stops after this long")
    requests_per_worker: PositiveInt = Field(4, description="in-flight requests per worker before another starts")
    disk_gb: PositiveInt = Field(50, description="container disk in GB (the image must fit)")
    flashboot: bool = Field(True, description="FlashBoot cold-start acceleration")
    registry_auth_id: str | None = Field(None, description="RunPod container registry credential id for a "
                                                           "private image")
    api_key_env: EnvName = "RUNPOD_API_KEY"
    api_url: BaseUrl | None = Field(None, description="RunPod REST API v2 address override (tests); RunPod's "
                                                      "own when absent")

    @field_validator("gpu_pools")
    @classmethod
    def _pools(cls, value: list[str]) -> list[str]:
        for pool in value:
            if not _RUNPOD_POOL.match(pool):
                raise ValueError(f"'{pool}' is not a RunPod GPU pool id like AMPERE_24 or ADA_48_PRO")
        return value

    @field_validator("idle_timeout")
    @classmethod
    def _idle(cls, value: timedelta) -> timedelta:
        if not 1 <= value.total_seconds() <= 3600:
            raise ValueError("RunPod takes an idle timeout from 1s to 1h")
        return value

    @model_validator(mode="after")
    def _workers(self) -> RunpodDeploy:
        if self.workers_min > self.workers_max:
            raise ValueError(f"workers_min ({self.workers_min}) is over workers_max ({self.workers_max})")
        return self

    def credential_envs(self) -> list[str]:
        return [self.api_key_env]

    def endpoint_overrides(self) -> list[str]:
        return present(self.api_url)


class ModalDeploy(CredentialUser, DeployBase):
    """A Modal app generated from the plan: one web-server function running the image's server."""

    provider = "modal"

    platform: Literal["modal"]
    app_name: str = Field(description="Modal app name")
    environment: str | None = Field(None, description="Modal environment; the workspace's default when absent")
    gpu: str = Field("L4", description="Modal GPU, optionally with a count: L4, A10, L40S, A100-80GB:2, H100")
    cpu: float | None = Field(None, gt=0, description="CPU cores reserved")
    memory: PositiveInt | None = Field(None, description="memory reserved, MiB")
    min_containers: int = Field(0, ge=0, description="containers kept running (0: scale to zero)")
    max_containers: PositiveInt | None = Field(None, description="most containers")
    scaledown_window: Duration = Field(timedelta(minutes=5), description="an idle container stops after this long")
    concurrency: PositiveInt | None = Field(None, description="most requests one container serves at once")
    weights_mount_path: ContainerPath = Field("/models", description="where the weights volume appears")
    registry_secret: str | None = Field(
        None, description="Modal secret with REGISTRY_USERNAME and REGISTRY_PASSWORD for a private image")
    add_python: str | None = Field(None, description="Python version Modal adds when the image has none, e.g. 3.11")
    token_id_env: EnvName = "MODAL_TOKEN_ID"
    token_secret_env: EnvName = "MODAL_TOKEN_SECRET"

    @field_validator("app_name", "environment", "registry_secret")
    @classmethod
    def _modal_name(cls, value: str | None) -> str | None:
        if value is not None and not _MODAL_NAME.match(value):
            raise ValueError(f"'{value}' is not a Modal name (1-63 letters, digits, '.', '-', '_')")
        return value

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, value: str) -> str:
        if not _MODAL_GPU.match(value):
            raise ValueError(f"'{value}' is not a Modal GPU like L4, A100-80GB or H100:2")
        return value

    @field_validator("scaledown_window")
    @classmethod
    def _window(cls, value: timedelta) -> timedelta:
        if not 2 <= value.total_seconds() <= 3600:
            raise ValueError("Modal takes a scaledown window from 2s to 1h")
        return value

    @model_validator(mode="after")
    def _containers(self) -> ModalDeploy:
        if self.max_containers is not None and self.min_containers > self.max_containers:
            raise ValueError(f"min_containers ({self.min_containers}) is over max_containers ({self.max_containers})")
        return self

    def credential_envs(self) -> list[str]:
        return [self.token_id_env, self.token_secret_env]


DeployStage = Annotated[CloudRunDeploy | RunpodDeploy | ModalDeploy, Field(discriminator="platform")]


def check_deploy(deploy: CloudRunDeploy | RunpodDeploy | ModalDeploy, *, has_image_stage: bool, weights_kind: str,
                 secrets_kind: str | None) -> None:
    """The deploy section against the plan's other stages; ``ValueError`` naming the field."""
    platform = deploy.platform
    if deploy.image is None and not has_image_stage:
        raise ValueError("deploy.image: give the image to run, or add an image stage whose copy is deployed")
    if deploy.mount_weights and weights_kind != WEIGHTS_KIND[platform]:
        raise ValueError(f"deploy.mount_weights: {deploy.platform_name} mounts weights from a "
                         f"{WEIGHTS_KIND[platform]} destination, but weights.destination is {weights_kind}; "
                         f"copy them there, or set mount_weights: false")
    if secrets_kind is not None and secrets_kind != SECRETS_KIND[platform]:
        raise ValueError(f"deploy: {deploy.platform_name} reads secrets from {SECRETS_KIND[platform]}, but "
                         f"secrets.destination is {secrets_kind}")


class ServiceScaling(Record):
    """How a deployed service scales, in the terms the report prices: GPU, instances, idle time."""

    gpu: str | None = Field(description="the GPU as the platform names it; RunPod: its pools, comma separated")
    gpus_per_instance: int = 1
    min_instances: int
    max_instances: int | None = Field(description="None: the platform sets no upper bound")
    idle_timeout_seconds: float

    @classmethod
    def of(cls, stage: CloudRunDeploy | RunpodDeploy | ModalDeploy) -> ServiceScaling:
        if isinstance(stage, CloudRunDeploy):
            return cls(gpu=stage.gpu, gpus_per_instance=1 if stage.gpu else 0, min_instances=stage.min_instances,
                       max_instances=stage.max_instances, idle_timeout_seconds=CLOUD_RUN_IDLE_SECONDS)
        if isinstance(stage, RunpodDeploy):
            return cls(gpu=",".join(stage.gpu_pools), gpus_per_instance=stage.gpu_count,
                       min_instances=stage.workers_min, max_instances=stage.workers_max,
                       idle_timeout_seconds=stage.idle_timeout.total_seconds())
        gpu, _, count = stage.gpu.partition(":")
        return cls(gpu=gpu, gpus_per_instance=int(count or 1), min_instances=stage.min_containers,
                   max_instances=stage.max_containers, idle_timeout_seconds=stage.scaledown_window.total_seconds())


class FlyScaling(Record):
    """The Fly app's GPU and scaling as its fly.toml says (``[[vm]]``, ``min_machines_running``)."""

    gpu: str | None
    gpus_per_machine: int
    min_machines_running: int


class ColdStart(Record):
    """How long the new service took to answer its health check, measured by the deploy stage."""

    seconds_to_healthy: float = Field(description="from the deploy call until the health check first passed")
    from_zero_seconds: float | None = Field(None, description="from the first request to the service scaled to "
                                                              "zero until the health check passed")
    idle_wait_seconds: float | None = Field(None, description="how long the stage waited, idle, for the platform "
                                                              "to scale to zero before that request")


# --- what the stage runner hands its activity, and what comes back ------------------------------------

class WeightsVolume(Record):
    """The weights destination as the service mounts it."""

    kind: Literal["gcs", "runpod_volume", "modal_volume"]
    name: str = Field(description="bucket, network volume id or Modal volume name")
    prefix: str = ""
    location: str | None = Field(None, description="RunPod datacenter or Modal environment")

    @classmethod
    def of(cls, destination: DestinationLocation) -> WeightsVolume:
        if destination.kind == "gcs":
            return cls(kind="gcs", name=destination.bucket, prefix=destination.prefix)
        if destination.kind == "runpod_volume":
            return cls(kind="runpod_volume", name=destination.volume_id, prefix=destination.prefix,
                       location=destination.datacenter)
        if destination.kind == "modal_volume":
            return cls(kind="modal_volume", name=destination.volume, prefix=destination.prefix,
                       location=destination.environment)
        raise ValueError(f"a {destination.kind} destination cannot be mounted into a service")

    def folder(self, mount_path: str) -> str:
        """The weights' folder inside the container when the volume is mounted at ``mount_path``."""
        return join_key(mount_path, self.prefix)


class DeployRequest(Record):
    """The deploy activity's input: the section and what earlier stages produced."""

    stage: DeployStage
    explicit: list[str] = Field(default_factory=list,
                                description="fields the plan sets itself (they win over the fly.toml)")
    image: str = Field(description="image reference to run")
    secrets: dict[str, str] = Field(default_factory=dict, description="variable name -> secret reference")
    weights: WeightsVolume | None = None


class DeployOutcome(StrEnum):
    created = "created"
    updated = "updated"
    unchanged = "unchanged"
    #: `modal deploy` ran (Modal itself keeps what did not change)
    deployed = "deployed"


class DeployResult(Record):
    """The new service; the canary stage sends traffic to ``endpoint_url``."""

    platform: Platform
    service: str = Field(description="Cloud Run service name, RunPod endpoint id or Modal app name")
    endpoint_url: str = Field(description="base URL of the new service")
    health_url: str | None = Field(None, description="what flyaway checked; None: the platform's own probe")
    image: str
    outcome: DeployOutcome
    unsupported: list[str] = Field(default_factory=list,
                                   description="fly.toml settings with no equivalent on the platform")
    scaling: ServiceScaling | None = Field(None, description="the service's scaling, fly.toml's settings applied")
    fly_scaling: FlyScaling | None = Field(None, description="the Fly app's, when the section names a fly.toml")
    cold_start: ColdStart | None = Field(None, description="None when the platform's own probe is all there is")

    def summary(self) -> str:
        return f"{PLATFORM_NAMES[self.platform]} {self.service} {self.outcome.value} at {self.endpoint_url}"


class Translation(Record):
    """fly.toml settings as one platform's deploy fields, and what has no equivalent there."""

    platform: Platform
    settings: dict[str, Any]
    unsupported: list[str] = Field(default_factory=list)
