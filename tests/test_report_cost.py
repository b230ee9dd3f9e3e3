"""The report's new-side and cost sections: the deploy stage's cold start (from the deploy call, and from
zero after the idle window), and costs at the plan's scaling from the dated table, a user's price file,
or "no price known"."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter
from typer.testing import CliRunner

from flyaway.activities.deploy import health as health_module
from flyaway.activities.deploy.activities import deploy_service
from flyaway.failures import WorkerActivityEnvironment
from flyaway.models.deploy import DeployRequest, DeployStage, FlyScaling, ServiceScaling
from flyaway.report import prices
from flyaway.report.model import MigrationReport
from flyaway.report.render import render_html
from flyaway.starter.cli import app
from tests.fakes.health import StartingService
from tests.fakes.runpod_serverless import FakeRunpodServerless
from tests.support.migrations import run_migration
from tests.support.plans import weights_plan
from tests.support.servers import TemporalDevServer, WorkerProcess

FLY_TOML = Path(__file__).parent / "data" / "fly_toml" / "vllm_http_service.toml"
IMAGE = "registry.example.com/llm/llama@sha256:" + "cd" * 32
HEALTH = {"interval": "0.05s", "deadline": "5s"}
A100_PRICES = """
[[price]]
platform = "fly"
gpu = "a100-pcie-40gb"
usd_per_hour = 2.50
as_of = "2026-11"
source = "my Fly invoice"

[[price]]
platform = "runpod"
gpu = "A100 80GB"
names = ["AMPERE_80"]
usd_per_hour = 1.64
as_of = "2026-11"
source = "RunPod's price page"
"""


@pytest.fixture
def runpod(monkeypatch: pytest.MonkeyPatch) -> Any:
    with StartingService(ready_after=2) as service, FakeRunpodServerless(endpoint_base=service.endpoint) as fake:
        monkeypatch.setenv("RUNPOD_API_KEY", fake.api_key)
        yield fake, service


def deploy(fake: FakeRunpodServerless, environment: WorkerActivityEnvironment, **fields: Any) -> Any:
    stage = TypeAdapter(DeployStage).validate_python({
        "platform": "runpod", "endpoint_name": "llama", "api_url": fake.api_url, "health": HEALTH,
        "mount_weights": False, "fly_toml": str(FLY_TOML), **fields})
    request = DeployRequest(stage=stage, explicit=sorted(stage.model_fields_set), image=IMAGE)
    return asyncio.run(environment.run(deploy_service, request))


def test_the_deploy_stage_times_its_cold_start_and_a_start_from_zero(
        runpod: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, service = runpod
    monkeypatch.setattr(health_module, "SCALE_DOWN_MARGIN_SECONDS", 0.2)
    environment = WorkerActivityEnvironment()

    def scale_to_zero(*details: Any) -> None:  # while the stage waits idle, the platform stops the worker
        if details and "scales to zero" in str(details[0]):
            service.requests.clear()
            service.ready_after = 3

    environment.on_heartbeat = scale_to_zero
    result = deploy(fake, environment, workers_min=0, workers_max=2, idle_timeout="1s",
                    health={**HEALTH, "measure_from_zero": True})

    start = result.cold_start
    assert start is not None and start.seconds_to_healthy >= 2 * 0.05, "two 503s, then 200"
    assert start.idle_wait_seconds == pytest.approx(1.2)
    assert start.from_zero_seconds is not None and start.from_zero_seconds >= 3 * 0.05
    assert [path for path, _ in service.requests] == ["/health"] * 4, "from zero: three 503s, then 200"
    assert result.scaling == ServiceScaling(gpu="AMPERE_80", gpus_per_instance=1, min_instances=0, max_instances=2,
                                            idle_timeout_seconds=1.0)
    assert result.fly_scaling == FlyScaling(gpu="a100-pcie-40gb", gpus_per_machine=1, min_machines_running=0)


def test_a_service_kept_warm_is_timed_once(runpod: Any) -> None:
    fake, service = runpod
    result = deploy(fake, WorkerActivityEnvironment(), workers_min=1, health={**HEALTH, "measure_from_zero": True})
    assert result.cold_start is not None and result.cold_start.from_zero_seconds is None
    assert len(service.requests) == 3


def test_costs_from_the_project_table_and_no_price_for_an_unknown_gpu() -> None:
    table = prices.load_table()
    scaling = ServiceScaling(gpu="H100", gpus_per_instance=2, min_instances=1, max_instances=3,
                             idle_timeout_seconds=300)
    modal = prices.target_cost(table, "modal", scaling)
    assert (modal.usd_per_gpu_hour, modal.price_as_of) == (3.95, "2026")
    assert (modal.per_hour_min, modal.per_hour_max) == (7.9, 23.7)
    assert (modal.per_month_min, modal.per_month_max) == (5767.0, 17301.0)
    fly = prices.fly_cost(table, FlyScaling(gpu="l40s", gpus_per_machine=1, min_machines_running=0), scaling)
    assert (fly.usd_per_gpu_hour, fly.per_hour_min, fly.per_hour_max) == (1.25, 1.25, 3.75)

    unknown = prices.target_cost(table, "modal", scaling.model_copy(update={"gpu": "B200"}))
    assert unknown.note == "no price known for B200 on modal; add it with --prices FILE"
    assert (unknown.usd_per_gpu_hour, unknown.per_hour_min, unknown.per_month_max) == (None, None, None)
    to_zero = prices.target_cost(table, "cloud_run", ServiceScaling(gpu="nvidia-l4", min_instances=0,
                                                                    max_instances=2, idle_timeout_seconds=900))
    assert to_zero.approximate and (to_zero.per_hour_min, to_zero.per_wake_from_zero) == (0.0, 0.1675)
    assert prices.fly_cost(table, None, scaling).note.startswith("no price known: the Fly app's GPU is not known")


def test_a_price_file_adds_and_replaces_prices(tmp_path: Path) -> None:
    price_file = tmp_path / "prices.toml"
    price_file.write_text(A100_PRICES + '\n[[price]]\nplatform = "fly"\ngpu = "L40S"\nusd_per_hour = 1.10\n'
                                        'as_of = "2026-12"\nsource = "negotiated"\n')
    table = prices.load_table(price_file)
    scaling = ServiceScaling(gpu="AMPERE_80", min_instances=0, max_instances=4, idle_timeout_seconds=60)
    runpod = prices.target_cost(table, "runpod", scaling)
    assert (runpod.usd_per_gpu_hour, runpod.per_hour_max, runpod.price_source) == (1.64, 6.56, "RunPod's price page")
    fly = prices.fly_cost(table, FlyScaling(gpu="a100-pcie-40gb", gpus_per_machine=1, min_machines_running=0),
                          scaling)
    assert (fly.usd_per_gpu_hour, fly.per_month_max, fly.price_as_of) == (2.5, 7300.0, "2026-11")
    assert table.price_of("fly", "l40s").usd_per_hour == 1.10  # replaced, not listed twice
    assert table.price_of("modal", "h100").usd_per_hour == 3.95  # the project's, kept


def test_a_bad_price_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    price_file = tmp_path / "prices.toml"
    price_file.write_text('[[price]]\nplatform = "fly"\ngpu = "l40s"\nusd_per_hour = -1\nas_of = "2026"\n'
                          'source = "x"\n')
    result = CliRunner().invoke(app, ["report", "anything", "--prices", str(price_file), "--address",
                                      "127.0.0.1:1"])
    assert result.exit_code == 2
    assert f"--prices: {price_file}: price.0.usd_per_hour: Input should be greater than 0" in result.stderr


def test_the_cost_section_shows_figures_and_no_price_known() -> None:
    table = prices.load_table()
    scaling = ServiceScaling(gpu="ADA_80_PRO", min_instances=0, max_instances=2, idle_timeout_seconds=300)
    fly = FlyScaling(gpu="a100-pcie-40gb", gpus_per_machine=1, min_machines_running=0)
    report = MigrationReport(name="costs", workflow_id="migration-costs", run_status="running", state="running",
                             generated_at=datetime.now(UTC),
                             cost=[prices.target_cost(table, "runpod", scaling), prices.fly_cost(table, fly, scaling)])
    page = render_html(report)
    target, fly_row = page.split('<tr class="cost-target">')[1], page.split('<tr class="cost-fly">')[1]
    assert "$1.99" in target and "$3.98" in target and "$2,905.40" in target
    assert "no price known for a100-pcie-40gb on fly; add it with --prices FILE" in fly_row.split("</tr>")[0]


def test_the_report_of_a_migration_with_a_deploy_stage_shows_its_cold_start_and_costs(
        temporal_server: TemporalDevServer, runpod: Any, task_queue: str, tmp_path: Path) -> None:
    """End to end through Temporal and the CLI: the deploy stage (RunPod fake) times the start, the report
    prices the fly.toml's A100 and the endpoint's pool only with the user's price file."""
    fake, service = runpod
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text('{"model": "tiny"}')
    plan = weights_plan("report-deploy", {"kind": "local", "path": str(tmp_path / "w")},
                        {"kind": "local", "path": str(tmp_path / "dst")})
    plan["deploy"] = {"platform": "runpod", "endpoint_name": "llama", "api_url": fake.api_url, "image": IMAGE,
                      "mount_weights": False, "fly_toml": str(FLY_TOML), "workers_max": 3, "health": HEALTH}
    worker = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log", {"RUNPOD_API_KEY": fake.api_key})
    worker.start()
    try:
        assert run_migration(temporal_server, plan, task_queue, timeout=120).status.state == "completed"
    finally:
        worker.stop()
    price_file = tmp_path / "prices.toml"
    price_file.write_text(A100_PRICES)

    def report(*extra: str) -> MigrationReport:
        page = tmp_path / f"deploy{len(extra)}.html"
        result = CliRunner().invoke(app, ["report", "report-deploy", "-o", str(page), "--address",
                                          temporal_server.address, *extra])
        assert result.exit_code == 0, result.output
        return MigrationReport.model_validate_json(page.with_suffix(".json").read_text())

    plain, priced = report(), report("--prices", str(price_file))
    deploy_stage = next(stage for stage in plain.stages if stage.name == "deploy")
    assert (deploy_stage.state, deploy_stage.runs, deploy_stage.activity_attempts) == ("completed", 1, 1)
    side = plain.new_side
    assert side is not None and (side.platform, side.endpoint_url) == ("runpod", service.endpoint)
    assert side.cold_start_seconds is not None and side.cold_start_seconds >= 2 * 0.05, "two 503s first"
    assert side.from_zero_seconds is None and "measure_from_zero" in (side.from_zero_note or "")
    target, fly = plain.cost
    assert (target.gpu, target.min_instances, target.max_instances) == ("AMPERE_80", 0, 3)
    assert target.note == "no price known for AMPERE_80 on runpod; add it with --prices FILE"
    assert fly.note == "no price known for a100-pcie-40gb on fly; add it with --prices FILE"
    target, fly = priced.cost
    assert (target.usd_per_gpu_hour, target.per_hour_min, target.per_hour_max) == (1.64, 0.0, 4.92)
    assert (fly.usd_per_gpu_hour, fly.per_hour_max, fly.per_month_max, fly.price_source) == (
        2.5, 7.5, 5475.0, "my Fly invoice")
