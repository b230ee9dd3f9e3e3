"""A token service for a real registry's ``auth: token:`` mode (Docker registry token auth spec).

``GET /token?service=…&scope=repository:<name>:<actions>…`` with an optional Basic login
answers ``{"token": <JWT>, "access_token": …, "expires_in": …}``. The JWT is signed ES256 with
a key whose self-signed certificate is written to ``cert_path``; the registry trusts it through
``rootcertbundle`` and finds it through the token's ``x5c`` header. As the spec says, the token
grants the intersection of what was asked and what the user may do (never an error for
too little access); a wrong password is a 401. Anonymous clients get no access.
"""

from __future__ import annotations

import base64
import datetime
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.servers import HttpServer, JsonHandler

TOKEN_SECONDS = 300


@dataclass
class User:
    password: str
    actions: frozenset[str]  # granted on every repository, e.g. {"pull", "push"}


@dataclass
class TokenRequest:
    user: str | None
    scopes: list[str]


class _TokenHandler(JsonHandler):
    owner: TokenAuthServer

    def do_GET(self) -> None:
        server = self.owner
        url = urlsplit(self.path)
        if url.path != "/token":
            return self.send_json(404, {"error": "not found"})
        if server.fail_next > 0:
            server.fail_next -= 1
            return self.send_json(503, {"error": "try again"})
        query = parse_qs(url.query)
        if query.get("service", [""])[0] != server.service:
            return self.send_json(400, {"error": "unknown service"})
        accepted, user = server._login(self.headers.get("Authorization"))
        if not accepted:
            return self.send_json(401, {"error": "bad login"})
        scopes = query.get("scope", [])
        server.requests.append(TokenRequest(user=user, scopes=scopes))
        token = server.token(user, scopes)
        self.send_json(200, {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS})


@dataclass
class TokenAuthServer(HttpServer):
    """Signs registry tokens; start() serves them on a free loopback port."""

    handler = _TokenHandler

    cert_path: Path
    users: dict[str, User]
    service: str = "flyaway-test-registry"
    issuer: str = "flyaway-test-token-issuer"
    requests: list[TokenRequest] = field(default_factory=list)
    #: answer this many next requests with 503, to exercise the client's retries
    fail_next: int = 0

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        self._cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                      .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                      .not_valid_before(now - datetime.timedelta(days=1))
                      .not_valid_after(now + datetime.timedelta(days=1))
                      .sign(self._key, hashes.SHA256()))
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    @property
    def realm(self) -> str:
        return f"{self.endpoint}/token"

    def registry_auth_config(self) -> dict:
        """The ``auth:`` section of the registry's config.yml."""
        return {"token": {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(self.cert_path)}}

    def token(self, user: str | None, scopes: list[str]) -> str:
        """A signed token granting ``user`` what it may do of ``scopes``."""
        allowed = self.users[user].actions if user else frozenset()
        access = []
        for scope in scopes:
            kind, name, actions = _split_scope(scope)
            granted = [action for action in actions.split(",") if action in allowed]
            if kind == "repository" and granted:
                access.append({"type": kind, "name": name, "actions": granted})
        now = int(datetime.datetime.now(datetime.UTC).timestamp())
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": now + TOKEN_SECONDS,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": [x5c]})

    def _login(self, authorization: str | None) -> tuple[bool, str | None]:
        """(accepted, user): no header is an anonymous login, a wrong password is refused."""
        if not authorization:
            return True, None
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        known = self.users.get(user)
        return (known is not None and known.password == password), user


def _split_scope(scope: str) -> tuple[str, str, str]:
    """``repository:team/app:pull,push`` -> (kind, name, actions); names may hold ':' (ports)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, actions
