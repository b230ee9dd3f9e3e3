"""The dated price and cold start table (``reference.toml``), a user's override file, and cost estimates.

A cost is a GPU price per hour times GPUs per instance times instances: at the plan's minimum
(what an idle service costs) and its maximum (what full load costs). Without a price for the
exact platform and GPU the estimate says "no price known" and gives no figure: a wrong number
would be worse than none.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import Field, ValidationError

from flyaway.models.base import StrictModel
from flyaway.models.deploy import FlyScaling, ServiceScaling
from flyaway.report.model import CostEstimate, ReferenceFigure

PROJECT_TABLE = Path(__file__).with_name("reference.toml")
HOURS_PER_MONTH = 730.0


class GpuPrice(StrictModel):
    platform: str
    gpu: str
    names: list[str] = Field(default_factory=list, description="other spellings of the GPU in plans")
    usd_per_hour: float = Field(gt=0)
    approximate: bool = False
    as_of: str = Field(min_length=1)
    source: str = Field(min_length=1)

    def matches(self, platform: str, gpu: str) -> bool:
        return platform == self.platform and gpu.lower() in {self.gpu.lower(), *(n.lower() for n in self.names)}


class ReferenceTable(StrictModel):
    price: list[GpuPrice] = Field(default_factory=list)
    cold_start: list[ReferenceFigure] = Field(default_factory=list)

    def price_of(self, platform: str, gpu: str) -> GpuPrice | None:
        return next((entry for entry in self.price if entry.matches(platform, gpu)), None)

    def cold_start_of(self, platform: str) -> ReferenceFigure | None:
        return next((entry for entry in self.cold_start if entry.platform == platform), None)

    def merged(self, override: ReferenceTable) -> ReferenceTable:
        """The override's entries first (they win), then this table's entries it does not replace."""
        prices = override.price + [p for p in self.price if not override.price_of(p.platform, p.gpu)]
        starts = override.cold_start + [c for c in self.cold_start if not override.cold_start_of(c.platform)]
        return ReferenceTable(price=prices, cold_start=starts)


class PriceFileError(ValueError):
    """A price file that cannot be read; the message names the file and what to fix."""


def read_table(path: Path) -> ReferenceTable:
    try:
        return ReferenceTable.model_validate(tomllib.loads(path.read_text()))
    except OSError as error:
        raise PriceFileError(f"{path}: cannot read it ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise PriceFileError(f"{path}: not TOML: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise PriceFileError(f"{path}: {where}: {first['msg']}; see {PROJECT_TABLE.name} for the shape") from None


def load_table(override: Path | None = None) -> ReferenceTable:
    """The project's table, with the user's file (if any) over it."""
    table = read_table(PROJECT_TABLE)
    return table.merged(read_table(override)) if override is not None else table


def _price_of_any(table: ReferenceTable, platform: str, gpu: str) -> tuple[GpuPrice | None, str | None]:
    """The price of ``gpu`` (RunPod: the dearest of its comma separated pools, so the estimate is an upper
    bound), or None and which GPU has no price."""
    found: list[GpuPrice] = []
    for name in (part.strip() for part in gpu.split(",")):
        price = table.price_of(platform, name)
        if price is None:
            return None, name
        found.append(price)
    return max(found, key=lambda price: price.usd_per_hour), None


def estimate(table: ReferenceTable, side: str, platform: str, gpu: str | None, gpus: int, min_instances: int,
             max_instances: int | None, idle_timeout_seconds: float | None = None) -> CostEstimate:
    cost = CostEstimate(side=side, platform=platform, gpu=gpu, gpus_per_instance=gpus, min_instances=min_instances,
                        max_instances=max_instances, idle_timeout_seconds=idle_timeout_seconds)
    if gpu is None:
        cost.note = f"no price known: the {side}'s GPU is not known"
        return cost
    price, missing = _price_of_any(table, platform, gpu)
    if price is None:
        cost.note = f"no price known for {missing} on {platform}; add it with --prices FILE"
        return cost
    hourly = price.usd_per_hour * gpus
    cost.usd_per_gpu_hour, cost.approximate = price.usd_per_hour, price.approximate
    cost.price_as_of, cost.price_source = price.as_of, price.source
    cost.per_hour_min = round(hourly * min_instances, 4)
    cost.per_month_min = round(hourly * min_instances * HOURS_PER_MONTH, 2)
    if max_instances is not None:
        cost.per_hour_max = round(hourly * max_instances, 4)
        cost.per_month_max = round(hourly * max_instances * HOURS_PER_MONTH, 2)
    if min_instances == 0 and idle_timeout_seconds:
        cost.per_wake_from_zero = round(hourly * idle_timeout_seconds / 3600, 4)
    return cost


def target_cost(table: ReferenceTable, platform: str, scaling: ServiceScaling) -> CostEstimate:
    return estimate(table, "target", platform, scaling.gpu, scaling.gpus_per_instance, scaling.min_instances,
                    scaling.max_instances, scaling.idle_timeout_seconds)


def fly_cost(table: ReferenceTable, fly: FlyScaling | None, scaling: ServiceScaling) -> CostEstimate:
    """The Fly app at the same instance counts and idle time as the plan's target, with its own GPU."""
    gpu = fly.gpu if fly is not None else None
    gpus = fly.gpus_per_machine if fly is not None and fly.gpus_per_machine else 1
    cost = estimate(table, "fly", "fly", gpu, gpus, scaling.min_instances, scaling.max_instances,
                    scaling.idle_timeout_seconds)
    if fly is None:
        cost.note = "no price known: the Fly app's GPU is not known (the deploy section names no fly_toml)"
    return cost
