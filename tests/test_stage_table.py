"""The migration's stages in one ordered table: every stage of the plan has a row, and the plan check
is a loop over the rows of the stages a plan has, in the order they run."""

from __future__ import annotations

from flyaway.activities.fly.teardown import check_teardown
from flyaway.activities.storage.activities import check_weights
from flyaway.models.plan import STAGES, parse_plan
from flyaway.models.status import StageResults
from flyaway.models.teardown import TeardownReport
from flyaway.workflows.stages import MIGRATION_STAGES, plan_checks, plan_stages

PLAN = {"name": "p", "weights": {"source": {"kind": "local", "path": "/a"}, "destination": {"kind": "local",
                                                                                          "path": "/b"}},
        "teardown": {"app": "old-app", "no_traffic_stage_ok": True}}


def test_the_table_has_every_stage_of_a_plan_in_order() -> None:
    assert tuple(stage.name for stage in MIGRATION_STAGES) == STAGES
    assert set(StageResults.model_fields) == set(STAGES)


def test_the_plan_check_covers_the_plans_stages_only() -> None:
    plan = parse_plan(PLAN)
    assert [stage.name for stage in plan_stages(plan)] == ["weights", "teardown"]
    assert plan_checks(plan) == [("weights", check_weights, plan.weights), ("teardown", check_teardown, plan.teardown)]


def test_results_record_which_stages_completed() -> None:
    results = StageResults().with_result("teardown", TeardownReport(app="old-app"))
    assert results.completed() == {"teardown"}
    assert results.teardown == TeardownReport(app="old-app")
