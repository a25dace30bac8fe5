"""The plugins' vectorised forms (scheduler/nodetable.py) decide exactly as their per-node
methods, which stay the definition: checked plugin by plugin and cycle by cycle on random
clusters, including the framework's mixed path (a per-node filter after the vectorised
ones), the ring that rotates the starting node, sampled (timed) cycles, and the table
kept current as pods are assumed on nodes."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from scheduler.framework import CycleState, Framework, NodeInfo
from scheduler.nodetable import NodeTable
from scheduler.scheduling import build_node_infos
from tests.test_scheduling_framework import framework, make_node, make_pod

Obj = dict[str, Any]

TAINTS = [
    {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
    {"key": "slow", "value": "", "effect": "PreferNoSchedule"},
    {"key": "flaky", "value": "yes", "effect": "NoExecute"},
]
TOLERATIONS = [
    {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    {"key": "slow", "operator": "Exists"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
    {"operator": "Exists"},
]


def random_cluster(rng: random.Random, n_nodes: int, n_pods: int,
                   taint_rate: float = 0.05) -> tuple[list[Obj], list[Obj]]:
    nodes = []
    for i in range(n_nodes):
        taints = [t for t in TAINTS if rng.random() < taint_rate]
        nodes.append(make_node(f"n{i:04d}", cpu=rng.choice(["0.5", "1", "2", "4"]),
                               memory=rng.choice(["1Gi", "2Gi", "8Gi"]), pods=rng.choice([2, 5, 110]),
                               labels={"zone": rng.choice("ab")}, ready=rng.random() > 0.05,
                               unschedulable=rng.random() < 0.05, taints=taints or None))
    pods = [random_pod(rng, node=f"n{rng.randrange(n_nodes):04d}") for _ in range(n_pods)]
    return nodes, pods


def random_pod(rng: random.Random, node: str | None = None) -> Obj:
    fields: dict[str, Any] = {}
    if rng.random() < 0.3:
        fields["tolerations"] = rng.sample(TOLERATIONS, rng.randint(1, 2))
    if rng.random() < 0.15:  # a per-node filter (NodeAffinity) after the vectorised ones
        fields["node_selector"] = {"zone": rng.choice("ab")}
    return make_pod(cpu=rng.choice([None, "100m", "500m", "1500m"]),
                    memory=rng.choice([None, "100Mi", "1Gi", "3Gi"]), node=node, **fields)


def cluster_infos(nodes: list[Obj], pods: list[Obj]) -> list[NodeInfo]:
    return list(build_node_infos(nodes, pods).values())


class AlwaysSampled:
    """A MetricsRecorder that samples every cycle, to run the framework's timed paths."""

    def __init__(self) -> None:
        self.observed: list[tuple[str, str]] = []

    def sample_plugins(self) -> bool:
        return True

    def observe_extension_point(self, point: str, status: str, seconds: float) -> None:
        pass

    def observe_plugin(self, plugin: str, point: str, status: str, seconds: float) -> None:
        self.observed.append((plugin, point))


@pytest.mark.parametrize("seed", range(6))
def test_each_vectorised_filter_and_score_agrees_with_its_per_node_method(seed: int) -> None:
    rng = random.Random(seed)
    nodes, pods = random_cluster(rng, 150, 300)
    infos = cluster_infos(nodes, pods)
    table = NodeTable(infos)
    fw = framework()
    checked: set[str] = set()
    for _ in range(40):
        pod = random_pod(rng)
        state = CycleState(infos, fw)
        for pf in fw.pre_filters:
            pf.pre_filter(state, pod, infos)
        for f in fw.filters:
            vectorised = getattr(f, "filter_table", None)
            mask = vectorised(state, pod, table) if vectorised is not None else None
            if mask is None:
                continue
            if f.name == "NodeAffinity" and "NodeAffinity" not in state:
                continue
            expected = [f.filter(state, pod, info).ok for info in infos]
            assert mask.tolist() == expected, f.name
            checked.add(f"filter {f.name}")
        for ps in fw.pre_scores:
            ps.pre_score(state, pod, infos)
        rows = table.rows(infos[::3])
        for plugin, _ in fw.scores:
            vectorised = getattr(plugin, "score_table", None)
            if vectorised is None:
                continue
            got = vectorised(state, pod, table, rows)
            assert got.dtype == np.int64
            assert got.tolist() == [plugin.score(state, pod, info) for info in infos[::3]], plugin.name
            checked.add(f"score {plugin.name}")
    assert checked >= {"filter NodeReady", "filter NodeUnschedulable", "filter NodeName", "filter TaintToleration",
                       "filter NodeResourcesFit", "score NodeResourcesFit", "score NodeResourcesBalancedAllocation",
                       "score TaintToleration"}


def test_most_allocated_vectorised_agrees() -> None:
    from scheduler.plugins import NodeResourcesFit, ResourceFitArgs

    rng = random.Random(7)
    nodes, pods = random_cluster(rng, 120, 200)
    infos = cluster_infos(nodes, pods)
    table = NodeTable(infos)
    fit = NodeResourcesFit(ResourceFitArgs("MostAllocated", (("cpu", 3), ("memory", 1))))
    rows = table.rows(infos)
    for _ in range(20):
        pod = random_pod(rng)
        state = CycleState(infos)
        fit.pre_score(state, pod, infos)
        assert fit.score_table(state, pod, table, rows).tolist() == [fit.score(state, pod, i) for i in infos]


def _run(fw: Framework, infos: list[NodeInfo], table: NodeTable | None, pods: list[Obj]) -> list[tuple[Any, ...]]:
    """Schedule ``pods`` one after another, each assumed on its node: every decision."""
    by_name = {info.name: info for info in infos}
    out = []
    for pod in pods:
        d = fw.schedule(pod, infos, None, table) if table is not None else fw.schedule(pod, infos)
        out.append((d.node, dict(d.scores), d.message, fw.next_start_node_index))
        if d.node is not None:
            by_name[d.node].add_pod({**pod, "spec": {**pod["spec"], "nodeName": d.node}})
    return out


@pytest.mark.parametrize(("seed", "n_nodes", "sampled", "taint_rate"), [
    (1, 300, False, 0.05), (2, 300, True, 0.05), (3, 60, False, 0.05), (4, 1200, False, 0.05), (5, 150, True, 0.05),
    (6, 300, False, 0.3),  # so many tainted nodes that TaintToleration filters per node
])
def test_cycles_with_a_table_decide_as_cycles_without(seed: int, n_nodes: int, sampled: bool,
                                                      taint_rate: float) -> None:
    rng = random.Random(seed)
    nodes, pods = random_cluster(rng, n_nodes, n_nodes * 2, taint_rate)
    queue = [random_pod(rng) for _ in range(120)]
    queue.append(make_pod(cpu="64"))  # fits nowhere: the message counts every node's reasons
    plain, vectorised = framework(seed), framework(seed)
    if sampled:
        plain.recorder, vectorised.recorder = AlwaysSampled(), AlwaysSampled()
    table_infos = cluster_infos(nodes, pods)
    table = NodeTable(table_infos)
    expected = _run(plain, cluster_infos(nodes, pods), None, queue)
    got = _run(vectorised, table_infos, table, queue)
    assert got == expected
    assert sum(1 for node, *_ in got if node is None) >= 1
    assert sum(1 for node, *_ in got if node is not None) > 60
    # The table followed every assumed pod.
    assert table.pod_count.tolist() == [len(i.pods) for i in table_infos]
    assert table.requested_cpu.tolist() == [i.requested_cpu for i in table_infos]
    assert table.non_zero_memory.tolist() == [i.non_zero_memory for i in table_infos]
    if sampled:
        assert isinstance(vectorised.recorder, AlwaysSampled)
        assert ("NodeResourcesFit", "Score") in vectorised.recorder.observed


def test_ring_visits_rows_from_the_start_round_the_end() -> None:
    infos = cluster_infos([make_node(f"n{i}") for i in range(10)], [])
    table = NodeTable(infos)
    passing = np.array([i % 3 != 0 for i in range(10)])  # rows 1 2 4 5 7 8
    assert table.ring(passing, 0, 0).tolist() == [1, 2, 4, 5, 7, 8]
    assert table.ring(passing, 5, 0).tolist() == [5, 7, 8, 1, 2, 4]
    assert table.ring(passing, 5, 2).tolist() == [7, 8, 1, 2, 4]  # positions 2.. from row 5: rows 7, 8, 9, 0…
    assert table.ring(passing, 5, 7).tolist() == [2, 4]  # row 2 onwards, wrapped
    assert table.ring(passing, 5, 10).tolist() == []
