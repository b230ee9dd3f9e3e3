"""Where weights come from and go to: the ``kind``-tagged locations of a plan's ``weights`` stage.

Each location checks its own fields and says which credential variables it reads
(``credential_envs``) and which addresses it sends them to, so the worker's policy and the
agent Machine ask the location, never a list of kinds.
"""

from __future__ import annotations

import posixpath
import re
from datetime import timedelta
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import ByteSize, Field, HttpUrl, PositiveInt, field_validator

from flyaway.models.agent import FlyAgentSettings, PositiveDuration
from flyaway.models.base import AwsCredentials, EnvName, RelativeKey, Size, StrictModel
from flyaway.models.credentials import CredentialUser, aws_credential_envs, present

MiB = 1024 * 1024
GiB = 1024 * MiB

_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
#: https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
_S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_S3_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", "--x-s3", "--table-s3")


def _check_dns_like(value: str, rules: str) -> None:
    """Rules S3 and GCS share: no empty label ('a..b'), no '-' next to a '.', not an IP address."""
    if ".." in value or ".-" in value or "-." in value:
        raise ValueError(f"'{value}' is not a valid bucket name: dots must separate labels that begin and end "
                         f"with a letter or digit ({rules})")
    if _IPV4.match(value):
        raise ValueError(f"'{value}' is not a valid bucket name: it looks like an IP address ({rules})")


def check_bucket_name(value: str) -> str:
    """An S3 bucket name as AWS defines it (Tigris and RunPod follow the same rules)."""
    rules = "3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
    if not _S3_BUCKET.match(value):
        raise ValueError(f"'{value}' is not a valid bucket name ({rules})")
    _check_dns_like(value, rules)
    if value.startswith(_S3_RESERVED_PREFIXES) or value.endswith(_S3_RESERVED_SUFFIXES):
        raise ValueError(f"'{value}' is not a valid bucket name: S3 reserves the prefixes "
                         f"{', '.join(_S3_RESERVED_PREFIXES)} and the suffixes {', '.join(_S3_RESERVED_SUFFIXES)}")
    return value


def check_gcs_bucket_name(value: str) -> str:
    """A GCS bucket name: https://cloud.google.com/storage/docs/buckets#naming."""
    rules = ("3-63 lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit; up to "
             "222 with dots, each dot-separated part at most 63")
    if not _GCS_BUCKET.match(value) or (len(value) > 63 and "." not in value):
        raise ValueError(f"'{value}' is not a valid GCS bucket name ({rules})")
    _check_dns_like(value, rules)
    if any(len(label) > 63 for label in value.split(".")):
        raise ValueError(f"'{value}' is not a valid GCS bucket name: a dot-separated part is over 63 characters")
    if value.startswith("goog") or "google" in value or "g00gle" in value:
        raise ValueError(f"'{value}' is not a valid GCS bucket name: names may not start with 'goog' or contain "
                         f"'google'")
    return value


def check_absolute_path(value: str) -> str:
    """A folder on the worker: absolute and without '..'."""
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError(f"'{value}' is relative; give an absolute path (the worker's working folder is not yours)")
    if ".." in path.parts:
        raise ValueError(f"'{value}' contains '..'; give the folder's real absolute path")
    return value


class S3Location(CredentialUser):
    """Any S3-compatible bucket, with an optional prefix inside it."""

    provider = "s3"
    official_hosts = ("*.amazonaws.com",)

    kind: Literal["s3"]
    bucket: str = Field(description="bucket name")
    prefix: RelativeKey = Field("", description="key prefix inside the bucket, no leading '/'")
    endpoint_url: HttpUrl | None = Field(None, description="S3 endpoint; AWS when absent")
    region: str = "us-east-1"
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    credentials: AwsCredentials = Field(default_factory=AwsCredentials)

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        return check_bucket_name(value)

    def describe(self) -> str:
        endpoint = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{endpoint}"

    def credential_envs(self) -> list[str]:
        return aws_credential_envs(self.credentials)

    def endpoint_overrides(self) -> list[str]:
        return present(self.endpoint_url)


class TigrisLocation(CredentialUser):
    """A Tigris bucket (``fly storage create``), read through Tigris's S3 API."""

    provider = "tigris"
    official_hosts = ("t3.storage.dev", "*.t3.storage.dev", "fly.storage.tigris.dev", "*.fly.storage.tigris.dev")

    kind: Literal["tigris"]
    bucket: str = Field(description="bucket name (BUCKET_NAME among the app's secrets)")
    prefix: RelativeKey = Field("", description="key prefix inside the bucket, no leading '/'")
    endpoint_url: HttpUrl | None = Field(None, description="Tigris S3 endpoint; Tigris's own (t3.storage.dev) when "
                                                           "absent, and the older fly.storage.tigris.dev works too")
    addressing_style: Literal["auto", "path", "virtual"] = "virtual"
    credentials: AwsCredentials = Field(default_factory=AwsCredentials,
                                        description="variables holding the keys `fly storage create` made")

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        return check_bucket_name(value)

    def describe(self) -> str:
        return f"tigris://{self.bucket}/{self.prefix}"

    def credential_envs(self) -> list[str]:
        return aws_credential_envs(self.credentials)

    def endpoint_overrides(self) -> list[str]:
        return present(self.endpoint_url)


class RunPodS3Credentials(AwsCredentials):
    """Where the worker finds a RunPod S3 API key (created in the RunPod console, not the RunPod API key)."""

    access_key_id_env: EnvName = Field("RUNPOD_S3_ACCESS_KEY", description="variable holding the key's access key "
                                                                           "(user_...)")
    secret_access_key_env: EnvName = Field("RUNPOD_S3_SECRET_KEY", description="variable holding its secret (rps_...)")


_DATACENTER = re.compile(r"^[A-Z]{2,4}-[A-Z]{2,4}-[0-9]{1,2}$")


class RunPodVolumeLocation(CredentialUser):
    """A RunPod Network Volume, written through RunPod's S3-compatible API (the volume id is the bucket)."""

    provider = "runpod_volume"
    official_hosts = ("*.runpod.io",)

    kind: Literal["runpod_volume"]
    volume_id: str = Field(description="network volume id")
    datacenter: str = Field(description="datacenter id of the volume, e.g. EUR-IS-1; it picks the endpoint")
    prefix: RelativeKey = Field("", description="folder inside the volume, no leading '/'")
    endpoint_url: HttpUrl | None = Field(None, description="S3 endpoint; the datacenter's own (s3api-<datacenter>"
                                                           ".runpod.io) when absent")
    credentials: RunPodS3Credentials = Field(default_factory=RunPodS3Credentials)

    @field_validator("volume_id")
    @classmethod
    def _volume_id(cls, value: str) -> str:
        return check_bucket_name(value)

    @field_validator("datacenter")
    @classmethod
    def _datacenter(cls, value: str) -> str:
        if not _DATACENTER.match(value.upper()):
            raise ValueError(f"'{value}' is not a RunPod datacenter id; write it like EUR-IS-1 or US-KS-2")
        return value.upper()

    def describe(self) -> str:
        return f"runpod://{self.datacenter}/{self.volume_id}/{self.prefix}"

    def credential_envs(self) -> list[str]:
        return aws_credential_envs(self.credentials)

    def endpoint_overrides(self) -> list[str]:
        return present(self.endpoint_url)


class GcsLocation(CredentialUser):
    """A Google Cloud Storage bucket, with an optional prefix inside it."""

    provider = "gcs"

    kind: Literal["gcs"]
    bucket: str = Field(description="bucket name")
    prefix: RelativeKey = Field("", description="object name prefix inside the bucket, no leading '/'")
    project: str | None = Field(None, description="project billed for requests; the key file's when absent")
    credentials_env: EnvName = Field(
        "GOOGLE_APPLICATION_CREDENTIALS",
        description="variable holding the path of a service account key file; not needed when the worker "
                    "sets STORAGE_EMULATOR_HOST")
    composite_uploads: bool = Field(
        True, description="upload a large file as temporary part objects composed into it (parts in parallel, "
                          "from any worker); false: one resumable session per file, its parts in order from one "
                          "worker, for a bucket with a retention policy, a default event-based hold or a storage "
                          "class other than STANDARD")

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        return check_gcs_bucket_name(value)

    def describe(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"

    def credential_envs(self) -> list[str]:
        return [self.credentials_env]

    def credential_files(self) -> list[str]:
        return [self.credentials_env]


class LocalLocation(StrictModel):
    """A folder on the worker's disk (or a mounted volume)."""

    kind: Literal["local"]
    path: str = Field(description="absolute path of the folder")
    read_twice: bool = Field(False, description="as a source: hash each file in a first read, so the bytes the "
                             "copy reads are checked against it (a folder publishes no checksum of its own; "
                             "a Fly volume's agent always does this)")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return check_absolute_path(value)

    def describe(self) -> str:
        return f"local:{self.path}"


_HF_REPO_ID = re.compile(r"^(?:[\w.-]{1,96}/)?[\w.-]{1,96}$")
_GIT_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


def check_git_revision(value: str) -> str:
    """A branch, tag or commit as git allows them (``git check-ref-format``), e.g. main, v1.0, refs/pr/1."""
    segments = value.split("/")
    if (not value or len(value) > 255 or _GIT_REF_FORBIDDEN.search(value) or value == "@"
            or any(not part or part.startswith(".") or part.endswith((".lock", ".")) for part in segments)):
        raise ValueError(f"'{value}' is not a git revision; give a branch, tag or commit sha like main, v1.0 or "
                         f"refs/pr/1 (no spaces, '..', '~^:?*[\\' or leading '/')")
    return value


_MODAL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,63}$")


class HfLocation(CredentialUser):
    """A Hugging Face Hub repository at a revision; the worker's ``HF_ENDPOINT`` sets the hub's address."""

    provider = "hf"

    kind: Literal["hf"]
    repo_id: str = Field(description="namespace/name, e.g. meta-llama/Llama-3.1-8B")
    revision: str = Field("main", description="branch, tag or commit; pinned to its commit sha when listed")
    repo_type: Literal["model", "dataset", "space"] = "model"
    token_env: EnvName = Field("HF_TOKEN", description="variable holding a hub token; private and gated repos "
                                                     "need it, public ones do not")

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        if not _HF_REPO_ID.match(value) or ".." in value or "--" in value or value.endswith(".git"):
            raise ValueError(f"'{value}' is not a Hugging Face repo id; write it as namespace/name")
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        return check_git_revision(value)

    def describe(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"hf://{kind}{self.repo_id}@{self.revision}"

    def credential_envs(self) -> list[str]:
        return [self.token_env]


class ModalVolumeLocation(CredentialUser):
    """A Modal Volume (v2). Large files are staged on the worker's disk, one at a time, then uploaded."""

    provider = "modal"

    kind: Literal["modal_volume"]
    volume: str = Field(description="volume name")
    environment: str | None = Field(None, description="Modal environment; the workspace's default when absent")
    create_if_missing: bool = False
    prefix: RelativeKey = Field("", description="folder inside the volume, no leading '/'")
    verify: Literal["full", "sample"] = Field(
        "full", description="read back every uploaded file whole (full), or its size and first 8 MiB (sample)")
    staging_dir: str | None = Field(None, description="absolute folder on the worker for staged files; "
                                                      "the worker's temporary folder when absent")
    staging_budget: Size = Field(ByteSize(64 * GiB),
                                     description="disk a staged file may take; larger files are refused at listing")
    token_id_env: EnvName = "MODAL_TOKEN_ID"
    token_secret_env: EnvName = "MODAL_TOKEN_SECRET"

    @field_validator("volume", "environment")
    @classmethod
    def _modal_name(cls, value: str | None) -> str | None:
        if value is not None and not _MODAL_NAME.match(value):
            raise ValueError(f"'{value}' is not a Modal name (1-63 letters, digits, '.', '-', '_')")
        return value

    @field_validator("staging_dir")
    @classmethod
    def _staging_dir(cls, value: str | None) -> str | None:
        return None if value is None else check_absolute_path(value)

    @field_validator("staging_budget")
    @classmethod
    def _budget(cls, value: ByteSize) -> ByteSize:
        if value < MiB:
            raise ValueError(f"{value} bytes is too small; give at least 1MiB")
        return value

    def describe(self) -> str:
        environment = f"{self.environment}/" if self.environment else ""
        return f"modal://{environment}{self.volume}/{self.prefix}"

    def credential_envs(self) -> list[str]:
        return [self.token_id_env, self.token_secret_env]


_FLY_VOLUME = re.compile(r"^[a-z0-9_]{1,30}$")
_FLY_REGION = re.compile(r"^[a-z]{3}$")


class FlyVolumeLocation(FlyAgentSettings):
    """A Fly Volume, read through a fork of it mounted in a short-lived agent Machine of the same app.

    The running app keeps serving from the original; the agent runs ``flyaway agent`` and copies
    straight from the fork to the destination.
    """

    kind: Literal["fly_volume"]
    volume: str = Field(description="volume id (vol_...) or name; a name shared by several volumes needs region "
                                    "or the id")
    region: str | None = Field(None, description="region the volume must be in, e.g. ord; checked, not chosen")
    mount_path: str = Field("/data", description="where the fork is mounted in the agent Machine")
    keep_fork: bool = Field(False, description="keep the fork after the copy (the agent is removed anyway)")
    fork_timeout: PositiveDuration = Field(timedelta(minutes=30), description="longest wait for the fork to be ready")
    agents: PositiveInt = Field(1, le=16, description="forks and agent Machines reading the volume at once, all "
                                "on one task queue: each copy activity goes to whichever agent is free, so "
                                "weights.parallelism must be at least this; the forks after the first are "
                                "forks of the first, so every agent reads the same bytes")

    @field_validator("volume")
    @classmethod
    def _volume(cls, value: str) -> str:
        if not _FLY_VOLUME.match(value):
            raise ValueError(f"'{value}' is neither a Fly volume id nor a volume name (lowercase letters, digits, "
                             f"'_', at most 30)")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _FLY_REGION.match(value):
            raise ValueError(f"'{value}' is not a Fly region code (three lowercase letters, e.g. ord)")
        return value

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        return check_absolute_path(value)

    def describe(self) -> str:
        return f"fly://{self.app}/{self.volume}"

    def mounted(self) -> LocalLocation:
        """The fork as the agent sees it: a local folder."""
        return LocalLocation(kind="local", path=self.mount_path, read_twice=True)


SourceLocation = Annotated[LocalLocation | S3Location | HfLocation | TigrisLocation | FlyVolumeLocation,
                           Field(discriminator="kind")]
DestinationLocation = Annotated[LocalLocation | S3Location | ModalVolumeLocation | RunPodVolumeLocation | GcsLocation,
                                Field(discriminator="kind")]


def storage_root(location: SourceLocation | DestinationLocation) -> tuple[tuple[str, ...], str] | None:
    """(which store, path inside it) of a folder or S3 bucket, to tell whether one location holds another."""
    if isinstance(location, LocalLocation):
        return ("local",), posixpath.normpath(location.path).lstrip("/")
    if isinstance(location, (S3Location, TigrisLocation)):
        return ("s3", _s3_service(location), location.bucket), location.prefix.strip("/")
    if isinstance(location, RunPodVolumeLocation):
        return ("s3", _s3_service(location), location.volume_id), location.prefix.strip("/")
    return None


def _s3_service(location: S3Location | TigrisLocation | RunPodVolumeLocation) -> str:
    """Which S3 service holds the bucket: the kind's own when the plan names no endpoint, Tigris by any of its
    hosts, else the endpoint's host and port."""
    if location.endpoint_url is None:
        if isinstance(location, RunPodVolumeLocation):
            return f"runpod {location.datacenter}"
        return "tigris" if isinstance(location, TigrisLocation) else "aws"
    host = (location.endpoint_url.host or "").lower()
    if any(fnmatchcase(host, pattern) for pattern in TigrisLocation.official_hosts):
        return "tigris"
    return f"{host}:{location.endpoint_url.port}"
