"""The two sides of a copy. Adapters are small and blocking; the engine owns concurrency,
resume, retries across parts and verification.

Every method may be called from several threads at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from flyaway.activities.errors import LimitExceeded
from flyaway.models.copy import PartRecord, SourceFile

#: where flyaway keeps its own state at a destination (manifests, upload checkpoints)
STATE_DIR = ".flyaway"


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


class Source(ABC):
    """Where the weights are now."""

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


class Destination(ABC):
    """Where the weights go. Object writes become visible only when complete."""

    limits: DestinationLimits = DestinationLimits()
    #: the checksum of a part's bytes the destination checks on arrival and reports for landed parts
    part_checksum: str = "md5"

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
    def complete(self, key: str, upload_id: str, parts: list[PartRecord], sha256: str) -> str:
        """Make the object visible; verify it against the parts; returns its destination version."""

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
    def list_state(self, prefix: str) -> list[str]:
        """Names of state files starting with ``prefix``."""

    @abstractmethod
    def delete_state(self, name: str) -> None: ...
