"""A fake Fly Machines API on loopback, for tests.

It follows the Machines API OpenAPI document (``docs.machines.dev``; copy in
``superfly/fly-openapi-sdk``) for the endpoints flyaway uses: paths under ``/v1``, JSON
shapes, status codes and the error body ``{"error": ...}``. Behaviour that the document does
not spell out follows flyctl / fly-go: ``wait`` blocks up to ``timeout`` seconds (at most 60)
and answers 408 when the state was not reached; destroying a running Machine without
``force=true`` is refused with 412 ``failed_precondition``; a fork is a new volume created
from ``source_volume_id`` that is ``hydrating`` until ready.

Secrets follow Fly's documented model: set through ``POST /apps/{app}/secrets`` (``{"values":
{name: value or null}}``), listed with names and digests only (values reach callers inside the
app alone, which the fake never has), and put into the env of every Machine the app creates
afterwards, together with the runtime variables Fly sets (``FLY_APP_NAME``, ``FLY_MACHINE_ID``,
``FLY_REGION``). That env is :attr:`FakeMachine.boot_env`: not part of the Machine's config, so
the API never shows it; a secret named like a config env variable overrides it there.

State lives in memory. Tests script it with ``add_*`` helpers, the delay attributes,
:meth:`FakeFlyMachinesAPI.fail_next` / :meth:`FakeFlyMachinesAPI.reset_next` to inject
failures, and the ``on_machine_created`` / ``on_machine_destroyed`` hooks (for example to run
a local process standing in for an agent Machine).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets as random_tokens
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.servers import HttpServer, QuietHandler

MAX_WAIT_SECONDS = 60
_DESTROYABLE_STATES = {"stopped", "suspended", "failed", "created"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _machine_id() -> str:
    return random_tokens.token_hex(7)


def _volume_id() -> str:
    return "vol_" + random_tokens.token_hex(8)


def _image_ref(image: str) -> dict[str, str]:
    """``registry.fly.io/app:tag`` -> its registry, repository and tag, as the API reports them."""
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    first, _, rest = name.partition("/")
    registry, repository = (first, rest) if "." in first and rest else ("docker.io", name)
    return {"registry": registry, "repository": repository, "tag": tag,
            "digest": "sha256:" + hashlib.sha256(image.encode()).hexdigest()}


class FakeApiError(Exception):
    """Raised inside a handler: becomes ``{"error": message}`` with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class FakeMachine:
    app: str
    id: str
    name: str
    region: str
    config: dict[str, Any]
    state: str = "created"
    cordoned: bool = False
    #: what Fly adds to ``config.env`` when the Machine boots: the app's secrets and Fly's runtime variables
    boot_env: dict[str, str] = field(default_factory=dict)
    instance_id: str = field(default_factory=lambda: random_tokens.token_hex(13).upper())
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    @property
    def mounted_volume_ids(self) -> list[str]:
        return [mount["volume"] for mount in self.config.get("mounts") or []]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "state": self.state, "region": self.region,
                "instance_id": self.instance_id, "private_ip": "fdaa:0:1:a7b:1::2", "config": self.config,
                "image_ref": _image_ref(str(self.config.get("image", ""))), "cordoned": self.cordoned,
                "created_at": self.created_at, "updated_at": self.updated_at, "events": []}


@dataclass
class FakeVolume:
    app: str
    id: str
    name: str
    region: str
    size_gb: int
    state: str = "created"
    attached_machine_id: str | None = None
    source_volume_id: str | None = None
    created_at: str = field(default_factory=_now)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "state": self.state, "region": self.region,
                "zone": "a1b2", "size_gb": self.size_gb, "encrypted": True,
                "attached_machine_id": self.attached_machine_id,
                "attached_alloc_id": None, "snapshot_retention": 5, "auto_backup_enabled": True,
                "fstype": "ext4", "created_at": self.created_at}


@dataclass
class FakeApp:
    name: str
    org_slug: str
    id: str = field(default_factory=lambda: random_tokens.token_hex(8))
    machines: dict[str, FakeMachine] = field(default_factory=dict)
    volumes: dict[str, FakeVolume] = field(default_factory=dict)
    snapshots: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: name -> the API's view of a secret (no value)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    secret_values: dict[str, str] = field(default_factory=dict)
    secrets_version: int = 0
    ips: dict[str, dict[str, Any]] = field(default_factory=dict)


Query = dict[str, list[str]]


@dataclass
class Reply:
    """What an endpoint answers; ``then`` runs after the state lock is released (hooks)."""

    status: int
    payload: Any
    then: Callable[[], None] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    """One exchange as the fake saw it (``status`` is None when the connection was dropped)."""

    method: str
    path: str
    query: Query
    body: Any
    at: float
    status: int | None = None
    response: Any = None


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    times: int
    status: int | None  # None: drop the connection without an answer
    headers: dict[str, str]
    body: dict[str, Any]
    after: bool  # carry the request out first, then fail the answer


class _FlyHandler(QuietHandler):
    owner: FakeFlyMachinesAPI

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fake = self.owner
        url = urlsplit(self.path)
        path = unquote(url.path).removeprefix("/v1")
        query = parse_qs(url.query)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not url.path.startswith("/v1/"):
            return self._answer(Reply(404, {"error": "404 page not found"}))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._answer(Reply(400, {"error": "request body is not JSON"}))
        record = RecordedRequest(self.command, path, query, body, time.monotonic())
        fake.requests.append(record)
        fault = fake._take_fault(self.command, path)
        reply: Reply | None = None
        if not fault or fault.after:
            reply = self._dispatch(path, query, body)
            if reply.then:
                reply.then()
        if fault:
            reply = Reply(fault.status, fault.body, headers=fault.headers) if fault.status else None
        if reply is None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        record.status, record.response = reply.status, reply.payload
        self._answer(reply)

    def _dispatch(self, path: str, query: Query, body: Any) -> Reply:
        fake = self.owner
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme not in ("Bearer", "FlyV1") or token != fake.token:
            return Reply(401, {"error": "You must be authenticated to view this."})
        for method, pattern, endpoint in _ROUTES:
            match = pattern.fullmatch(path)
            if method == self.command and match:
                ids = [match["id"]] if "id" in match.groupdict() else []
                try:
                    handle: Callable[..., Reply] = getattr(fake, endpoint)
                    with fake._changed:
                        return handle(fake._app(match["app"]), *ids, query, body)
                except FakeApiError as exc:
                    return Reply(exc.status, {"error": str(exc)})
        return Reply(404, {"error": f"no route for {self.command} {path}"})

    def _answer(self, reply: Reply) -> None:
        data = b"" if reply.payload is None or reply.status == 204 else json.dumps(reply.payload).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Fly-Request-Id", random_tokens.token_hex(8))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class FakeFlyMachinesAPI(HttpServer):
    """Start with ``with FakeFlyMachinesAPI(token) as fake:``; point clients at ``fake.base_url``."""

    handler = _FlyHandler

    def __init__(self, token: str = "fake-fly-token") -> None:
        self.token = token
        self.apps: dict[str, FakeApp] = {}
        self.denied_apps: set[str] = set()
        self.requests: list[RecordedRequest] = []
        #: seconds from create (or start) to ``started``; None: stays ``created`` until a test moves it
        self.machine_start_delay: float | None = 0.0
        #: seconds from stop to ``stopped``
        self.machine_stop_delay: float = 0.0
        #: seconds a fork stays ``hydrating``; None: never becomes ready
        self.fork_ready_delay: float | None = 0.0
        self.on_machine_created: Callable[[FakeMachine], None] | None = None
        self.on_machine_destroyed: Callable[[FakeMachine], None] | None = None
        self._changed = threading.Condition()
        self._faults: list[_Fault] = []
        self._timers: list[threading.Timer] = []

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{self.endpoint}/v1"

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        super().stop()

    # -- scripting ------------------------------------------------------------------------

    def add_app(self, name: str, org_slug: str = "personal") -> FakeApp:
        with self._changed:
            return self.apps.setdefault(name, FakeApp(name, org_slug))

    def add_machine(self, app: str, name: str, *, region: str = "ord", state: str = "started",
                    config: dict[str, Any] | None = None) -> FakeMachine:
        with self._changed:
            machine = self._boot(self.apps[app], FakeMachine(
                app, _machine_id(), name, region, config or {"image": "registry.fly.io/app:deployment-1"}, state))
            self.apps[app].machines[machine.id] = machine
            for volume_id in machine.mounted_volume_ids:
                self.apps[app].volumes[volume_id].attached_machine_id = machine.id
            return machine

    def add_volume(self, app: str, name: str, *, region: str = "ord", size_gb: int = 10) -> FakeVolume:
        with self._changed:
            volume = FakeVolume(app, _volume_id(), name, region, size_gb)
            self.apps[app].volumes[volume.id] = volume
            return volume

    def add_secret(self, app: str, name: str, value: str) -> None:
        with self._changed:
            self._set_secret(self.apps[app], name, value)

    def add_ip(self, app: str, ip: str, *, shared: bool = False, region: str = "global") -> None:
        with self._changed:
            self.apps[app].ips[ip] = {"ip": ip, "region": region, "service_name": "", "shared": shared,
                                      "created_at": _now()}

    def set_machine_state(self, app: str, machine_id: str, state: str) -> None:
        with self._changed:
            self._set_state(self.apps[app].machines[machine_id], state)

    def set_volume_state(self, app: str, volume_id: str, state: str) -> None:
        with self._changed:
            self._set_volume_state(self.apps[app].volumes[volume_id], state)

    def fail_next(self, method: str, path: str, status: int, *, times: int = 1,
                  headers: dict[str, str] | None = None, message: str = "injected failure",
                  after: bool = False) -> None:
        """Answer the next ``times`` requests whose path (below ``/v1``) matches the regex
        ``path`` with ``status``; with ``after``, carry the request out first."""
        self._add_fault(method, path, times, status, headers or {}, {"error": message}, after)

    def reset_next(self, method: str, path: str, *, times: int = 1, after: bool = False) -> None:
        """Close the connection without an answer (the client sees a reset / disconnect)."""
        self._add_fault(method, path, times, None, {}, {}, after)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        pattern = re.compile(path)
        return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    # -- internals used by the handler ----------------------------------------------------

    def _add_fault(self, method: str, path: str, times: int, status: int | None,
                   headers: dict[str, str], body: dict[str, Any], after: bool) -> None:
        with self._changed:
            self._faults.append(_Fault(method, re.compile(path), times, status, headers, body, after))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._changed:
            for fault in self._faults:
                if fault.method == method and fault.path.fullmatch(path) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _set_state(self, machine: FakeMachine, state: str) -> None:
        """Callers hold ``self._changed``."""
        machine.state = state
        machine.updated_at = _now()
        self._changed.notify_all()

    def _set_volume_state(self, volume: FakeVolume, state: str) -> None:
        """Callers hold ``self._changed``."""
        volume.state = state
        self._changed.notify_all()

    @staticmethod
    def _hook(hook: Callable[[FakeMachine], None] | None, machine: FakeMachine) -> Callable[[], None] | None:
        return (lambda: hook(machine)) if hook else None

    def _after(self, delay: float | None, change: Callable[[], None]) -> None:
        """Run ``change`` under the lock now, after ``delay`` seconds, or never (None)."""
        if delay is None:
            return
        if delay <= 0:
            change()
            return

        def fire() -> None:
            with self._changed:
                change()
        timer = threading.Timer(delay, fire)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    @staticmethod
    def _set_secret(app: FakeApp, name: str, value: str | None) -> None:
        """Callers hold ``self._changed``; ``None`` unsets."""
        if value is None:
            app.secrets.pop(name, None)
            app.secret_values.pop(name, None)
            return
        created = app.secrets.get(name, {}).get("created_at", _now())
        app.secrets[name] = {"name": name, "created_at": created, "updated_at": _now(),
                             "digest": hashlib.sha256(value.encode()).hexdigest()[:16]}
        app.secret_values[name] = value

    @staticmethod
    def _boot(app: FakeApp, machine: FakeMachine) -> FakeMachine:
        """What Fly injects into a new Machine's env: the app's secrets as they are now, and its runtime variables."""
        machine.boot_env = {**app.secret_values, "FLY_APP_NAME": app.name, "FLY_MACHINE_ID": machine.id,
                            "FLY_REGION": machine.region}
        return machine

    def _app(self, name: str) -> FakeApp:
        if name in self.denied_apps:
            raise FakeApiError(403, "unauthorized")
        if name not in self.apps:
            raise FakeApiError(404, "app not found")
        return self.apps[name]

    def _machine(self, app: FakeApp, machine_id: str) -> FakeMachine:
        machine = app.machines.get(machine_id)
        if machine is None:
            raise FakeApiError(404, "machine not found")
        return machine

    def _volume(self, app: FakeApp, volume_id: str) -> FakeVolume:
        volume = app.volumes.get(volume_id)
        if volume is None or volume.state == "destroyed":
            raise FakeApiError(404, "volume not found")
        return volume

    # -- endpoints: each runs with ``self._changed`` held and gets the app, the id from the
    # -- path if there is one, the query and the JSON body --------------------------------

    def get_app(self, app: FakeApp, query: Query, body: Any) -> Reply:
        return Reply(200, {"id": app.id, "name": app.name, "status": "deployed",
                           "organization": {"name": app.org_slug, "slug": app.org_slug},
                           "machine_count": len(app.machines), "volume_count": len(app.volumes)})

    def delete_app(self, app: FakeApp, query: Query, body: Any) -> Reply:
        """Deleting an app takes its Machines, volumes and snapshots with it (202, as the API answers)."""
        del self.apps[app.name]
        for machine in app.machines.values():
            self._set_state(machine, "destroyed")
        return Reply(202, None)

    def list_machines(self, app: FakeApp, query: Query, body: Any) -> Reply:
        include_deleted = _flag(query, "include_deleted")
        wanted_metadata = {key.removeprefix("metadata."): values[0] for key, values in query.items()
                           if key.startswith("metadata.")}
        machines = [m for m in app.machines.values()
                    if (include_deleted or m.state != "destroyed")
                    and ("region" not in query or m.region == query["region"][0])
                    and all((m.config.get("metadata") or {}).get(k) == v for k, v in wanted_metadata.items())]
        return Reply(200, [m.to_json() for m in machines])

    def create_machine(self, app: FakeApp, query: Query, body: Any) -> Reply:
        body = _json_object(body)
        config = body.get("config") or {}
        if not config.get("image"):
            raise FakeApiError(422, "invalid config.image: image is required")
        volumes = [self._volume(app, mount.get("volume", "")) for mount in config.get("mounts") or []]
        region = body.get("region") or (volumes[0].region if volumes else "ord")
        for volume in volumes:
            if volume.region != region:
                raise FakeApiError(422, f"volume {volume.id} is in region {volume.region}, "
                                        f"machine requested {region}")
            if volume.attached_machine_id:
                raise FakeApiError(412, f"failed_precondition: volume {volume.id} is attached to "
                                        f"machine {volume.attached_machine_id}")
        name = body.get("name") or "machine-" + random_tokens.token_hex(4)
        machine = self._boot(app, FakeMachine(app.name, _machine_id(), name, region, config))
        app.machines[machine.id] = machine
        for volume in volumes:
            volume.attached_machine_id = machine.id
        if not body.get("skip_launch"):
            self._after(self.machine_start_delay, lambda: self._set_state(machine, "started"))
        return Reply(200, machine.to_json(), self._hook(self.on_machine_created, machine))

    def get_machine(self, app: FakeApp, machine_id: str, query: Query, body: Any) -> Reply:
        return Reply(200, self._machine(app, machine_id).to_json())

    def destroy_machine(self, app: FakeApp, machine_id: str, query: Query, body: Any) -> Reply:
        machine = self._machine(app, machine_id)
        if machine.state == "destroyed":
            raise FakeApiError(404, "machine not found")
        if not _flag(query, "force") and machine.state not in _DESTROYABLE_STATES:
            raise FakeApiError(412, "failed_precondition: unable to destroy machine, not currently "
                                    "stopped, suspended, failed or created")
        for volume in app.volumes.values():
            if volume.attached_machine_id == machine.id:
                volume.attached_machine_id = None
        self._set_state(machine, "destroyed")
        return Reply(200, {"ok": True}, self._hook(self.on_machine_destroyed, machine))

    def cordon_machine(self, app: FakeApp, machine_id: str, query: Query, body: Any) -> Reply:
        self._machine(app, machine_id).cordoned = True
        return Reply(200, {"ok": True})

    def stop_machine(self, app: FakeApp, machine_id: str, query: Query, body: Any) -> Reply:
        if body is not None:
            _json_object(body)
        machine = self._machine(app, machine_id)
        if machine.state in ("started", "starting", "created"):
            self._set_state(machine, "stopping")
            self._after(self.machine_stop_delay, lambda: self._set_state(machine, "stopped"))
        return Reply(200, {"ok": True})

    def wait_machine(self, app: FakeApp, machine_id: str, query: Query, body: Any) -> Reply:
        machine = self._machine(app, machine_id)
        state = query.get("state", ["started"])[0]
        if state not in ("started", "stopped", "suspended", "destroyed", "failed", "settled"):
            raise FakeApiError(400, f"invalid state {state!r}")
        try:
            timeout = int(query.get("timeout", [str(MAX_WAIT_SECONDS)])[0])
        except ValueError as exc:
            raise FakeApiError(400, "timeout must be an integer number of seconds") from exc
        if not 0 < timeout <= MAX_WAIT_SECONDS:
            raise FakeApiError(400, f"timeout must be between 1 and {MAX_WAIT_SECONDS} seconds")
        if not self._changed.wait_for(lambda: machine.state == state, timeout=timeout):
            raise FakeApiError(408, f"deadline_exceeded: machine did not reach state {state} "
                                    f"(currently {machine.state})")
        return Reply(200, {"ok": True, "state": machine.state, "version": machine.instance_id})

    def list_volumes(self, app: FakeApp, query: Query, body: Any) -> Reply:
        return Reply(200, [v.to_json() for v in app.volumes.values()])

    def create_volume(self, app: FakeApp, query: Query, body: Any) -> Reply:
        body = _json_object(body)
        name = body.get("name") or ""
        if not re.fullmatch(r"[a-z0-9_]{1,30}", name):
            raise FakeApiError(422, "name must be 1-30 lowercase letters, digits or underscores")
        source = self._volume(app, body["source_volume_id"]) if body.get("source_volume_id") else None
        region = body.get("region") or (source.region if source else "")
        size_gb = body.get("size_gb") or (source.size_gb if source else 0)
        if not region or size_gb <= 0:
            raise FakeApiError(400, "region and size_gb are required for a new volume")
        volume = FakeVolume(app.name, _volume_id(), name, region, size_gb,
                            state="hydrating" if source else "created",
                            source_volume_id=source.id if source else None)
        app.volumes[volume.id] = volume
        if source:
            self._after(self.fork_ready_delay, lambda: self._set_volume_state(volume, "created"))
        return Reply(200, volume.to_json())

    def get_volume(self, app: FakeApp, volume_id: str, query: Query, body: Any) -> Reply:
        return Reply(200, self._volume(app, volume_id).to_json())

    def delete_volume(self, app: FakeApp, volume_id: str, query: Query, body: Any) -> Reply:
        volume = self._volume(app, volume_id)
        if volume.attached_machine_id:
            raise FakeApiError(412, f"failed_precondition: volume is attached to machine "
                                    f"{volume.attached_machine_id}")
        self._set_volume_state(volume, "destroyed")
        return Reply(200, volume.to_json())

    def create_snapshot(self, app: FakeApp, volume_id: str, query: Query, body: Any) -> Reply:
        volume = self._volume(app, volume_id)
        app.snapshots.setdefault(volume.id, []).append(
            {"id": "vs_" + random_tokens.token_hex(8), "status": "created", "size": volume.size_gb * 2**30 // 3,
             "volume_size": volume.size_gb * 2**30, "digest": random_tokens.token_hex(16),
             "retention_days": 5, "created_at": _now()})
        return Reply(200, None)

    def list_snapshots(self, app: FakeApp, volume_id: str, query: Query, body: Any) -> Reply:
        return Reply(200, list(app.snapshots.get(self._volume(app, volume_id).id, [])))

    def list_secrets(self, app: FakeApp, query: Query, body: Any) -> Reply:
        return Reply(200, {"secrets": list(app.secrets.values())})

    def update_secrets(self, app: FakeApp, query: Query, body: Any) -> Reply:
        """``AppSecretsUpdateRequest``: set each name to its value, or unset it when the value is null."""
        values = _json_object(body).get("values")
        if not isinstance(values, dict) or not all(isinstance(v, (str, type(None))) for v in values.values()):
            raise FakeApiError(400, "values must map secret names to strings or null")
        for name, value in values.items():
            self._set_secret(app, name, value)
        app.secrets_version += 1
        return Reply(200, {"secrets": list(app.secrets.values()), "version": app.secrets_version})

    def list_ips(self, app: FakeApp, query: Query, body: Any) -> Reply:
        return Reply(200, {"ips": list(app.ips.values())})

    def delete_ip(self, app: FakeApp, ip: str, query: Query, body: Any) -> Reply:
        if app.ips.pop(ip, None) is None:
            raise FakeApiError(404, "ip assignment not found")
        return Reply(204, None)


def _flag(query: Query, name: str) -> bool:
    return query.get(name, ["false"])[0] == "true"


def _json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FakeApiError(400, f"json: cannot unmarshal {type(body).__name__} into a request object")
    return body


_APP = r"/apps/(?P<app>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(_APP + pattern), endpoint) for method, pattern, endpoint in [
        ("GET", "", "get_app"),
        ("DELETE", "", "delete_app"),
        ("GET", "/machines", "list_machines"),
        ("POST", "/machines", "create_machine"),
        ("GET", "/machines/(?P<id>[^/]+)", "get_machine"),
        ("DELETE", "/machines/(?P<id>[^/]+)", "destroy_machine"),
        ("POST", "/machines/(?P<id>[^/]+)/cordon", "cordon_machine"),
        ("POST", "/machines/(?P<id>[^/]+)/stop", "stop_machine"),
        ("GET", "/machines/(?P<id>[^/]+)/wait", "wait_machine"),
        ("GET", "/volumes", "list_volumes"),
        ("POST", "/volumes", "create_volume"),
        ("GET", "/volumes/(?P<id>[^/]+)", "get_volume"),
        ("DELETE", "/volumes/(?P<id>[^/]+)", "delete_volume"),
        ("GET", "/volumes/(?P<id>[^/]+)/snapshots", "list_snapshots"),
        ("POST", "/volumes/(?P<id>[^/]+)/snapshots", "create_snapshot"),
        ("GET", "/secrets", "list_secrets"),
        ("POST", "/secrets", "update_secrets"),
        ("GET", "/ip_assignments", "list_ips"),
        ("DELETE", "/ip_assignments/(?P<id>[^/]+)", "delete_ip"),
    ]
]
