"""Modal: every value is a key of one named Modal secret, written through the ``modal`` SDK.

Modal never returns a secret's values (nor, through the public SDK, its keys), so the
digests of what flyaway wrote are kept in a Modal Dict next to it
(:data:`DIGESTS_DICT`, keyed by secret name) and compared on the next run. A value changed
by hand in Modal's dashboard goes unnoticed until its source value changes.

``Secret.objects.create(..., allow_existing=True)`` keeps old values, so an existing secret
is changed with ``Secret.update``, which merges the changed keys in one call.
The SDK finds Modal at its ``server_url`` setting (``MODAL_SERVER_URL``), as always.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import modal
from modal import exception as modal_errors

from flyaway.activities.secrets.base import STORES, StoredSecret, digest_key
from flyaway.errors import AccessDenied, InvalidPlan, MissingCredentials, NotFound
from flyaway.models.secrets import ModalDestination, secret_digest

T = TypeVar("T")
#: the Modal Dict (per environment) holding ``{secret name: {key: digest}}`` of what flyaway wrote
DIGESTS_DICT = "flyaway-secret-digests"


@STORES.register("modal")
class ModalSecretStore:
    def __init__(self, destination: ModalDestination) -> None:
        self.destination = destination
        token_id = os.environ.get(destination.token_id_env, "").strip()
        token_secret = os.environ.get(destination.token_secret_env, "").strip()
        if not token_id or not token_secret:
            raise MissingCredentials(f"{destination.token_id_env} and {destination.token_secret_env} must be set in "
                                     f"the worker's environment (create a token with `modal token new`)")
        self._client = self._call("connect", lambda: modal.Client.from_credentials(token_id, token_secret))
        self._secret_exists = False
        self._recorded: dict[str, str] = {}
        self._digest_key = digest_key(destination)

    def _call(self, what: str, fn: Callable[[], T], expected: tuple[type[Exception], ...] = ()) -> T:
        """One SDK call (the SDK retries transient trouble itself); refusals become flyaway's errors,
        ``expected`` ones are left to the caller."""
        where = self.destination.describe()
        try:
            return fn()
        except expected:
            raise
        except modal_errors.NotFoundError as error:
            raise NotFound(f"Modal could not find what it needs to {what} ({where}): {error}") from None
        except (modal_errors.AuthError, modal_errors.PermissionDeniedError) as error:
            raise AccessDenied(f"Modal refused to {what} ({where}): {error}; check {self.destination.token_id_env} "
                               f"and {self.destination.token_secret_env}") from None
        except modal_errors.InvalidError as error:
            raise InvalidPlan(f"Modal rejected {what} ({where}): {error}") from None

    def _digests(self, create: bool) -> modal.Dict:
        return modal.Dict.from_name(DIGESTS_DICT, environment_name=self.destination.environment,
                                    create_if_missing=create, client=self._client)

    def _secret(self) -> modal.Secret:
        return modal.Secret.from_name(self.destination.secret_name, environment_name=self.destination.environment,
                                      client=self._client)

    def read(self, names: list[str]) -> dict[str, StoredSecret]:
        try:
            self._call("look up the secret", lambda: self._secret().hydrate(), expected=(modal_errors.NotFoundError,))
            self._secret_exists = True
        except modal_errors.NotFoundError:
            self._secret_exists = False
        try:
            recorded = self._call("read the digests", lambda: self._digests(create=False).get(
                self.destination.secret_name), expected=(modal_errors.NotFoundError,))
        except modal_errors.NotFoundError:
            recorded = None  # flyaway never wrote to this environment
        self._recorded = dict(recorded or {}) if self._secret_exists else {}
        return {name: StoredSecret(exists=name in self._recorded, digest=self._recorded.get(name),
                                   reference=self.destination.secret_name) for name in names}

    def write(self, values: dict[str, str], current: dict[str, StoredSecret]) -> dict[str, str]:
        if self._secret_exists:
            self._call("update the secret", lambda: self._secret().update(values))
        else:
            self._call("create the secret", lambda: modal.Secret.objects.create(
                self.destination.secret_name, values, environment_name=self.destination.environment,
                client=self._client))
        self._recorded.update({name: secret_digest(value, self._digest_key) for name, value in values.items()})
        self._call("record the digests", lambda: self._digests(create=True).put(self.destination.secret_name,
                                                                                self._recorded))
        return dict.fromkeys(values, self.destination.secret_name)

    def close(self) -> None:
        self._client.close()
