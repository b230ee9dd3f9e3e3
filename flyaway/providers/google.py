"""Google Cloud: credentials from the worker's environment, which errors are transient, what Google's
refusals mean, and the Secret Manager, Cloud Run (Admin API v2) and Cloud Storage clients. Every
Google client of flyaway gets its credentials here.

The client libraries run over their REST transport, which also takes an ``http://`` endpoint (an
emulator, or the fakes in the tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
import google.cloud.storage as storage  # mypy: google.cloud is a namespace package; storage is untyped
import google_crc32c
import requests
from google.api_core import exceptions as google_errors
from google.api_core.client_options import ClientOptions
from google.api_core.operation import Operation as Operation  # a rollout, as Cloud Run gives it
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import run_v2, secretmanager
from google.oauth2 import credentials as user_credentials, service_account

from flyaway.errors import AccessDenied, DataCorruption, InvalidPlan, MissingCredentials, NotFound, Unreachable
from flyaway.models.deploy import CloudRunDeploy
from flyaway.providers.http import (
    CONNECT_TIMEOUT_SECONDS,
    REQUEST_RETRY_SECONDS,
    call_with_retries,
    stall_seconds,
    transient_status,
)

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
         expected: tuple[type[Exception], ...] = (), max_seconds: float = REQUEST_RETRY_SECONDS,
         transient: Callable[[BaseException], bool] = is_transient) -> T:
    """One API call, retried while ``transient``. Google's refusals become flyaway's errors naming ``what`` and
    the ``roles`` the worker's identity needs (``not_found`` says what a 404 means); ``expected`` ones are left
    to the caller."""
    try:
        return call_with_retries(fn, transient, max_seconds)
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


# ---- Cloud Run (Admin API v2) ------------------------------------------------------------------

CLOUD_RUN_ROLES = "roles/run.admin and roles/iam.serviceAccountUser"
#: the label carrying a digest of the spec flyaway wrote
SPEC_LABEL = "flyaway-spec"
MANAGED_LABELS = {"managed-by": "flyaway"}
CONTAINER_NAME = "server"
WEIGHTS_VOLUME = "weights"
#: Cloud Run's longest probe period
MAX_PROBE_PERIOD_SECONDS = 240
#: a Cloud Run service, as the Admin API gives it
Service = run_v2.Service


def secret_source(reference: str) -> run_v2.EnvVarSource:
    """``projects/P/secrets/S/versions/N`` (what the secrets stage reports) -> a secret key reference."""
    secret, marker, version = reference.rpartition("/versions/")
    if not marker or not secret.startswith("projects/") or not version:
        raise InvalidPlan(f"'{reference}' is not a Secret Manager version (projects/P/secrets/S/versions/N)")
    return run_v2.EnvVarSource(secret_key_ref=run_v2.SecretKeySelector(secret=secret, version=version))


def spec_digest(service: run_v2.Service) -> str:
    """Short digest of a service spec, fit for a label value."""
    return hashlib.sha256(run_v2.Service.to_json(service, sort_keys=True, indent=None).encode()).hexdigest()[:16]


def cloud_run_service(stage: CloudRunDeploy, image: str, env: dict[str, str], secrets: dict[str, str],
                      weights_bucket: str | None) -> run_v2.Service:
    """The service as the plan wants it (without its name, which only updates carry): the plain ``env``, the
    ``secrets`` as references to Secret Manager versions, ``weights_bucket`` mounted read-only."""
    variables = [run_v2.EnvVar(name=name, value=value) for name, value in sorted(env.items())]
    variables += [run_v2.EnvVar(name=name, value_source=secret_source(reference))
                  for name, reference in sorted(secrets.items())]
    limits = {"cpu": stage.cpu, "memory": stage.memory}
    if stage.gpu:
        limits["nvidia.com/gpu"] = "1"
    volumes, mounts = [], []
    if weights_bucket is not None:
        volumes = [run_v2.Volume(name=WEIGHTS_VOLUME, gcs=run_v2.GCSVolumeSource(bucket=weights_bucket, read_only=True))]
        mounts = [run_v2.VolumeMount(name=WEIGHTS_VOLUME, mount_path=stage.weights_mount_path)]
    container = run_v2.Container(
        name=CONTAINER_NAME, image=image, args=stage.cmd or [], env=variables, volume_mounts=mounts,
        ports=[run_v2.ContainerPort(name="http1", container_port=stage.port)],
        # GPU instances need CPU always allocated
        resources=run_v2.ResourceRequirements(limits=limits, cpu_idle=not stage.gpu, startup_cpu_boost=True),
        startup_probe=_startup_probe(stage))
    template = run_v2.RevisionTemplate(
        containers=[container], volumes=volumes,
        scaling=run_v2.RevisionScaling(min_instance_count=stage.min_instances, max_instance_count=stage.max_instances),
        execution_environment=run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN2,
        max_instance_request_concurrency=stage.concurrency or 0,
        service_account=stage.service_account or "")
    if stage.gpu:
        template.node_selector = run_v2.NodeSelector(accelerator=stage.gpu)
        template.gpu_zonal_redundancy_disabled = not stage.gpu_zonal_redundancy
    service = run_v2.Service(template=template, invoker_iam_disabled=stage.public,
                             ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL, labels=MANAGED_LABELS)
    service.labels[SPEC_LABEL] = spec_digest(service)
    return service


def _startup_probe(stage: CloudRunDeploy) -> run_v2.Probe:
    """The health path, probed every ``health.interval`` until ``health.deadline``."""
    health = stage.health
    period = min(MAX_PROBE_PERIOD_SECONDS, max(1, round(health.interval.total_seconds())))
    return run_v2.Probe(http_get=run_v2.HTTPGetAction(path=health.path, port=stage.port),
                        period_seconds=period, timeout_seconds=min(period, 10),
                        failure_threshold=max(1, math.ceil(health.deadline.total_seconds() / period)))


def is_current(existing: run_v2.Service, desired: run_v2.Service) -> bool:
    """Same spec digest, and its latest revision is the one serving (an earlier rollout finished)."""
    return (existing.labels.get(SPEC_LABEL) == desired.labels[SPEC_LABEL] and not existing.reconciling
            and bool(existing.latest_ready_revision)
            and existing.latest_ready_revision == existing.latest_created_revision)


class CloudRun:
    """One Cloud Run service (``stage.service_name``); ``api_endpoint`` (a fake) is talked to anonymously."""

    def __init__(self, stage: CloudRunDeploy) -> None:
        self.stage = stage
        credentials, _ = load_credentials(stage.credentials_env, f"Cloud Run in project {stage.project}",
                                          anonymous=stage.api_endpoint is not None)
        options = ClientOptions(api_endpoint=stage.api_endpoint) if stage.api_endpoint else None
        self._client = run_v2.ServicesClient(credentials=credentials, transport="rest", client_options=options)

    def _call(self, what: str, fn: Callable[[], T], expected: tuple[type[Exception], ...] = ()) -> T:
        return call(fn, f"Cloud Run service {self.stage.service_name}: {what}", roles=CLOUD_RUN_ROLES,
                    not_found="not found (does the project exist, with the Cloud Run API enabled?)", expected=expected)

    def get(self) -> run_v2.Service | None:
        """The service, None when it does not exist."""
        try:
            return self._call("read the service", lambda: self._client.get_service(name=self.stage.service_name),
                              expected=(google_errors.NotFound,))
        except google_errors.NotFound:
            return None

    def write(self, desired: run_v2.Service, exists: bool) -> Operation:
        """Create or replace the service; the rollout's long-running operation."""
        stage = self.stage

        def update() -> Operation:
            return self._client.update_service(service=run_v2.Service(desired, name=stage.service_name))

        if exists:
            return self._call("update the service", update)
        parent = stage.service_name.rpartition("/services/")[0]
        try:
            return self._call("create the service",
                              lambda: self._client.create_service(parent=parent, service=desired,
                                                                  service_id=stage.service),
                              expected=(google_errors.Conflict,))
        except google_errors.Conflict:  # an earlier attempt created it after all
            return self._call("update the service", update)

    def rolled_out(self, operation: Operation) -> bool:
        done: bool = self._call("follow the rollout", operation.done)
        return done

    def outcome(self, operation: Operation) -> run_v2.Service:
        """The service a finished rollout left; a failed rollout is the plan's to fix."""
        try:
            service: run_v2.Service = operation.result()
        except google_errors.GoogleAPICallError as error:
            raise InvalidPlan(f"Cloud Run could not roll out {self.stage.service_name}: {error.message}; check "
                              f"the image, cmd, port and the startup probe on {self.stage.health.path}") from None
        return service

    def close(self) -> None:
        self._client.transport.close()


# ---- Cloud Storage -----------------------------------------------------------------------------

DEVSTORAGE = "https://www.googleapis.com/auth/devstorage.read_write"


class SessionRequestFailed(Exception):
    """A request to a resumable upload session failed (``status`` None: no answer). The message leaves the URI
    out: whoever holds it can write the object."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail[:200]}" if status else detail)
        self.status = status


def is_transient_storage(error: BaseException) -> bool:
    """A session request without an answer or with a transient status, else :func:`is_transient`."""
    if isinstance(error, SessionRequestFailed):
        return transient_status(error.status)
    return is_transient(error)


def storage_host() -> str:
    """``scheme://host[:port]`` of the Cloud Storage API the client talks to (``STORAGE_EMULATOR_HOST``'s in tests)."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        return emulator.rstrip("/") if "://" in emulator else f"http://{emulator.rstrip('/')}"
    return "https://storage.googleapis.com"


def is_upload_session_uri(uri: str, bucket: str) -> bool:
    """Whether ``uri`` is a resumable upload URL of ``bucket`` on the storage host, with nothing else in it."""
    parts = urllib.parse.urlsplit(uri)
    expected = urllib.parse.urlsplit(storage_host())
    query = urllib.parse.parse_qs(parts.query)
    return ((parts.scheme, parts.netloc) == (expected.scheme, expected.netloc)
            and parts.path == f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
            and query.get("uploadType") == ["resumable"]
            and not (parts.username or parts.password or parts.fragment))


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    generation: str
    #: base64 of the big-endian crc32c, as GCS gives it
    crc32c: str | None


@dataclass(frozen=True)
class BucketSettings:
    #: the class new objects get (``STANDARD``, ``NEARLINE``, ...)
    storage_class: str
    #: how long an object must be kept before it may be deleted; None without a retention policy
    retention_seconds: int | None
    #: new objects are held until released
    event_based_hold: bool


def _stored(blob: storage.Blob) -> StoredObject:
    return StoredObject(name=blob.name, size=int(blob.size), generation=str(blob.generation), crc32c=blob.crc32c)


#: the largest object sent in one multipart request (google-cloud-storage's own limit)
MULTIPART_UPLOAD_LIMIT = 8 * 1024 * 1024


class MultipartBody:
    """The body of a JSON-API multipart upload, sent from where the object's bytes lie (a part buffer): an
    iterable of its three pieces (metadata, bytes, end), which HTTP clients send one after the other.

    google-cloud-storage joins the bytes and the metadata into one new string: with the copy it needs the
    bytes in (it takes only ``bytes``), each part in flight was held three times over, and a copy to GCS peaked
    near 400 MB where one to S3 stays under 300."""

    def __init__(self, metadata: dict[str, str], data: bytes | memoryview) -> None:
        self.boundary = f"flyaway-{secrets.token_hex(16)}"
        separator = f"--{self.boundary}\r\n"
        head = (f"{separator}content-type: application/json; charset=UTF-8\r\n\r\n{json.dumps(metadata)}\r\n"
                f"{separator}content-type: application/octet-stream\r\n\r\n").encode()
        self.pieces = (head, data, f"\r\n--{self.boundary}--".encode())

    def __len__(self) -> int:
        return sum(memoryview(piece).nbytes for piece in self.pieces)

    def __iter__(self) -> Iterator[bytes | memoryview]:
        return iter(self.pieces)


class GcsBucket:
    """One bucket through google-cloud-storage, anonymous against an emulator (``STORAGE_EMULATOR_HOST``), else
    with the key file ``credentials_env`` names. Resumable upload sessions are spoken to over HTTP
    (:meth:`create_session`, :meth:`request`), so any process can go on with one another began; so are uploads
    of one request, which the client library would copy (:class:`MultipartBody`)."""

    def __init__(self, bucket: str, credentials_env: str, project: str | None, what: str, concurrency: int) -> None:
        self.name, self.what = bucket, what
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            credentials: Credentials = AnonymousCredentials()
        else:
            credentials, named = load_credentials(credentials_env, what, ambient=False, scopes=[DEVSTORAGE])
            project = project or named
        self.client = storage.Client(project=project, credentials=credentials)
        self._bucket = self.client.bucket(bucket)
        self._http = AuthorizedSession(credentials)
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, concurrency * 2))
        self._http.mount("https://", adapter)
        self._http.mount("http://", adapter)

    def call(self, what: str, fn: Callable[[], T], max_seconds: float = REQUEST_RETRY_SECONDS) -> T:
        """One request, retried while transient; refusals become flyaway's errors about ``what``."""
        return call(fn, what, roles=f"roles on bucket gs://{self.name} (check the credentials)",
                    not_found=f"bucket gs://{self.name} does not exist; create it or fix the name",
                    expected=(google_errors.BadRequest, google_errors.Conflict), max_seconds=max_seconds,
                    transient=is_transient_storage)

    def probe(self, name: str, prefix: str) -> None:
        """Write and delete object ``name``, list ``prefix``: what a copy will do, once."""
        blob = self._bucket.blob(name)
        try:
            self.call(f"writing {self.what}", lambda: blob.upload_from_string(b"flyaway", retry=None), max_seconds=20)
        except (requests.ConnectionError, requests.Timeout, google.auth.exceptions.TransportError) as error:
            raise Unreachable(f"Cloud Storage at {storage_host()} does not answer ({type(error).__name__}) for "
                              f"{self.what}; check the network (or STORAGE_EMULATOR_HOST)") from None
        self.call(f"deleting {self.what} probe", lambda: blob.delete(retry=None))
        self.call(f"listing {self.what}", lambda: list(self.client.list_blobs(
            self._bucket, prefix=prefix, max_results=1, retry=None)))

    def get(self, name: str) -> StoredObject | None:
        blob = self.call(f"gs://{self.name}/{name}", lambda: self._bucket.get_blob(name, retry=None))
        return None if blob is None else _stored(blob)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        pages = iter(self.client.list_blobs(self._bucket, prefix=prefix, retry=None).pages)
        while True:
            page = self.call(f"listing gs://{self.name}/{prefix}", lambda: next(pages, None))
            if page is None:
                return
            yield from (_stored(blob) for blob in page)

    def upload(self, name: str, data: bytes | memoryview, crc32c: str | None = None) -> StoredObject:
        """Store ``data``, sent as it lies (never copied); with ``crc32c`` (base64, as GCS gives it) GCS refuses
        bytes that do not match it. Up to 8 MiB in one multipart request (metadata, then bytes), larger in a
        resumable session of one chunk, as google-cloud-storage chooses (the emulator parses a multipart body
        at about 30 MiB/s)."""
        what = f"gs://{self.name}/{name}"
        size = memoryview(data).nbytes

        def send() -> requests.Response:
            if size > MULTIPART_UPLOAD_LIMIT:
                uri = self._open_session(name, size, crc32c)
                return self.request("PUT", uri, data=data, headers={"Content-Range": f"bytes 0-{size - 1}/{size}"})
            metadata = {"name": name, "contentType": "application/octet-stream"} | ({"crc32c": crc32c} if crc32c else {})
            body = MultipartBody(metadata, data)
            return self.request("POST", f"{storage_host()}/upload/storage/v1/b/{urllib.parse.quote(self.name, safe='')}"
                                f"/o?uploadType=multipart", data=body,
                                headers={"Content-Type": f'multipart/related; boundary="{body.boundary}"'})

        def upload() -> dict[str, Any]:
            response = send()
            if response.status_code >= 400:
                error = google_errors.from_http_response(response)
                if crc32c and response.status_code in (400, 409) and "crc32c" in str(error).lower():
                    raise DataCorruption(f"{what}: the bytes that arrived do not have the crc32c of the source bytes")
                raise error
            if response.status_code not in (200, 201):
                raise SessionRequestFailed(response.status_code, "the upload did not end with its last byte")
            resource: dict[str, Any] = response.json()
            return resource

        resource = self.call(what, upload)
        return StoredObject(name=str(resource["name"]), size=int(resource["size"]),
                            generation=str(resource["generation"]), crc32c=resource.get("crc32c"))

    def compose(self, name: str, sources: Sequence[str], if_generation_match: int | None = None) -> StoredObject | None:
        """Object ``name`` made of ``sources`` (at most 32, in order), by the server: no byte goes through the
        worker. With ``if_generation_match`` only over that generation (0: only if absent). None when a source
        is gone or the object is not at that generation (another process composed them first)."""
        blob = self._bucket.blob(name)
        blob.content_type = "application/octet-stream"

        def compose() -> bool:
            try:
                blob.compose([self._bucket.blob(source) for source in sources], retry=None,
                             if_generation_match=if_generation_match)
            except (google_errors.NotFound, google_errors.PreconditionFailed):
                return False
            return True

        return _stored(blob) if self.call(f"gs://{self.name}/{name}", compose) else None

    def settings(self) -> BucketSettings | None:
        """What the bucket does with objects flyaway writes and deletes; None when the worker may not read it
        (``storage.buckets.get`` is not in ``roles/storage.objectAdmin``)."""
        bucket = self.client.bucket(self.name)
        try:
            call(lambda: bucket.reload(retry=None), f"reading the settings of gs://{self.name}",
                 roles="storage.buckets.get", expected=(google_errors.Forbidden, google_errors.Unauthorized))
        except (google_errors.Forbidden, google_errors.Unauthorized):
            return None
        return BucketSettings(storage_class=bucket.storage_class or "STANDARD",
                              retention_seconds=bucket.retention_period,
                              event_based_hold=bool(bucket.default_event_based_hold))

    def download(self, name: str, start: int = 0, end: int | None = None) -> bytes | None:
        """Bytes ``start`` to ``end`` (inclusive; None: to the end); None when the object does not exist."""
        blob = self._bucket.blob(name)

        def get() -> bytes | None:
            try:
                data: bytes = blob.download_as_bytes(start=start, end=end, checksum=None, retry=None)
                return data
            except google_errors.NotFound:
                return None
            except google_errors.RequestRangeNotSatisfiable:
                return b""  # the offset is at or past the end

        return self.call(f"gs://{self.name}/{name}", get)

    def delete(self, name: str) -> None:
        blob = self._bucket.blob(name)

        def delete() -> None:
            with contextlib.suppress(google_errors.NotFound):
                blob.delete(retry=None)

        self.call(f"gs://{self.name}/{name}", delete)

    def create_session(self, name: str, size: int) -> str:
        """A resumable upload session for ``size`` bytes; its URI."""
        return self.call(f"gs://{self.name}/{name}", lambda: self._open_session(name, size))

    def _open_session(self, name: str, size: int, crc32c: str | None = None) -> str:
        """One request for a session (whose object GCS checks against ``crc32c`` at the end, where given); its
        URI, once it is an upload URL of this bucket: the bytes and the credentials go to it."""
        blob = self._bucket.blob(name)
        if crc32c:
            blob.crc32c = crc32c
        uri: str = blob.create_resumable_upload_session(content_type="application/octet-stream", size=size,
                                                        checksum=None, retry=None)
        if not is_upload_session_uri(uri, self.name):
            raise DataCorruption(f"gs://{self.name}/{name}: Cloud Storage answered with an upload URL that is not "
                                 f"one of bucket {self.name} at {storage_host()}; refusing to use it")
        return uri

    def request(self, method: str, uri: str, **kwargs: Any) -> requests.Response:
        """One request over the bucket's credentials (to an upload session, or an upload), cut after
        ``stall_seconds()`` without a byte."""
        try:
            response: requests.Response = self._http.request(
                method, uri, timeout=(CONNECT_TIMEOUT_SECONDS, stall_seconds()), **kwargs)
            return response
        except requests.RequestException as error:
            raise SessionRequestFailed(None, f"{type(error).__name__} talking to Cloud Storage") from None
