"""The two sides of a copy. Adapters are small and blocking; the engine owns concurrency,
resume, retries across parts and verification.

Every method may be called from several threads at once.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

from flyaway.errors import LimitExceeded
from flyaway.models.copy import PartRecord, SourceChecksum, SourceFile
from flyaway.registry import Registry

#: where flyaway keeps its own state at a destination (listings, manifests, upload checkpoints). A source
#: key below it is refused at listing (exclude it), so no source content can land in flyaway's state; a
#: user's own ``.flyaway/`` folder is copied like any other.
STATE_DIR = ".flyaway-state"


def is_state_key(key: str) -> bool:
    """Whether a key relative to a prefix falls in flyaway's state folder."""
    return key == STATE_DIR or key.startswith(f"{STATE_DIR}/")


class SourceChanged(Exception):
    """The source file changed after it was listed; the engine re-lists it and starts that file again."""


class UploadGone(Exception):
    """The destination no longer knows an upload we had a checkpoint for (aborted or expired)."""


@dataclass(frozen=True)
class DestinationLimits:
    """What a destination accepts; the engine sizes parts to fit."""

    max_parts: int = 10_000
    min_part_size: int = 5 * 1024 * 1024
    max_part_size: int = 5 * 1024 * 1024 * 1024
    max_single_put: int = 5 * 1024 * 1024 * 1024
    max_object_size: int = 5 * 1024 ** 4
    #: files and folders one folder may hold (Modal Volumes); None when unlimited
    max_entries_per_directory: int | None = None
    #: every part but a file's last must be a multiple of this many bytes (GCS: 256 KiB); must divide 1 MiB
    part_multiple: int = 1
    #: parts of one upload must arrive in order, each after the one before has landed (GCS resumable sessions)
    sequential_parts: bool = False
    #: parts of one upload may come from several workers at once (not: Modal stages a file on one worker)
    parts_from_any_worker: bool = True
    #: keys become file paths ('a' cannot be a file and a folder for 'a/b'), each name at most ``max_name_bytes``
    keys_are_paths: bool = False
    max_name_bytes: int | None = None
    #: the longest key, in UTF-8 bytes; None when only ``max_name_bytes`` limits it
    max_key_bytes: int | None = 1024
    #: characters no key may hold
    forbidden_characters: str = ""


@dataclass(frozen=True)
class DestObject:
    key: str
    size: int
    version: str


@dataclass(frozen=True)
class LandedObject:
    """An object at the destination with the checksum of its bytes, in the destination's part algorithm."""

    size: int
    checksum: str
    version: str


class Adapter(ABC):
    """A source or a destination, made from its plan location."""

    @abstractmethod
    def __init__(self, location: Any) -> None:
        """An adapter is made from its plan location (see :meth:`open`); each keeps what it needs of it."""

    @classmethod
    def open(cls, location: Any, concurrency: int) -> Self:
        """The adapter of a plan location of a kind it registered; an adapter that keeps a connection pool
        overrides this to size it to the copy's ``concurrency``."""
        return cls(location)


class Source(Adapter):
    """Where the weights are now."""

    #: whether files may carry a checksum of their whole bytes (``published_checksum``); such a file is
    #: checked in order by one reader, so it is never split among workers
    publishes_checksums: bool = True

    @abstractmethod
    def describe(self) -> str:
        """A short human name, e.g. ``s3://bucket/prefix``."""

    @abstractmethod
    def check(self) -> None:
        """Raise a ``FlyawayError`` if credentials, endpoint or permissions are not right."""

    @abstractmethod
    def list(self) -> Iterator[SourceFile]:
        """Every file below the prefix (keys relative to it), flyaway's own state excluded."""

    @abstractmethod
    def stat(self, key: str) -> SourceFile:
        """The file as it is now; raises ``SourceObjectMissing`` if it is gone."""

    @abstractmethod
    def read(self, file: SourceFile, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; raises ``SourceChanged`` if the file is not at ``file.version``."""

    def read_into(self, file: SourceFile, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the ``len(buffer)`` bytes from ``offset`` (the engine reuses its part buffers);
        raises ``SourceChanged`` as ``read`` does. This default copies what ``read`` returns."""
        buffer[:] = self.read(file, offset, len(buffer))

    def restat(self, listed: SourceFile) -> SourceFile:
        """The listed file as it is now; a source pinned to a snapshot (a hub commit) looks there."""
        return self.stat(listed.key)

    def published_checksum(self, file: SourceFile) -> SourceChecksum | None:
        """The checksum the source publishes for the file at ``file.version``, or None where it has none.

        The engine checks the bytes it read against it before anything becomes visible."""
        return None


class Destination(Adapter):
    """Where the weights go. Object writes become visible only when complete."""

    limits: DestinationLimits = DestinationLimits()
    #: the checksum of a part's bytes the destination checks on arrival and reports for landed parts
    part_checksum: str = "md5"
    #: whether ``put`` and ``upload_part`` take a memoryview of one of the engine's part buffers, which the
    #: engine fills again once the call returns; otherwise they get the bytes as a ``bytes`` copy
    takes_views: bool = False

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def check(self) -> None:
        """Raise a ``FlyawayError`` unless we can write, read and delete below the prefix."""

    @abstractmethod
    def stat(self, key: str) -> DestObject | None: ...

    @abstractmethod
    def list(self) -> Iterator[DestObject]:
        """Every object below the prefix, flyaway's own state excluded."""

    def check_file(self, file: SourceFile) -> None:
        """Raise ``LimitExceeded`` if this destination cannot take ``file``; called while listing."""
        if file.size > self.limits.max_object_size:
            raise LimitExceeded(f"{file.key}: {file.size} bytes is over {self.describe()}'s "
                                f"{self.limits.max_object_size}-byte object limit")

    def landed(self, key: str) -> LandedObject | None:
        """The object at ``key`` with its checksum, when the destination can tell it cheaply (a small file
        landed by an attempt that was killed before recording it); None when absent or unknown."""
        return None

    @abstractmethod
    def put(self, key: str, data: bytes, checksum: str, sha256: str) -> str:
        """Write a whole small object (``checksum``: hex, in ``part_checksum``'s algorithm); returns its version."""

    @abstractmethod
    def begin_upload(self, key: str, size: int) -> str:
        """Start a multipart upload; returns its id."""

    @abstractmethod
    def list_parts(self, key: str, upload_id: str) -> dict[int, PartRecord]:
        """Parts that landed; raises ``UploadGone`` if the upload no longer exists. A destination that
        cannot tell a landed part's checksum gives it as "": the engine then takes the part on its
        size, and ``complete`` must verify the whole object against the parts' checksums."""

    @abstractmethod
    def upload_part(self, key: str, upload_id: str, number: int, offset: int, data: bytes,
                    checksum: str) -> PartRecord:
        """Write part ``number`` (1-based) holding the bytes at ``offset`` of the file."""

    @abstractmethod
    def complete(self, key: str, upload_id: str, parts: builtins.list[PartRecord], sha256: str) -> str:
        """Make the object visible; verify it against the parts; returns its destination version.

        Called again for an upload that an earlier attempt completed, it finds the object made from
        exactly these parts and returns its version, or raises ``UploadGone``."""

    @abstractmethod
    def abort(self, key: str, upload_id: str) -> None:
        """Drop an upload; an upload that is already gone is fine."""

    # flyaway's own small state files, kept below STATE_DIR at the destination

    @abstractmethod
    def put_state(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    def get_state(self, name: str, offset: int = 0, length: int | None = None) -> bytes | None:
        """Up to ``length`` bytes (all when None) of a state file from ``offset``; None if it does not exist."""

    @abstractmethod
    def list_state(self, prefix: str) -> builtins.list[str]:
        """Names of state files starting with ``prefix``."""

    @abstractmethod
    def delete_state(self, name: str) -> None: ...


_PACKAGE = "flyaway.activities.storage"
#: source adapters by the plan's kind; each module registers its own
SOURCES: Registry[type[Source]] = Registry("source", _PACKAGE, ("local", "s3", "fly_volume", "hf"))
#: destination adapters by the plan's kind; each module registers its own
DESTINATIONS: Registry[type[Destination]] = Registry("destination", _PACKAGE,
                                                     ("local", "s3", "runpod", "gcs", "modal_volume"))
