"""Google Cloud client plumbing: credentials from the worker's environment, and which errors are transient."""

from __future__ import annotations

import os

import google.auth
import requests
from google.api_core import exceptions as google_errors
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError

from flyaway.errors import MissingCredentials

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def is_transient(error: BaseException) -> bool:
    """Throttling, 5xx, timeouts and dropped connections: worth another request."""
    return isinstance(error, (google_errors.ServerError, google_errors.TooManyRequests,
                              google_errors.DeadlineExceeded, requests.ConnectionError, requests.Timeout))


def load_credentials(credentials_env: str, *, anonymous: bool, what: str) -> Credentials:
    """The key file named by ``credentials_env``, else anonymous credentials when ``anonymous`` (an
    emulator or a fake), else Application Default Credentials."""
    path = os.environ.get(credentials_env)
    try:
        if path:
            credentials, _ = google.auth.load_credentials_from_file(path, scopes=SCOPES)
            return credentials
        if anonymous:
            return AnonymousCredentials()
        credentials, _ = google.auth.default(scopes=SCOPES)
        return credentials
    except DefaultCredentialsError as error:
        raise MissingCredentials(f"no Google credentials for {what}: set {credentials_env} to a service-account "
                                 f"key file, or run the worker with Application Default Credentials "
                                 f"({error})") from None
    except GoogleAuthError as error:
        raise MissingCredentials(f"{credentials_env}={path}: not usable Google credentials "
                                 f"({type(error).__name__})") from None
