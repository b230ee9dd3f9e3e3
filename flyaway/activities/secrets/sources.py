"""Reading secret values where they live: a dotenv file, the worker's environment, a Fly app.

Every value read is registered with the log redaction before anything else happens to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

from dotenv import dotenv_values

from flyaway.activities.errors import InvalidPlan, NotFound
from flyaway.activities.fly import FlyClient
from flyaway.models.secrets import DotenvSource, EnvSource, FlyAppSource, SecretSource
from flyaway.redaction import register_secret


def read_source(source: SecretSource) -> dict[str, str]:
    """Name -> value of everything the source holds that this stage may take."""
    if isinstance(source, DotenvSource):
        values = _read_dotenv(source)
    elif isinstance(source, EnvSource):
        values = {name: os.environ[name] for name in source.names if name in os.environ}
    else:
        _refuse_fly_app(source)
    for value in values.values():
        register_secret(value)
    return values


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


def _refuse_fly_app(source: FlyAppSource) -> NoReturn:
    """Names come from the Machines API; values only exist inside the app's Machines, out of reach for now."""
    with FlyClient(source.app) as fly:
        names = sorted(secret.name for secret in fly.list_secrets())
    raise InvalidPlan(f"{source.describe()} holds {len(names)} secrets ({', '.join(names) or 'none'}), but reading "
                      f"their values needs the Fly volume agent, which is not available until the Fly agent "
                      f"issue lands; for now put them in a dotenv file on the worker and use source kind "
                      f"'dotenv'")
