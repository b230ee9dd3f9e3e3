"""The README's and docs' examples are real: every plan in them validates, every location kind parses."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from flyaway.models.locations import DestinationLocation, SourceLocation
from flyaway.models.plan import parse_plan
from flyaway.models.secrets import SecretsStage

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def yaml_blocks(page: Path) -> list[object]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.DOTALL)]


def kinds_of(union: object) -> set[str]:
    """Every ``kind`` a tagged location union accepts."""
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(member.model_fields["kind"].annotation)[0] for member in members}


PLANS = [(page.name, block) for page in PAGES for block in yaml_blocks(page)
         if isinstance(block, dict) and "name" in block]
README_BLOCKS = yaml_blocks(ROOT / "README.md")


def test_the_docs_hold_plans() -> None:
    assert {page for page, _ in PLANS} >= {"README.md", "plan.md"}


@pytest.mark.parametrize("plan", [plan for _, plan in PLANS], ids=[f"{page}:{plan['name']}" for page, plan in PLANS])
def test_every_plan_in_the_docs_validates(plan: dict) -> None:
    parse_plan(plan)


def test_the_readme_shows_every_kind_of_source_and_destination() -> None:
    kinds = [b for b in README_BLOCKS if isinstance(b, dict) and "sources" in b]
    assert len(kinds) == 1
    sources, destinations = kinds[0]["sources"], kinds[0]["destinations"]
    assert sorted(s["kind"] for s in sources) == sorted(kinds_of(SourceLocation)), "one example per source kind"
    assert sorted(d["kind"] for d in destinations) == sorted(kinds_of(DestinationLocation)), \
        "one example per destination kind"
    for source in sources:
        TypeAdapter(SourceLocation).validate_python(source)
    for destination in destinations:
        TypeAdapter(DestinationLocation).validate_python(destination)


def test_every_secrets_section_in_the_docs_parses() -> None:
    sections = [b["secrets"] for page in PAGES for b in yaml_blocks(page)
                if isinstance(b, dict) and set(b) == {"secrets"}]
    assert sections, "the docs show a secrets section"
    for section in sections:
        SecretsStage.model_validate(section)


def test_one_tigris_endpoint_in_the_docs() -> None:
    pattern = r"https://[\w.-]*tigris[\w.-]*|https://t3\.storage\.dev"
    endpoints = {match for page in PAGES for match in re.findall(pattern, page.read_text())}
    assert endpoints == {"https://t3.storage.dev"}
