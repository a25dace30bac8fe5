"""Node overhead: the memory an orch node costs beside its containers.

Proportional set size (PSS, from /proc/PID/smaps_rollup: shared pages divided among
the processes sharing them) of the agent plus every process that supervises
containers (one orch-monitor per container, and the fork server the shims come
from), with 0 and with N running `sleep` containers on a one-node lab. Issue 3's
target: <= 150 MiB at 100 containers.

The reference, in the same run: N plain `/bin/sleep` processes started by this
script, the smallest process a C program makes; the ratio says how close a
container's supervisor comes to that floor.

    .venv/bin/python bench/node_overhead.py [--containers 100] [--json]

Memory is not noisy the way time is; the figures are still from one run, printed
as measured. Everything the run starts is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli import lab  # noqa: E402

MiB = 1024 * 1024


def pss(pid: int) -> int:
    """Bytes of proportional set size; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def supervisors(state_dir: Path) -> dict[str, list[int]]:
    """The monitors (in their shim's place: shim.pid) and the fork server."""
    shims = []
    for f in (state_dir / "containers").glob("*/shim.pid"):
        shims.append(int(f.read_text().split()[0]))
    forkserver = []
    record = state_dir / "forkserver.json"
    if record.exists():
        forkserver.append(int(json.loads(record.read_text())["pid"]))
    return {"shims": shims, "forkserver": forkserver}


def measure(info: dict[str, Any]) -> dict[str, float]:
    agent = info["agents"][0]
    procs = supervisors(Path(agent["state_dir"]))
    out = {"agent": pss(agent["pid"]) / MiB,
           "shims": sum(pss(p) for p in procs["shims"]) / MiB,
           "forkserver": sum(pss(p) for p in procs["forkserver"]) / MiB,
           "n_shims": float(len(procs["shims"]))}
    out["total"] = out["agent"] + out["shims"] + out["forkserver"]
    return out


def run_orch(n: int, timeout: float) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="orch-bench-pss-"))
    try:
        info = lab.up(d / "lab", 1, node_cpu="64", node_memory="64Gi")
        time.sleep(2)  # the agent settles after registration
        idle = measure(info)
        pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"s{i}", "namespace": "bench"},
                 "spec": {"terminationGracePeriodSeconds": 0,
                          "containers": [{"name": "c", "image": "host", "command": ["/bin/sleep", "3600"],
                                          "resources": {"limits": {"memory": "16Mi"}}}]}} for i in range(n)]
        with lab.client(info, timeout=60) as client:  # the lab's admin certificate
            for start in range(0, n, 50):
                client.apply(pods[start:start + 50])
            deadline = time.monotonic() + timeout
            while True:
                items, _ = client.list("Pod", "bench")
                running = sum(1 for p in items if p.get("status", {}).get("phase") == "Running")
                if running == n:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {running}/{n} pods Running after {timeout:.0f}s")
                time.sleep(0.5)
        time.sleep(3)  # reports sent, probes idle: a steady state
        return {"idle": idle, "loaded": measure(info)}
    finally:
        lab.down(d / "lab")
        shutil.rmtree(d, ignore_errors=True)


def run_reference(n: int) -> float:
    """MiB of PSS of ``n`` plain ``/bin/sleep`` processes, started and ended here (by PID)."""
    procs = [subprocess.Popen(["/bin/sleep", "3600"], stdin=subprocess.DEVNULL) for _ in range(n)]
    try:
        time.sleep(0.5)
        return sum(pss(p.pid) for p in procs) / MiB
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("error: needs root (the lab makes namespaces and cgroups)", file=sys.stderr)
        return 1
    orch = run_orch(args.containers, args.timeout)
    ref = run_reference(args.containers)
    n = args.containers
    loaded = orch["loaded"]
    per = loaded["shims"] / max(1.0, loaded["n_shims"])
    per_ref = ref / n
    if args.json:
        print(json.dumps({"containers": n, "orch": orch, "reference_sleep_total": ref,
                          "per_monitor": per, "per_sleep": per_ref}, indent=2))
        return 0
    print(f"node overhead (PSS, MiB): one-node lab, 0 and {n} running `sleep` containers (image host)")
    print(f"{'':26}{'agent':>9}{'monitors':>10}{'forkserv':>9}{'total':>9}")
    for label, side in (("orch, 0 containers", orch["idle"]), (f"orch, {n} containers", loaded)):
        print(f"  {label:24}{side['agent']:9.1f}{side['shims']:10.1f}{side['forkserver']:9.1f}{side['total']:9.1f}")
    print(f"  reference: {n} plain /bin/sleep processes: {ref:.1f} MiB")
    print(f"  per container: orch-monitor {per:.3f} MiB vs /bin/sleep {per_ref:.3f} MiB (ratio {per / per_ref:.2f})")
    verdict = "within" if loaded["total"] <= 150 else "OVER"
    print(f"  total at {n} containers: {loaded['total']:.1f} MiB, {verdict} the 150 MiB target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
