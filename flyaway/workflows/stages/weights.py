"""The weights stage: ``CopyWeightsWorkflow`` as a child, fed the migration's settings (``tune``, ``pause``)
and reporting its progress into the migration's status by signal, so the migration runs it."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from flyaway.models.copy import CopyWeightsResult
    from flyaway.workflows.stages.base import StageContext


async def run_weights(context: StageContext) -> CopyWeightsResult:
    return await context.copy_weights()
