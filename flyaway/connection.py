"""How the CLI and the workers reach Temporal.

Settings come from ``temporalio.envconfig``: the same TOML profiles and ``TEMPORAL_*``
variables the ``temporal`` CLI reads (address, namespace, API key, TLS), then flags. Every
client uses the pydantic data converter, with the payload codec when keys are configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio.client import Client
from temporalio.envconfig import ClientConfigProfile

from flyaway.codec import EncryptionCodec, data_converter

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"
TASK_QUEUE = "flyaway"


@dataclass(frozen=True)
class TemporalOptions:
    """Overrides from the command line; None means 'as the profile and environment say'."""

    address: str | None = None
    namespace: str | None = None
    api_key: str | None = None
    tls: bool | None = None
    profile: str | None = None

    def connect_config(self) -> dict[str, Any]:
        config: dict[str, Any] = dict(ClientConfigProfile.load(profile=self.profile).to_client_connect_config())
        config.setdefault("target_host", DEFAULT_ADDRESS)
        config.setdefault("namespace", DEFAULT_NAMESPACE)
        for key, value in (("target_host", self.address), ("namespace", self.namespace),
                           ("api_key", self.api_key), ("tls", self.tls)):
            if value is not None:
                config[key] = value
        if config.get("api_key") and "tls" not in config:
            config["tls"] = True  # Temporal Cloud API keys go with TLS
        return config

    @property
    def namespace_name(self) -> str:
        return str(self.connect_config()["namespace"])

    @property
    def target(self) -> str:
        return str(self.connect_config()["target_host"])


async def connect(options: TemporalOptions) -> Client:
    """A client with flyaway's data converter (and the payload codec when FLYAWAY_CODEC_KEYS is set)."""
    return await Client.connect(**options.connect_config(), data_converter=data_converter(EncryptionCodec.from_env()))
