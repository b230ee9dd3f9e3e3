"""Sources, destinations and the copy engine that moves bytes between them.

Each adapter registers itself for the plan kinds it serves (:data:`base.SOURCES`,
:data:`base.DESTINATIONS`); the adapters of Hugging Face, GCS and Modal are imported when a plan
uses them: their SDKs (google-cloud-storage with grpc, modal, huggingface_hub) cost a worker tens
of MB it would otherwise keep for nothing.
"""

from __future__ import annotations

from flyaway.activities.storage.base import DESTINATIONS, SOURCES, Destination, Source
from flyaway.models.locations import DestinationLocation, SourceLocation


def open_source(location: SourceLocation, concurrency: int = 8) -> Source:
    """The adapter for a plan's source location."""
    return SOURCES[location.kind].open(location, concurrency)


def open_destination(location: DestinationLocation, concurrency: int = 8) -> Destination:
    """The adapter for a plan's destination location."""
    return DESTINATIONS[location.kind].open(location, concurrency)
