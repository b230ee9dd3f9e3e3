"""Active probes: the plan's requests sent to an endpoint, timed, with their status kept.

A request that gets no answer (timeout, refused, reset) is a sample too, a failed one: an
endpoint that cannot be reached is worse, not unknown. Transport errors are therefore never
retried here.
"""

from __future__ import annotations

import asyncio
import os
import time

import httpx

from flyaway.errors import MissingCredentials
from flyaway.models.canary import AnalysisSettings, Probe, ProbeSample, RequestHeaders
from flyaway.redaction import register_secret, scrub


def _secret_from_env(env: str, header: str, what: str) -> str:
    value = os.environ.get(env)
    if not value:
        raise MissingCredentials(f"{what} header '{header}': ${env} is not set on the worker")
    register_secret(value)
    return value


def request_headers(spec: RequestHeaders, what: str) -> dict[str, str]:
    """The headers of a probe or a metrics page (``what``), the ones named by environment variable filled in."""
    headers = dict(spec.headers)
    for header, env in spec.headers_from_env.items():
        headers[header] = _secret_from_env(env, header, what)
    if spec.bearer_token_env:
        headers["Authorization"] = "Bearer " + _secret_from_env(spec.bearer_token_env, "Authorization", what)
    return headers


async def _one(client: httpx.AsyncClient, url: str, probe: Probe, headers: dict[str, str]) -> ProbeSample:
    body = {"content": probe.body} if isinstance(probe.body, str) else {"json": probe.body}
    started = time.perf_counter()
    try:
        response = await client.request(probe.method, url, headers=headers, **body)
    except httpx.HTTPError as exc:
        elapsed_ms = (time.perf_counter() - started) * 1000
        return ProbeSample(status=None, latency_ms=elapsed_ms, ok=False,
                           error=f"{type(exc).__name__}: {scrub(str(exc))}")
    elapsed_ms = (time.perf_counter() - started) * 1000
    return ProbeSample(status=response.status_code, latency_ms=elapsed_ms,
                       ok=response.status_code in probe.expected_status)


async def probe_endpoint(base_url: str, probe: Probe, n: int, concurrency: int) -> list[ProbeSample]:
    """Send ``probe`` ``n`` times to ``base_url``, at most ``concurrency`` at once."""
    headers = request_headers(probe, "probe")
    url = base_url.rstrip("/") + probe.path
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def gated(client: httpx.AsyncClient) -> ProbeSample:
        async with gate:
            return await _one(client, url, probe, headers)

    async with httpx.AsyncClient(timeout=probe.timeout_seconds, limits=limits) as client:
        return list(await asyncio.gather(*(gated(client) for _ in range(n))))


async def probe_both(old_endpoint: str, new_endpoint: str,
                     settings: AnalysisSettings) -> tuple[list[ProbeSample], list[ProbeSample]]:
    """Every probe of the plan against both endpoints at the same time: (old samples, new samples)."""
    old: list[ProbeSample] = []
    new: list[ProbeSample] = []
    for probe in settings.probes:
        old_samples, new_samples = await asyncio.gather(
            probe_endpoint(old_endpoint, probe, settings.requests_per_probe, settings.concurrency),
            probe_endpoint(new_endpoint, probe, settings.requests_per_probe, settings.concurrency))
        old.extend(old_samples)
        new.extend(new_samples)
    return old, new
