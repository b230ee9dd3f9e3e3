"""Cloudflare's API v4 (over httpx): the token, requests retried while transient, the result envelope, the
GraphQL Analytics API, and what Cloudflare's refusals mean."""

from __future__ import annotations

import os
from typing import Any

import httpx

from flyaway.errors import AccessDenied, FlyawayError, InvalidPlan, MissingCredentials, NotFound
from flyaway.providers.http import call_with_retries, is_transient, transient_status
from flyaway.redaction import register_secret

#: Cloudflare error codes: authentication failed / bad identifier in the path
_AUTH_ERROR_CODES = {9106, 9109, 10000}
_BAD_IDENTIFIER_CODES = {7000, 7003}
_REQUEST_TIMEOUT_SECONDS = 30.0
#: the API v4, where a plan names no other address
CLOUDFLARE_API_URL = "https://api.cloudflare.com/client/v4"


class CloudflareApi:
    """One account's API v4 (at ``api_base_url`` when given), with the token ``token_env`` holds."""

    def __init__(self, api_base_url: str | None, token_env: str) -> None:
        token = os.environ.get(token_env)
        if not token:
            raise MissingCredentials(f"router.token_env: ${token_env} is not set on the worker "
                                     "(a Cloudflare API token with Load Balancing: Monitors and Pools Write)")
        register_secret(token)
        self.api_base_url, self.token_env = api_base_url or CLOUDFLARE_API_URL, token_env
        self._headers = {"Authorization": f"Bearer {token}"}

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[httpx.Response, dict[str, Any]]:
        """One API call, retried on 429/5xx/network errors; the response and its JSON body ({} if none)."""
        def send() -> httpx.Response:
            with httpx.Client(base_url=self.api_base_url, headers=self._headers,
                              timeout=_REQUEST_TIMEOUT_SECONDS) as client:
                response = client.request(method, path, json=body)
            if transient_status(response.status_code):
                response.raise_for_status()
            return response

        response = call_with_retries(send, is_transient)
        try:
            parsed = response.json()
        except ValueError:
            parsed = {}
        return response, parsed if isinstance(parsed, dict) else {}

    def request(self, method: str, path: str, what: str, body: dict[str, Any] | None = None) -> Any:
        """One API v4 call; returns the envelope's ``result``."""
        response, envelope = self._send(method, path, body)
        if response.is_success and envelope.get("success"):
            return envelope.get("result")
        raise self._error(response.status_code, envelope, what)

    def graphql(self, query: str, variables: dict[str, Any], what: str) -> dict[str, Any]:
        """A GraphQL Analytics API query; returns its ``data``.

        The API answers errors in the query with HTTP 200 and a non-empty ``errors`` array.
        """
        response, body = self._send("POST", "/graphql", {"query": query, "variables": variables})
        errors = body.get("errors") or []
        data = body.get("data")
        if response.is_success and not errors and isinstance(data, dict):
            return data
        detail = "; ".join(str(error.get("message")) for error in errors) or f"HTTP {response.status_code}"
        if response.status_code in (401, 403) or "does not have access" in detail:
            raise AccessDenied(f"Cloudflare analytics refused {what} with the token in ${self.token_env} "
                               f"({detail}); it needs Analytics: Read on the zone")
        raise InvalidPlan(f"Cloudflare analytics rejected {what} ({detail})")

    def _error(self, status: int, envelope: dict[str, Any], what: str) -> FlyawayError:
        errors = envelope.get("errors") or []
        codes = {error.get("code") for error in errors}
        detail = "; ".join(f"{error.get('code')}: {error.get('message')}" for error in errors) or f"HTTP {status}"
        if status in (401, 403) or codes & _AUTH_ERROR_CODES:
            return AccessDenied(f"Cloudflare refused {what} with the token in ${self.token_env} ({detail}); "
                                "it needs Load Balancing: Monitors and Pools Write on the account")
        if status == 404 or codes & _BAD_IDENTIFIER_CODES:
            return NotFound(f"{what} not found ({detail})")
        return InvalidPlan(f"Cloudflare rejected {what} ({detail})")
