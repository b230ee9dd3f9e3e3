"""The codec server, run through its public entry point in a subprocess, spoken to over HTTP.

The last test lets the real ``temporal`` CLI use it against a dev server: the CLI encrypts a
workflow input through ``/encode`` and shows it in clear through ``/decode``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from flyaway.codec import ENCODING, KEY_ID_METADATA, KEYS_ENV, EncryptionCodec, generate_key

TOKEN = "codec-test-token-5d1f"
UI_ORIGIN = "http://127.0.0.1:8233"
KEY_ENTRY = generate_key("k1")
CODEC = EncryptionCodec.from_env({KEYS_ENV: KEY_ENTRY})
TEMPORAL = Path(sys.executable).parent / "temporal"
SERVER_SCRIPT = """
import sys
from flyaway.codec import EncryptionCodec
from flyaway.codec_server import run_codec_server
run_codec_server("127.0.0.1", int(sys.argv[1]), EncryptionCodec.from_env(), sys.argv[2], [sys.argv[3] + "/"])
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"process exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listens on port {port} after {timeout} s:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start(command: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    wait_for_port(port, process, log)
    return process


@pytest.fixture(scope="module")
def codec_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("codec-server") / "server.log"
    process = start([sys.executable, "-c", SERVER_SCRIPT, str(port), TOKEN, UI_ORIGIN], port, log,
                    env={**os.environ, KEYS_ENV: KEY_ENTRY})
    yield f"http://127.0.0.1:{port}"
    stop(process)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def payloads_json(*payloads: Payload) -> dict:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def parse_payloads(body: dict) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


def post(http: httpx.Client, url: str, body: dict, token: str | None = TOKEN, **headers: str) -> httpx.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http.post(url, json=body, headers={"X-Namespace": "default", **headers})


TYPED_INPUT = Payload(metadata={"encoding": b"json/plain"}, data=b'{"app": "whisper"}')


def test_encode_then_decode_round_trip(codec_url: str, http: httpx.Client) -> None:
    encoded = post(http, f"{codec_url}/encode", payloads_json(TYPED_INPUT))
    assert encoded.status_code == 200, encoded.text
    [encrypted] = parse_payloads(encoded.json())
    assert encrypted.metadata["encoding"] == ENCODING
    assert encrypted.metadata[KEY_ID_METADATA] == b"k1"
    assert b"whisper" not in encrypted.data
    assert asyncio.run(CODEC.decode([encrypted])) == [TYPED_INPUT]

    decoded = post(http, f"{codec_url}/decode", encoded.json())
    assert decoded.status_code == 200, decoded.text
    assert parse_payloads(decoded.json()) == [TYPED_INPUT]


def test_endpoints_under_a_prefix_and_clear_payloads_pass_decode(codec_url: str, http: httpx.Client) -> None:
    response = post(http, f"{codec_url}/namespaces/default/decode", payloads_json(TYPED_INPUT))
    assert response.status_code == 200, response.text
    assert parse_payloads(response.json()) == [TYPED_INPUT]


def test_decoder_errors_are_400_with_the_reason(codec_url: str, http: httpx.Client) -> None:
    [foreign] = asyncio.run(EncryptionCodec({"k9": os.urandom(32)}).encode([TYPED_INPUT]))
    response = post(http, f"{codec_url}/decode", payloads_json(foreign))
    assert response.status_code == 400
    assert "key 'k9', which is not in FLYAWAY_CODEC_KEYS" in response.json()["message"]

    garbled = http.post(f"{codec_url}/decode", content=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert garbled.status_code == 400


def test_preflight_for_the_ui_origin_needs_no_token(codec_url: str, http: httpx.Client) -> None:
    response = http.options(f"{codec_url}/decode", headers={
        "Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace,authorization"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-namespace", "authorization"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_ui_origin_requests_carry_cors_headers(codec_url: str, http: httpx.Client) -> None:
    response = post(http, f"{codec_url}/decode", payloads_json(TYPED_INPUT), Origin=UI_ORIGIN)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    refused = post(http, f"{codec_url}/decode", payloads_json(TYPED_INPUT), token=None, Origin=UI_ORIGIN)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == UI_ORIGIN, "the UI must be able to read the 401"


def test_other_origins_are_refused(codec_url: str, http: httpx.Client) -> None:
    evil = "http://evil.example"
    preflight = http.options(f"{codec_url}/decode", headers={"Origin": evil, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers
    request = post(http, f"{codec_url}/decode", payloads_json(TYPED_INPUT), Origin=evil)
    assert request.status_code == 403
    assert "Access-Control-Allow-Origin" not in request.headers


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Bearer {TOKEN[:-1]}", TOKEN])
def test_missing_or_wrong_token_is_401(codec_url: str, http: httpx.Client, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for endpoint in ("encode", "decode"):
        response = post(http, f"{codec_url}/{endpoint}", payloads_json(TYPED_INPUT), token=None, **headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "payloads" not in response.json()


@pytest.fixture(scope="module")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("temporal") / "server.log"
    process = start([str(TEMPORAL), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
                     "--port", str(port), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
                     "--log-level", "error"], port, log)
    address = f"127.0.0.1:{port}"
    wait_until_serving(address)
    yield address
    stop(process)


def wait_until_serving(address: str, timeout: float = 30) -> None:
    """The frontend port opens before the default namespace answers."""
    deadline = time.monotonic() + timeout
    command = [str(TEMPORAL), "operator", "namespace", "describe", "-n", "default", "--address", address]
    while subprocess.run(command, capture_output=True, timeout=30).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"the Temporal dev server at {address} does not serve the default namespace")
        time.sleep(0.2)


def temporal(address: str, *args: str, codec_url: str | None = None) -> str:
    command = [str(TEMPORAL), *args, "--address", address]
    if codec_url is not None:
        command += ["--codec-endpoint", codec_url, "--codec-auth", f"Bearer {TOKEN}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def started_input(history_json: str) -> Payload:
    first_event = json.loads(history_json)["events"][0]
    [payload] = parse_payloads(first_event["workflowExecutionStartedEventAttributes"]["input"])
    return payload


def test_temporal_cli_encrypts_and_shows_through_the_codec_server(codec_url: str, temporal_address: str) -> None:
    temporal(temporal_address, "workflow", "start", "--type", "Migrate", "--task-queue", "codec-test",
             "--workflow-id", "codec-e2e", "--input", '{"app": "whisper"}', codec_url=codec_url)

    stored = started_input(temporal(temporal_address, "workflow", "show", "-w", "codec-e2e", "--output", "json"))
    assert stored.metadata["encoding"] == ENCODING
    assert b"whisper" not in stored.data

    shown = started_input(temporal(temporal_address, "workflow", "show", "-w", "codec-e2e", "--output", "json",
                                   codec_url=codec_url))
    assert shown.metadata["encoding"] == b"json/plain"
    assert json.loads(shown.data) == {"app": "whisper"}
    assert asyncio.run(CODEC.decode([stored])) == [shown]
