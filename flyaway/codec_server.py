"""The Temporal codec server: lets the Temporal UI and the ``temporal`` CLI show payloads in clear.

Protocol (as the UI and CLI call it): ``POST .../encode`` and ``POST .../decode`` with a
``Payloads`` message in protobuf JSON form, answered the same way; only the last path
segment matters, so the endpoints can be mounted under any prefix. Browsers preflight the
UI's requests, so CORS answers the configured UI origins (with credentials). When a token
is configured, every request but a preflight must carry ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

from flyaway.codec import CodecError, EncryptionCodec

log = structlog.get_logger(__name__)

ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization"
PREFLIGHT_MAX_AGE_SECONDS = 600
MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""Temporal caps a payload at a few MiB, and a batch of them grows by a third in base64."""


def make_app(codec: PayloadCodec, token: str | None, ui_origins: Sequence[str]) -> web.Application:
    """The codec server as an aiohttp application (serve it with ``web.run_app`` or an ``AppRunner``)."""
    origins = frozenset(origin.rstrip("/") for origin in ui_origins)
    app = web.Application(client_max_size=MAX_REQUEST_BYTES,
                          middlewares=[_cors_middleware(origins), _auth_middleware(token)])
    encode, decode = _codec_handler(codec.encode_wrapper), _codec_handler(codec.decode_wrapper)
    app.router.add_post("/encode", encode)
    app.router.add_post("/decode", decode)
    app.router.add_post("/{prefix:.+}/encode", encode)
    app.router.add_post("/{prefix:.+}/decode", decode)
    return app


def run_codec_server(host: str, port: int, codec: EncryptionCodec, token: str | None,
                     ui_origins: list[str]) -> None:
    """Serve the codec until SIGINT or SIGTERM."""
    if not token:
        log.warning("codec server runs without a token: whoever reaches it can decrypt payloads",
                    host=host, port=port)
    log.info("codec server listening", host=host, port=port, ui_origins=ui_origins,
             encryption_key_id=codec.encryption_key_id)
    web.run_app(make_app(codec, token, ui_origins), host=host, port=port, print=None, access_log=None)


def _codec_handler(apply: Callable[[Payloads], Awaitable[None]]) -> Handler:
    """A handler that parses ``Payloads``, transforms them in place with ``apply`` and answers them."""

    async def handle(request: web.Request) -> web.Response:
        payloads = Payloads()
        try:
            json_format.Parse(await request.text(), payloads)
            await apply(payloads)
        except (json_format.ParseError, CodecError) as error:
            log.info("codec request refused", path=request.path, namespace=request.headers.get("X-Namespace"),
                     error=str(error))
            return web.json_response({"message": str(error)}, status=400)
        log.debug("codec request served", path=request.path, namespace=request.headers.get("X-Namespace"),
                  payloads=len(payloads.payloads))
        return web.json_response(text=json_format.MessageToJson(payloads))

    return handle


def _cors_middleware(origins: frozenset[str]) -> Middleware:
    """Answer preflights for the UI origins and refuse requests a browser sends from any other origin.

    Requests without ``Origin`` (the CLI, curl) are not browser cross-origin requests and pass.
    """

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return await handler(request)
        if origin not in origins:
            log.info("codec request from a foreign origin refused", origin=origin, path=request.path)
            return web.json_response({"message": f"origin {origin} is not allowed"}, status=403)
        cors_headers = {hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin, hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS: "true",
                        hdrs.VARY: hdrs.ORIGIN}
        if request.method == hdrs.METH_OPTIONS:
            return web.Response(headers={
                **cors_headers,
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: "POST, OPTIONS",
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: str(PREFLIGHT_MAX_AGE_SECONDS),
            })
        try:
            response = await handler(request)
        except web.HTTPException as error:  # 404, 405, 413: let the UI read the status, not a CORS failure
            error.headers.update(cors_headers)
            raise
        response.headers.update(cors_headers)
        return response

    return cors


def _auth_middleware(token: str | None) -> Middleware:
    """Require ``Authorization: Bearer <token>`` when a token is configured."""
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None:
            given = request.headers.get(hdrs.AUTHORIZATION, "").encode()
            if not hmac.compare_digest(given, expected):
                log.info("codec request without a valid token refused", path=request.path)
                return web.json_response({"message": "missing or wrong bearer token"}, status=401,
                                         headers={hdrs.WWW_AUTHENTICATE: "Bearer"})
        return await handler(request)

    return auth
