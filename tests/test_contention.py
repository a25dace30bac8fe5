"""Bindings under contention, on a real etcd with real scheduler processes.

Two ``orch-scheduler`` processes with ``--leader-elect=false`` both schedule the same
500 pods onto simulated nodes (Node objects written straight into etcd, as a
kwok-style node would register them) that have room for exactly 400. Each scheduler
decides from its own cache, which lags behind the other's bindings; only the
bind transaction's guards (the pod's revision and the node's allocation ledger)
stand between them and an over-committed node. And a scheduler racing a delete:
a pod deleted after the decision is never bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aetcd
import pytest

from apimachinery.meta import NODE, POD, Obj, now_rfc3339
from apimachinery.pki import PKI
from apimachinery.quantity import parse_cpu
from scheduler.config import default_profiles
from scheduler.informer import Informer
from scheduler.registry import Registry
from scheduler.scheduling import SchedulingLoop, build_node_infos
from scheduler.store import Store
from tests.etcd_fixture import EtcdServer, _free_port, running_etcd

REPO = Path(__file__).resolve().parent.parent
NODES, PODS_PER_NODE, PODS = 40, 10, 500
NODE_CPU, POD_CPU = "1", "100m"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


def sim_node(name: str, cpu: str = NODE_CPU) -> Obj:
    now = now_rfc3339()
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": now,
                         "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"capacity": {"cpu": cpu, "memory": "64Gi", "pods": "110"},
                       "allocatable": {"cpu": cpu, "memory": "64Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "lastHeartbeatTime": now, "lastTransitionTime": now}]}}


def pod_doc(name: str, namespace: str = "load") -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "main", "image": "host", "command": ["sleep", "1d"],
                                     "resources": {"requests": {"cpu": POD_CPU, "memory": "16Mi"}}}]}}


@contextlib.contextmanager
def schedulers(etcd: EtcdServer, prefix: str, logs: Path, n: int = 2) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` scheduler processes on one etcd prefix, each scheduling (no leader election);
    killed by their PIDs on the way out. They serve mutual TLS (a PKI of their own: nobody
    calls them here, but a scheduler does not start without one or --insecure)."""
    procs: list[subprocess.Popen[bytes]] = []
    PKI(logs / "pki").init()
    try:
        for i in range(n):
            port = _free_port()
            with open(logs / f"scheduler-{i}.log", "wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "scheduler.main", "--etcd", etcd.endpoint, "--etcd-prefix", prefix,
                     "--listen", f"127.0.0.1:{port}", "--leader-elect=false", "--compaction-interval", "0",
                     "--node-monitor-grace-period", "600", "--pki-dir", str(logs / "pki")],
                    cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONPATH": str(REPO)}))
            deadline = time.monotonic() + 20
            while True:
                assert procs[-1].poll() is None, (logs / f"scheduler-{i}.log").read_text()[-3000:]
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                assert time.monotonic() < deadline, f"scheduler {i} did not listen"
                time.sleep(0.05)
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def scheduled_condition(pod: Obj) -> Obj | None:
    return next((c for c in pod.get("status", {}).get("conditions", []) if c["type"] == "PodScheduled"), None)


async def bindings_in_history(store: Store, since: int, until: int) -> Counter[str]:
    """How many times each pod's ``spec.nodeName`` was set or changed, from etcd's history."""
    counts: Counter[str] = Counter()
    last: dict[str, str | None] = {}
    watch = store.watch(POD, None, since)
    try:
        async for ev in watch:
            name = ev.obj["metadata"]["name"]
            node = ev.obj["spec"].get("nodeName")
            if ev.type != "DELETED" and node and node != last.get(name):
                counts[name] += 1
            last[name] = node
            if ev.revision >= until:
                break
    finally:
        await watch.aclose()  # type: ignore[attr-defined]
    return counts


def test_two_schedulers_never_overcommit_a_node_nor_bind_a_pod_twice(etcd: EtcdServer, tmp_path: Path) -> None:
    prefix = etcd.prefix()

    async def setup() -> int:
        store = Store(aetcd.Client(host=etcd.host, port=etcd.port, timeout=10), prefix=prefix)
        try:
            for i in range(NODES):
                await store.create(sim_node(f"sim-{i:03d}"))
            return await store.revision()
        finally:
            await store.close()

    async def apply_all() -> None:
        store = Store(aetcd.Client(host=etcd.host, port=etcd.port, timeout=10), prefix=prefix)
        try:
            registry = Registry(store)
            docs = [pod_doc(f"p-{i:03d}") for i in range(PODS)]
            await asyncio.gather(*(registry.apply(docs[i:i + 50]) for i in range(0, PODS, 50)))
        finally:
            await store.close()

    async def snapshot() -> tuple[list[Obj], list[Obj], int]:
        store = Store(aetcd.Client(host=etcd.host, port=etcd.port, timeout=10), prefix=prefix)
        try:
            pods, rev = await store.list(POD)
            nodes, _ = await store.list(NODE)
            return pods, nodes, rev
        finally:
            await store.close()

    start = asyncio.run(setup())
    with schedulers(etcd, prefix, tmp_path):
        began = time.monotonic()
        asyncio.run(apply_all())
        deadline = began + 45
        while True:
            pods, nodes, _ = asyncio.run(snapshot())
            bound = [p for p in pods if p["spec"].get("nodeName")]
            explained = [p for p in pods if not p["spec"].get("nodeName") and (scheduled_condition(p) or {})
                         .get("status") == "False"]
            if len(bound) + len(explained) == PODS and len(bound) >= NODES * PODS_PER_NODE:
                break
            assert time.monotonic() < deadline, (
                f"{len(bound)} bound and {len(explained)} explained after 45s; logs:\n"
                + "\n".join((tmp_path / f"scheduler-{i}.log").read_text()[-2000:] for i in range(2)))
            time.sleep(0.3)
        time.sleep(1.5)  # let any late, wrong binding show
        pods, nodes, _ = asyncio.run(snapshot())

    bound = [p for p in pods if p["spec"].get("nodeName")]
    assert len(bound) == NODES * PODS_PER_NODE == 400
    per_node: dict[str, int] = defaultdict(int)
    for p in bound:
        per_node[p["spec"]["nodeName"]] += parse_cpu(p["spec"]["containers"][0]["resources"]["requests"]["cpu"])
    assert max(per_node.values()) <= parse_cpu(NODE_CPU), per_node
    infos = build_node_infos(nodes, pods)
    assert all(info.requested_cpu <= info.allocatable[0] for info in infos.values())

    pending = [p for p in pods if not p["spec"].get("nodeName")]
    assert len(pending) == PODS - 400 == 100
    for p in pending:
        cond = scheduled_condition(p)
        assert cond is not None and cond["status"] == "False" and cond["reason"] == "Unschedulable"
        assert cond["message"].startswith(f"0/{NODES} nodes are available: {NODES} Insufficient cpu.")

    async def history() -> Counter[str]:
        store = Store(aetcd.Client(host=etcd.host, port=etcd.port, timeout=10), prefix=prefix)
        try:
            # The last change to any pod: the history to read ends there.
            last = max(int(p["metadata"]["resourceVersion"]) for p in pods)
            return await asyncio.wait_for(bindings_in_history(store, start, last), 20)
        finally:
            await store.close()

    counts = asyncio.run(history())
    assert set(counts.values()) == {1} and len(counts) == 400, "a pod was bound more than once"


def test_a_pod_deleted_after_the_decision_is_never_bound(etcd: EtcdServer) -> None:
    """The race, made certain: decide, delete (and re-create under the same name), then bind."""

    async def body() -> None:
        store = Store(aetcd.Client(host=etcd.host, port=etcd.port, timeout=10), prefix=etcd.prefix())
        pods, nodes = Informer(store, POD), Informer(store, NODE)
        tasks = [asyncio.create_task(pods.run()), asyncio.create_task(nodes.run())]
        try:
            await store.create(sim_node("only"))
            registry = Registry(store)
            await registry.apply([pod_doc("doomed")])
            await asyncio.wait_for(asyncio.gather(pods.synced.wait(), nodes.synced.wait()), 10)
            while ("load", "doomed") not in pods.cache or ("", "only") not in nodes.cache:
                await asyncio.sleep(0.02)
            loop = SchedulingLoop(store, pods, nodes, default_profiles(), registry=registry)
            pod = pods.cache[("load", "doomed")]
            loop._infos = build_node_infos(nodes.items(), pods.items())
            framework = loop.profiles["default-scheduler"]
            decision = framework.schedule(pod, list(loop._infos.values()))
            assert decision.node == "only"

            await registry.delete(POD, "load", "doomed")  # never reached a node: removed at once
            status = await framework.bind(decision.state, pod, "only", loop)
            assert not status.ok and "deleted" in status.reasons[0]
            assert await store.get_or_none(POD, "load", "doomed") is None

            await registry.apply([pod_doc("doomed")])  # the same name, a new pod
            status = await framework.bind(decision.state, pod, "only", loop)
            assert not status.ok
            again = await store.get(POD, "load", "doomed")
            assert not again["spec"].get("nodeName")
            allocation = await store.get_allocation("only")
            assert allocation.pods == {}
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_a_ledger_forgets_deleted_pods_so_their_room_is_used_again(etcd: EtcdServer) -> None:
    """Deletes never touch the ledger; the next binding derives it from the pods."""

    async def body() -> None:
        store = Store(aetcd.Client(host=etcd.host, port=etcd.port, timeout=10), prefix=etcd.prefix())
        pods, nodes = Informer(store, POD), Informer(store, NODE)
        tasks = [asyncio.create_task(pods.run()), asyncio.create_task(nodes.run())]
        try:
            await store.create(sim_node("tiny", cpu="100m"))
            registry = Registry(store)
            await registry.apply([pod_doc("first"), pod_doc("second")])
            loop = SchedulingLoop(store, pods, nodes, default_profiles(), registry=registry)
            run = asyncio.create_task(loop.run())
            tasks.append(run)

            async def pod(name: str) -> Any:
                return await store.get(POD, "load", name)

            async def until_one_bound() -> str:
                while True:
                    a, b = await pod("first"), await pod("second")
                    for p in (a, b):
                        if p["spec"].get("nodeName") and scheduled_condition(a if p is b else b):
                            return str(p["metadata"]["name"])
                    await asyncio.sleep(0.05)

            winner = await asyncio.wait_for(until_one_bound(), 10)
            loser = "second" if winner == "first" else "first"
            assert not (await pod(loser))["spec"].get("nodeName")
            ledger = await store.get_allocation("tiny")
            assert [e["name"] for e in ledger.pods.values()] == [winner]

            await store.delete(await pod(winner))  # as a finalized pod is removed
            while not (await pod(loser))["spec"].get("nodeName"):
                await asyncio.sleep(0.05)
            ledger = await store.get_allocation("tiny")
            assert [e["name"] for e in ledger.pods.values()] == [loser]
            assert json.dumps(loop.pending_pods()) == json.dumps({"active": 0, "backoff": 0, "unschedulable": 0})
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()

    asyncio.run(asyncio.wait_for(body(), 30))


