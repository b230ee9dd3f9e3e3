"""Keep secret values out of logs, errors and output: a structlog processor and a scrubber for text.

Values come from three places: every credential the worker loads (:func:`register_credential`, at
start, whatever its variable's name), values registered at run time with :func:`register_secret`
(secrets read for a migration, tokens read for a request), and the environment variables whose
names look like credentials. A value is also found JSON-escaped and with its whitespace changed
(a PEM key a provider echoes back). Keys of log events that look like secrets have their values
replaced whatever they hold.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from typing import Any

from structlog.typing import EventDict, WrappedLogger

REDACTED = "***"
#: a shorter value is too common to scrub (it would mask workflow ids and plan names)
MIN_SCRUBBED_LENGTH = 8
_SECRET_KEY = re.compile(r"(secret|token|password|passwd|api[_-]?key|credential|private[_-]?key|authorization)",
                         re.IGNORECASE)
#: names of environment variables holding credentials (log event keys use ``_SECRET_KEY`` alone)
_CREDENTIAL_ENV = re.compile(_SECRET_KEY.pattern + r"|access[_-]?key|_keys?$|^FLYAWAY_CODEC", re.IGNORECASE)
_registered: set[str] = set()


def register_secret(value: str) -> None:
    """Remember a value that must never be printed (values too short to be secrets are not scrubbed)."""
    if len(value.strip()) >= MIN_SCRUBBED_LENGTH:
        _registered.add(value.strip())


def register_credential(name: str, value: str) -> None:
    """Remember a credential the worker loaded; ``ValueError`` when it is too short to be a real one
    (scrubbing it would mask ordinary words, workflow ids included)."""
    if len(value.strip()) < MIN_SCRUBBED_LENGTH:
        raise ValueError(f"{name} holds {len(value.strip())} characters, too few for a real credential; set it to "
                         f"the real value, or unset it")
    register_secret(value)


def _known_values() -> frozenset[str]:
    env_values = {v.strip() for k, v in os.environ.items()
                  if _CREDENTIAL_ENV.search(k) and len(v.strip()) >= MIN_SCRUBBED_LENGTH}
    return frozenset(_registered | env_values)


@lru_cache(maxsize=8)
def _pattern(values: frozenset[str]) -> re.Pattern[str] | None:
    """One regex finding every value as is, JSON-escaped, or with its whitespace changed or removed."""
    forms = []
    for value in sorted(values, key=len, reverse=True):
        tokens = value.split()
        for escape in (lambda text: text, lambda text: json.dumps(text)[1:-1]):
            forms.append(r"(?:\s|\\[nrt])*".join(re.escape(escape(token)) for token in tokens))
    return re.compile("|".join(forms)) if forms else None


def scrub(text: str) -> str:
    """Replace every known secret value inside ``text``."""
    pattern = _pattern(_known_values())
    return pattern.sub(REDACTED, text) if pattern else text


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


def redact_event(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """structlog processor: drop secret-looking keys' values and scrub known values everywhere."""
    return {k: _redact_value(k, v) for k, v in event.items()}
