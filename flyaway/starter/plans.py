"""Reading plan files (YAML or JSON) and checking them before anything starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from flyaway.models.plan import MigrationPlan, parse_plan


class PlanFileError(ValueError):
    """A plan file that cannot be read or parsed; the text is one line per problem."""


def read_plan_data(path: Path) -> dict[str, Any]:
    """The plan file's content as JSON-compatible data."""
    try:
        text = path.read_text()
    except OSError as error:
        raise PlanFileError(f"{path}: cannot read the plan ({error.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise PlanFileError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                            f"{str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise PlanFileError(f"{path}: a plan is a mapping of fields, not {type(data).__name__}")
    return data


def load_plan(path: Path) -> tuple[MigrationPlan, dict[str, Any]]:
    """The validated plan and the JSON data to start the workflow with (what the UI would send)."""
    data = read_plan_data(path)
    try:
        plan = parse_plan(data)
    except ValueError as error:
        raise PlanFileError(str(error)) from None
    return plan, plan.model_dump(mode="json", exclude_none=True)
