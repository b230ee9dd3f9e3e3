"""Fly Machines API client: apps, machines, volumes, snapshots, secrets and IPs (httpx, sync).

Synchronous on purpose: Temporal runs sync activities in a thread pool, and the calls that
take long (``wait``) block on the server anyway.

Endpoints and shapes follow the Machines API OpenAPI document (``docs.machines.dev``, copy
in ``superfly/fly-openapi-sdk``) and how ``superfly/fly-go`` (flaps) calls them; secrets and
IP assignments are REST endpoints of the same API (``/apps/{app}/secrets``,
``/apps/{app}/ip_assignments``), not GraphQL.

Errors: 401/403 raise ``AccessDenied``, 404 ``NotFound`` (or is success for deletes), 408,
429 and 5xx are transient and retried per request (429 waits at least ``Retry-After``), any
other 4xx raises ``InvalidPlan`` with the API's message. The token never appears in a log
line or an exception.
"""

from __future__ import annotations

import email.utils
import math
import os
import re
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import structlog
from pydantic import TypeAdapter
from tenacity import RetryCallState

from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials, NotFound
from flyaway.providers.fly.api import (
    App,
    IPAssignment,
    Machine,
    MachineConfig,
    Secret,
    Volume,
    VolumeSnapshot,
    WaitState,
)
from flyaway.providers.http import REQUEST_RETRY_SECONDS, ProviderUnavailable, is_transient, retrying, transient_status
from flyaway.redaction import scrub

T = TypeVar("T")
log = structlog.get_logger(__name__)

TOKEN_ENV = "FLY_API_TOKEN"
BASE_URL_ENV = "FLY_API_BASE_URL"
DEFAULT_BASE_URL = "https://api.machines.dev/v1"
#: the ``wait`` endpoint blocks at most this long per request; longer waits loop
MAX_WAIT_WINDOW_SECONDS = 60
#: a longer ``Retry-After`` is capped so one request never sleeps past its retry budget
MAX_RETRY_AFTER_SECONDS = 60.0
_MACAROON_PREFIXES = ("fm1r_", "fm1a_", "fm2_")

_machines = TypeAdapter(list[Machine])
_volumes = TypeAdapter(list[Volume])
_snapshots = TypeAdapter(list[VolumeSnapshot])
_secrets = TypeAdapter(list[Secret])
_ips = TypeAdapter(list[IPAssignment])


class FlyApiUnavailable(ProviderUnavailable):
    """A transient answer (408, 429, 5xx but 501): retried per request, no sooner than its ``Retry-After``, then
    left to Temporal."""

    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class MachineWaitTimeout(TimeoutError):
    """A Machine did not reach the awaited state in time (it may still get there)."""


def authorization_header(token: str) -> str:
    """The header value flaps expects: macaroons use the ``FlyV1`` scheme, others ``Bearer``."""
    token = token.strip()
    if token.startswith(("FlyV1 ", "Bearer ")):
        return token
    return ("FlyV1 " if token.startswith(_MACAROON_PREFIXES) else "Bearer ") + token


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _never_reached_server(exc: BaseException) -> bool:
    """True when a failed request certainly changed nothing, so repeating it is safe."""
    if isinstance(exc, FlyApiUnavailable):
        return exc.status == 429
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


def _wait_at_least_retry_after(default: Callable[[RetryCallState], float]) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        delay = default(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, FlyApiUnavailable) and exc.retry_after is not None:
            return max(delay, min(exc.retry_after, MAX_RETRY_AFTER_SECONDS))
        return delay
    return wait


def _api_error_message(response: httpx.Response) -> str:
    """The API's ``error`` text on one line, scrubbed of known secrets and kept short."""
    try:
        body = response.json()
        text = str(body.get("error") or body.get("message") or body) if isinstance(body, dict) else str(body)
    except ValueError:
        text = response.text or response.reason_phrase
    return scrub(re.sub(r"\s+", " ", text).strip())[:300]


def _segment(value: str) -> str:
    return quote(value, safe=":")


class FlyClient:
    """One Fly app's Machines API. Use as a context manager, or call :meth:`close`."""

    def __init__(self, app: str, *, base_url: str | None = None,
                 wait_window_seconds: int = MAX_WAIT_WINDOW_SECONDS,
                 retry_seconds: float = REQUEST_RETRY_SECONDS, timeout_seconds: float = 30.0) -> None:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise MissingCredentials(f"{TOKEN_ENV} is not set in the worker's environment; "
                                     f"create one with `fly tokens create deploy -a {app}`")
        if not 1 <= wait_window_seconds <= MAX_WAIT_WINDOW_SECONDS:
            raise ValueError(f"wait_window_seconds must be 1..{MAX_WAIT_WINDOW_SECONDS}")
        self.app = app
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        self._wait_window = wait_window_seconds
        self._retrying = retrying(is_transient, retry_seconds)
        self._retrying = self._retrying.copy(wait=_wait_at_least_retry_after(self._retrying.wait))
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_seconds,
                                  headers={"Authorization": authorization_header(token),
                                           "User-Agent": "flyaway"})
        self._app_path = f"/apps/{_segment(app)}"

    def __enter__(self) -> FlyClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- apps -----------------------------------------------------------------------------

    def get_app(self) -> App:
        return App.model_validate(self._request("GET", "", subject=self._app_subject).json())

    def delete_app(self) -> None:
        """Delete the app with its Machines, volumes and their snapshots; an app already gone counts as deleted."""
        if self._request_unless_gone("DELETE", "", subject=self._app_subject):
            log.info("fly app deleted", app=self.app)

    # -- machines -------------------------------------------------------------------------

    def list_machines(self, *, region: str | None = None, metadata: dict[str, str] | None = None,
                      include_deleted: bool = False) -> list[Machine]:
        """Machines of the app; ``metadata`` keeps only those whose metadata has all these pairs."""
        params: dict[str, str] = {f"metadata.{key}": value for key, value in (metadata or {}).items()}
        if region:
            params["region"] = region
        if include_deleted:
            params["include_deleted"] = "true"
        response = self._request("GET", "/machines", params=params, subject=self._app_subject)
        return _machines.validate_python(response.json())

    def get_machine(self, machine_id: str) -> Machine:
        response = self._request("GET", self._machine_path(machine_id),
                                 subject=self._machine_subject(machine_id))
        return Machine.model_validate(response.json())

    def create_machine(self, config: MachineConfig, *, region: str | None, name: str,
                       metadata: dict[str, str] | None = None) -> Machine:
        """Create and start a Machine (in a region Fly picks when ``region`` is None). ``name`` must be
        unique in the app: it is how a retry after an ambiguous failure (5xx, reset) finds the Machine
        the first attempt made."""
        config = config.model_copy(update={"metadata": {**config.metadata, **(metadata or {})}})
        body: dict[str, Any] = {"name": name, "config": config.model_dump(mode="json", exclude_none=True)}
        if region:
            body["region"] = region

        def find_existing() -> Machine | None:
            return next((m for m in self.list_machines() if m.name == name), None)

        machine = self._create(lambda: self._send("POST", "/machines", json=body, subject=self._app_subject),
                               Machine.model_validate, find_existing)
        log.info("fly machine created", app=self.app, machine_id=machine.id, name=name, region=machine.region)
        return machine

    def wait_machine(self, machine_id: str, state: WaitState = "started", *,
                     instance_id: str | None = None, timeout: float = 300.0,
                     progress: Callable[[], None] | None = None) -> None:
        """Block until the Machine is in ``state``; the API waits at most 60 s per call, so loop.

        ``progress`` is called before each call (an activity passes its heartbeat). Raises
        :class:`MachineWaitTimeout` naming the state the Machine is in when time is up.
        Waiting for ``destroyed`` on a Machine that is already gone succeeds.
        """
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if progress is not None:
                progress()
            window = max(1, min(self._wait_window, math.ceil(remaining)))
            params: dict[str, str | int] = {"state": state, "timeout": window}
            if instance_id:
                params["instance_id"] = instance_id
            try:
                response = self._request("GET", f"{self._machine_path(machine_id)}/wait", params=params,
                                         subject=self._machine_subject(machine_id), accept=(408,),
                                         read_timeout=window + 15.0)
            except NotFound:
                if state == "destroyed":
                    return
                raise
            if response.status_code != 408:
                return
        raise MachineWaitTimeout(f"{self._machine_subject(machine_id)} did not reach state '{state}' within "
                                 f"{timeout:g} s (it is '{self._current_state(machine_id)}')")

    def cordon(self, machine_id: str) -> None:
        """Take the Machine out of the Fly proxy's rotation; it keeps running."""
        self._request("POST", f"{self._machine_path(machine_id)}/cordon", subject=self._machine_subject(machine_id))

    def stop(self, machine_id: str, *, signal: str | None = None, timeout: str | None = None) -> None:
        """Ask the Machine to stop (``timeout`` is a Go duration such as ``"30s"``)."""
        body = {key: value for key, value in (("signal", signal), ("timeout", timeout)) if value}
        self._request("POST", f"{self._machine_path(machine_id)}/stop", json=body,
                      subject=self._machine_subject(machine_id))

    def destroy(self, machine_id: str, *, force: bool = False) -> None:
        """Destroy the Machine; one that is already gone counts as destroyed."""
        params = {"force": "true"} if force else None
        if self._request_unless_gone("DELETE", self._machine_path(machine_id), params=params,
                                     subject=self._machine_subject(machine_id)):
            log.info("fly machine destroyed", app=self.app, machine_id=machine_id, force=force)

    # -- volumes --------------------------------------------------------------------------

    def list_volumes(self, *, include_destroyed: bool = False) -> list[Volume]:
        response = self._request("GET", "/volumes", subject=self._app_subject)
        volumes = _volumes.validate_python(response.json())
        return volumes if include_destroyed else [v for v in volumes if not v.is_destroyed]

    def get_volume(self, volume_id: str) -> Volume:
        response = self._request("GET", self._volume_path(volume_id), subject=self._volume_subject(volume_id))
        return Volume.model_validate(response.json())

    def fork_volume(self, source_volume_id: str, *, name: str, region: str | None = None) -> Volume:
        """Create a copy of a volume while its Machine keeps running. ``name`` must be unique in
        the app (a retry after an ambiguous failure looks the fork up by it)."""
        body: dict[str, Any] = {"name": name, "source_volume_id": source_volume_id}
        if region:
            body["region"] = region

        def find_existing() -> Volume | None:
            return next((v for v in self.list_volumes() if v.name == name), None)

        volume = self._create(
            lambda: self._send("POST", "/volumes", json=body, subject=self._volume_subject(source_volume_id)),
            Volume.model_validate, find_existing)
        log.info("fly volume forked", app=self.app, source_volume_id=source_volume_id, volume_id=volume.id)
        return volume

    def create_snapshot(self, volume_id: str) -> None:
        """Start a snapshot of the volume; the API answers without it, see :meth:`list_snapshots`."""
        self._request("POST", f"{self._volume_path(volume_id)}/snapshots", subject=self._volume_subject(volume_id))
        log.info("fly volume snapshot requested", app=self.app, volume_id=volume_id)

    def list_snapshots(self, volume_id: str) -> list[VolumeSnapshot]:
        response = self._request("GET", f"{self._volume_path(volume_id)}/snapshots",
                                 subject=self._volume_subject(volume_id))
        return _snapshots.validate_python(response.json())

    def delete_volume(self, volume_id: str) -> None:
        """Delete the volume; one that is already gone counts as deleted."""
        if self._request_unless_gone("DELETE", self._volume_path(volume_id),
                                     subject=self._volume_subject(volume_id)):
            log.info("fly volume deleted", app=self.app, volume_id=volume_id)

    # -- secrets and IPs ------------------------------------------------------------------

    def list_secrets(self) -> list[Secret]:
        """Names and digests of the app's secrets (values are never requested)."""
        response = self._request("GET", "/secrets", subject=self._app_subject)
        return _secrets.validate_python(response.json().get("secrets") or [])

    def set_secrets(self, values: Mapping[str, str | None]) -> None:
        """Set (or, for None, unset) app secrets; Machines get them at their next boot, none is restarted."""
        self._request("POST", "/secrets", subject=self._app_subject, json={"values": dict(values)})

    def list_ips(self) -> list[IPAssignment]:
        response = self._request("GET", "/ip_assignments", subject=self._app_subject)
        return _ips.validate_python(response.json().get("ips") or [])

    def release_ip(self, ip: str) -> None:
        """Remove the IP from the app; one that is already released counts as released."""
        if self._request_unless_gone("DELETE", f"/ip_assignments/{_segment(ip)}",
                                     subject=f"IP {ip} of Fly app '{self.app}'"):
            log.info("fly ip released", app=self.app, ip=ip)

    # -- plumbing -------------------------------------------------------------------------

    @property
    def _app_subject(self) -> str:
        return f"Fly app '{self.app}'"

    def _machine_subject(self, machine_id: str) -> str:
        return f"Fly machine '{machine_id}' of app '{self.app}'"

    def _volume_subject(self, volume_id: str) -> str:
        return f"Fly volume '{volume_id}' of app '{self.app}'"

    @staticmethod
    def _machine_path(machine_id: str) -> str:
        return f"/machines/{_segment(machine_id)}"

    @staticmethod
    def _volume_path(volume_id: str) -> str:
        return f"/volumes/{_segment(volume_id)}"

    def _current_state(self, machine_id: str) -> str:
        try:
            return self.get_machine(machine_id).state
        except NotFound:
            return "gone"

    def _request(self, method: str, path: str, *, subject: str, **kwargs: Any) -> httpx.Response:
        """One idempotent request, retried while the trouble is transient."""
        def send() -> httpx.Response:
            return self._send(method, path, subject=subject, **kwargs)
        return self._retrying(send)

    def _request_unless_gone(self, method: str, path: str, *, subject: str, **kwargs: Any) -> bool:
        """A delete: True when done now, False when the API says the thing is already gone."""
        try:
            self._request(method, path, subject=subject, **kwargs)
        except NotFound:
            return False
        return True

    def _create(self, send: Callable[[], httpx.Response], parse: Callable[[Any], T],
                find_existing: Callable[[], T | None]) -> T:
        """A non-idempotent POST: after a failure that may have reached the server, look for
        what the earlier attempt created before posting again, so a retry never makes two."""
        maybe_created = False

        def attempt() -> T:
            nonlocal maybe_created
            if maybe_created and (existing := find_existing()) is not None:
                return existing
            try:
                response = send()
            except Exception as exc:
                maybe_created = maybe_created or not _never_reached_server(exc)
                raise
            return parse(response.json())
        return self._retrying(attempt)

    def _send(self, method: str, path: str, *, subject: str, accept: Collection[int] = (),
              read_timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        """One HTTP exchange; a non-2xx answer (other than ``accept``) becomes the matching error."""
        if read_timeout is not None:
            kwargs["timeout"] = httpx.Timeout(self._http.timeout.connect, read=read_timeout,
                                              write=self._http.timeout.write, pool=self._http.timeout.pool)
        response = self._http.request(method, self._app_path + path, **kwargs)
        status = response.status_code
        if response.is_success or status in accept:
            return response
        where = f"{method} {self._app_path + path}"
        detail = _api_error_message(response)
        if status in (401, 403):
            raise AccessDenied(f"Fly API refused {where} (HTTP {status}: {detail}); check that {TOKEN_ENV} "
                               f"is valid and may manage app '{self.app}'")
        if status == 404:
            raise NotFound(f"{subject} not found (Fly API {where}: {detail})")
        if transient_status(status):
            raise FlyApiUnavailable(f"Fly API {where} answered HTTP {status}: {detail}", status,
                                    parse_retry_after(response.headers.get("Retry-After")))
        raise InvalidPlan(f"Fly API rejected {where} for {subject} (HTTP {status}): {detail}")


#: Machines metadata flyctl sets on the Machines of a deployed release
PROCESS_GROUP_METADATA = "fly_process_group"
RELEASE_VERSION_METADATA = "fly_release_version"


def _release(machine: Machine) -> tuple[int, float]:
    version = machine.metadata.get(RELEASE_VERSION_METADATA, "")
    return (int(version) if version.isdigit() else -1,
            machine.updated_at.timestamp() if machine.updated_at else 0.0)


def release_image(client: FlyClient, process_group: str) -> str:
    """The image of the newest release running in ``process_group`` (``config.image`` of its Machines).

    Only Machines flyctl deployed carry the process group, so flyaway's own agent Machines are never
    taken for the app."""
    machines = [m for m in client.list_machines(metadata={PROCESS_GROUP_METADATA: process_group}) if m.config]
    if not machines:
        raise NotFound(f"Fly app {client.app} has no Machine in process group '{process_group}'; set "
                       f"image.fly_process_group, or name the image in image.source")
    newest = max(machines, key=_release).config
    assert newest is not None
    return newest.image
