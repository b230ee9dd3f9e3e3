"""Shared pydantic base classes and field types for every model flyaway exchanges."""

from __future__ import annotations

import posixpath
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)


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
    if value.startswith(("/", "\\")):
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

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(f"'{value}' is not an environment variable name; name the variable, never its value")
    return value


EnvName = Annotated[str, AfterValidator(check_env_name)]
"""The name of an environment variable on the worker that holds a secret (never the value)."""

_FLY_APP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def check_fly_app_name(value: str) -> str:
    if not _FLY_APP_NAME.match(value):
        raise ValueError(f"'{value}' is not a Fly app name (lowercase letters, digits and '-')")
    return value


FlyAppName = Annotated[str, AfterValidator(check_fly_app_name)]


class AwsCredentials(StrictModel):
    """Where the worker finds AWS-style keys: names of environment variables, never their values."""

    access_key_id_env: EnvName = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: EnvName = "AWS_SECRET_ACCESS_KEY"
    session_token_env: EnvName | None = None


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")

#: the longest duration a plan may give; longer ones overflow Python's and Temporal's clocks
MAX_DURATION = timedelta(days=365)
MAX_SECONDS = MAX_DURATION.total_seconds()
_DURATION_FORM = "write it like 90s, 5m or 1h30m, at most 365 days"


def parse_duration(value: object) -> object:
    """Accept '90s', '5m', '1h30m' and plain seconds besides ISO 8601 ('PT5S')."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return timedelta(seconds=value)
        if isinstance(value, str) and value.strip() and not value.strip().upper().startswith("P"):
            match = _DURATION.match(value)
            if not match or not any(match.groups()):
                raise ValueError(f"'{value}' is not a duration; {_DURATION_FORM}")
            hours, minutes, seconds = (float(group or 0) for group in match.groups())
            return timedelta(hours=hours, minutes=minutes, seconds=seconds)
    except (OverflowError, ValueError):  # 1e308, inf, nan, '99999999999h'
        raise ValueError(f"'{value}' is not a duration flyaway can wait; {_DURATION_FORM}") from None
    return value


def _within_a_year(value: timedelta) -> timedelta:
    if value > MAX_DURATION:
        raise ValueError(f"{value} is too long; {_DURATION_FORM}")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_within_a_year)]


def at_least(minimum: timedelta) -> AfterValidator:
    """A lower bound for a duration field, e.g. ``Annotated[Duration, at_least(timedelta(seconds=10))]``."""

    def check(value: timedelta) -> timedelta:
        if value < minimum:
            raise ValueError(f"{value.total_seconds():g}s is too short; give at least {minimum.total_seconds():g}s")
        return value

    return AfterValidator(check)


_SIZE_FORM = "write a whole number of bytes (0 or more) or a size like 512KiB, 16MiB or 1GiB"


def _parse_size(value: Any, handler: ValidatorFunctionWrapHandler) -> int:
    """``ByteSize``, with a message that says what a size looks like (pydantic's names neither)."""
    try:
        size: int = handler(value)
    except ValidationError:  # negative sizes end here too
        raise ValueError(f"'{value}' is not a size; {_SIZE_FORM}") from None
    return size


Size = Annotated[ByteSize, WrapValidator(_parse_size)]
"""A number of bytes, written as an integer or with a unit (``16MiB``, ``1GB``)."""
