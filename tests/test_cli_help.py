"""`--help` of every command: metavars instead of typer's type names, no braces, every option described."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from flyaway.starter.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_names_values_and_describes_every_option(command: str) -> None:
    result = CliRunner().invoke(app, [*command.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(bool|str|int|path|float)>|\{\w+\}", result.output), result.output
    rows = [line for line in result.output.splitlines() if re.match(r"│ +--?\w", line)]
    assert rows, result.output
    for row in rows:
        described = re.match(r"│ +(--?[\w-]+)(?: +--?[\w-]+)*(?: +[A-Z][A-Z_:]*)? {2,}[^\s│]", row)
        assert described, f"{command}: {row}"
