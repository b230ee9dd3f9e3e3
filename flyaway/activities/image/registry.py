"""A small OCI distribution client over httpx: copy an image between registries with a
rewritten config, without a Docker daemon.

Everything here is async; :func:`copy_image` is the entry point, meant for an async activity.

A copy pushes blobs first (layers streamed chunk by chunk, never held whole; the new configs),
then each platform manifest by digest, then the index by digest, and moves the tag last: a
copy that fails anywhere leaves the tag where it was. Manifests and configs are serialised
deterministically, so the same source and plan give the same digests and a re-run finds
everything in place and pushes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, overload

import httpx
import structlog

from flyaway.errors import (
    AccessDenied,
    DataCorruption,
    InvalidPlan,
    LimitExceeded,
    MissingCredentials,
    NotFound,
)
from flyaway.models.image import (
    MIGRATED_FROM_LABEL,
    SOURCE_URL_LABEL,
    ImageCopyResult,
    ImageReference,
    ImageStage,
    RegistryCredentials,
)
from flyaway.providers.http import async_retrying, is_transient
from flyaway.redaction import register_secret

log = structlog.get_logger(__name__)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
CONFIG_TYPES = ("application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json")
_ACCEPT_MANIFESTS = ", ".join(IMAGE_MANIFEST_TYPES + INDEX_TYPES)

MiB = 1024 * 1024
#: bytes per PATCH of a chunked upload; memory per blob in flight is at most twice this
DEFAULT_CHUNK_SIZE = 16 * MiB
#: blobs copied at the same time
DEFAULT_CONCURRENCY = 4
#: manifests and configs are read whole; anything larger is not an image document
MAX_DOCUMENT_BYTES = 16 * MiB
_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` -> ("bearer", {"realm": …, …})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {key.lower(): quoted or bare for key, quoted, bare in _CHALLENGE_PARAM.findall(rest)}


def _basic_authorization(login: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()


class RegistryAuth(httpx.Auth):
    """Answers a registry's 401 challenge: Basic with the login, or the Bearer token flow.

    For Bearer, the token is fetched from the challenge's realm for every scope seen so far
    plus those given up front (a cross-repository mount needs pull on the source repository:
    asking at once saves a round of 401s, and not every registry's challenge names it). The
    latest Authorization is reused on later requests; a 401 despite it fetches a new token
    once (tokens expire mid-copy).
    Only ``async_auth_flow`` is implemented: use it with ``httpx.AsyncClient``.
    """

    def __init__(self, login: tuple[str, str] | None, scopes: Iterable[str] = ()) -> None:
        self._login = login
        self._scopes = set(scopes)
        self._authorization: str | None = None

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._authorization:
            request.headers["Authorization"] = self._authorization
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic" and self._login:
            self._authorization = _basic_authorization(self._login)
        elif scheme == "bearer" and params.get("realm"):
            self._scopes.update(params.get("scope", "").split())
            token_response = yield self._token_request(params)
            await token_response.aread()
            if not token_response.is_success:
                return  # the caller sees the token service's answer: 401 bad login, 5xx retried
            self._authorization = f"Bearer {_token_from(token_response)}"
        else:
            return
        request.headers["Authorization"] = self._authorization
        yield request

    def _token_request(self, challenge: dict[str, str]) -> httpx.Request:
        params = [("scope", scope) for scope in sorted(self._scopes)]
        if challenge.get("service"):
            params.insert(0, ("service", challenge["service"]))
        headers = {"Authorization": _basic_authorization(self._login)} if self._login else {}
        return httpx.Request("GET", challenge["realm"], params=tuple(params), headers=headers)


def _token_from(response: httpx.Response) -> str:
    try:
        body = response.json()
        token = body.get("token") or body.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not token or not isinstance(token, str):
        raise AccessDenied(f"the token service at {response.url.copy_with(query=None)} answered without a token")
    return token


def resolve_login(credentials: RegistryCredentials | None, registry: str) -> tuple[str, str] | None:
    """(user, password) from the worker's environment; ``None`` means anonymous."""
    if credentials is None:
        return None
    username = credentials.username
    if username is None:
        username = os.environ.get(credentials.username_env or "")
    password: str | None
    if credentials.google_access_token:
        from flyaway.providers import google  # the Google SDK only when a plan logs in with it
        password = google.access_token(f"the login to {registry}")
    else:
        password = os.environ.get(credentials.password_env or "")
    if username and password:
        register_secret(password)
        return username, password
    if credentials.anonymous_if_unset:
        return None
    raise MissingCredentials(f"{registry} needs a login ({credentials.describe()}); "
                             "set those variables in the worker's environment")


def manifest_kind(media_type: str, reference: ImageReference | str) -> str:
    """'index' or 'manifest'; anything else is not an image flyaway can copy."""
    if media_type in INDEX_TYPES:
        return "index"
    if media_type in IMAGE_MANIFEST_TYPES:
        return "manifest"
    raise InvalidPlan(f"{reference}: manifest media type '{media_type}' is not an image "
                      "(flyaway copies Docker schema 2 and OCI image manifests and indexes)")


def platform_name(platform: dict[str, Any]) -> str:
    """``os/architecture[/variant]`` of an index entry's platform or an image config."""
    parts = [platform.get("os", ""), platform.get("architecture", "")]
    if platform.get("variant"):
        parts.append(platform["variant"])
    return "/".join(parts)


def platform_matches(wanted: str, platform: dict[str, Any]) -> bool:
    """``linux/arm64`` matches any arm64 variant; ``linux/arm64/v8`` only that variant."""
    name = platform_name(platform)
    return name == wanted or (wanted.count("/") == 1 and name.startswith(wanted + "/"))


def _is_platform_image(entry: dict[str, Any]) -> bool:
    """An index entry for a runnable platform, not an attestation (buildx lists those as unknown/unknown)."""
    os_name: str = (entry.get("platform") or {}).get("os", "unknown")
    return os_name != "unknown"


def canonical_json(document: dict[str, Any]) -> bytes:
    """One byte sequence per document: sorted keys, no whitespace, so digests are reproducible."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hasher_for(digest: str) -> Any:
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise InvalidPlan(f"digest '{digest}' uses '{algorithm}'; only sha256 and sha512 are supported")
    return hashlib.new(algorithm)


def rewrite_config(config: dict[str, Any], stage: ImageStage, migrated_from: str) -> dict[str, Any]:
    """The image config with Fly-only env dropped and the plan's env, entrypoint, cmd, port and labels."""
    new = copy.deepcopy(config)
    runtime = new.setdefault("config", {})
    env = [entry for entry in runtime.get("Env") or [] if not stage.drops_env(entry.partition("=")[0])]
    names = [entry.partition("=")[0] for entry in env]
    for name, value in stage.set_env.items():
        if name in names:
            env[names.index(name)] = f"{name}={value}"
        else:
            env.append(f"{name}={value}")
            names.append(name)
    runtime["Env"] = env
    if stage.entrypoint is not None:
        runtime["Entrypoint"] = stage.entrypoint
    if stage.cmd is not None:
        runtime["Cmd"] = stage.cmd
    if stage.exposed_port is not None:
        runtime["ExposedPorts"] = {f"{stage.exposed_port}/tcp": {}}
    labels = dict(runtime.get("Labels") or {})
    labels.update(stage.labels)
    if stage.source_url:
        labels[SOURCE_URL_LABEL] = stage.source_url
    labels[MIGRATED_FROM_LABEL] = migrated_from
    runtime["Labels"] = labels
    return new


@dataclass(frozen=True)
class Document:
    """A manifest or index as the exact bytes its digest is computed over."""

    media_type: str
    content: bytes

    @property
    def digest(self) -> str:
        return digest_of(self.content)

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.content)
        return body

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.content)}


def _registry_errors(response: httpx.Response) -> str:
    """``CODE: message; …`` from a registry's error body, or its status line."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        text = ""
    return text or f"HTTP {response.status_code} {response.reason_phrase}"


class RepositoryClient:
    """One repository on one registry, over its own ``httpx.AsyncClient`` and login."""

    def __init__(self, reference: ImageReference, *, login: tuple[str, str] | None, login_hint: str,
                 plain_http: bool, scopes: Iterable[str]) -> None:
        self.reference = reference
        self._login_hint = login_hint
        scheme = "http" if plain_http else "https"
        self._base = f"{scheme}://{reference.api_host}/v2/{reference.repository}"
        self._http = httpx.AsyncClient(auth=RegistryAuth(login, scopes), follow_redirects=True,
                                       timeout=httpx.Timeout(120.0, connect=15.0),
                                       headers={"User-Agent": "flyaway"})

    async def aclose(self) -> None:
        await self._http.aclose()

    def _named(self, what: str, version: str) -> str:
        """``image registry/repo:tag`` or ``blob registry/repo@sha256:…``, for messages."""
        return f"{what} {self.reference.name}{'@' if ':' in version else ':'}{version}"

    def _check(self, response: httpx.Response, action: str, subject: str) -> httpx.Response:
        """Map a failed answer to the error type that says whether retrying can help."""
        if response.is_success:
            return response
        status = response.status_code
        if status in (401, 403):
            why = "the image may not exist, or this login may not read it" if action == "pull" else \
                "this login may not push there"
            raise AccessDenied(f"{self.reference.registry} refused to {action} {self.reference.name} "
                               f"(HTTP {status}, login: {self._login_hint}): {why}")
        if status == 404:
            raise NotFound(f"{subject} not found")
        raise httpx.HTTPStatusError(f"{action} {subject}: {_registry_errors(response)} "
                                    f"from {response.request.url.copy_with(query=None)}",
                                    request=response.request, response=response)

    async def _request(self, method: str, url: str, *, action: str, subject: str, retry: bool = True,
                       missing_ok: bool = False, **kwargs: Any) -> httpx.Response:
        """One request, retried on transient trouble unless ``retry`` is off (a chunk of an upload)."""
        async def send() -> httpx.Response:
            response = await self._http.request(method, url, **kwargs)
            if missing_ok and response.status_code == 404:
                return response
            return self._check(response, action, subject)

        if not retry:
            return await send()
        async for attempt in async_retrying(is_transient):
            with attempt:
                return await send()
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_manifest(self, version: str) -> Document:
        """The manifest or index at a tag or digest, checked against the digest when pinned."""
        subject = self._named("image", version)
        response = await self._request("GET", f"{self._base}/manifests/{version}", action="pull", subject=subject,
                                       headers={"Accept": _ACCEPT_MANIFESTS})
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise LimitExceeded(f"{subject}: manifest of {len(response.content)} bytes is too large to be an image")
        try:
            media_type = json.loads(response.content).get("mediaType")
        except (ValueError, AttributeError):
            media_type = None
        media_type = media_type or response.headers.get("Content-Type", "").partition(";")[0].strip()
        document = Document(media_type, response.content)
        if ":" in version and document.digest != version:
            raise DataCorruption(f"{subject}: the registry served a manifest whose digest is {document.digest}")
        return document

    async def manifest_digest(self, version: str) -> str | None:
        """The digest a tag points at, or a digest if that manifest exists; ``None`` if absent."""
        response = await self._request("HEAD", f"{self._base}/manifests/{version}", action="pull",
                                       subject=self._named("manifest", version), missing_ok=True,
                                       headers={"Accept": _ACCEPT_MANIFESTS})
        if response.status_code == 404:
            return None
        return response.headers.get("Docker-Content-Digest") or (version if ":" in version else None)

    async def put_manifest(self, version: str, document: Document) -> None:
        response = await self._request("PUT", f"{self._base}/manifests/{version}", action="push",
                                       subject=self._named("manifest", version), content=document.content,
                                       headers={"Content-Type": document.media_type})
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != document.digest:
            raise DataCorruption(f"{self.reference.name}: pushed manifest {document.digest}, registry stored {stored}")

    async def has_blob(self, digest: str) -> bool:
        response = await self._request("HEAD", f"{self._base}/blobs/{digest}", action="pull",
                                       subject=self._named("blob", digest), missing_ok=True)
        return response.status_code != 404

    async def read_blob(self, descriptor: dict[str, Any]) -> bytes:
        """A small blob (a config) read whole and checked against its digest."""
        digest = descriptor["digest"]
        if descriptor.get("size", 0) > MAX_DOCUMENT_BYTES:
            raise LimitExceeded(f"{self.reference.name}: config {digest} of {descriptor['size']} bytes is too large")
        response = await self._request("GET", f"{self._base}/blobs/{digest}", action="pull",
                                       subject=self._named("blob", digest))
        hasher = _hasher_for(digest)
        hasher.update(response.content)
        if f"{hasher.name}:{hasher.hexdigest()}" != digest:
            raise DataCorruption(f"{self.reference.name}: blob {digest} read back with another digest")
        return response.content

    @asynccontextmanager
    async def open_blob(self, digest: str) -> AsyncIterator[httpx.Response]:
        """The blob as a streaming response (redirects to storage followed)."""
        async with self._http.stream("GET", f"{self._base}/blobs/{digest}") as response:
            if not response.is_success:
                await response.aread()
            yield self._check(response, "pull", self._named("blob", digest))

    @overload
    async def start_upload(self) -> str: ...

    @overload
    async def start_upload(self, mount: tuple[str, str] | None) -> str | None: ...

    async def start_upload(self, mount: tuple[str, str] | None = None) -> str | None:
        """Open an upload session and return its location; with ``mount=(digest, repository)``
        the registry may link the blob from that repository instead, and ``None`` says it did."""
        params = {"mount": mount[0], "from": mount[1]} if mount else None
        response = await self._request("POST", f"{self._base}/blobs/uploads/", action="push",
                                       subject=f"upload to {self.reference.name}", params=params)
        if mount and response.status_code == 201:
            return None
        return str(response.url.join(response.headers["Location"]))

    async def upload_chunk(self, location: str, chunk: bytes, offset: int) -> str:
        """PATCH one chunk; returns the location for the next. Not retried alone: the caller restarts the blob."""
        response = await self._request("PATCH", location, action="push",
                                       subject=f"upload to {self.reference.name}", retry=False,
                                       content=chunk,
                                       headers={"Content-Type": "application/octet-stream",
                                                "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
        return str(response.url.join(response.headers["Location"]))

    async def finish_upload(self, location: str, digest: str, last_chunk: bytes = b"") -> None:
        """PUT the last bytes (all of a small blob) and the digest the registry must verify."""
        separator = "&" if "?" in location else "?"
        await self._request("PUT", f"{location}{separator}digest={digest}", action="push",
                            subject=self._named("blob", digest),
                            retry=False, content=last_chunk, headers={"Content-Type": "application/octet-stream"})


@dataclass
class _Platform:
    """One platform's rewritten image: its new manifest and config, and the layers to copy."""

    name: str
    manifest: Document
    config: bytes
    layers: list[dict[str, Any]]


class _ImageCopier:
    """Copies one image (all its platforms) from ``source`` to ``destination``, counting what it did."""

    def __init__(self, stage: ImageStage, source: RepositoryClient, destination: RepositoryClient, *,
                 chunk_size: int, concurrency: int, on_progress: Callable[[int], None] | None) -> None:
        self._stage = stage
        self._source = source
        self._destination = destination
        self._same_registry = source.reference.api_host == destination.reference.api_host
        self._chunk_size = chunk_size
        self._slots = asyncio.Semaphore(concurrency)
        self._on_progress = on_progress
        self.copied = self.skipped = self.mounted = self.bytes = self.manifests_pushed = 0

    async def run(self) -> ImageCopyResult:
        source_ref, destination_ref = self._source.reference, self._destination.reference
        top = await self._source.get_manifest(source_ref.version)
        migrated_from = str(source_ref.with_digest(top.digest))
        platforms, output = await self._rewrite(top, migrated_from)
        await self._copy_blobs(platforms)
        for platform in platforms:
            await self._push_manifest(platform.manifest)
        await self._push_manifest(output)
        tag = destination_ref.tag or "latest"
        tag_updated = await self._destination.manifest_digest(tag) != output.digest
        if tag_updated:
            await self._destination.put_manifest(tag, output)
        return ImageCopyResult(
            source_image=migrated_from, source_digest=top.digest,
            destination_image=str(destination_ref.with_digest(output.digest)),
            destination_tag=str(destination_ref), destination_digest=output.digest, media_type=output.media_type,
            platforms=[platform.name for platform in platforms], blobs_copied=self.copied,
            blobs_skipped=self.skipped, blobs_mounted=self.mounted, bytes_copied=self.bytes,
            manifests_pushed=self.manifests_pushed, tag_updated=tag_updated)

    async def _rewrite(self, top: Document, migrated_from: str) -> tuple[list[_Platform], Document]:
        """The platforms to copy, rewritten, and the document the tag will point at."""
        reference = self._source.reference
        wanted = self._stage.platform
        if manifest_kind(top.media_type, reference) == "manifest":
            platform = await self._rewrite_manifest(top, migrated_from)
            if wanted != "all" and not platform_matches(wanted, json.loads(platform.config)):
                raise NotFound(f"image {reference} is {platform.name} only; the plan asks for {wanted}")
            return [platform], platform.manifest
        index = top.body
        images = [entry for entry in index.get("manifests", []) if _is_platform_image(entry)]
        entries = [entry for entry in images if wanted == "all" or platform_matches(wanted, entry["platform"])]
        if not entries:
            available = sorted(platform_name(entry["platform"]) for entry in images)
            raise NotFound(f"image {reference} has no {wanted} platform (it has: {', '.join(available) or 'none'})")
        if wanted != "all":
            entries = entries[:1]
        platforms = []
        for entry in entries:
            child = await self._source.get_manifest(entry["digest"])
            if manifest_kind(child.media_type, reference) != "manifest":
                raise InvalidPlan(f"{reference}: index entry {entry['digest']} is itself an index ({child.media_type})")
            platforms.append(await self._rewrite_manifest(child, migrated_from, platform_name(entry["platform"])))
        if wanted != "all":
            return platforms, platforms[0].manifest
        new_index = dict(index, manifests=[dict(entry, **platform.manifest.descriptor())
                                           for entry, platform in zip(entries, platforms, strict=True)])
        return platforms, Document(top.media_type, canonical_json(new_index))

    async def _rewrite_manifest(self, manifest: Document, migrated_from: str, name: str | None = None) -> _Platform:
        body = manifest.body
        config_descriptor = body["config"]
        if config_descriptor.get("mediaType") not in CONFIG_TYPES:
            raise InvalidPlan(f"{self._source.reference}: config media type '{config_descriptor.get('mediaType')}' "
                              "is not a container image config (is this an artifact rather than an image?)")
        config = json.loads(await self._source.read_blob(config_descriptor))
        new_config = canonical_json(rewrite_config(config, self._stage, migrated_from))
        new_body = dict(body, config=dict(config_descriptor, digest=digest_of(new_config), size=len(new_config)))
        return _Platform(name=name or platform_name(json.loads(new_config)),
                         manifest=Document(manifest.media_type, canonical_json(new_body)),
                         config=new_config, layers=body.get("layers", []))

    async def _copy_blobs(self, platforms: list[_Platform]) -> None:
        """Every distinct layer and config, a few at a time; the first failure cancels the rest."""
        layers = {layer["digest"]: layer for platform in platforms for layer in platform.layers}
        configs = {digest_of(platform.config): platform.config for platform in platforms}
        try:
            async with asyncio.TaskGroup() as group:
                for layer in layers.values():
                    group.create_task(self._copy_layer(layer))
                for digest, config in configs.items():
                    group.create_task(self._push_config(digest, config))
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None  # one error, typed, for the caller

    async def _copy_layer(self, descriptor: dict[str, Any]) -> None:
        digest = descriptor["digest"]
        async with self._slots:
            if await self._destination.has_blob(digest):
                self.skipped += 1
                return
            mount = (digest, self._source.reference.repository) if self._same_registry else None
            async for attempt in async_retrying(is_transient):
                with attempt:
                    location = await self._destination.start_upload(mount)
                    if location is None:
                        self.mounted += 1
                        log.debug("blob mounted", digest=digest)
                        return
                    await self._stream_layer(descriptor, location)
            self.copied += 1
            self.bytes += descriptor["size"]

    async def _stream_layer(self, descriptor: dict[str, Any], location: str) -> None:
        """Source GET streamed into PATCHes of ``chunk_size``; the last chunk goes with the closing PUT,
        so a blob of one chunk is a monolithic upload. The digest is checked before that PUT."""
        digest, size = descriptor["digest"], descriptor["size"]
        hasher = _hasher_for(digest)
        offset = 0
        pending = b""
        async with self._source.open_blob(digest) as response:
            async for chunk in response.aiter_bytes(self._chunk_size):
                if pending:
                    location = await self._destination.upload_chunk(location, pending, offset)
                    offset += len(pending)
                    self._progress(len(pending))
                hasher.update(chunk)
                pending = chunk
        if offset + len(pending) != size or f"{hasher.name}:{hasher.hexdigest()}" != digest:
            raise DataCorruption(f"{self._source.reference.name}: blob {digest} read back as "
                                 f"{offset + len(pending)} bytes with digest {hasher.name}:{hasher.hexdigest()}")
        await self._destination.finish_upload(location, digest, pending)
        self._progress(len(pending))
        log.debug("blob copied", digest=digest, size=size)

    async def _push_config(self, digest: str, config: bytes) -> None:
        async with self._slots:
            if await self._destination.has_blob(digest):
                self.skipped += 1
                return
            location = await self._destination.start_upload()
            await self._destination.finish_upload(location, digest, config)
            self._progress(len(config))
            self.copied += 1
            self.bytes += len(config)

    async def _push_manifest(self, document: Document) -> None:
        if await self._destination.manifest_digest(document.digest) == document.digest:
            return
        await self._destination.put_manifest(document.digest, document)
        self.manifests_pushed += 1

    def _progress(self, size: int) -> None:
        if self._on_progress is not None:
            self._on_progress(size)


async def _open_repository(stage: ImageStage, reference: ImageReference, *, is_source: bool,
                           scopes: list[str]) -> RepositoryClient:
    credentials = stage.credentials_for(reference, is_source=is_source)
    login = await asyncio.to_thread(resolve_login, credentials, reference.registry)
    hint = credentials.describe() if credentials is not None and login else "anonymous"
    return RepositoryClient(reference, login=login, login_hint=hint,
                            plain_http=stage.uses_plain_http(reference), scopes=scopes)


async def copy_image(stage: ImageStage, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     concurrency: int = DEFAULT_CONCURRENCY,
                     on_progress: Callable[[int], None] | None = None) -> ImageCopyResult:
    """Copy ``stage.source`` to ``stage.destination`` with the config the plan asks for (async).

    ``stage.source`` must be set by now (the workflow fills it from the Fly app when the plan
    leaves it out). ``on_progress`` is called with the byte count of each chunk uploaded, so an
    activity can heartbeat. Raises NotFound, AccessDenied, MissingCredentials, InvalidPlan,
    DataCorruption for what retrying cannot fix; transient trouble is retried per request.
    """
    source_ref = stage.source_reference
    if source_ref is None:
        raise InvalidPlan("image.source: no source image; name one or let flyaway read it from the Fly app")
    destination_ref = stage.destination_reference
    mount_scope = ([f"repository:{source_ref.repository}:pull"]
                   if source_ref.api_host == destination_ref.api_host else [])
    log.info("image copy started", source=str(source_ref), destination=str(destination_ref), platform=stage.platform)
    async with AsyncExitStack() as stack:
        source = await _open_repository(stage, source_ref, is_source=True,
                                        scopes=[f"repository:{source_ref.repository}:pull"])
        stack.push_async_callback(source.aclose)
        destination = await _open_repository(stage, destination_ref, is_source=False,
                                             scopes=[f"repository:{destination_ref.repository}:pull,push",
                                                     *mount_scope])
        stack.push_async_callback(destination.aclose)
        result = await _ImageCopier(stage, source, destination, chunk_size=chunk_size, concurrency=concurrency,
                                    on_progress=on_progress).run()
    log.info("image copy finished", **result.model_dump(exclude={"source_image", "destination_image"}))
    return result
