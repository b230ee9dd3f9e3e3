"""Shared pydantic base classes and field types for every model flyaway exchanges."""

from __future__ import annotations

import posixpath
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Plan sections: unknown fields are errors, so a typo is caught before anything runs."""

    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


class Record(BaseModel):
    """Data passed between workflows and activities (results, checkpoints, status)."""

    model_config = ConfigDict(extra="ignore")


def check_relative_key(value: str) -> str:
    """A key or path below a prefix: no absolute path, no ``..``, no empty segment."""
    if value == "":
        return value
    if value.startswith("/") or value.startswith("\\"):
        raise ValueError(f"'{value}' is absolute; give a path relative to its prefix")
    parts = value.rstrip("/").split("/")
    if any(part == ".." for part in parts):
        raise ValueError(f"'{value}' escapes its prefix with '..'")
    if any(part in ("", ".") for part in parts):
        raise ValueError(f"'{value}' has an empty or '.' segment")
    if "\x00" in value:
        raise ValueError("a NUL byte is not allowed in a key")
    return value


def join_key(prefix: str, key: str) -> str:
    """Join an object prefix and a relative key with exactly one slash."""
    if not prefix:
        return key
    return posixpath.join(prefix.rstrip("/"), key) if key else prefix.rstrip("/")


RelativeKey = Annotated[str, AfterValidator(check_relative_key)]
