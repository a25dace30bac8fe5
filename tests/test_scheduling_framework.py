"""The scheduling framework and its built-in plugins, as pure functions of a pod and NodeInfos.

Nodes are built the way the scheduler builds them from an agent's registration
(``scheduler.nodes.node_from_registration``), pods the way the API server stores
them (``apimachinery.validation.validate`` fills the defaults), and NodeInfos with
the scheduling loop's own ``build_node_infos``. No I/O, no mocks.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from apimachinery.pb import node_pb2 as pb
from apimachinery.quantity import parse_memory
from apimachinery.validation import validate
from scheduler.config import API_VERSION, KIND, ConfigError, default_profiles, load_config, parse_config
from scheduler.framework import SUCCESS, CycleState, Decision, Framework, Handle, NodeInfo, PostFilterResult, Status
from scheduler.nodes import node_from_registration
from scheduler.plugins import (
    REGISTRY,
    NodeAffinity,
    NodeResourcesBalancedAllocation,
    NodeResourcesFit,
    PodTopologySpread,
    SelectorSpread,
    TaintToleration,
    node_requirement_matches,
    tolerates,
)
from scheduler.scheduling import build_node_infos, scheduler_name

Obj = dict[str, Any]
GI = 1024 ** 3
SEEDS = range(20)  # tie-breaks are random: a decision that must not depend on them is checked under many


def make_node(name: str, cpu: str = "2", memory: str = "4Gi", pods: int = 110, *,
              labels: dict[str, str] | None = None, ready: bool = True, unschedulable: bool = False,
              taints: list[Obj] | None = None) -> Obj:
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
    if taints:
        node["spec"]["taints"] = taints
    return node


_counter = 0


def make_pod(name: str | None = None, cpu: str | None = None, memory: str | None = None, *,
             node: str | None = None, phase: str | None = None, owner_uid: str | None = None,
             node_selector: dict[str, str] | None = None, node_name: str | None = None,
             labels: dict[str, str] | None = None, namespace: str = "default", **spec_fields: Any) -> Obj:
    global _counter
    _counter += 1
    name = name or f"p{_counter}"
    container: Obj = {"name": "c", "image": "host", "command": ["sleep", "1000"]}
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    if requests:
        container["resources"] = {"requests": requests}
    md: Obj = {"name": name, "namespace": namespace}
    if labels:
        md["labels"] = labels
    if owner_uid:
        md["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                  "uid": owner_uid, "controller": True}]
    ports = spec_fields.pop("ports", None)
    if ports:
        container["ports"] = ports
    spec: Obj = {"containers": [container], **spec_fields}
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


def framework(seed: int = 0, *, preemption: bool = False) -> Framework:
    """The default profile; without its PostFilter (preemption) unless asked, so that the
    filter tables read the filters' own message, without preemption's sentence after it."""
    fw = default_profiles()["default-scheduler"]
    fw.rng = random.Random(seed)
    if not preemption:
        fw.post_filters = []
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
    assert d.scores == {}  # one feasible node: nothing to score, as in kube-scheduler
    assert set(schedule(make_pod(), [make_node("n1"), make_node("n2")]).scores) == {"n1", "n2"}


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
    infos_ = build_node_infos(nodes, [sibling])
    spread, state = SelectorSpread(), CycleState()
    assert spread.pre_score(state, pod, list(infos_.values())).ok
    assert spread.score(state, pod, infos_["n1"]) == spread.score(state, pod, infos_["n2"]) == 100


def test_schedule_does_not_modify_its_inputs() -> None:
    nodes = [make_node("n1"), make_node("n2")]
    bound = [make_pod(cpu="1", node="n1")]
    pod = make_pod(cpu="500m")
    before = repr((nodes, bound, pod))
    schedule(pod, nodes, bound)
    assert repr((nodes, bound, pod)) == before


# --- helpers for the plugin tests ----------------------------------------------------------


def message(pod: Obj, nodes: list[Obj], pods: Sequence[Obj] = ()) -> str:
    d = schedule(pod, nodes, pods)
    assert d.node is None, f"expected no fit, got {d.node}"
    return d.message


def zones(**nodes_by_zone: list[str]) -> list[Obj]:
    """Nodes labelled with their zone: ``zones(a=["n1"], b=["n2", "n3"])``."""
    return [make_node(n, labels={"zone": z}) for z, names in nodes_by_zone.items() for n in names]


def term(topology_key: str = "kubernetes.io/hostname", **match_labels: str) -> Obj:
    return {"labelSelector": {"matchLabels": match_labels}, "topologyKey": topology_key}


def with_profile(config: Obj, name: str = "default-scheduler", seed: int = 0) -> Framework:
    fw = parse_config(config)[name]
    fw.rng = random.Random(seed)
    return fw


GPU_TAINT = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}


# --- TaintToleration and NodeUnschedulable -----------------------------------------------------


def test_an_untolerated_taint_is_summed_up_with_other_reasons_in_kube_schedulers_order() -> None:
    nodes = [make_node(f"small{i}", memory="1Gi") for i in range(3)]
    nodes += [make_node(f"gpu{i}", taints=[GPU_TAINT]) for i in range(2)]
    # kube-scheduler sorts the "count reason" strings as strings.
    assert message(make_pod(memory="2Gi"), nodes) == (
        "0/5 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}, 3 Insufficient memory.")
    tolerating = make_pod(memory="2Gi", tolerations=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    assert {schedule(tolerating, nodes, seed=s).node for s in SEEDS} == {"gpu0", "gpu1"}


@pytest.mark.parametrize(("toleration", "ok"), [
    ({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}, True),
    ({"key": "dedicated", "value": "gpu"}, True),  # no effect: every effect
    ({"key": "dedicated", "operator": "Exists"}, True),
    ({"operator": "Exists"}, True),  # empty key and Exists: every taint
    ({"operator": "Exists", "effect": "NoSchedule"}, True),
    ({"key": "dedicated", "value": "cpu"}, False),
    ({"key": "dedicated", "value": "gpu", "effect": "NoExecute"}, False),
    ({"key": "other", "operator": "Exists"}, False),
    ({"operator": "Exists", "effect": "PreferNoSchedule"}, False),
])
def test_tolerations_match_taints_as_in_kubernetes(toleration: Obj, ok: bool) -> None:
    assert tolerates(toleration, GPU_TAINT) is ok
    nodes = [make_node("n1", taints=[GPU_TAINT])]
    assert (schedule(make_pod(tolerations=[toleration]), nodes).node == "n1") is ok


def test_no_execute_taints_filter_and_prefer_no_schedule_ones_only_score() -> None:
    evicting = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    assert message(make_pod(), [make_node("n1", taints=[evicting])]) == (
        "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }.")
    soft = {"key": "spot", "value": "true", "effect": "PreferNoSchedule"}
    nodes = [make_node("n1", taints=[soft]), make_node("n2")]
    assert always(make_pod(), nodes) == "n2"
    assert schedule(make_pod(), nodes[:1]).node == "n1"
    tolerant = make_pod(tolerations=[{"key": "spot", "operator": "Exists", "effect": "PreferNoSchedule"}])
    d = schedule(tolerant, nodes)
    assert d.scores["n1"] == d.scores["n2"]


def test_taint_toleration_score_is_reversed_and_normalized() -> None:
    soft = [{"key": f"k{i}", "effect": "PreferNoSchedule"} for i in range(2)]
    nodes = infos([make_node("n0"), make_node("n1", taints=soft[:1]), make_node("n2", taints=soft)])
    plugin, state, pod = TaintToleration(), CycleState(), make_pod()
    plugin.pre_score(state, pod, nodes)
    scores = {n.name: plugin.score(state, pod, n) for n in nodes}
    assert scores == {"n0": 0, "n1": 1, "n2": 2}
    plugin.normalize_score(state, pod, scores)
    assert scores == {"n0": 100, "n1": 50, "n2": 0}


def test_a_cordoned_node_takes_pods_that_tolerate_unschedulable() -> None:
    nodes = [make_node("n1", unschedulable=True)]
    assert message(make_pod(), nodes) == "0/1 nodes are available: 1 node(s) were unschedulable."
    tolerant = make_pod(tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists",
                                      "effect": "NoSchedule"}])
    assert schedule(tolerant, nodes).node == "n1"


# --- NodeAffinity ------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "ok"), [
    ({"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}, True),
    ({"key": "disk", "operator": "In", "values": ["hdd"]}, False),
    ({"key": "disk", "operator": "NotIn", "values": ["hdd"]}, True),
    ({"key": "gpu", "operator": "NotIn", "values": ["a100"]}, True),  # no such label: NotIn holds
    ({"key": "disk", "operator": "Exists"}, True),
    ({"key": "gpu", "operator": "Exists"}, False),
    ({"key": "gpu", "operator": "DoesNotExist"}, True),
    ({"key": "cores", "operator": "Gt", "values": ["4"]}, True),
    ({"key": "cores", "operator": "Gt", "values": ["8"]}, False),
    ({"key": "cores", "operator": "Lt", "values": ["16"]}, True),
    ({"key": "disk", "operator": "Gt", "values": ["1"]}, False),  # not an integer: never matches
    ({"key": "gpu", "operator": "Lt", "values": ["1"]}, False),
])
def test_node_selector_requirements(expr: Obj, ok: bool) -> None:
    assert node_requirement_matches(expr, {"disk": "ssd", "cores": "8"}) is ok


def required(*terms: Obj) -> Obj:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


def test_required_node_affinity_terms_are_ored_and_their_expressions_anded() -> None:
    nodes = [make_node("n1", labels={"disk": "ssd", "zone": "a"}), make_node("n2", labels={"disk": "ssd"}),
             make_node("n3", labels={"zone": "b"})]
    ssd_in_a = {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]},
                                     {"key": "zone", "operator": "In", "values": ["a"]}]}
    zone_b = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}
    assert always(make_pod(affinity=required(ssd_in_a)), nodes) == "n1"
    chosen = {schedule(make_pod(affinity=required(ssd_in_a, zone_b)), nodes, seed=s).node for s in SEEDS}
    assert chosen == {"n1", "n3"}
    nowhere = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["c"]}]}
    assert message(make_pod(affinity=required(nowhere)), nodes) == (
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.")


def test_match_fields_pick_a_node_by_name_and_node_selector_must_hold_too() -> None:
    nodes = [make_node("n1", labels={"disk": "ssd"}), make_node("n2", labels={"disk": "ssd"})]
    by_name = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}
    assert always(make_pod(affinity=required(by_name)), nodes) == "n2"
    not_n2 = {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]}
    assert always(make_pod(affinity=required(not_n2)), nodes) == "n1"
    both = make_pod(affinity=required(by_name), node_selector={"disk": "hdd"})
    assert message(both, nodes) == "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."


def test_preferred_node_affinity_weighs_the_terms_a_node_matches() -> None:
    nodes = [make_node("n1", labels={"zone": "a"}), make_node("n2", labels={"zone": "b", "disk": "ssd"}),
             make_node("n3", labels={"disk": "ssd"})]
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 80, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
        {"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}},
        {"weight": 40, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}},
    ]}}
    pod = make_pod(affinity=affinity)
    assert always(pod, nodes) == "n2"  # 90 beats 80 and 50
    plugin, state, nis = NodeAffinity(), CycleState(), infos(nodes)
    assert plugin.pre_score(state, pod, nis).ok
    scores = {n.name: plugin.score(state, pod, n) for n in nis}
    plugin.normalize_score(state, pod, scores)
    assert scores == {"n1": 88, "n2": 100, "n3": 55}


# --- NodeResourcesFit strategies and NodeResourcesBalancedAllocation ------------------------------


def bin_packing(*resources: Obj) -> Obj:
    strategy: Obj = {"type": "MostAllocated"}
    if resources:
        strategy["resources"] = list(resources)
    return {"profiles": [{"pluginConfig": [{"name": "NodeResourcesFit", "args": {"scoringStrategy": strategy}}],
                          "plugins": {"score": {"disabled": [{"name": "NodeResourcesBalancedAllocation"}]}}}]}


def test_most_allocated_packs_pods_onto_the_fuller_node() -> None:
    nodes = [make_node("n1"), make_node("n2")]
    bound = [make_pod(cpu="1", memory="2Gi", node="n1")]
    pod = make_pod(cpu="500m", memory="512Mi")
    assert always(pod, nodes, bound) == "n2"  # the default, LeastAllocated, spreads
    packed = {with_profile(bin_packing(), seed=s).schedule(pod, infos(nodes, bound)).node for s in SEEDS}
    assert packed == {"n1"}


def test_scoring_resources_are_weighted() -> None:
    nodes = infos([make_node("n1"), make_node("n2")], [make_pod(cpu="1", node="n1"), make_pod(memory="2Gi", node="n2")])
    pod = make_pod(cpu="100m", memory="100Mi")
    fit = NodeResourcesFit.from_args({"scoringStrategy": {"type": "MostAllocated",
                                                          "resources": [{"name": "cpu", "weight": 3},
                                                                        {"name": "memory", "weight": 1}]}})
    state = CycleState()
    fit.pre_score(state, pod, nodes)
    cpu_heavy, mem_heavy = (fit.score(state, pod, n) for n in nodes)
    assert cpu_heavy > mem_heavy


def test_least_allocated_counts_request_less_pods_at_kube_schedulers_defaults() -> None:
    nodes = infos([make_node("n1"), make_node("n2")], [make_pod(node="n1") for _ in range(5)])
    fit, state, pod = NodeResourcesFit(), CycleState(), make_pod()
    fit.pre_score(state, pod, nodes)
    # 6 × 100m of 2 cpu and 6 × 200Mi of 4Gi against 100m and 200Mi.
    assert [fit.score(state, pod, n) for n in nodes] == [(70 + 70) // 2, (95 + 95) // 2]


def test_balanced_allocation_prefers_equal_fractions() -> None:
    nodes = infos([make_node("n1"), make_node("n2")], [make_pod(cpu="1", memory="3Gi", node="n1")])
    plugin, state, pod = NodeResourcesBalancedAllocation(), CycleState(), make_pod(cpu="1", memory="1Gi")
    plugin.pre_score(state, pod, nodes)
    # n1: cpu 2/2, memory 4/4 → perfectly balanced; n2: cpu 1/2, memory 1/4 → std 0.125.
    assert [plugin.score(state, pod, n) for n in nodes] == [100, 87]


# --- NodePorts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("used", "wanted", "conflict"), [
    ({"hostPort": 8080}, {"hostPort": 8080}, True),
    ({"hostPort": 8080}, {"hostPort": 8081}, False),
    ({"hostPort": 8080, "protocol": "UDP"}, {"hostPort": 8080}, False),
    ({"hostPort": 8080, "hostIP": "10.0.0.1"}, {"hostPort": 8080, "hostIP": "10.0.0.2"}, False),
    ({"hostPort": 8080, "hostIP": "10.0.0.1"}, {"hostPort": 8080}, True),  # 0.0.0.0 is every address
    ({"hostPort": 8080}, {"hostPort": 8080, "hostIP": "10.0.0.1"}, True),
])
def test_host_ports_conflict_per_protocol_and_address(used: Obj, wanted: Obj, conflict: bool) -> None:
    nodes = [make_node("n1")]
    bound = [make_pod(node="n1", ports=[{"containerPort": 80, **used}])]
    d = schedule(make_pod(ports=[{"containerPort": 80, **wanted}]), nodes, bound)
    if conflict:
        assert d.message == "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
    else:
        assert d.node == "n1"


# --- InterPodAffinity --------------------------------------------------------------------------


def pod_affinity(kind: str, *terms: Obj, preferred: bool = False) -> Obj:
    if preferred:
        return {kind: {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": t} for t in terms]}}
    return {kind: {"requiredDuringSchedulingIgnoredDuringExecution": list(terms)}}


def test_required_pod_affinity_follows_the_matching_pod_by_topology() -> None:
    nodes = zones(a=["n1", "n2"], b=["n3"])
    db = [make_pod(node="n3", labels={"app": "db"})]
    assert always(make_pod(affinity=pod_affinity("podAffinity", term(app="db"))), nodes, db) == "n3"
    by_zone = make_pod(affinity=pod_affinity("podAffinity", term("zone", app="db")))
    assert set(schedule(by_zone, nodes, [make_pod(node="n1", labels={"app": "db"})]).scores) == {"n1", "n2"}


def test_required_pod_affinity_with_no_match_and_the_first_pod_of_a_group() -> None:
    nodes = zones(a=["n1"], b=["n2"])
    lonely = make_pod(affinity=pod_affinity("podAffinity", term(app="db")))
    assert message(lonely, nodes) == "0/2 nodes are available: 2 node(s) didn't match pod affinity rules."
    # A pod matching its own affinity term may start the group anywhere.
    first = make_pod(labels={"app": "db"}, affinity=pod_affinity("podAffinity", term(app="db")))
    assert schedule(first, nodes).node in {"n1", "n2"}
    # A node without the topology key never satisfies affinity.
    unlabeled = [make_node("n3")]
    no_zone = make_pod(labels={"app": "db"}, affinity=pod_affinity("podAffinity", term("zone", app="db")))
    assert message(no_zone, unlabeled) == "0/1 nodes are available: 1 node(s) didn't match pod affinity rules."


def test_required_anti_affinity_keeps_replicas_apart() -> None:
    nodes = zones(a=["n1"], b=["n2"])
    web = [make_pod(node="n1", labels={"app": "web"})]
    apart = make_pod(labels={"app": "web"}, affinity=pod_affinity("podAntiAffinity", term(app="web")))
    assert always(apart, nodes, web) == "n2"
    web.append(make_pod(node="n2", labels={"app": "web"}))
    assert message(apart, nodes, web) == "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."


def test_existing_pods_required_anti_affinity_is_symmetric() -> None:
    nodes = zones(a=["n1", "n2"], b=["n3"])
    loner = make_pod(node="n1", affinity=pod_affinity("podAntiAffinity", term("zone", app="web")))
    web = make_pod(labels={"app": "web"})
    assert always(web, nodes, [loner]) == "n3"
    assert message(web, nodes[:2], [loner]) == (
        "0/2 nodes are available: 2 node(s) didn't satisfy existing pods anti-affinity rules.")
    assert schedule(make_pod(labels={"app": "db"}), nodes[:2], [loner]).node is not None


def test_affinity_terms_match_pods_of_their_namespaces() -> None:
    nodes = zones(a=["n1"], b=["n2"])
    db_elsewhere = [make_pod(node="n2", labels={"app": "db"}, namespace="data")]
    same_ns = make_pod(affinity=pod_affinity("podAffinity", term(app="db")))
    assert schedule(same_ns, nodes, db_elsewhere).node is None  # only the pod's own namespace by default
    listed = make_pod(affinity=pod_affinity("podAffinity", {**term(app="db"), "namespaces": ["data"]}))
    assert always(listed, nodes, db_elsewhere) == "n2"
    selected = make_pod(affinity=pod_affinity("podAffinity", {**term(app="db"), "namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "data"}}}))
    assert always(selected, nodes, db_elsewhere) == "n2"
    everywhere = make_pod(affinity=pod_affinity("podAffinity", {**term(app="db"), "namespaceSelector": {}}))
    assert always(everywhere, nodes, db_elsewhere) == "n2"


def test_preferred_affinity_and_anti_affinity_score() -> None:
    nodes = zones(a=["n1"], b=["n2"], c=["n3"])
    bound = [make_pod(node="n1", labels={"app": "cache"}), make_pod(node="n2", labels={"app": "web"})]
    near_cache = make_pod(affinity=pod_affinity("podAffinity", term(app="cache"), preferred=True))
    assert always(near_cache, nodes, bound) == "n1"
    away = make_pod(affinity=pod_affinity("podAntiAffinity", term(app="web"), term(app="cache"), preferred=True))
    assert always(away, nodes, bound) == "n3"


def test_existing_pods_preferences_count_for_the_incoming_pod() -> None:
    nodes = zones(a=["n1"], b=["n2"])
    fan = make_pod(node="n2", affinity=pod_affinity("podAffinity", term(app="web"), preferred=True))
    assert always(make_pod(labels={"app": "web"}), nodes, [fan]) == "n2"


# --- PodTopologySpread ---------------------------------------------------------------------------


def spread(key: str = "zone", max_skew: int = 1, when: str = "DoNotSchedule", **extra: Any) -> Obj:
    return {"maxSkew": max_skew, "topologyKey": key, "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": {"app": "web"}}, **extra}


def web_pods(**count_by_node: int) -> list[Obj]:
    return [make_pod(node=n, labels={"app": "web"}) for n, c in count_by_node.items() for _ in range(c)]


def test_do_not_schedule_spread_fills_the_emptiest_zone() -> None:
    nodes = zones(a=["n1", "n2"], b=["n3"])
    pod = make_pod(labels={"app": "web"}, topologySpreadConstraints=[spread()])
    assert always(pod, nodes, web_pods(n1=1, n3=0)) == "n3"
    # Zone a has 2, zone b 1: a third in a would make the skew 2.
    assert always(pod, nodes, web_pods(n1=1, n2=1, n3=1)) == "n3"
    assert set(schedule(pod, nodes, web_pods(n1=1, n3=1)).scores) == {"n1", "n2", "n3"}  # all within the skew
    assert always(pod, nodes, web_pods(n1=2, n3=1)) == "n3"


def test_spread_skew_missing_label_and_node_affinity_honoured() -> None:
    nodes = zones(a=["n1"], b=["n2"]) + [make_node("n3")]
    pod = make_pod(labels={"app": "web"}, topologySpreadConstraints=[spread()])
    assert always(pod, nodes, web_pods(n1=1)) == "n2"
    # A cordoned node is still a domain: zone b stays the emptiest at 0.
    nodes[1]["spec"]["unschedulable"] = True
    assert message(pod, nodes, web_pods(n1=2)) == (
        "0/3 nodes are available: 1 node(s) didn't match pod topology spread constraints, "
        "1 node(s) didn't match pod topology spread constraints (missing required label), "
        "1 node(s) were unschedulable.")
    # nodeAffinityPolicy Honor: a node the pod's node affinity excludes is not a domain,
    # so zone a alone counts and its skew is 1.
    pinned = make_pod(labels={"app": "web"}, topologySpreadConstraints=[spread()], affinity=required(
        {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]}))
    assert schedule(pinned, nodes[:1] + [make_node("n2", labels={"zone": "b"})], web_pods(n1=3)).node == "n1"


def test_min_domains_counts_missing_domains_as_empty() -> None:
    nodes = zones(a=["n1"], b=["n2"])
    bound = web_pods(n1=1, n2=1)
    pod = make_pod(labels={"app": "web"}, topologySpreadConstraints=[spread()])
    assert schedule(pod, nodes, bound).node is not None
    wants_three = make_pod(labels={"app": "web"}, topologySpreadConstraints=[spread(minDomains=3)])
    assert message(wants_three, nodes, bound) == (
        "0/2 nodes are available: 2 node(s) didn't match pod topology spread constraints.")


def test_schedule_anyway_spread_scores_the_emptier_domain_higher() -> None:
    nodes = zones(a=["n1"], b=["n2"], c=["n3"])
    pod = make_pod(labels={"app": "web"}, topologySpreadConstraints=[spread(when="ScheduleAnyway")])
    assert always(pod, nodes, web_pods(n1=2, n2=1)) == "n3"
    plugin, nis = PodTopologySpread(), infos(nodes, web_pods(n1=2, n2=1))
    state = CycleState(nis)
    assert plugin.pre_score(state, pod, nis).ok
    scores = {n.name: plugin.score(state, pod, n) for n in nis}
    plugin.normalize_score(state, pod, scores)
    assert scores["n3"] == 100 and scores["n1"] < scores["n2"] < scores["n3"]


# --- the config file ---------------------------------------------------------------------------


def config_errors(doc: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return [str(e) for e in info.value.errors]


def test_no_config_is_kube_schedulers_default_profile() -> None:
    profiles = default_profiles()
    assert set(profiles) == {"default-scheduler"}
    fw = profiles["default-scheduler"]
    assert [p.name for p in fw.filters] == [
        "NodeReady", "NodeUnschedulable", "NodeName", "TaintToleration", "NodeAffinity", "NodePorts",
        "NodeResourcesFit", "PodTopologySpread", "InterPodAffinity"]
    assert {p.name: w for p, w in fw.scores} == {
        "NodeResourcesBalancedAllocation": 1, "NodeResourcesFit": 1, "InterPodAffinity": 2, "NodeAffinity": 2,
        "PodTopologySpread": 2, "TaintToleration": 3, "SelectorSpread": 2}
    assert [p.name for p in fw.binds] == ["DefaultBinder"]
    assert parse_config({"apiVersion": API_VERSION, "kind": KIND}).keys() == profiles.keys()


def test_profiles_enable_disable_and_reweight_plugins() -> None:
    profiles = parse_config({"apiVersion": API_VERSION, "kind": KIND, "profiles": [
        {"schedulerName": "default-scheduler"},
        {"schedulerName": "bin-packer",
         "plugins": {"score": {"disabled": [{"name": "*"}],
                               "enabled": [{"name": "NodeResourcesFit", "weight": 5}, {"name": "NodeAffinity"}]},
                     "filter": {"disabled": [{"name": "NodePorts"}]},
                     "preScore": {"disabled": [{"name": "SelectorSpread"}]}},
         "pluginConfig": [{"name": "NodeResourcesFit", "args": {"scoringStrategy": {"type": "MostAllocated"}}}]},
    ]})
    packer = profiles["bin-packer"]
    assert [(p.name, w) for p, w in packer.scores] == [("NodeResourcesFit", 5), ("NodeAffinity", 2)]
    assert "NodePorts" not in [p.name for p in packer.filters]
    assert "SelectorSpread" not in [p.name for p in packer.pre_scores]
    fit = next(p for p, _ in packer.scores if isinstance(p, NodeResourcesFit))
    assert fit.args.strategy == "MostAllocated"
    assert fit in packer.filters  # one instance serves every point of the profile
    assert profiles["default-scheduler"] is not packer


def test_multi_point_enables_a_plugin_everywhere_it_implements() -> None:
    fw = with_profile({"profiles": [{"plugins": {
        "multiPoint": {"disabled": [{"name": "SelectorSpread"}], "enabled": [{"name": "NodeName"}]},
        "score": {"enabled": [{"name": "TaintToleration", "weight": 7}]}}}]})
    assert "SelectorSpread" not in [p.name for p in fw.pre_scores] + [p.name for p, _ in fw.scores]
    assert [p.name for p in fw.filters].count("NodeName") == 1
    assert {p.name: w for p, w in fw.scores}["TaintToleration"] == 7


def test_bad_configs_name_every_field() -> None:
    assert config_errors({"apiVersion": "v1", "kind": KIND, "profile": []}) == [
        'profile: unknown field; did you mean "profiles"?',
        f'apiVersion: must be "{API_VERSION}", got string "v1"',
    ]
    assert config_errors({"profiles": [{
        "plugins": {"score": {"enabled": [{"name": "NodeResourceFit", "weight": 0}, {"name": "NodeName"}]},
                    "permit": {}, "filters": {}},
        "pluginConfig": [{"name": "NodeResourcesFit", "args": {"scoringStrategy": {"type": "Balanced"}}},
                         {"name": "NodeName", "args": {"x": 1}}],
    }]}) == [
        'profiles[0].plugins.score.enabled[0].name: plugin "NodeResourceFit" does not exist; '
        'did you mean "NodeResourcesFit"?',
        "profiles[0].plugins.score.enabled[0].weight: must be an integer from 1 to 100, got integer 0",
        "profiles[0].plugins.permit: orch does not support Kubernetes' permit extension point",
        'profiles[0].plugins.filters: unknown extension point; did you mean "filter"?',
        "profiles[0].pluginConfig[1].args: NodeName takes no arguments",
        "profiles[0].pluginConfig[0].args.scoringStrategy.type: must be one of LeastAllocated, MostAllocated, "
        'got string "Balanced"',
    ]
    assert config_errors({"profiles": [{"plugins": {"score": {"enabled": [{"name": "NodeName"}]}}}]}) == [
        'profiles[0].plugins.score.enabled[0].name: plugin "NodeName" does not extend score plugin']
    assert config_errors({"profiles": [{"plugins": {"bind": {"disabled": [{"name": "DefaultBinder"}]}}}]}) == [
        "profiles[0].plugins.bind: at least one bind plugin is needed"]
    assert config_errors({"profiles": [{}, {"schedulerName": "default-scheduler"}]}) == [
        'profiles[1].schedulerName: duplicate profile "default-scheduler"']


def test_load_config_reads_yaml_and_names_the_file(tmp_path: Any) -> None:
    good = tmp_path / "sched.yaml"
    good.write_text(f"apiVersion: {API_VERSION}\nkind: {KIND}\nprofiles:\n- schedulerName: packer\n")
    assert set(load_config(good)) == {"packer"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n- pluginConfig:\n  - name: InterPodAffinity\n    args: {hardPodAffinityWeight: 101}\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == (f"{bad}: profiles[0].pluginConfig[0].args.hardPodAffinityWeight: "
                               "must be an integer from 0 to 100, got integer 101")


def test_the_scheduler_refuses_to_start_on_a_bad_config(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from scheduler.main import parse_args

    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: [{plugins: {score: {enabled: [{name: Nope}]}}}]\n")
    with pytest.raises(SystemExit) as info:
        parse_args(["--config", str(bad)])
    assert info.value.code == 2
    assert (f'error: argument --config: {bad}: profiles[0].plugins.score.enabled[0].name: plugin "Nope" '
            "does not exist") in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text("profiles: [{schedulerName: packer}]\n")
    assert set(parse_args(["--config", str(good)]).config) == {"packer"}


# --- the framework's extension points ------------------------------------------------------------


class Recorder:
    """A plugin at every extension point, recording the calls it gets."""

    name = "Recorder"

    def __init__(self, pre_filter: Status = SUCCESS, reserve: Status = SUCCESS) -> None:
        self.calls: list[str] = []
        self._pre_filter, self._reserve = pre_filter, reserve

    def pre_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        self.calls.append("pre_filter")
        return self._pre_filter

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        self.calls.append(f"filter {node.name}")
        return SUCCESS if node.name != "n1" else Status.unschedulable("node(s) were n1")

    def post_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo],
                    statuses: Mapping[str, Status]) -> PostFilterResult:
        self.calls.append(f"post_filter {sorted(statuses)}")
        return PostFilterResult(Status.unschedulable("preemption: not helpful."))

    def reserve(self, state: CycleState, pod: Obj, node_name: str) -> Status:
        self.calls.append(f"reserve {node_name}")
        return self._reserve

    def unreserve(self, state: CycleState, pod: Obj, node_name: str) -> None:
        self.calls.append(f"unreserve {node_name}")


def test_a_skipping_pre_filter_skips_its_filter() -> None:
    rec = Recorder(pre_filter=Status.skip())
    fw = Framework(pre_filters=[rec], filters=[rec])
    assert fw.schedule(make_pod(), infos([make_node("n1")])).node == "n1"
    assert rec.calls == ["pre_filter"]


def test_a_rejecting_pre_filter_rejects_every_node() -> None:
    fw = Framework(pre_filters=[Recorder(pre_filter=Status.unresolvable("pod is not ready yet"))])
    assert fw.schedule(make_pod(), infos([make_node("n1"), make_node("n2")])).message == (
        "0/2 nodes are available: pod is not ready yet.")


def test_post_filter_runs_only_when_no_node_fits_and_adds_its_message() -> None:
    rec = Recorder()
    fw = Framework(filters=[rec], post_filters=[rec])
    d = fw.schedule(make_pod(), infos([make_node("n1")]))
    assert d.message == "0/1 nodes are available: 1 node(s) were n1. preemption: not helpful."
    assert rec.calls == ["filter n1", "post_filter ['n1']"]
    rec.calls.clear()
    assert fw.schedule(make_pod(), infos([make_node("n1"), make_node("n2")])).node == "n2"
    assert rec.calls == ["filter n1", "filter n2"]


def test_a_refused_reserve_undoes_the_others_in_reverse() -> None:
    first, second = Recorder(), Recorder(reserve=Status.unschedulable("no"))
    fw = Framework(reserves=[first, second])
    assert fw.reserve(CycleState(), make_pod(), "n1") == Status.unschedulable("no")
    assert (first.calls, second.calls) == (["reserve n1", "unreserve n1"], ["reserve n1", "unreserve n1"])


def test_an_out_of_range_score_is_an_error_not_a_decision() -> None:
    class Broken:
        name = "Broken"

        def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
            return 101

    d = Framework(scores=[(Broken(), 1)]).schedule(make_pod(), infos([make_node("n1"), make_node("n2")]))
    assert d.node is None and d.error
    assert d.message == "plugin Broken gave node n1 the invalid score 101, not within [0, 100]"


def test_bind_plugins_may_skip_to_the_next() -> None:
    class Skipper:
        name = "Skipper"

        async def bind(self, state: CycleState, pod: Obj, node_name: str, handle: Handle) -> Status:
            return Status.skip()

    class Binds:
        name = "Binds"

        def __init__(self) -> None:
            self.bound: list[str] = []

        async def bind(self, state: CycleState, pod: Obj, node_name: str, handle: Handle) -> Status:
            self.bound.append(node_name)
            return SUCCESS

    binds = Binds()
    fw = Framework(binds=[Skipper(), binds])
    assert asyncio.run(fw.bind(CycleState(), make_pod(), "n1", None)) == SUCCESS  # type: ignore[arg-type]
    assert binds.bound == ["n1"]
    assert not asyncio.run(Framework(binds=[Skipper()]).bind(CycleState(), make_pod(), "n1", None)).ok  # type: ignore[arg-type]


def test_pods_pick_their_profile_by_scheduler_name() -> None:
    assert scheduler_name(make_pod()) == "default-scheduler"
    assert scheduler_name(make_pod(schedulerName="packer")) == "packer"


# --- docs/scheduling-plugins.md ---------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "scheduling-plugins.md"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_the_docs_example_plugin_works_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    (plugin_code,) = doc_blocks("python")
    namespace: dict[str, Any] = {}
    exec(compile(plugin_code, str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own code, on purpose
    prefer_label = namespace["PreferLabel"]
    monkeypatch.setitem(REGISTRY, prefer_label.name, prefer_label.from_args)
    configs = [doc for doc in map(yaml.safe_load, doc_blocks("yaml")) if doc.get("kind") == KIND]
    assert set(parse_config(configs[0])) == {"default-scheduler", "bin-packer"}
    profiles = parse_config(configs[1])
    nodes = [make_node("n1"), make_node("n2", labels={"disktype": "ssd"}), make_node("n3", labels={"disktype": "hdd"})]
    # The busier ssd node still wins in ssd-first, and loses in the default profile.
    bound = [make_pod(cpu="1", memory="2Gi", node="n2")]
    pod = make_pod(schedulerName="ssd-first")
    for seed in SEEDS:
        profiles["ssd-first"].rng = random.Random(seed)
        assert profiles["ssd-first"].schedule(pod, infos(nodes, bound)).node == "n2"
    assert "n2" not in {schedule(make_pod(), nodes, bound, seed=s).node for s in SEEDS}
    with pytest.raises(ConfigError) as info:
        parse_config({"profiles": [{"pluginConfig": [{"name": "PreferLabel", "args": {"value": "ssd"}}]}]})
    assert str(info.value) == "profiles[0].pluginConfig[0].args.key: is required: the node label to prefer"


# --- percentageOfNodesToScore --------------------------------------------------------------


def test_num_feasible_nodes_to_find_follows_kube_scheduler() -> None:
    from scheduler.framework import num_feasible_nodes_to_find

    assert num_feasible_nodes_to_find(50) == 50  # a small cluster: every node
    assert num_feasible_nodes_to_find(100) == 100
    assert num_feasible_nodes_to_find(300) == 144  # 50 - 300/125 = 48 %
    assert num_feasible_nodes_to_find(1000) == 420  # 50 - 1000/125 = 42 %
    assert num_feasible_nodes_to_find(5000) == 500  # 10 %
    assert num_feasible_nodes_to_find(100_000) == 5000  # at least 5 %
    assert num_feasible_nodes_to_find(300, percentage=10) == 100  # never fewer than 100
    assert num_feasible_nodes_to_find(5000, percentage=100) == 5000


def test_a_large_cluster_is_searched_in_turns_and_a_misfit_still_counts_every_node() -> None:
    from scheduler.config import parse_config

    (fw,) = parse_config({"percentageOfNodesToScore": 0}).values()
    infos = [NodeInfo(make_node(f"n{i:03}", cpu="4", memory="8Gi")) for i in range(300)]
    seen: set[str] = set()
    for _ in range(3):
        decision = fw.schedule(make_pod("p", cpu="100m"), infos)
        assert decision.node is not None and len(decision.scores) == 144  # 48 % of 300 were filtered and scored
        seen |= set(decision.scores)
    assert len(seen) == 300, "each cycle starts where the last one stopped"
    too_big = fw.schedule(make_pod("big", cpu="64"), infos)
    assert too_big.node is None and too_big.message.startswith("0/300 nodes are available: 300 Insufficient cpu.")


def test_percentage_of_nodes_to_score_is_checked_in_the_config() -> None:
    from scheduler.config import ConfigError, parse_config

    (fw,) = parse_config({"percentageOfNodesToScore": 30, "profiles": [{}]}).values()
    assert fw.percentage_of_nodes_to_score == 30
    (fw,) = parse_config({"percentageOfNodesToScore": 30,
                          "profiles": [{"percentageOfNodesToScore": 100}]}).values()
    assert fw.percentage_of_nodes_to_score == 100
    with pytest.raises(ConfigError, match=r"profiles\[0\]\.percentageOfNodesToScore: must be an integer from 0"):
        parse_config({"profiles": [{"percentageOfNodesToScore": 150}]})
