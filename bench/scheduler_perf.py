#!/usr/bin/env python3
"""Benchmark: scheduling throughput, kube-scheduler's ``scheduler_perf`` SchedulingBasic
5000Nodes_10000Pods, against the raw rate of single-key etcd transactions on the same etcd.

The workload (as ``test/integration/scheduler_perf/misc/performance-config.yaml``)
---------------------------------------------------------------------------------
* A real etcd (``tests/etcd_fixture.etcd_binary``), data dir in this run's temp dir, client and
  peer ports on loopback.
* ``--nodes`` (5000) Node objects written straight into etcd (no agents: nodes are only objects,
  as scheduler_perf's are), shaped like scheduler_perf's ``makeBaseNode``: capacity and
  allocatable ``cpu: 4``, ``memory: 32Gi``, ``pods: 110``, condition ``Ready=True``, the
  ``kubernetes.io/hostname`` label.
* The real scheduler as a separate process: ``python -m scheduler.main --etcd … --insecure
  --leader-elect true`` (the default; ``--leader-elect false`` to run without the election and its fenced
  writes), ``--node-monitor-grace-period`` far beyond the run so the node lifecycle controller
  leaves the agent-less nodes Ready (scheduler_perf runs no such controller).
* ``--init-pods`` (1000) pods created, then waited for until all are bound; then ``--pods``
  (10000) measured pods created as fast as the store takes them: scheduler_perf's
  ``pod-default.yaml`` (one ``pause`` container, requests = limits = ``cpu: 100m``,
  ``memory: 500Mi``, port 80), validated and admitted as ``Registry.apply`` would (before the
  clock starts), then written with ``Store.write`` in transactions of ``--batch`` (50) pods,
  ``--create-workers`` (4) transactions in flight.

What is measured
----------------
A watch on the pods' prefix, opened before the first pod is created, stamps every event with
``time.monotonic()`` when it arrives: a pod's creation (key version 1) and its first version with
``spec.nodeName`` (its binding, as persisted in etcd).

* **throughput**: like scheduler_perf's throughput collector, the measured pods bound in each
  1-second window from the start of the measured pods' creation to the last binding (the last,
  partial window left out): the average and p50/p90/p99 of those per-second rates; and the
  overall rate (pods bound / (last binding − creation start)).
* **scheduling-attempt latency**: orch has no metrics endpoint, so from the scheduler's own log:
  it logs ``bound pod NS/NAME to node N`` after each binding transaction returns, and its loop
  tries pods one after another, so the gap between two consecutive bindings of measured pods is
  the time one attempt took (filter and score over every node, the binding transaction, and
  whatever else the process did meanwhile: informer events, the event writer, controllers). The
  log stamps have millisecond resolution. Also printed: the end-to-end latency per pod, creation
  seen → binding seen on the watch (kube's ``pod_scheduling_sli_duration``; in a burst mostly
  time spent waiting in the queue).
* **persistence**: at the end every pod is listed from etcd; every binding the watch saw must be
  there with the same node, the number of bound pods must match, and the node allocation ledgers
  must hold exactly the bound pods, no node over its allocatable.
* **memory**: the scheduler process's ``VmHWM`` (peak RSS) from ``/proc/<pid>/status``, read just
  before it is stopped. Target < 1 GiB.
* **CPU**: the scheduler's and etcd's CPU seconds (``/proc/<pid>/stat``) during the measured
  phase, as a share of the wall time: is the scheduler CPU-bound?

The reference
-------------
In the same run, against the same etcd: ``--ref-callers`` (64) concurrent callers on one
``aetcd`` client, each repeating a single-key transaction like a binding — compare the key's
mod_revision, put a pod-sized value — on a key of its own (under a prefix of this run, removed
afterwards), for ``--ref-seconds`` (10) after a 1 s warm-up. Run twice: after the nodes are
written, before the scheduler starts, and after the scheduler was stopped; the ratio uses the
mean of the two.

    ratio = scheduler pods/s (average of per-second rates) / raw txn/s     (target >= 0.10)

``--timeout`` (seconds, for the init and measured phases together) stops waiting and reports
whatever was bound by then, so a slow scheduler still yields figures.

Cleanup (also on failure / Ctrl-C / SIGTERM): the scheduler (SIGTERM, then SIGKILL, by its PID),
etcd (SIGKILL by its PID), the temp dir. Then it checks that neither process exists any more and
no process mentions the temp dir or the ports; a leftover makes the exit status 1.

Usage::

    .venv/bin/python bench/scheduler_perf.py                      # 5000 nodes, 1000 + 10000 pods
    .venv/bin/python bench/scheduler_perf.py --nodes 1000 --init-pods 200 --pods 2000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.stats import (  # noqa: E402
    BenchFailure, percentile, print_ending, raise_on_sigterm, ratio, record_failure, report, summary,
    uninterruptible,
)

PREFIX = "/orch"
NODE_CPU, NODE_MEMORY, NODE_PODS = "4", "32Gi", "110"
POD_CPU, POD_MEMORY = "100m", "500Mi"
INIT_NS, MEASURE_NS = "sched-init", "sched-measure"
GIB = 1024 ** 3
BOUND_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO [\w.]+: bound pod ([^/\s]+)/(\S+) to node (\S+)")


def progress(msg: str) -> None:
    print(f"[scheduler_perf] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- objects


def sim_node(name: str) -> dict[str, Any]:
    """scheduler_perf's makeBaseNode: 4 cpu, 32Gi, 110 pods, Ready."""
    from apimachinery.meta import now_rfc3339

    now = now_rfc3339()
    res = {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": NODE_PODS}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": f"uid-{name}-{secrets.token_hex(4)}", "creationTimestamp": now,
                         "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"capacity": dict(res), "allocatable": dict(res),
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "lastHeartbeatTime": now, "lastTransitionTime": now}]}}


def pod_doc(namespace: str, name: str) -> dict[str, Any]:
    """scheduler_perf's pod-default.yaml."""
    res = {"cpu": POD_CPU, "memory": POD_MEMORY}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
                                     "ports": [{"containerPort": 80}],
                                     "resources": {"requests": dict(res), "limits": dict(res)}}]}}


# --------------------------------------------------------------------------- processes


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in bytes from /proc/<pid>/status."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def start_scheduler(tmp: Path, endpoint: str, leader_elect: bool) -> tuple[subprocess.Popen[bytes], int, Path]:
    from tests.etcd_fixture import _free_port

    port = _free_port()
    log = tmp / "scheduler.log"
    cmd = [sys.executable, "-m", "scheduler.main", "--etcd", endpoint, "--etcd-prefix", PREFIX,
           "--listen", f"127.0.0.1:{port}", f"--leader-elect={'true' if leader_elect else 'false'}",
           "--node-monitor-grace-period", "86400",
           # Plaintext like the reference's aetcd client and etcd itself: the benchmark measures
           # scheduling; what TLS costs a request is bench/api_tls.py's subject.
           "--insecure"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise BenchFailure(f"scheduler exited {proc.returncode} at start:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            break
        if time.monotonic() > deadline:
            raise BenchFailure("scheduler did not listen within 30 s")
        time.sleep(0.05)
    return proc, port, log


def stop(proc: subprocess.Popen[bytes] | None, graceful: bool) -> None:
    """End a process this run started, by its PID."""
    if proc is None or proc.poll() is not None:
        return
    if graceful:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


# --------------------------------------------------------------------------- the watch


class PodWatch:
    """Creation and first binding of every pod, stamped on arrival."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}        # "ns/name" -> monotonic
        self.bound: dict[str, tuple[float, int, str]] = {}  # "ns/name" -> (monotonic, revision, node)
        self.moved: list[str] = []                 # bound pods whose nodeName changed afterwards
        self.task: asyncio.Task[None] | None = None

    async def run(self, client: Any, start_revision: int) -> None:
        prefix = f"{PREFIX}/pods/".encode()
        cut = len(prefix)
        watch = await client.watch_prefix(prefix, start_revision=start_revision)
        try:
            async for ev in watch:
                now = time.monotonic()
                kv = ev.kv
                if not kv.value:  # a delete
                    continue
                key = kv.key[cut:].decode()
                if kv.version == 1:
                    self.created.setdefault(key, now)
                if b'"nodeName":' in kv.value:
                    node = json.loads(kv.value)["spec"].get("nodeName")
                    if not node:
                        continue
                    prev = self.bound.get(key)
                    if prev is None:
                        self.bound[key] = (now, int(kv.mod_revision), node)
                    elif prev[2] != node:
                        self.moved.append(key)
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()

    def bound_in(self, namespace: str) -> int:
        p = namespace + "/"
        return sum(1 for k in self.bound if k.startswith(p))


# --------------------------------------------------------------------------- the reference


async def raw_txn_rate(client: Any, prefix: str, callers: int, seconds: float, value: bytes) -> dict[str, Any]:
    """``callers`` coroutines, each a compare(mod_revision)+put transaction on its own key, in a loop."""
    tx = client.transactions
    keys = [f"{prefix}/k{i:03d}".encode() for i in range(callers)]
    revs = {}
    for k in keys:
        await client.put(k, value)
        kv = await client.get(k)
        revs[k] = int(kv.mod_revision)
    warm_until = time.monotonic() + 1.0
    end = warm_until + seconds
    counts = [0] * callers
    lat: list[float] = []
    failed = 0

    async def caller(i: int) -> None:
        nonlocal failed
        key = keys[i]
        rev = revs[key]
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                return
            ok, responses = await client.transaction(compare=[tx.mod(key) == rev], success=[tx.put(key, value)],
                                                     failure=[])
            t1 = time.monotonic()
            if not ok:
                failed += 1
                rev = int((await client.get(key)).mod_revision)
                continue
            rev = int(responses[0].response_put.header.revision)
            if t0 >= warm_until and t1 <= end:
                counts[i] += 1
                lat.append(t1 - t0)

    await asyncio.gather(*(caller(i) for i in range(callers)))
    await client.delete_prefix(f"{prefix}/".encode())
    total = sum(counts)
    return {"txn_per_s": total / seconds, "txns": total, "seconds": seconds, "callers": callers,
            "failed_compares": failed, "latency": summary(lat), "value_bytes": len(value)}


# --------------------------------------------------------------------------- the run


async def write_all(store: Any, objs: list[dict[str, Any]], batch: int, workers: int,
                    stamp: Any = None) -> None:
    from scheduler.registry import _new_object
    from scheduler.store import Write

    chunks = [objs[i:i + batch] for i in range(0, len(objs), batch)]
    it = iter(chunks)

    async def worker() -> None:
        for chunk in it:
            await store.write([Write(_new_object(o) if stamp else o, 0) for o in chunk])

    await asyncio.gather(*(worker() for _ in range(workers)))


async def prepare_pods(registry: Any, namespace: str, n: int) -> list[dict[str, Any]]:
    """Validated and admitted as Registry.apply does, not yet stamped (uid, creationTimestamp)."""
    from scheduler.registry import _validate_all

    out: list[dict[str, Any]] = []
    for i in range(0, n, 500):
        objs = _validate_all([pod_doc(namespace, f"pod-{j:05d}") for j in range(i, min(n, i + 500))])
        registry._admit(objs)
        await registry._admit_priority(objs)
        out.extend(objs)
    return out


async def wait_bound(watch: PodWatch, namespace: str, n: int, deadline: float, what: str,
                     sched: subprocess.Popen[bytes]) -> bool:
    last_log = time.monotonic()
    while watch.bound_in(namespace) < n:
        if sched.poll() is not None:
            raise BenchFailure(f"the scheduler exited ({sched.returncode}) while {what} were pending")
        if time.monotonic() >= deadline:
            return False
        if time.monotonic() - last_log >= 10:
            progress(f"{what}: {watch.bound_in(namespace)}/{n} bound")
            last_log = time.monotonic()
        await asyncio.sleep(0.05)
    return True


async def verify(store: Any, watch: PodWatch) -> dict[str, Any]:
    from apimachinery.meta import POD

    # Listed in slices of at most 1000 pods (by name prefix): one range of all 11,000 pods is
    # ~10 MB, over gRPC's default 4 MiB receive limit of an aetcd client.
    in_etcd: dict[str, str | None] = {}
    for ns in (INIT_NS, MEASURE_NS):
        rng = await store.client.get_prefix(store.kind_prefix(POD, ns), keys_only=True)
        for slice_ in sorted({kv.key.decode().rsplit("/", 1)[1][:-3] for kv in rng}):
            for kv in await store.client.get_prefix(store.kind_prefix(POD, ns) + slice_.encode()):
                p = json.loads(kv.value)
                in_etcd[f"{ns}/{p['metadata']['name']}"] = p["spec"].get("nodeName")
    others = await store.client.get_prefix(f"{PREFIX}/pods/".encode(), keys_only=True)
    if len(others) != len(in_etcd):
        raise BenchFailure(f"{len(others)} pod keys in etcd, {len(in_etcd)} in this run's namespaces")
    bound_etcd = {k: v for k, v in in_etcd.items() if v}
    mismatched = [k for k, (_, _, node) in watch.bound.items() if in_etcd.get(k) != node]
    rng = await store.client.get_prefix(f"{PREFIX}/nodeallocations/".encode())
    ledger_pods = 0
    over = []
    for kv in rng:
        entries = (json.loads(kv.value).get("pods") or {}).values()
        ledger_pods += len(entries)
        cpu = sum(int(e.get("cpu", 0)) for e in entries)
        if len(entries) > int(NODE_PODS) or cpu > int(NODE_CPU) * 1000:
            over.append(kv.key.decode())
    return {"pods_in_etcd": len(in_etcd), "bound_in_etcd": len(bound_etcd), "bound_seen_by_watch": len(watch.bound),
            "watch_bindings_missing_or_different_in_etcd": len(mismatched), "examples": mismatched[:5],
            "bound_but_not_seen_by_watch": len(set(bound_etcd) - set(watch.bound)),
            "pods_moved_after_binding": len(watch.moved), "ledger_entries": ledger_pods,
            "nodes_over_allocatable": over[:5], "nodes_over_allocatable_count": len(over)}


def parse_log(log: Path, namespace: str) -> dict[str, Any]:
    stamps: list[float] = []
    counts = {"bound_lines": 0, "bind_failed": 0, "warnings": 0, "errors": 0}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {"counts": counts, "attempt_gaps": []}
    for line in lines:
        if " WARNING " in line:
            counts["warnings"] += 1
        elif " ERROR " in line:
            counts["errors"] += 1
        if "binding pod" in line and "failed" in line:
            counts["bind_failed"] += 1
        m = BOUND_RE.match(line)
        if m:
            counts["bound_lines"] += 1
            if m.group(2) == namespace:
                stamps.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {"counts": counts, "attempt_gaps": gaps}


async def measure(args: argparse.Namespace, res: dict[str, Any], tmp: Path, token: str,
                  procs: dict[str, subprocess.Popen[bytes] | None]) -> None:
    import aetcd

    from apimachinery.meta import now_rfc3339  # noqa: F401 - imported early, outside the timed part
    from scheduler.registry import Registry
    from scheduler.store import Store, Write

    from tests.etcd_fixture import start_etcd

    etcd, port = start_etcd(tmp, "bench")
    procs["etcd"] = etcd
    res["etcd"] = {"pid": etcd.pid, "endpoint": f"127.0.0.1:{port}"}
    endpoint = f"127.0.0.1:{port}"
    client = aetcd.Client(host="127.0.0.1", port=port, timeout=30)
    store = Store(client, PREFIX)
    watch = PodWatch()
    try:
        t = time.monotonic()
        await write_all(store, [sim_node(f"node-{i:05d}") for i in range(args.nodes)], args.batch, 8)
        res["nodes_written_s"] = time.monotonic() - t
        progress(f"{args.nodes} nodes written in {res['nodes_written_s']:.1f} s")

        value = Store._encode(pod_doc(MEASURE_NS, "reference-pod-sized-value"))
        value = value + b" " * max(0, 1200 - len(value))  # about a bound pod's size
        progress(f"reference: {args.ref_callers} callers, compare+put txns for {args.ref_seconds:.0f} s (before)")
        res["reference"] = [await raw_txn_rate(client, f"/{token}-ref", args.ref_callers, args.ref_seconds, value)]
        res["reference"][0]["when"] = "before"
        progress(f"reference before: {res['reference'][0]['txn_per_s']:.0f} txn/s")

        registry = Registry(store)
        init = await prepare_pods(registry, INIT_NS, args.init_pods)
        measured = await prepare_pods(registry, MEASURE_NS, args.pods)

        start_rev = await store.revision() + 1
        watch.task = asyncio.create_task(watch.run(client, start_rev))
        sched, sport, log = start_scheduler(tmp, endpoint, args.leader_elect)
        procs["scheduler"] = sched
        res["scheduler"] = {"pid": sched.pid, "listen": f"127.0.0.1:{sport}", "log": str(log),
                            "leader_elect": args.leader_elect}
        progress(f"scheduler pid {sched.pid} (leader-elect {args.leader_elect}); {args.init_pods} init pods")
        t_begin = time.monotonic()
        deadline = t_begin + args.timeout
        await write_all(store, init, args.batch, args.create_workers, stamp=True)
        ok = await wait_bound(watch, INIT_NS, args.init_pods, deadline, "init pods", sched)
        res["init"] = {"pods": args.init_pods, "bound": watch.bound_in(INIT_NS), "all_bound": ok,
                       "seconds": time.monotonic() - t_begin}
        progress(f"init: {res['init']['bound']}/{args.init_pods} bound in {res['init']['seconds']:.1f} s")
        if not ok:
            res["failures"].append(f"timeout: only {res['init']['bound']}/{args.init_pods} init pods bound")
            res["timed_out"] = True
            return

        cpu0 = {"scheduler": cpu_seconds(sched.pid), "etcd": cpu_seconds(etcd.pid), "bench": time.process_time()}
        t0 = time.monotonic()
        progress(f"{args.pods} measured pods, batches of {args.batch}, {args.create_workers} in flight")
        await write_all(store, measured, args.batch, args.create_workers, stamp=True)
        t_created = time.monotonic()
        progress(f"created in {t_created - t0:.1f} s ({args.pods / (t_created - t0):.0f} pods/s); waiting")
        ok = await wait_bound(watch, MEASURE_NS, args.pods, deadline, "measured pods", sched)
        t_end = time.monotonic()
        wall = t_end - t0
        cpu1 = {"scheduler": cpu_seconds(sched.pid), "etcd": cpu_seconds(etcd.pid), "bench": time.process_time()}
        res["timed_out"] = not ok
        if not ok:
            res["failures"].append(f"timeout after {args.timeout:.0f} s: {watch.bound_in(MEASURE_NS)}/{args.pods} "
                                   "measured pods bound (figures are for those)")
        await asyncio.sleep(1.0)  # late events
        mem = proc_status(sched.pid)
        res["scheduler"].update(vmhwm=mem.get("VmHWM"), vmrss=mem.get("VmRSS"))
        res["etcd"].update(proc_status(etcd.pid))
        res["cpu_share_measured"] = {k: (cpu1[k] - cpu0[k]) / wall for k in cpu0}
        res["measured"] = {"t0": t0, "created_s": t_created - t0, "end": t_end, "wall_s": wall}
        pre = MEASURE_NS + "/"
        res["measured_created"] = {k: v - t0 for k, v in watch.created.items() if k.startswith(pre)}
        res["measured_bound"] = {k: v[0] - t0 for k, v in watch.bound.items() if k.startswith(pre)}

        progress("stopping the scheduler")
        stop(sched, graceful=True)
        res["scheduler"]["exit"] = sched.returncode
        res["log"] = parse_log(log, MEASURE_NS)
        res["verify"] = await verify(store, watch)

        progress(f"reference: {args.ref_callers} callers for {args.ref_seconds:.0f} s (after)")
        after = await raw_txn_rate(client, f"/{token}-ref", args.ref_callers, args.ref_seconds, value)
        after["when"] = "after"
        res["reference"].append(after)
        progress(f"reference after: {after['txn_per_s']:.0f} txn/s")
        _ = Write  # imported with the store, used by write_all
    finally:
        if watch.task is not None:
            watch.task.cancel()
            await asyncio.gather(watch.task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)


def leftovers(tmp: Path, procs: dict[str, int], ports: list[int]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"processes": [], "files": []}
    for name, pid in procs.items():
        if Path(f"/proc/{pid}").exists():
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            found["processes"].append(f"{name} pid {pid} still exists (state {state})")
    me = os.getpid()
    needles = [str(tmp)] + [f"127.0.0.1:{p}" for p in ports]
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in needles):
            found["processes"].append(f"{entry}: {cmd.strip()[:160]}")
    if tmp.exists():
        found["files"].append(str(tmp))
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"args": vars(args).copy(), "failures": [], "notes": []}
    t_start = time.monotonic()
    token = f"orch-bench-{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{token}-"))
    res["tmp"] = str(tmp)
    procs: dict[str, subprocess.Popen[bytes] | None] = {"etcd": None, "scheduler": None}
    interrupted = False
    try:
        asyncio.run(measure(args, res, tmp, token, procs))
    except BaseException as e:  # noqa: BLE001 - recorded; cleanup and the report still happen
        interrupted = record_failure(e, res["failures"])
    finally:
        with uninterruptible():
            progress("cleaning up")
            sched_log = tmp / "scheduler.log"
            if sched_log.exists():
                tail = sched_log.read_text(errors="replace").splitlines()
                res["scheduler_log_tail"] = [ln for ln in tail if "bound pod" not in ln][-15:]
            pids = {k: p.pid for k, p in procs.items() if p is not None}
            ports = [int(x.rsplit(":", 1)[1]) for x in (res.get("etcd", {}).get("endpoint"),
                                                         res.get("scheduler", {}).get("listen")) if x]
            for name in ("scheduler", "etcd"):
                try:
                    stop(procs[name], graceful=name == "scheduler")
                except Exception as e:  # noqa: BLE001
                    res["failures"].append(f"cleanup: {name}: {e}")
            shutil.rmtree(tmp, ignore_errors=True)
            res["leftovers"] = leftovers(tmp, pids, ports)
            for what, items in res["leftovers"].items():
                if items:
                    res["failures"].append(f"left behind: {what}: {items}")
    res["interrupted"] = interrupted
    res["total_s"] = time.monotonic() - t_start
    return res


# --------------------------------------------------------------------------- report


def build_report(res: dict[str, Any]) -> dict[str, Any]:
    args = res["args"]
    bound = sorted(res.get("measured_bound", {}).values())
    created = res.get("measured_created", {})
    rates: list[float] = []
    if bound:
        # whole seconds from the start of creation to the last binding (to the deadline when timed out)
        end = (res.get("measured") or {}).get("wall_s", bound[-1]) if res.get("timed_out") else bound[-1]
        full = max(math.floor(end), 1)
        counts = [0] * max(full, 0)
        for b in bound:
            i = int(b)
            if i < full:
                counts[i] += 1
        rates = [float(c) for c in counts]
    throughput = {"n_windows": len(rates), "average": sum(rates) / len(rates) if rates else math.nan,
                  "p50": percentile(rates, 50), "p90": percentile(rates, 90), "p99": percentile(rates, 99),
                  "overall": len(bound) / bound[-1] if bound and bound[-1] > 0 else math.nan}
    e2e = [res["measured_bound"][k] - created[k] for k in res.get("measured_bound", {}) if k in created]
    gaps = (res.get("log") or {}).get("attempt_gaps", [])
    refs = res.get("reference", [])
    ref_rates = [r["txn_per_s"] for r in refs]
    ref_mean = sum(ref_rates) / len(ref_rates) if ref_rates else math.nan
    r = ratio(throughput["average"], ref_mean)
    hwm = (res.get("scheduler") or {}).get("vmhwm")
    return {
        "workload": {"nodes": args["nodes"], "init_pods": args["init_pods"], "pods": args["pods"],
                     "node": f"cpu {NODE_CPU}, memory {NODE_MEMORY}, pods {NODE_PODS}, Ready",
                     "pod": f"requests=limits cpu {POD_CPU}, memory {POD_MEMORY}",
                     "leader_elect": args["leader_elect"]},
        "measured_bound": len(bound), "timed_out": res.get("timed_out"), "init": res.get("init"),
        "creation_s": (res.get("measured") or {}).get("created_s"),
        "throughput_pods_per_s": throughput,
        "attempt_latency_s": {"source": "gaps between consecutive 'bound pod' lines of measured pods in the "
                                        "scheduler's log (ms stamps)", **summary(gaps),
                              "p90": percentile(gaps, 90)},
        "e2e_latency_s": {"source": "creation seen -> binding seen on the watch", **summary(e2e),
                          "p90": percentile(e2e, 90)},
        "reference": refs, "reference_mean_txn_per_s": ref_mean,
        "ratio": {"what": "pods/s (average of per-second rates) / raw txn/s", "value": r, "target": 0.10,
                  "met": bool(r >= 0.10) if not math.isnan(r) else False},
        "memory": {"scheduler_vmhwm_bytes": hwm, "scheduler_vmrss_bytes": (res.get("scheduler") or {}).get("vmrss"),
                   "etcd_vmhwm_bytes": (res.get("etcd") or {}).get("VmHWM"),
                   "target_bytes": GIB, "met": bool(hwm is not None and hwm < GIB)},
        "cpu_share_measured": res.get("cpu_share_measured"),
        "verify": res.get("verify"), "scheduler_log": (res.get("log") or {}).get("counts"),
        "scheduler_log_tail": res.get("scheduler_log_tail"), "nodes_written_s": res.get("nodes_written_s"),
        "notes": res["notes"], "failures": res["failures"], "leftovers": res.get("leftovers"),
        "total_s": res["total_s"], "args": args,
    }


def print_table(rep: dict[str, Any]) -> None:
    def f(v: Any, fmt: str = "{:.1f}") -> str:
        return "-" if v is None else fmt.format(v)

    def ms(v: Any) -> str:
        return "-" if v is None else f"{v * 1000:.1f}"

    w = rep["workload"]
    print(f"SchedulingBasic: {w['nodes']} nodes ({w['node']}), {w['init_pods']} init pods, {w['pods']} measured "
          f"pods ({w['pod']}); scheduler --leader-elect={str(w['leader_elect']).lower()}")
    init = rep.get("init") or {}
    print(f"init pods bound: {init.get('bound')}/{w['init_pods']} in {f(init.get('seconds'))} s; measured pods "
          f"created in {f(rep['creation_s'])} s")
    t = rep["throughput_pods_per_s"]
    print(f"\nmeasured pods bound: {rep['measured_bound']}/{w['pods']}"
          + ("   (TIMED OUT: figures are for these)" if rep["timed_out"] else ""))
    print(f"throughput, pods/s over {t['n_windows']} one-second windows: average {f(t['average'])}  "
          f"p50 {f(t['p50'])}  p90 {f(t['p90'])}  p99 {f(t['p99'])}   (overall {f(t['overall'])})")
    a, e = rep["attempt_latency_s"], rep["e2e_latency_s"]
    print(f"scheduling attempt, ms [{a['source']}]:\n    p50 {ms(a.get('p50'))}  p90 {ms(a.get('p90'))}  "
          f"p99 {ms(a.get('p99'))}  (n {a.get('n', 0)})")
    print(f"end-to-end, ms [{e['source']}]:\n    p50 {ms(e.get('p50'))}  p90 {ms(e.get('p90'))}  p99 {ms(e.get('p99'))}")
    print("\nreference: raw single-key compare+put txns, 64 concurrent aetcd callers, same etcd:")
    for r in rep["reference"]:
        lat = r["latency"]
        print(f"    {r['when']:6} {r['txn_per_s']:8.0f} txn/s   (p50 {ms(lat.get('p50'))} ms, p99 {ms(lat.get('p99'))} ms"
              f" per txn, {r['callers']} callers, {r['seconds']:.0f} s)")
    rt = rep["ratio"]
    print(f"\nratio pods/s / txn/s: {f(rt['value'], '{:.4f}')}  (target >= {rt['target']:.2f}) -> "
          f"{'MET' if rt['met'] else 'NOT MET'}")
    m = rep["memory"]
    gib = (lambda b: "-" if b is None else f"{b / 2**20:.0f} MiB")
    print(f"scheduler memory: VmHWM {gib(m['scheduler_vmhwm_bytes'])} (VmRSS at end {gib(m['scheduler_vmrss_bytes'])})"
          f" target < 1 GiB -> {'MET' if m['met'] else 'NOT MET'};  etcd VmHWM {gib(m['etcd_vmhwm_bytes'])}")
    if rep.get("cpu_share_measured"):
        c = rep["cpu_share_measured"]
        print("CPU during the measured phase (share of one CPU): " + ", ".join(f"{k} {v:.0%}" for k, v in c.items()))
    v = rep.get("verify")
    if v:
        print(f"persisted: {v['bound_in_etcd']} pods bound in etcd (of {v['pods_in_etcd']}), {v['bound_seen_by_watch']}"
              f" bindings seen by the watch, {v['watch_bindings_missing_or_different_in_etcd']} of them missing/"
              f"different in etcd, {v['bound_but_not_seen_by_watch']} bound but unseen, "
              f"{v['pods_moved_after_binding']} moved; ledgers hold {v['ledger_entries']} pods, "
              f"{v['nodes_over_allocatable_count']} nodes over allocatable")
    if rep.get("scheduler_log"):
        print(f"scheduler log: {rep['scheduler_log']}")
    print_ending(rep)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from scheduler.main import boolean_flag

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=5000, help="simulated nodes (default 5000)")
    p.add_argument("--init-pods", type=int, default=1000, help="pods placed before the measurement (default 1000)")
    p.add_argument("--pods", type=int, default=10000, help="measured pods (default 10000)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds for the init and measured phases together; then report what was bound (default 900)")
    p.add_argument("--batch", type=int, default=50, help="pods per creation transaction (default 50, max 60)")
    p.add_argument("--create-workers", type=int, default=4, help="creation transactions in flight (default 4)")
    p.add_argument("--ref-callers", type=int, default=64, help="concurrent callers of the reference (default 64)")
    p.add_argument("--ref-seconds", type=float, default=10.0, help="seconds of each reference run (default 10)")
    p.add_argument("--leader-elect", type=boolean_flag, default=True, metavar="true|false",
                   help="the scheduler's --leader-elect (default true, as deployed)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    args = p.parse_args(argv)
    if min(args.nodes, args.pods) < 1 or args.init_pods < 0 or not 1 <= args.batch <= 60:
        p.error("--nodes and --pods must be at least 1, --init-pods at least 0, --batch within 1..60")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_on_sigterm()
    res = run(args)
    return report(build_report(res), args.json, print_table, interrupted=res["interrupted"],
                  failed=bool(res["failures"]))


if __name__ == "__main__":
    sys.exit(main())
