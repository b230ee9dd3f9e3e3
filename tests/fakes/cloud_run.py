"""A fake of the Cloud Run Admin API v2 (REST) for ``google-cloud-run``'s REST transport.

Serves what flyaway calls, with the published resource shapes (proto3 JSON, camelCase, int64 as
strings, enums as the client sends them) and Google's error body ``{"error": {code, message,
status}}``:

- ``GET   /v2/projects/{p}/locations/{l}/services/{s}``
- ``POST  /v2/projects/{p}/locations/{l}/services?serviceId=s`` (409 ALREADY_EXISTS when taken)
- ``PATCH /v2/projects/{p}/locations/{l}/services/{s}`` (404 unless it exists)
- ``GET   /v2/projects/{p}/locations/{l}/operations/{id}``: a long-running operation whose
  ``metadata`` and ``response`` are the Service (``@type`` google.cloud.run.v2.Service), done
  after :attr:`rollout_polls` reads.

Writes are checked as Cloud Run checks them (service id, one container with an image, GPU needs
``nvidia.com/gpu`` in the limits, CPU always allocated, at least 4 CPUs and 16 GiB, probe timeout
within the period, volume mounts naming volumes): violations answer 400 INVALID_ARGUMENT. A new
template makes a new revision; with :attr:`failing_revisions` set the rollout ends with Cloud
Run's startup-probe error and the old revision keeps serving. Projects in :attr:`denied` answer 403
PERMISSION_DENIED. The service's ``uri`` is :attr:`service_uri` (a local server standing in for it).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.servers import HttpServer, JsonHandler

SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"
_SERVICE = re.compile(r"^/v2/projects/([^/]+)/locations/([^/]+)/services/([^/:]+)$")
_SERVICES = re.compile(r"^/v2/projects/([^/]+)/locations/([^/]+)/services$")
_OPERATION = re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+/operations/[^/:]+)$")
_SERVICE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}
#: google.rpc.Code FAILED_PRECONDITION, what a failed rollout's operation carries
FAILED_PRECONDITION = 9
_SUCCEEDED, _FAILED = 4, 3  # Condition.State as ints (the client sends and reads enums as ints)


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _quantity_mib(value: str) -> int:
    match = re.match(r"^([0-9]+)(Mi|Gi)$", value or "")
    if not match:
        raise ApiError(400, f"Invalid memory limit '{value}'")
    return int(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


def _cpus(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def check_service(service: dict[str, Any]) -> None:
    """What Cloud Run refuses in a service spec, as far as flyaway's services go."""
    template = service.get("template") or {}
    containers = template.get("containers") or []
    if len(containers) != 1 or not containers[0].get("image"):
        raise ApiError(400, "spec.template.spec.containers: exactly one container with an image is required")
    container = containers[0]
    limits = (container.get("resources") or {}).get("limits") or {}
    if (template.get("nodeSelector") or {}).get("accelerator"):
        if limits.get("nvidia.com/gpu") != "1":
            raise ApiError(400, "nvidia.com/gpu limit of 1 is required with an accelerator")
        if (container.get("resources") or {}).get("cpuIdle", False):  # set resources leave it false unless true
            raise ApiError(400, "GPU services require CPU to be always allocated (cpu_idle=false)")
        if _cpus(limits.get("cpu", "1")) < 4 or _quantity_mib(limits.get("memory", "512Mi")) < 16 * 1024:
            raise ApiError(400, "GPU services require at least 4 CPU and 16Gi memory")
    probe = container.get("startupProbe") or {}
    if probe and int(probe.get("timeoutSeconds", 1)) > int(probe.get("periodSeconds", 10)):
        raise ApiError(400, "startupProbe.timeoutSeconds must not exceed periodSeconds")
    volumes = {volume["name"] for volume in template.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise ApiError(400, f"volume mount '{mount['name']}' names no volume")
    scaling = template.get("scaling") or {}
    if int(scaling.get("minInstanceCount", 0)) > int(scaling.get("maxInstanceCount", 100)):
        raise ApiError(400, "minInstanceCount must not exceed maxInstanceCount")


class _Handler(JsonHandler):
    def _route(self) -> None:
        fake: FakeCloudRun = self.owner
        parts = urlsplit(self.path)
        try:
            status, body = fake.handle(self.command, parts.path, parse_qs(parts.query), self.read_json())
        except ApiError as error:
            status, body = error.code, {"error": {"code": error.code, "message": error.message,
                                                  "status": _STATUS[error.code]}}
        self.send_json(status, body)

    do_GET = do_POST = do_PATCH = _route


class FakeCloudRun(HttpServer):
    handler = _Handler

    def __init__(self, service_uri: str = "https://service.example.a.run.app") -> None:
        self.service_uri = service_uri
        self.rollout_polls = 1
        self.failing_revisions = False
        self.denied: set[str] = set()
        #: full service name -> the service as served
        self.services: dict[str, dict[str, Any]] = {}
        #: operation name -> {"left": polls before done, "service": name, "error": ...}
        self.operations: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.writes: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((method, path))
            project = path.split("/")[3] if path.startswith("/v2/projects/") else ""
            if project in self.denied:
                raise ApiError(403, f"Permission 'run.services.get' denied on project '{project}'")
            if _SERVICE.match(path) and method == "GET":
                return 200, self._service(path[4:])
            if _SERVICES.match(path) and method == "POST":
                service_id = query.get("serviceId", [""])[0]
                return 200, self._write(f"{path[4:]}/{service_id}", service_id, body, create=True)
            if (match := _SERVICE.match(path)) and method == "PATCH":
                return 200, self._write(path[4:], match.group(3), body, create=False)
            if (match := _OPERATION.match(path)) and method == "GET":
                return 200, self._poll(match.group(1))
        raise ApiError(404, f"no route for {method} {path}")

    def _service(self, name: str) -> dict[str, Any]:
        if name not in self.services:
            raise ApiError(404, f"Resource '{name.rsplit('/', 1)[-1]}' of kind 'SERVICE' in region "
                                f"'{name.split('/')[3]}' in project '{name.split('/')[1]}' does not exist.")
        return self.services[name]

    def _write(self, name: str, service_id: str, body: dict[str, Any], *, create: bool) -> dict[str, Any]:
        if not _SERVICE_ID.match(service_id):
            raise ApiError(400, f"service_id '{service_id}' is invalid")
        if create and name in self.services:
            raise ApiError(409, f"Resource '{service_id}' already exists.")
        if not create:
            self._service(name)
        check_service(body)
        self.writes.append(body)
        old = self.services.get(name, {})
        generation = int(old.get("generation", "0")) + 1
        template_changed = old.get("template") != body.get("template")
        revision = (f"{service_id}-{generation:05d}-{uuid.uuid4().hex[:3]}" if template_changed
                    else old.get("latestCreatedRevision"))
        served = {**old, **body, "name": name, "uid": old.get("uid", str(uuid.uuid4())),
                  "generation": str(generation), "reconciling": True, "latestCreatedRevision": revision,
                  "latestReadyRevision": old.get("latestReadyRevision", ""), "uri": self.service_uri,
                  "etag": f'"{uuid.uuid4().hex}"'}
        self.services[name] = served
        operation = f"{name.rsplit('/services/', 1)[0]}/operations/{uuid.uuid4()}"
        self.operations[operation] = {"left": self.rollout_polls, "service": name,
                                      "fail": self.failing_revisions and template_changed}
        return self._operation_json(operation)

    def _poll(self, name: str) -> dict[str, Any]:
        if name not in self.operations:
            raise ApiError(404, f"operation {name} not found")
        operation = self.operations[name]
        if operation["left"] > 0:
            operation["left"] -= 1
            if operation["left"] == 0:
                self._finish(operation)
        return self._operation_json(name)

    def _finish(self, operation: dict[str, Any]) -> None:
        service = self.services[operation["service"]]
        service["reconciling"] = False
        service["observedGeneration"] = service["generation"]
        if operation["fail"]:
            message = (f"Revision '{service['latestCreatedRevision']}' is not ready and cannot serve traffic. "
                       f"The user-provided container failed the configured startup probe checks.")
            service["terminalCondition"] = {"type": "Ready", "state": _FAILED, "message": message}
            operation["error"] = {"code": FAILED_PRECONDITION, "message": message}
        else:
            service["latestReadyRevision"] = service["latestCreatedRevision"]
            service["terminalCondition"] = {"type": "Ready", "state": _SUCCEEDED}

    def _operation_json(self, name: str) -> dict[str, Any]:
        operation = self.operations[name]
        service = json.loads(json.dumps(self.services[operation["service"]]))
        done = operation["left"] == 0
        body: dict[str, Any] = {"name": name, "metadata": {"@type": SERVICE_TYPE, **service}, "done": done}
        if done and "error" in operation:
            body["error"] = operation["error"]
        elif done:
            body["response"] = {"@type": SERVICE_TYPE, **service}
        return body
