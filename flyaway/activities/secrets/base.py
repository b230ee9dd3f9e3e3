"""What every secret store offers the secrets activities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoredSecret:
    """What a store holds under one name, as far as it can tell without showing the value."""

    exists: bool
    #: ``sha256:<hex>`` of the current value; None when absent or unknown (then it is rewritten)
    digest: str | None = None
    #: what the deploy stage uses to reach the current value
    reference: str | None = None


class SecretStore(Protocol):
    """A destination's secrets, addressed by the names the new service sees (``destination_name``)."""

    def read(self, names: list[str]) -> dict[str, StoredSecret]:
        """The current state of each name; this is also where missing rights show up, before any write."""

    def write(self, values: dict[str, str], current: dict[str, StoredSecret]) -> dict[str, str]:
        """Create or update ``values`` (only those that differ); returns each one's new reference."""

    def close(self) -> None: ...
