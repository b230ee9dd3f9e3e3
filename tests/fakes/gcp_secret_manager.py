"""A fake of GCP Secret Manager's REST API (v1), for the real client library's REST transport.

Serves what flyaway calls, with the published JSON shapes (proto3 JSON: camelCase, bytes as
base64, int64 as strings) and Google's error body ``{"error": {"code", "message", "status"}}``:

- ``GET    /v1/projects/{project}/secrets/{secret}``
- ``POST   /v1/projects/{project}/secrets?secretId=...`` (409 ALREADY_EXISTS when taken)
- ``POST   /v1/projects/{project}/secrets/{secret}:addVersion`` (checks ``dataCrc32c`` when sent)
- ``GET    /v1/projects/{project}/secrets/{secret}/versions/{version|latest}:access``
  (404 when the secret has no versions; 400 FAILED_PRECONDITION when the version is not enabled)

Secret ids must match ``[A-Za-z0-9_-]{1,255}`` (400 INVALID_ARGUMENT). Projects in ``denied``
answer 403 PERMISSION_DENIED to everything; ``read_only`` ones refuse writes the same way.
Point the client at :attr:`endpoint` (``client_options.api_endpoint``) with anonymous credentials.
"""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import google_crc32c

from tests.support.servers import HttpServer, JsonHandler

_SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_SECRETS = re.compile(r"^/v1/projects/([^/]+)/secrets$")
_SECRET = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)$")
_ADD_VERSION = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+):addVersion$")
_ACCESS = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)/versions/([^/:]+):access$")
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status or _STATUS[code]


@dataclass
class FakeVersion:
    number: int
    data: bytes
    state: str = "ENABLED"
    create_time: str = field(default_factory=_now)


@dataclass
class FakeSecret:
    name: str
    create_time: str = field(default_factory=_now)
    versions: list[FakeVersion] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "replication": {"automatic": {}}, "createTime": self.create_time,
                "etag": f'"{len(self.versions)}"'}

    def version_json(self, version: FakeVersion) -> dict[str, Any]:
        return {"name": f"{self.name}/versions/{version.number}", "createTime": version.create_time,
                "state": version.state, "replicationStatus": {"automatic": {}}, "etag": '"1"',
                "clientSpecifiedPayloadChecksum": True}


class _Handler(JsonHandler):
    def _route(self) -> None:
        fake: FakeSecretManager = self.owner
        status, body = fake.handle(self.command, self.path, self.read_json())
        self.send_json(status, body)

    do_GET = do_POST = _route


class FakeSecretManager(HttpServer):
    handler = _Handler

    def __init__(self) -> None:
        #: "projects/p/secrets/s" -> secret
        self.secrets: dict[str, FakeSecret] = {}
        self.denied: set[str] = set()
        self.read_only: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def value(self, project: str, secret_id: str, version: int | None = None) -> bytes:
        """The data of a version (the latest when None), for assertions."""
        versions = self.secrets[f"projects/{project}/secrets/{secret_id}"].versions
        return (versions[-1] if version is None else versions[version - 1]).data

    def version_count(self, project: str) -> int:
        prefix = f"projects/{project}/secrets/"
        return sum(len(s.versions) for name, s in self.secrets.items() if name.startswith(prefix))

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        with self._lock:
            self.requests.append((method, path))
            try:
                return 200, self._dispatch(method, path, parse_qs(parts.query), body or {})
            except ApiError as error:
                return error.code, {"error": {"code": error.code, "message": error.message,
                                              "status": error.status}}

    def _dispatch(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]) -> Any:
        for pattern, wanted, handler in ((_SECRETS, "POST", self._create), (_SECRET, "GET", self._get),
                                         (_ADD_VERSION, "POST", self._add_version),
                                         (_ACCESS, "GET", self._access)):
            match = pattern.match(path)
            if match and method == wanted:
                project = match.group(1)
                if project in self.denied or (method == "POST" and project in self.read_only):
                    raise ApiError(403, f"Permission denied on resource project {project}.")
                return handler(*match.groups(), query=query, body=body)
        raise ApiError(404, f"no route for {method} {path}")

    def _secret(self, project: str, secret_id: str) -> FakeSecret:
        secret = self.secrets.get(f"projects/{project}/secrets/{secret_id}")
        if secret is None:
            raise ApiError(404, f"Secret [projects/{project}/secrets/{secret_id}] not found.")
        return secret

    def _create(self, project: str, *, query: dict[str, list[str]], body: dict[str, Any]) -> Any:
        secret_id = (query.get("secretId") or [""])[0]
        if not _SECRET_ID.match(secret_id):
            raise ApiError(400, f"Secret id [{secret_id}] is invalid: use [a-zA-Z_0-9-]{{1,255}}.")
        if "automatic" not in body.get("replication", {}) and "userManaged" not in body.get("replication", {}):
            raise ApiError(400, "Secret.replication is required.")
        name = f"projects/{project}/secrets/{secret_id}"
        if name in self.secrets:
            raise ApiError(409, f"Secret [{name}] already exists.")
        self.secrets[name] = FakeSecret(name)
        return self.secrets[name].to_json()

    def _get(self, project: str, secret_id: str, **_: Any) -> Any:
        return self._secret(project, secret_id).to_json()

    def _add_version(self, project: str, secret_id: str, *, body: dict[str, Any], **_: Any) -> Any:
        secret = self._secret(project, secret_id)
        payload = body.get("payload") or {}
        data = base64.b64decode(payload.get("data", ""))
        if "dataCrc32c" in payload and int(payload["dataCrc32c"]) != google_crc32c.value(data):
            raise ApiError(400, "Checksum mismatch: data_crc32c does not match the payload.")
        version = FakeVersion(len(secret.versions) + 1, data)
        secret.versions.append(version)
        return secret.version_json(version)

    def _access(self, project: str, secret_id: str, version_id: str, **_: Any) -> Any:
        secret = self._secret(project, secret_id)
        if version_id == "latest":
            if not secret.versions:
                raise ApiError(404, f"Secret [{secret.name}] not found or has no versions.")
            version = secret.versions[-1]
        elif version_id.isdigit() and 0 < int(version_id) <= len(secret.versions):
            version = secret.versions[int(version_id) - 1]
        else:
            raise ApiError(404, f"Secret Version [{secret.name}/versions/{version_id}] not found.")
        if version.state != "ENABLED":
            raise ApiError(400, f"Secret Version [{secret.name}/versions/{version.number}] is in {version.state} "
                                f"state.", status="FAILED_PRECONDITION")
        return {"name": f"{secret.name}/versions/{version.number}",
                "payload": {"data": base64.b64encode(version.data).decode(),
                            "dataCrc32c": str(google_crc32c.value(version.data))}}
