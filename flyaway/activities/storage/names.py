"""Source keys a destination cannot hold, found while listing: the copy stops before any byte moves,
with one line naming the keys and what to do, instead of failing the same write on every retry."""

from __future__ import annotations

from flyaway.activities.storage.base import DestinationLimits
from flyaway.errors import InvalidPlan

#: keys named per problem in the message; the rest are counted
SHOWN_KEYS = 3
#: characters of a long key shown
SHOWN_CHARACTERS = 40


def _shown(key: str) -> str:
    """A key as the message shows it: quoted, escaped, and cut short when long."""
    if len(key) <= SHOWN_CHARACTERS:
        return ascii(key) if not key.isprintable() else repr(key)
    return f"{_shown(key[:SHOWN_CHARACTERS])[:-1]}...' ({len(key.encode(errors='surrogateescape'))} bytes)"


class KeysTheDestinationRefuses:
    """Checks each listed key against the destination's limits and collects the ones it cannot hold.

    Where keys are paths, it remembers every file and folder name, to find a key that is both
    (``a`` and ``a/b``) whichever comes first.
    """

    def __init__(self, limits: DestinationLimits, where: str) -> None:
        self.limits = limits
        self.where = where
        self.refused: dict[str, list[str]] = {}
        self.files: set[str] = set()
        self.folders: set[str] = set()

    def holds(self, key: str) -> bool:
        """Whether the destination can hold ``key``; the key is remembered for the message when not."""
        try:
            encoded = key.encode()
        except UnicodeEncodeError:
            return self._refuse("names that are not UTF-8", _shown(key))
        limits = self.limits
        held = True
        if limits.max_key_bytes is not None and len(encoded) > limits.max_key_bytes:
            held = self._refuse(f"keys over {limits.max_key_bytes} bytes", _shown(key))
        if limits.max_name_bytes is not None and any(len(name.encode()) > limits.max_name_bytes
                                                     for name in key.split("/")):
            held = self._refuse(f"names over {limits.max_name_bytes} bytes", _shown(key))
        if any(char in key for char in limits.forbidden_characters):
            held = self._refuse(f"characters it forbids ({limits.forbidden_characters!r})", _shown(key))
        if limits.keys_are_paths:
            held = self._add_path(key) and held
        return held

    def _add_path(self, key: str) -> bool:
        held = True
        if key in self.folders:
            held = self._refuse("keys that are a file and a folder", f"{_shown(key)} and {_shown(key + '/...')}")
        *folders, _ = key.split("/")
        for depth in range(1, len(folders) + 1):
            folder = "/".join(folders[:depth])
            if folder in self.files:
                held = self._refuse("keys that are a file and a folder", f"{_shown(folder)} and {_shown(key)}")
            self.folders.add(folder)
        self.files.add(key)
        return held

    def _refuse(self, problem: str, key: str) -> bool:
        self.refused.setdefault(problem, []).append(key)
        return False

    def raise_if_any(self) -> None:
        """``InvalidPlan`` naming the keys of every problem found, on one line."""
        if not self.refused:
            return
        problems = []
        for problem, keys in self.refused.items():
            shown = ", ".join(keys[:SHOWN_KEYS])
            more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
            problems.append(f"{problem}: {shown}{more}")
        raise InvalidPlan(f"{self.where} cannot hold these source keys: {'; '.join(problems)}; rename them at the "
                          f"source or leave them out with weights.exclude")
