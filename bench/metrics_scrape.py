#!/usr/bin/env python3
"""Benchmark: one scrape of the agent's /metrics at N running containers, against reading the same
cgroup files directly (issue 6: median of 20, target ratio <= 3), and the payload size.

What is timed
-------------
N containers (default 100) run ``/bin/sleep 3600`` (image ``host``), each in a pod of its own,
with a 32Mi memory and a 100m CPU limit (so every series cAdvisor has for a limited container
is there, CFS included), under a unique cgroup root ``orch-bench-<random>``, started by a
``Runtime`` in a temporary state dir. The agent's metrics registry is built as the agent builds
it (``AgentMetrics`` + ``ContainerCollector(runtime.list, runtime.driver, runtime.pod_cgroup,
supervisors=count_supervisors)``) and served by ``serve_metrics`` on 127.0.0.1.

* ``scrape`` (**headline**): an HTTP GET of ``/metrics`` through that endpoint as Prometheus
  2.x asks for it (``Accept`` preferring OpenMetrics — the agent answers in the text format,
  as kubelet does — and ``Accept-Encoding: gzip``), from sending the request to the last byte
  of the body: what Prometheus waits for. It lists the containers (``Runtime.list``), reads
  every container's and every pod's cgroup files, each pod's ``/proc/<pid>/net/dev``, counts
  the supervisors, renders and compresses (prometheus_client's gzip, level 9).
* ``scrape_text``: the same GET asking for the classic text format (0.0.4), uncompressed,
  as ``curl`` or ``promtool`` would.
* ``direct`` (the reference): the same cgroup files (``CgroupDriver.stat_files`` of every
  container cgroup and every pod cgroup) read with plain ``open(path).read()`` in a loop,
  no parsing, no listing.

The two alternate ABBA (scrape, direct, direct, scrape, ...) after ``--warmup`` rounds, so
machine noise hits both alike. For the breakdown, also alternated and timed in-process:
``generate_latest(registry)`` (the scrape without HTTP) and ``Runtime.list()`` alone.

Payload: bytes of the body as served, and gzip-compressed (Prometheus asks for gzip).

Cleanup (also on failure / Ctrl-C / SIGTERM): the HTTP server is stopped,
``Runtime.cleanup_all`` (containers, monitors, fork server, sandboxes, cgroups), the cgroup
root, the temp dir. Then it checks that no cgroup named after this run, no process and no
mount of the run is left; a leftover makes the exit status 1.

Usage::

    .venv/bin/python bench/metrics_scrape.py                     # 100 containers, 20 scrapes (~30 s)
    .venv/bin/python bench/metrics_scrape.py --containers 50 --scrapes 40 --json
"""

from __future__ import annotations

import argparse
import gzip
import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.stats import (  # noqa: E402
    BenchFailure,
    print_ending,
    raise_on_sigterm,
    ratio,
    record_failure,
    report,
    summary,
    uninterruptible,
)

MiB = 1024 * 1024
TARGET = 3.0


def progress(msg: str) -> None:
    print(f"[metrics_scrape] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the sides


#: What Prometheus 2.x sends (scrape.acceptHeader), and its Accept-Encoding.
PROMETHEUS_HEADERS = {
    "Accept": ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
               "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    "Accept-Encoding": "gzip",
}
TEXT_HEADERS = {"Accept": "text/plain;version=0.0.4"}


def http_scrape(url: str, headers: dict[str, str]) -> tuple[float, bytes, str]:
    """Seconds from sending the request to the body's last byte; the body as sent; its Content-Type."""
    request = urllib.request.Request(url, headers=headers)
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as resp:
        body = resp.read()
        content_type = resp.headers.get("Content-Type", "")
    return time.perf_counter() - t0, body, content_type


def direct_read(files: list[str]) -> float:
    """The reference: every file read with plain open().read(); a file gone meanwhile is skipped."""
    t0 = time.perf_counter()
    for path in files:
        try:
            with open(path) as f:
                f.read()
        except FileNotFoundError:
            continue
    return time.perf_counter() - t0


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- leftovers


def cgroup_dirs_named(token: str, maxdepth: int = 3) -> list[Path]:
    out: list[Path] = []
    frontier = [Path("/sys/fs/cgroup")]
    for _ in range(maxdepth):
        nxt = []
        for d in frontier:
            try:
                for e in os.scandir(d):
                    if e.is_dir(follow_symlinks=False):
                        nxt.append(Path(e.path))
                        if token in e.name:
                            out.append(Path(e.path))
            except OSError:
                continue
        frontier = nxt
    return out


def leftovers(tmp: Path, token: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"cgroups": [str(p) for p in cgroup_dirs_named(token)], "processes": [],
                                   "mounts": [], "files": []}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            groups = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        if str(tmp) in cmd or token in groups:
            found["processes"].append(f"{entry}: {cmd.strip()[:160]}")
    found["mounts"] = [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if str(tmp) in m]
    if tmp.exists():
        found["files"].append(str(tmp))
    return found


# --------------------------------------------------------------------------- run


def start_containers(rt: Any, n: int) -> list[str]:
    from agent.runtime.runtime import ContainerConfig, ContainerStatus

    ids = []
    for i in range(n):
        cfg = ContainerConfig(
            id=secrets.token_hex(16), pod_uid=secrets.token_hex(8), pod_namespace="bench", pod_name=f"sleeper-{i}",
            name="sleep", image="host", argv=["/bin/sleep", "3600"], env={}, working_dir="", hostname=f"sleeper-{i}",
            memory_limit_bytes=32 * MiB, cpu_limit_millis=100, cpu_request_millis=100, pids_limit=None)
        st = rt.start(cfg)
        if st.status != ContainerStatus.RUNNING:
            raise BenchFailure(f"container {i} ({cfg.id}) is {st.status}: {st.reason} {st.message}")
        ids.append(cfg.id)
        if (i + 1) % 25 == 0:
            progress(f"{i + 1}/{n} containers running")
    return ids


def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"args": vars(args).copy(), "failures": [], "samples": [], "notes": []}
    t_start = time.monotonic()
    token = f"orch-bench-{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{token}-"))
    res["cgroup_root"] = token
    rt = None
    server = thread = None
    interrupted = False
    try:
        from prometheus_client import generate_latest

        from agent.metrics import (
            AgentMetrics,
            ContainerCollector,
            count_supervisors,
            serve_metrics,
        )
        from agent.runtime.runtime import Runtime

        rt = Runtime(tmp / "state", token)
        res["driver"] = repr(rt.driver)
        progress(f"starting {args.containers} containers under cgroup root {token}")
        start_containers(rt, args.containers)
        runtime = rt
        metrics = AgentMetrics()
        metrics.registry.register(ContainerCollector(runtime.list, runtime.driver, runtime.pod_cgroup,
                                                     supervisors=lambda: count_supervisors(runtime.state_dir)))
        server, thread = serve_metrics(metrics.registry, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"

        states = rt.list()
        cgroups = [st.cgroup for st in states] + sorted({rt.pod_cgroup(st.config.pod_uid) for st in states})
        files = [f for cg in cgroups for f in rt.driver.stat_files(cg)]
        res["cgroups_read"] = len(cgroups)
        res["files_read"] = len(files)

        _, body, _ = http_scrape(url, TEXT_HEADERS)
        _, compressed, content_type = http_scrape(url, PROMETHEUS_HEADERS)
        res["payload_bytes"] = len(body)
        res["payload_prometheus_bytes"] = len(compressed)
        res["payload_prometheus_type"] = content_type
        if len(gzip.decompress(compressed)) < len(body) // 2:
            raise BenchFailure("the OpenMetrics+gzip answer is not a whole scrape")
        res["series"] = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        if body.count(b'container="sleep"') < args.containers:
            raise BenchFailure("the scrape does not show every container")

        sides = {"scrape": lambda: http_scrape(url, PROMETHEUS_HEADERS)[0],
                 "scrape_text": lambda: http_scrape(url, TEXT_HEADERS)[0],
                 "direct": lambda: direct_read(files),
                 "generate_latest": lambda: timed(lambda: generate_latest(metrics.registry)),
                 "runtime_list": lambda: timed(runtime.list)}
        total = args.warmup + args.scrapes
        progress(f"{args.warmup} warm-up + {args.scrapes} measured rounds, ABBA")
        for i in range(total):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            for side in order:
                res["samples"].append({"side": side, "seconds": sides[side](), "round": i,
                                       "warmup": i < args.warmup})
    except BaseException as e:  # noqa: BLE001 - recorded; cleanup and the report still happen
        interrupted = record_failure(e, res["failures"])
    finally:
        with uninterruptible():
            progress("cleaning up")
            if server is not None and thread is not None:
                from agent.metrics import stop_metrics

                stop_metrics(server, thread)
            try:
                if rt is not None:
                    rt.cleanup_all()
                from agent.runtime.cgroups import detect_driver

                detect_driver().remove(token)
            except Exception as e:  # noqa: BLE001
                res["failures"].append(f"cleanup: {e}")
            shutil.rmtree(tmp, ignore_errors=True)
            res["leftovers"] = leftovers(tmp, token)
            for what, items in res["leftovers"].items():
                if items:
                    res["failures"].append(f"left behind: {what}: {items}")
    res["interrupted"] = interrupted
    res["total_s"] = time.monotonic() - t_start
    return res


def build_report(res: dict[str, Any]) -> dict[str, Any]:
    meas = [s for s in res["samples"] if not s["warmup"]]
    stats = {side: summary([s["seconds"] for s in meas if s["side"] == side])
             for side in ("scrape", "scrape_text", "direct", "generate_latest", "runtime_list")}
    headline = ratio(stats["scrape"].get("p50", float("nan")), stats["direct"].get("p50", float("nan")))
    return {"stats": stats, "ratio_p50": headline,
            "ratio_text_p50": ratio(stats["scrape_text"].get("p50", float("nan")),
                                    stats["direct"].get("p50", float("nan"))),
            "target": {"what": f"p50 scrape / p50 direct <= {TARGET}", "met": bool(headline <= TARGET)},
            **{k: res.get(k) for k in ("payload_bytes", "payload_prometheus_bytes", "payload_prometheus_type",
                                       "series", "cgroups_read",
                                       "files_read", "driver", "cgroup_root", "notes", "failures", "leftovers",
                                       "total_s", "args", "samples")}}


def print_table(rep: dict[str, Any]) -> None:
    def ms(v: Any) -> str:
        return "     -" if v is None else f"{v * 1000:8.2f}"

    a = rep["args"]
    print(f"Agent /metrics at {a['containers']} running containers ({a['containers']} pods), driver {rep['driver']}")
    print(f"reads {rep['cgroups_read']} cgroups ({rep['files_read']} files) per scrape; {rep['series']} series")
    print(f"payload: {rep['payload_bytes']} bytes as text 0.0.4; {rep['payload_prometheus_bytes']} bytes as "
          f"Prometheus gets it ({rep['payload_prometheus_type']}, gzip)")
    print()
    print(f"{'ms':44}{'n':>4}{'min':>9}{'p50':>9}{'mean':>9}{'p99':>9}{'max':>9}")
    labels = {"scrape": "scrape: GET /metrics as Prometheus  [*]",
              "scrape_text": "scrape: GET /metrics, text, no gzip",
              "direct": "direct: open().read() of the same files",
              "generate_latest": "  generate_latest(registry), no HTTP",
              "runtime_list": "  of which Runtime.list()"}
    for key, label in labels.items():
        s = rep["stats"][key]
        print(f"{label:44}{s.get('n', 0):>4}" + "".join(f"{ms(s.get(q)):>9}"
                                                          for q in ("min", "p50", "mean", "p99", "max")))
    r = rep["ratio_p50"]
    print()
    if r is None:
        print("ratio: no data")
    else:
        print(f"[*] ratio scrape / direct at p50: {r:.2f}  (target <= {TARGET}: "
              f"{'MET' if rep['target']['met'] else 'NOT MET'}); "
              f"text without gzip: {rep['ratio_text_p50']:.2f}")
    print_ending(rep)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--containers", type=int, default=100, help="running containers, one pod each (default 100)")
    p.add_argument("--scrapes", type=int, default=20, help="measured rounds per side (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up rounds, not counted (default 2)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    args = p.parse_args(argv)
    if args.containers < 1 or args.scrapes < 1 or args.warmup < 0:
        p.error("--containers and --scrapes must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("error: needs root (namespaces, cgroups, mounts)", file=sys.stderr)
        return 1
    raise_on_sigterm()
    res = run(args)
    return report(build_report(res), args.json, print_table, interrupted=res["interrupted"],
                  failed=bool(res["failures"]))


if __name__ == "__main__":
    sys.exit(main())
