"""The payload codec: round trips through a real DataConverter, key rotation, clear errors."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload

from flyaway.codec import (
    COMPRESSION_METADATA,
    ENCODING,
    KEY_ID_METADATA,
    KEYS_ENV,
    CodecError,
    EncryptionCodec,
    data_converter,
    generate_key,
    parse_key_ring,
)
from flyaway.models.base import Record

pytestmark = pytest.mark.anyio

K1 = os.urandom(32)
K2 = os.urandom(32)


class CopyProgress(Record):
    volume: str
    bytes_done: int
    files: list[str]
    finished_at: datetime | None = None


def ring(*entries: tuple[str, bytes]) -> str:
    return ",".join(f"{key_id}:{base64.b64encode(key).decode()}" for key_id, key in entries)


async def encode(codec: EncryptionCodec | None, value: Any) -> Payload:
    [payload] = await data_converter(codec).encode([value])
    return payload


async def decode(codec: EncryptionCodec | None, payload: Payload, type_hint: type) -> Any:
    [value] = await data_converter(codec).decode([payload], [type_hint])
    return value


VALUES: list[tuple[Any, type]] = [
    (CopyProgress(volume="models", bytes_done=123, files=["a.bin", "b.bin"],
                  finished_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)), CopyProgress),
    ({"app": "whisper", "regions": ["ord", "iad"], "gpu": None}, dict),
    ("hello payload", str),
    (b"\x00\x01raw bytes\xff", bytes),
    (None, type(None)),
    ([1, "two", {"three": 3.0}], list),
]


@pytest.mark.parametrize(("value", "type_hint"), VALUES)
async def test_round_trip_through_data_converter(value: Any, type_hint: type) -> None:
    codec = EncryptionCodec({"k1": K1})
    payload = await encode(codec, value)
    assert payload.metadata["encoding"] == ENCODING
    assert payload.metadata[KEY_ID_METADATA] == b"k1"
    assert await decode(codec, payload, type_hint) == value


async def test_ciphertext_hides_plaintext_and_its_encoding() -> None:
    codec = EncryptionCodec({"k1": K1})
    secret = "the-model-weights-live-in-bucket-zebra"
    payload = await encode(codec, {"bucket": secret})
    assert secret.encode() not in payload.data
    assert b"json/plain" not in payload.data
    assert set(payload.metadata) <= {"encoding", KEY_ID_METADATA, COMPRESSION_METADATA}


async def test_same_value_encrypts_differently_each_time() -> None:
    codec = EncryptionCodec({"k1": K1})
    first, second = await encode(codec, "same"), await encode(codec, "same")
    assert first.data != second.data


async def test_unencrypted_json_passes_through_decode() -> None:
    """What the Temporal UI sends when someone types JSON input."""
    typed = Payload(metadata={"encoding": b"json/plain"}, data=b'{"app": "whisper"}')
    codec = EncryptionCodec({"k1": K1})
    assert await codec.decode([typed]) == [typed]
    assert await decode(codec, typed, dict) == {"app": "whisper"}


async def test_key_not_in_ring_names_the_key_id() -> None:
    payload = await encode(EncryptionCodec({"k1": K1}), "x")
    with pytest.raises(CodecError, match=f"encrypted with key 'k1', which is not in {KEYS_ENV}"):
        await EncryptionCodec({"k2": K2}).decode([payload])


async def test_wrong_key_under_the_same_id_fails_authentication() -> None:
    payload = await encode(EncryptionCodec({"k1": K1}), "x")
    with pytest.raises(CodecError, match="key 'k1' failed authentication"):
        await EncryptionCodec({"k1": K2}).decode([payload])


async def test_tampered_ciphertext_or_metadata_fails_authentication() -> None:
    codec = EncryptionCodec({"k1": K1})
    payload = await encode(codec, "x" * 500)
    flipped = Payload(metadata=payload.metadata, data=payload.data[:-1] + bytes([payload.data[-1] ^ 1]))
    unmarked = Payload(metadata={k: v for k, v in payload.metadata.items() if k != COMPRESSION_METADATA},
                       data=payload.data)
    for altered in (flipped, unmarked):
        with pytest.raises(CodecError, match="failed authentication"):
            await codec.decode([altered])


async def test_key_rotation() -> None:
    old_payload = await encode(EncryptionCodec.from_env({KEYS_ENV: ring(("k1", K1))}), "old")
    rotated = EncryptionCodec.from_env({KEYS_ENV: ring(("k2", K2), ("k1", K1))})
    assert rotated is not None
    assert await decode(rotated, old_payload, str) == "old"
    new_payload = await encode(rotated, "new")
    assert new_payload.metadata[KEY_ID_METADATA] == b"k2"
    assert await decode(rotated, new_payload, str) == "new"


async def test_compression_is_marked_only_when_it_helps() -> None:
    codec = EncryptionCodec({"k1": K1})
    repetitive = await encode(codec, "abc" * 10_000)
    assert repetitive.metadata[COMPRESSION_METADATA] == b"zlib"
    assert len(repetitive.data) < 3_000
    assert await decode(codec, repetitive, str) == "abc" * 10_000
    random_bytes = await encode(codec, os.urandom(4096))
    assert COMPRESSION_METADATA not in random_bytes.metadata


async def test_without_codec_the_converter_leaves_payloads_in_clear() -> None:
    payload = await encode(None, {"a": 1})
    assert payload.metadata["encoding"] == b"json/plain"


def test_from_env_unset_means_no_codec() -> None:
    assert EncryptionCodec.from_env({}) is None


@pytest.mark.parametrize(("value", "message"), [
    ("", "set but empty"),
    ("k1", "entry 1 .* is not 'kid:base64key'"),
    (f"k1:{base64.b64encode(b'short').decode()}", "key 'k1' .* is 5 bytes"),
    ("k1:not base64!", "key 'k1' .* is not valid base64"),
    (f"{ring(('k1', K1))},{ring(('k1', K2))}", "'k1' appears twice"),
    (f"bad id:{base64.b64encode(K1).decode()}", "key id 'bad id'"),
])
def test_bad_key_ring_is_a_clear_error_without_key_material(value: str, message: str) -> None:
    with pytest.raises(CodecError, match=message) as raised:
        parse_key_ring(value)
    for key in (K1, K2):
        assert base64.b64encode(key).decode() not in str(raised.value)


def test_generated_keys_parse_and_differ() -> None:
    first, second = generate_key(), generate_key("prod-2")
    ring_ = parse_key_ring(f"{second},{first}")
    assert next(iter(ring_)) == "prod-2"
    assert len(set(ring_.values())) == 2
    assert all(len(key) == 32 for key in ring_.values())
