"""The canary stage of the plan, and the records its activities return.

Traffic moves from the Fly endpoint ("old") to the new one in steps. At every step a router
sets the new side's share, probes hit both endpoints, and an analysis judges the new side
Successful, Failed or Inconclusive against the thresholds here (after Argo Rollouts and
Flagger: ``failure_limit`` failed analyses roll back, ``inconclusive_limit`` inconclusive
ones pause for an operator instead).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from flyaway.models.base import MAX_SECONDS, EnvName, Record, StrictModel
from flyaway.models.credentials import CredentialUser, present

_SECRET_HEADER = re.compile(r"^(authorization|proxy-authorization|cookie)$|token|secret|api[-_]?key|password",
                            re.IGNORECASE)


def _check_base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"'{value}' is not an http(s) URL with a host")
    if parts.query or parts.fragment:
        raise ValueError(f"'{value}' is a base URL: drop the query and fragment")
    return value.rstrip("/")


BaseUrl = Annotated[str, AfterValidator(_check_base_url)]
"""An http(s) base URL, kept without its trailing slash so paths can be appended."""


# --- routers -------------------------------------------------------------------------------

class Route53RouterConfig(CredentialUser):
    """Two weighted record sets with the same name and type; their SetIdentifiers tell them apart.

    Weights are written as the percentages themselves (0..100 of Route53's 0..255).
    Credentials come from the environment variables named here, as for S3 locations.
    """

    provider = "route53"
    official_hosts = ("*.amazonaws.com",)

    kind: Literal["route53"]
    hosted_zone_id: str = Field(min_length=1)
    record_name: str = Field(min_length=1, description="e.g. api.example.com")
    record_type: Literal["A", "AAAA", "CNAME"] = "CNAME"
    fly_set_identifier: str = Field(min_length=1)
    new_set_identifier: str = Field(min_length=1)
    ttl: int | None = Field(None, ge=0, le=2_147_483_647,
                            description="TTL written with each weight change; unset keeps the records' TTL")
    endpoint_url: BaseUrl | None = Field(None, description="Route53 API address override (tests: moto server)")
    access_key_id_env: EnvName = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: EnvName = "AWS_SECRET_ACCESS_KEY"
    session_token_env: EnvName | None = None

    @model_validator(mode="after")
    def _check(self) -> Route53RouterConfig:
        if self.fly_set_identifier == self.new_set_identifier:
            raise ValueError("router.fly_set_identifier and router.new_set_identifier must differ")
        return self

    def credential_envs(self) -> list[str]:
        return [self.access_key_id_env, self.secret_access_key_env, *present(self.session_token_env)]

    def endpoint_overrides(self) -> list[str]:
        return present(self.endpoint_url)


class CloudflareRouterConfig(CredentialUser):
    """Origin weights of two origins in one Cloudflare load-balancer pool (API v4).

    Origin weights are 0..1 in steps of 0.01, so a percentage maps exactly. When the load
    balancer is named too, ``check`` verifies that it serves the pool.
    """

    provider = "cloudflare"
    official_hosts = ("api.cloudflare.com",)

    kind: Literal["cloudflare"]
    account_id: str = Field(min_length=1)
    pool_id: str = Field(min_length=1)
    fly_origin_name: str = Field(min_length=1)
    new_origin_name: str = Field(min_length=1)
    zone_id: str | None = None
    load_balancer_id: str | None = None
    api_base_url: BaseUrl | None = Field(None, description="Cloudflare API v4 address override (tests); "
                                                           "Cloudflare's own when absent")
    token_env: EnvName = "CLOUDFLARE_API_TOKEN"

    @model_validator(mode="after")
    def _check(self) -> CloudflareRouterConfig:
        if self.fly_origin_name == self.new_origin_name:
            raise ValueError("router.fly_origin_name and router.new_origin_name must differ")
        if (self.zone_id is None) != (self.load_balancer_id is None):
            raise ValueError("router.zone_id and router.load_balancer_id go together: name both or neither")
        return self

    def credential_envs(self) -> list[str]:
        return [self.token_env]

    def endpoint_overrides(self) -> list[str]:
        return present(self.api_base_url)


class ManualRouterConfig(StrictModel):
    """An operator moves the traffic; flyaway says what to change and waits for ``approve``.

    ``instructions`` may use ``{new_weight}`` and ``{old_weight}``, replaced by percentages.
    """

    kind: Literal["manual"]
    instructions: str = ""


RouterConfig = Annotated[Route53RouterConfig | CloudflareRouterConfig | ManualRouterConfig,
                         Field(discriminator="kind")]


# --- steps and analysis --------------------------------------------------------------------

class CanaryStep(StrictModel):
    """Set the new side to ``weight`` percent, then hold: analyses run during the pause.

    With both set, the step holds ``pause_seconds`` and then waits for ``approve``.
    """

    weight: int = Field(ge=0, le=100, description="percent of traffic to the new endpoint")
    pause_seconds: float = Field(0, ge=0, le=MAX_SECONDS)
    wait_for_approval: bool = False


def _status_list(value: Any) -> Any:
    return [value] if isinstance(value, int) else value


class RequestHeaders(CredentialUser):
    """Headers flyaway sends with a request, holding no secrets.

    A token is named by its environment variable in ``bearer_token_env`` or
    ``headers_from_env`` and read on the worker when the request is sent.
    """

    provider = "probe"

    headers: dict[str, str] = Field(default_factory=dict)
    headers_from_env: dict[str, EnvName] = Field(default_factory=dict,
                                                 description="header name -> environment variable holding its value")
    bearer_token_env: EnvName | None = None

    @field_validator("headers")
    @classmethod
    def _no_secret_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if _SECRET_HEADER.search(name):
                raise ValueError(f"header '{name}' looks secret: put its value in an environment variable "
                                 "and name it in headers_from_env (or bearer_token_env)")
        return value

    def credential_envs(self) -> list[str]:
        return [*self.headers_from_env.values(), *present(self.bearer_token_env)]


class Probe(RequestHeaders):
    """One request sent to both endpoints, e.g. a tiny OpenAI-style completion."""

    path: str = "/"
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    body: str | dict[str, Any] | list[Any] | None = Field(None, description="text, or JSON for an object/list")
    expected_status: Annotated[list[Annotated[int, Field(ge=100, le=599)]],
                               BeforeValidator(_status_list), Field(min_length=1)] = Field([200])
    timeout_seconds: float = Field(10.0, gt=0, le=3600)

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"'{value}' must start with '/' (it is appended to each endpoint's base URL)")
        return value


def _matching(pattern: str, what: str) -> AfterValidator:
    """A validator of strings that must match ``pattern``; ``what`` names them in the error."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"'{value}' is not {what}")
        return value

    return AfterValidator(check)


def _check_pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as error:
        raise ValueError(f"'{value}' is not a regular expression: {error}") from None
    return value


MetricName = Annotated[str, _matching(r"[a-zA-Z_:][a-zA-Z0-9_:]*", "a Prometheus metric name")]
LabelName = Annotated[str, _matching(r"[a-zA-Z_][a-zA-Z0-9_]*", "a Prometheus label name")]


class MetricsPage(RequestHeaders):
    """One side's Prometheus metrics page."""

    url: BaseUrl | None = Field(None, description="the page's full URL; the side's endpoint + /metrics when absent")

    def public_addresses(self) -> list[str]:
        return present(self.url)


class PassiveMetrics(StrictModel):
    """What the endpoints' own Prometheus metrics say about the traffic they served.

    Both pages are read after every analysis; the difference from the reading before is the
    interval's traffic. The defaults are vLLM's: ``vllm:request_success_total`` counts every
    finished request by ``finished_reason`` (stop, length, abort, error, repetition) and
    ``vllm:e2e_request_latency_seconds`` times them. A server instrumented by
    prometheus-fastapi-instrumentator: ``requests_counter: http_requests_total``,
    ``outcome_label: status``, ``success_values: 2xx``, ``latency_histogram:
    http_request_duration_seconds``, ``match_labels: {handler: /v1/completions}``.
    """

    old: MetricsPage = Field(default_factory=MetricsPage, description="the Fly side's page")
    new: MetricsPage = Field(default_factory=MetricsPage, description="the new side's page")
    requests_counter: MetricName = Field("vllm:request_success_total",
                                         description="counter of requests, every outcome: the interval's count")
    outcome_label: LabelName = Field("finished_reason", description="the counter's label that tells the outcome")
    success_values: Annotated[str, AfterValidator(_check_pattern)] = Field(
        "stop|length|repetition", description="regular expression (whole value, like PromQL =~) of the outcomes "
                                              "that count as successes")
    latency_histogram: MetricName = Field("vllm:e2e_request_latency_seconds",
                                          description="histogram of request latency in seconds")
    match_labels: dict[LabelName, str] = Field(default_factory=dict,
                                               description="only series with these label values count, e.g. "
                                                           "{model_name: llama}")
    timeout_seconds: float = Field(10.0, gt=0, le=3600)


class Thresholds(StrictModel):
    """When the new side passes. Defaults follow Flagger's web defaults; set inference ones explicitly."""

    min_requests: int = Field(20, ge=1, description="fewer requests on the new side -> Inconclusive")
    min_success_rate: float = Field(99.0, ge=0, le=100, description="percent of answers with an expected status")
    max_p95_ms: float | None = Field(None, gt=0)
    max_p99_ms: float | None = Field(500.0, gt=0)
    max_latency_ratio: float | None = Field(None, gt=0, description="highest new p95 / old p95")


class AnalysisSettings(StrictModel):
    interval_seconds: float = Field(60.0, gt=0, le=MAX_SECONDS)
    requests_per_probe: int = Field(20, ge=1, description="requests per probe, per endpoint, per analysis")
    concurrency: int = Field(4, ge=1, le=64)
    probes: list[Probe] = Field(default_factory=lambda: [Probe()],
                                description="active probes; [] judges by the metrics alone")
    metrics: PassiveMetrics | None = Field(None, description="passive metrics: each side's Prometheus page")
    router_analytics: bool = Field(False, description="passive: the requests the Cloudflare load balancer sent "
                                                      "each origin (GraphQL Analytics API; router kind cloudflare "
                                                      "with zone_id); counts only, no outcome or latency")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    failure_limit: int = Field(0, ge=0, description="failed analyses tolerated in a step; one more rolls back")
    inconclusive_limit: int = Field(0, ge=0,
                                    description="inconclusive analyses tolerated in a step; one more pauses")

    @model_validator(mode="after")
    def _something_to_judge(self) -> AnalysisSettings:
        if not self.probes and self.metrics is None:
            raise ValueError("analysis.probes is empty and analysis.metrics is not set: nothing would judge the "
                             "new side; add a probe or a metrics section")
        return self

    @property
    def passive(self) -> bool:
        """An analysis judges the traffic of the interval before it (metrics pages or router analytics)."""
        return self.metrics is not None or self.router_analytics


class CanaryStage(CredentialUser):
    provider = "probe"

    router: RouterConfig
    old_endpoint: BaseUrl = Field(description="base URL of the Fly service, e.g. https://app.fly.dev")
    new_endpoint: BaseUrl | None = Field(None, description="base URL of the new deployment; the deploy stage's "
                                                           "endpoint when absent")
    steps: list[CanaryStep] = Field(min_length=1)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)

    def public_addresses(self) -> list[str]:
        return present(self.old_endpoint, self.new_endpoint)

    @field_validator("steps")
    @classmethod
    def _weights_rise_to_100(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        weights = [step.weight for step in steps]
        for i in range(1, len(weights)):
            if weights[i] <= weights[i - 1]:
                raise ValueError(f"weights must rise strictly: steps[{i}].weight {weights[i]} "
                                 f"follows {weights[i - 1]} (weights: {weights})")
        if weights[-1] != 100:
            raise ValueError(f"the last step must move all traffic: steps[{len(weights) - 1}].weight is "
                             f"{weights[-1]}, not 100 (weights: {weights})")
        return steps

    @model_validator(mode="after")
    def _analytics_need_a_cloudflare_balancer(self) -> CanaryStage:
        if self.analysis.router_analytics and not (isinstance(self.router, CloudflareRouterConfig)
                                                   and self.router.zone_id is not None):
            raise ValueError("analysis.router_analytics reads Cloudflare Load Balancing analytics: it needs router "
                             "kind cloudflare with zone_id and load_balancer_id")
        return self


# --- results -------------------------------------------------------------------------------

class Verdict(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


class ProbeSample(Record):
    """One probe request: ``status`` is None when no answer came (timeout, refused, reset)."""

    status: int | None
    latency_ms: float
    ok: bool
    error: str | None = None


class SideStats(Record):
    requests: int
    successes: int | None = Field(description="None when the source does not tell outcomes (router analytics)")
    success_rate: float | None = Field(description="percent; None without requests")
    p50_ms: float | None = Field(description="latency percentiles: of successful probes, or of every request the "
                                             "metrics' histogram timed")
    p95_ms: float | None
    p99_ms: float | None


class MetricsSnapshot(Record):
    """One side's cumulative totals as its metrics page showed them at ``taken_at``."""

    taken_at: datetime
    requests: float
    successes: float
    bounds: list[float] = Field(description="the latency histogram's finite upper bounds in seconds, ascending")
    buckets: list[float] = Field(description="cumulative observations at each bound")
    count: float = Field(description="every observation (the +Inf bucket)")
    process_started: float | None = Field(None, description="process_start_time_seconds, when the page has it")


class MetricsSnapshots(Record):
    """Both sides' latest readings; a side is None until its page has been read."""

    old: MetricsSnapshot | None = None
    new: MetricsSnapshot | None = None


class PassiveAnalysis(Record):
    """The interval's traffic as the endpoints' metrics (or the router's analytics) counted it, judged like the
    probes."""

    verdict: Verdict
    old: SideStats | None = Field(description="None when the interval could not be measured on that side")
    new: SideStats | None
    seconds: float | None = Field(None, description="length of the new side's interval")
    reasons: list[str] = Field(default_factory=list)


class AnalysisResult(Record):
    """One analysis: the probes' numbers and, with a metrics section, the passive ones beside them.

    ``verdict`` is the worse of the two: Failed when either is Failed, else Inconclusive when
    either is, else Successful. ``reasons`` holds every source's, the passive ones prefixed
    ``metrics:`` or ``router:``.
    """

    verdict: Verdict
    old: SideStats | None = Field(description="the probes' numbers; None when the plan has no probes")
    new: SideStats | None
    reasons: list[str] = Field(default_factory=list)
    passive: PassiveAnalysis | None = None
    readings: MetricsSnapshots | None = Field(None, description="the metrics pages as read at the end of this "
                                                                "analysis: the workflow keeps them for the next")
    router: PassiveAnalysis | None = Field(None, description="the requests the router's analytics counted")


class AnalyticsWindow(Record):
    """The time span an analysis asks the router's analytics about, from the workflow's clock."""

    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return round((self.end - self.start).total_seconds(), 1)


class WeightState(Record):
    """Percent of traffic on each side; ``confirmed`` when read back from the router itself."""

    new_weight: int = Field(ge=0, le=100)
    old_weight: int = Field(ge=0, le=100)
    confirmed: bool

    @classmethod
    def split(cls, new_percent: int, confirmed: bool) -> WeightState:
        return cls(new_weight=new_percent, old_weight=100 - new_percent, confirmed=confirmed)

    @classmethod
    def from_shares(cls, new_share: float, old_share: float) -> WeightState:
        """Percentages from a router's raw weights, as read back; two zeros split evenly."""
        total = new_share + old_share
        new_percent = 50 if total == 0 else round(100 * new_share / total)
        return cls.split(new_percent, confirmed=True)


class WeightChange(Record):
    """What a weight change did: the split read back, the change in words, and how long clients may lag."""

    state: WeightState
    change: str
    propagation_seconds: int = Field(description="a DNS TTL, 0 when the router's change is immediate")


# --- the canary workflow's state -------------------------------------------------------------

class CanaryState(StrEnum):
    CHECKING = "checking"
    PROGRESSING = "progressing"
    WAITING_FOR_APPROVAL = "waiting_for_approval"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


class StepOutcome(StrEnum):
    PASSED = "passed"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


class StepRecord(Record):
    """One step as it ran: when its weight was in place, how its analyses went, how it ended."""

    index: int = Field(description="0-based index into the plan's steps")
    weight: int
    started_at: datetime
    applied_at: datetime | None = Field(None, description="when the weight was set (manual: approved as made)")
    ended_at: datetime | None = None
    outcome: StepOutcome | None = None
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    approved: bool = Field(False, description="the step's wait_for_approval gate was approved")

    @property
    def analyses(self) -> int:
        return self.successful + self.failed + self.inconclusive


class CanaryStatus(Record):
    """The canary as the migration's ``status`` query shows it; also the state a continued run resumes from."""

    state: CanaryState = CanaryState.CHECKING
    router: str
    new_endpoint: str
    steps_total: int
    step: int = Field(0, description="0-based index of the current step")
    weight: WeightState | None = Field(None, description="the split as last set or read back")
    change: str | None = Field(None, description="the router change of the current step, in words")
    propagation_seconds: int = Field(0, description="how long clients may keep the previous split (a DNS TTL)")
    approval: str | None = Field(None, description="what `approve canary` approves now; None when nothing waits")
    paused: bool = False
    promote_requested: bool = False
    step_failures: int = Field(0, description="failed analyses in this step, counted against failure_limit")
    step_inconclusives: int = Field(0, description="inconclusive analyses since the step began or was resumed, "
                                                   "counted against inconclusive_limit")
    last_analysis: AnalysisResult | None = None
    metrics_baseline: MetricsSnapshots | None = Field(None, description="the metrics pages' last readings, the "
                                                                        "start of the next analysis interval")
    analytics_since: datetime | None = Field(None, description="where the next interval of the router's "
                                                               "analytics starts")
    message: str | None = Field(None, description="why the canary paused, rolled back or was aborted")
    history: list[StepRecord] = Field(default_factory=list)

    def summary(self) -> str:
        """One line for the stage's detail in the status table."""
        split = "" if self.weight is None else (f"{self.weight.new_weight}% on the new side"
                                                f"{'' if self.weight.confirmed else ' (unconfirmed)'}")
        parts = [f"{self.state.value}: step {self.step + 1}/{self.steps_total}", split]
        analysis = self.last_analysis
        if analysis is not None:
            numbers = [] if analysis.new is None else [f"probes new {_side(analysis.new)}, old {_side(analysis.old)}"]
            if analysis.passive is not None:
                numbers.append(f"metrics new {_side(analysis.passive.new)}, old {_side(analysis.passive.old)}")
            if analysis.router is not None:
                numbers.append(f"router new {_side(analysis.router.new)}, old {_side(analysis.router.old)}")
            parts.append(f"last analysis {analysis.verdict.value}: {'; '.join(numbers)}")
        if self.approval is not None:
            parts.append(f"waiting for approval: {self.approval}")
        if self.message is not None:
            parts.append(self.message)
        return "; ".join(part for part in parts if part)


def _side(stats: SideStats | None) -> str:
    if stats is None:
        return "not measured"
    rate = "-" if stats.success_rate is None else f"{stats.success_rate}%"
    return f"{stats.requests} req {rate} ok p95 {stats.p95_ms} ms"


class CanaryInput(Record):
    """What the migration hands its canary child; ``progress`` is set when a run continues as new."""

    stage: CanaryStage = Field(description="the plan's canary section with new_endpoint resolved")
    migration_name: str
    progress: CanaryStatus | None = None


class CanaryResult(Record):
    """The final report of a completed canary, read by the teardown stage."""

    completed: bool
    new_weight: int
    old_weight: int
    client_base_url: str = Field(description="the base URL clients should use now: the new endpoint")
    routed_name: str | None = Field(None, description="the DNS name the router serves, which now leads to the "
                                                      "new endpoint (Route53 record); clients using it need no change")
    dns_ttl_seconds: int = Field(description="how long resolvers may still send clients to Fly; 0 when immediate")
    teardown_not_before: datetime = Field(description="when the last cached answer pointing at Fly expires")
    report: str
    history: list[StepRecord]
