"""A person starts a migration from the Temporal UI in a real browser (Debian's chromium driven by
Playwright): the dev server's UI with a codec server, the start form filled with a JSON plan, and
the workflow's page showing the decrypted input and result. Leaves a screenshot in artifacts/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flyaway.codec import ENCODING, KEYS_ENV, generate_key
from flyaway.models.status import MigrationState
from flyaway.starter.dev import free_port, stop_process, venv_binary, wait_for_port
from tests.support.browser import chromium_page, needs_chromium
from tests.support.env import REPO
from tests.support.migrations import (
    abort_migration,
    eventually,
    migration_result,
    migration_status,
    run_async,
    start_migration,
)
from tests.support.plans import weights_plan
from tests.support.servers import TemporalDevServer, WorkerProcess
from tests.support.trees import make_tree

SCREENSHOT = REPO / "artifacts" / "ui-migration-completed.png"

pytestmark = [pytest.mark.slow, needs_chromium]


@dataclass
class UiStack:
    server: TemporalDevServer
    worker: WorkerProcess
    keys: str

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.server.ui_port}"


def start_codec_server(keys: str, port: int, ui_origin: str, log_path: Path) -> subprocess.Popen[bytes]:
    flyaway = venv_binary("flyaway")
    assert flyaway, "the flyaway console script is missing from the venv"
    with log_path.open("ab") as log:
        process = subprocess.Popen([flyaway, "codec-server", "--port", str(port), "--ui-origin", ui_origin],
                                   env={**os.environ, KEYS_ENV: keys}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    wait_for_port(port, 30, process)
    return process


@pytest.fixture
def ui_stack(tmp_path: Path, task_queue: str) -> Iterator[UiStack]:
    """Its own dev server with the UI on a free port, a codec server for the UI and a worker, one key ring."""
    keys, ui_port, codec_port = generate_key(), free_port(), free_port()
    codec = start_codec_server(keys, codec_port, f"http://127.0.0.1:{ui_port}", tmp_path / "codec-server.log")
    server = TemporalDevServer(tmp_path, ui_port=ui_port, codec_endpoint=f"http://127.0.0.1:{codec_port}")
    worker = WorkerProcess(server, task_queue, tmp_path / "worker.log", {KEYS_ENV: keys})
    try:
        server.start()
        wait_for_port(ui_port, 30)
        worker.start()
        yield UiStack(server, worker, keys)
    finally:
        worker.stop()
        server.stop()
        stop_process(codec)


def start_and_watch_from_the_ui(ui_url: str, profile: Path, workflow_id: str, task_queue: str,
                                plan: dict[str, Any]) -> str:
    """Start the workflow through the UI's start form, then open its page until it shows the completed
    result; returns the page's text and leaves a screenshot."""
    with chromium_page(profile) as page:
        page.goto(f"{ui_url}/namespaces/default/workflows/start-workflow?workflowId={workflow_id}"
                  f"&taskQueue={task_queue}&workflowType=MigrationWorkflow")
        editor = page.get_by_role("textbox", name="Data")
        editor.click()
        page.keyboard.press("Control+A")
        page.keyboard.insert_text(json.dumps(plan))
        # the editor re-formats on blur and moves the button: blur, let it settle, then click
        page.get_by_label("Workflow ID").click()
        page.wait_for_timeout(1000)
        page.get_by_test_id("start-workflow-button").click()
        started = page.get_by_role("link", name="Workflow started successfully")
        started.wait_for()
        page.goto(f"{ui_url}/namespaces/default/workflows/{workflow_id}")
        page.get_by_text('"state": "completed"').first.wait_for()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        return page.inner_text("body")


def test_a_migration_started_from_the_ui_completes_and_the_ui_shows_decoded_payloads(
        ui_stack: UiStack, task_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = make_tree(tmp_path / "weights", {"model.safetensors": 2 << 20, "config.json": 300})
    plan = weights_plan("from-the-ui", {"kind": "local", "path": str(tmp_path / "weights")},
                        {"kind": "local", "path": str(tmp_path / "copy")}, part_size="1MiB")
    workflow_id = "migration-from-the-ui"

    page_text = start_and_watch_from_the_ui(ui_stack.ui_url, tmp_path / "chromium-profile", workflow_id,
                                            task_queue, plan)

    monkeypatch.setenv(KEYS_ENV, ui_stack.keys)
    result = run_async(migration_result(ui_stack.server, workflow_id, timeout=30))
    assert result.status.state == MigrationState.completed, ui_stack.worker.logs()
    assert {key: (tmp_path / "copy" / key).read_bytes() for key in contents} == contents
    stored = run_async(ui_stack.server.stored_input(workflow_id))
    assert stored.payloads[0].metadata["encoding"] == ENCODING, "the UI did not encode the input via the codec"
    assert '"name": "from-the-ui"' in page_text
    assert str(tmp_path / "weights") in page_text
    assert f"{len(contents)} copied, 0 unchanged, {len(contents)} of {len(contents)} verified" in page_text
    assert ENCODING.decode() not in page_text


PROGRESS_SCREENSHOT = REPO / "artifacts" / "ui-migration-progress.png"


def test_the_ui_shows_a_running_copys_progress_through_the_codec(
        ui_stack: UiStack, task_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workflow page shows the migration's current details (state, bytes, rate): a payload the UI
    decodes through the codec server, while the copy runs."""
    make_tree(tmp_path / "weights", {"model.safetensors": 40 << 20})
    plan = weights_plan("progress-in-the-ui", {"kind": "local", "path": str(tmp_path / "weights")},
                        {"kind": "local", "path": str(tmp_path / "copy")}, part_size="4MiB", concurrency=2,
                        bandwidth_limit="1MiB")
    monkeypatch.setenv(KEYS_ENV, ui_stack.keys)
    workflow_id = run_async(start_migration(ui_stack.server, plan, task_queue))
    with chromium_page(tmp_path / "chromium-profile") as page:
        shown = re.compile(r"weights: [1-9][0-9.]* MiB of 40\.0 MiB, 0\S1 files at [0-9.]+ [KM]iB/s")
        for _ in range(5):  # the page reads the details when it loads: reload until bytes have landed
            page.goto(f"{ui_stack.ui_url}/namespaces/default/workflows/{workflow_id}")
            page.get_by_role("tab", name="User Metadata").click()  # where the UI shows current details
            # rendered from markdown into a sandboxed frame
            details = page.frame_locator("iframe").first.get_by_text("concurrency 2, bandwidth 1.0 MiB/s")
            details.wait_for()
            text = details.inner_text()
            if shown.search(text):
                break
            page.wait_for_timeout(2000)
        PROGRESS_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(PROGRESS_SCREENSHOT), full_page=True)
    abort_migration(ui_stack.server, workflow_id, "the test has seen enough")
    assert shown.search(text), text
    assert "running, stage weights" in text


def send_update(page: Any, name: str, data: Any = None) -> None:
    """The UI's *More Actions > Send an Update*, as a person uses it."""
    page.get_by_role("button", name="More Actions").click()
    page.get_by_role("menuitem", name="Send an Update").click()
    dialog = page.locator("dialog[open]")
    dialog.get_by_role("button", name="Select an Update").click()
    dialog.get_by_role("option", name=name, exact=True).click()
    if data is not None:
        dialog.get_by_role("textbox", name="Data").click()
        page.keyboard.insert_text(json.dumps(data))
    dialog.get_by_role("button", name="Submit").click()
    dialog.wait_for(state="detached")


def state_of(server: TemporalDevServer, workflow_id: str) -> MigrationState:
    """The status query's state, asked from a thread of its own: Playwright's sync API owns this one's loop."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(lambda: run_async(migration_status(server, workflow_id)).state).result()


def bytes_written(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_pause_and_abort_from_the_ui_stop_the_bytes(
        ui_stack: UiStack, task_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "weights", {"model.safetensors": 64 << 20})
    plan = weights_plan("controls-in-the-ui", {"kind": "local", "path": str(tmp_path / "weights")},
                        {"kind": "local", "path": str(tmp_path / "copy")}, part_size="4MiB", concurrency=2,
                        bandwidth_limit="2MiB")
    monkeypatch.setenv(KEYS_ENV, ui_stack.keys)
    workflow_id = run_async(start_migration(ui_stack.server, plan, task_queue))
    destination = tmp_path / "copy"
    with chromium_page(tmp_path / "chromium-profile") as page:
        page.goto(f"{ui_stack.ui_url}/namespaces/default/workflows/{workflow_id}")
        eventually(lambda: bytes_written(destination) > 0, 30, what="bytes at the destination")
        send_update(page, "pause")
        eventually(lambda: state_of(ui_stack.server, workflow_id) == MigrationState.paused, 10, what="paused")
        time.sleep(5)
        at_pause = bytes_written(destination)
        time.sleep(3)
        assert bytes_written(destination) == at_pause, "bytes landed 5 s after the UI's pause"

        send_update(page, "abort", "stopped from the UI")
        eventually(lambda: state_of(ui_stack.server, workflow_id) == MigrationState.aborted, 20,
                   what="aborted")
        page.screenshot(path=str(REPO / "artifacts" / "ui-migration-aborted.png"), full_page=True)
    assert bytes_written(destination) <= at_pause
    assert not (destination / "model.safetensors").exists()
