"""A RunPod Network Volume as a destination, through RunPod's S3-compatible API.

It is S3 with tighter limits, so this is ``S3Destination`` told those limits: request bodies
(a PutObject, a part) of at most 500 MB (decimal), no DeleteObjects and no CreateBucket (neither
is used), and a CompleteMultipartUpload that can take minutes for a large file (``s3.py``
waits for it and, if its answer times out, checks the object instead of trusting a retry).
Checksum headers are sent only when an operation requires them; parts are verified by their
Content-MD5 and ETag, the object by its multipart ETag.
"""

from __future__ import annotations

from flyaway.activities.storage.base import DESTINATIONS, DestinationLimits
from flyaway.activities.storage.s3 import S3Destination
from flyaway.models.locations import RunPodVolumeLocation

MiB = 1024 * 1024
#: the largest request body RunPod's S3 API takes: a part of at most this, a PutObject under it
RUNPOD_MAX_BODY = 500 * 1000 * 1000
#: the engine cuts parts in whole MiB, so its largest RunPod part is this (476 MiB)
RUNPOD_LARGEST_PART = RUNPOD_MAX_BODY // MiB * MiB
#: a network volume is a file system behind the S3 API: keys are paths there
RUNPOD_LIMITS = DestinationLimits(max_part_size=RUNPOD_MAX_BODY, max_single_put=RUNPOD_MAX_BODY - 1,
                                  max_object_size=DestinationLimits.max_parts * RUNPOD_LARGEST_PART,
                                  keys_are_paths=True, max_name_bytes=255)


@DESTINATIONS.register("runpod_volume")
class RunPodVolumeDestination(S3Destination):
    limits = RUNPOD_LIMITS
    additional_checksums = False

    def __init__(self, location: RunPodVolumeLocation, concurrency: int = 10) -> None:
        super().__init__(location, concurrency)
        self.volume = location

    def bucket_label(self) -> str:
        return f"network volume {self.volume.volume_id} in datacenter {self.volume.datacenter}"

    def endpoint_hint(self) -> str:
        return (f"check datacenter ({self.volume.datacenter}): RunPod's S3 API serves only some datacenters, "
                f"the one the volume lives in")
