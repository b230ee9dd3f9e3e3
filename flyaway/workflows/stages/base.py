"""What every stage runner sees and raises.

A stage runner is an ``async`` function that takes a :class:`StageContext` and returns the
stage's result (kept in ``context.results`` for later stages: the deploy stage's endpoint for
the canary, the secrets stage's references for the deploy). It runs inside ``MigrationWorkflow``,
so it must be deterministic: activities and child workflows only. An ``ActivityError``,
``ChildWorkflowError`` or :class:`StageRefused` it lets out moves the migration to
``waiting_for_operator``; ``retry`` runs the stage again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError

from flyaway.models.copy import CopyWeightsResult
from flyaway.models.plan import MigrationPlan
from flyaway.models.status import StageResult, StageResults, StageStatus


def failure_message(error: BaseException) -> str:
    """The innermost message of a failure chain: what actually went wrong, not where."""
    while isinstance(error, (ActivityError, ChildWorkflowError)) and error.cause is not None:
        error = error.cause
    if isinstance(error, ApplicationError) and error.type:
        return f"{error.type}: {error.message}"
    return error.message if isinstance(error, FailureError) else str(error)


class StageRefused(ApplicationError):
    """A runner's own gate is not met (no activity failed): the operator sees why and decides."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, type="StageRefused", non_retryable=True)


class StageContext(Protocol):
    @property
    def plan(self) -> MigrationPlan: ...

    @property
    def results(self) -> StageResults:
        """What the stages before this one returned."""

    def stage_status(self, name: str) -> StageStatus: ...

    async def wait_for_approval(self, stage: str) -> None:
        """Return once ``approve(stage)`` arrived (at once if it already did)."""

    async def wait_while_paused(self) -> None: ...

    async def run_child(self, run: Any, arg: Any, stage: str) -> Any:
        """Run ``stage``'s child workflow to its end; the operator's signals go to it, ``abort`` cancels it."""

    async def copy_weights(self) -> CopyWeightsResult:
        """Run the copy with the migration's current settings, showing its progress in the migration's status."""


StageRunner = Callable[[StageContext], Awaitable[StageResult]]
