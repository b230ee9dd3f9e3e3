"""A fake of RunPod's REST API v2 account secrets (``docs.runpod.io/api-reference-v2/account``).

- ``GET    /v2/account/secrets[?name=]`` -> ``{"secrets": [{id, name, description, createdAt,
  valueLastUpdatedAt}]}`` (values are never returned)
- ``POST   /v2/account/secrets`` ``{name, value, description?}`` -> 201; 409 when the name is taken
- ``PATCH  /v2/account/secrets/{id}`` ``{value?, description?}`` (at least one) -> 200
- ``DELETE /v2/account/secrets/{id}`` -> 204

Names follow the published schema (``^[a-zA-Z_][a-zA-Z0-9_.\\-/]*$``, at most 191 characters,
no ``RUNPOD`` prefix) and values must not be empty; violations answer 422. Errors are
``application/problem+json`` ``{title, status, detail}``. A request without ``Authorization:
Bearer <api_key>`` gets 401; with :attr:`denied` set, 403. Values are kept in :attr:`values`
for assertions.
"""

from __future__ import annotations

import re
import secrets as random_tokens
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.servers import HttpServer, JsonHandler

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.\-/]{0,190}$")
_ONE = re.compile(r"^/v2/account/secrets/([^/]+)$")
_TITLES = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
           422: "Unprocessable Entity"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Problem(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class _Handler(JsonHandler):
    def _route(self) -> None:
        fake: FakeRunpodSecrets = self.owner
        status, body = fake.handle(self.command, self.path, self.headers.get("Authorization", ""), self.read_json())
        if status == 204:
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_json(status, body)

    do_GET = do_POST = do_PATCH = do_DELETE = _route


class FakeRunpodSecrets(HttpServer):
    handler = _Handler

    def __init__(self, api_key: str = "rp-fake-key") -> None:
        self.api_key = api_key
        self.denied = False
        #: id -> metadata as served
        self.secrets: dict[str, dict[str, Any]] = {}
        #: name -> value
        self.values: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @property
    def api_url(self) -> str:
        return self.endpoint + "/v2"

    def by_name(self, name: str) -> dict[str, Any]:
        return next(secret for secret in self.secrets.values() if secret["name"] == name)

    def handle(self, method: str, raw_path: str, authorization: str, body: Any) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        with self._lock:
            self.requests.append((method, parts.path))
            try:
                if authorization != f"Bearer {self.api_key}":
                    raise Problem(401, "invalid bearer token")
                if self.denied:
                    raise Problem(403, "access denied")
                return self._dispatch(method, parts.path, parse_qs(parts.query), body)
            except Problem as problem:
                return problem.status, {"title": _TITLES[problem.status], "status": problem.status,
                                        "detail": problem.detail}

    def _dispatch(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if path == "/v2/account/secrets" and method == "GET":
            wanted = (query.get("name") or [None])[0]
            return 200, {"secrets": [dict(s) for s in self.secrets.values()
                                     if wanted is None or s["name"].lower() == wanted.lower()]}
        if path == "/v2/account/secrets" and method == "POST":
            return 201, self._create(body or {})
        match = _ONE.match(path)
        if match is None or match.group(1) not in self.secrets:
            raise Problem(404, "resource not found")
        secret = self.secrets[match.group(1)]
        if method == "PATCH":
            return 200, self._update(secret, body or {})
        if method == "DELETE":
            del self.secrets[secret["id"]]
            del self.values[secret["name"]]
            return 204, None
        raise Problem(404, "resource not found")

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        name, value = body.get("name", ""), body.get("value", "")
        if not isinstance(name, str) or not _NAME.match(name) or name.upper().startswith("RUNPOD"):
            raise Problem(422, f"name '{name}' is invalid")
        if not isinstance(value, str) or not value:
            raise Problem(422, "value must be a non-empty string")
        if name in self.values:
            raise Problem(409, f"a secret named '{name}' already exists")
        secret = {"id": random_tokens.token_hex(6), "name": name, "description": body.get("description"),
                  "createdAt": _now(), "valueLastUpdatedAt": _now()}
        self.secrets[secret["id"]] = secret
        self.values[name] = value
        return dict(secret)

    def _update(self, secret: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        if not set(body) & {"value", "description"} or set(body) - {"value", "description"}:
            raise Problem(422, "send value and/or description, nothing else")
        if "value" in body:
            if not isinstance(body["value"], str) or not body["value"]:
                raise Problem(422, "value must be a non-empty string")
            self.values[secret["name"]] = body["value"]
            secret["valueLastUpdatedAt"] = _now()
        if "description" in body:
            secret["description"] = body["description"]
        return dict(secret)
