"""A Fly Volume as a source, as seen from outside Fly: checked here, read by the volume agent.

Only a Machine that mounts a volume can read it, so this adapter lists and reads nothing: the
copy workflow forks the volume, mounts the fork in an agent Machine and hands the agent the
stage with the source rewritten to its mount (a ``local`` source). What this adapter does is
the check before anything runs: the token, the app, the volume and its region.
"""

from __future__ import annotations

from collections.abc import Iterator

from flyaway.activities.errors import InvalidPlan, NotFound
from flyaway.activities.fly import FlyClient
from flyaway.activities.storage.base import Source
from flyaway.models.copy import SourceFile
from flyaway.models.fly import Volume
from flyaway.models.plan import FlyVolumeLocation


def resolve_volume(client: FlyClient, location: FlyVolumeLocation) -> Volume:
    """The volume the plan names (by id, else by name), checked against the plan's region."""
    volumes = client.list_volumes()
    by_id = [v for v in volumes if v.id == location.volume]
    matches = by_id or [v for v in volumes if v.name == location.volume]
    where = f"Fly app '{location.app}'"
    if not matches:
        known = ", ".join(sorted(f"{v.name} ({v.id}, {v.region})" for v in volumes)) or "none"
        raise NotFound(f"{where} has no volume '{location.volume}'; its volumes: {known}")
    if location.region is not None:
        in_region = [v for v in matches if v.region == location.region]
        if not in_region:
            found = ", ".join(sorted(f"{v.id} in {v.region}" for v in matches))
            raise InvalidPlan(f"volume '{location.volume}' of {where} is not in region '{location.region}' "
                              f"({found}); fix weights.source.region")
        matches = in_region
    if len(matches) > 1:
        ids = ", ".join(sorted(f"{v.id} ({v.region})" for v in matches))
        raise InvalidPlan(f"{where} has {len(matches)} volumes named '{location.volume}' ({ids}); name one by "
                          f"its id in weights.source.volume")
    return matches[0]


class FlyVolumeSource(Source):
    def __init__(self, location: FlyVolumeLocation) -> None:
        self.location = location

    def describe(self) -> str:
        return self.location.describe()

    def check(self) -> None:
        with FlyClient(self.location.app) as client:
            client.get_app()
            resolve_volume(client, self.location)

    def _unreadable(self) -> InvalidPlan:
        return InvalidPlan(f"{self.describe()} can only be read from a Machine that mounts it; the copy reads it "
                           f"through its volume agent")

    def list(self) -> Iterator[SourceFile]:
        raise self._unreadable()

    def stat(self, key: str) -> SourceFile:
        raise self._unreadable()

    def read(self, file: SourceFile, offset: int, length: int) -> bytes:
        raise self._unreadable()
