"""A fake Modal control plane (gRPC) serving named Secrets and Dicts to the real ``modal`` SDK.

The SDK connects to its ``server_url`` setting, so a test sets ``MODAL_SERVER_URL`` to
:attr:`FakeModal.server_url` and ``MODAL_TOKEN_ID`` / ``MODAL_TOKEN_SECRET`` to the fake's
token; nothing in flyaway knows it is talking to a fake. The servicer is the SDK's own
``modal_proto.api_grpc.ModalClientBase`` (messages from ``modal_proto.api_pb2``), with every
RPC not served here answering UNIMPLEMENTED (``modal._utils.grpc_testing.patch_mock_servicer``).

Served RPCs: ``SecretGetOrCreate`` (lookup, create-fail-if-exists, create-if-missing),
``SecretUpdate`` (merge), ``DictGetOrCreate``, ``DictGet``, ``DictUpdate``. Wrong token
metadata answers UNAUTHENTICATED; :attr:`denied` answers PERMISSION_DENIED; names Modal would
refuse answer INVALID_ARGUMENT. Secret values are kept in :attr:`secrets` for assertions.
Other helpers can subclass :class:`ModalServicer` to serve more RPCs (volumes, apps).
"""

from __future__ import annotations

import asyncio
import re
import secrets as random_tokens
import threading
from typing import Any

from google.protobuf import empty_pb2
from grpclib import GRPCError, Status
from grpclib.server import Server, Stream
from modal._utils.grpc_testing import patch_mock_servicer
from modal_proto import api_grpc, api_pb2

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LOOKUP = api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED
_IF_MISSING = api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING
_FAIL_IF_EXISTS = api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS


@patch_mock_servicer
class ModalServicer(api_grpc.ModalClientBase):
    def __init__(self, fake: FakeModal) -> None:
        self.fake = fake

    def _authorize(self, stream: Stream[Any, Any]) -> None:
        metadata = stream.metadata or {}
        if (metadata.get("x-modal-token-id"), metadata.get("x-modal-token-secret")) != self.fake.token:
            raise GRPCError(Status.UNAUTHENTICATED, "Token missing or invalid. Run `modal token new`.")
        if self.fake.denied:
            raise GRPCError(Status.PERMISSION_DENIED, "This token may not manage objects in this workspace.")

    @staticmethod
    def _get_or_create(objects: dict[tuple[str, str], Any], request: Any, kind: str, new: Any) -> tuple[str, Any]:
        """Resolve ``(environment, name)`` by the request's creation type; ``new()`` makes a missing one."""
        if not _NAME.match(request.deployment_name):
            raise GRPCError(Status.INVALID_ARGUMENT, f"Invalid {kind} name: '{request.deployment_name}'.")
        key = (request.environment_name, request.deployment_name)
        if key in objects and request.object_creation_type == _FAIL_IF_EXISTS:
            raise GRPCError(Status.ALREADY_EXISTS, f"{kind} '{request.deployment_name}' already exists")
        if key not in objects:
            if request.object_creation_type not in (_IF_MISSING, _FAIL_IF_EXISTS):
                raise GRPCError(Status.NOT_FOUND, f"{kind} '{request.deployment_name}' not found")
            objects[key] = new()
        return key

    async def SecretGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self._authorize(stream)
        if request.object_creation_type not in (_LOOKUP, _IF_MISSING, _FAIL_IF_EXISTS):
            raise GRPCError(Status.UNIMPLEMENTED, "only named secrets are served")
        with self.fake.lock:
            key = self._get_or_create(self.fake.secret_objects, request, "Secret",
                                      lambda: ("st-" + random_tokens.token_hex(8), dict(request.env_dict)))
            secret_id, values = self.fake.secret_objects[key]
            self.fake.calls.append("SecretGetOrCreate")
        await stream.send_message(api_pb2.SecretGetOrCreateResponse(
            secret_id=secret_id, metadata=api_pb2.SecretMetadata(name=key[1], keys=sorted(values),
                                                                 environment_name=key[0])))

    async def SecretUpdate(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self._authorize(stream)
        with self.fake.lock:
            values = next((v for secret_id, v in self.fake.secret_objects.values() if secret_id == request.secret_id),
                          None)
            if values is None:
                raise GRPCError(Status.NOT_FOUND, f"Secret {request.secret_id} not found")
            values.update({update.key: update.value for update in request.updates})
            self.fake.calls.append("SecretUpdate")
        await stream.send_message(empty_pb2.Empty())

    async def DictGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self._authorize(stream)
        with self.fake.lock:
            key = self._get_or_create(self.fake.dict_objects, request, "Dict",
                                      lambda: ("di-" + random_tokens.token_hex(8), {}))
            dict_id = self.fake.dict_objects[key][0]
        await stream.send_message(api_pb2.DictGetOrCreateResponse(dict_id=dict_id))

    def _dict(self, dict_id: str) -> dict[bytes, bytes]:
        entries = next((e for i, e in self.fake.dict_objects.values() if i == dict_id), None)
        if entries is None:
            raise GRPCError(Status.NOT_FOUND, f"Dict {dict_id} not found")
        return entries

    async def DictGet(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self._authorize(stream)
        with self.fake.lock:
            value = self._dict(request.dict_id).get(request.key)
        await stream.send_message(api_pb2.DictGetResponse(found=value is not None, value=value or b""))

    async def DictUpdate(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self._authorize(stream)
        with self.fake.lock:
            entries = self._dict(request.dict_id)
            created = False
            for entry in request.updates:
                if entry.key in entries and request.if_not_exists:
                    continue
                created = created or entry.key not in entries
                entries[entry.key] = entry.value
        await stream.send_message(api_pb2.DictUpdateResponse(created=created))


class FakeModal:
    """``with FakeModal() as modal_fake:`` serves on a free loopback port from a background thread."""

    def __init__(self) -> None:
        self.token = ("ak-fake-token-id", "as-fake-token-secret")
        self.denied = False
        #: (environment, name) -> (secret id, values)
        self.secret_objects: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        #: (environment, name) -> (dict id, serialized key -> serialized value)
        self.dict_objects: dict[tuple[str, str], tuple[str, dict[bytes, bytes]]] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-modal", daemon=True)
        self.port = 0

    def secrets(self, name: str, environment: str = "") -> dict[str, str]:
        return self.secret_objects[(environment, name)][1]

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a process needs to reach this fake with the real SDK."""
        return {"MODAL_SERVER_URL": self.server_url, "MODAL_TOKEN_ID": self.token[0],
                "MODAL_TOKEN_SECRET": self.token[1]}

    def __enter__(self) -> FakeModal:
        async def start() -> Server:
            server = Server([ModalServicer(self)])  # binds to the running loop
            await server.start("127.0.0.1", 0)
            return server

        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        self.port = self._server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
