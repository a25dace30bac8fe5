#!/usr/bin/env python3
"""Benchmark: Cluster API request latency over mutual TLS against the same requests in plaintext.

What is timed
-------------
Issue 7's performance line: p50/p99 of Cluster API requests with mTLS beside the same
requests without TLS, in the same run, on reused connections; target overhead ≤ 20 % at p50.

So that both sides are served by one process under the same load, this benchmark starts
its own server process (this script with ``--serve``) rather than two schedulers: it holds
the real ``scheduler.api.ClusterService`` (with its authentication and RBAC checks, as the
scheduler runs it without bindings: the admin certificate is cluster admin, the plaintext
caller too) over a real ``Registry`` and ``Store`` on a real etcd
(``tests/etcd_fixture.running_etcd``), served by **two** grpc.aio servers in that one
process, as a scheduler serving ``--listen`` on two addresses would:

* **plain**: ``add_insecure_port``;
* **mtls**: ``add_secure_port`` with the scheduler certificate of a PKI made for the run
  (``apimachinery.pki``, ECDSA P-256) and ``require_client_auth=True``.

The client (this process) holds one channel per side for the whole run — the
admin certificate on the mTLS one — and calls, per round, ``Get`` (one pod), ``List``
(the namespace's pods, ``--pods`` of them) and ``Apply`` (one pod whose annotation
changes each time, so every Apply is a real compare-and-swap write to etcd), each op
on both sides back to back in ABBA order (plain, mtls, mtls, plain, ...), so the
machine's noise falls on both alike. The first ``--warmup`` rounds are left out.
Before measuring, the run checks that the mTLS server refuses a client without a
certificate: what is measured is mutual TLS, not TLS alone.

Also shown, not part of the target: **connection set-up**, a new channel's first
``Get`` (TCP connect, the TLS 1.3 handshake with both certificates, HTTP/2 set-up)
on each side, ``--connections`` times.

Everything started is removed at the end, also on failure or Ctrl-C: the server
process (by its PID), etcd (by its PID), the temporary directory; the script checks
and says so, and a leftover makes the exit status non-zero.

Usage::

    .venv/bin/python bench/api_tls.py                   # 300 rounds, 20 pods (~15 s)
    .venv/bin/python bench/api_tls.py --rounds 1000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.stats import (  # noqa: E402
    BenchFailure, print_ending, raise_on_sigterm, ratio, record_failure, report, summary, uninterruptible,
)

NAMESPACE = "bench"
SIDES = ("plain", "mtls")
OPS = ("get", "list", "apply")
TARGET = 1.20  # mtls p50 / plain p50


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the server process


async def serve(etcd: str, prefix: str, pki_dir: Path) -> None:
    """Both servers of one ClusterService; print their ports as one JSON line; run until stdin closes."""
    import grpc

    from apimachinery import pki
    from apimachinery.pb import cluster_pb2_grpc
    from scheduler.api import ClusterService
    from scheduler.registry import Registry
    from scheduler.store import Store, etcd_client

    host, port = etcd.rsplit(":", 1)
    store = Store(etcd_client(host, int(port)), prefix=prefix)
    service = ClusterService(Registry(store))
    servers = []
    ports = {}
    for side in SIDES:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        cluster_pb2_grpc.add_ClusterServicer_to_server(service, server)
        if side == "plain":
            ports[side] = server.add_insecure_port("127.0.0.1:0")
        else:
            material = pki.load_tls(pki.TLSFiles.for_slot(pki_dir, pki.SCHEDULER))
            ports[side] = server.add_secure_port("127.0.0.1:0",
                                                 material.server_credentials(require_client_auth=True))
        await server.start()
        servers.append(server)
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent closes our stdin to stop us
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        await server.stop(None)
    await store.client.close()


# --------------------------------------------------------------------------- the client side


def pod(name: str, seq: int = 0) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "bench"},
                         "annotations": {"bench/seq": str(seq)}},
            "spec": {"containers": [{"name": "c", "image": "host", "command": ["/bin/sleep", "3600"],
                                     "resources": {"limits": {"memory": "32Mi"}}}]}}


class Clients:
    """One reused channel per side, and the three timed requests."""

    def __init__(self, ports: dict[str, int], pki_dir: Path, timeout: float) -> None:
        import grpc

        from apimachinery import pki
        from apimachinery.pb import cluster_pb2 as pb
        from apimachinery.pb import cluster_pb2_grpc

        self.grpc, self.pb, self.pki = grpc, pb, pki
        self.ports = ports
        self.pki_dir = pki_dir
        self.timeout = timeout
        self.admin = pki.load_tls(pki.TLSFiles.for_slot(pki_dir, pki.ADMIN))
        self.channels = {side: self.channel(side) for side in SIDES}
        self.stubs = {side: cluster_pb2_grpc.ClusterStub(ch) for side, ch in self.channels.items()}
        self.seq = 0

    def channel(self, side: str) -> Any:
        target = f"127.0.0.1:{self.ports[side]}"
        if side == "plain":
            return self.grpc.insecure_channel(target)
        return self.grpc.secure_channel(target, self.admin.channel_credentials())

    def get(self, side: str) -> None:
        self.stubs[side].Get(self.pb.GetRequest(kind="Pod", namespace=NAMESPACE, name="pod-0"), timeout=self.timeout)

    def list(self, side: str) -> None:
        self.stubs[side].List(self.pb.ListRequest(kind="Pod", namespace=NAMESPACE), timeout=self.timeout)

    def apply(self, side: str) -> None:
        self.seq += 1
        body = json.dumps(pod(f"apply-{side}", self.seq))
        self.stubs[side].Apply(self.pb.ApplyRequest(objects_json=[body]), timeout=self.timeout)

    def first_get(self, side: str) -> float:
        """A new channel's first Get: connection set-up included."""
        channel = self.channel(side)
        try:
            from apimachinery.pb import cluster_pb2_grpc

            stub = cluster_pb2_grpc.ClusterStub(channel)
            t0 = time.perf_counter()
            stub.Get(self.pb.GetRequest(kind="Pod", namespace=NAMESPACE, name="pod-0"), timeout=self.timeout)
            return time.perf_counter() - t0
        finally:
            channel.close()

    def check_mtls_required(self) -> None:
        """A TLS client without a certificate must be refused, or this is not measuring mTLS."""
        ca = self.admin.root_certificates
        with self.grpc.secure_channel(f"127.0.0.1:{self.ports['mtls']}",
                                      self.grpc.ssl_channel_credentials(root_certificates=ca)) as ch:
            from apimachinery.pb import cluster_pb2_grpc

            try:
                cluster_pb2_grpc.ClusterStub(ch).Get(
                    self.pb.GetRequest(kind="Pod", namespace=NAMESPACE, name="pod-0"), timeout=self.timeout)
            except self.grpc.RpcError as e:
                if e.code() == self.grpc.StatusCode.UNAVAILABLE:
                    return
                raise BenchFailure(f"a client without a certificate got {e.code()}, not a refused handshake") from e
        raise BenchFailure("the mTLS server answered a client without a certificate")

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


# --------------------------------------------------------------------------- the run


def start_server(tmp: Path, etcd: str, prefix: str, pki_dir: Path, timeout: float = 60.0,
                 ) -> tuple[subprocess.Popen[str], dict[str, int]]:
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", "--etcd", etcd,
                             "--prefix", prefix, "--pki", str(pki_dir)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line:
                return proc, {k: int(v) for k, v in json.loads(line).items()}
        if proc.poll() is not None:
            break
    detail = (tmp / "server.log").read_text()[-3000:]
    stop_server(proc)
    raise BenchFailure(f"the server process did not start:\n{detail}")


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)  # by its PID: the process we started
        proc.wait()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours counts as gone once reaped; wait() reaped it.
    return True


def timed(call: Callable[[str], None], side: str) -> float:
    t0 = time.perf_counter()
    call(side)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    from apimachinery import pki
    from tests.etcd_fixture import EtcdServer, running_etcd

    res: dict[str, Any] = {"samples": {op: {s: [] for s in SIDES} for op in OPS},
                           "connect": {s: [] for s in SIDES}, "failures": [], "interrupted": False,
                           "leftovers": {}}
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-tls-"))
    proc: subprocess.Popen[str] | None = None
    etcd_pid: int | None = None
    clients: Clients | None = None
    try:
        with running_etcd() as etcd:
            etcd_pid = etcd.pid
            pki_dir = tmp / "pki"
            pki.PKI(pki_dir).init()
            progress(f"etcd {etcd.endpoint}; PKI in {pki_dir}; starting the server process")
            proc, ports = start_server(tmp, etcd.endpoint, EtcdServer.prefix(), pki_dir)
            res["server_pid"] = proc.pid
            clients = Clients(ports, pki_dir, args.timeout)
            clients.check_mtls_required()
            progress(f"plain :{ports['plain']}, mtls :{ports['mtls']} (client auth required: checked); "
                     f"creating {args.pods} pods")
            for i in range(args.pods):
                clients.stubs["plain"].Apply(clients.pb.ApplyRequest(objects_json=[json.dumps(pod(f"pod-{i}"))]),
                                             timeout=args.timeout)
            calls = {"get": clients.get, "list": clients.list, "apply": clients.apply}
            for i in range(args.warmup + args.rounds):
                order = SIDES if i % 2 == 0 else SIDES[::-1]
                for op in OPS:
                    for side in order:
                        dt = timed(calls[op], side)
                        if i >= args.warmup:
                            res["samples"][op][side].append(dt)
                if i and i % 100 == 0:
                    progress(f"round {i}/{args.warmup + args.rounds}")
            for i in range(args.connections):
                for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
                    res["connect"][side].append(clients.first_get(side))
    except BaseException as e:  # noqa: BLE001 - recorded; cleanup and the report still happen
        res["interrupted"] = record_failure(e, res["failures"])
    finally:
        with uninterruptible():
            if clients is not None:
                clients.close()
            if proc is not None:
                stop_server(proc)
            shutil.rmtree(tmp, ignore_errors=True)
            left: dict[str, Any] = {}
            if proc is not None and pid_alive(proc.pid) and proc.poll() is None:
                left["server"] = [proc.pid]
            if etcd_pid is not None and pid_alive(etcd_pid) and _not_zombie(etcd_pid):
                left["etcd"] = [etcd_pid]
            if tmp.exists():
                left["tmp"] = [str(tmp)]
            res["leftovers"] = left
            if left:
                res["failures"].append(f"leftovers: {left}")
    res["total_s"] = time.monotonic() - t_start
    return res


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def build_report(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    stats = {op: {side: summary(res["samples"][op][side]) for side in SIDES} for op in OPS}
    ratios = {op: {q: ratio(stats[op]["mtls"].get(q, float("nan")), stats[op]["plain"].get(q, float("nan")))
                   for q in ("p50", "p99")} for op in OPS}
    connect = {side: summary(res["connect"][side]) for side in SIDES}
    worst = max((r["p50"] for r in ratios.values()), default=float("nan"))
    return {"config": {"rounds": args.rounds, "warmup": args.warmup, "pods": args.pods,
                       "connections": args.connections},
            "stats": stats, "ratio": ratios,
            "connect": {"stats": connect, "ratio_p50": ratio(connect["mtls"].get("p50", float("nan")),
                                                             connect["plain"].get("p50", float("nan")))},
            "target": {"what": f"p50 mtls / plain <= {TARGET:.2f} for every op", "worst": worst,
                       "met": worst <= TARGET},
            "failures": res["failures"], "leftovers": res["leftovers"], "total_s": res["total_s"]}


def print_table(rep: dict[str, Any]) -> None:
    def ms(v: Any) -> str:
        return "-" if v is None else f"{v * 1000:.3f}"

    def x(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}x"

    c = rep["config"]
    print()
    print(f"Cluster API latency, ms: {c['rounds']} rounds (+{c['warmup']} warm-up), reused connections, "
          f"ABBA-alternated; List returns {c['pods']} pods")
    print(f"{'':16}{'n':>5}{'min':>9}{'p50':>9}{'mean':>9}{'p99':>9}{'max':>9}   mtls/plain p50   p99")
    for op in OPS:
        for side in SIDES:
            s = rep["stats"][op][side]
            row = f"{op + ' ' + side:16}{s.get('n', 0):>5}" + "".join(
                f"{ms(s.get(q)):>9}" for q in ("min", "p50", "mean", "p99", "max"))
            if side == "mtls":
                row += f"   {x(rep['ratio'][op]['p50']):>14}   {x(rep['ratio'][op]['p99'])}"
            print(row)
    print(f"\nconnection set-up (new channel + first Get), {c['connections']} each:")
    for side in SIDES:
        s = rep["connect"]["stats"][side]
        print(f"{'connect ' + side:16}{s.get('n', 0):>5}" + "".join(
            f"{ms(s.get(q)):>9}" for q in ("min", "p50", "mean", "p99", "max")))
    print(f"ratio mtls/plain p50 {x(rep['connect']['ratio_p50'])}")
    t = rep["target"]
    print(f"\nTarget {t['what']}: " + ("no data" if t["worst"] is None else
                                       f"worst {t['worst']:.2f} -> {'MET' if t['met'] else 'NOT MET'}"))
    print_ending(rep)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=300, help="measured rounds, each op on each side (default 300)")
    p.add_argument("--warmup", type=int, default=20, help="rounds not counted (default 20)")
    p.add_argument("--pods", type=int, default=20, help="pods in the namespace List returns (default 20)")
    p.add_argument("--connections", type=int, default=30, help="new connections timed per side (default 30)")
    p.add_argument("--timeout", type=float, default=10.0, help="per request, seconds (default 10)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    # The server process (started by the benchmark itself).
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--etcd", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.pods < 1 or args.connections < 0:
        p.error("--rounds and --pods at least 1, --warmup and --connections at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.etcd, args.prefix, args.pki))
        return 0
    raise_on_sigterm()
    res = run(args)
    return report(build_report(res, args), args.json, print_table, interrupted=res["interrupted"],
                  failed=bool(res["failures"]))


if __name__ == "__main__":
    sys.exit(main())
