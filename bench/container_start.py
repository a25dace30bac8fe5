#!/usr/bin/env python3
"""Benchmark: container start of a busybox ``/bin/true``, orch's node runtime against ``runc run``.

What is timed
-------------
**orch**: ``Runtime(state_dir, "orch-bench-<random>").start(ContainerConfig(image="busybox:bench",
layer_dirs=..., argv=["/bin/true"]))`` — the busybox image is built from Debian's ``/bin/busybox``
(``tests/imagebuild.py``) and imported into an ``agent.images.ImageStore`` in the temp dir. Every
run is a new pod (new pod uid), so ``start`` also makes the pod's sandbox namespaces, as runc makes
its container's namespaces. The clock starts right before ``start`` is called; three instants end:

* ``start-returned``: ``start`` returned (RUNNING, or already EXITED with exit code 0) — what the
  agent waits for;
* ``pid1-exit``: the container's PID 1 (``/bin/true``) observed exiting, through a pidfd on the pid
  the runtime reported (if ``start`` returned EXITED, the return instant: an upper bound);
* ``exit-recorded`` (**headline**): the container's ``exit.json`` (written by its monitor) exists,
  i.e. ``Runtime.state`` would answer EXITED — the container ran and its exit is known to the
  caller. Polled every 0.2 ms.

**runc** (the reference): ``runc --root <tmp> run --bundle <bundle> <id>`` of an OCI bundle
whose rootfs is a copy of the same unpacked busybox layer (read-only root, ``args
["/bin/true"]``, no terminal, ``linux.cgroupsPath`` under a unique parent
``orch-bench-<random>-runc``), timed from just before the ``runc`` process is spawned to it
exiting. ``runc run`` returns once the container has exited and runc has torn it down, so this is
the same "ran and its exit is known" event as orch's ``exit-recorded`` (runc's also includes
its own teardown, which orch does later in ``remove``).

The two alternate in ABBA order (orch, runc, runc, orch, ...), ``--warmup`` runs each first (not
counted). Each container is removed after its run, outside the timed part (``Runtime.remove`` +
``Runtime.remove_pod``; ``runc delete --force``).

A per-stage split of orch's ``start`` is taken by wrapping the Runtime instance's own methods
(``_ensure_sandbox``, ``_prepare``, ``_launch``) with timers — the code is not changed.

Cleanup (also on failure / Ctrl-C / SIGTERM): ``Runtime.cleanup_all`` (containers, shims, the
fork server, sandboxes, cgroups), ``runc delete --force`` of every id used, the cgroup roots of
both sides, the temp dir. Then it checks that no cgroup named after this run
(``/sys/fs/cgroup``, depth 3), no runc container in its ``--root``, no mount mentioning the temp
dir and no process of the run is left; a leftover makes the exit status 1.

Usage::

    .venv/bin/python bench/container_start.py              # 50 runs each (~30 s)
    .venv/bin/python bench/container_start.py --runs 20 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.stats import (  # noqa: E402
    BenchFailure, percentile, print_ending, raise_on_sigterm, ratio, record_failure, report, summary,
    uninterruptible,
)

RUNC = Path("/usr/bin/runc")
ARGV = ["/bin/true"]
IMAGE = "busybox:bench"
EXIT_POLL = 0.0002


def progress(msg: str) -> None:
    print(f"[container_start] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- statistics


# --------------------------------------------------------------------------- runc


def ensure_runc() -> str:
    if RUNC.exists():
        return f"runc: {RUNC} present"
    progress("runc missing: apt-get install -y runc")
    proc = subprocess.run(["apt-get", "install", "-y", "runc"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not RUNC.exists():
        raise BenchFailure(f"apt-get install -y runc failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return f"runc: {RUNC} was missing; installed it with `apt-get install -y runc`"


def runc_version() -> str:
    out = subprocess.run([str(RUNC), "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "?"


def make_bundle(bundle: Path, layer: Path) -> None:
    """An OCI bundle: a copy of the busybox layer as rootfs, config.json from `runc spec`, edited."""
    bundle.mkdir()
    shutil.copytree(layer, bundle / "rootfs", symlinks=True)
    subprocess.run([str(RUNC), "spec", "--bundle", str(bundle)], check=True, capture_output=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = list(ARGV)
    spec["process"]["terminal"] = False
    spec["root"] = {"path": "rootfs", "readonly": True}
    spec["hostname"] = "bench"
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))


def runc_cmd(state_root: Path, *args: str) -> list[str]:
    return [str(RUNC), "--root", str(state_root), *args]


def runc_list(state_root: Path) -> list[str]:
    if not state_root.exists():
        return []
    proc = subprocess.run(runc_cmd(state_root, "list", "-q"), capture_output=True, text=True, check=False)
    return [line for line in proc.stdout.split() if line]


# --------------------------------------------------------------------------- the two sides


class OrchSide:
    def __init__(self, tmp: Path, cgroup_root: str, layer_dirs: list[str]) -> None:
        from agent.runtime.runtime import Runtime

        self.rt = Runtime(tmp / "orch-state", cgroup_root)
        self.layer_dirs = layer_dirs
        self.stage: dict[str, float] = {}
        for name in ("_ensure_sandbox", "_prepare", "_launch"):
            self._wrap(name)

    def _wrap(self, name: str) -> None:
        inner = getattr(self.rt, name)

        def timed(*a: Any, **kw: Any) -> Any:
            t = time.monotonic()
            try:
                return inner(*a, **kw)
            finally:
                self.stage[name] = time.monotonic() - t

        setattr(self.rt, name, timed)  # this instance only; the class is untouched

    def one(self) -> dict[str, Any]:
        from agent.runtime import shim as _shim
        from agent.runtime.runtime import ContainerConfig, ContainerStatus

        cfg = ContainerConfig(
            id=secrets.token_hex(16), pod_uid=secrets.token_hex(8), pod_namespace="bench", pod_name="bench",
            name="true", image=IMAGE, argv=list(ARGV), env={}, working_dir="", hostname="bench",
            memory_limit_bytes=None, cpu_limit_millis=None, cpu_request_millis=None, pids_limit=None,
            layer_dirs=list(self.layer_dirs),
        )
        exit_file = self.rt.containers_dir / cfg.id / _shim.EXIT_FILE
        self.stage = {}
        try:
            t0 = time.monotonic()
            st = self.rt.start(cfg)
            t_ret = time.monotonic()
            t_pid1 = t_ret
            if st.status == ContainerStatus.RUNNING and st.pid is not None:
                try:
                    fd = os.pidfd_open(st.pid)
                except ProcessLookupError:
                    fd = -1
                if fd >= 0:
                    try:
                        select.select([fd], [], [], 10)
                    finally:
                        os.close(fd)
                t_pid1 = time.monotonic()
            deadline = time.monotonic() + 10
            while not exit_file.exists():
                if time.monotonic() > deadline:
                    raise BenchFailure(f"orch container {cfg.id}: no exit.json within 10 s")
                time.sleep(EXIT_POLL)
            t_exit = time.monotonic()
            done = self.rt.state(cfg.id)
            if done.exit_code != 0:
                raise BenchFailure(f"orch container {cfg.id}: {done.status} exit {done.exit_code} "
                                   f"{done.reason}: {done.message}")
            stages = {k.lstrip("_"): v for k, v in self.stage.items()}
            stages["poll_until_started"] = (t_ret - t0) - sum(stages.values())
            return {"start_returned": t_ret - t0, "pid1_exit": t_pid1 - t0, "exit_recorded": t_exit - t0,
                    "start_status": str(st.status), "stages": stages}
        finally:
            self.rt.remove(cfg.id)
            self.rt.remove_pod(cfg.pod_uid)

    def cleanup(self) -> None:
        self.rt.cleanup_all()


class RuncSide:
    def __init__(self, tmp: Path, bundle: Path, cgroup_parent: str) -> None:
        self.state_root = tmp / "runc-state"
        self.bundle = bundle
        self.cgroup_parent = cgroup_parent
        self.ids: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.err_path = tmp / "runc.stderr"

    def one(self) -> dict[str, Any]:
        cid = f"orch-bench-{secrets.token_hex(6)}"
        self.ids.append(cid)
        spec_path = self.bundle / "config.json"
        spec = json.loads(spec_path.read_text())
        spec["linux"]["cgroupsPath"] = f"/{self.cgroup_parent}/{cid}"
        spec_path.write_text(json.dumps(spec, indent=2))
        try:
            with open(self.err_path, "wb") as err:
                t0 = time.monotonic()
                self.proc = subprocess.Popen(runc_cmd(self.state_root, "run", "--bundle", str(self.bundle), cid),
                                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
                rc = self.proc.wait()
                t1 = time.monotonic()
            self.proc = None
            if rc != 0:
                raise BenchFailure(f"runc run {cid} exited {rc}: {self.err_path.read_text().strip()[-500:]}")
            return {"run_to_exit": t1 - t0}
        finally:
            self.delete(cid)

    def delete(self, cid: str) -> None:
        subprocess.run(runc_cmd(self.state_root, "delete", "--force", cid), capture_output=True, check=False)

    def cleanup(self) -> list[str]:
        errors = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # the runc we started, by its Popen (pid)
            self.proc.wait()
        for cid in runc_list(self.state_root):
            self.delete(cid)
        for cid in self.ids:
            self.delete(cid)
        # runc removes each container's cgroup; the parent is ours to remove (every v1 hierarchy, or v2).
        for d in cgroup_dirs_named(self.cgroup_parent):
            for sub in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir():
                    try:
                        sub.rmdir()
                    except OSError as e:
                        errors.append(f"{sub}: {e}")
            try:
                d.rmdir()
            except OSError as e:
                errors.append(f"{d}: {e}")
        return errors


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
                        p = Path(e.path)
                        nxt.append(p)
                        if token in e.name:
                            out.append(p)
            except OSError:
                continue
        frontier = nxt
    return out


def leftovers(tmp: Path, token: str, runc_root: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"cgroups": [str(p) for p in cgroup_dirs_named(token)],
                                   "runc_containers": runc_list(runc_root), "processes": [], "mounts": [],
                                   "files": []}
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"args": vars(args).copy(), "failures": [], "samples": [], "notes": []}
    t_start = time.monotonic()
    token = f"orch-bench-{secrets.token_hex(4)}"
    orch_root, runc_parent = token, f"{token}-runc"
    tmp = Path(tempfile.mkdtemp(prefix=f"{token}-"))
    res["cgroups"] = {"orch_root": orch_root, "runc_parent": runc_parent}
    orch: OrchSide | None = None
    runc: RuncSide | None = None
    interrupted = False
    try:
        res["notes"].append(ensure_runc())
        res["notes"].append(runc_version())
        from agent.images import ImageStore
        from tests import imagebuild as ib

        if not ib.BUSYBOX.exists():
            raise BenchFailure("needs Debian's busybox-static (/bin/busybox)")
        progress(f"building busybox image, importing it into an ImageStore in {tmp}")
        store = ImageStore(tmp / "images")
        store.import_archive(ib.write_oci_layout(tmp / "layout", [(ib.busybox_image(), IMAGE)]))
        image = store.resolve(IMAGE)
        if image is None:
            raise BenchFailure(f"{IMAGE} not in the store after import")
        layer_dirs = [str(p) for p in store.layer_dirs(image)]
        if len(layer_dirs) != 1:
            raise BenchFailure(f"expected one busybox layer, got {layer_dirs}")
        make_bundle(tmp / "bundle", Path(layer_dirs[0]))
        orch = OrchSide(tmp, orch_root, layer_dirs)
        runc = RuncSide(tmp, tmp / "bundle", runc_parent)
        sides = {"orch": orch.one, "runc": runc.one}

        total = args.warmup + args.runs
        progress(f"{args.warmup} warm-up + {args.runs} measured runs each, ABBA")
        for i in range(total):
            order = ("orch", "runc") if i % 2 == 0 else ("runc", "orch")
            for side in order:
                s = sides[side]()
                s.update(side=side, warmup=i < args.warmup, pair=i)
                res["samples"].append(s)
            if (i + 1) % 10 == 0:
                progress(f"{i + 1}/{total}")
    except BaseException as e:  # noqa: BLE001 - recorded; cleanup and the report still happen
        interrupted = record_failure(e, res["failures"])
    finally:
        with uninterruptible():
            progress("cleaning up")
            if runc is not None:
                try:
                    for err in runc.cleanup():
                        res["failures"].append(f"cleanup: runc cgroup {err}")
                except Exception as e:  # noqa: BLE001
                    res["failures"].append(f"cleanup: runc: {e}")
            try:
                if orch is not None:
                    orch.cleanup()
                from agent.runtime.cgroups import detect_driver

                detect_driver().remove(orch_root)
            except Exception as e:  # noqa: BLE001
                res["failures"].append(f"cleanup: orch runtime: {e}")
            runc_root = tmp / "runc-state"
            left_runc = runc_list(runc_root)  # before the temp dir (runc's --root) goes
            shutil.rmtree(tmp, ignore_errors=True)
            res["leftovers"] = leftovers(tmp, token, runc_root)
            res["leftovers"]["runc_containers"] = left_runc
            for what, items in res["leftovers"].items():
                if items:
                    res["failures"].append(f"left behind: {what}: {items}")
            res["other_orch_bench_cgroups"] = [str(p) for p in cgroup_dirs_named("orch-bench")
                                               if token not in p.name]
    res["interrupted"] = interrupted
    res["total_s"] = time.monotonic() - t_start
    return res


def build_report(res: dict[str, Any]) -> dict[str, Any]:
    meas = [s for s in res["samples"] if not s["warmup"]]
    orch = [s for s in meas if s["side"] == "orch"]
    runc = [s for s in meas if s["side"] == "runc"]
    runc_s = summary([s["run_to_exit"] for s in runc])
    stats = {
        "orch_exit_recorded": summary([s["exit_recorded"] for s in orch]),
        "orch_pid1_exit": summary([s["pid1_exit"] for s in orch]),
        "orch_start_returned": summary([s["start_returned"] for s in orch]),
        "runc_run_to_exit": runc_s,
    }
    ratios = {k: {q: ratio(v.get(q, math.nan), runc_s.get(q, math.nan)) for q in ("p50", "p99")}
              for k, v in stats.items() if k.startswith("orch")}
    stage_names = sorted({k for s in orch for k in s["stages"]})
    stages = {k: percentile([s["stages"].get(k, 0.0) for s in orch], 50) for k in stage_names}
    statuses: dict[str, int] = {}
    for s in orch:
        statuses[s["start_status"]] = statuses.get(s["start_status"], 0) + 1
    headline = ratios.get("orch_exit_recorded", {}).get("p50", math.nan)
    return {"stats": stats, "ratios_vs_runc": ratios, "orch_stage_p50": stages,
            "orch_start_returned_status": statuses,
            "target": {"what": "p50 orch exit_recorded / runc run_to_exit <= 1.0", "ratio": headline,
                       "met": bool(headline <= 1.0) if not math.isnan(headline) else False},
            "cgroups": res.get("cgroups"), "notes": res["notes"], "failures": res["failures"],
            "leftovers": res.get("leftovers"), "other_orch_bench_cgroups": res.get("other_orch_bench_cgroups"),
            "total_s": res["total_s"], "args": res["args"], "samples": res["samples"]}


def print_table(rep: dict[str, Any]) -> None:
    def ms(v: Any) -> str:
        return "     -" if v is None else f"{v * 1000:8.2f}"

    for n in rep["notes"]:
        print(n)
    print(f"cgroups: orch root {rep['cgroups']['orch_root']}, runc parent {rep['cgroups']['runc_parent']}")
    print()
    print("Container start of busybox /bin/true, ms (orch = Runtime.start, runc = `runc run`), ABBA-alternated")
    print(f"{'':34}{'n':>4}{'min':>9}{'p50':>9}{'mean':>9}{'p99':>9}{'max':>9}")
    labels = {"orch_exit_recorded": "orch  call -> exit recorded  [*]",
              "runc_run_to_exit": "runc  spawn -> run returned  [*]",
              "orch_pid1_exit": "orch  call -> PID 1 exited",
              "orch_start_returned": "orch  call -> start() returned"}
    for key, label in labels.items():
        s = rep["stats"][key]
        print(f"{label:34}{s.get('n', 0):>4}" + "".join(f"{ms(s.get(q)):>9}"
                                                          for q in ("min", "p50", "mean", "p99", "max")))
    print()
    print("ratio orch / runc (runc spawn -> `runc run` returned):")
    for key, r in rep["ratios_vs_runc"].items():
        p50, p99 = r["p50"], r["p99"]
        f = (lambda v: "  -  " if v is None else f"{v:5.2f}x")
        print(f"  {labels[key]:34} p50 {f(p50)}   p99 {f(p99)}")
    t = rep["target"]
    print(f"\n[*] headline. Target {t['what']}: ratio {t['ratio']:.2f} -> "
          f"{'MET' if t['met'] else 'NOT MET'}" if t["ratio"] is not None else "\ntarget: no data")
    print(f"start() returned with: {rep['orch_start_returned_status']}")
    print("orch start() stages, p50 ms: " + ", ".join(f"{k} {v * 1000:.2f}" for k, v in rep["orch_stage_p50"].items()))
    if rep.get("other_orch_bench_cgroups"):
        print(f"(not ours, left alone: other orch-bench cgroups {rep['other_orch_bench_cgroups']})")
    print_ending(rep)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=50, help="measured runs per side (default 50)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up runs per side, not counted (default 3)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be at least 1, --warmup at least 0")
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
