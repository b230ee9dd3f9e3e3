"""Plan fields of the agent Machine flyaway starts inside a Fly app.

Two sources can only be read from inside the app: a ``fly_volume`` (weights, through a fork
the agent mounts) and a ``fly_app`` (secrets, which Fly puts into the env of every Machine of
the app). Both start the same agent, a ``flyaway agent`` worker polling its own task queue,
configured by these fields.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, Field, PositiveInt, field_validator

from flyaway.models.base import Duration, EnvName, FlyAppName
from flyaway.models.credentials import CredentialUser, present

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")


def _positive(value: timedelta) -> timedelta:
    if value.total_seconds() <= 0:
        raise ValueError("must be a positive duration")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]


class AgentTemporal(CredentialUser):
    """How the agent reaches Temporal from inside Fly; given to its Machine as ``TEMPORAL_*`` env.

    Its namespace is the migration's own: the agent must poll where the migration schedules its work.
    """

    provider = "temporal"
    official_hosts = ("*.tmprl.cloud", "*.temporal.io")

    address: str = Field(description="host:port of the Temporal frontend as seen from Fly, "
                                     "e.g. my-ns.a1b2c.tmprl.cloud:7233")
    tls: bool | None = Field(None, description="TLS to the frontend; on when api_key_env is set, unless false")
    api_key_env: EnvName | None = Field(
        None, description="variable on the worker holding a Temporal API key; the worker puts its value into the "
                          "agent Machine's env, so it never appears in the plan or the workflow history")

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not _HOST_PORT.match(value):
            raise ValueError(f"'{value}' is not host:port")
        return value

    def credential_envs(self) -> list[str]:
        return present(self.api_key_env)

    def endpoint_overrides(self) -> list[str]:
        return [self.address]

    @classmethod
    def default_credential_envs(cls) -> list[str]:
        return ["TEMPORAL_API_KEY"]


class FlyAgentSettings(CredentialUser):
    """A source read by a short-lived agent Machine in its Fly app."""

    provider = "agent_env"

    app: FlyAppName = Field(description="the Fly app the agent Machine runs in")
    agent_image: str = Field(min_length=1, description="image of the agent Machine: this repository's Dockerfile, "
                                                       "pushed where Fly can pull it")
    agent_temporal: AgentTemporal
    agent_env: list[EnvName] = Field(default_factory=list,
                                     description="more variables of the worker to give the agent (proxies, "
                                                 "endpoints); the destination's credentials are given anyway")
    agent_cpus: PositiveInt = Field(2, le=16, description="performance CPUs of the agent Machine")
    agent_memory_mb: PositiveInt = Field(4096, description="memory of the agent Machine, a multiple of 256")
    agent_start_timeout: PositiveDuration = Field(
        timedelta(minutes=5), description="longest wait for the agent to start and poll its task queue")

    def credential_envs(self) -> list[str]:
        return list(self.agent_env)

    @field_validator("agent_memory_mb")
    @classmethod
    def _memory(cls, value: int) -> int:
        if value % 256:
            raise ValueError(f"{value} is not a multiple of 256 MB")
        return value
