"""The built-in scheduling plugins and the registry that names them.

Each plugin is a small class with a ``name`` and one method per extension point it
implements (see ``scheduler.framework``). Reasons use kube-scheduler's wording so
that people who know Kubernetes read them at a glance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apimachinery.meta import Obj
from apimachinery.validation import pod_requests
from scheduler.framework import (
    MAX_SCORE,
    SUCCESS,
    CycleState,
    Framework,
    NodeInfo,
    Status,
)


def node_ready(node: Obj) -> bool:
    for c in node.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


class NodeReady:
    name = "NodeReady"

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        return SUCCESS if node_ready(node.node) else Status.unschedulable("node(s) were not ready")


class NodeUnschedulable:
    name = "NodeUnschedulable"

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        if node.node.get("spec", {}).get("unschedulable"):
            return Status.unschedulable("node(s) were unschedulable")
        return SUCCESS


class NodeName:
    name = "NodeName"

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        wanted = pod["spec"].get("nodeName")
        if wanted and wanted != node.name:
            return Status.unschedulable("node(s) didn't match the requested node name")
        return SUCCESS


class NodeAffinity:
    """``spec.nodeSelector`` (required node affinity comes with the scheduling issue)."""

    name = "NodeAffinity"

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        selector = pod["spec"].get("nodeSelector") or {}
        labels = node.node["metadata"].get("labels") or {}
        if all(labels.get(k) == v for k, v in selector.items()):
            return SUCCESS
        return Status.unschedulable("node(s) didn't match Pod's node affinity/selector")


class NodeResourcesFit:
    """Requests against allocatable; scores by the least allocated strategy."""

    name = "NodeResourcesFit"

    def pre_filter(self, state: CycleState, pod: Obj) -> Status:
        state[self.name] = pod_requests(pod["spec"])
        return SUCCESS

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        cpu, mem = state[self.name]
        a_cpu, a_mem, a_pods = node.allocatable()
        reasons = []
        if len(node.pods) + 1 > a_pods:
            reasons.append("Too many pods")
        if cpu and node.requested_cpu + cpu > a_cpu:
            reasons.append("Insufficient cpu")
        if mem and node.requested_memory + mem > a_mem:
            reasons.append("Insufficient memory")
        return Status.unschedulable(*reasons) if reasons else SUCCESS

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        cpu, mem = state[self.name]
        a_cpu, a_mem, _ = node.allocatable()

        def free(requested: int, allocatable: int) -> float:
            return 0.0 if allocatable <= 0 else max(0.0, (allocatable - requested) / allocatable)

        return int(MAX_SCORE * (free(node.requested_cpu + cpu, a_cpu) + free(node.requested_memory + mem, a_mem)) / 2)


def controller_uid(pod: Obj) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


class SelectorSpread:
    """Spread the pods of one owner (a Deployment) over the nodes: fewer siblings, higher score."""

    name = "SelectorSpread"

    def pre_filter(self, state: CycleState, pod: Obj) -> Status:
        state[self.name] = controller_uid(pod)
        return SUCCESS

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        owner = state.get(self.name)
        if owner is None:
            return MAX_SCORE
        siblings = sum(1 for p in node.pods if controller_uid(p) == owner)
        return max(0, MAX_SCORE - 10 * siblings)


REGISTRY: dict[str, Callable[[], Any]] = {
    p.name: p for p in (NodeReady, NodeUnschedulable, NodeName, NodeAffinity, NodeResourcesFit, SelectorSpread)
}


def default_framework() -> Framework:
    fit = NodeResourcesFit()
    spread = SelectorSpread()
    return Framework(
        pre_filters=[fit, spread],
        filters=[NodeReady(), NodeUnschedulable(), NodeName(), NodeAffinity(), fit],
        scores=[(fit, 1), (spread, 2)],
    )

