"""The image stage of the plan: which image to copy where, and how to rewrite its config.

Registry credentials are named by reference (environment variables on the worker), never
given as values. Each well-known registry has a default, so most plans name none.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Annotated, Self

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from flyaway.models.base import EnvName, Record, StrictModel
from flyaway.models.credentials import CredentialUser, present

DOCKER_HUB = "docker.io"
#: the host Docker Hub's registry API answers on (``docker.io`` is only its name)
DOCKER_HUB_API = "registry-1.docker.io"
FLY_REGISTRY = "registry.fly.io"

#: what Fly sets inside a Machine and what makes no sense elsewhere
DEFAULT_DROP_ENV = ["FLY_*", "PRIMARY_REGION"]
#: label naming the image a copy was made from (``<reference>@<digest>``)
MIGRATED_FROM_LABEL = "dev.flyaway.migrated-from"
SOURCE_URL_LABEL = "org.opencontainers.image.source"

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG = re.compile(r"^\w[\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-f]{32,}$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(?::\d+)?$")
_PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


class ImageReference(Record):
    """A parsed image reference: ``[registry/]repository[:tag][@digest]``, Docker Hub by default."""

    model_config = ConfigDict(frozen=True)

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse the way ``docker pull`` does; ``ValueError`` names what is wrong."""
        name, _, digest = text.strip().partition("@")
        tag = None
        if name.rfind(":") > name.rfind("/"):
            name, _, tag = name.rpartition(":")
        first, slash, rest = name.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            registry, repository = first, rest
        else:
            registry, repository = DOCKER_HUB, name
        if registry in ("index.docker.io", DOCKER_HUB_API):
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"
        if not _HOST.match(registry):
            raise ValueError(f"'{text}': '{registry}' is not a registry host")
        if not _REPOSITORY.match(repository):
            raise ValueError(f"'{text}': '{repository}' is not a repository name "
                             "(lowercase letters, digits, '.', '_', '-', '/')")
        if tag is not None and not _TAG.match(tag):
            raise ValueError(f"'{text}': '{tag}' is not a tag")
        if digest and not _DIGEST.match(digest):
            raise ValueError(f"'{text}': '{digest}' is not a digest like sha256:<64 hex digits>")
        if tag is None and not digest:
            tag = "latest"
        return cls(registry=registry, repository=repository, tag=tag, digest=digest or None)

    @property
    def api_host(self) -> str:
        """The host[:port] the registry API answers on."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def is_loopback(self) -> bool:
        return self.registry.rpartition(":")[0] in _LOOPBACK_HOSTS or self.registry in _LOOPBACK_HOSTS

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def version(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> ImageReference:
        return self.model_copy(update={"tag": None, "digest": digest})

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def check_image_reference(value: str) -> str:
    ImageReference.parse(value)
    return value


ImageText = Annotated[str, AfterValidator(check_image_reference)]
"""An image reference as the plan writes it, checked to parse."""


class RegistryCredentials(StrictModel):
    """How to log in to a registry: a user name and where the password comes from, never a value."""

    username: str | None = Field(None, description="literal user name (not a secret), e.g. 'x' or 'oauth2accesstoken'")
    username_env: EnvName | None = Field(None, description="environment variable holding the user name")
    password_env: EnvName | None = Field(None, description="environment variable holding the password or token")
    google_access_token: bool = Field(
        False, description="use an access token from Google application default credentials as the password")
    anonymous_if_unset: bool = Field(
        False, description="pull/push anonymously when the variables are unset, instead of failing")

    @model_validator(mode="after")
    def _one_user_and_one_password(self) -> Self:
        if (self.username is None) == (self.username_env is None):
            raise ValueError("give exactly one of username or username_env")
        if (self.password_env is None) == (not self.google_access_token):
            raise ValueError("give exactly one of password_env or google_access_token")
        return self

    def env_names(self) -> list[str]:
        return present(self.username_env, self.password_env)

    def describe(self) -> str:
        """Where the credentials come from, for error messages (names only)."""
        user = self.username if self.username is not None else f"${self.username_env}"
        password = "a Google access token" if self.google_access_token else f"${self.password_env}"
        return f"user {user}, password {password}"


def default_credentials(registry: str) -> RegistryCredentials | None:
    """The usual way to log in to a well-known registry; ``None`` means anonymous."""
    host = registry.rpartition(":")[0] if registry.count(":") == 1 else registry
    if host == FLY_REGISTRY:
        return RegistryCredentials(username="x", password_env="FLY_API_TOKEN")
    if host == "gcr.io" or host.endswith(("-docker.pkg.dev", ".gcr.io")):
        return RegistryCredentials(username="oauth2accesstoken", google_access_token=True)
    if host == DOCKER_HUB:
        return RegistryCredentials(username_env="DOCKERHUB_USERNAME", password_env="DOCKERHUB_TOKEN",
                                   anonymous_if_unset=True)
    if host == "ghcr.io":
        return RegistryCredentials(username_env="GITHUB_ACTOR", password_env="GITHUB_TOKEN",
                                   anonymous_if_unset=True)
    return None


class ImageStage(CredentialUser):
    """Copy the service's image to the target's registry with a config fit for the target.

    A registry's default login goes to that registry only; a login the plan names is a credential
    like any other, and the registry it goes to must be a well-known one or allowed on the worker.
    """

    provider = "registry"
    official_hosts = (FLY_REGISTRY, DOCKER_HUB, DOCKER_HUB_API, "ghcr.io", "gcr.io", "*.gcr.io", "*.pkg.dev")

    source: ImageText | None = Field(
        None, description="image reference to copy; absent: the image the Fly app's Machines run (fly_app)")
    fly_app: str | None = Field(
        None, description="Fly app whose deployed image is copied when source is absent (read from its Machines' "
                          "config through the Machines API, FLY_API_TOKEN)")
    fly_process_group: str = Field("app", description="process group of the Machines whose image is copied")
    destination: str = Field(description="where to push, registry/repository[:tag] (tag defaults to latest)")
    platform: str = Field("all", description="'all' platforms of a multi-platform image, or one like linux/amd64")
    drop_env: list[str] = Field(default_factory=lambda: list(DEFAULT_DROP_ENV),
                                description="env var names or glob patterns to remove from the config")
    set_env: dict[EnvName, str] = Field(default_factory=dict,
                                        description="env vars to set (plain values; secrets go to the secrets stage)")
    entrypoint: list[str] | None = Field(None, description="replace ENTRYPOINT")
    cmd: list[str] | None = Field(None, description="replace CMD")
    exposed_port: int | None = Field(None, ge=1, le=65535, description="the one TCP port the service listens on")
    labels: dict[str, str] = Field(default_factory=dict, description="labels to set on the image config")
    source_url: str | None = Field(None, description=f"source code URL, set as the {SOURCE_URL_LABEL} label")
    source_credentials: RegistryCredentials | None = Field(
        None, description="login for the source registry; absent: the registry's default")
    destination_credentials: RegistryCredentials | None = Field(
        None, description="login for the destination registry; absent: the registry's default")
    plain_http: list[str] = Field(
        default_factory=list, description="registry hosts spoken to over plain HTTP (loopback hosts always are)")

    @field_validator("destination")
    @classmethod
    def _destination_reference(cls, value: str) -> str:
        if ImageReference.parse(value).digest:
            raise ValueError(f"'{value}': a destination is a tag; its digest is known only once the image is built")
        return value

    @field_validator("platform")
    @classmethod
    def _platform(cls, value: str) -> str:
        if value != "all" and not _PLATFORM.match(value):
            raise ValueError(f"'{value}' is not 'all' or a platform like linux/amd64 or linux/arm64/v8")
        return value

    @model_validator(mode="after")
    def _source_or_fly_app(self) -> Self:
        if self.source is None and not self.fly_app:
            raise ValueError("give source (an image reference) or fly_app (the Fly app whose image is copied)")
        return self

    @property
    def source_reference(self) -> ImageReference | None:
        return ImageReference.parse(self.source) if self.source else None

    @property
    def destination_reference(self) -> ImageReference:
        return ImageReference.parse(self.destination)

    def drops_env(self, name: str) -> bool:
        """Whether the env var ``name`` is to be removed (case-sensitive glob match)."""
        return any(fnmatchcase(name, pattern) for pattern in self.drop_env)

    def credentials_for(self, reference: ImageReference, *, is_source: bool) -> RegistryCredentials | None:
        given = self.source_credentials if is_source else self.destination_credentials
        return given if given is not None else default_credentials(reference.registry)

    def _named_logins(self) -> list[tuple[ImageReference | None, RegistryCredentials]]:
        return [(reference, credentials) for reference, credentials in
                ((self.source_reference, self.source_credentials),
                 (self.destination_reference, self.destination_credentials)) if credentials is not None]

    def credential_envs(self) -> list[str]:
        return [name for _, credentials in self._named_logins() for name in credentials.env_names()]

    @classmethod
    def default_credential_envs(cls) -> list[str]:
        """None: each well-known registry's default login goes to that registry only, named by no plan."""
        return []

    def endpoint_overrides(self) -> list[str]:
        return [reference.api_host for reference, _ in self._named_logins() if reference is not None]

    def public_addresses(self) -> list[str]:
        return [reference.api_host for reference in (self.source_reference, self.destination_reference)
                if reference is not None]

    def uses_plain_http(self, reference: ImageReference) -> bool:
        return reference.is_loopback or reference.registry in self.plain_http


class ImageCopyResult(Record):
    """What the image stage did; references and counts only, never a credential."""

    source_image: str = Field(description="the source, pinned: registry/repository@digest")
    source_digest: str
    destination_image: str = Field(description="the copy, pinned: registry/repository@digest (deploy this)")
    destination_tag: str = Field(description="the copy by tag: registry/repository:tag")
    destination_digest: str
    media_type: str = Field(description="media type of the pushed manifest or index")
    platforms: list[str] = Field(description="platforms copied, os/architecture[/variant]")
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    manifests_pushed: int = 0
    tag_updated: bool = False
