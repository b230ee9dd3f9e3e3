"""A folder on the worker's disk, as a source or a destination.

As a destination, a multipart upload is a preallocated hidden file written with ``pwrite``
plus a journal of landed parts; completing it re-reads and hashes the file, then renames it
into place, so a partial file never stands at its final path.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import re
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from flyaway.activities.storage.base import (
    DESTINATIONS,
    SOURCES,
    STATE_DIR,
    Destination,
    DestinationLimits,
    DestObject,
    LandedObject,
    Source,
    SourceChanged,
    UploadGone,
)
from flyaway.activities.storage.checksums import combined_crc32c, crc32c_of_file
from flyaway.errors import (
    AccessDenied,
    DataCorruption,
    NotFound,
    SourceObjectMissing,
)
from flyaway.models.base import check_relative_key
from flyaway.models.copy import PartRecord, SourceChecksum, SourceFile
from flyaway.models.locations import LocalLocation

#: upload ids this destination makes (uuid4 hex): checked before one read back from state becomes a path
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}|put-[0-9a-f]{32}")


def _version(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


class _LocalRoot:
    def __init__(self, location: LocalLocation) -> None:
        self.root = Path(location.path)

    def describe(self) -> str:
        return f"local:{self.root}"

    def path_of(self, key: str) -> Path:
        check_relative_key(key)
        return self.root / key

    def names(self, skip_state: bool) -> Iterator[tuple[str, bool]]:
        """Every name below the root, sorted, skipping flyaway's state when asked, with whether it is a link to a
        folder (such links are not followed)."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == "." and skip_state:
                dirnames[:] = [d for d in dirnames if d != STATE_DIR]
            dirnames.sort()
            prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for name in dirnames:
                if os.path.islink(os.path.join(dirpath, name)):
                    yield prefix + name, True
            for name in sorted(filenames):
                yield prefix + name, False

    def walk(self, skip_state: bool) -> Iterator[tuple[str, os.stat_result]]:
        """Regular files below the root, skipping links that leave the root and, when asked, flyaway's state."""
        root_real = os.path.realpath(self.root)
        for key, folder_link in self.names(skip_state):
            full = os.path.join(self.root, key)
            if folder_link or (os.path.islink(full) and not os.path.realpath(full).startswith(root_real + os.sep)):
                continue
            yield key, os.stat(full)


_FILE_TYPES = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


@SOURCES.register("local")
class LocalSource(_LocalRoot, Source):
    """Reads stay inside the root: a file is opened relative to the root's descriptor, one component at
    a time, following no link (``O_NOFOLLOW``); a link inside the root is read as the file it names."""

    def __init__(self, location: LocalLocation) -> None:
        super().__init__(location)
        self.root_real = os.path.realpath(self.root)
        self.read_twice = location.read_twice
        self.publishes_checksums = location.read_twice

    def published_checksum(self, file: SourceFile) -> SourceChecksum | None:
        """A folder publishes none; with ``read_twice`` a first read hashes the file, and the copy's read is
        checked against that (a flaky disk or a file rewritten in place between them shows as a mismatch)."""
        if not self.read_twice:
            return None
        with os.fdopen(self._open(file.key), "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            if _version(os.fstat(handle.fileno())) != file.version:
                raise SourceChanged(file.key)
        return SourceChecksum(algorithm="sha256", value=digest)

    def check(self) -> None:
        if not self.root.is_dir():
            raise NotFound(f"source folder {self.root} does not exist on the worker")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise AccessDenied(f"source folder {self.root} is not readable by the worker")

    def list(self) -> Iterator[SourceFile]:
        """Regular files and links to them inside the root; anything else is refused, naming it."""
        for key, folder_link in self.names(skip_state=False):
            if folder_link:
                self._inside(key)  # not followed, but one out of the root is refused like a file link
            else:
                yield self.stat(key)

    def _inside(self, key: str) -> builtins.list[str]:
        """The components of the file ``key`` names, resolved inside the root; refused when it leaves it."""
        check_relative_key(key)
        real = os.path.realpath(os.path.join(self.root_real, key))
        relative = os.path.relpath(real, self.root_real)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            raise AccessDenied(f"source file {key}: a link out of the source folder {self.root} (to {real}); "
                               f"flyaway reads nothing outside it: remove the link or copy its target in")
        if not os.path.lexists(real):
            raise SourceObjectMissing(f"source file {key}: a link to {real}, which does not exist; remove the "
                                      f"link or restore its target")
        return relative.split(os.sep)

    def _open(self, key: str) -> int:
        """A descriptor of the regular file ``key``, opened with no link followed at any step."""
        parts = self._inside(key)
        fd = os.open(self.root_real, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                parent, fd = fd, os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(parent)
            parent, fd = fd, os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            os.close(parent)
        except FileNotFoundError:
            os.close(fd)
            raise SourceObjectMissing(f"source file {self.path_of(key)} disappeared before it was copied") from None
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise AccessDenied(f"source file {key}: became a link after it was listed; flyaway follows no "
                                   f"link at read time") from None
            raise
        kind = _FILE_TYPES.get(stat.S_IFMT(os.fstat(fd).st_mode))
        if kind:
            os.close(fd)
            raise AccessDenied(f"source file {key} is {kind}, not a regular file; flyaway copies "
                               f"files only: move it out of the source folder")
        return fd

    def stat(self, key: str) -> SourceFile:
        fd = self._open(key)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return SourceFile(key=key, size=st.st_size, version=_version(st))

    def read(self, file: SourceFile, offset: int, length: int) -> bytes:
        buffer = bytearray(length)
        self.read_into(file, offset, memoryview(buffer))
        return bytes(buffer)

    def read_into(self, file: SourceFile, offset: int, buffer: memoryview) -> None:
        fd = self._open(file.key)
        try:
            if _version(os.fstat(fd)) != file.version:
                raise SourceChanged(file.key)
            done = 0
            while done < len(buffer) and (count := os.preadv(fd, [buffer[done:]], offset + done)):
                done += count
            if done != len(buffer) or _version(os.fstat(fd)) != file.version:
                raise SourceChanged(file.key)
        finally:
            os.close(fd)


@DESTINATIONS.register("local")
class LocalDestination(_LocalRoot, Destination):
    limits = DestinationLimits(min_part_size=1, max_part_size=2**40, max_single_put=2**40, max_object_size=2**60,
                               keys_are_paths=True, max_name_bytes=255, max_key_bytes=None)
    part_checksum = "crc32c"
    takes_views = True

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / STATE_DIR / f"probe-{uuid.uuid4().hex}"
            probe.parent.mkdir(exist_ok=True)
            probe.write_bytes(b"flyaway")
            probe.unlink()
        except PermissionError:
            raise AccessDenied(f"destination folder {self.root} is not writable by the worker") from None

    def _partial(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise DataCorruption(f"upload id {upload_id[:80]!r} read back from {self.describe()}'s state is not one "
                                 f"this destination makes; delete its checkpoint under {STATE_DIR}/")
        return self.root / STATE_DIR / "partial" / upload_id

    def stat(self, key: str) -> DestObject | None:
        try:
            st = self.path_of(key).stat()
        except FileNotFoundError:
            return None
        return DestObject(key=key, size=st.st_size, version=_version(st))

    def list(self) -> Iterator[DestObject]:
        for key, st in self.walk(skip_state=True):
            yield DestObject(key=key, size=st.st_size, version=_version(st))

    def landed(self, key: str) -> LandedObject | None:
        path = self.path_of(key)
        try:
            st = path.stat()
            checksum = crc32c_of_file(path)
        except FileNotFoundError:
            return None
        return LandedObject(size=st.st_size, checksum=f"{checksum:08x}", version=_version(st))

    def _publish(self, tmp: Path, key: str, crc32c: int) -> str:
        """Check the written bytes against the crc32c of the source bytes, then move them into place.

        crc32c, not sha256: it runs at memory speed, and the parts' values (computed from the source
        bytes as they were read) combine into the whole file's without reading anything twice."""
        actual = crc32c_of_file(tmp)
        if actual != crc32c:
            tmp.unlink()
            raise DataCorruption(f"{self.path_of(key)}: written bytes have crc32c {actual:08x}, "
                                 f"source bytes {crc32c:08x}")
        target = self.path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        return _version(target.stat())

    def put(self, key: str, data: bytes | memoryview, checksum: str, sha256: str) -> str:
        tmp = self._partial(f"put-{uuid.uuid4().hex}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.write_bytes(data)
            return self._publish(tmp, key, int(checksum, 16))
        finally:
            tmp.unlink(missing_ok=True)  # gone once published; a failed attempt leaves nothing behind

    def begin_upload(self, key: str, size: int) -> str:
        upload_id = uuid.uuid4().hex
        path = self._partial(upload_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            handle.truncate(size)
        Path(f"{path}.parts").touch()
        return upload_id

    def list_parts(self, key: str, upload_id: str) -> dict[int, PartRecord]:
        journal = Path(f"{self._partial(upload_id)}.parts")
        if not journal.exists():
            raise UploadGone(upload_id)
        parts = {}
        for line in journal.read_text().splitlines():
            try:
                part = PartRecord.model_validate_json(line)
            except ValueError:
                continue  # a line torn by a crash: that part is sent again
            parts[part.number] = part
        return parts

    def upload_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes | memoryview,
                    checksum: str) -> PartRecord:
        path = self._partial(upload_id)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            raise UploadGone(upload_id) from None
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        part = PartRecord(number=number, size=len(data), checksum=checksum)
        journal = os.open(f"{path}.parts", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(journal, (part.model_dump_json() + "\n").encode())
        finally:
            os.close(journal)
        return part

    def complete(self, key: str, upload_id: str, parts: builtins.list[PartRecord], sha256: str) -> str:
        path = self._partial(upload_id)
        if not path.exists():
            landed = self.landed(key)  # completed by an attempt killed before it recorded the file
            if landed is None or (landed.size, int(landed.checksum, 16)) != (sum(p.size for p in parts),
                                                                              combined_crc32c(parts)):
                raise UploadGone(upload_id)
            return landed.version
        version = self._publish(path, key, combined_crc32c(parts))
        Path(f"{path}.parts").unlink(missing_ok=True)
        return version

    def abort(self, key: str, upload_id: str) -> None:
        self._partial(upload_id).unlink(missing_ok=True)
        Path(f"{self._partial(upload_id)}.parts").unlink(missing_ok=True)

    def put_state(self, name: str, data: bytes) -> None:
        path = self.root / STATE_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get_state(self, name: str, offset: int = 0, length: int | None = None) -> bytes | None:
        try:
            with (self.root / STATE_DIR / name).open("rb") as handle:
                handle.seek(offset)
                return handle.read(-1 if length is None else length)
        except FileNotFoundError:
            return None

    def list_state(self, prefix: str) -> builtins.list[str]:
        base = self.root / STATE_DIR
        if not base.exists():
            return []
        names = (str(p.relative_to(base)).replace(os.sep, "/") for p in base.rglob("*") if p.is_file())
        return sorted(n for n in names if n.startswith(prefix) and not n.rsplit("/", 1)[-1].startswith("."))

    def delete_state(self, name: str) -> None:
        (self.root / STATE_DIR / name).unlink(missing_ok=True)
