"""Judge the new side from probe samples of both sides: a pure function, no I/O.

Order of judgement: too few requests on the new side is Inconclusive (never Successful);
any threshold broken is Failed; a latency ratio that cannot be computed because the old side
gave too few answers is Inconclusive; otherwise Successful. Latency percentiles are taken
over successful requests; failed ones count against the success rate instead.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from flyaway.models.canary import AnalysisResult, ProbeSample, SideStats, Thresholds, Verdict


def _percentiles(latencies: list[float]) -> tuple[float | None, float | None, float | None]:
    if not latencies:
        return None, None, None
    if len(latencies) == 1:
        return latencies[0], latencies[0], latencies[0]
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def side_stats(samples: Sequence[ProbeSample]) -> SideStats:
    latencies = [sample.latency_ms for sample in samples if sample.ok]
    p50, p95, p99 = _percentiles(latencies)
    rounded = [None if value is None else round(value, 1) for value in (p50, p95, p99)]
    return SideStats(requests=len(samples), successes=len(latencies),
                     success_rate=round(100 * len(latencies) / len(samples), 2) if samples else None,
                     p50_ms=rounded[0], p95_ms=rounded[1], p99_ms=rounded[2])


def _broken_thresholds(new: SideStats, old: SideStats, thresholds: Thresholds) -> list[str]:
    reasons = []
    if new.success_rate is not None and new.success_rate < thresholds.min_success_rate:
        reasons.append(f"success rate {new.success_rate}% is below min_success_rate {thresholds.min_success_rate}% "
                       f"({new.successes}/{new.requests})")
    for name, value, limit in (("p95", new.p95_ms, thresholds.max_p95_ms), ("p99", new.p99_ms, thresholds.max_p99_ms)):
        if value is not None and limit is not None and value > limit:
            reasons.append(f"{name} latency {value} ms is above max_{name}_ms {limit} ms")
    ratio = _latency_ratio(new, old, thresholds)
    if ratio is not None and thresholds.max_latency_ratio is not None and ratio > thresholds.max_latency_ratio:
        reasons.append(f"p95 latency is {ratio:.2f}x the old side's ({new.p95_ms} vs {old.p95_ms} ms), "
                       f"above max_latency_ratio {thresholds.max_latency_ratio}")
    return reasons


def _latency_ratio(new: SideStats, old: SideStats, thresholds: Thresholds) -> float | None:
    """new p95 / old p95, when both sides have enough successful answers to say."""
    if old.successes < thresholds.min_requests or new.p95_ms is None or not old.p95_ms:
        return None
    return new.p95_ms / old.p95_ms


def analyse(old_samples: Sequence[ProbeSample], new_samples: Sequence[ProbeSample],
            thresholds: Thresholds) -> AnalysisResult:
    old, new = side_stats(old_samples), side_stats(new_samples)

    def result(verdict: Verdict, reasons: list[str]) -> AnalysisResult:
        return AnalysisResult(verdict=verdict, old=old, new=new, reasons=reasons)

    if new.requests < thresholds.min_requests:
        return result(Verdict.INCONCLUSIVE, [f"new side had {new.requests} requests, fewer than "
                                             f"min_requests {thresholds.min_requests}"])
    broken = _broken_thresholds(new, old, thresholds)
    if broken:
        return result(Verdict.FAILED, broken)
    if thresholds.max_latency_ratio is not None and _latency_ratio(new, old, thresholds) is None:
        return result(Verdict.INCONCLUSIVE, [f"old side gave {old.successes} successful answers, fewer than "
                                             f"min_requests {thresholds.min_requests}: no latency ratio to judge"])
    return result(Verdict.SUCCESSFUL, [])
