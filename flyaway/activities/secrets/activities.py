"""The secrets stage's activities: ``check`` (everything short of writing) and ``sync``.

``sync`` reads the values, checks all of them (present, non-empty, names and sizes the
destination accepts) and the destination's current state (where missing rights show up)
before it writes anything, then writes only the values whose digest differs. Values never
leave it: its arguments are the plan section (and a Fly app's secret names), its result a
:class:`SecretsReport`, it sends no heartbeats, and any error leaves with its message scrubbed
and its chain cut. For a ``fly_app`` source it runs on the agent Machine inside the app, the
only place the values exist; ``check`` then runs outside, without values.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection
from contextlib import closing

import structlog
from temporalio import activity

from flyaway.activities.secrets.base import STORES, SecretStore, digest_key
from flyaway.activities.secrets.sources import fly_secret_names, read_source
from flyaway.errors import InvalidPlan
from flyaway.models.secrets import (
    FlyAppSource,
    SecretDestination,
    SecretOutcome,
    SecretResult,
    SecretsReport,
    SecretsStage,
    secret_digest,
)
from flyaway.providers.fly.agent import agent_environment, check_secret_names

log = structlog.get_logger(__name__)


def open_store(destination: SecretDestination) -> SecretStore:
    """The client of the destination's secret store (each imports its SDK only when used)."""
    return STORES[destination.kind](destination)


def select_names(stage: SecretsStage, found: Collection[str]) -> tuple[list[str], list[str]]:
    """The source names to move, and those the plan lists but the source lacks (fails unless skipped)."""
    listed = stage.listed_names()
    wanted = sorted(found) if listed is None else listed
    missing = [name for name in wanted if name not in found]
    if missing and stage.on_missing == "fail":
        raise InvalidPlan(f"{stage.source.describe()} lacks {', '.join(missing)}; nothing was written (list only "
                          f"names it holds, or set on_missing: skip)")
    return [name for name in wanted if name in found], missing


def check_values(stage: SecretsStage, names: list[str], found: dict[str, str]) -> None:
    """Every problem with the values and their destination names at once, before anything is written."""
    problems = []
    empty = [name for name in names if not found[name]]
    if empty:
        problems.append(f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty at the source")
    try:
        stage.check_destination_names(names)
    except ValueError as error:
        problems.append(str(error))
    for name in names:
        try:
            stage.destination.check_value(name, found[name])
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise InvalidPlan(f"secrets from {stage.source.describe()} to {stage.destination.describe()}: "
                          f"{'; '.join(problems)}; nothing was written")


def _outcome(changed: bool, existed: bool) -> SecretOutcome:
    if not changed:
        return SecretOutcome.unchanged
    return SecretOutcome.updated if existed else SecretOutcome.created


def _missing_results(stage: SecretsStage, missing: list[str]) -> list[SecretResult]:
    return [SecretResult(name=name, destination_name=stage.destination_name(name),
                         outcome=SecretOutcome.missing_at_source) for name in missing]


def _sync(stage: SecretsStage, write: bool, names_at_source: list[str] | None) -> SecretsReport:
    found = read_source(stage.source, names_at_source)
    names, missing = select_names(stage, found)
    check_values(stage, names, found)
    values = {stage.destination_name(name): found[name] for name in names}
    key = digest_key(stage.destination)
    with closing(open_store(stage.destination)) as store:
        current = store.read(sorted(values))
        changed = {name: value for name, value in values.items() if current[name].digest != secret_digest(value, key)}
        references = store.write(changed, current) if write and changed else {}
    results = []
    for name in names:
        target = stage.destination_name(name)
        results.append(SecretResult(
            name=name, destination_name=target, outcome=_outcome(target in changed, current[target].exists),
            digest=secret_digest(found[name], key), reference=references.get(target, current[target].reference)))
    return SecretsReport(destination=stage.destination.describe(), secrets=results + _missing_results(stage, missing))


def _check_fly_app(stage: SecretsStage, source: FlyAppSource, namespace: str) -> SecretsReport:
    """What can be checked outside the app, where its values are out of reach: the names at the source
    (Machines API), what the agent Machine needs from this worker, the destination's names and rights.
    The secrets the agent will read get no outcome yet."""
    available = fly_secret_names(source)
    names, missing = select_names(stage, available)
    env, _ = agent_environment(source, stage.destination, namespace, os.environ)
    check_secret_names(source, env, available)
    try:
        stage.check_destination_names(names)
    except ValueError as error:
        raise InvalidPlan(f"secrets from {source.describe()} to {stage.destination.describe()}: {error}") from None
    with closing(open_store(stage.destination)) as store:
        current = store.read(sorted(stage.destination_name(name) for name in names))
    results = [SecretResult(name=name, destination_name=stage.destination_name(name),
                            reference=current[stage.destination_name(name)].reference) for name in names]
    return SecretsReport(destination=stage.destination.describe(), secrets=results + _missing_results(stage, missing))


@activity.defn(name="flyaway.secrets.check")
async def check_secrets(stage: SecretsStage) -> SecretsReport:
    """Everything ``sync`` does short of writing: the report tells what a sync would do (for a Fly app,
    whose values only its agent reads, everything that needs no value)."""
    if isinstance(stage.source, FlyAppSource):
        return await asyncio.to_thread(_check_fly_app, stage, stage.source, activity.info().namespace)
    return await asyncio.to_thread(_sync, stage, False, None)


@activity.defn(name="flyaway.secrets.sync")
async def sync_secrets(stage: SecretsStage, names_at_source: list[str] | None = None) -> SecretsReport:
    """Read the values at the source and write those that differ to the destination; ``names_at_source``
    are the secret names of a ``fly_app`` source (this then runs on its agent)."""
    report = await asyncio.to_thread(_sync, stage, True, names_at_source)
    log.info("secrets synced", destination=report.destination, summary=report.summary())
    return report


SECRETS_ACTIVITIES = [check_secrets, sync_secrets]
