"""Reading secret values where they live: a dotenv file, the worker's environment, a Fly app.

Every value read is registered with the log redaction before anything else happens to it.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

from flyaway.errors import InvalidPlan, NotFound
from flyaway.models.secrets import DotenvSource, EnvSource, FlyAppSource, SecretSource
from flyaway.providers.fly.agent import app_secret_names
from flyaway.providers.fly.client import FlyClient
from flyaway.redaction import register_secret

#: set by Fly in every Machine of an app
FLY_APP_ENV = "FLY_APP_NAME"


def read_source(source: SecretSource, names_at_source: list[str] | None = None) -> dict[str, str]:
    """Name -> value of everything the source holds that this stage may take; ``names_at_source`` are
    a Fly app's secret names, which its agent's env holds besides its own variables."""
    if isinstance(source, DotenvSource):
        values = _read_dotenv(source)
    elif isinstance(source, EnvSource):
        values = _read_environment(source.names)
    else:
        values = _read_fly_app(source, names_at_source)
    for value in values.values():
        register_secret(value)
    return values


def _read_environment(names: list[str]) -> dict[str, str]:
    return {name: os.environ[name] for name in names if name in os.environ}


def _read_fly_app(source: FlyAppSource, names: list[str] | None) -> dict[str, str]:
    """Inside the app's agent Machine, Fly has put the app's secrets into the env."""
    if os.environ.get(FLY_APP_ENV) != source.app or names is None:
        raise InvalidPlan(f"the values of {source.describe()} can only be read by flyaway's agent Machine inside "
                          f"that app; this worker runs outside it (run the migration, which starts the agent)")
    return _read_environment(names)


def fly_secret_names(source: FlyAppSource) -> list[str]:
    """The names of the app's secrets, from the Machines API (which never returns values)."""
    with FlyClient(source.app) as fly:
        return app_secret_names(fly)


def _read_dotenv(source: DotenvSource) -> dict[str, str]:
    path = Path(source.path)
    if not path.is_file():
        raise NotFound(f"{source.describe()}: no such file on the worker")
    try:
        # a name without '=' reads as None: it is there, with an empty value; no ${VAR} expansion, which
        # would change values and could pull other variables of the worker into them
        return {name: value or "" for name, value in dotenv_values(path, interpolate=False).items()}
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidPlan(f"{source.describe()}: cannot read it ({type(error).__name__})") from None
