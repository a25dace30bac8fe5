"""The scheduling framework and its built-in plugins, as pure functions of a pod and NodeInfos.

Nodes are built the way the scheduler builds them from an agent's registration
(``scheduler.nodes.node_from_registration``), pods the way the API server stores
them (``apimachinery.validation.validate`` fills the defaults), and NodeInfos with
the scheduling loop's own ``build_node_infos``. No I/O, no mocks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from apimachinery.pb import node_pb2 as pb
from apimachinery.quantity import parse_memory
from apimachinery.validation import validate
from scheduler.framework import Decision, Framework, NodeInfo
from scheduler.nodes import node_from_registration
from scheduler.plugins import default_framework
from scheduler.scheduling import build_node_infos

Obj = dict[str, Any]
GI = 1024 ** 3
SEEDS = range(20)  # tie-breaks are random: a decision that must not depend on them is checked under many


def make_node(name: str, cpu: str = "2", memory: str = "4Gi", pods: int = 110, *,
              labels: dict[str, str] | None = None, ready: bool = True, unschedulable: bool = False) -> Obj:
    res = pb.Resources(cpu_millis=int(float(cpu) * 1000), memory_bytes=parse_memory(memory), pods=pods)
    req = pb.RegisterRequest(node_name=name, labels=labels or {}, capacity=res, allocatable=res,
                             addresses=[pb.NodeAddress(type="InternalIP", address="10.0.0.1")])
    node = node_from_registration(req, None)
    if not ready:
        # What the node lifecycle controller writes when the heartbeats stop.
        for c in node["status"]["conditions"]:
            if c["type"] == "Ready":
                c.update(status="Unknown", reason="NodeStatusUnknown")
    if unschedulable:
        node["spec"]["unschedulable"] = True
    return node


_counter = 0


def make_pod(name: str | None = None, cpu: str | None = None, memory: str | None = None, *,
             node: str | None = None, phase: str | None = None, owner_uid: str | None = None,
             node_selector: dict[str, str] | None = None, node_name: str | None = None) -> Obj:
    global _counter
    _counter += 1
    name = name or f"p{_counter}"
    container: Obj = {"name": "c", "image": "host", "command": ["sleep", "1000"]}
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    if requests:
        container["resources"] = {"requests": requests}
    md: Obj = {"name": name, "namespace": "default"}
    if owner_uid:
        md["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                  "uid": owner_uid, "controller": True}]
    spec: Obj = {"containers": [container]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    if node_name:
        spec["nodeName"] = node_name
    pod = validate({"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": spec})
    pod["metadata"].update(uid=f"uid-{name}", creationTimestamp="2024-05-01T10:00:00Z", resourceVersion="1")
    if node:
        pod["spec"]["nodeName"] = node
    pod["status"] = {"phase": phase or ("Running" if node else "Pending")}
    return pod


def infos(nodes: list[Obj], pods: Sequence[Obj] = ()) -> list[NodeInfo]:
    return list(build_node_infos(nodes, list(pods)).values())


def framework(seed: int = 0) -> Framework:
    fw = default_framework()
    fw.rng = random.Random(seed)
    return fw


def schedule(pod: Obj, nodes: list[Obj], pods: Sequence[Obj] = (), seed: int = 0) -> Decision:
    return framework(seed).schedule(pod, infos(nodes, pods))


def always(pod: Obj, nodes: list[Obj], pods: Sequence[Obj] = ()) -> str | None:
    """The node chosen, asserting it is the same whatever the tie-break."""
    chosen = {schedule(pod, nodes, pods, seed).node for seed in SEEDS}
    assert len(chosen) == 1, f"decision depends on the tie-break: {chosen}"
    return chosen.pop()


# --- resources ------------------------------------------------------------------


def test_a_pod_that_fits_is_bound() -> None:
    d = schedule(make_pod(cpu="500m", memory="1Gi"), [make_node("n1")])
    assert d.node == "n1"
    assert d.message == "bound to n1"
    assert set(d.scores) == {"n1"}


def test_a_pod_with_no_requests_fits_a_full_node() -> None:
    full = make_pod(cpu="2", memory="4Gi", node="n1")
    assert schedule(make_pod(), [make_node("n1")], [full]).node == "n1"


def test_insufficient_memory_on_every_node_gives_kube_schedulers_message() -> None:
    d = schedule(make_pod(memory="5Gi"), [make_node("n1"), make_node("n2")])
    assert d.node is None
    assert d.message == "0/2 nodes are available: 2 Insufficient memory."


def test_memory_already_requested_by_bound_pods_counts() -> None:
    nodes = [make_node("n1"), make_node("n2")]
    bound = [make_pod(memory="3Gi", node="n1")]
    assert always(make_pod(memory="2Gi"), nodes, bound) == "n2"
    bound.append(make_pod(memory="3Gi", node="n2"))
    d = schedule(make_pod(memory="2Gi"), nodes, bound)
    assert d.node is None
    assert d.message == "0/2 nodes are available: 2 Insufficient memory."


def test_exactly_the_allocatable_amount_fits() -> None:
    nodes = [make_node("n1")]
    bound = [make_pod(cpu="1", memory="3Gi", node="n1")]
    assert schedule(make_pod(cpu="1", memory="1Gi"), nodes, bound).node == "n1"
    assert schedule(make_pod(cpu="1001m"), nodes, bound).message == "0/1 nodes are available: 1 Insufficient cpu."


def test_insufficient_cpu() -> None:
    d = schedule(make_pod(cpu="3"), [make_node("n1")])
    assert d.node is None
    assert d.message == "0/1 nodes are available: 1 Insufficient cpu."


def test_a_node_short_of_both_counts_under_both_reasons() -> None:
    d = schedule(make_pod(cpu="3", memory="8Gi"), [make_node("n1")])
    assert d.message == "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory."


def test_too_many_pods() -> None:
    nodes = [make_node("n1", pods=2)]
    bound = [make_pod(node="n1"), make_pod(node="n1")]
    d = schedule(make_pod(), nodes, bound)
    assert d.node is None
    assert d.message == "0/1 nodes are available: 1 Too many pods."
    assert schedule(make_pod(), nodes, bound[:1]).node == "n1"


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_pods_do_not_count_against_a_node(phase: str) -> None:
    nodes = [make_node("n1", pods=1)]
    done = [make_pod(cpu="2", memory="4Gi", node="n1", phase=phase)]
    info = build_node_infos(nodes, done)["n1"]
    assert info.pods == [] and info.requested_cpu == 0 and info.requested_memory == 0
    assert schedule(make_pod(cpu="2", memory="4Gi"), nodes, done).node == "n1"
    # The same pod still running does count.
    running = [make_pod(cpu="2", memory="4Gi", node="n1", phase="Running")]
    assert schedule(make_pod(cpu="1"), nodes, running).node is None


def test_pods_bound_to_unknown_nodes_are_ignored() -> None:
    bound = [make_pod(memory="4Gi", node="gone")]
    assert schedule(make_pod(memory="4Gi"), [make_node("n1")], bound).node == "n1"


# --- node filters ---------------------------------------------------------------


def test_mixed_reasons_are_counted_per_node_and_sorted() -> None:
    nodes = [make_node("n1", cpu="1", labels={"disk": "ssd"}), make_node("n2"), make_node("n3")]
    d = schedule(make_pod(cpu="1500m", node_selector={"disk": "ssd"}), nodes)
    assert d.node is None
    assert d.message == ("0/3 nodes are available: 1 Insufficient cpu, "
                         "2 node(s) didn't match Pod's node affinity/selector.")


def test_node_selector_picks_the_labelled_node() -> None:
    nodes = [make_node("n1"), make_node("n2", labels={"disk": "ssd", "zone": "a"}),
             make_node("n3", labels={"disk": "hdd"})]
    assert always(make_pod(node_selector={"disk": "ssd"}), nodes) == "n2"
    assert always(make_pod(node_selector={"disk": "ssd", "zone": "a"}), nodes) == "n2"
    d = schedule(make_pod(node_selector={"disk": "ssd", "zone": "b"}), nodes)
    assert d.message == "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."


def test_node_selector_matches_the_labels_the_agent_registers() -> None:
    nodes = [make_node("n1"), make_node("n2")]
    assert always(make_pod(node_selector={"kubernetes.io/hostname": "n2"}), nodes) == "n2"


def test_a_not_ready_node_is_filtered() -> None:
    nodes = [make_node("n1", ready=False), make_node("n2")]
    assert always(make_pod(), nodes) == "n2"
    d = schedule(make_pod(), nodes[:1])
    assert d.node is None
    assert d.message == "0/1 nodes are available: 1 node(s) were not ready."


def test_a_node_without_a_ready_condition_is_not_ready() -> None:
    node = make_node("n1")
    node["status"]["conditions"] = []
    assert schedule(make_pod(), [node]).message == "0/1 nodes are available: 1 node(s) were not ready."


def test_a_node_is_counted_once_under_the_first_filter_that_rejects_it() -> None:
    d = schedule(make_pod(memory="8Gi"), [make_node("n1", ready=False), make_node("n2")])
    assert d.message == "0/2 nodes are available: 1 Insufficient memory, 1 node(s) were not ready."


def test_an_unschedulable_node_is_filtered() -> None:
    nodes = [make_node("n1", unschedulable=True), make_node("n2")]
    assert always(make_pod(), nodes) == "n2"
    assert schedule(make_pod(), nodes[:1]).message == "0/1 nodes are available: 1 node(s) were unschedulable."


def test_node_name_pins_the_pod() -> None:
    nodes = [make_node("n1"), make_node("n2"), make_node("n3")]
    assert always(make_pod(node_name="n3"), nodes) == "n3"
    d = schedule(make_pod(node_name="elsewhere"), nodes)
    assert d.message == "0/3 nodes are available: 3 node(s) didn't match the requested node name."


def test_no_nodes() -> None:
    assert schedule(make_pod(), []).message == "0/0 nodes are available: no nodes registered."


# --- scoring --------------------------------------------------------------------


def test_least_allocated_prefers_the_emptier_node() -> None:
    nodes = [make_node("n1"), make_node("n2"), make_node("n3")]
    bound = [make_pod(cpu="1500m", memory="3Gi", node="n1"), make_pod(cpu="500m", memory="1Gi", node="n3")]
    d = schedule(make_pod(cpu="250m", memory="512Mi"), nodes, bound)
    assert always(make_pod(cpu="250m", memory="512Mi"), nodes, bound) == "n2"
    assert d.scores["n2"] > d.scores["n3"] > d.scores["n1"]


def test_least_allocated_weighs_node_size() -> None:
    """The same request leaves a bigger node freer: the bigger node wins."""
    nodes = [make_node("small", cpu="1", memory="1Gi"), make_node("big", cpu="8", memory="16Gi")]
    assert always(make_pod(cpu="500m", memory="512Mi"), nodes) == "big"


def test_equal_nodes_share_the_load() -> None:
    nodes = [make_node("n1"), make_node("n2")]
    chosen = {schedule(make_pod(), nodes, seed=s).node for s in SEEDS}
    assert chosen == {"n1", "n2"}


def test_selector_spread_puts_a_deployments_pods_on_different_nodes() -> None:
    nodes = [make_node("n1"), make_node("n2"), make_node("n3")]
    for seed in SEEDS:
        fw = framework(seed)
        by_name = build_node_infos(nodes, [])
        placed = []
        for i in range(3):
            pod = make_pod(f"web-{i}", owner_uid="dep-1")
            d = fw.schedule(pod, list(by_name.values()))
            assert d.node is not None
            # As the scheduling loop does: the bound pod is assumed on its node.
            by_name[d.node].add_pod({**pod, "spec": {**pod["spec"], "nodeName": d.node}})
            placed.append(d.node)
        assert sorted(placed) == ["n1", "n2", "n3"], f"seed {seed}: {placed}"


def test_selector_spread_counts_only_siblings() -> None:
    nodes = [make_node("n1"), make_node("n2")]
    bound = [make_pod(owner_uid="dep-1", node="n1"), make_pod(owner_uid="dep-1", node="n1"),
             make_pod(owner_uid="dep-2", node="n2"), make_pod(owner_uid="dep-2", node="n2"),
             make_pod(owner_uid="dep-2", node="n2")]
    assert always(make_pod(owner_uid="dep-1"), nodes, bound) == "n2"
    assert always(make_pod(owner_uid="dep-2"), nodes, bound) == "n1"


def test_selector_spread_ignores_non_controller_owners() -> None:
    nodes = [make_node("n1"), make_node("n2")]
    sibling = make_pod(owner_uid="dep-1", node="n1")
    sibling["metadata"]["ownerReferences"][0]["controller"] = False
    pod = make_pod(owner_uid="dep-1")
    d = schedule(pod, nodes, [sibling])
    assert d.scores["n1"] == d.scores["n2"]


def test_schedule_does_not_modify_its_inputs() -> None:
    nodes = [make_node("n1"), make_node("n2")]
    bound = [make_pod(cpu="1", node="n1")]
    pod = make_pod(cpu="500m")
    before = repr((nodes, bound, pod))
    schedule(pod, nodes, bound)
    assert repr((nodes, bound, pod)) == before
