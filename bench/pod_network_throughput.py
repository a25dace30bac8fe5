#!/usr/bin/env python3
"""Benchmark: TCP throughput pod to pod across lab nodes, against two namespaces joined by one veth.

What is measured
----------------
**lab**: a 2-node lab (``orchctl lab up``: every node in its own network namespace on the
lab bridge) runs one pod on each node. A TCP stream goes from the pod on node 2 to the
pod on node 1 by pod IP: pod eth0 → veth → node 2's bridge → node 2 routes it (the
host-gateway route the agent keeps) → node 2's uplink → the lab bridge → node 1's uplink
→ node 1's bridge → veth → pod. No NAT anywhere.

**veth** (the reference, the physical limit here): two fresh network namespaces joined
by one veth pair, addresses on a /30.

Both sides use the same sender and receiver: sockets created *inside* the pods' network
namespaces (``agent.network.netns.inet_socket`` on the pod sandbox's nsfs file), a
sender thread writing ``--chunk`` bytes at a time for ``--seconds``, a receiver thread
counting bytes until EOF. Throughput is bytes received / (EOF time - connect time). The
kernel path is exactly the pods' (a socket belongs to the namespace it was made in); the
bytes come from this process rather than from a process in the pod, which keeps the two
sides identical. Rounds alternate ABBA (lab, veth, veth, lab, ...) so machine noise hits
both alike; the headline is the ratio of the medians lab / veth (target >= 0.8, issue 5).

Cleanup (also on failure, Ctrl-C, SIGTERM): ``lab down`` (which removes every namespace,
link and route the lab made) and the reference namespaces. Traffic only goes to
addresses inside network namespaces this run made.

Usage::

    .venv/bin/python bench/pod_network_throughput.py                # 6 rounds of 2 s per side
    .venv/bin/python bench/pod_network_throughput.py --rounds 10 --json
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
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

PORT = 5201  # iperf3's; only ever inside the run's own namespaces
REF_SERVER, REF_CLIENT = "10.251.0.1", "10.251.0.2"


def progress(msg: str) -> None:
    print(f"[pod_network_throughput] {msg}", file=sys.stderr, flush=True)


def stream(server_ns: Path, server_ip: str, client_ns: Path, seconds: float, chunk: int) -> float:
    """One TCP stream client → server for ``seconds``; returns bytes per second received."""
    from agent.network import netns

    with netns.inet_socket(server_ns, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((server_ip, PORT))
        listener.listen(1)
        got: dict[str, Any] = {}

        def receive() -> None:
            try:
                conn, _ = listener.accept()
                with conn:
                    total = 0
                    while data := conn.recv(1 << 20):
                        total += len(data)
                    got["bytes"], got["end"] = total, time.monotonic()
            except OSError as e:
                got["error"] = e

        receiver = threading.Thread(target=receive, name="receiver")
        receiver.start()
        payload = b"\0" * chunk
        try:
            with netns.inet_socket(client_ns, socket.SOCK_STREAM) as client:
                client.settimeout(10)
                client.connect((server_ip, PORT))
                start = time.monotonic()
                deadline = start + seconds
                while time.monotonic() < deadline:
                    client.sendall(payload)
                client.shutdown(socket.SHUT_WR)
                receiver.join(30)
        finally:
            if receiver.is_alive():
                listener.close()
                receiver.join(5)
    if "error" in got or "bytes" not in got:
        raise BenchFailure(f"stream to {server_ip}: {got.get('error', 'no EOF within 30 s')}")
    return got["bytes"] / (got["end"] - start)


class Reference:
    """Two namespaces and one veth between them: the physical limit of this machine."""

    def __init__(self, root: Path) -> None:
        from agent.network import netns
        from agent.network.podnet import rtnl

        self.netns = netns
        self.made: list[Path] = []
        self.server = self._namespace(root / "ref-server")
        self.client = self._namespace(root / "ref-client")
        with rtnl(self.server) as ipr:
            fd = os.open(self.client, os.O_RDONLY | os.O_CLOEXEC)
            try:
                ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
            finally:
                os.close(fd)
        for path, address in ((self.server, REF_SERVER), (self.client, REF_CLIENT)):
            with rtnl(path) as ipr:
                for name in ("lo", "eth0"):
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
                ipr.addr("add", index=ipr.link_lookup(ifname="eth0")[0], address=address, prefixlen=30)

    def _namespace(self, path: Path) -> Path:
        self.netns.create(path)
        self.made.append(path)
        return path

    def close(self) -> list[str]:
        left = []
        for path in reversed(self.made):
            try:
                self.netns.remove(path)
            except OSError as e:
                left.append(f"{path}: {e}")
        return left


def pod_manifest(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "bench"},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "host", "command": ["sleep", "3600"]}]}}


def lab_pods(lab_dir: Path, info: dict[str, Any]) -> tuple[tuple[Path, str], tuple[Path, str]]:
    """Two running pods, on lab-node-1 and lab-node-2: (netns file, pod IP) of each."""
    from cli import lab

    nodes = [a["node"] for a in info["agents"]][:2]
    with lab.client(info, timeout=10) as client:  # the lab's admin certificate
        for i, node in enumerate(nodes):
            client.apply([pod_manifest(f"tp-{i}", node)])
        deadline = time.monotonic() + 60
        while True:
            pods = [client.get("Pod", f"tp-{i}", "bench") for i in range(2)]
            if all(p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP") for p in pods):
                break
            if time.monotonic() > deadline:
                raise BenchFailure(f"pods not Running with an IP within 60 s: {[p.get('status') for p in pods]}")
            time.sleep(0.2)
    out = []
    for pod, node in zip(pods, nodes, strict=True):
        agent = next(a for a in info["agents"] if a["node"] == node)
        path = Path(agent["state_dir"]) / "sandboxes" / pod["metadata"]["uid"] / "net"
        if not path.exists():
            raise BenchFailure(f"no network namespace file {path} for pod {pod['metadata']['name']}")
        out.append((path, pod["status"]["podIP"]))
    return out[0], out[1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cli import lab

    res: dict[str, Any] = {"lab": [], "veth": [], "failures": [], "interrupted": False, "leftovers": {}}
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-tp-"))
    lab_dir = tmp / "lab"
    ref: Reference | None = None
    try:
        progress("starting a 2-node lab")
        info = lab.up(lab_dir, 2, node_cpu="2", node_memory="2Gi")
        (server_ns, server_ip), (client_ns, _) = lab_pods(lab_dir, info)
        ref = Reference(tmp)
        progress(f"pod on node 2 -> pod {server_ip} on node 1, against a plain veth; "
                 f"{args.rounds} rounds of {args.seconds:g} s per side")
        stream(server_ns, server_ip, client_ns, 0.5, args.chunk)  # warm-up, not counted
        stream(ref.server, REF_SERVER, ref.client, 0.5, args.chunk)
        for i in range(args.rounds):
            order = ("lab", "veth") if i % 2 == 0 else ("veth", "lab")
            for side in order:
                if side == "lab":
                    res["lab"].append(stream(server_ns, server_ip, client_ns, args.seconds, args.chunk))
                else:
                    res["veth"].append(stream(ref.server, REF_SERVER, ref.client, args.seconds, args.chunk))
    except BaseException as e:  # noqa: BLE001 - recorded; cleanup and the report still run
        res["interrupted"] = record_failure(e, res["failures"])
    finally:
        with uninterruptible():
            left: dict[str, Any] = {}
            if ref is not None:
                left["reference"] = ref.close()
            try:
                lab.down(lab_dir)
            except Exception as e:  # noqa: BLE001
                left["lab"] = [str(e)]
            if lab_dir.exists():
                left["lab_dir"] = [str(lab_dir)]
            try:
                tmp.rmdir()
            except OSError as e:
                left["tmp"] = [f"{tmp}: {e}"]
            res["leftovers"] = left
            if any(left.values()):
                res["failures"].append(f"leftovers: {left}")
    res["total_s"] = time.monotonic() - t0
    return res


def build_report(res: dict[str, Any]) -> dict[str, Any]:
    lab_s, ref_s = summary(res["lab"]), summary(res["veth"])
    r50 = ratio(lab_s.get("p50", float("nan")), ref_s.get("p50", float("nan")))
    return {"stats": {"lab_pod_to_pod": lab_s, "plain_veth": ref_s},
            "ratio": {"p50": r50},
            "target": {"what": "p50 lab / veth >= 0.8", "ratio": r50, "met": r50 >= 0.8},
            "samples": {"lab": res["lab"], "veth": res["veth"]},
            "failures": res["failures"], "leftovers": res["leftovers"], "total_s": res["total_s"]}


def print_table(rep: dict[str, Any]) -> None:
    def gbit(v: Any) -> str:
        return "-" if v is None else f"{v * 8 / 1e9:.2f}"

    print()
    print("TCP throughput, one stream, Gbit/s; ABBA-alternated rounds")
    print(f"{'':36}{'n':>4}{'min':>8}{'p50':>8}{'mean':>8}{'max':>8}")
    for key, label in (("lab_pod_to_pod", "lab   pod (node 2) -> pod (node 1) [*]"),
                       ("plain_veth", "veth  namespace -> namespace      [*]")):
        s = rep["stats"][key]
        print(f"{label:36}{s.get('n', 0):>4}" + "".join(f"{gbit(s.get(q)):>8}" for q in ("min", "p50", "mean", "max")))
    t = rep["target"]
    print(f"\n[*] headline. Target {t['what']}: "
          + ("no data" if t["ratio"] is None else f"ratio {t['ratio']:.2f} -> {'MET' if t['met'] else 'NOT MET'}"))
    print_ending(rep)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=6, help="measured streams per side (default 6)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of one stream (default 2)")
    p.add_argument("--chunk", type=int, default=256 * 1024, help="bytes per send (default 256 KiB)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    args = p.parse_args(argv)
    if args.rounds < 1 or not 0.1 <= args.seconds <= 60 or not 1024 <= args.chunk <= 16 << 20:
        p.error("--rounds at least 1, --seconds between 0.1 and 60, --chunk between 1 KiB and 16 MiB")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("error: needs root (a lab, network namespaces)", file=sys.stderr)
        return 1
    raise_on_sigterm()
    res = run(args)
    return report(build_report(res), args.json, print_table, interrupted=res["interrupted"],
                  failed=bool(res["failures"]))


if __name__ == "__main__":
    sys.exit(main())
