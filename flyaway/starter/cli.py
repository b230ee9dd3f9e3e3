"""The ``flyaway`` command line: start, follow and steer migrations; run workers and the dev stack."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from flyaway.activities.errors import FlyawayError
from flyaway.connection import TASK_QUEUE, TemporalOptions, connect
from flyaway.log import configure_logging
from flyaway.models.plan import MigrationPlan
from flyaway.models.status import MigrationStatus, TuneRequest
from flyaway.redaction import scrub
from flyaway.starter.display import render, snapshot, watch
from flyaway.starter.plans import PlanFileError, load_plan

T = TypeVar("T")
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Move GPU inference services off Fly.io as one durable Temporal workflow.")
console = Console()
err = Console(stderr=True)

#: exit codes: 1 the migration failed or waits for the operator, 2 bad input, 3 Temporal unreachable
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 1, 2, 3

Address = Annotated[str | None, typer.Option("--address", envvar="TEMPORAL_ADDRESS",
                                              help="Temporal frontend host:port")]
Namespace = Annotated[str | None, typer.Option("--namespace", envvar="TEMPORAL_NAMESPACE")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="TEMPORAL_API_KEY", show_default=False,
                                             help="API key (Temporal Cloud); implies TLS")]
Tls = Annotated[bool | None, typer.Option("--tls/--no-tls", help="TLS to the frontend")]
Profile = Annotated[str | None, typer.Option("--profile", envvar="TEMPORAL_PROFILE",
                                              help="profile of the Temporal client config file")]
TaskQueue = Annotated[str, typer.Option("--task-queue", envvar="FLYAWAY_TASK_QUEUE")]
UiUrl = Annotated[str, typer.Option("--ui-url", envvar="FLYAWAY_UI_URL", help="base URL of the Temporal UI")]
MigrationId = Annotated[str, typer.Argument(help="plan name or workflow id (migration-<name>)")]


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    err.print(f"[bold red]error:[/] {scrub(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def options(address: str | None, namespace: str | None, api_key: str | None, tls: bool | None,
            profile: str | None) -> TemporalOptions:
    return TemporalOptions(address=address, namespace=namespace, api_key=api_key, tls=tls, profile=profile)


def run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except RuntimeError as error:
        if "Failed client connect" in str(error) or "connection" in str(error).lower():
            fail(f"cannot reach Temporal: {error}; start it with `flyaway dev` or set --address",
                 EXIT_UNREACHABLE)
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
        raise AssertionError("unreachable")


# ---- plans ------------------------------------------------------------------------------------

@app.command()
def schema() -> None:
    """Print the JSON Schema of a migration plan."""
    print(json.dumps(MigrationPlan.model_json_schema(), indent=2))


@app.command()
def validate(plan_file: Annotated[Path, typer.Argument(help="plan in YAML or JSON")],
             offline: Annotated[bool, typer.Option(help="only check the plan's shape, not the "
                                                        "credentials, endpoints and buckets")] = False) -> None:
    """Check a plan: its shape, then (unless --offline) credentials, endpoints and permissions."""
    plan, _ = read_plan(plan_file)
    if not offline:
        from flyaway.activities.storage import open_destination, open_source

        try:
            source = open_source(plan.weights.source)
            destination = open_destination(plan.weights.destination)
            source.check()
            destination.check()
        except FlyawayError as error:
            fail(str(error))
    console.print(f"[green]plan {plan.name} is valid[/]: weights {plan.weights.source.describe()} -> "
                  f"{plan.weights.destination.describe()}; stages {', '.join(plan.stages_present())}",
                  highlight=False)


@app.command()
def translate(fly_toml: Annotated[Path, typer.Argument(help="the app's fly.toml")],
              to: Annotated[str, typer.Option("--to", help="cloud_run, runpod or modal")]) -> None:
    """Print a fly.toml as a plan's deploy section for the target, and what has no equivalent there."""
    from flyaway.models.deploy import PLATFORM_NAMES
    from flyaway.starter.translate import translation_text

    if to not in PLATFORM_NAMES:
        fail(f"--to {to}: choose one of {', '.join(PLATFORM_NAMES)}")
    try:
        text = translation_text(str(fly_toml.resolve()), to)  # type: ignore[arg-type]
    except FlyawayError as error:
        fail(str(error))
        raise AssertionError("unreachable")
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command("plan")
def plan_command(plan_file: Annotated[Path, typer.Argument(help="plan in YAML or JSON")],
                 dry_run: Annotated[bool, typer.Option("--dry-run", help="(the default) change nothing")] = True,
                 show_all: Annotated[bool, typer.Option("--all", help="list every file, not the first 30")] = False,
                 measure: Annotated[bool, typer.Option(help="time a short read and write sample")] = True) -> None:
    """Dry run: what would be copied and skipped and why, total bytes, and a time estimate."""
    from rich.table import Table

    from flyaway.starter.display import human_bytes, human_duration
    from flyaway.starter.dry_run import dry_run as run_dry

    plan, _ = read_plan(plan_file)
    try:
        report = run_dry(plan, measure=measure)
    except FlyawayError as error:
        fail(str(error))
        raise AssertionError("unreachable")
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
    if report.rate:
        console.print(f"measured: read {human_bytes(report.read_rate or 0)}/s, write "
                      f"{human_bytes(report.write_rate or 0)}/s; estimated copy time "
                      f"{human_duration(report.estimate_seconds)} (from a short sample; a real copy varies)",
                      highlight=False, soft_wrap=True)


@app.command()
def teardown(plan_file: Annotated[Path, typer.Argument(help="plan in YAML or JSON")],
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
        raise AssertionError("unreachable")
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# ---- starting and following -------------------------------------------------------------------

async def _start(opts: TemporalOptions, plan: MigrationPlan, data: dict[str, Any], task_queue: str) -> bool:
    """Start the migration; returns False when one with this plan's name is already running."""
    client = await connect(opts)
    try:
        await client.start_workflow("MigrationWorkflow", data, id=plan.workflow_id, task_queue=task_queue,
                                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
    except WorkflowAlreadyStartedError:
        return False
    return True


@app.command()
def start(plan_file: Annotated[Path, typer.Argument(help="plan in YAML or JSON")],
          wait: Annotated[bool, typer.Option("--wait", help="follow the migration until it ends")] = False,
          task_queue: TaskQueue = TASK_QUEUE, ui_url: UiUrl = "http://localhost:8233",
          address: Address = None, namespace: Namespace = None, api_key: ApiKey = None, tls: Tls = None,
          profile: Profile = None) -> None:
    """Start a migration (or attach to the one already running for this plan)."""
    plan, data = read_plan(plan_file)
    opts = options(address, namespace, api_key, tls, profile)
    started = run(_start(opts, plan, data, task_queue))
    verb = "started" if started else "already running, attached to"
    console.print(f"{verb} [bold]{plan.workflow_id}[/]\n{ui_link(ui_url, opts.namespace_name, plan.workflow_id)}",
                  highlight=False)
    if wait:
        _follow(opts, plan.workflow_id)


def _follow(opts: TemporalOptions, workflow_id: str) -> None:
    async def go() -> Any:
        return await watch(await connect(opts), workflow_id, console)

    snap = run(go())
    if snap.failure or snap.status.state.value != "completed":
        raise typer.Exit(EXIT_FAILED)


@app.command()
def status(migration: MigrationId,
           watch_: Annotated[bool, typer.Option("--watch", help="keep redrawing until it ends")] = False,
           as_json: Annotated[bool, typer.Option("--json", help="print the status query as JSON")] = False,
           address: Address = None, namespace: Namespace = None, api_key: ApiKey = None, tls: Tls = None,
           profile: Profile = None) -> None:
    """Show a migration's stages, files, bytes, rate and ETA."""
    opts = options(address, namespace, api_key, tls, profile)
    workflow_id = workflow_id_of(migration)
    if watch_:
        _follow(opts, workflow_id)
        return

    async def go() -> Any:
        return await snapshot(await connect(opts), workflow_id)

    snap = _or_not_found(go, workflow_id)
    if as_json:
        print(snap.status.model_dump_json(indent=2))
    else:
        console.print(render(snap))


def _or_not_found(go: Any, workflow_id: str) -> Any:
    try:
        return run(go())
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            fail(f"no migration {workflow_id}; `temporal workflow list` shows what exists")
        raise


# ---- steering -----------------------------------------------------------------------------------

def _update(migration: str, name: str, opts: TemporalOptions, *args: Any) -> MigrationStatus:
    workflow_id = workflow_id_of(migration)

    async def go() -> MigrationStatus | WorkflowExecutionStatus:
        client: Client = await connect(opts)
        handle = client.get_workflow_handle(workflow_id)
        run_status = (await handle.describe()).status
        if run_status != WorkflowExecutionStatus.RUNNING:
            return run_status  # type: ignore[return-value]
        return await handle.execute_update(name, args=list(args), result_type=MigrationStatus)

    try:
        outcome = _or_not_found(go, workflow_id)
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        fail(f"{name} refused: {getattr(cause, 'message', cause)}")
        raise AssertionError("unreachable")
    if isinstance(outcome, WorkflowExecutionStatus):
        fail(f"{name} refused: {workflow_id} has ended ({outcome.name.lower()})")
    return outcome


def _steer(migration: str, name: str, opts: TemporalOptions, *args: Any) -> None:
    result = _update(migration, name, opts, *args)
    console.print(f"{name}: {workflow_id_of(migration)} is now {result.state.value}", highlight=False)


@app.command()
def approve(migration: MigrationId, stage: Annotated[str, typer.Argument(help="stage to approve")],
            address: Address = None, namespace: Namespace = None, api_key: ApiKey = None, tls: Tls = None,
            profile: Profile = None) -> None:
    """Approve a gated stage (for example teardown), or the canary's current step."""
    _steer(migration, "approve", options(address, namespace, api_key, tls, profile), stage)


@app.command()
def promote(migration: MigrationId, address: Address = None, namespace: Namespace = None, api_key: ApiKey = None,
            tls: Tls = None, profile: Profile = None) -> None:
    """Skip the canary's remaining steps: all traffic to the new endpoint now."""
    _steer(migration, "promote", options(address, namespace, api_key, tls, profile))


@app.command()
def pause(migration: MigrationId, address: Address = None, namespace: Namespace = None, api_key: ApiKey = None,
          tls: Tls = None, profile: Profile = None) -> None:
    """Pause: the copy in flight stops after its current parts; nothing landed is lost."""
    _steer(migration, "pause", options(address, namespace, api_key, tls, profile))


@app.command()
def resume(migration: MigrationId, address: Address = None, namespace: Namespace = None, api_key: ApiKey = None,
           tls: Tls = None, profile: Profile = None) -> None:
    """Resume a paused migration."""
    _steer(migration, "resume", options(address, namespace, api_key, tls, profile))


@app.command()
def retry(migration: MigrationId, address: Address = None, namespace: Namespace = None, api_key: ApiKey = None,
          tls: Tls = None, profile: Profile = None) -> None:
    """Run the stage that waits for the operator again, from where it stopped."""
    _steer(migration, "retry", options(address, namespace, api_key, tls, profile))


@app.command()
def abort(migration: MigrationId, reason: Annotated[str, typer.Option("--reason", help="why")] = "aborted from CLI",
          address: Address = None, namespace: Namespace = None, api_key: ApiKey = None, tls: Tls = None,
          profile: Profile = None) -> None:
    """Abort a migration: unfinished uploads are dropped; what was verified stays."""
    _steer(migration, "abort", options(address, namespace, api_key, tls, profile), reason)


@app.command()
def tune(migration: MigrationId,
         concurrency: Annotated[int | None, typer.Option(min=1, max=256, help="parts in flight")] = None,
         bandwidth: Annotated[str | None, typer.Option(help="bytes per second, e.g. 200MiB; 0 for none")] = None,
         address: Address = None, namespace: Namespace = None, api_key: ApiKey = None, tls: Tls = None,
         profile: Profile = None) -> None:
    """Change a running copy's concurrency or bandwidth limit."""
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        limit = None if bandwidth is None else int(TypeAdapter(ByteSize).validate_python(bandwidth))
    except ValidationError:
        fail(f"--bandwidth: '{bandwidth}' is not a size; write it like 200MiB")
        raise AssertionError("unreachable")
    request = TuneRequest(concurrency=concurrency, bandwidth_limit=limit)
    _steer(migration, "tune", options(address, namespace, api_key, tls, profile), request)



@app.command()
def report(migration: MigrationId,
           output: Annotated[Path | None, typer.Option("--output", "-o", help="the page to write; the JSON goes "
                                                       "beside it [default: ./<name>-report.html]")] = None,
           prices: Annotated[Path | None, typer.Option("--prices", help="TOML price table over the project's")] = None,
           address: Address = None, namespace: Namespace = None, api_key: ApiKey = None, tls: Tls = None,
           profile: Profile = None) -> None:
    """Write a migration's report: one HTML page and the same facts as JSON (running or ended)."""
    from flyaway.report import build_report, load_table, write_report
    from flyaway.report.prices import PriceFileError

    try:
        table = load_table(prices)
    except PriceFileError as error:
        fail(f"--prices: {error}")
        raise AssertionError("unreachable")
    opts = options(address, namespace, api_key, tls, profile)
    workflow_id = workflow_id_of(migration)

    async def go() -> Any:
        return await build_report(await connect(opts), workflow_id, table)

    facts = _or_not_found(go, workflow_id)
    page, data = write_report(facts, output or Path(f"{facts.name}-report.html"))
    console.print(f"report of {workflow_id} ({facts.state}): {page}\nthe same facts as JSON: {data}",
                  highlight=False, soft_wrap=True)


# ---- processes ----------------------------------------------------------------------------------

@app.command()
def worker(task_queue: TaskQueue = TASK_QUEUE,
           max_activities: Annotated[int, typer.Option(help="activities this worker runs at once")] = 20,
           address: Address = None, namespace: Namespace = None, api_key: ApiKey = None, tls: Tls = None,
           profile: Profile = None, json_logs: Annotated[bool | None, typer.Option("--json-logs/--console-logs")]
           = None) -> None:
    """Run a worker: flyaway's workflows and activities, until SIGINT or SIGTERM."""
    from flyaway.workers.main import run_worker

    configure_logging(json=json_logs)
    run(run_worker(options(address, namespace, api_key, tls, profile), task_queue, max_activities))


@app.command("agent")
def agent(task_queue: Annotated[str, typer.Option("--task-queue", help="the agent's own task queue")],
          max_activities: Annotated[int, typer.Option(help="activities at once")] = 4,
          address: Address = None, namespace: Namespace = None, api_key: ApiKey = None, tls: Tls = None,
          profile: Profile = None,
          json_logs: Annotated[bool | None, typer.Option("--json-logs/--console-logs")] = None) -> None:
    """Run the agent (inside a Fly Machine of the source's app): copies of a forked volume, or the app's secrets."""
    from flyaway.workers.agent import run_agent

    configure_logging(json=json_logs)
    run(run_agent(options(address, namespace, api_key, tls, profile), task_queue, max_activities))


@app.command()
def dev(state_dir: Annotated[Path, typer.Option(help="where the dev server keeps its database")] =
        Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "flyaway",
        port: Annotated[int, typer.Option(help="Temporal frontend port")] = 7233,
        ui_port: Annotated[int, typer.Option(help="Temporal UI port")] = 8233,
        demo: Annotated[bool, typer.Option("--demo", help="also run the demo migration on local servers")] = False,
        demo_size: Annotated[str, typer.Option(help="size of the demo's big weights file")] = "1GiB",
        exit_after: Annotated[bool, typer.Option("--exit", help="stop everything once the demo ends")] = False,
        codec_port: Annotated[int | None, typer.Option(
            help="codec server port, when FLYAWAY_CODEC_KEYS is set (default: a free one)")] = None,
        ) -> None:
    """Temporal dev server with its UI, a worker and (with --demo) a demo migration: one command, no Docker.

    With FLYAWAY_CODEC_KEYS set, payloads are encrypted and the UI decrypts them through a codec server.
    """
    from flyaway.codec import CodecError
    from flyaway.starter.dev import DevStack

    configure_logging(json=None, level="WARNING")
    stack = DevStack(state_dir=state_dir, port=port, ui_port=ui_port, console=console, codec_port=codec_port)
    try:
        code = asyncio.run(stack.run(demo=demo, demo_size=demo_size, exit_after=exit_after))
    except CodecError as error:
        fail(str(error))
        raise AssertionError("unreachable")
    raise typer.Exit(code)


@app.command("codec-server")
def codec_server(host: Annotated[str, typer.Option()] = "127.0.0.1",
                 port: Annotated[int, typer.Option()] = 8081,
                 ui_origin: Annotated[list[str], typer.Option(help="Temporal UI origin allowed by CORS")] =
                 ["http://localhost:8233"],  # noqa: B006 (typer needs a literal default)
                 token_env: Annotated[str, typer.Option(help="variable holding the bearer token")] =
                 "FLYAWAY_CODEC_TOKEN") -> None:
    """Serve the payload codec to the Temporal UI and CLI (/encode, /decode)."""
    from flyaway.codec import CodecError, EncryptionCodec
    from flyaway.codec_server import run_codec_server

    configure_logging()
    try:
        codec = EncryptionCodec.from_env()
    except CodecError as error:
        fail(str(error))
        raise AssertionError("unreachable")
    if codec is None:
        fail("FLYAWAY_CODEC_KEYS is not set; create a key with `flyaway codec-key` and export it")
        raise AssertionError("unreachable")
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
