"""The image stage: one activity copies the image (read from the Fly app when the plan names none)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.image.activities import copy_image_stage
    from flyaway.errors import NON_RETRYABLE_ERROR_TYPES
    from flyaway.models.image import ImageCopyResult
    from flyaway.workflows.stages.base import StageContext

#: registry outages are waited out a while; a missing image, refused login or bad manifest go to the operator
COPY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1),
                         maximum_attempts=20, non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)


async def run_image(context: StageContext) -> ImageCopyResult:
    stage = context.plan.image
    assert stage is not None
    # layers of tens of GB take a while; progress arrives with every chunk pushed
    result = await workflow.execute_activity(copy_image_stage, stage, start_to_close_timeout=timedelta(hours=6),
                                             heartbeat_timeout=timedelta(minutes=2), retry_policy=COPY_RETRY)
    context.stage_status("image").detail = (
        f"{result.destination_image} ({len(result.platforms)} platform(s); {result.blobs_copied} blobs copied, "
        f"{result.blobs_mounted} mounted, {result.blobs_skipped} already there)")
    return result
