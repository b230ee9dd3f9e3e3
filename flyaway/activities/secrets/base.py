"""What every secret store offers the secrets activities."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flyaway.models.secrets import SecretDestination
from flyaway.registry import Registry


@dataclass(frozen=True)
class StoredSecret:
    """What a store holds under one name, as far as it can tell without showing the value."""

    exists: bool
    #: ``hmac-sha256:<hex>`` of the current value (see :func:`digest_key`); None when absent or unknown (then it is rewritten)
    digest: str | None = None
    #: what the deploy stage uses to reach the current value
    reference: str | None = None


def digest_key(destination: SecretDestination) -> bytes:
    """The key of the secrets' digests, derived from the destination's own credentials: only the worker and
    the agent it starts hold them; the history, the report and the store's markers never do. A rotated
    credential changes every digest, which costs one rewrite of each value."""
    material = hashlib.sha256(b"flyaway secret digests\0" + destination.describe().encode())
    key_files = destination.credential_files()
    for name in destination.credential_envs():
        value = os.environ.get(name, "")
        if name in key_files and os.path.isfile(value):  # the key file's content is the credential
            value = Path(value).read_text(errors="replace")
        material.update(b"\0" + value.encode())
    return material.digest()


class SecretStore(Protocol):
    """A destination's secrets, addressed by the names the new service sees (``destination_name``)."""

    def read(self, names: list[str]) -> dict[str, StoredSecret]:
        """The current state of each name; this is also where missing rights show up, before any write."""

    def write(self, values: dict[str, str], current: dict[str, StoredSecret]) -> dict[str, str]:
        """Create or update ``values`` (only those that differ); returns each one's new reference."""

    def close(self) -> None: ...


#: a secret store's client by the kind of the secrets stage's destination
STORES: Registry[Callable[[Any], SecretStore]] = Registry("secret store", "flyaway.activities.secrets",
                                                          ("runpod", "gcp", "modal"))
