"""The README's examples are real: every plan in it validates, every location kind in it parses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from flyaway.models.plan import DestinationLocation, SourceLocation, parse_plan
from flyaway.models.secrets import SecretsStage

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)]


@pytest.mark.parametrize("plan", [b for b in BLOCKS if isinstance(b, dict) and "name" in b], ids=lambda b: b["name"])
def test_every_plan_in_the_readme_validates(plan: dict) -> None:
    parse_plan(plan)


def test_every_location_and_section_in_the_readme_parses() -> None:
    kinds = [b for b in BLOCKS if isinstance(b, dict) and "sources" in b]
    assert len(kinds) == 1
    assert {s["kind"] for s in kinds[0]["sources"]} == {"tigris", "hf", "s3", "local"}
    assert {d["kind"] for d in kinds[0]["destinations"]} == {"gcs", "runpod_volume", "modal_volume", "s3", "local"}
    for source in kinds[0]["sources"]:
        TypeAdapter(SourceLocation).validate_python(source)
    for destination in kinds[0]["destinations"]:
        TypeAdapter(DestinationLocation).validate_python(destination)
    sections = [b["secrets"] for b in BLOCKS if isinstance(b, dict) and set(b) == {"secrets"}]
    assert sections, "the README shows a secrets section"
    for section in sections:
        SecretsStage.model_validate(section)
