"""`flyaway dev` with FLYAWAY_CODEC_KEYS: the codec server runs for the UI's origin, and the dev
server is told where it is."""

from __future__ import annotations

import asyncio
import base64
import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.protobuf import json_format
from rich.console import Console
from temporalio.api.common.v1 import Payloads
from temporalio.converter import DataConverter

from flyaway.codec import KEYS_ENV, EncryptionCodec, generate_key
from flyaway.starter.dev import DevStack, free_port, temporal_dev_command


def test_dev_server_command_names_the_codec_endpoint(tmp_path: Path) -> None:
    command = temporal_dev_command(tmp_path / "t.db", 7233, 8233, codec_endpoint="http://127.0.0.1:8081")

    assert command[command.index("--ui-codec-endpoint") + 1] == "http://127.0.0.1:8081"


async def encrypted_payloads(value: Any) -> str:
    """``value`` as the UI finds it in a history encrypted with the environment's keys (protobuf JSON)."""
    codec = EncryptionCodec.from_env()
    assert codec is not None
    payloads = await codec.encode(DataConverter.default.payload_converter.to_payloads([value]))
    return json_format.MessageToJson(Payloads(payloads=payloads))


async def start_codec_and_decode(stack: DevStack, origin: str) -> tuple[str | None, str | None, dict[str, Any]]:
    """Start the dev stack's codec server; its endpoint, and what it answers a decode from ``origin``."""
    async with AsyncExitStack() as exits:
        endpoint = await stack._start_codec(exits)
        if endpoint is None:
            return None, None, {}
        body = await encrypted_payloads({"name": "demo"})
        async with aiohttp.ClientSession() as http, http.post(
                f"{endpoint}/decode", data=body, headers={"Origin": origin, "Content-Type": "application/json"}
        ) as response:
            assert response.status == 200, await response.text()
            return endpoint, response.headers.get("Access-Control-Allow-Origin"), await response.json()


def test_dev_stack_serves_the_codec_to_its_ui_only_when_keys_are_set(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ui_port, codec_port = free_port(), free_port()
    stack = DevStack(tmp_path, port=free_port(), ui_port=ui_port, console=Console(quiet=True), codec_port=codec_port)
    ui_origin = f"http://localhost:{ui_port}"

    monkeypatch.delenv(KEYS_ENV, raising=False)
    assert asyncio.run(start_codec_and_decode(stack, ui_origin))[0] is None
    monkeypatch.setenv(KEYS_ENV, generate_key())
    endpoint, allowed_origin, decoded = asyncio.run(start_codec_and_decode(stack, ui_origin))

    assert endpoint == f"http://127.0.0.1:{codec_port}"
    assert allowed_origin == ui_origin
    assert json.loads(base64.b64decode(decoded["payloads"][0]["data"])) == {"name": "demo"}
