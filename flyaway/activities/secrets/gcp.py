"""GCP Secret Manager: one secret per value, a new version only when the value differs.

The latest version's data is read back and compared by digest, so a re-run adds no version.
"""

from __future__ import annotations

from flyaway.activities.secrets.base import STORES, StoredSecret, digest_key
from flyaway.models.secrets import GcpSecretManagerDestination, secret_digest
from flyaway.providers.google import SecretManager


@STORES.register("gcp_secret_manager")
class GcpSecretStore:
    def __init__(self, destination: GcpSecretManagerDestination) -> None:
        self.destination = destination
        self._digest_key = digest_key(destination)
        self._secrets = SecretManager(destination.project, destination.credentials_env, destination.endpoint,
                                      destination.describe())

    def read(self, names: list[str]) -> dict[str, StoredSecret]:
        return {name: self._read_one(name) for name in names}

    def _read_one(self, name: str) -> StoredSecret:
        latest = self._secrets.latest(self.destination.store_name(name))
        if latest.data is None:
            return StoredSecret(exists=latest.exists)
        return StoredSecret(exists=True, digest=secret_digest(latest.data.decode(errors="replace"), self._digest_key),
                            reference=latest.name)

    def write(self, values: dict[str, str], current: dict[str, StoredSecret]) -> dict[str, str]:
        return {name: self._secrets.add_version(self.destination.store_name(name), value.encode(),
                                                create=not current[name].exists)
                for name, value in values.items()}

    def close(self) -> None:
        self._secrets.close()
