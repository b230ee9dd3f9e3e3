"""Modal, through the ``modal`` SDK: the token from the worker's environment, which errors are transient,
what Modal's refusals mean, and the calls flyaway makes: volumes, named secrets (with the Dict that keeps
their digests), ``modal deploy`` and a deployed function's web URL.

The SDK finds Modal at its ``server_url`` setting (``MODAL_SERVER_URL``), as always. Volumes are opened
through one seam, :func:`volume_opener`: the SDK's ``Volume.from_name`` unless
``FLYAWAY_MODAL_VOLUME_FACTORY`` names another (``module:function``), which only tests set, to a fake
with the same methods, since no Modal server runs there.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import modal
import modal.exception
from modal.types import FileEntry as FileEntry, FileEntryType as FileEntryType  # what a volume lists

from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials, NotFound
from flyaway.providers.http import call_with_retries
from flyaway.redaction import register_secret, scrub

T = TypeVar("T")

#: what the SDK raises for a volume, file, secret, Dict or app that is not there
NotFoundError = modal.exception.NotFoundError
VOLUME_FACTORY_ENV = "FLYAWAY_MODAL_VOLUME_FACTORY"
_TRANSIENT = (modal.exception.ConnectionError, modal.exception.InternalError, modal.exception.InternalFailure,
              modal.exception.ServiceError, modal.exception.ResourceExhaustedError, modal.exception.TimeoutError,
              ConnectionError, TimeoutError)
#: what ``modal deploy`` prints when the token is refused
_AUTH_FAILURE = ("UNAUTHENTICATED", "Token missing", "Token ID is malformed", "AuthError", "PERMISSION_DENIED")


def is_transient(error: BaseException) -> bool:
    return isinstance(error, _TRANSIENT)


class ModalToken:
    """The token named by a plan section's ``token_id_env`` and ``token_secret_env``."""

    def __init__(self, id_env: str, secret_env: str, what: str) -> None:
        self.id_env, self.secret_env = id_env, secret_env
        self.id = os.environ.get(id_env, "").strip()
        self.secret = os.environ.get(secret_env, "").strip()
        missing = [name for name, value in ((id_env, self.id), (secret_env, self.secret)) if not value]
        if missing:
            names = " and ".join(missing)
            raise MissingCredentials(
                f"{what}: environment variable{'s' if len(missing) > 1 else ''} {names} "
                f"{'are' if len(missing) > 1 else 'is'} not set on the worker; export a Modal token (modal token "
                f"new), or name other variables in token_id_env/token_secret_env")
        register_secret(self.secret)

    def client(self) -> modal.Client:
        return modal.Client.from_credentials(self.id, self.secret)

    def call(self, fn: Callable[[], T], what: str, expected: tuple[type[Exception], ...] = ()) -> T:
        """One SDK call, retried while transient; refusals become flyaway's errors naming ``what``, ``expected``
        ones are left to the caller."""
        try:
            return call_with_retries(fn, is_transient)
        except expected:
            raise
        except NotFoundError as error:
            raise NotFound(f"{what}: Modal could not find it ({error})") from None
        except (modal.exception.AuthError, modal.exception.PermissionDeniedError) as error:
            raise AccessDenied(f"{what}: Modal refused the token in {self.id_env}/{self.secret_env} ({error})") from None
        except modal.exception.InvalidError as error:
            raise InvalidPlan(f"{what}: Modal rejected it ({error})") from None


# ---- volumes -----------------------------------------------------------------------------------


class VolumeOpener(Protocol):
    def __call__(self, name: str, *, environment_name: str | None, create_if_missing: bool, token_id: str,
                 token_secret: str) -> Any: ...


def open_modal_volume(name: str, *, environment_name: str | None, create_if_missing: bool, token_id: str,
                      token_secret: str) -> modal.Volume:
    """The volume through the SDK, with the plan's token rather than the worker's ``~/.modal.toml``."""
    client = modal.Client.from_credentials(token_id, token_secret)
    volume = modal.Volume.from_name(name, environment_name=environment_name, create_if_missing=create_if_missing,
                                    client=client)
    return volume.hydrate()


def volume_opener() -> VolumeOpener:
    """``open_modal_volume``, or the ``module:function`` named by ``FLYAWAY_MODAL_VOLUME_FACTORY`` (tests only)."""
    spec = os.environ.get(VOLUME_FACTORY_ENV)
    if not spec:
        return open_modal_volume
    module, _, name = spec.partition(":")
    opener: VolumeOpener = getattr(importlib.import_module(module), name)
    return opener


# ---- secrets -----------------------------------------------------------------------------------


class ModalSecrets:
    """Named secrets of one environment, and a Dict of the same environment for what Modal never returns."""

    def __init__(self, token: ModalToken, environment: str | None, what: str) -> None:
        self.token, self.environment, self.what = token, environment, what
        self._client = token.call(token.client, f"{what}: connect")

    def exists(self, name: str) -> bool:
        try:
            self.token.call(lambda: self._secret(name).hydrate(), f"{self.what}: look up the secret",
                            expected=(NotFoundError,))
        except NotFoundError:
            return False
        return True

    def create(self, name: str, values: dict[str, str]) -> None:
        self.token.call(lambda: modal.Secret.objects.create(name, values, environment_name=self.environment,
                                                            client=self._client), f"{self.what}: create the secret")

    def update(self, name: str, values: dict[str, str]) -> None:
        """Merge ``values`` into the secret in one call (``objects.create(allow_existing=True)`` would keep the
        old values)."""
        self.token.call(lambda: self._secret(name).update(values), f"{self.what}: update the secret")

    def _secret(self, name: str) -> modal.Secret:
        return modal.Secret.from_name(name, environment_name=self.environment, client=self._client)

    def dict_get(self, dict_name: str, key: str) -> Any:
        """``key`` of the Dict, None when the Dict or the key is missing."""
        try:
            return self.token.call(lambda: self._dict(dict_name, create=False).get(key), f"{self.what}: read {dict_name}",
                                   expected=(NotFoundError,))
        except NotFoundError:
            return None

    def dict_put(self, dict_name: str, key: str, value: Any) -> None:
        self.token.call(lambda: self._dict(dict_name, create=True).put(key, value), f"{self.what}: write {dict_name}")

    def _dict(self, name: str, create: bool) -> modal.Dict:
        return modal.Dict.from_name(name, environment_name=self.environment, create_if_missing=create,
                                    client=self._client)

    def close(self) -> None:
        self._client.close()


# ---- apps --------------------------------------------------------------------------------------


class ModalDeployFailed(RuntimeError):
    """``modal deploy`` exited with an error that is not about credentials (retried a few times)."""


async def deploy_app(token: ModalToken, module: Path, app_name: str, environment: str | None,
                     deadline_seconds: float, heartbeat: Callable[[], None], heartbeat_seconds: float) -> None:
    """``modal deploy`` of ``module`` as a subprocess of the worker (the SDK's own CLI, with the plan's token),
    calling ``heartbeat`` every ``heartbeat_seconds`` while it runs."""
    command = [sys.executable, "-m", "modal", "deploy", str(module), "--name", app_name]
    if environment:
        command += ["--env", environment]
    env = {**os.environ, "MODAL_TOKEN_ID": token.id, "MODAL_TOKEN_SECRET": token.secret}
    process = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    finished = asyncio.ensure_future(process.communicate())
    deadline = asyncio.get_running_loop().time() + deadline_seconds
    while not finished.done():
        await asyncio.wait({finished}, timeout=heartbeat_seconds)
        heartbeat()
        if not finished.done() and asyncio.get_running_loop().time() > deadline:
            process.kill()
            await finished
            raise ModalDeployFailed(f"`modal deploy` of {app_name} took over {deadline_seconds:.0f} s")
    output = scrub(finished.result()[0].decode(errors="replace"))
    if process.returncode:
        tail = "\n".join(output.strip().splitlines()[-15:])
        if any(marker in output for marker in _AUTH_FAILURE):
            raise AccessDenied(f"Modal refused `modal deploy` of {app_name}: {tail}; check {token.id_env} and "
                               f"{token.secret_env}")
        raise ModalDeployFailed(f"`modal deploy` of {app_name} failed: {tail}")


async def web_url(token: ModalToken, app_name: str, function_name: str, environment: str | None) -> str:
    """The web URL of a deployed app's function."""
    try:
        client = await modal.Client.from_credentials.aio(token.id, token.secret)
        function = modal.Function.from_name(app_name, function_name, environment_name=environment, client=client)
        url = await function.get_web_url.aio()
    except NotFoundError as error:
        raise NotFound(f"Modal app {app_name} has no function {function_name} after deploying: {error}") from None
    if not url:
        raise InvalidPlan(f"Modal app {app_name}'s function {function_name} has no web URL")
    return str(url)
