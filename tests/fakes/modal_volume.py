"""A stand-in for the ``modal`` SDK's ``Volume``, kept on the local disk (no Modal server runs here).

flyaway opens volumes through one seam, ``FLYAWAY_MODAL_VOLUME_FACTORY``: tests set it to
``tests.fakes.modal_volume:open_volume``, and the worker subprocess inherits it. The fake has
the methods flyaway calls, with the SDK's signatures (``tests/test_modal_volume.py`` compares
them with the installed ``modal``) and its behaviour as read in ``modal/volume.py``:

- ``batch_upload(force)`` commits nothing until the block exits, then all files at once;
  without ``force`` an existing file fails the whole batch with ``FileExistsError``;
- ``iterdir``/``listdir`` give ``modal.types.FileEntry`` (paths relative to the volume's root,
  mtime in whole seconds), a file path lists that file, a missing path raises ``NotFoundError``;
- ``read_file`` streams chunks and raises ``FileNotFoundError`` for a missing file;
  ``remove_file`` raises ``FileNotFoundError`` too;
- opening checks the token's shape (``ak-...`` / ``as-...``, else ``AuthError``) and raises
  ``NotFoundError`` for a missing volume unless ``create_if_missing``.

Volumes are folders ``$FLYAWAY_FAKE_MODAL_DIR/<environment>/<name>/``; every committed file is
also recorded as a line ``path<TAB>size`` in ``<name>.uploads.log`` next to that folder, so a
test can count what was uploaded. ``FakeVolume.corrupt_next`` flips a byte of the next committed
data files, never of flyaway's own state files, whose writes race with data commits (in-process
tests only).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import modal.exception
from modal.types import FileEntry, FileEntryType

from flyaway.activities.storage.base import STATE_DIR

ROOT_ENV = "FLYAWAY_FAKE_MODAL_DIR"
FACTORY = "tests.fakes.modal_volume:open_volume"
TOKEN_ID, TOKEN_SECRET = "ak-fake-id", "as-fake-secret"
CHUNK = 1024 * 1024


def volume_dir(root: Path, name: str, environment_name: str | None = None) -> Path:
    return root / (environment_name or "main") / name


def uploads_log(root: Path, name: str, environment_name: str | None = None) -> Path:
    return volume_dir(root, name, environment_name).with_name(f"{name}.uploads.log")


def read_uploads(root: Path, name: str, environment_name: str | None = None) -> list[tuple[str, int]]:
    """(path, size) of every file committed to the volume, in order."""
    log = uploads_log(root, name, environment_name)
    lines = log.read_text().splitlines() if log.exists() else []
    return [(path, int(size)) for path, size in (line.rsplit("\t", 1) for line in lines)]


def open_volume(name: str, *, environment_name: str | None, create_if_missing: bool, token_id: str,
                token_secret: str) -> FakeVolume:
    """What ``Volume.from_name(...).hydrate()`` does, against folders below ``$FLYAWAY_FAKE_MODAL_DIR``."""
    if not (token_id.startswith("ak-") and token_secret.startswith("as-")):
        raise modal.exception.AuthError("Token validation failed: invalid token id or secret")
    folder = volume_dir(Path(os.environ[ROOT_ENV]), name, environment_name)
    if not folder.is_dir():
        if not create_if_missing:
            raise modal.exception.NotFoundError(f"Volume '{name}' not found in environment "
                                                f"'{environment_name or 'main'}'")
        folder.mkdir(parents=True)
    return FakeVolume(folder, uploads_log(Path(os.environ[ROOT_ENV]), name, environment_name))


class FakeVolume:
    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.corrupt_next = 0

    def _local(self, path: str) -> Path:
        relative = PurePosixPath(path.lstrip("/"))
        assert ".." not in relative.parts, path
        return self.root / relative

    def _entry(self, local: Path) -> FileEntry:
        st = local.stat()
        kind = FileEntryType.DIRECTORY if local.is_dir() else FileEntryType.FILE
        return FileEntry(path=local.relative_to(self.root).as_posix(), type=kind, mtime=int(st.st_mtime),
                         size=0 if local.is_dir() else st.st_size)

    def hydrate(self, client: Any = None) -> FakeVolume:
        return self

    def iterdir(self, path: str, *, recursive: bool = True) -> Iterator[FileEntry]:
        local = self._local(path)
        if not local.exists():
            raise modal.exception.NotFoundError(f"No such file or directory: {path}")
        if local.is_file():
            yield self._entry(local)
            return
        children = sorted(local.rglob("*") if recursive else local.iterdir())
        for child in children:
            if not child.name.startswith(".fake-"):
                yield self._entry(child)

    def listdir(self, path: str, *, recursive: bool = False) -> list[FileEntry]:
        return list(self.iterdir(path, recursive=recursive))

    def read_file(self, path: str) -> Iterator[bytes]:
        local = self._local(path)
        if not local.is_file():
            raise FileNotFoundError(f"No such file: {path}")
        with local.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def remove_file(self, path: str, recursive: bool = False) -> None:
        local = self._local(path)
        if not local.exists():
            raise FileNotFoundError(f"No such file or directory: {path}")
        if local.is_dir():
            if not recursive:
                raise modal.exception.InvalidError(f"{path} is a directory; pass recursive=True")
            for child in sorted(local.rglob("*"), reverse=True):
                child.unlink() if child.is_file() else child.rmdir()
            local.rmdir()
        else:
            local.unlink()

    def batch_upload(self, force: bool = False) -> FakeBatch:
        return FakeBatch(self, force)

    def commit(self, files: list[tuple[Path | IO[bytes], str]], force: bool) -> None:
        if not force and (taken := [path for _, path in files if self._local(path).exists()]):
            raise FileExistsError(f"{taken[0]} already exists")
        for source, path in files:
            data = source.read_bytes() if isinstance(source, Path) else _all_bytes(source)
            if self.corrupt_next and data and STATE_DIR not in PurePosixPath(path).parts:
                self.corrupt_next -= 1
                data = data[:-1] + bytes([data[-1] ^ 0x01])
            target = self._local(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".fake-{uuid.uuid4().hex}")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            with self.log.open("a") as log:
                log.write(f"{path.lstrip('/')}\t{len(data)}\n")


def _all_bytes(fileobj: IO[bytes]) -> bytes:
    fileobj.seek(0)
    return fileobj.read()


class FakeBatch:
    """``_VolumeUploadContextManager2``: files are read and committed when the block exits without error."""

    def __init__(self, volume: FakeVolume, force: bool) -> None:
        self.volume = volume
        self.force = force
        self.files: list[tuple[Path | IO[bytes], str]] = []

    def __enter__(self) -> FakeBatch:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            self.volume.commit(self.files, self.force)

    def put_file(self, local_file: Path | str | IO[bytes], remote_path: PurePosixPath | str,
                 mode: int | None = None) -> None:
        remote = PurePosixPath(remote_path).as_posix()
        if remote.endswith("/"):
            raise ValueError(f"remote_path ({remote}) must refer to a file - cannot end with /")
        self.files.append((Path(local_file) if isinstance(local_file, (str, Path)) else local_file, remote))
