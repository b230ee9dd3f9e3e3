"""Google Cloud: credentials from the worker's environment, which errors are transient, what Google's
refusals mean, and the Secret Manager client. Every Google client of flyaway gets its credentials here.

The client libraries run over their REST transport, which also takes an ``http://`` endpoint (an
emulator, or the fakes in the tests).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
import google_crc32c
import requests
from google.api_core import exceptions as google_errors
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import secretmanager
from google.oauth2 import credentials as user_credentials, service_account

from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials, NotFound
from flyaway.providers.http import REQUEST_RETRY_SECONDS, call_with_retries, transient_status

T = TypeVar("T")

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def load_credentials(credentials_env: str, what: str, *, anonymous: bool = False, ambient: bool = True,
                     scopes: Sequence[str] = (CLOUD_PLATFORM,)) -> tuple[Credentials, str | None]:
    """The credentials for ``what``, and the project they name (if any): the key file named by
    ``credentials_env``, else anonymous ones when ``anonymous`` (an emulator or a fake), else, when
    ``ambient``, Application Default Credentials.

    A key file is a service account key or user credentials, nothing else: an external account
    configuration would make the worker fetch from the URLs or run the programs it names."""
    path = os.environ.get(credentials_env)
    if path:
        return _key_file(credentials_env, path, what, scopes)
    if anonymous:
        return AnonymousCredentials(), None
    if not ambient:
        raise MissingCredentials(f"{what}: environment variable {credentials_env} is not set on the worker; set it "
                                 f"to the path of a service account key file")
    try:
        credentials, project = google.auth.default(scopes=list(scopes))
    except google.auth.exceptions.DefaultCredentialsError as error:
        raise MissingCredentials(f"no Google credentials for {what}: set {credentials_env} to a service account key "
                                 f"file, or run the worker with Application Default Credentials ({error})") from None
    return credentials, project


def _key_file(credentials_env: str, path: str, what: str, scopes: Sequence[str]) -> tuple[Credentials, str | None]:
    if not os.path.isfile(path):
        raise MissingCredentials(f"{what}: {credentials_env} names {path}, which is not a file on the worker")
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
        if info.get("type") == "service_account":
            return (service_account.Credentials.from_service_account_info(info, scopes=list(scopes)),
                    info.get("project_id"))
        if info.get("type") == "authorized_user":
            return (user_credentials.Credentials.from_authorized_user_info(info, scopes=list(scopes)),
                    info.get("quota_project_id"))
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    raise MissingCredentials(f"{what}: {path} (from {credentials_env}) is not a service account key or user "
                             f"credentials file")


def access_token(what: str) -> str:
    """A fresh access token of the worker's Google identity (``GOOGLE_APPLICATION_CREDENTIALS`` or Application
    Default Credentials), e.g. Artifact Registry's docker password."""
    credentials, _ = load_credentials("GOOGLE_APPLICATION_CREDENTIALS", what)
    credentials.refresh(google.auth.transport.requests.Request())
    token = credentials.token
    if not isinstance(token, str):
        raise MissingCredentials(f"{what}: the worker's Google identity gave no access token")
    return token


def is_transient(error: BaseException) -> bool:
    """No answer, throttling and 5xx (the shared rule) from a client library, or a dropped connection."""
    if isinstance(error, google_errors.GoogleAPICallError):
        return transient_status(error.code)
    return isinstance(error, (requests.ConnectionError, requests.Timeout, google.auth.exceptions.TransportError))


def call(fn: Callable[[], T], what: str, *, roles: str, not_found: str | None = None,
         expected: tuple[type[Exception], ...] = (), max_seconds: float = REQUEST_RETRY_SECONDS) -> T:
    """One API call, retried while transient. Google's refusals become flyaway's errors naming ``what`` and the
    ``roles`` the worker's identity needs (``not_found`` says what a 404 means); ``expected`` ones are left to
    the caller."""
    try:
        return call_with_retries(fn, is_transient, max_seconds)
    except expected:
        raise
    except (google_errors.Unauthorized, google_errors.Forbidden, google.auth.exceptions.RefreshError) as error:
        raise AccessDenied(f"{what}: access denied ({_message(error)}); the worker's Google identity needs "
                           f"{roles}") from None
    except google_errors.NotFound as error:
        raise NotFound(f"{what}: {not_found or _message(error)}") from None
    except (google_errors.BadRequest, google_errors.Conflict) as error:
        raise InvalidPlan(f"{what}: Google rejected the request: {_message(error)}") from None


def _message(error: Exception) -> str:
    if isinstance(error, google_errors.GoogleAPICallError):
        return str(error.message)
    return type(error).__name__


# ---- Secret Manager ----------------------------------------------------------------------------

SECRET_MANAGER_ROLES = "roles/secretmanager.admin on the project"


@dataclass(frozen=True)
class LatestVersion:
    """A secret's latest version as far as the worker may see it."""

    exists: bool
    #: ``projects/P/secrets/S/versions/N``; None when the secret is missing or its latest version is disabled
    name: str | None = None
    data: bytes | None = None


class SecretManager:
    """One project's secrets; ``endpoint`` (an emulator or a fake) is talked to anonymously."""

    def __init__(self, project: str, credentials_env: str, endpoint: str | None, what: str) -> None:
        self.project, self.what = project, what
        credentials, _ = load_credentials(credentials_env, what, anonymous=bool(endpoint))
        self._client = secretmanager.SecretManagerServiceClient(
            credentials=credentials, transport="rest",
            client_options=ClientOptions(api_endpoint=endpoint) if endpoint else None)

    def secret_path(self, secret_id: str) -> str:
        return str(self._client.secret_path(self.project, secret_id))

    def latest(self, secret_id: str) -> LatestVersion:
        path = self.secret_path(secret_id)
        try:
            latest = call(lambda: self._client.access_secret_version(name=f"{path}/versions/latest"),
                          f"{self.what}: read {path}", roles=SECRET_MANAGER_ROLES,
                          expected=(google_errors.NotFound, google_errors.BadRequest))
        except google_errors.NotFound:
            return LatestVersion(exists=self._exists(path))
        except google_errors.BadRequest:
            # FAILED_PRECONDITION, the one 400 a checked name gets: the latest version is disabled or destroyed
            return LatestVersion(exists=True)
        return LatestVersion(exists=True, name=latest.name, data=latest.payload.data)

    def _exists(self, path: str) -> bool:
        try:
            call(lambda: self._client.get_secret(name=path), f"{self.what}: read {path}", roles=SECRET_MANAGER_ROLES,
                 expected=(google_errors.NotFound,))
        except google_errors.NotFound:
            return False
        return True

    def add_version(self, secret_id: str, data: bytes, *, create: bool) -> str:
        """Add a version holding ``data`` (creating the secret first when ``create``); its name."""
        path = self.secret_path(secret_id)
        if create:
            self._create(secret_id, path)
        payload = secretmanager.SecretPayload(data=data, data_crc32c=google_crc32c.value(data))
        version = call(lambda: self._client.add_secret_version(parent=path, payload=payload),
                       f"{self.what}: add a version to {path}", roles=SECRET_MANAGER_ROLES)
        return str(version.name)

    def _create(self, secret_id: str, path: str) -> None:
        secret = secretmanager.Secret(replication=secretmanager.Replication(
            automatic=secretmanager.Replication.Automatic()))
        with contextlib.suppress(google_errors.Conflict):  # an earlier attempt made it
            call(lambda: self._client.create_secret(parent=f"projects/{self.project}", secret_id=secret_id,
                                                    secret=secret),
                 f"{self.what}: create {path}", roles=SECRET_MANAGER_ROLES,
                 not_found="the project does not exist or Secret Manager is not enabled in it",
                 expected=(google_errors.Conflict,))

    def close(self) -> None:
        self._client.transport.close()  # type: ignore[no-untyped-call]
