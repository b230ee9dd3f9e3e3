"""``flyaway report``: one page (and the same facts as JSON) on what a migration moved, how the new side
performs against Fly, and what it will cost. ``collect`` reads Temporal, ``render`` writes the files."""

from __future__ import annotations

from temporalio.client import Client

from flyaway.report.collect import Collector
from flyaway.report.model import MigrationReport
from flyaway.report.prices import ReferenceTable, load_table
from flyaway.report.render import write_report


async def build_report(client: Client, workflow_id: str, table: ReferenceTable | None = None) -> MigrationReport:
    return await Collector(client, workflow_id, table or load_table()).collect()


__all__ = ["MigrationReport", "build_report", "load_table", "write_report"]
