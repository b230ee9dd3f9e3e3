"""The secrets stage: one activity reads the values and writes them; the workflow sees only the report."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from flyaway.activities.errors import NON_RETRYABLE_ERROR_TYPES
    from flyaway.activities.secrets.activities import sync_secrets
    from flyaway.models.secrets import SecretsReport
    from flyaway.workflows.stages import StageContext, stage_runner

#: outages are waited out a while; bad input, missing rights and missing values go to the operator
SYNC_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1),
                         maximum_attempts=20, non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)


@stage_runner("secrets")
async def run_secrets(context: StageContext) -> SecretsReport:
    stage = context.plan.secrets
    assert stage is not None
    report = await workflow.execute_activity(sync_secrets, stage, start_to_close_timeout=timedelta(minutes=10),
                                             retry_policy=SYNC_RETRY)
    context.stage_status("secrets").detail = f"{report.summary()} in {report.destination}"
    return report
