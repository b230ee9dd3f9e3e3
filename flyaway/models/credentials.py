"""What a plan section asks of the worker: the credential variables it reads, the addresses it sends them to.

Every location, secret store, deployer, router and agent section says so itself, so the worker's
policy (:mod:`flyaway.policy`) checks a plan by walking it, with no list of kinds of its own.
"""

from __future__ import annotations

from typing import Any, ClassVar

from flyaway.models.base import AwsCredentials, StrictModel


class CredentialUser(StrictModel):
    """A plan section whose activities read credentials from the worker's env."""

    #: the policy's name for where the credentials go (the plan's kind, e.g. "s3", "runpod")
    provider: ClassVar[str]
    #: hosts an address override may name without the operator listing them: names, or "*.domain"
    official_hosts: ClassVar[tuple[str, ...]] = ()

    def credential_envs(self) -> list[str]:
        """Names of the worker's variables this section reads credentials from."""
        return []

    def credential_files(self) -> list[str]:
        """Those of :meth:`credential_envs` whose value is the path of a key file, not a credential itself
        (unset where an emulator needs none)."""
        return []

    def endpoint_overrides(self) -> list[str]:
        """Addresses the plan gives instead of the provider's own (URLs or host:port): official hosts only."""
        return []

    def public_addresses(self) -> list[str]:
        """Addresses of the user's own services (probed endpoints, registries): any public host."""
        return []

    @classmethod
    def default_credential_envs(cls) -> list[str]:
        """The documented names: what a section that names no variable reads."""
        return cls.model_construct().credential_envs()


def aws_credential_envs(credentials: AwsCredentials) -> list[str]:
    names = [credentials.access_key_id_env, credentials.secret_access_key_env]
    return names + ([credentials.session_token_env] if credentials.session_token_env else [])


def present(*urls: Any) -> list[str]:
    """The address overrides that are set."""
    return [str(url) for url in urls if url]


def credential_users() -> list[type[CredentialUser]]:
    """Every plan section class that reads credentials, of those imported so far (a caller that needs
    all of them imports :mod:`flyaway.models.plan` first, which imports every section)."""
    found: list[type[CredentialUser]] = []
    pending = list(CredentialUser.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return [cls for cls in found if hasattr(cls, "provider")]
