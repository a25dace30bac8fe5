"""Statistics every benchmark here prints: percentiles, a summary row, ratios, JSON."""

from __future__ import annotations

import math
import statistics
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default). ``q`` in [0, 100]."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "p50": percentile(values, 50),
            "mean": statistics.fmean(values), "p99": percentile(values, 99), "max": max(values)}


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is missing (so a table shows a gap, not a fake figure)."""
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def json_safe(x: Any) -> Any:
    """NaN (a missing figure) as null, recursively: JSON has no NaN."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x
