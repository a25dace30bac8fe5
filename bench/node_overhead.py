"""Node overhead: the memory an orch node costs beside its containers.

Proportional set size (PSS, from /proc/PID/smaps_rollup: shared pages divided among
the processes sharing them) of the agent plus every process that supervises
containers (the shims and the fork server), with 0 and with N running `sleep`
containers on a one-node lab. Issue 3's target: <= 150 MiB at 100 containers.

The reference, in the same run: the same N containers with each shim started as a
fresh Python interpreter (ORCH_SHIM_LAUNCHER=exec) instead of forked from the
node's fork server, so the ratio shows what the fork server saves.

    .venv/bin/python bench/node_overhead.py [--containers 100] [--json]

Memory is not noisy the way time is; the figures are still from one run, printed
as measured. Everything the run starts is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli import lab  # noqa: E402
from cli.client import ClusterClient  # noqa: E402

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


def run_side(n: int, launcher: str, timeout: float) -> dict[str, Any]:
    os.environ["ORCH_SHIM_LAUNCHER"] = launcher
    d = Path(tempfile.mkdtemp(prefix="orch-bench-pss-"))
    try:
        info = lab.up(d / "lab", 1, node_cpu="64", node_memory="64Gi")
        time.sleep(2)  # the agent settles after registration
        idle = measure(info)
        pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"s{i}", "namespace": "bench"},
                 "spec": {"terminationGracePeriodSeconds": 0,
                          "containers": [{"name": "c", "image": "host", "command": ["/bin/sleep", "3600"],
                                          "resources": {"limits": {"memory": "16Mi"}}}]}} for i in range(n)]
        with ClusterClient(info["server"], timeout=60) as client:
            for start in range(0, n, 50):
                client.apply(pods[start:start + 50])
            deadline = time.monotonic() + timeout
            while True:
                items, _ = client.list("Pod", "bench")
                running = sum(1 for p in items if p.get("status", {}).get("phase") == "Running")
                if running == n:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{launcher}: only {running}/{n} pods Running after {timeout:.0f}s")
                time.sleep(0.5)
        time.sleep(3)  # reports sent, probes idle: a steady state
        loaded = measure(info)
        return {"launcher": launcher, "idle": idle, "loaded": loaded}
    finally:
        lab.down(d / "lab")
        os.environ.pop("ORCH_SHIM_LAUNCHER", None)
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("error: needs root (the lab makes namespaces and cgroups)", file=sys.stderr)
        return 1
    orch = run_side(args.containers, "forkserver", args.timeout)
    ref = run_side(args.containers, "exec", args.timeout)
    if args.json:
        print(json.dumps({"containers": args.containers, "orch": orch, "reference": ref}, indent=2))
        return 0
    n = args.containers
    print(f"node overhead (PSS, MiB): one-node lab, 0 and {n} running `sleep` containers (image host)")
    print(f"{'':34}{'agent':>9}{'shims':>9}{'forkserv':>9}{'total':>9}")
    for label, side in (("shims forked (orch), 0", orch["idle"]), (f"shims forked (orch), {n}", orch["loaded"]),
                        (f"shims as new processes (ref), {n}", ref["loaded"])):
        print(f"  {label:32}{side['agent']:9.1f}{side['shims']:9.1f}{side['forkserver']:9.1f}{side['total']:9.1f}")
    per = (orch["loaded"]["shims"] / max(1.0, orch["loaded"]["n_shims"]))
    per_ref = (ref["loaded"]["shims"] / max(1.0, ref["loaded"]["n_shims"]))
    print(f"  per shim: {per:.2f} MiB forked vs {per_ref:.2f} MiB as a new process "
          f"(ratio {per / per_ref:.2f})")
    verdict = "within" if orch["loaded"]["total"] <= 150 else "OVER"
    print(f"  total at {n} containers: {orch['loaded']['total']:.1f} MiB, {verdict} the 150 MiB target; "
          f"the reference layout: {ref['loaded']['total']:.1f} MiB (ratio {orch['loaded']['total'] / ref['loaded']['total']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
