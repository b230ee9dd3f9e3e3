"""Keep secret values out of logs: a structlog processor and a scrubber for messages.

Values come from two places: values registered at run time with :func:`register_secret`
(secrets read for migration), and the worker's environment variables whose names look like
credentials. Keys that look like secrets have their values replaced whatever they hold.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "***"
_SECRET_KEY = re.compile(r"(secret|token|password|passwd|api[_-]?key|credential|private[_-]?key|authorization)",
                         re.IGNORECASE)
_registered: set[str] = set()


def register_secret(value: str) -> None:
    """Remember a value that must never be printed (values shorter than 4 chars are too common to scrub)."""
    if len(value) >= 4:
        _registered.add(value)


def _known_values() -> set[str]:
    env_values = {v for k, v in os.environ.items() if _SECRET_KEY.search(k) and len(v) >= 4}
    return _registered | env_values


def scrub(text: str) -> str:
    """Replace every known secret value inside ``text``."""
    for value in sorted(_known_values(), key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key) and isinstance(value, (str, bytes)) and value:
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(key, v) for v in value)
    return value


def redact_event(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop secret-looking keys' values and scrub known values everywhere."""
    return {k: _redact_value(k, v) for k, v in event.items()}
