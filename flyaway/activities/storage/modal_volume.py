"""A Modal Volume (v2) as a destination, through the ``modal`` SDK.

Modal uploads whole files: ``batch_upload`` needs seekable files and commits when its block
exits, and a partial file cannot be resumed from the client. So a file larger than a part is
staged on the worker's disk first, one file at a time: the staging area is a
:class:`LocalDestination` below ``staging_dir``, whose parts are ``pwrite``s into a hidden file
with a journal of landed parts, so a worker restarted on the same disk resumes staging where it
stopped, and anywhere else the file starts over. Completing an upload checks the staged bytes'
sha256, uploads the file, reads it back (whole, or its size and first 8 MiB, as the plan
says) and removes the staged copy. Small files go up straight from memory. flyaway's own state
(listings, manifests, upload checkpoints) lives in the volume under ``STATE_DIR``.

The SDK is reached through one seam, :func:`flyaway.providers.modal.volume_opener` (a fake's in the
tests, since no Modal server runs there).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import google_crc32c

from flyaway.activities.storage.base import (
    DESTINATIONS,
    STATE_DIR,
    Destination,
    DestinationLimits,
    DestObject,
    LandedObject,
    UploadGone,
)
from flyaway.activities.storage.checksums import Hasher, combined_crc32c
from flyaway.activities.storage.local import LocalDestination
from flyaway.errors import (
    AccessDenied,
    DataCorruption,
    LimitExceeded,
    NotFound,
    Unreachable,
)
from flyaway.models.base import join_key
from flyaway.models.copy import PartRecord, SourceFile
from flyaway.models.locations import LocalLocation, ModalVolumeLocation
from flyaway.providers.modal import (
    FileEntry,
    FileEntryType,
    ModalToken,
    NotFoundError,
    VolumeOpener,
    is_transient,
    volume_opener,
)

T = TypeVar("T")

#: v2 volumes hold files under 1 TiB and at most 32,768 entries in one folder
MAX_FILE_SIZE = 2**40 - 1
MAX_ENTRIES_PER_DIRECTORY = 32_768
#: what ``verify: sample`` reads back: one of the volume's 8 MiB blocks
SAMPLE_BYTES = 8 * 1024 * 1024
VOLUME_FACTORY_ENV = "FLYAWAY_MODAL_VOLUME_FACTORY"

def _version(entry: FileEntry) -> str:
    return f"{entry.size}:{entry.mtime}"


@DESTINATIONS.register("modal_volume")
class ModalVolumeDestination(Destination):
    limits = DestinationLimits(min_part_size=1, max_part_size=2**40, max_single_put=2**40,
                               max_object_size=MAX_FILE_SIZE, max_entries_per_directory=MAX_ENTRIES_PER_DIRECTORY,
                               keys_are_paths=True, max_name_bytes=255, max_key_bytes=None,
                               parts_from_any_worker=False)
    part_checksum = "crc32c"

    def __init__(self, location: ModalVolumeLocation, open_volume: VolumeOpener | None = None) -> None:
        self.location = location
        self._token = ModalToken(location.token_id_env, location.token_secret_env, location.describe())
        self._open_volume = open_volume or volume_opener()
        self._volume: Any = None
        self._volume_lock = threading.Lock()
        staging_root = (Path(location.staging_dir or tempfile.gettempdir()) / "flyaway-staging"
                        / (location.environment or "default") / location.volume / location.prefix)
        self.staging = LocalDestination(LocalLocation(kind="local", path=str(staging_root)))
        # one staged file at a time: held from begin_upload (or a resumed list_parts) to complete or abort
        self._staging_slot = threading.Semaphore(1)
        self._staged_upload: str | None = None

    def describe(self) -> str:
        return self.location.describe()

    def where(self, key: str) -> str:
        return f"{self.describe().rstrip('/')}/{key}"

    # ---- the SDK -------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """One SDK call, retried while transient; refusals become flyaway's errors, a missing file or volume
        is left to the caller."""
        return self._token.call(fn, what, expected=(NotFoundError,))

    @property
    def volume(self) -> Any:
        with self._volume_lock:
            if self._volume is None:
                loc = self.location
                try:
                    self._volume = self._call(f"opening {self.describe()}", lambda: self._open_volume(
                        loc.volume, environment_name=loc.environment, create_if_missing=loc.create_if_missing,
                        token_id=self._token.id, token_secret=self._token.secret))
                except NotFoundError:
                    raise NotFound(f"Modal volume '{loc.volume}' does not exist in environment "
                                   f"'{loc.environment or 'default'}'; create it or set create_if_missing: "
                                   f"true") from None
            return self._volume

    def _path(self, key: str) -> str:
        return "/" + join_key(self.location.prefix, key)

    def _entries(self, folder: str) -> Iterator[FileEntry]:
        """Files below ``folder``, recursively; none when it does not exist."""
        try:
            for entry in self.volume.iterdir(folder, recursive=True):
                if entry.type == FileEntryType.FILE:
                    yield entry
        except NotFoundError:
            return

    def _read(self, path: str, offset: int = 0, length: int | None = None) -> bytes | None:
        """Up to ``length`` bytes from ``offset`` (the SDK streams files from their start); None if missing."""

        def read() -> bytes:
            data = bytearray()
            position = 0
            for chunk in self.volume.read_file(path):
                data += chunk[max(0, offset - position):]
                position += len(chunk)
                if length is not None and len(data) >= length:
                    break
            return bytes(data if length is None else data[:length])

        try:
            return self._call(f"reading {path}", read)
        except FileNotFoundError:
            return None

    def _digest(self, path: str, hasher: Hasher) -> bytes:
        """The digest of the file's bytes as the volume serves them, read back whole."""

        def digest() -> bytes:
            for chunk in self.volume.read_file(path):
                hasher.update(chunk)
            return hasher.digest()

        return self._call(f"reading {path}", digest)

    def _upload(self, path: str, local: Path | IO[bytes]) -> None:
        def upload() -> None:
            if not isinstance(local, Path):
                local.seek(0)
            with self.volume.batch_upload(force=True) as batch:
                batch.put_file(local, path)

        self._call(f"uploading {path}", upload)

    def _remove(self, path: str) -> None:
        with contextlib.suppress(NotFoundError, FileNotFoundError):
            self._call(f"removing {path}", lambda: self.volume.remove_file(path))

    def _verified(self, key: str, size: int, sha256: str, head: bytes) -> str:
        """Read the uploaded file back as the plan says; returns its version. A bad file is removed."""
        path = self._path(key)
        landed = self.stat(key)
        problem = None
        if landed is None or landed.size != size:
            problem = f"{'missing' if landed is None else f'{landed.size} bytes'} after upload, expected {size}"
        elif self.location.verify == "full":
            if (actual := self._digest(path, hashlib.sha256()).hex()) != sha256:
                problem = f"read back, its bytes hash to {actual}, the source bytes to {sha256}"
        elif self._read(path, 0, len(head)) != head:
            problem = f"read back, its first {len(head)} bytes differ from the source bytes"
        if problem:
            self._remove(path)
            raise DataCorruption(f"{self.where(key)}: {problem}")
        assert landed is not None
        return landed.version

    # ---- Destination ---------------------------------------------------------------------------

    def check(self) -> None:
        self.staging.check()
        probe = f"probe-{uuid.uuid4().hex}"
        try:
            self.put_state(probe, b"flyaway")
            readable = self.get_state(probe) == b"flyaway"
            self.delete_state(probe)
        except Exception as error:
            if not is_transient(error):
                raise
            raise Unreachable(f"{self.describe()}: Modal does not answer ({type(error).__name__})") from None
        if not readable:
            raise AccessDenied(f"{self.describe()}: a file written under {STATE_DIR}/ could not be read back")

    def check_file(self, file: SourceFile) -> None:
        super().check_file(file)
        if file.size > self.location.staging_budget:
            raise LimitExceeded(f"{file.key}: {file.size} bytes is over the staging budget of "
                                f"{self.location.staging_budget} bytes for {self.describe()}; raise staging_budget "
                                f"and make sure {self.staging.root} has the room")

    def stat(self, key: str) -> DestObject | None:
        path = self._path(key)
        try:
            entries = self._call(f"stat {path}", lambda: self.volume.listdir(path))
        except NotFoundError:
            return None
        for entry in entries:
            if entry.type == FileEntryType.FILE and entry.path.lstrip("/") == path.lstrip("/"):
                return DestObject(key=key, size=entry.size, version=_version(entry))
        return None  # a folder

    def list(self) -> Iterator[DestObject]:
        base = self._path("").rstrip("/")
        for entry in self._entries(base or "/"):
            rel = entry.path.lstrip("/")[len(base.lstrip("/")):].lstrip("/")
            if rel != STATE_DIR and not rel.startswith(f"{STATE_DIR}/"):
                yield DestObject(key=rel, size=entry.size, version=_version(entry))

    def landed(self, key: str) -> LandedObject | None:
        """The file on the volume with the crc32c of its bytes, read back: Modal tells no checksum of a file."""
        found = self.stat(key)
        if found is None:
            return None
        try:
            checksum = self._digest(self._path(key), google_crc32c.Checksum())
        except FileNotFoundError:
            return None
        return LandedObject(size=found.size, checksum=checksum.hex(), version=found.version)

    def _on_volume(self, key: str, parts: builtins.list[PartRecord]) -> str | None:
        """The version of the file at ``key`` if the volume holds exactly the bytes of ``parts`` (a commit of an
        attempt killed before it recorded the file), else None; read back only when the size fits."""
        found = self.stat(key)
        if found is None or found.size != sum(part.size for part in parts):
            return None
        landed = self.landed(key)
        return landed.version if landed is not None and int(landed.checksum, 16) == combined_crc32c(parts) else None

    def put(self, key: str, data: bytes, checksum: str, sha256: str) -> str:
        self._upload(self._path(key), io.BytesIO(data))
        return self._verified(key, len(data), sha256, data[:SAMPLE_BYTES])

    def _hold_staging(self, upload_id: str | None) -> None:
        if upload_id is None or self._staged_upload != upload_id:
            self._staging_slot.acquire()
            self._staged_upload = upload_id

    def _release_staging(self, upload_id: str | None) -> None:
        if self._staged_upload == upload_id:
            self._staged_upload = None
            self._staging_slot.release()

    def begin_upload(self, key: str, size: int) -> str:
        self._hold_staging(None)
        try:
            self.staging.root.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.staging.root).free
            if free < size:
                raise LimitExceeded(f"{key}: {size} bytes to stage, but {self.staging.root} has {free} bytes free; "
                                    f"free some space or point staging_dir elsewhere")
            upload_id = self.staging.begin_upload(key, size)
        except BaseException:
            self._release_staging(None)
            raise
        self._staged_upload = upload_id
        return upload_id

    def list_parts(self, key: str, upload_id: str) -> dict[int, PartRecord]:
        self._hold_staging(upload_id)
        try:
            return self.staging.list_parts(key, upload_id)
        except UploadGone:
            self._release_staging(upload_id)
            raise

    def upload_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes,
                    checksum: str) -> PartRecord:
        return self.staging.upload_part(key, upload_id, number, offset, data, checksum)

    def complete(self, key: str, upload_id: str, parts: builtins.list[PartRecord], sha256: str) -> str:
        """Upload the staged file and read it back. Called again after a kill, it finds the file an earlier attempt
        committed (its staged copy gone, or still there) by its size and crc32c instead of uploading it again."""
        try:
            try:
                self.staging.complete(key, upload_id, parts, sha256)  # checks the staged bytes' crc32c
            except UploadGone:
                if (version := self._on_volume(key, parts)) is None:
                    raise
                return version
            staged = self.staging.path_of(key)
            try:
                if (version := self._on_volume(key, parts)) is not None:
                    return version
                self._upload(self._path(key), staged)
                with staged.open("rb") as handle:
                    head = handle.read(SAMPLE_BYTES)
                return self._verified(key, sum(part.size for part in parts), sha256, head)
            finally:
                staged.unlink(missing_ok=True)
        finally:
            self._release_staging(upload_id)

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.staging.abort(key, upload_id)
        finally:
            self._release_staging(upload_id)

    # flyaway's state, below STATE_DIR in the volume

    def _state_path(self, name: str) -> str:
        return self._path(f"{STATE_DIR}/{name}")

    def put_state(self, name: str, data: bytes) -> None:
        self._upload(self._state_path(name), io.BytesIO(data))

    def get_state(self, name: str, offset: int = 0, length: int | None = None) -> bytes | None:
        return self._read(self._state_path(name), offset, length)

    def list_state(self, prefix: str) -> builtins.list[str]:
        base = self._state_path("").strip("/")
        names = (entry.path.lstrip("/")[len(base):].lstrip("/") for entry in self._entries("/" + base))
        return sorted(name for name in names if name.startswith(prefix))

    def delete_state(self, name: str) -> None:
        self._remove(self._state_path(name))
