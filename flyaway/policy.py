"""The worker's policy: which credentials, addresses, variables and files a plan may make it use.

Anyone who can start a workflow hands the worker a plan, and the worker holds every credential of
the move. So the worker's operator, not the plan, decides:

- which environment variables are credentials the worker may hand to which kind of provider
  (default: the documented names, e.g. ``AWS_ACCESS_KEY_ID`` for ``s3``);
- which hosts an address override may name (default: the provider's official hosts); the user's
  own services (probed endpoints, registries) may be any public host, while loopback and private
  addresses are reachable only when listed;
- which variables an ``env`` secrets source reads and under which folders a ``dotenv`` file lies
  (default: none); flyaway's own variables, ``/proc`` and credential variables never are.

More is allowed with ``flyaway worker --allow-...`` flags, the ``FLYAWAY_ALLOW_*`` variables or a
TOML file named by ``FLYAWAY_POLICY_FILE``; :func:`load_policy` reads them all.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import tomllib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel

from flyaway.errors import InvalidPlan
from flyaway.models.credentials import CredentialUser, credential_users
from flyaway.models.plan import STAGES, MigrationPlan
from flyaway.models.secrets import DotenvSource, EnvSource

HOSTS_ENV = "FLYAWAY_ALLOW_HOSTS"
CREDENTIALS_ENV = "FLYAWAY_ALLOW_CREDENTIALS"
SECRET_ENV_ENV = "FLYAWAY_ALLOW_SECRET_ENV"
DOTENV_DIRS_ENV = "FLYAWAY_ALLOW_DOTENV_DIRS"
POLICY_FILE_ENV = "FLYAWAY_POLICY_FILE"
POLICY_ENVS = (HOSTS_ENV, CREDENTIALS_ENV, SECRET_ENV_ENV, DOTENV_DIRS_ENV, POLICY_FILE_ENV)
#: variables no plan may read as secrets or hand to a provider: the worker's own
RESERVED_PREFIXES = ("FLYAWAY_", "TEMPORAL_")
#: credentials the worker holds that no plan names (Fly's token, the codec's key ring)
WORKER_CREDENTIALS = ("FLY_API_TOKEN", "TEMPORAL_API_KEY", "FLYAWAY_CODEC_KEYS", "FLYAWAY_CODEC_TOKEN")
#: folders no dotenv file may come from, whatever is allowed
NEVER_READ = (Path("/proc"), Path("/sys"), Path("/dev"))
#: host names that mean this machine or a private network
_PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")


class PolicyRefused(InvalidPlan):
    """The plan asks the worker for something its operator did not allow."""


@cache
def default_credentials() -> dict[str, frozenset[str]]:
    """Provider -> the documented credential variables of its plan sections (all imported with the plan)."""
    defaults: dict[str, set[str]] = {}
    for cls in credential_users():
        defaults.setdefault(cls.provider, set()).update(cls.default_credential_envs())
    return {provider: frozenset(names) for provider, names in defaults.items()}


@dataclass(frozen=True)
class WorkerPolicy:
    """What this worker's operator allows beyond the defaults."""

    credentials: Mapping[str, frozenset[str]] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()
    secret_env: tuple[str, ...] = ()
    dotenv_dirs: tuple[Path, ...] = ()

    def allowed_credentials(self, provider: str) -> frozenset[str]:
        return default_credentials().get(provider, frozenset()) | self.credentials.get(provider, frozenset())

    def credential_names(self) -> frozenset[str]:
        """Every variable this worker may hand to some provider."""
        names = set(WORKER_CREDENTIALS)
        for provider in default_credentials().keys() | self.credentials.keys():
            names |= self.allowed_credentials(provider)
        return frozenset(names)

    # ---- the checks ----------------------------------------------------------------------------

    def check(self, section: BaseModel, where: str = "plan") -> None:
        """Every part of ``section`` (a plan or any part of one); :class:`PolicyRefused` names the first problem."""
        for path, node in _walk(section, where):
            if isinstance(node, CredentialUser):
                self._check_user(node, path)
            elif isinstance(node, EnvSource):
                self._check_env_source(node, path)
            elif isinstance(node, DotenvSource):
                self._check_dotenv_source(node, path)

    def _check_user(self, user: CredentialUser, where: str) -> None:
        allowed = self.allowed_credentials(user.provider)
        for name in user.credential_envs():
            if name.startswith(RESERVED_PREFIXES) and name not in allowed:
                raise PolicyRefused(f"{where}: {name} is one of flyaway's own variables, never a {user.provider} "
                                    f"credential")
            if name not in allowed:
                raise PolicyRefused(
                    f"{where}: this worker does not hand {name} to {user.provider} (it allows "
                    f"{', '.join(sorted(allowed)) or 'none'}); to allow it, start the worker with "
                    f"--allow-credential {user.provider}={name}")
        for address in user.endpoint_overrides():
            host = host_of(address)
            if not (_matches_any(host, user.official_hosts) or self.host_listed(host)):
                raise PolicyRefused(
                    f"{where}: {address} is not a host this worker sends {user.provider} credentials to "
                    f"({', '.join(user.official_hosts)}); to allow it, start the worker with --allow-host {host}")
        for address in user.public_addresses():
            host = host_of(address)
            if not (is_public(host) or self.host_listed(host)):
                raise PolicyRefused(f"{where}: {address} is a loopback or private address; to allow it, start "
                                    f"the worker with --allow-host {host}")

    def _check_env_source(self, source: EnvSource, where: str) -> None:
        for name in source.names:
            if name.startswith(RESERVED_PREFIXES) or name in self.credential_names():
                raise PolicyRefused(f"{where}.names: {name} is a credential or flyaway's own variable, never a "
                                    f"secret to copy")
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.secret_env):
                raise PolicyRefused(f"{where}.names: this worker does not read {name} as a secret; to allow it, "
                                    f"start the worker with --allow-secret-env {name}")

    def _check_dotenv_source(self, source: DotenvSource, where: str) -> None:
        path = Path(os.path.realpath(source.path))
        if any(path.is_relative_to(folder) for folder in NEVER_READ):
            raise PolicyRefused(f"{where}.path: {source.path} is under {path.parents[-2]}, never a secrets file")
        if not any(path.is_relative_to(folder) for folder in self.dotenv_dirs):
            raise PolicyRefused(f"{where}.path: {source.path} is not under a folder this worker reads dotenv files "
                                f"from; to allow it, start the worker with --allow-dotenv-dir <folder>")

    def host_listed(self, host: str) -> bool:
        return _matches_any(host, self.hosts)

    # ---- as variables, for processes this one starts ----------------------------------------------

    def to_env(self) -> dict[str, str]:
        """The ``FLYAWAY_ALLOW_*`` variables that give another process (an agent) this policy."""
        env = {HOSTS_ENV: ",".join(self.hosts), SECRET_ENV_ENV: ",".join(self.secret_env),
               DOTENV_DIRS_ENV: ",".join(str(folder) for folder in self.dotenv_dirs),
               CREDENTIALS_ENV: ",".join(f"{provider}={name}" for provider, names in sorted(self.credentials.items())
                                         for name in sorted(names))}
        return {name: value for name, value in env.items() if value}


def load_policy(environ: Mapping[str, str] = os.environ) -> WorkerPolicy:
    """The policy the ``FLYAWAY_ALLOW_*`` variables and the ``FLYAWAY_POLICY_FILE`` give, together.

    Raises ``ValueError`` naming the variable or the file entry that cannot be used.
    """
    from_file = _read_policy_file(Path(environ[POLICY_FILE_ENV])) if environ.get(POLICY_FILE_ENV) else {}
    credentials: dict[str, set[str]] = {}
    for entry in [*_split(environ.get(CREDENTIALS_ENV, "")), *_file_credentials(from_file)]:
        provider, equals, name = entry.partition("=")
        if not equals or provider not in default_credentials() or not name:
            raise ValueError(f"{CREDENTIALS_ENV}: '{entry}' is not <kind>=<VARIABLE>; kinds: "
                             f"{', '.join(sorted(default_credentials()))}")
        credentials.setdefault(provider, set()).add(name)
    hosts = (*_split(environ.get(HOSTS_ENV, "")), *_strings(from_file, "hosts"))
    for host in hosts:
        _check_host_pattern(host)
    return WorkerPolicy(
        credentials={provider: frozenset(names) for provider, names in credentials.items()},
        hosts=tuple(host.lower() for host in hosts),
        secret_env=(*_split(environ.get(SECRET_ENV_ENV, "")), *_strings(from_file, "secret_env")),
        dotenv_dirs=tuple(Path(os.path.realpath(folder)) for folder in
                          (*_split(environ.get(DOTENV_DIRS_ENV, "")), *_strings(from_file, "dotenv_dirs"))))


def add_to_env(environ: MutableMapping[str, str], name: str, values: list[str]) -> None:
    """Append ``values`` to the list in variable ``name`` (how ``flyaway worker --allow-...`` flags apply)."""
    if values:
        environ[name] = ",".join([*_split(environ.get(name, "")), *values])


def check_plan(section: BaseModel, where: str = "plan") -> None:
    """Check ``section`` against this process's policy (the worker's, or the CLI's shell's)."""
    try:
        policy = load_policy()
    except ValueError as error:
        raise PolicyRefused(f"this worker's policy cannot be read: {error}") from None
    policy.check(section, where)


# ---- hosts ---------------------------------------------------------------------------------------

def host_of(address: str) -> str:
    """The host of a URL or a host:port, lowercase, without brackets or a trailing dot."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    return (parts.hostname or "").rstrip(".").lower()


def is_public(host: str) -> bool:
    """Whether ``host`` is an address on the internet (not loopback, private, link-local or a local name)."""
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return "." in host and not host.endswith(_PRIVATE_SUFFIXES)


def _matches_any(host: str, patterns: tuple[str, ...]) -> bool:
    return any(_matches(host, pattern) for pattern in patterns)


def _matches(host: str, pattern: str) -> bool:
    """``pattern``: a host name, ``*.domain`` (its subdomains), an IP address or a network (CIDR)."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    try:
        network = ipaddress.ip_network(pattern.strip("[]"), strict=False)
    except ValueError:
        return host == pattern
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return False


def _check_host_pattern(pattern: str) -> None:
    name = pattern.removeprefix("*.")
    if not name or ("/" in name and not _is_network(name)) or (":" in name and not _is_network(name.strip("[]"))):
        raise ValueError(f"{HOSTS_ENV}: '{pattern}' is not a host name, *.domain, IP address or network")


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


# ---- reading the settings ------------------------------------------------------------------------

def _split(value: str) -> list[str]:
    return [item for item in value.replace(",", " ").split() if item]


def _read_policy_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"{POLICY_FILE_ENV}={path}: {error}") from None


def _strings(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{POLICY_FILE_ENV}: '{key}' must be a list of strings")
    return value


def _file_credentials(data: dict[str, Any]) -> Iterator[str]:
    table = data.get("credentials", {})
    if not isinstance(table, dict):
        raise ValueError(f"{POLICY_FILE_ENV}: 'credentials' must be a table of <kind> = [\"VARIABLE\", ...]")
    for provider in table:
        for name in _strings(table, provider):
            yield f"{provider}={name}"


@cache
def _stage_paths() -> dict[type, str]:
    """Class of a stage's section -> its path in the plan, so an activity's input is named as the plan names it."""
    def classes(annotation: Any) -> Iterator[type]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield annotation
        for argument in get_args(annotation):
            yield from classes(argument)

    return {cls: f"plan.{name}" for name in STAGES for cls in classes(MigrationPlan.model_fields[name].annotation)}


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every pydantic model inside ``node``, with its path in the plan."""
    if isinstance(node, BaseModel):
        path = _stage_paths().get(type(node), path)
        yield path, node
        for name in type(node).model_fields:
            yield from _walk(getattr(node, name), f"{path}.{name}")
    elif isinstance(node, (list, tuple)):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from _walk(item, f"{path}.{key}")
