"""Statistics every benchmark here prints: percentiles, a summary row, ratios, JSON;
and what they share around a run: its failures recorded, a cleanup no signal cuts
short, SIGTERM as Ctrl-C, the report and the exit status."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import statistics
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any


class BenchFailure(Exception):
    """The run cannot go on; the message says why, and the run is reported as failed."""


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


def raise_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so a benchmark's cleanup runs either way."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def print_ending(rep: dict[str, Any]) -> None:
    """The last lines of every benchmark's table: its duration, what it left behind, its failures."""
    print(f"total {rep['total_s']:.1f} s")
    left = {k: v for k, v in (rep.get("leftovers") or {}).items() if v}
    print("leftovers: none" if not left else f"LEFTOVERS: {left}")
    for failure in rep["failures"]:
        print(f"FAILURE: {failure}")


def report(rep: dict[str, Any], as_json: bool, print_table: Callable[[dict[str, Any]], None], *,
           interrupted: bool, failed: bool) -> int:
    """Print the report (JSON, or the benchmark's table); the exit status: 130 when
    interrupted, 1 after a failure or anything left behind, else 0."""
    rep = json_safe(rep)
    if as_json:
        json.dump(rep, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(rep)
    if interrupted:
        return 130
    return 1 if failed else 0


def record_failure(e: BaseException, failures: list[str]) -> bool:
    """In a benchmark's ``except BaseException``: note why the run stopped in ``failures``
    (with the traceback on stderr when it was not a ``BenchFailure``), so that cleanup and
    the report still happen. Returns whether it was interrupted (Ctrl-C or SIGTERM);
    anything else that is not an Exception (SystemExit) goes on up."""
    if isinstance(e, KeyboardInterrupt):
        failures.append("interrupted (Ctrl-C / SIGTERM)")
        return True
    if not isinstance(e, Exception):
        raise e
    if isinstance(e, BenchFailure):
        failures.append(str(e))
    else:
        failures.append(f"{type(e).__name__}: {e}")
        traceback.print_exception(e, file=sys.stderr)
    return False


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """SIGINT and SIGTERM ignored while the body runs: a cleanup is not cut short by a second Ctrl-C."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
