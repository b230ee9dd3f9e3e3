"""The secrets stage of the plan, and the report its activity returns.

A plan names where values come from and where they go, never a value. The report carries
names, outcomes, keyed digests (``hmac-sha256:<hex>`` of the value) and the references the deploy stage
puts into the new service's configuration; values stay inside the one activity that reads
and writes them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from flyaway.models.agent import FlyAgentSettings
from flyaway.models.base import EnvName, Record, StrictModel
from flyaway.models.canary import BaseUrl
from flyaway.models.credentials import CredentialUser, present

_GCP_PROJECT = re.compile(r"^([a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]{1,20})$")
_GCP_SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_GCP_PREFIX = re.compile(r"^[A-Za-z0-9_-]*$")
#: Secret Manager refuses payloads over 64 KiB
GCP_MAX_VALUE_BYTES = 64 * 1024
_MODAL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MODAL_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RUNPOD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]{0,190}$")
#: RunPod takes values strictly under 16 MiB of UTF-8
RUNPOD_MAX_VALUE_BYTES = 16 * 1024 * 1024 - 1


def secret_digest(value: str, key: bytes) -> str:
    """How a value appears anywhere outside the activity that holds it: an HMAC under ``key``, which only
    the worker and its agent can derive, so no dictionary of likely values (a PIN, ``true``) reverses it."""
    return "hmac-sha256:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


# --- sources -------------------------------------------------------------------------------

class DotenvSource(StrictModel):
    """A dotenv file on the worker's disk (``NAME=value`` lines, as python-dotenv reads them)."""

    kind: Literal["dotenv"]
    path: str = Field(description="absolute path of the file on the worker")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not PurePosixPath(value).is_absolute():
            raise ValueError(f"'{value}' is relative; give the file's absolute path on the worker")
        return value

    def describe(self) -> str:
        return f"dotenv file {self.path}"


class EnvSource(StrictModel):
    """Variables of the worker's own environment."""

    kind: Literal["env"]
    names: list[EnvName] = Field(min_length=1, description="the variables to read")

    def describe(self) -> str:
        return "the worker's environment"


class FlyAppSource(FlyAgentSettings):
    """The Fly app's secrets. The Machines API lists their names and digests, never values; Fly puts
    the values into the env of every Machine of the app, so an agent Machine started in the app reads
    them there and writes them to the destination itself."""

    kind: Literal["fly_app"]
    agent_cpus: PositiveInt = Field(1, le=16, description="performance CPUs of the agent Machine")
    agent_memory_mb: PositiveInt = Field(2048, description="memory of the agent Machine, a multiple of 256 "
                                                           "(2048 is the least Fly gives a performance CPU)")

    def describe(self) -> str:
        return f"Fly app {self.app}"


SecretSource = Annotated[DotenvSource | EnvSource | FlyAppSource, Field(discriminator="kind")]


# --- destinations ----------------------------------------------------------------------------

class GcpSecretManagerDestination(CredentialUser):
    """One Secret Manager secret per value, named ``<prefix><name>``; a changed value adds a version."""

    provider = "gcp_secret_manager"
    official_hosts = ("*.googleapis.com",)

    kind: Literal["gcp_secret_manager"]
    project: str = Field(description="project id or number")
    prefix: str = Field("", description="put before every secret id, e.g. 'myapp-'")
    credentials_env: EnvName = Field(
        "GOOGLE_APPLICATION_CREDENTIALS",
        description="variable holding the path of a service-account key file; Application Default "
                    "Credentials when unset (anonymous when `endpoint` is set, for emulators)")
    endpoint: BaseUrl | None = Field(None, description="Secret Manager address override (tests, emulators)")

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        if not _GCP_PROJECT.match(value):
            raise ValueError(f"'{value}' is not a GCP project id (6-30 lowercase letters, digits, '-') "
                             f"or project number")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _GCP_PREFIX.match(value):
            raise ValueError(f"'{value}' may only hold letters, digits, '_' and '-' (a secret id's characters)")
        return value

    def store_name(self, name: str) -> str:
        return self.prefix + name

    def check_name(self, name: str) -> None:
        if not _GCP_SECRET_ID.match(self.store_name(name)):
            raise ValueError(f"'{self.store_name(name)}' is not a Secret Manager secret id "
                             f"(1-255 letters, digits, '_' and '-')")

    def check_value(self, name: str, value: str) -> None:
        if len(value.encode()) > GCP_MAX_VALUE_BYTES:
            raise ValueError(f"{name}: the value is over Secret Manager's {GCP_MAX_VALUE_BYTES}-byte limit")

    def describe(self) -> str:
        at = f" at {self.endpoint}" if self.endpoint else ""
        return f"GCP Secret Manager project {self.project}{at}"

    def credential_envs(self) -> list[str]:
        return [self.credentials_env]

    def credential_files(self) -> list[str]:
        return [self.credentials_env]

    def endpoint_overrides(self) -> list[str]:
        return present(self.endpoint)


class ModalDestination(CredentialUser):
    """One Modal secret holding every value as an environment variable."""

    provider = "modal"

    kind: Literal["modal"]
    secret_name: str = Field(description="the Modal secret the deploy stage attaches to the app")
    environment: str | None = Field(None, description="Modal environment; the profile's default when absent")
    token_id_env: EnvName = "MODAL_TOKEN_ID"
    token_secret_env: EnvName = "MODAL_TOKEN_SECRET"

    @field_validator("secret_name")
    @classmethod
    def _secret_name(cls, value: str) -> str:
        if not _MODAL_NAME.match(value):
            raise ValueError(f"'{value}' is not a Modal object name (1-64 letters, digits, '.', '_', '-')")
        return value

    def store_name(self, name: str) -> str:
        return name

    def check_name(self, name: str) -> None:
        if not _MODAL_KEY.match(name):
            raise ValueError(f"'{name}' is not an environment variable name, which a Modal secret's keys must be")

    def check_value(self, name: str, value: str) -> None:
        """Modal publishes no value limit."""

    def describe(self) -> str:
        environment = f" in environment {self.environment}" if self.environment else ""
        return f"Modal secret {self.secret_name}{environment}"

    def credential_envs(self) -> list[str]:
        return [self.token_id_env, self.token_secret_env]


class RunpodDestination(CredentialUser):
    """RunPod account secrets (REST API v2, ``/account/secrets``), one per value."""

    provider = "runpod"
    official_hosts = ("*.runpod.io",)

    kind: Literal["runpod"]
    api_key_env: EnvName = "RUNPOD_API_KEY"
    api_url: BaseUrl | None = Field(None, description="RunPod API v2 address override (tests); RunPod's own "
                                                      "when absent")

    def store_name(self, name: str) -> str:
        return name

    def check_name(self, name: str) -> None:
        if not _RUNPOD_NAME.match(name):
            raise ValueError(f"'{name}' is not a RunPod secret name (1-191 characters: a letter or '_', then "
                             f"letters, digits and '_.-/')")
        if name.upper().startswith("RUNPOD"):
            raise ValueError(f"'{name}' starts with RUNPOD, a prefix RunPod reserves; rename it")

    def check_value(self, name: str, value: str) -> None:
        if len(value.encode()) > RUNPOD_MAX_VALUE_BYTES:
            raise ValueError(f"{name}: the value is over RunPod's 16 MiB limit")

    def describe(self) -> str:
        return f"RunPod secrets{f' at {self.api_url}' if self.api_url else ''}"

    def credential_envs(self) -> list[str]:
        return [self.api_key_env]

    def endpoint_overrides(self) -> list[str]:
        return present(self.api_url)


SecretDestination = Annotated[GcpSecretManagerDestination | ModalDestination | RunpodDestination,
                              Field(discriminator="kind")]


# --- the stage -----------------------------------------------------------------------------

class SecretsStage(StrictModel):
    """Copy named secrets from a source to a destination; values never leave the activity."""

    source: SecretSource
    destination: SecretDestination
    names: list[EnvName] | Literal["all"] = Field(
        "all", description="the names to move, or 'all' the source holds")
    rename: dict[EnvName, EnvName] = Field(
        default_factory=dict, description="source name -> name at the destination and in the new service")
    on_missing: Literal["fail", "skip"] = Field(
        "fail", description="a listed name the source lacks: fail before writing anything, or report it "
                            "as missing_at_source and move the others")

    @model_validator(mode="after")
    def _consistent_names(self) -> SecretsStage:
        listed = self.listed_names()
        if isinstance(self.source, EnvSource) and self.names != "all":
            unknown = sorted(set(self.names) - set(self.source.names))
            if unknown:
                raise ValueError(f"names {unknown} are not among source.names; list them there too")
        if listed is not None:
            strays = sorted(set(self.rename) - set(listed))
            if strays:
                raise ValueError(f"rename has {strays}, which are not among the names moved")
            self.check_destination_names(listed)
        return self

    def listed_names(self) -> list[str] | None:
        """The source names this stage moves when the plan alone tells (None: whatever the source holds)."""
        if self.names != "all":
            return list(self.names)
        return list(self.source.names) if isinstance(self.source, EnvSource) else None

    def destination_name(self, name: str) -> str:
        return self.rename.get(name, name)

    def check_destination_names(self, names: list[str]) -> None:
        """Every destination name valid and used once; ``ValueError`` naming each problem."""
        problems = []
        for name in names:
            try:
                self.destination.check_name(self.destination_name(name))
            except ValueError as error:
                problems.append(str(error))
        taken = Counter(self.destination_name(name) for name in names)
        problems += [f"'{name}' is the destination name of {count} secrets" for name, count in taken.items()
                     if count > 1]
        if problems:
            raise ValueError("; ".join(problems))


# --- the report ----------------------------------------------------------------------------

class SecretOutcome(StrEnum):
    created = "created"
    updated = "updated"
    unchanged = "unchanged"
    missing_at_source = "missing_at_source"


class SecretResult(Record):
    name: str = Field(description="name at the source")
    destination_name: str = Field(description="name at the destination (the service's variable name)")
    outcome: SecretOutcome | None = Field(
        None, description="None only in the check of a fly_app source, which cannot compare values it cannot read")
    digest: str | None = Field(None, description="hmac-sha256:<hex> of the value under the migration's digest key; "
                                                 "never the value")
    reference: str | None = Field(
        None, description="what the deploy stage configures: a Secret Manager version, a RunPod "
                          "placeholder, or the Modal secret's name")


class SecretsReport(Record):
    destination: str
    secrets: list[SecretResult] = Field(default_factory=list)

    def count(self, outcome: SecretOutcome) -> int:
        return sum(result.outcome == outcome for result in self.secrets)

    def summary(self) -> str:
        return ", ".join(f"{self.count(outcome)} {outcome.value.replace('_', ' ')}" for outcome in SecretOutcome)

    def references(self) -> dict[str, str]:
        """Service variable name -> reference, for the deploy stage."""
        return {result.destination_name: result.reference for result in self.secrets if result.reference}
