"""Route53 weighted record sets as a traffic router (client from :mod:`flyaway.providers.s3`).

The plan names two records with one name and type that differ by SetIdentifier: the Fly
one and the new one. A weight change UPSERTs both in one change batch, so Route53 never
serves a half-applied split, then waits for the change to be INSYNC and reads it back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import structlog

from flyaway.activities.traffic import ROUTERS
from flyaway.errors import AccessDenied, FlyawayError, InvalidPlan, MissingCredentials, NotFound
from flyaway.models.canary import CanaryStage, Route53RouterConfig, WeightState
from flyaway.providers.http import call_with_retries
from flyaway.providers.s3 import ClientError, error_code, error_message, http_status, is_transient, route53_client
from flyaway.redaction import register_secret

log = structlog.get_logger(__name__)

_DENIED = {"AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "UnrecognizedClientException",
           "SignatureDoesNotMatch", "ExpiredToken", "InvalidAccessKeyId"}
_NOT_FOUND = {"NoSuchHostedZone", "NoSuchChange"}
#: an alias record has no TTL of its own; Route53 answers with the target's, commonly 60 s
_ALIAS_TTL_SECONDS = 60
#: how long to wait for a change to reach every Route53 name server (usually under 60 s)
_INSYNC_POLL_SECONDS = 5
_INSYNC_MAX_POLLS = 60


def _translate(exc: ClientError, what: str) -> FlyawayError:
    code = error_code(exc) or f"HTTP {http_status(exc)}"
    message = error_message(exc)
    if code in _NOT_FOUND:
        return NotFound(f"{what}: {code}: {message}")
    if code in _DENIED or http_status(exc) == 403:
        return AccessDenied(f"Route53 refused {what} with these credentials ({code}: {message}); "
                            "the caller needs route53:ListResourceRecordSets, ChangeResourceRecordSets and GetChange")
    return InvalidPlan(f"Route53 rejected {what}: {code}: {message}")


def route53_name(record_name: str) -> str:
    """A record name as Route53 lists it: lower case, fully qualified, '*' escaped as \\052."""
    name = record_name.lower().replace("*", "\\052")
    return name if name.endswith(".") else name + "."


def _credential(env: str | None) -> str | None:
    """The value of the router's credential variable ``env`` (None when the plan names none)."""
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise MissingCredentials(f"router: environment variable {env} is not set on the worker; "
                                 "export it, or name another variable in the router's *_env fields")
    register_secret(value)
    return value


class Route53Router:
    """Weights are the percentages themselves: new=p, fly=100-p (Route53 takes 0..255)."""

    def __init__(self, config: Route53RouterConfig, client: Any | None = None) -> None:
        self._config = config
        self._name = route53_name(config.record_name)
        self._client = client or self._make_client()

    def _make_client(self) -> Any:
        cfg = self._config
        return route53_client(_credential(cfg.access_key_id_env), _credential(cfg.secret_access_key_env),
                              _credential(cfg.session_token_env), cfg.endpoint_url)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return call_with_retries(fn, is_transient)
        except ClientError as exc:
            if is_transient(exc):
                raise
            raise _translate(exc, what) from exc

    def _record_sets(self) -> dict[str, dict[str, Any]]:
        """Every weighted record set with the plan's name and type, by SetIdentifier."""
        cfg = self._config
        start: dict[str, str] = {"StartRecordName": self._name, "StartRecordType": cfg.record_type}
        found: dict[str, dict[str, Any]] = {}
        what = f"hosted zone {cfg.hosted_zone_id} (router.hosted_zone_id)"
        while True:
            page = self._call(what, lambda: self._client.list_resource_record_sets(
                HostedZoneId=cfg.hosted_zone_id, **start))  # noqa: B023 (called at once)
            for rrset in page["ResourceRecordSets"]:
                if rrset["Name"] != self._name or rrset["Type"] != cfg.record_type:
                    return found
                if "SetIdentifier" in rrset:
                    found[rrset["SetIdentifier"]] = rrset
            if not page.get("IsTruncated"):
                return found
            start = {"StartRecordName": page["NextRecordName"], "StartRecordType": page["NextRecordType"]}
            if page.get("NextRecordIdentifier"):
                start["StartRecordIdentifier"] = page["NextRecordIdentifier"]

    def _pair(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Fly and the new record set, or a NotFound / InvalidPlan naming the plan field."""
        cfg = self._config
        record_sets = self._record_sets()
        pair = []
        for field, identifier in (("fly_set_identifier", cfg.fly_set_identifier),
                                  ("new_set_identifier", cfg.new_set_identifier)):
            rrset = record_sets.get(identifier)
            if rrset is None:
                raise NotFound(f"router.{field}: no {cfg.record_type} record {self._name} with SetIdentifier "
                               f"'{identifier}' in hosted zone {cfg.hosted_zone_id} "
                               f"(set identifiers there: {sorted(record_sets) or 'none'})")
            if "Weight" not in rrset:
                raise InvalidPlan(f"router.{field}: record {self._name} '{identifier}' is not a weighted record")
            pair.append(rrset)
        return pair[0], pair[1]

    def check(self) -> WeightState:
        """Both records exist and the credentials may change them; returns the current split.

        Write rights are proven by UPSERTing both records exactly as they are, a change that
        changes nothing.
        """
        fly, new = self._pair()
        self._change([fly, new], "flyaway canary: permission check, records unchanged")
        return WeightState.from_shares(new["Weight"], fly["Weight"])

    def get_weight(self) -> WeightState:
        fly, new = self._pair()
        return WeightState.from_shares(new["Weight"], fly["Weight"])

    def set_weight(self, new_percent: int) -> WeightState:
        fly, new = self._pair()
        targets = ((fly, 100 - new_percent), (new, new_percent))
        if all(self._matches(rrset, weight) for rrset, weight in targets):
            return WeightState.from_shares(new["Weight"], fly["Weight"])
        change_id = self._change([self._with_weight(rrset, weight) for rrset, weight in targets],
                                 f"flyaway canary: new {new_percent}%")
        log.info("route53 weights changed", record=self._name, new_percent=new_percent, change_id=change_id)
        waiter = self._client.get_waiter("resource_record_sets_changed")
        self._call(f"change {change_id}", lambda: waiter.wait(
            Id=change_id, WaiterConfig={"Delay": _INSYNC_POLL_SECONDS, "MaxAttempts": _INSYNC_MAX_POLLS}))
        state = self.get_weight()
        if state.new_weight != new_percent:
            raise RuntimeError(f"Route53 reads back new={state.new_weight}% after setting {new_percent}%")
        return state

    def _change(self, rrsets: list[dict[str, Any]], comment: str) -> str:
        """UPSERT ``rrsets`` in one atomic change batch; returns the change id."""
        cfg = self._config
        batch = {"Comment": comment, "Changes": [{"Action": "UPSERT", "ResourceRecordSet": r} for r in rrsets]}
        change = self._call(f"the records {self._name} in hosted zone {cfg.hosted_zone_id}",
                            lambda: self._client.change_resource_record_sets(HostedZoneId=cfg.hosted_zone_id,
                                                                             ChangeBatch=batch))
        return str(change["ChangeInfo"]["Id"])

    def _matches(self, rrset: dict[str, Any], weight: int) -> bool:
        ttl = self._config.ttl
        return rrset["Weight"] == weight and (ttl is None or "AliasTarget" in rrset or rrset.get("TTL") == ttl)

    def _with_weight(self, rrset: dict[str, Any], weight: int) -> dict[str, Any]:
        """The record set as listed, with the new weight (and the plan's TTL): nothing else changes."""
        updated = {**rrset, "Weight": weight}
        if self._config.ttl is not None and "AliasTarget" not in rrset:
            updated["TTL"] = self._config.ttl
        return updated

    def describe_change(self, new_percent: int) -> str:
        cfg = self._config
        return (f"Route53 zone {cfg.hosted_zone_id}: {cfg.record_type} {self._name} weight "
                f"{new_percent} on '{cfg.new_set_identifier}', {100 - new_percent} on '{cfg.fly_set_identifier}'")

    def propagation_seconds(self) -> int:
        """How long resolvers may keep serving the previous answer: the records' TTL."""
        return max(int(rrset.get("TTL", _ALIAS_TTL_SECONDS)) for rrset in self._pair())


@ROUTERS.register("route53")
def route53_router(stage: CanaryStage) -> Route53Router:
    assert isinstance(stage.router, Route53RouterConfig)
    return Route53Router(stage.router)
