#!/usr/bin/env python3
"""Benchmark: pod network set-up, orch's pyroute2 library against the same steps as ``ip`` commands.

What is timed
-------------
The network namespaces are made beforehand and are not timed (the runtime's sandbox makes a
pod's namespace; issue 5's figure here is what the *network* adds): a "node" namespace with two
bridges, and one fresh namespace per pod and side, all under ``/run/netns/orch-bench-<random>-*``
(bind mounts, as ``ip netns add`` makes them, so ``ip -n NAME`` finds them).

**orch**: ``PodNetwork.attach(pod_uid, netns_path)`` of ``agent.network`` on bridge ``orch0``
(10.244.3.0/24): IPAM allocation on disk (flock, O_EXCL file), the veth pair created with its
peer inside the pod's namespace, enslaved and up in one request, then in the pod's namespace
eth0 up, its address, the default route via the gateway.

**ip** (the reference): iproute2's ``ip``, the fewest commands that do the same on bridge
``ipbr0`` (10.244.4.0/24, addresses precomputed: no IPAM)::

    ip -n NODE link add vethX master ipbr0 up type veth peer name eth0 netns POD
    ip -n POD link set eth0 up
    ip -n POD addr add 10.244.4.N/24 dev eth0
    ip -n POD route add default via 10.244.4.1

timed from before the first spawn to the last command's exit. The sides alternate in ABBA
order (orch, ip, ip, orch, ...) after ``--warmup`` pods per side, so machine noise hits both
alike. Every pod's result is checked afterwards (not timed): eth0 up with its address and a
default route. The headline is the p50 ratio orch / ip (target <= 1.0, issue 5); p99 beside it.
Also shown, not compared: orch's ``detach`` (veth deleted, address released).

Cleanup (also on failure / Ctrl-C / SIGTERM): every namespace of the run is unmounted and
removed (their veth ends die with them), the node namespace with its bridges; ``/run/netns``
is removed again if this run created it. Then it checks that no ``/run/netns`` entry and no
mount of the run is left; a leftover makes the exit status 1. Nothing touches the host's own
namespace: no link, route, address or sysctl of it changes.

Usage::

    .venv/bin/python bench/pod_network_setup.py              # 100 pods per side (~5 s)
    .venv/bin/python bench/pod_network_setup.py --pods 50 --json
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.stats import BenchFailure, print_ending, raise_on_sigterm, ratio, report, summary

NETNS_DIR = Path("/run/netns")
ORCH_CIDR = "10.244.3.0/24"
IP_BRIDGE = "ipbr0"


def progress(msg: str) -> None:
    print(f"[pod_network_setup] {msg}", file=sys.stderr, flush=True)


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchFailure(f"ip {' '.join(args)}: {proc.stderr.strip()}")


class Run:
    def __init__(self, pods: int, warmup: int) -> None:
        from agent.network import netns

        self.netns = netns
        self.prefix = f"orch-bench-{secrets.token_hex(3)}"
        self.made_netns_dir = False
        self.namespaces: list[Path] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.n = pods + warmup
        self.warmup = warmup

    def namespace(self, name: str) -> Path:
        path = NETNS_DIR / f"{self.prefix}-{name}"
        self.netns.create(path)
        self.namespaces.append(path)
        return path

    def setup(self) -> None:
        from agent.network import PodNetwork

        if not NETNS_DIR.exists():
            NETNS_DIR.mkdir(mode=0o755)
            self.made_netns_dir = True
        self.node = self.namespace("node")
        self.pn = PodNetwork(ORCH_CIDR, self.tmp / "state", node_netns=self.node)
        self.pn.ensure_bridge(forwarding=False)
        node = self.node.name
        ip("-n", node, "link", "add", IP_BRIDGE, "type", "bridge")
        ip("-n", node, "addr", "add", "10.244.4.1/24", "dev", IP_BRIDGE)
        ip("-n", node, "link", "set", IP_BRIDGE, "up")
        self.orch_pods = [(f"{self.prefix}-o{i}", self.namespace(f"o{i}")) for i in range(self.n)]
        self.ip_pods = [self.namespace(f"i{i}") for i in range(self.n)]

    def orch_one(self, i: int) -> float:
        uid, path = self.orch_pods[i]
        t0 = time.monotonic()
        self.pn.attach(uid, path)
        return time.monotonic() - t0

    def ip_one(self, i: int) -> float:
        pod = self.ip_pods[i].name
        node = self.node.name
        t0 = time.monotonic()
        ip("-n", node, "link", "add", f"vethip{i}", "master", IP_BRIDGE, "up",
           "type", "veth", "peer", "name", "eth0", "netns", pod)
        ip("-n", pod, "link", "set", "eth0", "up")
        ip("-n", pod, "addr", "add", f"10.244.4.{i + 2}/24", "dev", "eth0")
        ip("-n", pod, "route", "add", "default", "via", "10.244.4.1")
        return time.monotonic() - t0

    def verify(self) -> None:
        from agent.network.podnet import rtnl

        for path, gw in [(p, "10.244.3.1") for _, p in self.orch_pods] + [(p, "10.244.4.1") for p in self.ip_pods]:
            with rtnl(path) as ipr:
                eth0 = ipr.link("get", ifname="eth0")[0]
                addrs = [a.get("IFA_ADDRESS") for a in ipr.addr("dump", family=socket.AF_INET, index=eth0["index"])]
                default = [r for r in ipr.route("dump", family=socket.AF_INET) if r["dst_len"] == 0
                           and r.get("RTA_GATEWAY") == gw]
            if not eth0["flags"] & 1 or not addrs or not default:
                raise BenchFailure(f"{path.name}: eth0 not set up (up={eth0['flags'] & 1}, {addrs}, {default})")

    def detach_all(self) -> list[float]:
        out = []
        for uid, path in self.orch_pods:
            t0 = time.monotonic()
            self.pn.detach(uid, path)
            out.append(time.monotonic() - t0)
        return out

    def cleanup(self) -> dict[str, Any]:
        for path in reversed(self.namespaces):
            try:
                self.netns.remove(path)
            except OSError as e:
                progress(f"removing {path}: {e}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        left_ns = sorted(p.name for p in NETNS_DIR.glob(f"{self.prefix}-*")) if NETNS_DIR.exists() else []
        with open("/proc/self/mountinfo") as f:
            left_mounts = [line.split()[4] for line in f if self.prefix in line]
        if self.made_netns_dir and not left_ns:
            try:
                NETNS_DIR.rmdir()
            except OSError as e:
                progress(f"{NETNS_DIR} not removed: {e}")
        return {"namespaces": left_ns, "mounts": left_mounts, "tmp": [str(self.tmp)] if self.tmp.exists() else []}


def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"orch": [], "ip": [], "warmup": {"orch": [], "ip": []}, "detach": [], "failures": [],
                           "interrupted": False, "leftovers": {}}
    t_start = time.monotonic()
    r = Run(args.pods, args.warmup)
    try:
        progress(f"creating {2 * r.n + 1} namespaces under {NETNS_DIR}/{r.prefix}-*")
        r.setup()
        for i in range(r.n):
            # ABBA: orch first on even pairs, ip first on odd ones
            order = ("orch", "ip") if (i % 2 == 0) else ("ip", "orch")
            for side in order:
                dt = r.orch_one(i) if side == "orch" else r.ip_one(i)
                (res["warmup"][side] if i < r.warmup else res[side]).append(dt)
        r.verify()
        res["detach"] = r.detach_all()
    except KeyboardInterrupt:
        res["interrupted"] = True
    except Exception as e:  # noqa: BLE001 - reported, and the run still cleans up
        res["failures"].append(f"{type(e).__name__}: {e}")
    finally:
        res["leftovers"] = r.cleanup()
        if any(res["leftovers"].values()):
            res["failures"].append(f"leftovers: {res['leftovers']}")
    res["total_s"] = time.monotonic() - t_start
    return res


def build_report(res: dict[str, Any]) -> dict[str, Any]:
    orch, ref = summary(res["orch"]), summary(res["ip"])
    r50 = ratio(orch.get("p50", float("nan")), ref.get("p50", float("nan")))
    r99 = ratio(orch.get("p99", float("nan")), ref.get("p99", float("nan")))
    return {"stats": {"orch_attach": orch, "ip_commands": ref, "orch_detach": summary(res["detach"])},
            "ratio": {"p50": r50, "p99": r99},
            "target": {"what": "p50 orch / ip <= 1.0", "ratio": r50, "met": r50 <= 1.0},
            "samples": {"orch": res["orch"], "ip": res["ip"], "warmup": res["warmup"]},
            "failures": res["failures"], "leftovers": res["leftovers"], "total_s": res["total_s"]}


def print_table(rep: dict[str, Any]) -> None:
    def ms(v: Any) -> str:
        return "-" if v is None else f"{v * 1000:.2f}"

    print()
    print("Pod network set-up (veth + address + default route), ms; ABBA-alternated")
    print(f"{'':34}{'n':>4}{'min':>9}{'p50':>9}{'mean':>9}{'p99':>9}{'max':>9}")
    labels = {"orch_attach": "orch  PodNetwork.attach   [*]", "ip_commands": "ip    4 commands           [*]",
              "orch_detach": "orch  PodNetwork.detach"}
    for key, label in labels.items():
        s = rep["stats"][key]
        print(f"{label:34}{s.get('n', 0):>4}" + "".join(f"{ms(s.get(q)):>9}"
                                                          for q in ("min", "p50", "mean", "p99", "max")))
    f = (lambda v: "  -  " if v is None else f"{v:5.2f}x")
    print(f"\nratio orch / ip: p50 {f(rep['ratio']['p50'])}   p99 {f(rep['ratio']['p99'])}")
    t = rep["target"]
    print(f"[*] headline. Target {t['what']}: "
          + ("no data" if t["ratio"] is None else f"ratio {t['ratio']:.2f} -> {'MET' if t['met'] else 'NOT MET'}"))
    print_ending(rep)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pods", type=int, default=100, help="measured pods per side (default 100)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up pods per side, not counted (default 3)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    args = p.parse_args(argv)
    if not 1 <= args.pods <= 240 or args.warmup < 0 or args.pods + args.warmup > 250:
        p.error("--pods between 1 and 240, --warmup at least 0, together at most 250 (one /24 per side)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("error: needs root (network namespaces, bind mounts)", file=sys.stderr)
        return 1
    if shutil.which("ip") is None:
        print("error: needs iproute2's `ip` for the reference side", file=sys.stderr)
        return 1

    raise_on_sigterm()
    res = run(args)
    return report(build_report(res), args.json, print_table, interrupted=res["interrupted"],
                  failed=bool(res["failures"]))


if __name__ == "__main__":
    sys.exit(main())
