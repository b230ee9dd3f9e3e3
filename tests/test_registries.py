"""Adapters keyed by the plan's kind: every kind a plan accepts has one, found without a list of kinds,
and a heavy SDK loads only for the kind that needs it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, get_args

import pytest

from flyaway.activities.deploy.base import DEPLOYERS
from flyaway.activities.secrets.base import STORES
from flyaway.activities.storage.base import DESTINATIONS, SOURCES
from flyaway.activities.traffic import ROUTERS
from flyaway.models.canary import RouterConfig
from flyaway.models.deploy import DeployStage
from flyaway.models.locations import DestinationLocation, SourceLocation
from flyaway.models.secrets import SecretDestination
from flyaway.registry import Registry


def kinds(union: Any, tag: str) -> list[str]:
    """The tags a plan's tagged union accepts."""
    members = get_args(get_args(union)[0])
    return [value for member in members for value in get_args(member.model_fields[tag].annotation)]


@pytest.mark.parametrize(("registry", "union", "tag"), [
    (SOURCES, SourceLocation, "kind"), (DESTINATIONS, DestinationLocation, "kind"),
    (DEPLOYERS, DeployStage, "platform"), (ROUTERS, RouterConfig, "kind"), (STORES, SecretDestination, "kind"),
])
def test_every_kind_a_plan_accepts_has_an_adapter(registry: Registry[Any], union: Any, tag: str) -> None:
    found = {kind: registry[kind] for kind in kinds(union, tag)}
    assert len(found) >= 3
    assert all(callable(adapter) for adapter in found.values())


def test_an_unknown_kind_names_its_family() -> None:
    with pytest.raises(TypeError, match="no destination adapter for kind 'ftp'"):
        DESTINATIONS["ftp"]


def test_two_adapters_for_one_kind_are_refused() -> None:
    registry: Registry[Any] = Registry("thing", "flyaway.activities.storage", ())
    registry.register("a")(int)
    with pytest.raises(ValueError, match="two thing adapters for kind 'a'"):
        registry.register("a")(str)


def test_a_heavy_sdk_loads_only_for_its_own_kind() -> None:
    script = """
import sys
from flyaway.activities.storage import open_destination
from flyaway.activities.storage.base import DESTINATIONS
from flyaway.models.locations import LocalLocation
open_destination(LocalLocation(kind="local", path="/tmp"))
DESTINATIONS["runpod_volume"]
assert not [m for m in sys.modules if m.startswith(("google.cloud", "modal", "huggingface_hub"))], "loaded early"
DESTINATIONS["modal_volume"]
assert "modal" in sys.modules and "google.cloud.storage" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
