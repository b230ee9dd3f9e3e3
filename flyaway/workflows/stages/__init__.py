"""The stages of a migration, in the order they run: one module each, one row each in :data:`MIGRATION_STAGES`.

A row names the stage's runner (see :mod:`flyaway.workflows.stages.base`) and the activity that
checks the stage's part of the plan against the outside world (credentials, endpoints, buckets,
rights) before anything moves. ``MigrationWorkflow`` runs the checks and then the stages of its
plan from this table; ``flyaway validate`` and ``flyaway start`` run the same checks in the CLI's
own shell (:func:`plan_checks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.deploy.activities import check_deploy
    from flyaway.activities.fly.teardown import check_teardown
    from flyaway.activities.image.activities import check_image_stage
    from flyaway.activities.secrets.activities import check_secrets
    from flyaway.activities.storage.activities import check_weights
    from flyaway.activities.traffic.activities import check_router
    from flyaway.models.plan import MigrationPlan
    from flyaway.models.status import StageResults
    from flyaway.workflows.stages.base import StageRunner
    from flyaway.workflows.stages.canary import run_canary
    from flyaway.workflows.stages.deploy import deploy_request, run_deploy
    from flyaway.workflows.stages.image import run_image
    from flyaway.workflows.stages.secrets import run_secrets
    from flyaway.workflows.stages.teardown import run_teardown
    from flyaway.workflows.stages.weights import run_weights


@dataclass(frozen=True)
class Stage:
    name: str
    run: StageRunner
    #: the activity that checks the stage's part of the plan, and its input
    check: Callable[..., Any]
    check_input: Callable[[MigrationPlan], Any]


MIGRATION_STAGES = (
    Stage("weights", run_weights, check_weights, lambda plan: plan.weights),
    Stage("image", run_image, check_image_stage, lambda plan: plan.image),  # the source image, both logins
    Stage("secrets", run_secrets, check_secrets, lambda plan: plan.secrets),
    # the fly.toml, the platform's credentials and rights; the image is the tag the image stage will push
    Stage("deploy", run_deploy, check_deploy, lambda plan: deploy_request(plan, StageResults())),
    Stage("canary", run_canary, check_router, lambda plan: plan.canary),  # records, pool, rights
    Stage("teardown", run_teardown, check_teardown, lambda plan: plan.teardown),  # the app, the token's rights
)


def plan_stages(plan: MigrationPlan) -> list[Stage]:
    """The stages of ``plan``, in the order they run."""
    present = plan.stages_present()
    return [stage for stage in MIGRATION_STAGES if stage.name in present]


def plan_checks(plan: MigrationPlan) -> list[tuple[str, Callable[..., Any], Any]]:
    """(stage, check activity, its input) for each stage of the plan, in the order the stages run."""
    return [(stage.name, stage.check, stage.check_input(plan)) for stage in plan_stages(plan)]
