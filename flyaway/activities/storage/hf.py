"""A Hugging Face Hub repository as a source, through ``huggingface_hub``.

Listing resolves the plan's revision to its commit sha once, lists the tree at that commit
and stamps every file's ``version`` with it (``<commit>:<git blob id>``), so every later
read of the copy, in any activity, reads the same snapshot even if the branch moves.
Reads are HTTP ranges of the file's resolve URL at that commit, through the library's own
HTTP session and headers; redirects (LFS files live behind a CDN) are followed.

The hub publishes the sha256 of LFS files (``SourceFile.sha256``) and the git blob id of files
kept in git itself: each is the file's published checksum, which the engine checks the bytes
read against. ``restat`` looks at the listed commit too, so a retried attempt never mixes in
a newer head of the branch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx2
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from flyaway.activities.storage.base import SOURCES, Source
from flyaway.errors import (
    AccessDenied,
    NotFound,
    SourceObjectMissing,
    Unreachable,
)
from flyaway.models.copy import SourceChecksum, SourceFile
from flyaway.models.locations import HfLocation
from flyaway.providers.http import CONNECT_TIMEOUT_SECONDS, call_with_retries, stall_seconds

T = TypeVar("T")

_NETWORK_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)


class ShortRead(Exception):
    """The hub answered a range with fewer or other bytes than asked for; worth another try."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, HfHubHTTPError):
        return error.response.status_code >= 500 or error.response.status_code in (408, 429)
    return isinstance(error, (*_NETWORK_ERRORS, ShortRead))


@SOURCES.register("hf")
class HfSource(Source):
    def __init__(self, location: HfLocation) -> None:
        self.location = location
        self.token = os.environ.get(location.token_env) or None
        # read at call time, not at import, so the worker's HF_ENDPOINT always wins
        self.api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=self.token or False,
                         library_name="flyaway")
        self.headers = build_hf_headers(token=self.token or False, library_name="flyaway")

    def describe(self) -> str:
        return self.location.describe()

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn what retrying cannot fix into a clear flyaway error about ``what``."""
        loc = self.location
        try:
            yield
        except RevisionNotFoundError:
            raise NotFound(f"{self.describe()}: revision '{loc.revision}' does not exist at "
                           f"{self.api.endpoint}") from None
        except GatedRepoError:
            raise AccessDenied(f"{self.describe()}: the repo is gated and the account of {loc.token_env} has not "
                               f"been granted access; accept its terms on the hub") from None
        except RepositoryNotFoundError:
            hint = (f"or the token in {loc.token_env} cannot see it" if self.token else
                    f"or it is private and {loc.token_env} is not set on the worker")
            raise NotFound(f"{self.describe()}: repo {loc.repo_id} does not exist at {self.api.endpoint}, "
                           f"{hint}") from None
        except RemoteEntryNotFoundError:
            raise SourceObjectMissing(f"{what}: not found at the pinned commit") from None
        except HfHubHTTPError as error:
            if error.response.status_code in (401, 403):
                raise AccessDenied(f"{what}: access denied ({error.response.status_code}); check the token in "
                                   f"{loc.token_env}") from None
            raise

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """One hub request, retried while the trouble is transient."""
        with self._errors(what):
            return call_with_retries(fn, is_transient)

    def commit(self) -> str:
        """The commit sha the plan's revision points at now."""
        loc = self.location
        info = self._call(self.describe(), lambda: self.api.repo_info(
            loc.repo_id, revision=loc.revision, repo_type=loc.repo_type, timeout=stall_seconds()))
        if not info.sha:
            raise NotFound(f"{self.describe()}: the hub did not resolve the revision to a commit")
        return info.sha

    def check(self) -> None:
        try:
            self.commit()
        except _NETWORK_ERRORS as error:
            raise Unreachable(f"the hub at {self.api.endpoint} does not answer ({type(error).__name__}); "
                              f"check HF_ENDPOINT") from None

    @staticmethod
    def _file(entry: RepoFile, commit: str) -> SourceFile:
        return SourceFile(key=entry.path, size=entry.size, version=f"{commit}:{entry.blob_id}",
                          sha256=entry.lfs.sha256 if entry.lfs else None)

    def list(self) -> Iterator[SourceFile]:
        loc = self.location
        commit = self.commit()
        # the library follows the hub's pages (Link headers) one by one and retries each itself
        with self._errors(self.describe()):
            for entry in self.api.list_repo_tree(loc.repo_id, recursive=True, revision=commit,
                                                 repo_type=loc.repo_type):
                if isinstance(entry, RepoFile):
                    yield self._file(entry, commit)

    def stat(self, key: str, commit: str | None = None) -> SourceFile:
        """The file at ``commit``, by default at the commit the plan's revision points at now."""
        loc = self.location
        commit = commit or self.commit()
        found = self._call(f"{self.describe()}/{key}", lambda: self.api.get_paths_info(
            loc.repo_id, [key], revision=commit, repo_type=loc.repo_type))
        files = [entry for entry in found if isinstance(entry, RepoFile)]
        if not files:
            raise SourceObjectMissing(f"{self.describe()}/{key} disappeared before it was copied")
        return self._file(files[0], commit)

    def restat(self, listed: SourceFile) -> SourceFile:
        return self.stat(listed.key, commit=listed.version.split(":", 1)[0])

    def published_checksum(self, file: SourceFile) -> SourceChecksum | None:
        if file.sha256:
            return SourceChecksum(algorithm="sha256", value=file.sha256)
        return SourceChecksum(algorithm="git-sha1", value=file.version.split(":", 1)[1])

    def read(self, file: SourceFile, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        loc = self.location
        commit = file.version.split(":", 1)[0]
        url = hf_hub_url(loc.repo_id, file.key, repo_type=loc.repo_type, revision=commit, endpoint=self.api.endpoint)
        headers = {**self.headers, "Range": f"bytes={offset}-{offset + length - 1}"}
        whole = offset == 0 and length == file.size

        def get() -> bytes:
            timeout = httpx2.Timeout(stall_seconds(), connect=CONNECT_TIMEOUT_SECONDS)
            with get_session().stream("GET", url, headers=headers, timeout=timeout) as response:
                hf_raise_for_status(response)
                if response.status_code != 206 and not (whole and response.status_code == 200):
                    raise ShortRead(f"{url}: answered {response.status_code} to a range request")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > length:
                        break
            if len(data) != length:
                raise ShortRead(f"{url}: {len(data)} bytes of the {length} asked for at offset {offset}")
            return bytes(data)

        return self._call(f"{self.describe()}/{file.key}", get)
