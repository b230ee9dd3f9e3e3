"""Trust boundaries: a plan (or a source's content) never reaches the worker's credentials, files outside its
roots, or flyaway's own variables.

Each attack runs the way an attacker would: through a real worker and the Temporal dev server, with a
loopback listener on 127.0.0.2 (a host the test policy does not list) standing in for the attacker's
host. Every test asserts the attack is refused with one line saying how to allow it, and that no
credential value reached the listener, the history, the worker's log or the CLI's output.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socketserver
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client
from typer.testing import CliRunner

from flyaway.activities.secrets.base import digest_key
from flyaway.activities.storage.local import LocalSource
from flyaway.codec import KEYS_ENV, EncryptionCodec, generate_key
from flyaway.errors import AccessDenied, SourceObjectMissing
from flyaway.models.locations import LocalLocation
from flyaway.models.plan import parse_plan
from flyaway.models.secrets import RunpodDestination, secret_digest
from flyaway.policy import PolicyRefused, WorkerPolicy, load_policy
from flyaway.redaction import REDACTED, register_credential, register_secret, scrub
from flyaway.starter.cli import app
from flyaway.starter.dev import free_port, serve_codec
from flyaway.workers.policy import start_policy
from tests.support.env import TEMPORAL_CLI
from tests.support.migrations import migration_failure, run_async
from tests.support.servers import TemporalDevServer, WorkerProcess

ATTACKER_HOST = "127.0.0.2"


def credentials() -> dict[str, str]:
    """The worker's credentials, each a value no test data holds by chance."""
    tag = uuid.uuid4().hex
    return {"RUNPOD_API_KEY": f"rpa_{tag}", "AWS_ACCESS_KEY_ID": f"AKIA{tag[:16].upper()}",
            "AWS_SECRET_ACCESS_KEY": f"aws-secret-{tag}", "CLOUDFLARE_API_TOKEN": f"cf-{tag}",
            "FLY_API_TOKEN": f"fo1_{tag}", KEYS_ENV: generate_key("trust")}


class Listener:
    """The attacker's host: a TCP listener on 127.0.0.2 that keeps every byte it is sent."""

    def __init__(self) -> None:
        self.received = bytearray()
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(2)
                try:
                    while chunk := self.request.recv(65536):
                        listener.received += chunk
                except OSError:
                    pass

        self.server = socketserver.ThreadingTCPServer((ATTACKER_HOST, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{ATTACKER_HOST}:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    attacker = Listener()
    yield attacker
    attacker.close()


def assert_no_credential(values: dict[str, str], where: str, text: str | bytes) -> None:
    blob = text.decode(errors="replace") if isinstance(text, bytes) else text
    for name, value in values.items():
        for form in {value, json.dumps(value)[1:-1], *value.split(",")}:
            assert form not in blob, f"{name} reached {where}"


def base_plan(name: str, tmp_path: Path) -> dict[str, Any]:
    weights = tmp_path / f"{name}-weights"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    return {"name": name, "weights": {"source": {"kind": "local", "path": str(weights)},
                                      "destination": {"kind": "local", "path": str(tmp_path / f"{name}-landed")}}}


def attacks(attacker: str, tmp_path: Path) -> list[tuple[str, dict[str, Any], str]]:
    """(name, plan sections, what the refusal says): each asks the worker to hand something over."""
    url = f"http://{attacker}"
    return [
        ("runpod-api-url", {"secrets": {"source": {"kind": "env", "names": ["APP_SETTING"]},
                                        "destination": {"kind": "runpod", "api_url": f"{url}/v2"}}},
         f"--allow-host {ATTACKER_HOST}"),
        ("gcp-endpoint", {"secrets": {"source": {"kind": "env", "names": ["APP_SETTING"]},
                                      "destination": {"kind": "gcp_secret_manager", "project": "victim-project",
                                                      "endpoint": url}}},
         f"--allow-host {ATTACKER_HOST}"),
        ("s3-endpoint", {"weights": {"source": {"kind": "local", "path": str(tmp_path)},
                                     "destination": {"kind": "s3", "bucket": "loot", "endpoint_url": url}}},
         f"--allow-host {ATTACKER_HOST}"),
        ("cloudflare-api", {"canary": {"router": {"kind": "cloudflare", "account_id": "a", "pool_id": "p",
                                                  "fly_origin_name": "fly", "new_origin_name": "new",
                                                  "api_base_url": f"{url}/client/v4"},
                                       "old_endpoint": "https://old.example.com",
                                       "new_endpoint": "https://new.example.com", "steps": [{"weight": 100}]}},
         f"--allow-host {ATTACKER_HOST}"),
        ("registry-login", {"image": {"source": "docker.io/library/busybox:1.36", "destination": f"{attacker}/x/y",
                                      "destination_credentials": {"username": "x", "password_env": "FLY_API_TOKEN"}}},
         "--allow-credential registry=FLY_API_TOKEN"),
        ("env-codec-keys", {"secrets": {"source": {"kind": "env", "names": [KEYS_ENV]},
                                        "destination": {"kind": "runpod", "api_url": "https://api.runpod.io/v2"}}},
         f"{KEYS_ENV} is a credential or flyaway's own variable"),
        ("dotenv-proc", {"secrets": {"source": {"kind": "dotenv", "path": "/proc/self/environ"},
                                     "destination": {"kind": "runpod", "api_url": "https://api.runpod.io/v2"}}},
         "never a secrets file"),
    ]


def test_each_attack_is_refused_before_any_credential_leaves(
        temporal_server: TemporalDevServer, task_queue: str, tmp_path: Path, listener: Listener,
        monkeypatch: pytest.MonkeyPatch) -> None:
    values = credentials()
    monkeypatch.setenv(KEYS_ENV, values[KEYS_ENV])  # the test's client encrypts as the worker does
    monkeypatch.setenv("APP_SETTING", "an app setting")
    worker = WorkerProcess(temporal_server, task_queue, tmp_path / "worker.log", values)
    worker.start()
    runner = CliRunner()
    try:
        for name, sections, refusal in attacks(listener.address, tmp_path):
            plan = {**base_plan(name, tmp_path), **sections}
            if "weights" in sections:
                plan["weights"]["destination"] = sections["weights"]["destination"]
                plan["weights"]["source"] = base_plan(f"{name}-src", tmp_path)["weights"]["source"]
            plan_file = tmp_path / f"{name}.json"
            plan_file.write_text(json.dumps(plan))
            with monkeypatch.context() as shell:  # the CLI's shell holds the same credentials
                for variable, value in values.items():
                    shell.setenv(variable, value)
                validated = runner.invoke(app, ["validate", str(plan_file)])
                started = runner.invoke(app, ["start", str(plan_file), "--address", temporal_server.address,
                                              "--namespace", "default", "--task-queue", task_queue])
            for command, result in (("validate", validated), ("start", started)):
                assert result.exit_code == 2, (name, command, result.output)
                assert refusal in result.stderr and "this shell's worker policy" in result.stderr, (name, command)
                assert_no_credential(values, f"{name}: {command}'s output", result.output)

            failure = migration_failure(temporal_server, plan, task_queue, timeout=120)
            assert failure.type == "InvalidPlan" and refusal in failure.message, (name, failure.message)
            raw = subprocess.run([TEMPORAL_CLI, "workflow", "show", "--workflow-id", f"migration-{name}",
                                  "--output", "json", "--address", temporal_server.address, "--namespace", "default"],
                                 capture_output=True, text=True, timeout=60, check=True).stdout
            assert_no_credential(values, f"{name}: the history", raw)
            # the failure is encrypted with the payloads: no plan path, host or message in clear
            assert listener.address not in raw and "this worker" not in raw and "plan." not in raw, name
    finally:
        worker.stop()
    assert bytes(listener.received) == b"", "the attacker's host was contacted"
    assert_no_credential(values, "the worker's log", worker.logs())
    shown = run_async(failure_through_the_codec_server(temporal_server, "migration-runpod-api-url", values[KEYS_ENV]))
    assert f"http://{listener.address}/v2 is not a host this worker sends runpod credentials to" in shown


async def failure_through_the_codec_server(server: TemporalDevServer, workflow_id: str, keys: str) -> str:
    """The failure's encoded message and stack trace as the UI gets them: from the codec server's /decode."""
    raw = await Client.connect(server.address, namespace="default")  # no codec: what the server stores
    history = await raw.get_workflow_handle(workflow_id).fetch_history()
    failure = next(event.workflow_execution_failed_event_attributes.failure for event in history.events
                   if event.HasField("workflow_execution_failed_event_attributes"))
    assert failure.message == "Encoded failure"
    async with serve_codec(EncryptionCodec.from_env({KEYS_ENV: keys}), free_port(), []) as codec_url, \
            httpx.AsyncClient() as http:
        answer = await http.post(f"{codec_url}/decode", headers={"X-Namespace": "default"},
                                 json=json_format.MessageToDict(Payloads(payloads=[failure.encoded_attributes])))
    answer.raise_for_status()
    [payload] = answer.json()["payloads"]
    return base64.b64decode(payload["data"]).decode()


def test_allowed_on_the_worker_the_same_plan_passes_the_policy(tmp_path: Path) -> None:
    attacker = f"{ATTACKER_HOST}:9"
    plan = parse_plan({**base_plan("allowed", tmp_path), **attacks(attacker, tmp_path)[0][1]})
    with pytest.raises(PolicyRefused, match=r"plan\.secrets\.destination: http://127\.0\.0\.2:9/v2 is not a host"):
        load_policy({"FLYAWAY_ALLOW_SECRET_ENV": "APP_*"}).check(plan)
    load_policy({"FLYAWAY_ALLOW_HOSTS": "127.0.0.0/8", "FLYAWAY_ALLOW_SECRET_ENV": "APP_*"}).check(plan)
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('hosts = ["127.0.0.2"]\nsecret_env = ["APP_SETTING"]\n'
                           '[credentials]\nrunpod = ["TEAM_RUNPOD_KEY"]\n')
    policy = load_policy({"FLYAWAY_POLICY_FILE": str(policy_file)})
    policy.check(plan)
    plan.secrets.destination.api_key_env = "TEAM_RUNPOD_KEY"  # type: ignore[union-attr]
    policy.check(plan)
    with pytest.raises(PolicyRefused, match="--allow-credential runpod=TEAM_RUNPOD_KEY"):
        load_policy({"FLYAWAY_ALLOW_HOSTS": "127.0.0.2", "FLYAWAY_ALLOW_SECRET_ENV": "APP_*"}).check(plan)


@pytest.mark.parametrize("sections, refusal", [
    ({"secrets": {"source": {"kind": "env", "names": ["AWS_SECRET_ACCESS_KEY"]},
                  "destination": {"kind": "modal", "secret_name": "loot"}}}, "AWS_SECRET_ACCESS_KEY is a credential"),
    ({"secrets": {"source": {"kind": "env", "names": ["TEMPORAL_API_KEY"]},
                  "destination": {"kind": "modal", "secret_name": "loot"}}}, "TEMPORAL_API_KEY is a credential"),
    ({"secrets": {"source": {"kind": "env", "names": ["HOME"]}, "destination": {"kind": "modal", "secret_name": "l"}}},
     "--allow-secret-env HOME"),
    ({"secrets": {"source": {"kind": "dotenv", "path": "/etc/app.env"},
                  "destination": {"kind": "modal", "secret_name": "l"}}}, "--allow-dotenv-dir"),
    ({"secrets": {"source": {"kind": "env", "names": ["APP_X"]},
                  "destination": {"kind": "modal", "secret_name": "l", "token_id_env": "RUNPOD_API_KEY"}}},
     "does not hand RUNPOD_API_KEY to modal"),
    ({"canary": {"router": {"kind": "manual"}, "old_endpoint": "http://169.254.169.254",
                 "new_endpoint": "https://new.example.com", "steps": [{"weight": 100}]}},
     "169.254.169.254 is a loopback or private address"),
    ({"canary": {"router": {"kind": "manual"}, "old_endpoint": "https://old.example.com",
                 "new_endpoint": "https://new.example.com", "steps": [{"weight": 100}],
                 "analysis": {"probes": [{"bearer_token_env": "FLY_API_TOKEN"}]}}},
     "--allow-credential probe=FLY_API_TOKEN"),
])
def test_the_default_policy_refuses(sections: dict[str, Any], refusal: str, tmp_path: Path) -> None:
    plan = parse_plan({**base_plan("defaults", tmp_path), **sections})
    with pytest.raises(PolicyRefused, match=refusal.replace(".", r"\.")):
        WorkerPolicy(secret_env=("APP_*",)).check(plan)


def test_an_unknown_kind_in_the_allowed_credentials_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"'runpodd=X' is not <kind>=<VARIABLE>; kinds: .*runpod"):
        load_policy({"FLYAWAY_ALLOW_CREDENTIALS": "runpodd=X"})


# ---- redaction -------------------------------------------------------------------------------------

def test_a_credential_too_short_to_be_real_is_refused_at_load_time() -> None:
    with pytest.raises(ValueError, match="RUNPOD_API_KEY holds 4 characters, too few for a real credential"):
        start_policy({"RUNPOD_API_KEY": "test"})


def test_every_loaded_credential_is_scrubbed_whatever_its_name_escaped_or_rewrapped() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"
    key_file_text = json.dumps({"type": "service_account", "private_key": pem})
    tag = uuid.uuid4().hex
    access_key = f"AKIA{tag[:16].upper()}"
    start_policy({"AWS_ACCESS_KEY_ID": access_key, "FLYAWAY_ALLOW_CREDENTIALS": f"s3=TEAM_KEY_{tag[:4]}",
                  f"TEAM_KEY_{tag[:4]}": f"team-{tag}"})
    register_credential("key file", pem)
    assert scrub(f"denied for {access_key}") == f"denied for {REDACTED}"
    assert scrub(f"key team-{tag} refused") == f"key {REDACTED} refused"
    echoed = scrub(f"provider echoed {key_file_text}")
    assert echoed.startswith('provider echoed {"type": "service_account", "private_key": "***')
    assert "MIIEvQ" not in echoed and "BKcwgg" not in echoed
    assert REDACTED in scrub(" ".join(pem.split())) and "MIIEvQ" not in scrub(" ".join(pem.split()))
    assert "BKcwgg" not in scrub("".join(pem.split()))


def test_workflow_ids_and_plan_names_are_never_masked() -> None:
    register_secret("test")  # too short to scrub: it would eat ordinary words
    assert scrub("migration-cli-test3 failed") == "migration-cli-test3 failed"


# ---- local source confinement ---------------------------------------------------------------------

def local_source(tmp_path: Path) -> tuple[Path, LocalSource]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "model.bin").write_bytes(b"weights")
    (root / "inside-link").symlink_to(root / "sub" / "model.bin")
    return root, LocalSource(LocalLocation(kind="local", path=str(root)))


def test_a_file_replaced_by_a_link_out_of_the_root_after_listing_is_never_read(tmp_path: Path) -> None:
    root, source = local_source(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"victim")
    listed = {file.key: file for file in source.list()}
    assert sorted(listed) == ["inside-link", "sub/model.bin"]
    assert source.read(listed["inside-link"], 0, 7) == b"weights"
    (root / "sub" / "model.bin").unlink()
    (root / "sub" / "model.bin").symlink_to(outside)
    with pytest.raises(AccessDenied, match=r"source file sub/model.bin: a link out of the source folder"):
        source.read(listed["sub/model.bin"], 0, 6)
    (root / "sub" / "model.bin").unlink()
    (root / "sub").rename(root / "real-sub")
    (root / "sub").symlink_to(tmp_path)  # a folder on the way swapped for a link
    (tmp_path / "model.bin").write_bytes(b"victim!")
    with pytest.raises(AccessDenied, match=r"sub/model.bin"):
        source.read(listed["sub/model.bin"], 0, 7)


@pytest.mark.parametrize("make, refusal", [
    (lambda path, tmp: path.symlink_to("/etc/hostname"), AccessDenied),
    (lambda path, tmp: path.symlink_to(path.parent / "gone"), SourceObjectMissing),
    (lambda path, tmp: os.mkfifo(path), AccessDenied),
    (lambda path, tmp: path.symlink_to(tmp), AccessDenied),  # a link to a folder out of the root
])
def test_listing_refuses_links_out_dangling_links_and_special_files(make: Any, refusal: type, tmp_path: Path) -> None:
    root, source = local_source(tmp_path)
    make(root / "sub" / "odd", tmp_path)
    with pytest.raises(refusal, match="source file sub/odd"):
        list(source.list())


# ---- keyed digests ------------------------------------------------------------------------------

def test_secret_digests_are_keyed_by_the_destinations_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    destination = RunpodDestination(kind="runpod")
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_first_key_0000")
    first = secret_digest("1234", digest_key(destination))
    assert first.startswith("hmac-sha256:") and hashlib.sha256(b"1234").hexdigest() not in first
    assert secret_digest("1234", digest_key(destination)) == first  # stable: a re-run rewrites nothing
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_other_key_1111")
    assert secret_digest("1234", digest_key(destination)) != first
