"""A Google Cloud Storage bucket as a destination (through :class:`flyaway.providers.google.GcsBucket`).

Small files are single uploads that carry the crc32c of the source bytes, which GCS checks on
arrival.

A large file is, by default, a parallel composite upload: each part is uploaded as its own
temporary object, carrying its crc32c (GCS refuses bytes that do not match), below
``gcs-parts/<token>/`` in flyaway's state, so a listing of the user's objects never shows one and
abort finds them by the upload id. Parts go in any order and from any worker, so a file split
among workers lands in one upload. ``list_parts`` lists the temporaries (size and crc32c from
their metadata); ``complete`` checks each against the part recorded, composes them (32 sources
per ``compose``: in levels, intermediates beside the parts; at most 1,024 components, hence
``max_parts``), checks the object's crc32c against the crc32c combined from the parts', and
deletes the temporaries. Called again after a kill, it finds the object made from those bytes
(same size and crc32c) and returns its generation without sending or composing anything.

Composite uploads are used for every large file, not only for split ones: one worker then sends
a file's parts in parallel too, which a session cannot take. What they cost, and the plan's
``composite_uploads: false`` that turns them off:

- a composite object has no MD5 (``md5Hash``), only its crc32c; flyaway's manifest keeps sha256;
- the temporaries are objects of the bucket: with a retention policy or a default event-based
  hold they could not be deleted, and in a class other than STANDARD each is billed its class's
  minimum storage duration (30, 90 or 365 days) however soon it goes. ``check`` refuses such a
  bucket unless composite uploads are off (when the worker may read the bucket's settings);
- with soft delete on (GCS's default: 7 days), deleted temporaries are billed that long too.

With ``composite_uploads: false`` a large file is one resumable upload session: its parts go in
order (``sequential_parts``) from one worker, each a multiple of 256 KiB but the last, each
chunk request saying where it starts. After any failure, and in a later attempt after a crash,
the server is first asked how many bytes it persisted (``Content-Range: bytes */<size>``), and
sending goes on from there: nothing that landed is sent again. GCS keeps no checksum per chunk,
so ``complete`` checks the object's crc32c against the crc32c of the source bytes, combined
from the parts'.

The engine's upload id of a session is a random token, not the session URI: anyone holding the
URI can write the object for a week, so it stays at the destination (``gcs-sessions/`` in
flyaway's state) and out of workflow history, heartbeats and logs. A session URI read back from
there is used only if it is an upload URL of this bucket on the storage host the client talks
to, so a planted one can never receive the worker's bearer token. A composite upload's id is
``compose-<token>``: every method tells the two kinds apart by it, so an upload begun before the
plan's setting changed is finished (or aborted) as it began.
"""

from __future__ import annotations

import base64
import builtins
import json
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
from flyaway.errors import DataCorruption, InvalidPlan, decoding_state
from flyaway.models.base import join_key
from flyaway.models.copy import PartRecord
from flyaway.models.locations import GcsLocation
from flyaway.providers.google import (
    GcsBucket,
    SessionRequestFailed,
    StoredObject,
    is_upload_session_uri,
    storage_host,
)

GCS_CHUNK = 256 * 1024
#: resumable upload status codes: 308 "resume incomplete"; 499 answers the cancel of a session
RESUME_INCOMPLETE = 308
SESSION_GONE = (404, 410, 499)


def crc32c_b64(value: int) -> str:
    """The form GCS gives a crc32c in: base64 of its 4 big-endian bytes."""
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def _crc32c_hex(stored: StoredObject) -> str:
    """An object's crc32c as flyaway records checksums (hex); "" when GCS gave none."""
    return base64.b64decode(stored.crc32c).hex() if stored.crc32c else ""


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
_COMPOSITE_ID = re.compile(r"compose-([0-9a-f]{32})")
#: sources one ``compose`` takes, and components a composite object may have
COMPOSE_SOURCES = 32
MAX_COMPONENTS = 1024
#: the storage class whose objects may be deleted at once without a fee
STANDARD_CLASS = "STANDARD"


def _foreign(token: str) -> DataCorruption:
    return DataCorruption(f"upload token {token[:80]!r} read back from flyaway's state is not one flyaway makes; "
                          f"delete its checkpoint")


def session_state_name(token: str) -> str:
    if not _SESSION_TOKEN.fullmatch(token):
        raise _foreign(token)
    return f"gcs-sessions/{token}.json"


def composite_token(upload_id: str) -> str | None:
    """The token of a composite upload's id; None for a session's (``compose-`` ids of another shape are refused)."""
    if not upload_id.startswith("compose-"):
        return None
    matched = _COMPOSITE_ID.fullmatch(upload_id)
    if matched is None:
        raise _foreign(upload_id)
    return matched.group(1)


def parts_folder(token: str) -> str:
    """Where a composite upload keeps its temporary objects, in flyaway's state."""
    return f"gcs-parts/{token}/"


def upload_record(token: str) -> str:
    """The record of a composite upload in flyaway's state (the object's key and size), beside its parts' folder;
    an upload whose record is gone was completed or aborted."""
    return f"gcs-parts/{token}.json"


def compose_plan(sources: builtins.list[str], folder: str) -> tuple[builtins.list[tuple[str, builtins.list[str]]],
                                                                     builtins.list[str]]:
    """The intermediate composes (name, its sources) that bring ``sources`` down to at most 32, level by level,
    and the sources of the final compose. Intermediates are named in ``folder``."""
    steps: builtins.list[tuple[str, builtins.list[str]]] = []
    level = 0
    while len(sources) > COMPOSE_SOURCES:
        groups = [sources[start:start + COMPOSE_SOURCES] for start in range(0, len(sources), COMPOSE_SOURCES)]
        sources = [f"{folder}level-{level}-{index:04d}" for index in range(len(groups))]
        steps += zip(sources, groups, strict=True)
        level += 1
    return steps, sources


#: object names may not hold CR or LF: cloud.google.com/storage/docs/objects#naming
COMPOSITE_LIMITS = DestinationLimits(max_parts=MAX_COMPONENTS, min_part_size=GCS_CHUNK, max_part_size=5 * 1024**3,
                                     max_single_put=5 * 1024**3, max_object_size=5 * 1024**4,
                                     forbidden_characters="\r\n")
SESSION_LIMITS = DestinationLimits(max_parts=2**31, min_part_size=GCS_CHUNK, max_part_size=5 * 1024**3,
                                   max_single_put=5 * 1024**3, max_object_size=5 * 1024**4, part_multiple=GCS_CHUNK,
                                   sequential_parts=True, parts_from_any_worker=False, forbidden_characters="\r\n")


@DESTINATIONS.register("gcs")
class GcsDestination(Destination):
    limits = COMPOSITE_LIMITS
    part_checksum = "crc32c"
    #: a part buffer goes out as the request body (a session's chunk, or inside ``MultipartBody``), never copied
    takes_views = True

    @classmethod
    def open(cls, location: GcsLocation, concurrency: int) -> Self:
        return cls(location, concurrency)

    def __init__(self, location: GcsLocation, concurrency: int = 8) -> None:
        self.location = location
        self.prefix = location.prefix
        self.bucket = GcsBucket(location.bucket, location.credentials_env, location.project, location.describe(),
                                concurrency)
        self.concurrency = concurrency
        self.limits = COMPOSITE_LIMITS if location.composite_uploads else SESSION_LIMITS
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
        settings = self.bucket.settings() if self.location.composite_uploads else None
        if settings is None:
            return
        if settings.retention_seconds or settings.event_based_hold:
            why = "a retention policy" if settings.retention_seconds else "a default event-based hold"
            raise InvalidPlan(f"{self.describe()}: the bucket has {why}, so the temporary parts of a composite upload "
                              f"could not be deleted; set composite_uploads: false on the destination")
        if settings.storage_class != STANDARD_CLASS:
            raise InvalidPlan(f"{self.describe()}: the bucket's storage class is {settings.storage_class}, whose "
                              f"minimum storage duration every temporary part of a composite upload would be "
                              f"billed; set composite_uploads: false on the destination")

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
        return LandedObject(size=stored.size, checksum=_crc32c_hex(stored), version=stored.generation)

    def put(self, key: str, data: bytes, checksum: str, sha256: str) -> str:
        return self._put_checked(self.key_of(key), data, checksum).generation

    def _put_checked(self, name: str, data: bytes, checksum: str) -> StoredObject:
        """Store ``data`` as object ``name``; GCS checks it against ``checksum`` (crc32c hex), and so do we."""
        expected = crc32c_b64(int(checksum, 16))
        stored = self.bucket.upload(name, data, crc32c=expected)
        if stored.crc32c != expected:
            raise DataCorruption(f"gs://{self.location.bucket}/{name}: stored crc32c {stored.crc32c} is not "
                                 f"{expected}, of the source bytes")
        return stored

    def begin_upload(self, key: str, size: int) -> str:
        if self.location.composite_uploads:
            token = uuid.uuid4().hex
            self.put_state(upload_record(token), json.dumps({"key": key, "size": size}).encode())
            return f"compose-{token}"
        return self._begin_session(key, size)

    def list_parts(self, key: str, upload_id: str) -> dict[int, PartRecord]:
        token = composite_token(upload_id)
        if token is None:
            return self._session_parts(key, upload_id)
        if self.get_state(upload_record(token)) is None:
            raise UploadGone(upload_id)
        return {number: PartRecord(number=number, size=stored.size, checksum=_crc32c_hex(stored))
                for number, stored in self._temporaries(token)[0].items()}

    def upload_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes,
                    checksum: str) -> PartRecord:
        token = composite_token(upload_id)
        if token is None:
            return self._session_part(key, upload_id, number, offset, data, checksum)
        self._put_checked(self._state_key(f"{parts_folder(token)}{number:06d}"), data, checksum)
        return PartRecord(number=number, size=len(data), checksum=checksum)

    def complete(self, key: str, upload_id: str, parts: builtins.list[PartRecord], sha256: str) -> str:
        token = composite_token(upload_id)
        if token is None:
            return self._complete_session(key, upload_id, parts)
        if self.get_state(upload_record(token)) is None:
            # completed by an attempt killed before it recorded; a part an attempt that did not know sent late
            # would be left behind, so the folder is emptied again
            version = self._made_before(key, upload_id, parts)
            self._drop_all(token)
            return version
        size, expected = sum(part.size for part in parts), crc32c_b64(combined_crc32c(parts))
        current = self.bucket.get(self.key_of(key))  # read before the parts: see the final compose
        held, others = self._temporaries(token)
        if any(part.number not in held for part in parts) or (
                current is not None and (current.size, current.crc32c) == (size, expected)):
            # composed already: by an attempt killed while deleting the temporaries, or by another piece
            version = self._made_before(key, upload_id, parts)
            self._drop(token, [stored.name for stored in (*held.values(), *others)])
            return version
        for part in parts:
            stored = held[part.number]
            if (stored.size, _crc32c_hex(stored)) != (part.size, part.checksum):
                raise DataCorruption(f"{self._gs(key)} part {part.number}: {stored.size} bytes with crc32c "
                                     f"{_crc32c_hex(stored)} landed; the source's are {part.size} with {part.checksum}")
        steps, last = compose_plan([held[part.number].name for part in parts], self._state_key(parts_folder(token)))
        for name, sources in steps:
            if self.bucket.compose(name, sources) is None:
                return self._made_before(key, upload_id, parts)
        # over the generation read before the parts were listed: of two pieces that both saw every piece
        # recorded and compose at once, one makes the object and the other finds it (one generation, not two)
        made = self.bucket.compose(self.key_of(key), last, 0 if current is None else int(current.generation))
        if made is None:
            return self._made_before(key, upload_id, parts)
        if (made.size, made.crc32c) != (size, expected):
            raise DataCorruption(f"{self._gs(key)}: composed object of {made.size} bytes with crc32c {made.crc32c}; "
                                 f"the source bytes are {size} with {expected}")
        self._drop(token, [stored.name for stored in held.values()] + [name for name, _ in steps]
                   + [stored.name for stored in others])
        return made.generation

    def abort(self, key: str, upload_id: str) -> None:
        token = composite_token(upload_id)
        if token is None:
            self._abort_session(key, upload_id)
            return
        self._drop_all(token)

    def _temporaries(self, token: str) -> tuple[dict[int, StoredObject], builtins.list[StoredObject]]:
        """A composite upload's parts by number, and its other temporaries (intermediates of a compose)."""
        parts: dict[int, StoredObject] = {}
        others: builtins.list[StoredObject] = []
        folder = self._state_key(parts_folder(token))
        for stored in self.bucket.list(folder):
            name = stored.name[len(folder):]
            if name.isdigit():
                parts[int(name)] = stored
            else:
                others.append(stored)
        return parts, others

    def _drop(self, token: str, names: builtins.list[str]) -> None:
        """Delete a composite upload's temporaries, then its record."""
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(names)))) as pool:
            list(pool.map(self.bucket.delete, names))
        self.delete_state(upload_record(token))

    def _drop_all(self, token: str) -> None:
        """Delete whatever temporaries a composite upload has, then its record."""
        held, others = self._temporaries(token)
        self._drop(token, [stored.name for stored in (*held.values(), *others)])

    def _made_before(self, key: str, upload_id: str, parts: builtins.list[PartRecord]) -> str:
        """The version of the object at ``key`` if it holds the bytes of ``parts`` (same size and crc32c), made by
        an earlier attempt that was killed before it recorded the file; else ``UploadGone``."""
        landed = self.landed(key)
        if landed is None or (landed.size, int(landed.checksum, 16)) != (
                sum(p.size for p in parts), combined_crc32c(parts)):
            raise UploadGone(upload_id)
        return landed.version

    # resumable sessions

    def _begin_session(self, key: str, size: int) -> str:
        uri = self.bucket.create_session(self.key_of(key), size)
        token = uuid.uuid4().hex
        session = _Session(uri=uri, size=size, persisted=0)
        self._save(token, session)
        with self._lock:
            self._sessions[token] = session
        return token

    def _check_uri(self, uri: str) -> str:
        """The URI read from state, if it is a resumable upload URL of this bucket on the storage host; never sent a
        token otherwise (a new session's URI is checked where it is opened)."""
        if not is_upload_session_uri(uri, self.location.bucket):
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
        response = self.bucket.request("PUT", session.uri, data=b"", headers={"Content-Range": f"bytes */{session.size}"})
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
                response = self.bucket.request("PUT", session.uri, data=body, headers={
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

    def _session_parts(self, key: str, upload_id: str) -> dict[int, PartRecord]:
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

    def _session_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes,
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

    def _complete_session(self, key: str, upload_id: str, parts: builtins.list[PartRecord]) -> str:
        expected = crc32c_b64(combined_crc32c(parts))
        try:
            session = self._session(upload_id)
        except UploadGone:
            # completed and forgotten by an attempt killed before it recorded the file
            return self._made_before(key, upload_id, parts)
        resource = self._final_resource(key, session, upload_id)
        if int(resource["size"]) != session.size or resource.get("crc32c") != expected:
            raise DataCorruption(f"{self._gs(key)}: object of {resource['size']} bytes with crc32c "
                                 f"{resource.get('crc32c')}; the source bytes are {session.size} with {expected}")
        self._forget(upload_id)
        return str(resource["generation"])

    def _abort_session(self, key: str, upload_id: str) -> None:
        try:
            session = self._session(upload_id)
        except UploadGone:
            return

        def cancel() -> None:
            response = self.bucket.request("DELETE", session.uri)
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
