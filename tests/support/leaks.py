"""Searching every place a secret value could surface: its encodings, a protobuf's payloads,
workflow histories (through the API and ``temporal workflow show``)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import uuid
from urllib.parse import quote, quote_plus

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from flyaway.codec import EncryptionCodec
from tests.support.env import TEMPORAL_CLI
from tests.support.servers import TemporalDevServer

_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")


def secret_values() -> dict[str, str]:
    """Values with characters that every encoding changes (space, '/', '+', '&', '"', '%', unicode)."""
    tag = uuid.uuid4().hex
    return {"LEAK_HF_TOKEN": f"hf_{tag[:20]}/+tok en&x=1",
            "LEAK_DATABASE_URL": f'postgres://app:p%40ss "w0rd"@db/{tag[12:]}?ssl=ü'}


def encoded_forms(value: str) -> set[str]:
    """The value as it would appear plain, URL-encoded, JSON-escaped or base64-encoded (at any
    alignment inside a longer base64 string)."""
    forms = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1],
             json.dumps(value, ensure_ascii=False)[1:-1]}
    raw = value.encode()
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * shift + raw).decode()
            forms.add(encoded[-(-8 * shift // 6):(8 * (shift + len(raw))) // 6])
    return forms


def decoded_base64_runs(text: str) -> str:
    """Every long base64 run in ``text`` decoded (where it decodes), so a value inside an encoded
    payload is found even when its own base64 would not line up."""
    decoded = []
    for run in _BASE64_RUN.findall(text):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                decoded.append(decode(run + "=" * (-len(run) % 4)).decode("utf-8", errors="replace"))
            except ValueError:
                continue
    return "\n".join(decoded)


def assert_no_value(values: dict[str, str], where: str, text: str) -> None:
    for blob_name, blob in ((where, text), (f"{where} (base64 decoded)", decoded_base64_runs(text))):
        for name, value in values.items():
            for form in encoded_forms(value):
                assert form not in blob, f"{name}'s value appears in {blob_name} as {form!r}"


def payloads_in(message: Message) -> list[Payload]:
    """Every Payload anywhere inside a protobuf message."""
    if isinstance(message, Payload):
        return [message]
    found = []
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = [v for v in value.values() if isinstance(v, Message)]
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            found += payloads_in(item)
    return found


async def executions(client: Client, task_queue: str) -> list[tuple[str, str]]:
    return [(e.id, e.run_id) async for e in client.list_workflows(f'TaskQueue = "{task_queue}"')]


async def history_texts(client: Client, codec: EncryptionCodec | None, runs: list[tuple[str, str]]) -> list[str]:
    """Each run's history as JSON, plus its payloads decoded the way a key holder sees them."""
    texts = []
    for workflow_id, run_id in runs:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        texts.append(history.to_json())
        payloads = [p for event in history.events for p in payloads_in(event)]
        if codec is not None:
            payloads = await codec.decode(payloads)
        texts.append("\n".join(p.data.decode("utf-8", errors="replace") for p in payloads))
    return texts


def temporal_show(server: TemporalDevServer, workflow_id: str, run_id: str) -> str:
    result = subprocess.run([TEMPORAL_CLI, "workflow", "show", "--workflow-id", workflow_id, "--run-id", run_id,
                             "--output", "json", "--address", server.address, "--namespace", "default"],
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout + result.stderr
