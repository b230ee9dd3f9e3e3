"""A Fly Volume as a source, as seen from outside Fly: checked here, read by the volume agent.

Only a Machine that mounts a volume can read it, so this adapter lists and reads nothing: the
copy workflow forks the volume, mounts the fork in an agent Machine and hands the agent the
stage with the source rewritten to its mount (a ``local`` source). What this adapter does is
the check before anything runs: the token, the app, the volume and its region.
"""

from __future__ import annotations

from collections.abc import Iterator

from flyaway.activities.storage.base import SOURCES, Source
from flyaway.errors import InvalidPlan
from flyaway.models.copy import SourceFile
from flyaway.models.locations import FlyVolumeLocation
from flyaway.providers.fly.agent import resolve_volume
from flyaway.providers.fly.client import FlyClient


@SOURCES.register("fly_volume")
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
