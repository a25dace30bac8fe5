#!/usr/bin/env python3
"""Benchmark: from ``orchctl apply`` returning to the pod observed Running, beside the raw runtime.

What is timed
-------------
**orch**: a pod (``image: host``, ``/bin/sleep 3600``, 32Mi memory limit) is applied through
``cli.client.ClusterClient.apply`` — the very RPC ``orchctl apply`` makes — on a lab cluster
started for this run. The clock starts when ``apply`` returns and stops when a Watch stream
(opened before the first apply, from a known resourceVersion) delivers the first event of that
pod with ``status.phase == "Running"`` and its container in state ``running``. No polling: the
stamp is ``time.monotonic()`` taken in the thread that reads the stream, as the event arrives.

**reference**: the same container started through the node runtime alone, with no control plane:
``agent.runtime.runtime.Runtime(state_dir, cgroup_root).start(ContainerConfig(...))`` in a
temporary state dir under a unique cgroup root ``orch-bench-<random>``; timed from the call to
its return (``start`` returns once the container runs). The ratio orch/reference is what the
control plane (apply RPC → etcd → scheduling → assignment stream → agent reconcile → status
report → etcd → watch) adds on top of starting the container.

Modes
-----
* ``sequential`` (default): one pod at a time, each measured alone; the next is applied after
  the previous one was seen Running. orch and reference alternate pod by pod in ABBA order
  (orch, ref, ref, orch, ...), so machine noise and the growing number of containers hit both
  alike.
* ``burst``: all pods applied back to back (one apply RPC each, no waiting), then every one
  awaited; per-pod latency still counts from that pod's own apply returning. The reference
  starts the same number of containers at once from a thread pool, before and after the orch
  burst. Reports makespan (first apply called → last pod Running) and throughput as well.

Extras: the first ``--warmup`` pods of each side are shown but kept out of the statistics;
``--cli-pods K`` more pods are applied through ``python -m cli.main apply -f -`` subprocesses to
show the command's own start-up cost separately; a per-stage breakdown of the orch time is
derived from the containers' state files (``config.json`` is written when the runtime starts
preparing the container, ``started.json`` when the shim saw the exec succeed; their mtimes, on
the same machine's clock, split the span).

Everything started is removed at the end, also on failure or Ctrl-C: the lab (``cli.lab.down``
stops its processes by PID, kills its containers, removes its cgroups), the reference containers
(``Runtime.cleanup_all``), the temporary directory. The script then checks that no cgroup,
process or mount of this run is left and says so; a leftover makes the exit status non-zero.

Exit status: 0 on success, 1 when anything failed (a pod not Running within ``--timeout``, a
reference container that did not start, a leftover), 130 on Ctrl-C / SIGTERM.

Usage::

    .venv/bin/python bench/apply_to_running.py                   # sequential, 50 pods, 2 nodes
    .venv/bin/python bench/apply_to_running.py --mode burst
    .venv/bin/python bench/apply_to_running.py --pods 20 --json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.stats import (  # noqa: E402
    BenchFailure, percentile, raise_on_sigterm, ratio, record_failure, report, summary, uninterruptible,
)

NAMESPACE = "bench"
COMMAND = ["/bin/sleep", "3600"]
MEMORY_LIMIT = "32Mi"
MEMORY_LIMIT_BYTES = 32 * 1024 * 1024
PODS_PIDS_LIMIT = 4096  # what the agent gives every container (orch-agent --pod-pids-limit default)


# --------------------------------------------------------------------------- clocks


def wall_to_mono(wall: float) -> float:
    """A wall-clock instant (a file's mtime) on the monotonic clock, via the current offset."""
    return wall - (time.time() - time.monotonic())


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One pod (orch) or one container (reference); times in seconds on the monotonic clock."""

    side: str  # orch | ref | cli
    name: str
    warmup: bool
    t_call: float  # apply called / start() called
    t_return: float  # apply returned / start() returned
    t_bound: float | None = None  # orch: nodeName first seen on the watch
    t_prepare: float | None = None  # config.json written (runtime began preparing)
    t_started: float | None = None  # started.json written (container exec'd)
    t_running: float | None = None  # orch: Running first seen on the watch
    node: str | None = None
    order: int = 0  # position in the run

    @property
    def latency(self) -> float:
        """The measured figure: apply returned → Running seen (orch), start() call → return (ref)."""
        if self.side == "ref":
            return self.t_return - self.t_call
        assert self.t_running is not None
        return self.t_running - self.t_return

    def stages(self) -> dict[str, float | None]:
        def d(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        if self.side == "ref":
            return {"call_to_prepare": d(self.t_call, self.t_prepare),
                    "prepare_to_exec": d(self.t_prepare, self.t_started),
                    "exec_to_return": d(self.t_started, self.t_return)}
        return {"apply_rpc": d(self.t_call, self.t_return),
                "applied_to_bound": d(self.t_return, self.t_bound),
                "bound_to_prepare": d(self.t_bound, self.t_prepare),
                "prepare_to_exec": d(self.t_prepare, self.t_started),
                "exec_to_running_seen": d(self.t_started, self.t_running)}

    def to_json(self) -> dict[str, Any]:
        return {"side": self.side, "name": self.name, "warmup": self.warmup, "node": self.node,
                "order": self.order, "latency_ms": round(self.latency * 1000, 3),
                "stages_ms": {k: (None if v is None else round(v * 1000, 3)) for k, v in self.stages().items()}}


# --------------------------------------------------------------------------- the watch


def pod_is_running(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    cs = status.get("containerStatuses") or []
    return bool(cs) and all("running" in (c.get("state") or {}) for c in cs)


def describe_pod(pod: dict[str, Any] | None) -> str:
    if pod is None:
        return "never seen on the watch"
    status = pod.get("status") or {}
    parts = [f"phase={status.get('phase')}", f"node={pod.get('spec', {}).get('nodeName') or '-'}"]
    for c in status.get("containerStatuses") or []:
        parts.append(f"container {c.get('name')}: {json.dumps(c.get('state'))}")
    for c in status.get("conditions") or []:
        if c.get("status") == "False" and c.get("message"):
            parts.append(f"{c.get('type')}=False: {c.get('message')}")
    return "; ".join(parts)


class PodWatch:
    """A Watch stream on the bench namespace, read by one thread that stamps each event on arrival."""

    def __init__(self, server: str, namespace: str, resource_version: int, tls: Any = None) -> None:
        from cli.client import ClusterClient

        self.client = ClusterClient(server, tls=tls)
        self.namespace = namespace
        self.resource_version = resource_version
        self.cond = threading.Condition()
        self.bound: dict[str, tuple[float, str]] = {}
        self.running: dict[str, tuple[float, dict[str, Any]]] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.events = 0
        self.error: str | None = None
        self._closing = False
        self.thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            for kind, pod in self.client.watch("Pod", self.namespace, resource_version=self.resource_version):
                now = time.monotonic()
                name = pod["metadata"]["name"]
                with self.cond:
                    self.events += 1
                    self.last[name] = pod
                    if kind != "DELETED":
                        node = (pod.get("spec") or {}).get("nodeName")
                        if node and name not in self.bound:
                            self.bound[name] = (now, node)
                        if name not in self.running and pod_is_running(pod):
                            self.running[name] = (now, pod)
                    self.cond.notify_all()
            if not self._closing:
                self.error = "the watch stream ended before the benchmark did"
        except Exception as e:  # noqa: BLE001 - reported to the main thread, which fails the run
            if not self._closing:
                self.error = f"the watch stream failed: {type(e).__name__}: {e}"
        finally:
            with self.cond:
                self.cond.notify_all()

    def wait_running(self, names: list[str], deadline: float) -> None:
        """Block until every pod in ``names`` was seen Running; BenchFailure on timeout or watch error."""
        with self.cond:
            while True:
                missing = [n for n in names if n not in self.running]
                if not missing:
                    return
                if self.error:
                    raise BenchFailure(self.error)
                left = deadline - time.monotonic()
                if left <= 0:
                    details = "; ".join(f"{n}: {describe_pod(self.last.get(n))}" for n in missing[:5])
                    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
                    raise BenchFailure(f"{len(missing)} pod(s) not Running within the timeout: {details}{more}")
                self.cond.wait(left)

    def close(self) -> None:
        self._closing = True
        self.client.close()  # closing the channel ends the stream; the thread then leaves
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------- the two sides


def pod_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "orch-bench"}},
        "spec": {
            "containers": [{
                "name": "main",
                "image": "host",
                "command": COMMAND,
                "resources": {"limits": {"memory": MEMORY_LIMIT}},
            }],
        },
    }


class OrchSide:
    def __init__(self, server: str, agents: dict[str, Path], watch: PodWatch, timeout: float,
                 tls: Any = None) -> None:
        from cli.client import ClusterClient

        self.client = ClusterClient(server, tls=tls)
        self.server = server
        self.tls = tls  # the lab's admin certificate (cli.client.ClientTLS), None for a plaintext lab
        self.agents = agents  # node name -> its state dir
        self.watch = watch
        self.timeout = timeout

    def apply(self, name: str) -> tuple[float, float]:
        t_call = time.monotonic()
        results = self.client.apply([pod_manifest(name)])
        t_return = time.monotonic()
        action = results[0][0] if results else "?"
        if action != "created":
            raise BenchFailure(f"apply of pod {name}: expected 'created', the server said {action!r}")
        return t_call, t_return

    def finish(self, sample: Sample) -> Sample:
        """Fill the watch and state-file stamps of a pod already seen Running."""
        with self.watch.cond:
            t_running, pod = self.watch.running[sample.name]
            bound = self.watch.bound.get(sample.name)
        sample.t_running = t_running
        if bound is not None:
            sample.t_bound, sample.node = bound
        node = (pod.get("spec") or {}).get("nodeName") or sample.node
        sample.node = node
        cid = str(((pod.get("status") or {}).get("containerStatuses") or [{}])[0].get("containerID", ""))
        cid = cid.removeprefix("orch://")
        state_dir = self.agents.get(node or "")
        if cid and state_dir is not None:
            d = state_dir / "containers" / cid
            prep, started = mtime(d / "config.json"), mtime(d / "started.json")
            sample.t_prepare = wall_to_mono(prep) if prep is not None else None
            sample.t_started = wall_to_mono(started) if started is not None else None
        return sample

    def one(self, name: str, warmup: bool, order: int) -> Sample:
        t_call, t_return = self.apply(name)
        self.watch.wait_running([name], t_return + self.timeout)
        return self.finish(Sample("orch", name, warmup, t_call, t_return, order=order))

    def close(self) -> None:
        self.client.close()


class RefSide:
    """Containers started through the node runtime alone: no scheduler, no agent, no etcd."""

    def __init__(self, state_dir: Path, cgroup_root: str) -> None:
        from agent.runtime.runtime import Runtime

        self.runtime = Runtime(state_dir, cgroup_root)

    def config(self, name: str) -> Any:
        from agent.runtime.runtime import ContainerConfig

        return ContainerConfig(
            id=secrets.token_hex(32), pod_uid=str(uuid.uuid4()), pod_namespace=NAMESPACE, pod_name=name,
            name="main", image="host", argv=list(COMMAND), env={}, working_dir="", hostname=name,
            memory_limit_bytes=MEMORY_LIMIT_BYTES, cpu_limit_millis=None, cpu_request_millis=None,
            pids_limit=PODS_PIDS_LIMIT,
        )

    def one(self, name: str, warmup: bool, order: int, t_call: float | None = None) -> Sample:
        """Start one container; ``t_call`` lets a burst count from the moment all were submitted."""
        from agent.runtime.runtime import ContainerStatus

        cfg = self.config(name)
        t0 = time.monotonic()
        st = self.runtime.start(cfg)
        t1 = time.monotonic()
        if st.status != ContainerStatus.RUNNING:
            raise BenchFailure(f"reference container {name} did not run: {st.status} {st.reason}: {st.message}")
        d = self.runtime.containers_dir / cfg.id
        prep, started = mtime(d / "config.json"), mtime(d / "started.json")
        return Sample("ref", name, warmup, t_call if t_call is not None else t0, t1,
                      t_prepare=wall_to_mono(prep) if prep is not None else None,
                      t_started=wall_to_mono(started) if started is not None else None, order=order)

    def burst(self, prefix: str, n: int, order0: int) -> tuple[list[Sample], float]:
        """Start ``n`` containers at once; the samples and the makespan (submit → last returned)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="ref") as pool:
            t0 = time.monotonic()
            futures = [pool.submit(self.one, f"{prefix}-{i:03d}", False, order0 + i, t0) for i in range(n)]
            samples = [f.result() for f in futures]
        return samples, max(s.t_return for s in samples) - t0

    def cleanup(self) -> None:
        self.runtime.cleanup_all()


# --------------------------------------------------------------------------- the CLI path


def cli_apply(server: str, name: str, config_file: Path, tls: Any = None) -> tuple[float, float, str]:
    """``python -m cli.main --server S apply -f -``: (spawned, exited) on the monotonic clock, and its output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["ORCHCONFIG"] = str(config_file)  # never the user's ~/.orch/config.yaml
    env.pop("ORCH_SERVER", None)
    t0 = time.monotonic()
    flags = ["--insecure"] if tls is None else [
        "--certificate-authority", str(tls.certificate_authority), "--client-certificate", str(tls.client_certificate),
        "--client-key", str(tls.client_key)]
    proc = subprocess.run([sys.executable, "-m", "cli.main", "--server", server, *flags, "apply", "-f", "-"],
                          input=json.dumps(pod_manifest(name)), capture_output=True, text=True, cwd=ROOT, check=False,
                          env=env, timeout=60)
    t1 = time.monotonic()
    if proc.returncode != 0:
        raise BenchFailure(f"`orchctl apply` of {name} exited {proc.returncode}: {proc.stderr.strip()}")
    return t0, t1, proc.stdout.strip()


# --------------------------------------------------------------------------- leftovers


def leftovers(tmp: Path, cgroup_names: list[str]) -> dict[str, list[str]]:
    """What of this run is still on the machine: cgroups, processes, mounts, files."""
    found: dict[str, list[str]] = {"cgroups": [], "processes": [], "mounts": [], "files": []}
    cg = Path("/sys/fs/cgroup")
    for p in _find_dirs(cg, 3):
        if any(name in p.name for name in cgroup_names):
            found["cgroups"].append(str(p))
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            groups = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        if str(tmp) in cmd or any(name in groups for name in cgroup_names):
            found["processes"].append(f"{entry}: {cmd.strip()[:160]}")
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        mounts = []
    found["mounts"] = [m for m in mounts if str(tmp) in m]
    if tmp.exists():
        found["files"].append(str(tmp))
    return found


def _find_dirs(root: Path, maxdepth: int) -> list[Path]:
    """``find root -maxdepth N -type d`` without following symlinks."""
    out: list[Path] = []
    frontier = [root]
    for _ in range(maxdepth):
        nxt = []
        for d in frontier:
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            nxt.append(Path(e.path))
            except OSError:
                continue
        out += nxt
        frontier = nxt
    return out


def other_orch_cgroups(mine: list[str]) -> list[str]:
    """``find /sys/fs/cgroup -maxdepth 3 -name '*orch*'`` that are not this run's (other users' tests)."""
    return [str(p) for p in _find_dirs(Path("/sys/fs/cgroup"), 3)
            if "orch" in p.name and not any(n in p.name for n in mine)]


# --------------------------------------------------------------------------- the run


@dataclass
class Result:
    args: dict[str, Any]
    orch: list[Sample] = field(default_factory=list)
    ref: list[Sample] = field(default_factory=list)  # sequential: interleaved; burst: before + after
    ref_before: list[Sample] = field(default_factory=list)
    ref_after: list[Sample] = field(default_factory=list)
    cli: list[dict[str, Any]] = field(default_factory=list)
    makespan: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    leftovers: dict[str, list[str]] = field(default_factory=dict)
    others_cgroups: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    lab: dict[str, Any] = field(default_factory=dict)


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_sequential(args: argparse.Namespace, orch: OrchSide, ref: RefSide, res: Result) -> None:
    total = args.warmup + args.pods
    for i in range(total):
        warm = i < args.warmup
        tag = f"w{i}" if warm else f"{i - args.warmup:03d}"
        # ABBA: orch first on even pairs, the reference first on odd ones.
        first_orch = (i % 2 == 0)
        for side in (("orch", "ref") if first_orch else ("ref", "orch")):
            if side == "orch":
                res.orch.append(orch.one(f"pod-{tag}", warm, i))
            else:
                res.ref.append(ref.one(f"ref-{tag}", warm, i))
        if (i + 1) % 10 == 0 or i + 1 == total:
            progress(f"sequential: {i + 1}/{total} pods (incl. {args.warmup} warm-up) Running")


def run_burst(args: argparse.Namespace, orch: OrchSide, ref: RefSide, res: Result) -> None:
    n = args.pods
    # Warm-up outside the bursts (first container per node, first cgroup of the root ...).
    for i in range(args.warmup):
        res.orch.append(orch.one(f"pod-w{i}", True, i))
        res.ref.append(ref.one(f"ref-w{i}", True, i))
    progress(f"burst: reference, {n} containers at once (before)")
    res.ref_before, res.makespan["ref_before"] = ref.burst("ref-b", n, 1000)
    ref.cleanup()  # the orch burst runs on the same clean node the reference had

    progress(f"burst: orch, {n} pods applied back to back")
    names = [f"pod-{i:03d}" for i in range(n)]
    stamps: list[tuple[float, float]] = []
    t0 = time.monotonic()
    for name in names:
        stamps.append(orch.apply(name))
    t_applied = time.monotonic()
    orch.watch.wait_running(names, t_applied + args.timeout)
    for i, (name, (tc, tr)) in enumerate(zip(names, stamps)):
        res.orch.append(orch.finish(Sample("orch", name, False, tc, tr, order=2000 + i)))
    burst = [s for s in res.orch if not s.warmup]
    res.makespan["orch"] = max(s.t_running or 0 for s in burst) - t0
    res.makespan["orch_applies"] = t_applied - t0

    progress(f"burst: reference, {n} containers at once (after)")
    res.ref_after, res.makespan["ref_after"] = ref.burst("ref-a", n, 3000)
    res.ref += res.ref_before + res.ref_after


def run_cli(args: argparse.Namespace, orch: OrchSide, res: Result, tmp: Path) -> None:
    for i in range(args.cli_pods):
        name = f"cli-{i:03d}"
        t0, t1, out = cli_apply(orch.server, name, tmp / "orchctl-config.yaml", orch.tls)
        orch.watch.wait_running([name], t1 + args.timeout)
        s = orch.finish(Sample("cli", name, False, t0, t1, order=5000 + i))
        res.cli.append({"name": name, "output": out, "cli_wall": t1 - t0, "applied_to_running": s.latency,
                        "node": s.node})


def run(args: argparse.Namespace) -> Result:
    from cli import lab as labmod

    res = Result(args=vars(args).copy())
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-")).resolve()
    lab_dir = tmp / "lab"
    ref_root = f"orch-bench-{secrets.token_hex(4)}"
    lab_cgroup = f"orch-lab-{labmod.lab_id(lab_dir)}"
    res.lab = {"tmp": str(tmp), "lab_dir": str(lab_dir), "lab_cgroup_root": lab_cgroup, "ref_cgroup_root": ref_root}
    ref: RefSide | None = None
    orch: OrchSide | None = None
    watch: PodWatch | None = None
    lab_started = False
    interrupted = False
    total_pods = args.warmup + args.pods + args.cli_pods
    node_memory = args.node_memory or f"{max(4096, 2 * total_pods * 32)}Mi"  # every pod fits on one node
    try:
        progress(f"lab up: {args.nodes} node(s) in {lab_dir} (node cpu {args.node_cpu}, memory {node_memory})")
        t = time.monotonic()
        lab_started = True
        info = labmod.up(lab_dir, args.nodes, node_cpu=args.node_cpu, node_memory=node_memory,
                         insecure=args.insecure)
        res.timings["lab_up_s"] = time.monotonic() - t
        server = info["server"]
        agents = {a["node"]: Path(a["state_dir"]) for a in info["agents"]}
        ref = RefSide(tmp / "ref", ref_root)

        from cli.client import ClusterClient

        tls = labmod.client_tls(info)
        with ClusterClient(server, tls=tls) as c:
            _, rv = c.list("Pod", NAMESPACE)
        watch = PodWatch(server, NAMESPACE, rv, tls)
        watch.start()
        orch = OrchSide(server, agents, watch, args.timeout, tls)
        orch.client.list("Node")  # connect the channel before the first timed apply

        t = time.monotonic()
        if args.mode == "sequential":
            run_sequential(args, orch, ref, res)
        else:
            run_burst(args, orch, ref, res)
        res.timings["measure_s"] = time.monotonic() - t
        if args.cli_pods:
            progress(f"orchctl: {args.cli_pods} pods through `python -m cli.main apply -f -`")
            run_cli(args, orch, res, tmp)
        res.timings["watch_events"] = watch.events
    except BaseException as e:  # noqa: BLE001 - recorded; cleanup and the report still happen
        interrupted = record_failure(e, res.failures)
    finally:
        with uninterruptible():
            progress("cleaning up (lab down, reference containers, temp dir)")
            t = time.monotonic()
            for closer in (watch.close if watch else None, orch.close if orch else None):
                if closer is not None:
                    try:
                        closer()
                    except Exception as e:  # noqa: BLE001
                        res.failures.append(f"cleanup: {e}")
            if lab_started:
                try:
                    labmod.down(lab_dir)
                except Exception as e:  # noqa: BLE001
                    res.failures.append(f"cleanup: lab down: {e}")
            try:
                if ref is not None:
                    ref.cleanup()
                from agent.runtime.cgroups import detect_driver

                detect_driver().remove(ref_root)
            except Exception as e:  # noqa: BLE001
                res.failures.append(f"cleanup: reference runtime: {e}")
            shutil.rmtree(tmp, ignore_errors=True)
            res.timings["cleanup_s"] = time.monotonic() - t
            res.leftovers = leftovers(tmp, [lab_cgroup, ref_root])
            res.others_cgroups = other_orch_cgroups([lab_cgroup, ref_root])
            for what, items in res.leftovers.items():
                if items:
                    res.failures.append(f"left behind: {what}: {items}")
    res.timings["total_s"] = time.monotonic() - t_start
    res.args["node_memory"] = node_memory
    if interrupted:
        res.args["interrupted"] = True
    return res


# --------------------------------------------------------------------------- report


def ms(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1000:.1f}"


def fx(x: float | None, spec: str = ".2f") -> str:
    """A number for the table; "-" when it could not be computed (a failed or partial run)."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def med(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def build_report(res: Result) -> dict[str, Any]:
    orch = [s for s in res.orch if not s.warmup]
    ref = [s for s in res.ref if not s.warmup]
    o, r = summary([s.latency for s in orch]), summary([s.latency for s in ref])
    rep: dict[str, Any] = {
        "benchmark": "apply_to_running",
        "mode": res.args["mode"],
        "args": res.args,
        "ok": not res.failures,
        "failures": res.failures,
        "orch_apply_to_running_s": o,
        "reference_runtime_start_s": r,
        "ratio_orch_over_ref": {"p50": ratio(o.get("p50", math.nan), r.get("p50", math.nan)),
                                "p99": ratio(o.get("p99", math.nan), r.get("p99", math.nan))},
        "control_plane_added_s": {"p50": o.get("p50", math.nan) - r.get("p50", math.nan),
                                  "p99": o.get("p99", math.nan) - r.get("p99", math.nan)},
        "apply_rpc_s": summary([s.t_return - s.t_call for s in orch]),
        "orch_stages_median_s": {k: med([s.stages()[k] for s in orch]) for k in
                                 ("applied_to_bound", "bound_to_prepare", "prepare_to_exec",
                                  "exec_to_running_seen")},
        "ref_stages_median_s": {k: med([s.stages()[k] for s in ref]) for k in
                                ("call_to_prepare", "prepare_to_exec", "exec_to_return")},
        "timings": res.timings,
        "lab": res.lab,
        "leftovers": res.leftovers,
        "other_orch_cgroups_not_ours": res.others_cgroups,
        "samples": [s.to_json() for s in res.orch + res.ref],  # warm-up ones flagged
    }
    if res.args["mode"] == "sequential":
        half = len(orch) // 2
        rep["drift_p50_s"] = {
            "orch_first_half": percentile([s.latency for s in orch[:half]], 50),
            "orch_second_half": percentile([s.latency for s in orch[half:]], 50),
            "ref_first_half": percentile([s.latency for s in ref[:half]], 50),
            "ref_second_half": percentile([s.latency for s in ref[half:]], 50),
        }
    else:
        rb, ra = summary([s.latency for s in res.ref_before]), summary([s.latency for s in res.ref_after])
        mk = res.makespan
        rep["reference_before_s"], rep["reference_after_s"] = rb, ra
        rep["makespan_s"] = mk
        n = len(orch)
        rep["throughput_pods_per_s"] = {
            "orch": n / mk["orch"] if mk.get("orch") else math.nan,
            "ref_before": len(res.ref_before) / mk["ref_before"] if mk.get("ref_before") else math.nan,
            "ref_after": len(res.ref_after) / mk["ref_after"] if mk.get("ref_after") else math.nan,
        }
        ref_mk = [mk[k] for k in ("ref_before", "ref_after") if k in mk]
        rep["ratio_makespan_orch_over_ref"] = ratio(mk.get("orch", math.nan),
                                                    statistics.fmean(ref_mk) if ref_mk else math.nan)
    if res.cli:
        wall = [c["cli_wall"] for c in res.cli]
        rpc = rep["apply_rpc_s"].get("p50", math.nan)
        rep["cli"] = {
            "pods": res.cli,
            "cli_wall_s": summary(wall),
            "in_process_apply_rpc_p50_s": rpc,
            "cli_startup_overhead_p50_s": percentile(wall, 50) - rpc,
            "applied_to_running_s": summary([c["applied_to_running"] for c in res.cli]),
        }
    return rep


def print_table(rep: dict[str, Any]) -> None:
    a = rep["args"]
    p = print
    o, r = rep["orch_apply_to_running_s"], rep["reference_runtime_start_s"]
    mode = rep["mode"]
    how = ("one pod at a time, orch and reference alternating ABBA" if mode == "sequential" else
           "all pods applied back to back; reference = same number started at once, before and after")
    p(f"apply → Running   mode={mode} ({how})")
    p(f"  {a['pods']} pods, {a['nodes']} nodes, {a['warmup']} warm-up pod(s) per side not counted; "
      f"pod: image host, {' '.join(COMMAND)}, memory limit {MEMORY_LIMIT}")
    p("")
    p(f"  {'':38} {'n':>4} {'min':>8} {'p50':>8} {'mean':>8} {'p99':>8} {'max':>8}   (ms)")

    def row(label: str, s: dict[str, Any]) -> None:
        if not s.get("n"):
            p(f"  {label:38} {0:>4}")
            return
        p(f"  {label:38} {s['n']:>4} {ms(s['min']):>8} {ms(s['p50']):>8} {ms(s['mean']):>8} "
          f"{ms(s['p99']):>8} {ms(s['max']):>8}")

    row("orch: apply returned → Running seen", o)
    if mode == "sequential":
        row("reference: Runtime.start (interleaved)", r)
    else:
        row("reference: Runtime.start, before", rep["reference_before_s"])
        row("reference: Runtime.start, after", rep["reference_after_s"])
        row("reference: before + after", r)
    row("orch: the apply RPC itself", rep["apply_rpc_s"])
    rt = rep["ratio_orch_over_ref"]
    add = rep["control_plane_added_s"]
    p("")
    p(f"  ratio orch/reference:  p50 {fx(rt['p50'])}x   p99 {fx(rt['p99'])}x   "
      f"(control plane adds {ms(add['p50'])} ms at p50, {ms(add['p99'])} ms at p99)")
    if o.get("n", 0) and o["n"] < 100:
        p(f"  note: p99 of {o['n']} samples interpolates between the two largest; read it as ~max")
    if mode == "burst":
        mk, tp = rep["makespan_s"], rep["throughput_pods_per_s"]
        p(f"  makespan (first call → last Running): orch {ms(mk.get('orch'))} ms "
          f"(applies took {ms(mk.get('orch_applies'))} ms), reference {ms(mk.get('ref_before'))} / "
          f"{ms(mk.get('ref_after'))} ms (before/after); ratio {fx(rep['ratio_makespan_orch_over_ref'])}x")
        p(f"  throughput: orch {fx(tp['orch'], '.1f')} pods/s, reference {fx(tp['ref_before'], '.1f')} / "
          f"{fx(tp['ref_after'], '.1f')} containers/s")
        p("  note: in a burst the orch pods arrive spread over the applies while the reference's are all "
          "submitted at once,\n        so the per-pod ratio flatters orch when the applies are slow; "
          "the makespan ratio is the fairer burst figure")
    else:
        d = rep["drift_p50_s"]
        p(f"  drift (p50, first half → second half): orch {ms(d['orch_first_half'])} → "
          f"{ms(d['orch_second_half'])} ms, reference {ms(d['ref_first_half'])} → {ms(d['ref_second_half'])} ms")
    st, rs = rep["orch_stages_median_s"], rep["ref_stages_median_s"]
    p("")
    p("  where the orch time goes (medians, ms; watch arrival stamps and state-file mtimes):")
    p(f"    apply returned → bound (nodeName) seen on the watch     {ms(st['applied_to_bound']):>8}")
    p(f"    bound → agent's runtime begins (config.json written)    {ms(st['bound_to_prepare']):>8}")
    p(f"    runtime: config.json → container exec'd (started.json)  {ms(st['prepare_to_exec']):>8}"
      f"   reference: {ms(rs['prepare_to_exec'])}")
    p(f"    exec'd → Running seen on the watch                      {ms(st['exec_to_running_seen']):>8}"
      f"   reference: exec'd → start() returned {ms(rs['exec_to_return'])}")
    if "cli" in rep:
        c = rep["cli"]
        p("")
        p(f"  orchctl as a command ({c['cli_wall_s']['n']} pod(s), `python -m cli.main apply -f -`): "
          f"wall p50 {ms(c['cli_wall_s']['p50'])} ms (min {ms(c['cli_wall_s']['min'])}, max "
          f"{ms(c['cli_wall_s']['max'])}) vs in-process apply RPC p50 {ms(c['in_process_apply_rpc_p50_s'])} ms "
          f"→ CLI start-up ≈ {ms(c['cli_startup_overhead_p50_s'])} ms; its pods: exit → Running p50 "
          f"{ms(c['applied_to_running_s'].get('p50'))} ms (not in the figures above)")
    t = rep["timings"]
    p("")
    p(f"  run: lab up {fx(t.get('lab_up_s'), '.1f')} s, measuring {fx(t.get('measure_s'), '.1f')} s, "
      f"clean-up {fx(t.get('cleanup_s'), '.1f')} s, total {fx(t.get('total_s'), '.1f')} s")
    left = [f"{k}: {len(v)}" for k, v in rep["leftovers"].items() if v]
    p(f"  left behind: {', '.join(left) if left else 'nothing (cgroups, processes, mounts, temp dir checked)'}")
    if rep["other_orch_cgroups_not_ours"]:
        p(f"  (other orch cgroups on this machine, not this run's: {len(rep['other_orch_cgroups_not_ours'])})")
    if rep["failures"]:
        p("")
        for f in rep["failures"]:
            p(f"  FAILED: {f}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=50, help="pods measured (default 50)")
    p.add_argument("--nodes", type=int, default=2, help="lab nodes (default 2)")
    p.add_argument("--mode", choices=["sequential", "burst"], default="sequential")
    p.add_argument("--warmup", type=int, default=2, help="pods per side run first and not counted (default 2)")
    p.add_argument("--cli-pods", type=int, default=5,
                   help="extra pods applied via `python -m cli.main apply -f -` (default 5; 0: none)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a pod may take to be Running (default 60)")
    p.add_argument("--node-cpu", default="4", help="CPU each lab node advertises (default 4)")
    p.add_argument("--node-memory", default=None, help="memory each lab node advertises (default: enough for all pods)")
    p.add_argument("--insecure", action="store_true",
                   help="a plaintext lab (lab up --insecure), to see what mutual TLS costs the path")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    args = p.parse_args(argv)
    if args.pods < 1 or args.nodes < 1 or args.warmup < 0 or args.cli_pods < 0:
        p.error("--pods and --nodes must be at least 1, --warmup and --cli-pods at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("error: needs root (the lab and the runtime create namespaces and cgroups)", file=sys.stderr)
        return 1

    raise_on_sigterm()
    res = run(args)
    return report(build_report(res), args.json, print_table, interrupted=bool(res.args.get("interrupted")),
                  failed=bool(res.failures))


if __name__ == "__main__":
    sys.exit(main())
