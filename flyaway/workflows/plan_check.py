"""The plan against the outside world, stage by stage: credentials, endpoints, buckets, rights.

``MigrationWorkflow`` runs these checks as activities on the worker before anything moves;
``flyaway validate`` and ``flyaway start`` run the same functions in the CLI's own shell.
"""

from __future__ import annotations

from collections.abc import Callable
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
    from flyaway.workflows.stages.deploy import deploy_request


def plan_checks(plan: MigrationPlan) -> list[tuple[str, Callable[..., Any], Any]]:
    """(stage, check activity, its input) for each stage of the plan, in the order the stages run."""
    checks: list[tuple[str, Callable[..., Any], Any]] = [("weights", check_weights, plan.weights)]
    if plan.secrets is not None:
        checks.append(("secrets", check_secrets, plan.secrets))
    if plan.image is not None:  # the source image and both registry logins
        checks.append(("image", check_image_stage, plan.image))
    if plan.deploy is not None:  # the fly.toml, the platform's credentials and rights
        checks.append(("deploy", check_deploy, deploy_request(plan, {})))
    if plan.canary is not None:  # records, pool and rights, before any weight changes
        checks.append(("canary", check_router, plan.canary))
    if plan.teardown is not None:  # the app and the token's rights, before hours of copying
        checks.append(("teardown", check_teardown, plan.teardown))
    return checks
