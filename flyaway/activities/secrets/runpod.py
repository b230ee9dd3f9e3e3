"""RunPod account secrets through the REST API v2 (``/account/secrets``).

RunPod never returns a value, so each secret's description carries the digest of the value
flyaway wrote (``flyaway hmac-sha256:<hex>``, keyed: it tells nothing about the value); a secret whose description lacks it, or holds
another, is rotated. A rotation sends the value first and the description after, in two
requests as RunPod advises, so a failure in between only causes one more rotation next time.

The GraphQL API (``secretCreate``) has no documented way to change a value; API v2 does
(``PATCH /account/secrets/{id}``), which is why this client uses it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import httpx

from flyaway.activities.retry import call_with_retries
from flyaway.activities.secrets.base import StoredSecret, digest_key
from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials
from flyaway.models.secrets import RunpodDestination, secret_digest
from flyaway.redaction import scrub

_DIGEST = re.compile(r"hmac-sha256:[0-9a-f]{64}")


class RunpodUnavailable(Exception):
    """A 429 or 5xx answer: worth another try."""


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, (RunpodUnavailable, httpx.TransportError))


def reference(name: str) -> str:
    """How a RunPod template or endpoint's environment refers to the secret."""
    return f"{{{{ RUNPOD_SECRET_{name} }}}}"


def description(digest: str) -> str:
    return f"flyaway {digest}"


def _problem(response: httpx.Response) -> str:
    """The ``application/problem+json`` detail (and field errors) on one scrubbed line."""
    try:
        body = response.json()
        text = " ".join(str(part) for part in (body.get("detail"), *(body.get("errors") or [])) if part)
    except (ValueError, AttributeError):
        text = response.text
    return scrub(" ".join(text.split()) or response.reason_phrase)[:300]


class RunpodSecretStore:
    def __init__(self, destination: RunpodDestination) -> None:
        self.destination = destination
        self._digest_key = digest_key(destination)
        api_key = os.environ.get(destination.api_key_env, "").strip()
        if not api_key:
            raise MissingCredentials(f"{destination.api_key_env} is not set in the worker's environment; create a "
                                     f"RunPod API key with read/write access")
        self._http = httpx.Client(base_url=destination.api_url, timeout=30.0,
                                  headers={"Authorization": f"Bearer {api_key}", "User-Agent": "flyaway"})
        self._ids: dict[str, str] = {}

    def _request(self, method: str, path: str, accept: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """One request, retried while transient; an unsuccessful answer other than ``accept`` raises."""
        def send() -> httpx.Response:
            response = self._http.request(method, path, **kwargs)
            status = response.status_code
            if response.is_success or status in accept:
                return response
            where = f"{method} {self.destination.api_url}{path}"
            if status in (401, 403):
                raise AccessDenied(f"RunPod refused {where} (HTTP {status}: {_problem(response)}); check that "
                                   f"{self.destination.api_key_env} holds a key with read/write access")
            if status == 429 or status >= 500:
                raise RunpodUnavailable(f"RunPod answered {where} with HTTP {status}: {_problem(response)}")
            raise InvalidPlan(f"RunPod rejected {where} (HTTP {status}: {_problem(response)})")

        return call_with_retries(send, _is_transient)

    def read(self, names: list[str]) -> dict[str, StoredSecret]:
        held = {secret["name"]: secret for secret in self._request("GET", "/account/secrets").json()["secrets"]}
        self._ids = {name: secret["id"] for name, secret in held.items()}
        return {name: self._stored(name, held.get(name)) for name in names}

    @staticmethod
    def _stored(name: str, secret: dict[str, Any] | None) -> StoredSecret:
        if secret is None:
            return StoredSecret(exists=False)
        recorded = _DIGEST.search(secret.get("description") or "")
        return StoredSecret(exists=True, digest=recorded.group() if recorded else None, reference=reference(name))

    def write(self, values: dict[str, str], current: dict[str, StoredSecret]) -> dict[str, str]:
        for name, value in values.items():
            marker = description(secret_digest(value, self._digest_key))
            if not current[name].exists:
                created = self._request("POST", "/account/secrets", accept=(409,),
                                        json={"name": name, "value": value, "description": marker})
                if created.status_code != 409:
                    continue
                self.read([name])  # an earlier attempt created it after all: rotate that one
            path = f"/account/secrets/{self._ids[name]}"
            self._request("PATCH", path, json={"value": value})
            self._request("PATCH", path, json={"description": marker})
        return {name: reference(name) for name in values}

    def close(self) -> None:
        self._http.close()
