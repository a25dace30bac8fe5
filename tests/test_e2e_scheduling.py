"""The scheduling plugins end to end on the real 2-node lab: taints and tolerations,
node affinity, pod anti-affinity and profiles chosen by ``schedulerName``.

Taints are written into the Node objects in etcd, as a ``kubectl taint`` would have
the API server do, and removed again whatever happens: the lab is shared by the session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from apimachinery.meta import NODE, Obj
from scheduler.store import Store
from tests.conftest import LabCluster
from tests.helpers import wait_for
from tests.test_e2e import pod_manifest

GPU_TAINT = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}


def node_names(lab: LabCluster) -> list[str]:
    return sorted(a["node"] for a in lab.info["agents"])


async def _change_taints(endpoint: str, node: str, change: Callable[[list[Obj]], list[Obj]]) -> None:
    store = Store.connect(endpoint)

    def retaint(obj: Obj) -> Obj:
        spec = obj.setdefault("spec", {})
        spec["taints"] = change(spec.get("taints", []))
        if not spec["taints"]:
            del spec["taints"]
        return obj

    try:
        await store.update_with_retry(NODE, None, node, retaint)
    finally:
        await store.close()


@contextmanager
def tainted(lab: LabCluster, taint: Obj) -> Iterator[None]:
    """Every node of the lab carries ``taint`` inside the block, and only there."""
    nodes = node_names(lab)
    try:
        for node in nodes:
            asyncio.run(_change_taints(lab.info["etcd"], node, lambda ts: [*ts, taint]))
        yield
    finally:
        for node in nodes:
            asyncio.run(_change_taints(lab.info["etcd"], node, lambda ts: [t for t in ts if t != taint]))


def scheduled_condition(lab: LabCluster, ns: str, name: str) -> Obj | None:
    with lab.client() as c:
        obj = c.get("Pod", name, ns)
    return next((cond for cond in obj.get("status", {}).get("conditions", []) if cond["type"] == "PodScheduled"),
                None)


def unschedulable_message(lab: LabCluster, ns: str, name: str) -> str | None:
    cond = scheduled_condition(lab, ns, name)
    return str(cond["message"]) if cond and cond["status"] == "False" else None


def bound_node(lab: LabCluster, ns: str, name: str) -> str | None:
    with lab.client() as c:
        return c.get("Pod", name, ns)["spec"].get("nodeName")


def wait_bound(lab: LabCluster, ns: str, name: str) -> str:
    return str(wait_for(lambda: bound_node(lab, ns, name), timeout=20, what=f"pod {name} to bind"))


def test_a_taint_keeps_pods_out_until_tolerated(lab: LabCluster, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    with tainted(lab, GPU_TAINT), lab.client() as c:
        c.apply([pod_manifest("plain", ns, memory="32Mi")])
        message = wait_for(lambda: unschedulable_message(lab, ns, "plain"), timeout=20,
                           what="the untolerated taint to keep the pod Pending")
        assert message == "0/2 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}."
        assert lab.orchctl("describe", "pod", "plain", "-n", ns) == 0
        assert "2 node(s) had untolerated taint {dedicated: gpu}" in capsys.readouterr().out

        c.apply([pod_manifest("tolerant", ns, memory="32Mi", tolerations=[
            {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}])])
        wait_bound(lab, ns, "tolerant")
        assert bound_node(lab, ns, "plain") is None
    # The taint is gone: the plain pod is placed on the next pass.
    wait_bound(lab, ns, "plain")


def test_node_affinity_pins_and_anti_affinity_spreads(lab: LabCluster, ns: str) -> None:
    first, second = node_names(lab)
    pinned = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [second]}]}]}}}
    apart = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "apart"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    with lab.client() as c:
        c.apply([pod_manifest("pinned", ns, memory="32Mi", affinity=pinned)])
        assert wait_bound(lab, ns, "pinned") == second

        replicas = []
        for i in range(3):
            manifest = pod_manifest(f"apart-{i}", ns, memory="32Mi", affinity=apart)
            manifest["metadata"]["labels"] = {"app": "apart"}
            replicas.append(manifest)
        c.apply(replicas[:2])
        assert {wait_bound(lab, ns, "apart-0"), wait_bound(lab, ns, "apart-1")} == {first, second}

        c.apply(replicas[2:])
        message = wait_for(lambda: unschedulable_message(lab, ns, "apart-2"), timeout=20,
                           what="the third replica to find no node")
        assert message == "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."


def test_a_pod_for_another_scheduler_is_left_alone(lab: LabCluster, ns: str) -> None:
    with lab.client() as c:
        c.apply([pod_manifest("elsewhere", ns, memory="32Mi", schedulerName="my-scheduler"),
                 pod_manifest("here", ns, memory="32Mi")])
        wait_bound(lab, ns, "here")
        deadline = time.monotonic() + 2  # a few passes of the loop
        while time.monotonic() < deadline:
            assert bound_node(lab, ns, "elsewhere") is None
            assert scheduled_condition(lab, ns, "elsewhere") is None  # untouched, as kube-scheduler leaves it
            time.sleep(0.2)
        assert c.get("Pod", "elsewhere", ns)["status"]["phase"] == "Pending"
