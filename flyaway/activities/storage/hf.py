"""A Hugging Face Hub repository as a source (through :class:`flyaway.providers.hf.HubRepo`).

Listing resolves the plan's revision to its commit sha once, lists the tree at that commit
and stamps every file's ``version`` with it (``<commit>:<git blob id>``), so every later
read of the copy, in any activity, reads the same snapshot even if the branch moves.

The hub publishes the sha256 of LFS files (``SourceFile.sha256``) and the git blob id of files
kept in git itself: each is the file's published checksum, which the engine checks the bytes
read against. ``restat`` looks at the listed commit too, so a retried attempt never mixes in
a newer head of the branch.
"""

from __future__ import annotations

from collections.abc import Iterator

from flyaway.activities.storage.base import SOURCES, Source
from flyaway.errors import SourceObjectMissing
from flyaway.models.copy import SourceChecksum, SourceFile
from flyaway.models.locations import HfLocation
from flyaway.providers.hf import HubFile, HubRepo


def _source_file(entry: HubFile, commit: str) -> SourceFile:
    return SourceFile(key=entry.path, size=entry.size, version=f"{commit}:{entry.blob_id}", sha256=entry.lfs_sha256)


@SOURCES.register("hf")
class HfSource(Source):
    def __init__(self, location: HfLocation) -> None:
        self.location = location
        self.repo = HubRepo(location)

    def describe(self) -> str:
        return self.location.describe()

    def check(self) -> None:
        self.repo.check()

    def list(self) -> Iterator[SourceFile]:
        commit = self.repo.commit()
        for entry in self.repo.files(commit):
            yield _source_file(entry, commit)

    def stat(self, key: str, commit: str | None = None) -> SourceFile:
        """The file at ``commit``, by default at the commit the plan's revision points at now."""
        commit = commit or self.repo.commit()
        found = self.repo.file(key, commit)
        if found is None:
            raise SourceObjectMissing(f"{self.describe()}/{key} disappeared before it was copied")
        return _source_file(found, commit)

    def restat(self, listed: SourceFile) -> SourceFile:
        return self.stat(listed.key, commit=listed.version.split(":", 1)[0])

    def published_checksum(self, file: SourceFile) -> SourceChecksum | None:
        if file.sha256:
            return SourceChecksum(algorithm="sha256", value=file.sha256)
        return SourceChecksum(algorithm="git-sha1", value=file.version.split(":", 1)[1])

    def read(self, file: SourceFile, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        return self.repo.read(file.key, file.version.split(":", 1)[0], offset, length,
                              whole=offset == 0 and length == file.size)
