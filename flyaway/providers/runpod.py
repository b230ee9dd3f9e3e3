"""RunPod's REST API v2: the API key, requests retried while RunPod is unavailable, and what its answers mean.

v2, not ``rest.runpod.io/v1``: RunPod retired v1 on 2026-11-15, and only v2 creates load-balancing
serverless endpoints and changes a secret's value (``PATCH /account/secrets/{id}``; the GraphQL
``secretCreate`` has no documented way to). Errors come as RFC 9457 problems. The client is
synchronous; async callers run it in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx

from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials, NotFound
from flyaway.providers.http import (
    ProviderUnavailable,
    call_with_retries,
    is_transient,
    problem,
    retrying,
    transient_status,
)
from flyaway.redaction import register_secret

Json = dict[str, Any]
#: the REST API v2, where a plan names no other address
RUNPOD_API_URL = "https://api.runpod.io/v2"


def runpod_s3_endpoint(datacenter: str) -> str:
    """The S3-compatible API of a datacenter's network volumes."""
    return f"https://s3api-{datacenter.lower()}.runpod.io/"


class RunpodApi:
    """One RunPod account's REST API, with the key read from ``api_key_env``."""

    def __init__(self, api_url: str | None, api_key_env: str, timeout: float = 60.0) -> None:
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            raise MissingCredentials(f"{api_key_env} is not set in the worker's environment; create a RunPod API key "
                                     f"with read/write access")
        register_secret(api_key)
        self.api_key_env = api_key_env
        #: what a request to one of the account's serverless endpoints carries too
        self.auth = {"Authorization": f"Bearer {api_key}"}
        self._http = httpx.Client(base_url=api_url or RUNPOD_API_URL, timeout=timeout,
                                  headers={**self.auth, "User-Agent": "flyaway"})

    def request(self, method: str, path: str, what: str, accept: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """One request, retried while transient (safe for reads and PATCHes; a POST whose repeat is answered
        with one of ``accept``)."""
        return call_with_retries(lambda: self._send(method, path, what, accept, **kwargs), is_transient)

    def _send(self, method: str, path: str, what: str, accept: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """One request; an unsuccessful answer other than ``accept`` raises what it means."""
        response = self._http.request(method, path, **kwargs)
        status = response.status_code
        if response.is_success or status in accept:
            return response
        if transient_status(status):
            raise ProviderUnavailable(f"RunPod answered {method} {path} with HTTP {status}: {problem(response)}", status)
        refused = f"RunPod refused to {what} (HTTP {status}: {problem(response)})"
        if status in (401, 403):
            raise AccessDenied(f"{refused}; check {self.api_key_env}: it needs a key with read/write access")
        if status == 404:
            raise NotFound(refused)
        raise InvalidPlan(refused)

    # ---- serverless endpoints ------------------------------------------------------------------

    def endpoints(self, what: str) -> list[Json]:
        listed: list[Json] = self.request("GET", "/serverless", what).json().get("endpoints", [])
        return listed

    def create_endpoint(self, endpoint: Json, what: str, landed: Callable[[], Json | None]) -> Json:
        """POST the endpoint; before a retry, ask ``landed``: a create whose answer was lost may have landed."""
        for attempt in retrying(is_transient):
            with attempt:
                if attempt.retry_state.attempt_number > 1 and (found := landed()) is not None:
                    return found
                created: Json = self._send("POST", "/serverless", what, json=endpoint).json()
                return created
        raise AssertionError("unreachable")  # pragma: no cover

    def update_endpoint(self, endpoint_id: str, changes: Json, what: str) -> Json:
        updated: Json = self.request("PATCH", f"/serverless/{endpoint_id}", what, json=changes).json()
        return updated

    # ---- account secrets -----------------------------------------------------------------------

    def secrets(self) -> list[Json]:
        listed: list[Json] = self.request("GET", "/account/secrets", "list the account's secrets").json()["secrets"]
        return listed

    def create_secret(self, name: str, value: str, description: str) -> bool:
        """Create the secret; False when one of the name exists already (an earlier attempt may have made it)."""
        created = self.request("POST", "/account/secrets", f"create secret {name}", accept=(409,),
                               json={"name": name, "value": value, "description": description})
        return created.status_code != 409

    def update_secret(self, secret_id: str, name: str, **fields: str) -> None:
        self.request("PATCH", f"/account/secrets/{secret_id}", f"update secret {name}", json=fields)

    def close(self) -> None:
        self._http.close()
