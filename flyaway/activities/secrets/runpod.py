"""RunPod account secrets (through :class:`flyaway.providers.runpod.RunpodApi`).

RunPod never returns a value, so each secret's description carries the digest of the value
flyaway wrote (``flyaway hmac-sha256:<hex>``, keyed: it tells nothing about the value); a secret whose description lacks it, or holds
another, is rotated. A rotation sends the value first and the description after, in two
requests as RunPod advises, so a failure in between only causes one more rotation next time.
"""

from __future__ import annotations

import re
from typing import Any

from flyaway.activities.secrets.base import STORES, StoredSecret, digest_key
from flyaway.models.secrets import RunpodDestination, secret_digest
from flyaway.providers.runpod import RunpodApi

_DIGEST = re.compile(r"hmac-sha256:[0-9a-f]{64}")


def reference(name: str) -> str:
    """How a RunPod template or endpoint's environment refers to the secret."""
    return f"{{{{ RUNPOD_SECRET_{name} }}}}"


def description(digest: str) -> str:
    return f"flyaway {digest}"


@STORES.register("runpod")
class RunpodSecretStore:
    def __init__(self, destination: RunpodDestination) -> None:
        self.destination = destination
        self._digest_key = digest_key(destination)
        self._api = RunpodApi(destination.api_url, destination.api_key_env, timeout=30.0)
        self._ids: dict[str, str] = {}

    def read(self, names: list[str]) -> dict[str, StoredSecret]:
        held = {secret["name"]: secret for secret in self._api.secrets()}
        self._ids = {name: secret["id"] for name, secret in held.items()}
        return {name: self._stored(name, held.get(name)) for name in names}

    @staticmethod
    def _stored(name: str, secret: dict[str, Any] | None) -> StoredSecret:
        if secret is None:
            return StoredSecret(exists=False)
        recorded = _DIGEST.search(secret.get("description") or "")
        return StoredSecret(exists=True, digest=recorded.group() if recorded else None, reference=reference(name))

    def write(self, values: dict[str, str], current: dict[str, StoredSecret]) -> dict[str, str]:
        for name, value in values.items():
            marker = description(secret_digest(value, self._digest_key))
            if not current[name].exists:
                if self._api.create_secret(name, value, marker):
                    continue
                self.read([name])  # an earlier attempt created it after all: rotate that one
            self._api.update_secret(self._ids[name], name, value=value)
            self._api.update_secret(self._ids[name], name, description=marker)
        return {name: reference(name) for name in values}

    def close(self) -> None:
        self._api.close()
