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
from tests.conftest import LabCluster
from tests.helpers import wait_for
from tests.test_e2e import pod_manifest

GPU_TAINT = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}


def node_names(lab: LabCluster) -> list[str]:
    return sorted(a["node"] for a in lab.info["agents"])


async def _change_taints(lab: LabCluster, node: str, change: Callable[[list[Obj]], list[Obj]]) -> None:
    store = lab.etcd_store()

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
            asyncio.run(_change_taints(lab, node, lambda ts: [*ts, taint]))
        yield
    finally:
        for node in nodes:
            asyncio.run(_change_taints(lab, node, lambda ts: [t for t in ts if t != taint]))


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
        assert message == ("0/2 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}. "
                           "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.")
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
        assert message == ("0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules. "
                           "preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.")


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


# --- explained decisions, priority and preemption --------------------------------------------


def cpu_pod(name: str, ns: str, cpu: str, **spec: object) -> Obj:
    """A pod that asks for ``cpu`` (and a little memory): the lab's nodes have 2 cpus each."""
    manifest = pod_manifest(name, ns, memory="32Mi", **spec)
    manifest["spec"]["containers"][0]["resources"] = {"requests": {"cpu": cpu, "memory": "32Mi"},
                                                      "limits": {"cpu": cpu, "memory": "32Mi"}}
    return manifest


def events_about(lab: LabCluster, ns: str, name: str) -> list[Obj]:
    with lab.client() as c:
        events, _ = c.list("Event", ns)
    return [e for e in events if e["involvedObject"]["name"] == name]


def test_a_pod_that_fits_nowhere_says_why_in_its_condition_events_and_describe(
        lab: LabCluster, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    with lab.client() as c:
        c.apply([cpu_pod("huge", ns, "3"), cpu_pod("small", ns, "100m")])
        wait_bound(lab, ns, "small")
        reason = ("0/2 nodes are available: 2 Insufficient cpu. "
                  "preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.")
        assert wait_for(lambda: unschedulable_message(lab, ns, "huge"), timeout=20) == reason
        failed = wait_for(lambda: [e for e in events_about(lab, ns, "huge") if e["reason"] == "FailedScheduling"],
                          timeout=10, what="the FailedScheduling event")
        assert failed[0]["type"] == "Warning" and failed[0]["message"] == reason
        assert failed[0]["source"] == {"component": "default-scheduler"}
        scheduled = wait_for(lambda: [e for e in events_about(lab, ns, "small") if e["reason"] == "Scheduled"],
                             timeout=10, what="the Scheduled event")
        node = bound_node(lab, ns, "small")
        assert scheduled[0]["message"] == f"Successfully assigned {ns}/small to {node}"
        assert c.get("Pod", "huge", ns)["status"]["phase"] == "Pending"

    capsys.readouterr()
    assert lab.orchctl("get", "events", "-n", ns) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert any(line.split()[1:4] == ["Warning", "FailedScheduling", "pod/huge"] and line.endswith(reason)
               for line in lines[1:])
    assert any(line.split()[1:4] == ["Normal", "Scheduled", "pod/small"] for line in lines[1:])

    assert lab.orchctl("describe", "pod", "huge", "-n", ns) == 0
    page = capsys.readouterr().out
    assert "PodScheduled   False" in page
    events = page[page.index("Events:"):].splitlines()
    assert events[1].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert events[3].split()[:2] == ["Warning", "FailedScheduling"] and events[3].endswith(reason)
    assert "default-scheduler" in events[3]


@contextmanager
def priority_classes(lab: LabCluster, ns: str, **values: int) -> Iterator[dict[str, str]]:
    """PriorityClasses of this test's own (they are cluster-scoped), deleted afterwards."""
    names = {key: f"{key}-{ns}" for key in values}
    with lab.client() as c:
        c.apply([{"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": names[k]},
                  "value": v, "description": f"{k} priority for {ns}"} for k, v in values.items()])
        try:
            yield names
        finally:
            for name in names.values():
                c.delete("PriorityClass", name)


def test_an_unknown_priority_class_is_refused_naming_the_field(lab: LabCluster, ns: str) -> None:
    from apimachinery.errors import ValidationError

    with lab.client() as c, pytest.raises(ValidationError) as e:
        c.apply([cpu_pod("p", ns, "100m", priorityClassName="no-such-class")])
    assert "spec.priorityClassName: no PriorityClass with name no-such-class was found" in str(e.value)


def test_a_low_priority_pod_is_preempted_for_a_high_priority_pod_that_fits_nowhere_else(
        lab: LabCluster, ns: str) -> None:
    with priority_classes(lab, ns, low=100, high=1000) as pc, lab.client() as c:
        # One low-priority pod per node takes 1.5 of its 2 cpus (the second cannot fit beside the first).
        c.apply([cpu_pod("low-a", ns, "1500m", priorityClassName=pc["low"], terminationGracePeriodSeconds=1)])
        node_a = wait_bound(lab, ns, "low-a")
        c.apply([cpu_pod("low-b", ns, "1500m", priorityClassName=pc["low"], terminationGracePeriodSeconds=1)])
        node_b = wait_bound(lab, ns, "low-b")
        assert {node_a, node_b} == set(node_names(lab))
        assert c.get("Pod", "low-a", ns)["spec"]["priority"] == 100

        c.apply([cpu_pod("high", ns, "1500m", priorityClassName=pc["high"])])
        node = wait_for(lambda: bound_node(lab, ns, "high"), timeout=40, what="the high-priority pod to bind")
        victim, survivor = ("low-a", "low-b") if node == node_a else ("low-b", "low-a")
        remaining = {p["metadata"]["name"] for p in c.list("Pod", ns)[0]}
        assert victim not in remaining and survivor in remaining
        assert bound_node(lab, ns, survivor) != node
        preempted = [e for e in events_about(lab, ns, victim) if e["reason"] == "Preempted"]
        assert preempted and preempted[0]["message"] == f"Preempted by {ns}/high on node {node}"
        assert "nominatedNodeName" not in c.get("Pod", "high", ns)["status"]


def test_preemption_policy_never_waits_instead_of_evicting(lab: LabCluster, ns: str) -> None:
    with priority_classes(lab, ns, low=100) as pc, lab.client() as c:
        c.apply([{"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                  "metadata": {"name": f"polite-{ns}"}, "value": 1000, "preemptionPolicy": "Never"}])
        try:
            c.apply([cpu_pod(f"low-{i}", ns, "1500m", priorityClassName=pc["low"]) for i in range(2)])
            for i in range(2):
                wait_bound(lab, ns, f"low-{i}")
            c.apply([cpu_pod("polite", ns, "1500m", priorityClassName=f"polite-{ns}")])
            message = str(wait_for(lambda: unschedulable_message(lab, ns, "polite"), timeout=20))
            assert message.endswith("preemption: not eligible due to preemptionPolicy=Never.")
            assert {p["metadata"]["name"] for p in c.list("Pod", ns)[0]} == {"low-0", "low-1", "polite"}
        finally:
            c.delete("PriorityClass", f"polite-{ns}")
