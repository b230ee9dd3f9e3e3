"""A Google Cloud Storage bucket as a destination (through :class:`flyaway.providers.google.GcsBucket`).

Small files are single uploads that carry the crc32c of the source bytes, which GCS checks on
arrival. A large file is one resumable upload session: its parts go in order
(``sequential_parts``), each a multiple of 256 KiB but the last, each chunk request saying
where it starts. After any failure, and in a later attempt after a crash, the server is first
asked how many bytes it persisted (``Content-Range: bytes */<size>``), and sending goes on from
there: nothing that landed is sent again. GCS keeps no checksum per chunk, so ``complete``
checks the object's crc32c against the crc32c of the source bytes, combined from the parts'.

The engine's upload id is a random token, not the session URI: anyone holding the URI can write
the object for a week, so it stays at the destination (``gcs-sessions/`` in flyaway's state) and
out of workflow history, heartbeats and logs. A session URI read back from there is used only if
it is an upload URL of this bucket on the storage host the client talks to, so a planted one can
never receive the worker's bearer token.
"""

from __future__ import annotations

import base64
import builtins
import json
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import requests

from flyaway.activities.storage.base import (
    DESTINATIONS,
    STATE_DIR,
    Destination,
    DestinationLimits,
    DestObject,
    LandedObject,
    UploadGone,
    is_state_key,
)
from flyaway.activities.storage.checksums import combined_crc32c
from flyaway.errors import DataCorruption, decoding_state
from flyaway.models.base import join_key
from flyaway.models.copy import PartRecord
from flyaway.models.locations import GcsLocation
from flyaway.providers.google import GcsBucket, SessionRequestFailed, storage_host

GCS_CHUNK = 256 * 1024
#: resumable upload status codes: 308 "resume incomplete"; 499 answers the cancel of a session
RESUME_INCOMPLETE = 308
SESSION_GONE = (404, 410, 499)


def crc32c_b64(value: int) -> str:
    """The form GCS gives a crc32c in: base64 of its 4 big-endian bytes."""
    return base64.b64encode(value.to_bytes(4, "big")).decode()


@dataclass
class _Session:
    """A resumable upload session and what this process knows of it."""

    uri: str
    size: int
    #: bytes in every part but the last, recorded before the first part is sent
    part_size: int | None = None
    #: bytes the server holds, when known without asking; None after any failure
    persisted: int | None = None
    #: the object resource the server gave when the last byte landed
    resource: dict[str, Any] | None = None


_SESSION_TOKEN = re.compile(r"[0-9a-f]{32}")


def session_state_name(token: str) -> str:
    if not _SESSION_TOKEN.fullmatch(token):
        raise DataCorruption(f"upload token {token[:80]!r} read back from flyaway's state is not one flyaway makes; "
                             f"delete its checkpoint")
    return f"gcs-sessions/{token}.json"


@DESTINATIONS.register("gcs")
class GcsDestination(Destination):
    #: object names may not hold CR or LF: cloud.google.com/storage/docs/objects#naming
    limits = DestinationLimits(max_parts=2**31, min_part_size=GCS_CHUNK, max_part_size=5 * 1024**3,
                               max_single_put=5 * 1024**3, max_object_size=5 * 1024**4, part_multiple=GCS_CHUNK,
                               sequential_parts=True, parts_from_any_worker=False, forbidden_characters="\r\n")
    part_checksum = "crc32c"

    @classmethod
    def open(cls, location: GcsLocation, concurrency: int) -> Self:
        return cls(location, concurrency)

    def __init__(self, location: GcsLocation, concurrency: int = 8) -> None:
        self.location = location
        self.prefix = location.prefix
        self.bucket = GcsBucket(location.bucket, location.credentials_env, location.project, location.describe(),
                                concurrency)
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return self.location.describe()

    def key_of(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _gs(self, key: str) -> str:
        return f"gs://{self.location.bucket}/{self.key_of(key)}"

    def check(self) -> None:
        self.bucket.probe(self._state_key(f"probe-{uuid.uuid4().hex}"), self.key_of(""))

    def stat(self, key: str) -> DestObject | None:
        stored = self.bucket.get(self.key_of(key))
        return None if stored is None else DestObject(key=key, size=stored.size, version=stored.generation)

    def list(self) -> Iterator[DestObject]:
        base = f"{self.prefix.rstrip('/')}/" if self.prefix else ""
        for stored in self.bucket.list(base):
            rel = stored.name[len(base):]
            if not rel or rel.endswith("/") or is_state_key(rel):
                continue
            yield DestObject(key=rel, size=stored.size, version=stored.generation)

    def landed(self, key: str) -> LandedObject | None:
        stored = self.bucket.get(self.key_of(key))
        if stored is None or not stored.crc32c:
            return None
        return LandedObject(size=stored.size, checksum=base64.b64decode(stored.crc32c).hex(), version=stored.generation)

    def put(self, key: str, data: bytes, checksum: str, sha256: str) -> str:
        expected = crc32c_b64(int(checksum, 16))
        stored = self.bucket.upload(self.key_of(key), data, crc32c=expected)
        if stored.crc32c != expected:
            raise DataCorruption(f"{self._gs(key)}: stored crc32c {stored.crc32c} is not {expected}, of the source "
                                 f"bytes")
        return stored.generation

    # resumable sessions

    def begin_upload(self, key: str, size: int) -> str:
        uri = self.bucket.create_session(self.key_of(key), size)
        token = uuid.uuid4().hex
        session = _Session(uri=self._check_uri(uri), size=size, persisted=0)
        self._save(token, session)
        with self._lock:
            self._sessions[token] = session
        return token

    def _check_uri(self, uri: str) -> str:
        """The URI, if it is a resumable upload URL of this bucket on the storage host; never sent a token otherwise."""
        parts = urllib.parse.urlsplit(uri)
        expected = urllib.parse.urlsplit(storage_host())
        path = f"/upload/storage/v1/b/{urllib.parse.quote(self.location.bucket, safe='')}/o"
        query = urllib.parse.parse_qs(parts.query)
        if ((parts.scheme, parts.netloc) != (expected.scheme, expected.netloc) or parts.path != path
                or query.get("uploadType") != ["resumable"] or parts.username or parts.password or parts.fragment):
            raise DataCorruption(f"{self.describe()}: an upload session in flyaway's state is not an upload URL of "
                                 f"bucket {self.location.bucket} at {storage_host()}; refusing to use it")
        return uri

    def _save(self, token: str, session: _Session) -> None:
        saved = {"uri": session.uri, "size": session.size, "part_size": session.part_size}
        self.put_state(session_state_name(token), json.dumps(saved).encode())

    def _session(self, token: str) -> _Session:
        with self._lock:
            session = self._sessions.get(token)
        if session is None:
            raw = self.get_state(session_state_name(token))
            if raw is None:
                raise UploadGone(token)
            with decoding_state(f"{self.describe()} {STATE_DIR}/{session_state_name(token)}"):
                saved = json.loads(raw)
                session = _Session(uri=self._check_uri(str(saved["uri"])), size=int(saved["size"]),
                                   part_size=None if saved["part_size"] is None else int(saved["part_size"]))
            with self._lock:
                session = self._sessions.setdefault(token, session)
        return session

    def _persisted_after(self, session: _Session, response: requests.Response, token: str) -> int:
        """How many bytes the server holds, from its answer to a chunk or a status query."""
        if response.status_code == RESUME_INCOMPLETE:
            held = response.headers.get("Range")  # "bytes=0-<last>"; absent when nothing persisted
            return int(held.rsplit("-", 1)[1]) + 1 if held else 0
        if response.status_code in (200, 201):
            session.resource = response.json()
            return session.size
        if response.status_code in SESSION_GONE:
            raise UploadGone(token)
        raise SessionRequestFailed(response.status_code, response.text)

    def _query(self, session: _Session, token: str) -> int:
        """Ask the server how many bytes of the session it persisted (the resumable protocol's recovery)."""
        response = self.bucket.session_request("PUT", session.uri, data=b"", headers={"Content-Range": f"bytes */{session.size}"})
        return self._persisted_after(session, response, token)

    def _send(self, session: _Session, token: str, offset: int, data: bytes) -> None:
        """Send the bytes of ``data`` (the file's from ``offset``) the server does not hold yet."""
        end = offset + len(data)
        try:
            persisted = session.persisted if session.persisted is not None else self._query(session, token)
            if persisted < offset:
                raise UploadGone(token)  # the server lost bytes before this part: resume from what it has
            while persisted < end:
                body = data if persisted == offset else data[persisted - offset:]
                response = self.bucket.session_request("PUT", session.uri, data=body, headers={
                    "Content-Range": f"bytes {persisted}-{end - 1}/{session.size}"})
                try:
                    held = self._persisted_after(session, response, token)
                except SessionRequestFailed as error:
                    if error.status == 400:  # the server disagrees with the offset it told us: start a new session
                        raise UploadGone(token) from None
                    raise
                if held <= persisted:
                    raise SessionRequestFailed(503, f"the server kept none of bytes {persisted}-{end - 1}")
                persisted = held
            session.persisted = persisted
        except BaseException:
            session.persisted = None  # ask the server before the next try
            raise

    def list_parts(self, key: str, upload_id: str) -> dict[int, PartRecord]:
        """The parts wholly below the offset the server persisted (the session holds no checksums)."""
        session = self._session(upload_id)
        persisted = self.bucket.call(self._gs(key), lambda: self._query(session, upload_id))
        session.persisted = persisted
        if session.part_size is None:
            return {}  # no part was sent
        parts = {}
        for number, start in enumerate(range(0, session.size, session.part_size), start=1):
            end = min(start + session.part_size, session.size)
            if end > persisted:
                break
            parts[number] = PartRecord(number=number, size=end - start, checksum="")
        return parts

    def upload_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes,
                    checksum: str) -> PartRecord:
        session = self._session(upload_id)
        if session.part_size is None:  # parts go in order: this is part 1, as long as every part but the last
            session.part_size = len(data)
            self._save(upload_id, session)
        self.bucket.call(f"{self._gs(key)} part {number}", lambda: self._send(session, upload_id, offset, data))
        return PartRecord(number=number, size=len(data), checksum=checksum)

    def _final_resource(self, key: str, session: _Session, token: str) -> dict[str, Any]:
        """The object the session made: from its last answer, the server, or (session gone) the bucket."""
        known = session.resource  # narrowed apart from the attribute, which _query sets
        if known is not None:
            return known
        try:
            held = self.bucket.call(self._gs(key), lambda: self._query(session, token))
        except UploadGone:
            stored = self.bucket.get(self.key_of(key))
            if stored is None:
                raise
            return {"size": stored.size, "crc32c": stored.crc32c, "generation": stored.generation}
        if session.resource is None:
            raise DataCorruption(f"{self._gs(key)}: the upload session holds {held} of {session.size} bytes "
                                 f"after every part was sent")
        return session.resource

    def complete(self, key: str, upload_id: str, parts: builtins.list[PartRecord], sha256: str) -> str:
        expected = crc32c_b64(combined_crc32c(parts))
        try:
            session = self._session(upload_id)
        except UploadGone:
            # completed and forgotten by an attempt killed before it recorded the file
            landed = self.landed(key)
            if landed is None or (landed.size, crc32c_b64(int(landed.checksum, 16))) != (
                    sum(p.size for p in parts), expected):
                raise
            return landed.version
        resource = self._final_resource(key, session, upload_id)
        if int(resource["size"]) != session.size or resource.get("crc32c") != expected:
            raise DataCorruption(f"{self._gs(key)}: object of {resource['size']} bytes with crc32c "
                                 f"{resource.get('crc32c')}; the source bytes are {session.size} with {expected}")
        self._forget(upload_id)
        return str(resource["generation"])

    def abort(self, key: str, upload_id: str) -> None:
        try:
            session = self._session(upload_id)
        except UploadGone:
            return

        def cancel() -> None:
            response = self.bucket.session_request("DELETE", session.uri)
            # a server that cannot cancel (501) lets the session expire unseen: nothing shows before its last byte
            if response.status_code not in (200, 204, 501, *SESSION_GONE):
                raise SessionRequestFailed(response.status_code, response.text)

        self.bucket.call(self._gs(key), cancel)
        self._forget(upload_id)

    def _forget(self, token: str) -> None:
        self.delete_state(session_state_name(token))
        with self._lock:
            self._sessions.pop(token, None)

    # flyaway's own state

    def _state_key(self, name: str) -> str:
        return join_key(self.prefix, f"{STATE_DIR}/{name}")

    def put_state(self, name: str, data: bytes) -> None:
        self.bucket.upload(self._state_key(name), data)

    def get_state(self, name: str, offset: int = 0, length: int | None = None) -> bytes | None:
        return self.bucket.download(self._state_key(name), offset, None if length is None else offset + length - 1)

    def list_state(self, prefix: str) -> builtins.list[str]:
        base = self._state_key("")
        base = base if base.endswith("/") else base + "/"
        return sorted(stored.name[len(base):] for stored in self.bucket.list(base + prefix))

    def delete_state(self, name: str) -> None:
        self.bucket.delete(self._state_key(name))
