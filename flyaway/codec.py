"""Payload encryption: every payload Temporal stores is AES-256-GCM ciphertext.

The codec serializes the whole original ``Payload`` (its metadata and data) and encrypts
it, so the Temporal server sees neither values nor their encodings. The key id travels in
the metadata, which makes rotation possible: the first key of ``FLYAWAY_CODEC_KEYS``
encrypts, every key in it decrypts. Payloads without this codec's encoding pass through
decoding unchanged, so JSON typed into the Temporal UI still starts a workflow.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import secrets
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec

from flyaway.failures import PlainFailureConverter

KEYS_ENV = "FLYAWAY_CODEC_KEYS"
ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
COMPRESSION_METADATA = "compression"
ZLIB = b"zlib"
KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class CodecError(ValueError):
    """A key ring that cannot be used, or a payload that cannot be decrypted with it.

    Messages name key ids, never key material.
    """


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM codec over a key ring; the first key encrypts, all keys decrypt."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise CodecError("the codec needs at least one key")
        for key_id, key in keys.items():
            _check_key(key_id, key)
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.encryption_key_id = next(iter(keys))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> EncryptionCodec | None:
        """The codec for ``FLYAWAY_CODEC_KEYS``, or None when the variable is unset.

        A variable that is set but blank is an error, not "no encryption": an empty
        substitution in a deployment file must not silently store payloads in the clear.
        """
        value = environ.get(KEYS_ENV)
        if value is None:
            return None
        return cls(parse_key_ring(value))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(payload) if payload.metadata.get("encoding") == ENCODING else payload
                for payload in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        plaintext = payload.SerializeToString()
        compressed = zlib.compress(plaintext)
        compression = ZLIB if len(compressed) < len(plaintext) else b""
        if compression:
            plaintext = compressed
        key_id = self.encryption_key_id
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._ciphers[key_id].encrypt(nonce, plaintext, _associated_data(key_id, compression))
        metadata = {"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()}
        if compression:
            metadata[COMPRESSION_METADATA] = compression
        return Payload(metadata=metadata, data=nonce + ciphertext)

    def _decrypt(self, payload: Payload) -> Payload:
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        if not key_id:
            raise CodecError(f"encrypted payload has no '{KEY_ID_METADATA}' metadata")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CodecError(f"payload was encrypted with key '{key_id}', which is not in {KEYS_ENV}")
        compression = payload.metadata.get(COMPRESSION_METADATA, b"")
        nonce, ciphertext = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plaintext = cipher.decrypt(nonce, ciphertext, _associated_data(key_id, compression))
        except InvalidTag:
            raise CodecError(f"payload encrypted with key '{key_id}' failed authentication: the key under "
                             f"that id in {KEYS_ENV} is not the one that encrypted it, or the payload "
                             "was altered") from None
        if compression == ZLIB:
            plaintext = zlib.decompress(plaintext)
        elif compression:
            raise CodecError(f"encrypted payload uses unknown compression '{compression.decode(errors='replace')}'")
        return Payload.FromString(plaintext)


def _associated_data(key_id: str, compression: bytes) -> bytes:
    """Bind the clear-text metadata to the ciphertext so it cannot be swapped."""
    return b"flyaway-codec-v1\x00" + key_id.encode() + b"\x00" + compression


def _check_key(key_id: str, key: bytes) -> None:
    if not _KEY_ID.fullmatch(key_id):
        raise CodecError(f"key id {key_id!r} in {KEYS_ENV} must be 1-64 letters, digits, '.', '_' or '-'")
    if len(key) != KEY_BYTES:
        raise CodecError(f"key '{key_id}' in {KEYS_ENV} is {len(key)} bytes; AES-256 needs {KEY_BYTES}")


def parse_key_ring(value: str) -> dict[str, bytes]:
    """Parse ``kid:base64key,kid:base64key`` (first entry encrypts) into an ordered ring."""
    if not value.strip():
        raise CodecError(f"{KEYS_ENV} is set but empty; unset it to store payloads unencrypted")
    ring: dict[str, bytes] = {}
    for position, entry in enumerate((e.strip() for e in value.split(",")), start=1):
        key_id, separator, encoded = entry.partition(":")
        if not separator:
            raise CodecError(f"entry {position} of {KEYS_ENV} is not 'kid:base64key'")
        if key_id in ring:
            raise CodecError(f"key id '{key_id}' appears twice in {KEYS_ENV}")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            raise CodecError(f"key '{key_id}' in {KEYS_ENV} is not valid base64") from None
        _check_key(key_id, key)
        ring[key_id] = key
    return ring


def generate_key(key_id: str | None = None) -> str:
    """A fresh ``kid:base64key`` entry for ``FLYAWAY_CODEC_KEYS``.

    The default id starts with today's date, so the ids in a ring show which key is newer.
    """
    key_id = key_id or f"k{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}"
    key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    _check_key(key_id, key)
    return f"{key_id}:{base64.b64encode(key).decode()}"


def data_converter(codec: PayloadCodec | None) -> DataConverter:
    """The pydantic data converter, encrypting through ``codec`` when there is one.

    With a codec, failure messages and stack traces are encoded too (they name paths, hosts and
    providers' answers): the history keeps "Encoded failure", the codec server gives the UI the rest.
    """
    if codec is None:
        return dataclasses.replace(pydantic_data_converter, failure_converter_class=PlainFailureConverter)
    return dataclasses.replace(pydantic_data_converter, payload_codec=codec,
                               failure_converter_class=EncodedFailureConverter)


class EncodedFailureConverter(PlainFailureConverter):
    """Failures whose message and stack trace travel as a payload, encrypted by the codec."""

    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)
