"""The secrets stage: one activity reads the values and writes them; the workflow sees only the report.

A ``fly_app`` source's values exist only in the env of the app's Machines, so that activity runs
on an agent Machine started in the app, given the names of the app's secrets (never values).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.secrets.activities import sync_secrets
    from flyaway.errors import NON_RETRYABLE_ERROR_TYPES
    from flyaway.models.fly_agent import FlyAgent
    from flyaway.models.secrets import FlyAppSource, SecretsReport, SecretsStage
    from flyaway.workflows.fly_source import AGENT_SCHEDULE_TO_START, run_on_agent
    from flyaway.workflows.stages.base import StageContext

#: outages are waited out a while; bad input, missing rights and missing values go to the operator
SYNC_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1),
                         maximum_attempts=20, non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)


async def _sync(stage: SecretsStage, agent: FlyAgent | None = None) -> SecretsReport:
    return await workflow.execute_activity(
        sync_secrets, args=[stage, agent.secret_names if agent else None], start_to_close_timeout=timedelta(minutes=10),
        retry_policy=SYNC_RETRY, task_queue=agent.task_queue if agent else None,
        schedule_to_start_timeout=AGENT_SCHEDULE_TO_START if agent else None)


async def run_secrets(context: StageContext) -> SecretsReport:
    stage = context.plan.secrets
    assert stage is not None
    if isinstance(stage.source, FlyAppSource):
        report = await run_on_agent(stage, None, lambda agent: _sync(stage, agent))
    else:
        report = await _sync(stage)
    context.stage_status("secrets").detail = f"{report.summary()} in {report.destination}"
    return report
