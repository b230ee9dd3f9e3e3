"""GCP Secret Manager: one secret per value, a new version only when the value differs.

The latest version's data is read back and compared by digest, so a re-run adds no version.
The client library runs over its REST transport, which also takes an ``http://`` endpoint
(an emulator, or the fake in the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import google_crc32c
from google.api_core import exceptions as google_errors
from google.api_core.client_options import ClientOptions
from google.cloud import secretmanager

from flyaway.activities.google_cloud import is_transient, load_credentials
from flyaway.activities.secrets.base import STORES, StoredSecret, digest_key
from flyaway.errors import AccessDenied, InvalidPlan, NotFound
from flyaway.models.secrets import GcpSecretManagerDestination, secret_digest
from flyaway.providers.http import call_with_retries

T = TypeVar("T")
@STORES.register("gcp_secret_manager")
class GcpSecretStore:
    def __init__(self, destination: GcpSecretManagerDestination) -> None:
        self.destination = destination
        self._digest_key = digest_key(destination)
        options = ClientOptions(api_endpoint=destination.endpoint) if destination.endpoint else None
        self._client = secretmanager.SecretManagerServiceClient(
            credentials=load_credentials(destination.credentials_env, anonymous=bool(destination.endpoint),
                                         what=destination.describe()), transport="rest", client_options=options)

    def _secret_path(self, name: str) -> str:
        return self._client.secret_path(self.destination.project, self.destination.store_name(name))

    def _call(self, what: str, fn: Callable[[], T],
              expected: tuple[type[Exception], ...] = (google_errors.NotFound, google_errors.Conflict)) -> T:
        """One API call, retried while transient; refusals become flyaway's errors, ``expected`` ones
        are left to the caller."""
        try:
            return call_with_retries(fn, is_transient)
        except expected:
            raise
        except (google_errors.Unauthorized, google_errors.Forbidden) as error:
            raise AccessDenied(f"{self.destination.describe()} refused to {what}: {error.message}; the worker's "
                               f"Google identity needs roles/secretmanager.admin on the project") from None
        except google_errors.BadRequest as error:
            raise InvalidPlan(f"{self.destination.describe()} rejected {what}: {error.message}") from None

    def read(self, names: list[str]) -> dict[str, StoredSecret]:
        return {name: self._read_one(name) for name in names}

    def _read_one(self, name: str) -> StoredSecret:
        path = self._secret_path(name)
        try:
            latest = self._call(f"read {path}", lambda: self._client.access_secret_version(
                name=f"{path}/versions/latest"), expected=(google_errors.NotFound, google_errors.BadRequest))
        except google_errors.NotFound:
            return StoredSecret(exists=self._exists(path))
        except google_errors.BadRequest:
            # FAILED_PRECONDITION, the one 400 a checked name gets: the latest version is disabled or destroyed
            return StoredSecret(exists=True)
        return StoredSecret(exists=True, digest=secret_digest(latest.payload.data.decode(errors="replace"),
                                                                      self._digest_key),
                            reference=latest.name)

    def _exists(self, path: str) -> bool:
        try:
            self._call(f"read {path}", lambda: self._client.get_secret(name=path))
        except google_errors.NotFound:
            return False
        return True

    def write(self, values: dict[str, str], current: dict[str, StoredSecret]) -> dict[str, str]:
        return {name: self._write_one(name, value, current[name].exists) for name, value in values.items()}

    def _write_one(self, name: str, value: str, exists: bool) -> str:
        path = self._secret_path(name)
        if not exists:
            self._create(name, path)
        data = value.encode()
        payload = secretmanager.SecretPayload(data=data, data_crc32c=google_crc32c.value(data))
        version = self._call(f"add a version to {path}",
                             lambda: self._client.add_secret_version(parent=path, payload=payload))
        return version.name

    def _create(self, name: str, path: str) -> None:
        project = f"projects/{self.destination.project}"
        secret = secretmanager.Secret(replication=secretmanager.Replication(
            automatic=secretmanager.Replication.Automatic()))
        try:
            self._call(f"create {path}", lambda: self._client.create_secret(
                parent=project, secret_id=self.destination.store_name(name), secret=secret))
        except google_errors.Conflict:
            pass  # an earlier attempt made it
        except google_errors.NotFound:
            raise NotFound(f"{self.destination.describe()}: the project does not exist or Secret Manager is "
                           f"not enabled in it") from None

    def close(self) -> None:
        self._client.transport.close()
