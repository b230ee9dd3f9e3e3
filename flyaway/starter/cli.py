"""The ``flyaway`` command line: start, follow and steer migrations; run workers and the dev stack.

Exit codes (scripts rely on them, docs/cli.md lists them): 0 done, or a migration that runs or
completed; 1 a migration that failed, was aborted, waits for the operator or is paused; 2 bad
input or a refused command; 3 Temporal unreachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from flyaway.connection import TASK_QUEUE, TemporalOptions, connect
from flyaway.errors import FlyawayError
from flyaway.log import configure_logging, only_critical_logs
from flyaway.models.plan import MigrationPlan
from flyaway.models.status import MigrationState, TuneRequest
from flyaway.redaction import scrub
from flyaway.starter.display import Snapshot, human_bytes, render, snapshot, watch
from flyaway.starter.options import FlyawayApp, temporal_options
from flyaway.starter.plans import (
    PlanCheckError,
    PlanFileError,
    as_checked_here,
    check_in_this_shell,
    load_plan,
    plan_differences,
)

T = TypeVar("T")
app = FlyawayApp(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                 rich_markup_mode="markdown",
                 help="Move GPU inference services off Fly.io as one durable Temporal workflow.")
console = Console()
err = Console(stderr=True)

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 1, 2, 3
#: how long a control waits for the migration to show the new state (abort cancels the copy first)
SETTLE_SECONDS = {"abort": 60.0}
DEFAULT_SETTLE_SECONDS = 10.0
#: the demo's S3 server keeps one port, so its endpoint can be written down
DEMO_S3_PORT = 9023
DEV_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "flyaway"

TaskQueue = Annotated[str, typer.Option("--task-queue", envvar="FLYAWAY_TASK_QUEUE", metavar="QUEUE",
                                        help="Temporal task queue of flyaway's workers")]
UiUrl = Annotated[str, typer.Option("--ui-url", envvar="FLYAWAY_UI_URL", metavar="URL",
                                    help="base URL of the Temporal UI, for the link to the migration")]
MigrationId = Annotated[str, typer.Argument(metavar="NAME", help="plan name or workflow id (migration-NAME)",
                                            show_default=False)]
PlanFile = Annotated[Path, typer.Argument(metavar="PLAN", help="plan file, YAML or JSON", show_default=False)]
JsonLogs = Annotated[bool | None, typer.Option(
    "--json-logs/--console-logs", metavar="", show_default=False,
    help="log JSON lines, or lines for people (default: JSON unless stderr is a terminal)")]


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err.print(f"[bold red]error:[/] {scrub(message)}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code)


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine; Temporal's refusals become one line (a missing workflow is the caller's to word)."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except RuntimeError as error:
        if "Failed client connect" in str(error) or "connection" in str(error).lower():
            fail(f"cannot reach Temporal: {error}; start it with `flyaway dev` or set --address",
                 EXIT_UNREACHABLE)
        raise
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise
        if error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            fail(f"Temporal did not answer: {error.message}", EXIT_UNREACHABLE)
        fail(f"Temporal refused the request: {error.message}", EXIT_FAILED)


def run_or_not_found(go: Callable[[], Awaitable[T]], workflow_id: str) -> T:
    try:
        return run(go())
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            fail(f"no migration {workflow_id}; `temporal workflow list` shows what exists")
        raise


def workflow_id_of(value: str) -> str:
    return value if value.startswith("migration-") else f"migration-{value}"


def ui_link(ui_url: str, namespace: str, workflow_id: str) -> str:
    return f"{ui_url.rstrip('/')}/namespaces/{namespace}/workflows/{workflow_id}"


def read_plan(path: Path) -> tuple[MigrationPlan, dict[str, Any]]:
    try:
        return load_plan(path)
    except PlanFileError as error:
        fail(str(error).replace("\n", "\n       "))


def check_plan_here(plan: MigrationPlan, hint: str = "") -> None:
    """This shell's worker policy (``FLYAWAY_ALLOW_*``), then the workflow's plan check, run in this shell:
    no request carries a credential the policy does not allow; one line naming the stage (and ``hint``) on failure."""
    from flyaway.policy import check_plan

    try:
        check_plan(plan)
    except FlyawayError as error:
        fail(f"{error} (checked against this shell's worker policy, FLYAWAY_ALLOW_* and FLYAWAY_POLICY_FILE, "
             f"as a worker checks it against its own)")
    try:
        with only_critical_logs():
            run(check_in_this_shell(plan))
    except PlanCheckError as error:
        fail(f"{error}{hint}")


# ---- plans ------------------------------------------------------------------------------------

@app.command()
def schema() -> None:
    """Print the JSON Schema of a migration plan."""
    print(json.dumps(MigrationPlan.model_json_schema(), indent=2))


@app.command()
def validate(plan_file: PlanFile,
             offline: Annotated[bool, typer.Option("--offline", help="only check the plan's shape, not the "
                                                   "credentials, endpoints and buckets")] = False) -> None:
    """Check a plan: its shape, then (unless --offline) what the worker checks before it starts, run here.

    The online check runs in this shell: its environment variables, files and network. The
    worker runs the same check again, with its own, when the migration starts.
    """
    plan, _ = read_plan(plan_file)
    if not offline:
        check_plan_here(plan)
    where = ("shape only (--offline)" if offline else
             "checked in this shell, within its worker policy (FLYAWAY_ALLOW_*), which each worker checks again")
    console.print(f"[green]plan {plan.name} is valid[/] ({where}): weights {plan.weights.source.describe()} -> "
                  f"{plan.weights.destination.describe()}; stages {', '.join(plan.stages_present())}",
                  highlight=False)


@app.command()
def translate(fly_toml: Annotated[Path, typer.Argument(metavar="FLY_TOML", help="the app's fly.toml",
                                                       show_default=False)],
              to: Annotated[str, typer.Option("--to", metavar="PLATFORM", help="cloud_run, runpod or modal")]) -> None:
    """Print a fly.toml as a plan's deploy section for the target, and what has no equivalent there."""
    from flyaway.models.deploy import PLATFORM_NAMES
    from flyaway.starter.translate import translation_text

    if to not in PLATFORM_NAMES:
        fail(f"--to {to}: choose one of {', '.join(PLATFORM_NAMES)}")
    try:
        text = translation_text(str(fly_toml.resolve()), to)  # type: ignore[arg-type]
    except FlyawayError as error:
        fail(str(error))
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command("plan")
def plan_command(plan_file: PlanFile,
                 dry_run: Annotated[bool, typer.Option("--dry-run", help="change nothing (the default)")] = True,
                 show_all: Annotated[bool, typer.Option("--all", help="list every file, not the first 30")] = False,
                 measure: Annotated[bool, typer.Option("--measure/--no-measure",
                                                       help="time a short read and write sample")] = True) -> None:
    """Dry run: what would be copied and skipped and why, total bytes, and a time estimate."""
    from rich.table import Table

    from flyaway.starter.dry_run import dry_run as run_dry

    plan, _ = read_plan(plan_file)
    try:
        report = run_dry(plan, measure=measure)
    except FlyawayError as error:
        fail(as_checked_here(str(error)))
    table = Table(title=f"{plan.weights.source.describe()} -> {plan.weights.destination.describe()}")
    table.add_column("file", overflow="fold")
    table.add_column("size", no_wrap=True)
    table.add_column("action", no_wrap=True)
    rows = report.decisions if show_all else report.decisions[:30]
    for decision in rows:
        action = f"copy ({decision.reason})" if decision.reason else "skip (unchanged)"
        table.add_row(decision.file.key, human_bytes(decision.file.size), action)
    console.print(table)
    if len(rows) < len(report.decisions):
        console.print(f"... and {len(report.decisions) - len(rows)} more (--all lists them)")
    console.print(f"to copy: {len(report.to_copy)} files, {human_bytes(report.bytes_to_copy)}; "
                  f"unchanged: {len(report.decisions) - len(report.to_copy)} files, "
                  f"{human_bytes(report.bytes_unchanged)}; excluded by include/exclude: {report.excluded}",
                  highlight=False, soft_wrap=True)
    for line in report.estimate_lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def teardown(plan_file: PlanFile,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would be destroyed")] = False) -> None:
    """Print exactly what the teardown stage would destroy on Fly (reads the Fly API, changes nothing)."""
    from flyaway.starter.teardown import describe_teardown

    plan, _ = read_plan(plan_file)
    if not dry_run:
        fail(f"teardown runs as the migration's last stage (`flyaway approve {plan.name} teardown`); add --dry-run "
             f"to see what it would destroy")
    if plan.teardown is None:
        fail(f"plan {plan.name} has no teardown section")
    try:
        lines = describe_teardown(plan)
    except FlyawayError as error:
        fail(str(error))
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# ---- starting and following -------------------------------------------------------------------

async def _running_plan(client: Client, workflow_id: str) -> dict[str, Any] | None:
    """The plan the running migration was started with: its first event's input."""
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        values = await client.data_converter.decode(payloads) if payloads else []
        first = values[0] if values else None
        if not isinstance(first, dict):
            return None
        plan = first.get("plan")
        return plan if isinstance(plan, dict) else first  # a run continued as new carries its plan inside its state
    return None


async def _start(temporal: TemporalOptions, plan: MigrationPlan, data: dict[str, Any],
                 task_queue: str) -> list[str] | None:
    """Start the migration; None if it started, else how its running plan differs from ``data`` (maybe not at all)."""
    client = await connect(temporal)
    try:
        await client.start_workflow("MigrationWorkflow", data, id=plan.workflow_id, task_queue=task_queue,
                                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
    except WorkflowAlreadyStartedError:
        running = await _running_plan(client, plan.workflow_id)
        return plan_differences(running, data) if running is not None else []
    return None


@app.command()
@temporal_options
def start(plan_file: PlanFile,
          wait: Annotated[bool, typer.Option("--wait", help="follow the migration until it ends or needs the "
                                                            "operator; exit 0 only if it completed")] = False,
          check: Annotated[bool, typer.Option("--check/--no-check", help="run the worker's plan check in this shell "
                                              "first (--no-check when this shell lacks the worker's credentials)")]
          = True,
          task_queue: TaskQueue = TASK_QUEUE, ui_url: UiUrl = "http://localhost:8233", *,
          temporal: TemporalOptions) -> None:
    """Start a migration, or attach to the one running with the same plan (an edited plan is refused)."""
    plan, data = read_plan(plan_file)
    if check:
        check_plan_here(plan, "; if the worker has what this shell lacks, --no-check leaves the check to it")
    differences = run(_start(temporal, plan, data, task_queue))
    if differences:
        fail(f"{plan.workflow_id} is already running with a different plan; abort it (`flyaway abort {plan.name}`) "
             f"or give the edited plan another name. What differs (running -> {plan_file}):\n  "
             + "\n  ".join(differences))
    verb = "started" if differences is None else "already running with this plan, attached to"
    console.print(f"{verb} [bold]{plan.workflow_id}[/]\n{ui_link(ui_url, temporal.namespace_name, plan.workflow_id)}",
                  highlight=False)
    if wait:
        _follow(temporal, plan.workflow_id)


def _follow(temporal: TemporalOptions, workflow_id: str) -> None:
    async def go() -> Snapshot:
        return await watch(await connect(temporal), workflow_id, console)

    snap = run_or_not_found(go, workflow_id)
    if not (snap.finished and snap.healthy):
        raise typer.Exit(EXIT_FAILED)


@app.command()
@temporal_options
def status(migration: MigrationId,
           watch_: Annotated[bool, typer.Option("--watch", help="follow it every 2 s until it ends or needs the "
                                                                "operator")] = False,
           as_json: Annotated[bool, typer.Option("--json", help="print the status query as JSON")] = False, *,
           temporal: TemporalOptions) -> None:
    """Show a migration's state, stages, files, bytes, rate and ETA.

    The first line is "migration-NAME STATE". Exit 0 while it runs (validating, running) or once it
    completed; 1 when it is paused, waits for the operator, failed or was aborted.
    """
    workflow_id = workflow_id_of(migration)
    if watch_:
        _follow(temporal, workflow_id)
        return

    async def go() -> Snapshot:
        return await snapshot(await connect(temporal), workflow_id)

    snap = run_or_not_found(go, workflow_id)
    if as_json:
        print(snap.status.model_copy(update={"bytes_done": snap.bytes_done, "files_done": snap.files_done})
              .model_dump_json(indent=2))
    else:
        console.print(render(snap))
    if not snap.healthy:
        raise typer.Exit(EXIT_FAILED)


# ---- steering -----------------------------------------------------------------------------------

class _Ended(Exception):
    """The migration has ended (``state`` says how), so there is nothing for a control to do."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


def _settled(name: str, before: Snapshot, after: Snapshot) -> bool:
    """Whether ``after`` shows the effect of control ``name`` (the new state, not the old one)."""
    if name == "abort":
        return after.finished
    if name == "retry":
        return after.state != MigrationState.waiting_for_operator.value
    if name == "pause":
        return before.state != MigrationState.running.value or after.state != before.state
    if name == "resume":
        return before.state != MigrationState.paused.value or after.state != before.state
    return True


async def _control(temporal: TemporalOptions, workflow_id: str, name: str, args: list[Any]) -> tuple[Snapshot, dict[str, Any]]:
    """Send control ``name``, then read the migration until it shows the new state (or time runs out)."""
    client = await connect(temporal)
    handle = client.get_workflow_handle(workflow_id)
    before = await snapshot(client, workflow_id)
    if before.finished:
        raise _Ended(before.state)
    try:
        reply = await handle.execute_update(name, args=args, result_type=dict)
    except RPCError as error:  # it ended between the snapshot and the update
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
        raise _Ended((await snapshot(client, workflow_id)).state) from None
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS.get(name, DEFAULT_SETTLE_SECONDS)
    after = await snapshot(client, workflow_id)
    while not _settled(name, before, after) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.5)
        after = await snapshot(client, workflow_id)
    return after, reply if isinstance(reply, dict) else {}


def _settings_text(snap: Snapshot) -> str:
    limit = snap.status.bandwidth_limit
    return (f"concurrency {snap.status.concurrency}, bandwidth {human_bytes(limit) + '/s' if limit else 'unlimited'}, "
            f"parallelism {snap.status.parallelism}")


def _steer(migration: str, name: str, temporal: TemporalOptions, *args: Any) -> None:
    """Run a control and print the migration's new state: first line ``NAME: migration-X is now STATE``."""
    workflow_id = workflow_id_of(migration)

    async def go() -> tuple[Snapshot, dict[str, Any]]:
        return await _control(temporal, workflow_id, name, list(args))

    try:
        after, reply = run_or_not_found(go, workflow_id)
    except WorkflowUpdateFailedError as error:
        fail(f"{name} refused: {getattr(error.cause, 'message', error.cause)}")
    except _Ended as ended:
        fail(f"{name} refused: {workflow_id} has ended ({ended.state}); there is nothing to {name}")
    state = after.state
    if name == "abort" and not after.finished:
        state = "aborting (asked; not ended yet: `flyaway status` follows it)"
    settings = f"; {_settings_text(after)}" if name == "tune" else ""
    console.print(f"{name}: {workflow_id} is now {state}{settings}", highlight=False, markup=False, soft_wrap=True)
    if reply.get("message"):
        console.print(str(reply["message"]), highlight=False, markup=False, soft_wrap=True)


@app.command()
@temporal_options
def approve(migration: MigrationId,
            stage: Annotated[str, typer.Argument(metavar="STAGE", help="stage to approve: teardown, or canary for "
                                                 "the canary's current step", show_default=False)], *,
            temporal: TemporalOptions) -> None:
    """Approve a gated stage (for example teardown), or the canary's current step."""
    _steer(migration, "approve", temporal, stage)


@app.command()
@temporal_options
def promote(migration: MigrationId, *, temporal: TemporalOptions) -> None:
    """Skip the canary's remaining steps: all traffic to the new endpoint now."""
    _steer(migration, "promote", temporal)


@app.command()
@temporal_options
def pause(migration: MigrationId, *, temporal: TemporalOptions) -> None:
    """Pause: no new bytes within seconds (parts in flight finish or are cancelled); nothing landed is lost."""
    _steer(migration, "pause", temporal)


@app.command()
@temporal_options
def resume(migration: MigrationId, *, temporal: TemporalOptions) -> None:
    """Resume a paused migration."""
    _steer(migration, "resume", temporal)


@app.command()
@temporal_options
def retry(migration: MigrationId, *, temporal: TemporalOptions) -> None:
    """Run the stage that waits for the operator again, from where it stopped."""
    _steer(migration, "retry", temporal)


@app.command()
@temporal_options
def abort(migration: MigrationId,
          reason: Annotated[str, typer.Option("--reason", metavar="TEXT", help="why; kept in the migration's "
                                              "failure")] = "aborted from CLI", *,
          temporal: TemporalOptions) -> None:
    """Abort a migration: the copy is cancelled, unfinished uploads are dropped; what was verified stays."""
    _steer(migration, "abort", temporal, reason)


@app.command()
@temporal_options
def tune(migration: MigrationId,
         concurrency: Annotated[int | None, typer.Option(min=1, max=256, metavar="N", show_default=False,
                                                         help="parts in flight")] = None,
         bandwidth: Annotated[str | None, typer.Option(metavar="SIZE", show_default=False,
                                                       help="bytes per second, e.g. 200MiB; 0 for none")] = None,
         parallelism: Annotated[int | None, typer.Option(min=1, max=64, metavar="N", show_default=False,
                                                         help="copy activities in flight, over the workers")] = None,
         *, temporal: TemporalOptions) -> None:
    """Change a running copy's concurrency, bandwidth limit or parallelism; prints the settings now in force."""
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        limit = None if bandwidth is None else int(TypeAdapter(ByteSize).validate_python(bandwidth))
    except ValidationError:
        fail(f"--bandwidth: '{bandwidth}' is not a size; write it like 200MiB, or 0 for no limit")
    _steer(migration, "tune", temporal, TuneRequest(concurrency=concurrency, bandwidth_limit=limit,
                                                    parallelism=parallelism))


@app.command()
@temporal_options
def report(migration: MigrationId,
           output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", show_default=False,
                                                       help="the page to write; the JSON goes beside it (default: "
                                                            "./NAME-report.html)")] = None,
           prices: Annotated[Path | None, typer.Option("--prices", metavar="FILE", show_default=False,
                                                       help="TOML price table over the project's")] = None, *,
           temporal: TemporalOptions) -> None:
    """Write a migration's report: one HTML page and the same facts as JSON (running or ended)."""
    from flyaway.report import build_report, load_table, write_report
    from flyaway.report.history import ReportError
    from flyaway.report.prices import PriceFileError

    try:
        table = load_table(prices)
    except PriceFileError as error:
        fail(f"--prices: {error}")
    workflow_id = workflow_id_of(migration)

    async def go() -> Any:
        return await build_report(await connect(temporal), workflow_id, table)

    try:
        facts = run_or_not_found(go, workflow_id)
    except ReportError as error:
        fail(str(error))
    page, data = write_report(facts, output or Path(f"{facts.name}-report.html"))
    console.print(f"report of {workflow_id} ({facts.state}): {page}\nthe same facts as JSON: {data}",
                  highlight=False, soft_wrap=True)


# ---- processes ----------------------------------------------------------------------------------

@app.command()
@temporal_options
def worker(task_queue: TaskQueue = TASK_QUEUE,
           max_activities: Annotated[int, typer.Option(metavar="N", help="activities this worker runs at once")] = 20,
           bandwidth_limit: Annotated[str | None, typer.Option(
               metavar="SIZE", envvar="FLYAWAY_WORKER_BANDWIDTH", show_default=False,
               help="bytes per second this worker sends over all its copies, e.g. 100MiB (each copy's own "
                    "limit holds too)")] = None,
           json_logs: JsonLogs = None,
           allow_credential: Annotated[list[str] | None, typer.Option(
               help="KIND=VARIABLE: a credential variable plans may hand to KIND besides the documented ones "
                    "(repeatable; also FLYAWAY_ALLOW_CREDENTIALS)")] = None,
           allow_host: Annotated[list[str] | None, typer.Option(
               help="a host (name, *.domain, IP or network) address overrides may name besides the providers' "
                    "own; loopback and private ones only this way (repeatable; also FLYAWAY_ALLOW_HOSTS)")] = None,
           allow_secret_env: Annotated[list[str] | None, typer.Option(
               help="a variable (or glob) an env secrets source may read (repeatable; also "
                    "FLYAWAY_ALLOW_SECRET_ENV)")] = None,
           allow_dotenv_dir: Annotated[list[str] | None, typer.Option(
               help="a folder dotenv secrets files may lie under (repeatable; also FLYAWAY_ALLOW_DOTENV_DIRS)")]
           = None,
           policy_file: Annotated[Path | None, typer.Option(
               envvar="FLYAWAY_POLICY_FILE", help="TOML file with hosts, secret_env, dotenv_dirs lists and a "
                                                  "credentials table KIND = [VARIABLE, ...]")] = None,
           *, temporal: TemporalOptions) -> None:
    """Run a worker: flyaway's workflows and activities, until SIGINT or SIGTERM."""
    from pydantic import ByteSize, TypeAdapter, ValidationError

    from flyaway import policy
    from flyaway.activities.storage.engine import WORKER_BANDWIDTH
    from flyaway.workers.main import run_worker
    from flyaway.workers.policy import start_policy

    if bandwidth_limit is not None:
        try:
            WORKER_BANDWIDTH.rate = int(TypeAdapter(ByteSize).validate_python(bandwidth_limit)) or None
        except ValidationError:
            fail(f"--bandwidth-limit: '{bandwidth_limit}' is not a size; write it like 100MiB")

    for name, values in ((policy.CREDENTIALS_ENV, allow_credential), (policy.HOSTS_ENV, allow_host),
                         (policy.SECRET_ENV_ENV, allow_secret_env), (policy.DOTENV_DIRS_ENV, allow_dotenv_dir)):
        policy.add_to_env(os.environ, name, values or [])
    if policy_file is not None:
        os.environ[policy.POLICY_FILE_ENV] = str(policy_file)
    try:
        start_policy()
    except ValueError as error:  # the policy, or a credential too short to be real
        fail(str(error))
    configure_logging(json=json_logs)
    run(run_worker(temporal, task_queue, max_activities))


@app.command("agent")
@temporal_options
def agent(task_queue: Annotated[str, typer.Option("--task-queue", metavar="QUEUE",
                                                  help="the task queue of the run's agents")],
          max_activities: Annotated[int, typer.Option(metavar="N", help="activities at once")] = 4,
          json_logs: JsonLogs = None, *, temporal: TemporalOptions) -> None:
    """Run the agent (inside a Fly Machine of the source's app): copies of a forked volume, or the app's secrets."""
    from flyaway.providers.fly.agent import adopt_agent_secrets
    from flyaway.workers.agent import run_agent

    adopt_agent_secrets()  # before anything reads TEMPORAL_API_KEY or the destination's credentials

    configure_logging(json=json_logs)
    run(run_agent(temporal, task_queue, max_activities))


@app.command()
def dev(state_dir: Annotated[Path, typer.Option(metavar="DIR", help="where the dev server keeps its database")] =
        DEV_STATE_DIR,
        port: Annotated[int, typer.Option(metavar="PORT", help="Temporal frontend port")] = 7233,
        ui_port: Annotated[int, typer.Option(metavar="PORT", help="Temporal UI port")] = 8233,
        demo: Annotated[bool, typer.Option("--demo", help="also run the demo migration on local servers")] = False,
        demo_size: Annotated[str, typer.Option(metavar="SIZE", help="size of the demo's big weights file")] = "1GiB",
        s3_port: Annotated[int, typer.Option(metavar="PORT", help="port of the demo's local S3 server (moto)")]
        = DEMO_S3_PORT,
        exit_after: Annotated[bool, typer.Option("--exit", help="stop everything once the demo ends")] = False,
        codec_port: Annotated[int | None, typer.Option(
            metavar="PORT", show_default=False,
            help="codec server port, when FLYAWAY_CODEC_KEYS is set (default: a free one)")] = None,
        json_logs: Annotated[bool, typer.Option(
            "--json-logs/--console-logs",
            help="the worker's logs as JSON lines, or (the default, also when piped) as lines for people")] = False,
        ) -> None:
    """Temporal dev server with its UI, a worker and (with --demo) a demo migration: one command, no Docker.

    With FLYAWAY_CODEC_KEYS set, payloads are encrypted and the UI decrypts them through a codec server.
    """
    from flyaway.codec import CodecError
    from flyaway.starter.dev import DevStack

    configure_logging(json=json_logs, level="WARNING")
    stack = DevStack(state_dir=state_dir, port=port, ui_port=ui_port, console=console, codec_port=codec_port,
                     s3_port=s3_port)
    try:
        code = asyncio.run(stack.run(demo=demo, demo_size=demo_size, exit_after=exit_after))
    except CodecError as error:
        fail(str(error))
    raise typer.Exit(code)


@app.command("codec-server")
def codec_server(host: Annotated[str, typer.Option(metavar="HOST", help="address to listen on")] = "127.0.0.1",
                 port: Annotated[int, typer.Option(metavar="PORT", help="port to listen on")] = 8081,
                 ui_origin: Annotated[list[str], typer.Option(metavar="URL", help="Temporal UI origin allowed by "
                                                              "CORS; repeat for several")] =
                 ["http://localhost:8233"],  # noqa: B006 (typer needs a literal default)
                 token_env: Annotated[str, typer.Option(metavar="VAR", help="variable holding the bearer token")] =
                 "FLYAWAY_CODEC_TOKEN") -> None:
    """Serve the payload codec to the Temporal UI and CLI (/encode, /decode)."""
    from flyaway.codec import CodecError, EncryptionCodec
    from flyaway.codec_server import run_codec_server

    configure_logging()
    try:
        codec = EncryptionCodec.from_env()
    except CodecError as error:
        fail(str(error))
    if codec is None:
        fail("FLYAWAY_CODEC_KEYS is not set; create a key with `flyaway codec-key` and export it")
    run_codec_server(host, port, codec, os.environ.get(token_env) or None, ui_origin)


@app.command("codec-key")
def codec_key() -> None:
    """Print a new key ring entry for FLYAWAY_CODEC_KEYS (put it first to rotate)."""
    from flyaway.codec import generate_key

    print(generate_key())


def main() -> None:
    """The console entry point: run the command, flush its output, and end the process at once.

    At interpreter shutdown, threads of the Temporal client's native runtime can abort a finished
    command (``PyGILState_Release: thread state ... must be current``, exit -6), so the process
    ends with ``os._exit`` and the command's own exit code instead of going through finalization.
    """
    try:
        app()
        code = 0
    except SystemExit as finished:
        code = finished.code if isinstance(finished.code, int) else (0 if finished.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
