"""Reading plan files (YAML or JSON) and checking them before anything starts.

Every problem names where it is: ``plan.yaml:3:15`` for a file that does not parse, and the line
of the field for a field that does not validate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from flyaway.models.plan import MigrationPlan, parse_plan

_FIELD_PROBLEM = re.compile(r"^plan\.([^:\s]+): ")


class PlanFileError(ValueError):
    """A plan file that cannot be read or parsed; the text is one line per problem."""


def _yaml_problem(path: Path, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return f"{where}: not valid YAML: {problem}"


def read_plan_data(path: Path) -> dict[str, Any]:
    """The plan file's content as JSON-compatible data."""
    try:
        text = path.read_text()
    except OSError as error:
        raise PlanFileError(f"{path}: cannot read the plan ({error.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise PlanFileError(f"{path}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}") from None
    except yaml.YAMLError as error:
        raise PlanFileError(_yaml_problem(path, error)) from None
    if not isinstance(data, dict):
        raise PlanFileError(f"{path}: a plan is a mapping of fields, not {type(data).__name__}")
    return data


def _field_line(root: yaml.Node | None, dotted: str) -> int | None:
    """The 1-based line of the deepest node of ``dotted`` (``weights.source.path``) found in the YAML tree."""
    node, line = root, None
    for part in dotted.split("."):
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((value for key, value in node.value if getattr(key, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            child = node.value[int(part)]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _with_lines(path: Path, problems: str) -> str:
    """Each ``plan.<field>: ...`` line prefixed with where the field is in the file (YAML and JSON alike)."""
    try:
        root = yaml.compose(path.read_text())  # JSON is YAML too, so one walk serves both
    except (OSError, yaml.YAMLError):
        root = None
    lines = []
    for problem in problems.splitlines():
        match = _FIELD_PROBLEM.match(problem)
        line = _field_line(root, match.group(1)) if match else None
        lines.append(f"{path}:{line}: {problem}" if line else f"{path}: {problem}")
    return "\n".join(lines)


def load_plan(path: Path) -> tuple[MigrationPlan, dict[str, Any]]:
    """The validated plan and the JSON data to start the workflow with (what the UI would send)."""
    data = read_plan_data(path)
    try:
        plan = parse_plan(data)
    except ValueError as error:
        raise PlanFileError(_with_lines(path, str(error))) from None
    return plan, plan.model_dump(mode="json", exclude_none=True)


class PlanCheckError(ValueError):
    """The plan check failed in this shell; the text is one line naming the stage and the problem."""


#: what an activity's message says about the worker, as it reads when the check ran in the CLI's shell
_WORKER_WORDS = (("is not set on the worker", "is not set in this shell"),
                 ("in the worker's environment", "in this shell's environment"),
                 ("not readable by the worker", "not readable by this shell's user"),
                 ("not writable by the worker", "not writable by this shell's user"),
                 ("on the worker", "on this machine"))


def as_checked_here(message: str) -> str:
    for worker_words, here in _WORKER_WORDS:
        message = message.replace(worker_words, here)
    return message


async def check_in_this_shell(plan: MigrationPlan) -> None:
    """Run the check ``MigrationWorkflow`` runs on its worker, here: the same activity functions, in
    this process, with this shell's environment, files and network."""
    import inspect

    from temporalio.exceptions import ApplicationError

    from flyaway.failures import WorkerActivityEnvironment
    from flyaway.redaction import scrub
    from flyaway.workflows.stages import plan_checks

    for stage, check, argument in plan_checks(plan):
        try:
            outcome = WorkerActivityEnvironment().run(check, argument)
            if inspect.isawaitable(outcome):
                await outcome
        except ApplicationError as error:
            if not error.non_retryable:  # an outage or an error of flyaway's, not an answer about the plan
                raise PlanCheckError(f"{stage}: could not be checked in this shell: {error.message or error.type}"
                                     ) from None
            raise PlanCheckError(f"{stage}: {as_checked_here(error.message)} (checked in this shell, not on the "
                                 f"worker)") from None
        except Exception as error:  # noqa: BLE001 (whatever stopped the check, the user reads one line)
            raise PlanCheckError(f"{stage}: could not be checked in this shell: "
                                 f"{scrub(str(error)) or type(error).__name__}") from None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {key: leaf for name, item in value.items() for key, leaf in _flatten(item, f"{prefix}{name}.").items()}
    if isinstance(value, list) and value and any(isinstance(item, (dict, list)) for item in value):
        return {key: leaf for index, item in enumerate(value)
                for key, leaf in _flatten(item, f"{prefix}{index}.").items()}
    return {prefix.rstrip("."): value}


def _normalized(data: dict[str, Any]) -> dict[str, Any]:
    """A plan as the workflow reads it (defaults filled in, sizes as bytes), or as given if it does not parse."""
    try:
        return parse_plan(data).model_dump(mode="json", exclude_none=True)
    except ValueError:
        return data


def plan_differences(running: dict[str, Any], edited: dict[str, Any]) -> list[str]:
    """``field: running value -> edited value``, one line per field that differs, in field order."""
    before, after = _flatten(_normalized(running)), _flatten(_normalized(edited))
    missing = "(not set)"
    return [f"{key}: {json.dumps(before.get(key, missing))} -> {json.dumps(after.get(key, missing))}"
            for key in dict.fromkeys([*before, *after]) if before.get(key, missing) != after.get(key, missing)]
