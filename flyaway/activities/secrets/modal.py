"""Modal: every value is a key of one named Modal secret, written through the ``modal`` SDK.

Modal never returns a secret's values (nor, through the public SDK, its keys), so the
digests of what flyaway wrote are kept in a Modal Dict next to it
(:data:`DIGESTS_DICT`, keyed by secret name) and compared on the next run. A value changed
by hand in Modal's dashboard goes unnoticed until its source value changes.

An existing secret is changed by merging the changed keys into it in one call.
"""

from __future__ import annotations

from flyaway.activities.secrets.base import STORES, StoredSecret, digest_key
from flyaway.models.secrets import ModalDestination, secret_digest
from flyaway.providers.modal import ModalSecrets, ModalToken

#: the Modal Dict (per environment) holding ``{secret name: {key: digest}}`` of what flyaway wrote
DIGESTS_DICT = "flyaway-secret-digests"


@STORES.register("modal")
class ModalSecretStore:
    def __init__(self, destination: ModalDestination) -> None:
        self.destination = destination
        what = destination.describe()
        self._secrets = ModalSecrets(ModalToken(destination.token_id_env, destination.token_secret_env, what),
                                     destination.environment, what)
        self._secret_exists = False
        self._recorded: dict[str, str] = {}
        self._digest_key = digest_key(destination)

    def read(self, names: list[str]) -> dict[str, StoredSecret]:
        name = self.destination.secret_name
        self._secret_exists = self._secrets.exists(name)
        recorded = self._secrets.dict_get(DIGESTS_DICT, name) if self._secret_exists else None
        self._recorded = dict(recorded or {})  # none when flyaway never wrote to this environment
        return {key: StoredSecret(exists=key in self._recorded, digest=self._recorded.get(key), reference=name)
                for key in names}

    def write(self, values: dict[str, str], current: dict[str, StoredSecret]) -> dict[str, str]:
        name = self.destination.secret_name
        if self._secret_exists:
            self._secrets.update(name, values)
        else:
            self._secrets.create(name, values)
        self._recorded.update({key: secret_digest(value, self._digest_key) for key, value in values.items()})
        self._secrets.dict_put(DIGESTS_DICT, name, self._recorded)
        return dict.fromkeys(values, name)

    def close(self) -> None:
        self._secrets.close()
