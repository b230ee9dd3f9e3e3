"""Sources, destinations and the copy engine that moves bytes between them.

The adapters of Hugging Face, GCS and Modal are imported when a plan uses them: their SDKs
(google-cloud-storage with grpc, modal, huggingface_hub) cost a worker tens of MB it would
otherwise keep for nothing.
"""

from __future__ import annotations

from flyaway.activities.storage.base import Destination, Source
from flyaway.activities.storage.fly_volume import FlyVolumeSource
from flyaway.activities.storage.local import LocalDestination, LocalSource
from flyaway.activities.storage.runpod import RunPodVolumeDestination
from flyaway.activities.storage.s3 import S3Destination, S3Source
from flyaway.models.locations import (
    DestinationLocation,
    FlyVolumeLocation,
    GcsLocation,
    HfLocation,
    LocalLocation,
    ModalVolumeLocation,
    RunPodVolumeLocation,
    S3Location,
    SourceLocation,
    TigrisLocation,
)


def open_source(location: SourceLocation, concurrency: int = 8) -> Source:
    """The adapter for a plan's source location."""
    if isinstance(location, LocalLocation):
        return LocalSource(location)
    if isinstance(location, (S3Location, TigrisLocation)):
        return S3Source(location, concurrency)
    if isinstance(location, HfLocation):
        from flyaway.activities.storage.hf import HfSource
        return HfSource(location)
    if isinstance(location, FlyVolumeLocation):
        return FlyVolumeSource(location)
    raise TypeError(f"no source adapter for {type(location).__name__}")


def open_destination(location: DestinationLocation, concurrency: int = 8) -> Destination:
    """The adapter for a plan's destination location."""
    if isinstance(location, LocalLocation):
        return LocalDestination(location)
    if isinstance(location, S3Location):
        return S3Destination(location, concurrency)
    if isinstance(location, RunPodVolumeLocation):
        return RunPodVolumeDestination(location, concurrency)
    if isinstance(location, GcsLocation):
        from flyaway.activities.storage.gcs import GcsDestination
        return GcsDestination(location, concurrency)
    if isinstance(location, ModalVolumeLocation):
        from flyaway.activities.storage.modal_volume import ModalVolumeDestination
        return ModalVolumeDestination(location)
    raise TypeError(f"no destination adapter for {type(location).__name__}")
