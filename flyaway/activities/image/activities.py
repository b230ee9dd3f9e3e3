"""The image stage's activity: find the image the Fly app runs (when the plan names none) and copy it.

The copy itself (:func:`flyaway.activities.image.registry.copy_image`) is idempotent and pushes the tag
last, so a retried activity finds the blobs that landed and pushes only the rest.
"""

from __future__ import annotations

import asyncio

import structlog
from pydantic import ValidationError
from temporalio import activity

from flyaway.activities.image.registry import copy_image, resolve_login
from flyaway.errors import InvalidPlan
from flyaway.models.image import ImageCopyResult, ImageStage
from flyaway.providers.fly.client import FlyClient, release_image

log = structlog.get_logger(__name__)


def fly_image(app: str, process_group: str) -> str:
    """The image the Fly app's newest release runs in ``process_group``."""
    with FlyClient(app) as fly:
        return release_image(fly, process_group)


async def with_source(stage: ImageStage) -> ImageStage:
    """``stage`` with its source set: the plan's, or the image the Fly app runs."""
    if stage.source is not None:
        return stage
    assert stage.fly_app is not None  # the plan requires one of the two
    source = await asyncio.to_thread(fly_image, stage.fly_app, stage.fly_process_group)
    log.info("image read from the Fly app", app=stage.fly_app, image=source)
    try:
        return ImageStage.model_validate({**stage.model_dump(), "source": source})
    except ValidationError as error:
        raise InvalidPlan(f"Fly app {stage.fly_app} runs '{source}', which flyaway cannot copy: {error}") from None


@activity.defn(name="flyaway.image.check")
async def check_image_stage(stage: ImageStage) -> str:
    """Before the migration starts: which image (the Fly app answers), and both registry logins at hand."""
    stage = await with_source(stage)
    for reference, is_source in ((stage.source_reference, True), (stage.destination_reference, False)):
        assert reference is not None
        await asyncio.to_thread(resolve_login, stage.credentials_for(reference, is_source=is_source),
                                reference.registry)
    return str(stage.source)


@activity.defn(name="flyaway.image.copy")
async def copy_image_stage(stage: ImageStage) -> ImageCopyResult:
    """Copy the plan's image (or the Fly app's) to the destination with the rewritten config."""
    stage = await with_source(stage)
    copied = 0

    def progress(size: int) -> None:
        nonlocal copied
        copied += size
        activity.heartbeat(copied)

    return await copy_image(stage, on_progress=progress)


IMAGE_ACTIVITIES = [check_image_stage, copy_image_stage]
