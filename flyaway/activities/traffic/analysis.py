"""Judge the new side from its numbers and the old side's: pure functions, no I/O.

Order of judgement: too few requests on the new side is Inconclusive (never Successful);
any threshold broken is Failed; a latency ratio that cannot be computed because the old side
gave too few answers is Inconclusive; otherwise Successful. The same judgement serves both
sources of numbers: probe samples (latency percentiles over successful probes; failed ones
count against the success rate instead) and the endpoints' own metrics (see ``metrics``).
When a plan has both, the analysis takes the worse verdict of the two.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from flyaway.models.canary import (
    AnalysisResult,
    MetricsSnapshots,
    PassiveAnalysis,
    ProbeSample,
    SideStats,
    Thresholds,
    Verdict,
)

#: worse verdicts first: the order in which two sources' verdicts combine
_SEVERITY = (Verdict.FAILED, Verdict.INCONCLUSIVE, Verdict.SUCCESSFUL)


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
    return stats_of(len(samples), len(latencies), p50, p95, p99)


def stats_of(requests: int, successes: int, p50: float | None, p95: float | None, p99: float | None) -> SideStats:
    """Counts and percentiles (ms) rounded for the status: rate to 0.01 %, latencies to 0.1 ms."""
    rounded = [None if value is None else round(value, 1) for value in (p50, p95, p99)]
    return SideStats(requests=requests, successes=successes,
                     success_rate=round(100 * successes / requests, 2) if requests else None,
                     p50_ms=rounded[0], p95_ms=rounded[1], p99_ms=rounded[2])


def _broken_thresholds(new: SideStats, old: SideStats | None, thresholds: Thresholds) -> list[str]:
    reasons = []
    if new.success_rate is not None and new.success_rate < thresholds.min_success_rate:
        reasons.append(f"success rate {new.success_rate}% is below min_success_rate {thresholds.min_success_rate}% "
                       f"({new.successes}/{new.requests})")
    for name, value, limit in (("p95", new.p95_ms, thresholds.max_p95_ms), ("p99", new.p99_ms, thresholds.max_p99_ms)):
        if value is not None and limit is not None and value > limit:
            reasons.append(f"{name} latency {value} ms is above max_{name}_ms {limit} ms")
    ratio = _latency_ratio(new, old, thresholds)
    if ratio is not None and thresholds.max_latency_ratio is not None and ratio > thresholds.max_latency_ratio:
        assert old is not None
        reasons.append(f"p95 latency is {ratio:.2f}x the old side's ({new.p95_ms} vs {old.p95_ms} ms), "
                       f"above max_latency_ratio {thresholds.max_latency_ratio}")
    return reasons


def _latency_ratio(new: SideStats, old: SideStats | None, thresholds: Thresholds) -> float | None:
    """new p95 / old p95, when both sides have enough successful answers to say."""
    if old is None or new.p95_ms is None or not old.p95_ms or (old.successes or 0) < thresholds.min_requests:
        return None
    return new.p95_ms / old.p95_ms


def judge(new: SideStats, old: SideStats | None, thresholds: Thresholds) -> tuple[Verdict, list[str]]:
    """The verdict on the new side and its reasons; ``old`` is None when that side was not measured."""
    if new.requests < thresholds.min_requests:
        return Verdict.INCONCLUSIVE, [f"new side had {new.requests} requests, fewer than "
                                      f"min_requests {thresholds.min_requests}"]
    broken = _broken_thresholds(new, old, thresholds)
    if broken:
        return Verdict.FAILED, broken
    if thresholds.max_latency_ratio is not None and _latency_ratio(new, old, thresholds) is None:
        answers = "was not measured" if old is None else f"gave {old.successes} successful answers"
        return Verdict.INCONCLUSIVE, [f"old side {answers}, fewer than min_requests {thresholds.min_requests}: "
                                      "no latency ratio to judge"]
    return Verdict.SUCCESSFUL, []


def analyse(old_samples: Sequence[ProbeSample], new_samples: Sequence[ProbeSample],
            thresholds: Thresholds) -> AnalysisResult:
    """The probes' verdict on the new side."""
    old, new = side_stats(old_samples), side_stats(new_samples)
    verdict, reasons = judge(new, old, thresholds)
    return AnalysisResult(verdict=verdict, old=old, new=new, reasons=reasons)


def combine(probes: AnalysisResult | None, passive: PassiveAnalysis | None,
            readings: MetricsSnapshots | None, router: PassiveAnalysis | None = None) -> AnalysisResult:
    """One analysis from the probes', the metrics' and the router analytics' results (at least one of them):
    the worse verdict wins."""
    results = [result for result in (probes, passive, router) if result is not None]
    assert results, "an analysis has probes, metrics or both"
    verdict = min((result.verdict for result in results), key=_SEVERITY.index)
    reasons = (probes.reasons if probes else []) + [
        f"{source}: {reason}" for source, result in (("metrics", passive), ("router", router)) if result
        for reason in result.reasons]
    return AnalysisResult(verdict=verdict, old=probes.old if probes else None, new=probes.new if probes else None,
                          reasons=reasons, passive=passive, readings=readings, router=router)
