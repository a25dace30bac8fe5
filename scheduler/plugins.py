"""The built-in scheduling plugins, with kube-scheduler's names, semantics and reasons.

Each plugin is a small class with a ``name`` and one method per extension point it
implements (see ``scheduler.framework``); ``REGISTRY`` maps each name to a factory
that takes the plugin's ``args`` from the config file's ``pluginConfig``. Failure
reasons are kube-scheduler's own strings, so that people who know Kubernetes read a
Pending pod's message at a glance, and filters that no eviction can satisfy return
``UnschedulableAndUnresolvable`` as kube-scheduler's do, for a preemption plugin to
skip those nodes.

Two plugins are orch's own: ``NodeReady`` (kube-scheduler relies on the
``node.kubernetes.io/not-ready`` taint the node lifecycle controller adds; orch's
controller sets the Ready condition only, so the filter reads it) and
``SelectorSpread`` (kube-scheduler's, removed in 1.26 in favour of PodTopologySpread's
system defaults; kept because it spreads a Deployment's pods without any constraint
written in the template).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from apimachinery.errors import (
    ConflictError,
    FieldError,
    NotFoundError,
    ValidationError,
)
from apimachinery.labels import (
    Operator,
    Requirement,
    Selector,
    describe_value,
    did_you_mean,
    selector_from_label_selector,
)
from apimachinery.meta import Obj
from scheduler.framework import (
    MAX_SCORE,
    SUCCESS,
    Code,
    CycleState,
    Handle,
    NodeInfo,
    PostFilterResult,
    Status,
    default_normalize_score,
    default_normalize_table,
    pod_resource_requests,
)
from scheduler.nodetable import Ints, Mask, NodeTable

Args = Mapping[str, Any]


class PluginArgsError(ValidationError):
    """A plugin's ``args`` in the config file are wrong; paths are relative to ``args``."""


def no_args(cls: type) -> Callable[[Args], Any]:
    """The factory of a plugin that takes no arguments: any given are an error."""

    def factory(args: Args) -> Any:
        if args:
            raise PluginArgsError(FieldError("", f"{cls.__name__} takes no arguments"))
        return cls()
    return factory


def _check_fields(args: Args, known: tuple[str, ...], path: str = "") -> None:
    errors = [FieldError(f"{path}{name}", "unknown field" + did_you_mean(name, known))
              for name in args if name not in known]
    if errors:
        raise PluginArgsError(errors)


# --- node-level filters ---------------------------------------------------------------


class NodeReady:
    name = "NodeReady"

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        return SUCCESS if node.ready else Status.unresolvable("node(s) were not ready")

    def filter_table(self, state: CycleState, pod: Obj, table: NodeTable) -> Mask:
        return table.ready


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Kubernetes' ToleratesTaint: an empty effect matches every effect, an empty key with
    ``Exists`` every key; ``Equal`` (the default) compares values."""
    effect = toleration.get("effect")
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key")
    if key and key != taint.get("key"):
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return bool(toleration.get("value", "") == taint.get("value", ""))


def tolerated(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    return any(tolerates(t, taint) for t in tolerations)


UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


class NodeUnschedulable:
    """A cordoned node (``spec.unschedulable``) takes only pods that tolerate
    ``node.kubernetes.io/unschedulable:NoSchedule``, as in Kubernetes."""

    name = "NodeUnschedulable"

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        if not node.unschedulable:
            return SUCCESS
        if tolerated(pod["spec"].get("tolerations") or (), UNSCHEDULABLE_TAINT):
            return SUCCESS
        return Status.unresolvable("node(s) were unschedulable")

    def filter_table(self, state: CycleState, pod: Obj, table: NodeTable) -> Mask:
        if not table.any_unschedulable or tolerated(pod["spec"].get("tolerations") or (), UNSCHEDULABLE_TAINT):
            return table.everyone
        return table.schedulable


class NodeName:
    name = "NodeName"

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        wanted = pod["spec"].get("nodeName")
        if wanted and wanted != node.name:
            return Status.unresolvable("node(s) didn't match the requested node name")
        return SUCCESS

    def filter_table(self, state: CycleState, pod: Obj, table: NodeTable) -> Mask | None:
        # A pod naming its node is rare here (it is bound already): per node then.
        return None if pod["spec"].get("nodeName") else table.everyone


class TaintToleration:
    """Filter: every ``NoSchedule`` and ``NoExecute`` taint must be tolerated. Score: the
    fewer untolerated ``PreferNoSchedule`` taints, the better."""

    name = "TaintToleration"

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        tolerations = pod["spec"].get("tolerations") or ()
        for taint in node.taints:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerated(tolerations, taint):
                return Status.unresolvable(
                    f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}")
        return SUCCESS

    def filter_table(self, state: CycleState, pod: Obj, table: NodeTable) -> Mask | None:
        """Nodes without taints pass; the tainted ones are asked one by one, unless they are
        so many that the per-node ring (which stops early) is the cheaper way."""
        tainted = np.flatnonzero(table.tainted)
        if len(tainted) > len(table) // 4:
            return None
        passing = ~table.tainted
        for row in tainted.tolist():
            if self.filter(state, pod, table.infos[row]).ok:
                passing[row] = True
        return passing

    def pre_score(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        state[self.name] = [t for t in pod["spec"].get("tolerations") or ()
                            if t.get("effect", "") in ("", "PreferNoSchedule")]
        return SUCCESS

    def score_table(self, state: CycleState, pod: Obj, table: NodeTable, rows: Ints) -> Ints:
        scores = np.zeros(len(rows), np.int64)
        for i in np.flatnonzero(table.tainted[rows]).tolist():
            scores[i] = self.score(state, pod, table.infos[int(rows[i])])
        return scores

    def normalize_table(self, state: CycleState, pod: Obj, scores: Ints) -> Ints:
        return default_normalize_table(scores, reverse=True)  # type: ignore[no-any-return]

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        if not node.taints:
            return 0
        tolerations = state[self.name]
        return sum(1 for taint in node.taints
                   if taint.get("effect") == "PreferNoSchedule" and not tolerated(tolerations, taint))

    def normalize_score(self, state: CycleState, pod: Obj, scores: dict[str, int]) -> None:
        default_normalize_score(scores, reverse=True)


# --- node affinity -----------------------------------------------------------------------

_LABEL_OPERATORS = {"In": Operator.IN, "NotIn": Operator.NOT_IN,
                    "Exists": Operator.EXISTS, "DoesNotExist": Operator.DOES_NOT_EXIST}


def _int_or_none(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def node_requirement_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """One ``matchExpressions`` entry of a node selector term. ``Gt``/``Lt`` need the label
    to hold an integer, as in Kubernetes; the others are label-selector operators."""
    operator, key, values = expr["operator"], expr["key"], expr.get("values") or ()
    if operator in ("Gt", "Lt"):
        have, bound = _int_or_none(labels.get(key)), _int_or_none(values[0] if values else None)
        if have is None or bound is None:
            return False
        return have > bound if operator == "Gt" else have < bound
    return Requirement(key, _LABEL_OPERATORS[operator], tuple(sorted(set(values)))).matches(labels)


def node_field_matches(expr: Mapping[str, Any], node: Obj) -> bool:
    """One ``matchFields`` entry; ``metadata.name`` is the only field Kubernetes supports."""
    name_in = node["metadata"]["name"] in (expr.get("values") or ())
    return name_in if expr["operator"] == "In" else not name_in


def node_selector_term_matches(term: Mapping[str, Any], node: Obj) -> bool:
    """A term's requirements are ANDed; a term with none matches no node (Kubernetes)."""
    expressions = term.get("matchExpressions") or ()
    fields = term.get("matchFields") or ()
    if not expressions and not fields:
        return False
    labels = node["metadata"].get("labels") or {}
    return (all(node_requirement_matches(e, labels) for e in expressions)
            and all(node_field_matches(f, node) for f in fields))


def required_node_affinity_matches(pod: Obj, node: Obj) -> bool:
    """``spec.nodeSelector`` and required node affinity (its terms ORed) both hold."""
    labels = node["metadata"].get("labels") or {}
    selector = pod["spec"].get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    required = ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True
    return any(node_selector_term_matches(t, node) for t in required.get("nodeSelectorTerms") or ())


class NodeAffinity:
    """Filter: ``nodeSelector`` and required node affinity. Score: the summed weights of the
    preferred terms a node matches, scaled so the best node gets MAX_SCORE."""

    name = "NodeAffinity"

    def pre_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        spec = pod["spec"]
        required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution")
        return SUCCESS if spec.get("nodeSelector") or required else Status.skip()

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        if required_node_affinity_matches(pod, node.node):
            return SUCCESS
        return Status.unresolvable("node(s) didn't match Pod's node affinity/selector")

    def pre_score(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        preferred = ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
            "preferredDuringSchedulingIgnoredDuringExecution")
        if not preferred:
            return Status.skip()
        state[self.name] = preferred
        return SUCCESS

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        return sum(int(p["weight"]) for p in state[self.name]
                   if node_selector_term_matches(p.get("preference") or {}, node.node))

    def normalize_score(self, state: CycleState, pod: Obj, scores: dict[str, int]) -> None:
        default_normalize_score(scores)


# --- resources -------------------------------------------------------------------------

_STRATEGIES = ("LeastAllocated", "MostAllocated")
_SCORED_RESOURCES = ("cpu", "memory")


@dataclass(frozen=True, slots=True)
class ResourceFitArgs:
    """``NodeResourcesFitArgs.scoringStrategy``: how to score, weighting which resources."""

    strategy: str = "LeastAllocated"
    weights: tuple[tuple[str, int], ...] = (("cpu", 1), ("memory", 1))

    @classmethod
    def parse(cls, args: Args) -> ResourceFitArgs:
        _check_fields(args, ("scoringStrategy",))
        strategy = args.get("scoringStrategy") or {}
        if not isinstance(strategy, Mapping):
            raise PluginArgsError(FieldError("scoringStrategy", f"must be a mapping, got {describe_value(strategy)}"))
        _check_fields(strategy, ("type", "resources"), "scoringStrategy.")
        kind = strategy.get("type", "LeastAllocated")
        if kind not in _STRATEGIES:
            raise PluginArgsError(FieldError(
                "scoringStrategy.type", f"must be one of {', '.join(_STRATEGIES)}, got {describe_value(kind)}"
                + did_you_mean(kind, _STRATEGIES)))
        resources = strategy.get("resources")
        if resources is None:
            return cls(kind)
        return cls(kind, cls._weights(resources))

    @staticmethod
    def _weights(resources: Any) -> tuple[tuple[str, int], ...]:
        if not isinstance(resources, list) or not resources:
            raise PluginArgsError(FieldError("scoringStrategy.resources", "must be a non-empty list"))
        errors: list[FieldError] = []
        weights: list[tuple[str, int]] = []
        for i, r in enumerate(resources):
            path = f"scoringStrategy.resources[{i}]"
            if not isinstance(r, Mapping) or r.get("name") not in _SCORED_RESOURCES:
                errors.append(FieldError(f"{path}.name", f"must be one of {', '.join(_SCORED_RESOURCES)}"))
                continue
            weight = r.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
                errors.append(FieldError(f"{path}.weight", f"must be an integer from 1 to 100, got "
                                                           f"{describe_value(weight)}"))
                continue
            weights.append((r["name"], weight))
        if errors:
            raise PluginArgsError(errors)
        return tuple(weights)


def _least_allocated(requested: int, allocatable: int) -> int:
    if allocatable == 0 or requested > allocatable:
        return 0
    return (allocatable - requested) * MAX_SCORE // allocatable


def _most_allocated(requested: int, allocatable: int) -> int:
    if allocatable == 0:
        return 0
    return min(requested, allocatable) * MAX_SCORE // allocatable


def _least_allocated_table(requested: Ints, allocatable: Ints) -> Ints:
    """``_least_allocated`` of each pair."""
    divisor = np.where(allocatable == 0, 1, allocatable)
    return np.where((allocatable == 0) | (requested > allocatable), 0,  # type: ignore[no-any-return]
                    (allocatable - requested) * MAX_SCORE // divisor)


def _most_allocated_table(requested: Ints, allocatable: Ints) -> Ints:
    """``_most_allocated`` of each pair."""
    divisor = np.where(allocatable == 0, 1, allocatable)
    return np.where(allocatable == 0, 0,  # type: ignore[no-any-return]
                    np.minimum(requested, allocatable) * MAX_SCORE // divisor)


def _scoring_columns(nz_pod: tuple[int, int], table: NodeTable,
                     rows: Ints) -> tuple[tuple[Ints, Ints], tuple[Ints, Ints]]:
    """``_scoring_requests`` of the nodes at ``rows``, as columns."""
    return ((table.non_zero_cpu[rows] + nz_pod[0], table.alloc_cpu[rows]),
            (table.non_zero_memory[rows] + nz_pod[1], table.alloc_memory[rows]))


def _scoring_requests(nz_pod: tuple[int, int], node: NodeInfo) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((cpu requested with the pod, allocatable), (memory …, …))`` for scoring, counting
    request-less containers at kube-scheduler's defaults (``nz_pod``: the pod's non-zero
    cpu and memory requests, from ``pod_resource_requests``)."""
    a_cpu, a_mem, _ = node.allocatable
    return (node.non_zero_cpu + nz_pod[0], a_cpu), (node.non_zero_memory + nz_pod[1], a_mem)


_RESOURCE_INDEX = {"cpu": 0, "memory": 1}  # positions in _scoring_requests' answer


class NodeResourcesFit:
    """Filter: requests against allocatable (cpu, memory, pod count). Score: the
    ``LeastAllocated`` (spread) or ``MostAllocated`` (bin-pack) strategy."""

    name = "NodeResourcesFit"
    _score_key = "NodeResourcesFit/score"

    def __init__(self, args: ResourceFitArgs | None = None) -> None:
        self.args = args or ResourceFitArgs()
        least = self.args.strategy == "LeastAllocated"
        self._per_resource = _least_allocated if least else _most_allocated
        self._per_resource_table = _least_allocated_table if least else _most_allocated_table
        self._weights = tuple((_RESOURCE_INDEX[r], w) for r, w in self.args.weights)
        self._weight_sum = sum(w for _, w in self.args.weights)

    @classmethod
    def from_args(cls, args: Args) -> NodeResourcesFit:
        return cls(ResourceFitArgs.parse(args))

    def pre_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        state[self.name] = pod_resource_requests(pod)
        return SUCCESS

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        cpu, mem, _, _ = state[self.name]
        a_cpu, a_mem, a_pods = node.allocatable
        reasons = []
        if len(node.pods) + 1 > a_pods:
            reasons.append("Too many pods")
        if cpu and node.requested_cpu + cpu > a_cpu:
            reasons.append("Insufficient cpu")
        if mem and node.requested_memory + mem > a_mem:
            reasons.append("Insufficient memory")
        return Status.unschedulable(*reasons) if reasons else SUCCESS

    def filter_table(self, state: CycleState, pod: Obj, table: NodeTable) -> Mask:
        cpu, mem, _, _ = state[self.name]
        passing: Mask = table.pod_count < table.alloc_pods
        if cpu:
            passing &= table.requested_cpu + cpu <= table.alloc_cpu
        if mem:
            passing &= table.requested_memory + mem <= table.alloc_memory
        return passing

    def pre_score(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        state[self._score_key] = pod_resource_requests(pod)[2:]
        return SUCCESS

    def score_table(self, state: CycleState, pod: Obj, table: NodeTable, rows: Ints) -> Ints:
        usage = _scoring_columns(state[self._score_key], table, rows)
        total = np.zeros(len(rows), np.int64)
        for i, weight in self._weights:
            total += weight * self._per_resource_table(*usage[i])
        return total // self._weight_sum

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        usage = _scoring_requests(state[self._score_key], node)
        total = 0
        for i, weight in self._weights:
            total += weight * self._per_resource(*usage[i])
        return total // self._weight_sum


class NodeResourcesBalancedAllocation:
    """Prefer nodes whose cpu and memory would be used in equal fractions: 100 × (1 − the
    standard deviation of the fractions), as kube-scheduler computes it (for two
    resources the standard deviation is half their difference, its own shortcut too)."""

    name = "NodeResourcesBalancedAllocation"

    def pre_score(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        state[self.name] = pod_resource_requests(pod)[2:]
        return SUCCESS

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        (cpu, a_cpu), (mem, a_mem) = _scoring_requests(state[self.name], node)
        f_cpu = min(1.0, cpu / a_cpu) if a_cpu else 1.0
        f_mem = min(1.0, mem / a_mem) if a_mem else 1.0
        return int((1 - abs(f_cpu - f_mem) / 2) * MAX_SCORE)

    def score_table(self, state: CycleState, pod: Obj, table: NodeTable, rows: Ints) -> Ints:
        # The same float64 operations as ``score``: the same integers (values below 2**53
        # convert to float exactly, and astype truncates toward zero as int() does).
        (cpu, a_cpu), (mem, a_mem) = _scoring_columns(state[self.name], table, rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            f_cpu = np.where(a_cpu == 0, 1.0, np.minimum(1.0, cpu / a_cpu))
            f_mem = np.where(a_mem == 0, 1.0, np.minimum(1.0, mem / a_mem))
        return ((1 - np.abs(f_cpu - f_mem) / 2) * MAX_SCORE).astype(np.int64)


# --- host ports --------------------------------------------------------------------------

HostPort = tuple[str, str, int]  # (hostIP, protocol, port)


def host_ports(pod: Obj) -> list[HostPort]:
    return [(p.get("hostIP") or "0.0.0.0", p.get("protocol", "TCP"), int(p["hostPort"]))
            for c in pod["spec"].get("containers") or () for p in c.get("ports") or () if p.get("hostPort")]


def ports_conflict(a: HostPort, b: HostPort) -> bool:
    """Same protocol and port, and the same IP or either on every IP (0.0.0.0)."""
    return a[1:] == b[1:] and (a[0] == b[0] or "0.0.0.0" in (a[0], b[0]))


class NodePorts:
    name = "NodePorts"

    def pre_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        wanted = host_ports(pod)
        if not wanted:
            return Status.skip()
        state[self.name] = wanted
        return SUCCESS

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        wanted = state[self.name]
        for other in node.pods:
            if any(ports_conflict(w, used) for used in host_ports(other) for w in wanted):
                return Status.unschedulable("node(s) didn't have free ports for the requested pod ports")
        return SUCCESS


# --- inter-pod affinity ----------------------------------------------------------------------

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
NOTHING = Selector((Requirement("", Operator.IN, ()),))  # no label key is "": matches no pod


@dataclass(frozen=True, slots=True)
class AffinityTerm:
    """A PodAffinityTerm made ready to match: which pods (selector), in which namespaces,
    grouped by which node label (topologyKey)."""

    selector: Selector
    namespaces: frozenset[str]
    namespace_selector: Selector | None
    topology_key: str
    weight: int = 0

    @classmethod
    def of(cls, term: Mapping[str, Any], owner_namespace: str, weight: int = 0) -> AffinityTerm:
        label_selector = term.get("labelSelector")
        # Kubernetes: a missing labelSelector matches no pod; an empty one matches all.
        selector = NOTHING if label_selector is None else selector_from_label_selector(label_selector)
        namespaces = frozenset(term.get("namespaces") or ())
        ns_selector = term.get("namespaceSelector")
        if not namespaces and ns_selector is None:
            namespaces = frozenset((owner_namespace,))
        return cls(selector, namespaces,
                   None if ns_selector is None else selector_from_label_selector(ns_selector),
                   term["topologyKey"], weight)

    def matches(self, pod: Obj) -> bool:
        md = pod["metadata"]
        namespace = md.get("namespace", "default")
        # Namespaces carry kubernetes.io/metadata.name, the one label a selector can use here.
        in_namespace = namespace in self.namespaces or (
            self.namespace_selector is not None
            and self.namespace_selector.matches({NAMESPACE_NAME_LABEL: namespace}))
        return in_namespace and self.selector.matches(md.get("labels") or {})


def _terms(pod: Obj, kind: str, when: str) -> list[AffinityTerm]:
    """The pod's ``kind`` (podAffinity / podAntiAffinity) terms, ``when`` required or preferred."""
    section = ((pod["spec"].get("affinity") or {}).get(kind) or {}).get(f"{when}DuringSchedulingIgnoredDuringExecution")
    namespace = pod["metadata"].get("namespace", "default")
    if when == "required":
        return [AffinityTerm.of(t, namespace) for t in section or ()]
    return [AffinityTerm.of(t["podAffinityTerm"], namespace, int(t["weight"])) for t in section or ()]


TopologyPair = tuple[str, str]
Counter_ = dict[TopologyPair, int]


@dataclass(slots=True)
class _AffinityState:
    affinity: list[AffinityTerm]
    anti_affinity: list[AffinityTerm]
    affinity_counts: Counter_
    anti_affinity_counts: Counter_
    existing_anti_affinity_counts: Counter_


class InterPodAffinity:
    """Required and preferred pod affinity and anti-affinity by topology key, including the
    symmetry kube-scheduler enforces: a pod may not land where an existing pod's required
    anti-affinity forbids it, and existing pods' preferences count in the score."""

    name = "InterPodAffinity"

    def __init__(self, hard_pod_affinity_weight: int = 1) -> None:
        self.hard_pod_affinity_weight = hard_pod_affinity_weight

    @classmethod
    def from_args(cls, args: Args) -> InterPodAffinity:
        _check_fields(args, ("hardPodAffinityWeight",))
        weight = args.get("hardPodAffinityWeight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise PluginArgsError(FieldError("hardPodAffinityWeight",
                                             f"must be an integer from 0 to 100, got {describe_value(weight)}"))
        return cls(weight)

    def pre_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        affinity = _terms(pod, "podAffinity", "required")
        anti = _terms(pod, "podAntiAffinity", "required")
        existing_anti: Counter_ = defaultdict(int)
        for info in state.nodes_with_affinity_pods:  # the cycle's nodes that can hold such pods
            for other in info.pods_with_required_anti_affinity:
                for term in _terms(other, "podAntiAffinity", "required"):
                    value = info.labels.get(term.topology_key)
                    if value is not None and term.matches(pod):
                        existing_anti[(term.topology_key, value)] += 1
        if not affinity and not anti and not existing_anti:
            return Status.skip()
        affinity_counts: Counter_ = defaultdict(int)
        anti_counts: Counter_ = defaultdict(int)
        if affinity or anti:
            for info in nodes:
                for other in info.pods:
                    if affinity and all(t.matches(other) for t in affinity):
                        _count_pairs(affinity_counts, affinity, info)
                    _count_pairs(anti_counts, [t for t in anti if t.matches(other)], info)
        state[self.name] = _AffinityState(affinity, anti, affinity_counts, anti_counts, existing_anti)
        return SUCCESS

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        s: _AffinityState = state[self.name]
        labels = node.labels
        # kube-scheduler's order: the pod's own affinity, its anti-affinity, then the
        # existing pods' anti-affinity (so replicas avoiding each other read "pod anti-affinity").
        if s.affinity and not self._affinity_satisfied(s, pod, labels):
            return Status.unresolvable("node(s) didn't match pod affinity rules")
        for term in s.anti_affinity:
            value = labels.get(term.topology_key)
            if value is not None and s.anti_affinity_counts.get((term.topology_key, value), 0) > 0:
                return Status.unschedulable("node(s) didn't match pod anti-affinity rules")
        if any(s.existing_anti_affinity_counts.get(pair, 0) > 0 for pair in labels.items()):
            return Status.unschedulable("node(s) didn't satisfy existing pods anti-affinity rules")
        return SUCCESS

    @staticmethod
    def _affinity_satisfied(s: _AffinityState, pod: Obj, labels: Mapping[str, str]) -> bool:
        if any(t.topology_key not in labels for t in s.affinity):
            return False
        if all(s.affinity_counts.get((t.topology_key, labels[t.topology_key]), 0) > 0 for t in s.affinity):
            return True
        # The first pod of a group with affinity to itself: nothing to be near yet.
        return not s.affinity_counts and all(t.matches(pod) for t in s.affinity)

    def pre_score(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        preferred = _terms(pod, "podAffinity", "preferred")
        preferred_anti = _terms(pod, "podAntiAffinity", "preferred")
        scores: Counter_ = defaultdict(int)
        if preferred or preferred_anti:
            for info in state.nodes:
                for other in info.pods:
                    self._score_pair(scores, pod, preferred, preferred_anti, other, info)
        else:  # only existing pods' own affinity can count
            for info in state.nodes_with_affinity_pods:
                for other in info.pods_with_affinity:
                    self._score_pair(scores, pod, preferred, preferred_anti, other, info)
        if not scores:
            return Status.skip()
        state[self.name + "/score"] = scores
        return SUCCESS

    def _score_pair(self, scores: Counter_, pod: Obj, preferred: list[AffinityTerm],
                    preferred_anti: list[AffinityTerm], other: Obj, info: NodeInfo) -> None:
        """What one existing pod on ``info`` adds to its topology domains' scores."""
        for term in preferred:
            if term.matches(other):
                _add_weight(scores, term, info, term.weight)
        for term in preferred_anti:
            if term.matches(other):
                _add_weight(scores, term, info, -term.weight)
        for term in _terms(other, "podAffinity", "required"):
            if self.hard_pod_affinity_weight and term.matches(pod):
                _add_weight(scores, term, info, self.hard_pod_affinity_weight)
        for term in _terms(other, "podAffinity", "preferred"):
            if term.matches(pod):
                _add_weight(scores, term, info, term.weight)
        for term in _terms(other, "podAntiAffinity", "preferred"):
            if term.matches(pod):
                _add_weight(scores, term, info, -term.weight)

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        scores: Counter_ = state[self.name + "/score"]
        return sum(scores.get(pair, 0) for pair in node.labels.items())

    def normalize_score(self, state: CycleState, pod: Obj, scores: dict[str, int]) -> None:
        low, high = min(scores.values(), default=0), max(scores.values(), default=0)
        for name, score in scores.items():
            scores[name] = int(MAX_SCORE * (score - low) / (high - low)) if high > low else 0


def _count_pairs(counts: Counter_, terms: Iterable[AffinityTerm], info: NodeInfo) -> None:
    for term in terms:
        value = info.labels.get(term.topology_key)
        if value is not None:
            counts[(term.topology_key, value)] += 1


def _add_weight(scores: Counter_, term: AffinityTerm, info: NodeInfo, weight: int) -> None:
    value = info.labels.get(term.topology_key)
    if value is not None:
        scores[(term.topology_key, value)] += weight


# --- pod topology spread -------------------------------------------------------------------

MISSING_LABEL = "node(s) didn't match pod topology spread constraints (missing required label)"
SKEW_EXCEEDED = "node(s) didn't match pod topology spread constraints"


@dataclass(frozen=True, slots=True)
class SpreadConstraint:
    max_skew: int
    topology_key: str
    selector: Selector
    min_domains: int | None

    @classmethod
    def of(cls, c: Mapping[str, Any]) -> SpreadConstraint:
        ls = c.get("labelSelector")
        return cls(int(c["maxSkew"]), c["topologyKey"],
                   NOTHING if ls is None else selector_from_label_selector(ls), c.get("minDomains"))


def _constraints(pod: Obj, when: str) -> list[SpreadConstraint]:
    return [SpreadConstraint.of(c) for c in pod["spec"].get("topologySpreadConstraints") or ()
            if c.get("whenUnsatisfiable") == when]


def _matching_pods(info: NodeInfo, c: SpreadConstraint, namespace: str) -> int:
    return sum(1 for p in info.pods
               if p["metadata"].get("namespace") == namespace and not p["metadata"].get("deletionTimestamp")
               and c.selector.matches(p["metadata"].get("labels") or {}))


def _spread_counts(pod: Obj, constraints: list[SpreadConstraint], nodes: Iterable[NodeInfo]) -> Counter_:
    """Matching pods per topology domain, over the nodes that count as domains: those with
    every constraint's key that the pod's node affinity admits (nodeAffinityPolicy Honor)."""
    counts: Counter_ = {}
    namespace = pod["metadata"].get("namespace", "default")
    for info in nodes:
        if not all(c.topology_key in info.labels for c in constraints):
            continue
        if not required_node_affinity_matches(pod, info.node):
            continue
        for c in constraints:
            pair = (c.topology_key, info.labels[c.topology_key])
            counts[pair] = counts.get(pair, 0) + _matching_pods(info, c, namespace)
    return counts


@dataclass(slots=True)
class _SpreadFilterState:
    constraints: list[SpreadConstraint]
    counts: Counter_
    self_match: list[bool]
    min_counts: list[int]


class PodTopologySpread:
    """``topologySpreadConstraints``: ``DoNotSchedule`` ones filter (a node is refused when
    placing the pod there would make its domain exceed ``maxSkew`` over the emptiest domain;
    ``minDomains`` counts missing domains as empty), ``ScheduleAnyway`` ones score (fewer
    matching pods in the node's domains, higher score)."""

    name = "PodTopologySpread"

    def pre_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        constraints = _constraints(pod, "DoNotSchedule")
        if not constraints:
            return Status.skip()
        counts = _spread_counts(pod, constraints, nodes)
        labels = pod["metadata"].get("labels") or {}
        min_counts = []
        for c in constraints:
            domains = [n for (key, _), n in counts.items() if key == c.topology_key]
            lowest = min(domains, default=0)
            if c.min_domains is not None and len(domains) < c.min_domains:
                lowest = 0  # fewer domains than asked for: the missing ones count as empty
            min_counts.append(lowest)
        state[self.name] = _SpreadFilterState(
            constraints, counts, [c.selector.matches(labels) for c in constraints], min_counts)
        return SUCCESS

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        s: _SpreadFilterState = state[self.name]
        for c, self_match, lowest in zip(s.constraints, s.self_match, s.min_counts, strict=True):
            value = node.labels.get(c.topology_key)
            if value is None:
                return Status.unresolvable(MISSING_LABEL)
            skew = s.counts.get((c.topology_key, value), 0) + int(self_match) - lowest
            if skew > c.max_skew:
                return Status.unschedulable(SKEW_EXCEEDED)
        return SUCCESS

    def pre_score(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        constraints = _constraints(pod, "ScheduleAnyway")
        if not constraints:
            return Status.skip()
        counts = _spread_counts(pod, constraints, state.nodes)
        # kube-scheduler weighs each constraint by log(domains + 2), so a constraint over
        # many domains (hostname) does not drown one over few (zone).
        weights = [math.log(sum(1 for key, _ in counts if key == c.topology_key) + 2) for c in constraints]
        state[self.name + "/score"] = (constraints, counts, weights)
        return SUCCESS

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        constraints, counts, weights = state[self.name + "/score"]
        if not all(c.topology_key in node.labels for c in constraints):
            return -1  # ignored node: scores lowest after normalizing
        total = 0.0
        for c, weight in zip(constraints, weights, strict=True):
            total += counts.get((c.topology_key, node.labels[c.topology_key]), 0) * weight + (c.max_skew - 1)
        return round(total)

    def normalize_score(self, state: CycleState, pod: Obj, scores: dict[str, int]) -> None:
        counted = [s for s in scores.values() if s >= 0]
        low, high = min(counted, default=0), max(counted, default=0)
        for name, score in scores.items():
            if score < 0:
                scores[name] = 0
            elif high == 0:
                scores[name] = MAX_SCORE
            else:
                scores[name] = MAX_SCORE * (high + low - score) // high


# --- spreading a controller's pods ----------------------------------------------------------


def controller_uid(pod: Obj) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


class SelectorSpread:
    """Spread the pods of one owner (a Deployment) over the nodes: fewer siblings, higher score."""

    name = "SelectorSpread"

    def pre_score(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status:
        owner = controller_uid(pod)
        if owner is None:
            return Status.skip()
        state[self.name] = owner
        return SUCCESS

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        owner = state[self.name]
        siblings = sum(1 for p in node.pods if controller_uid(p) == owner)
        return max(0, MAX_SCORE - 10 * siblings)


# --- preemption ------------------------------------------------------------------------------


def priority(pod: Obj) -> int:
    return int(pod["spec"].get("priority") or 0)


def _more_important_first(pod: Obj) -> tuple[int, str]:
    """kube-scheduler's MoreImportantPod: higher priority first, then the one started earlier."""
    started = pod.get("status", {}).get("startTime") or pod["metadata"].get("creationTimestamp") or ""
    return -priority(pod), str(started)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node where the preemptor fits once ``victims`` are gone."""

    node: str
    victims: tuple[Obj, ...]

    def rank(self) -> tuple[int, int, int]:
        """kube-scheduler's pickOneNodeForPreemption, lowest first: the lowest highest victim
        priority, then the lowest sum of priorities (each offset by 2^31 so that negative
        priorities still count as disruption), then the fewest victims."""
        prios = [priority(v) for v in self.victims]
        return (max(prios, default=-(2 ** 31)), sum(p + 2 ** 31 for p in prios), len(prios))


def pick_candidate(candidates: Sequence[Candidate]) -> Candidate | None:
    """The candidate that disturbs least; the first of equals (nodes are in a stable order)."""
    return min(candidates, key=Candidate.rank, default=None)


class DefaultPreemption:
    """kube-scheduler's DefaultPreemption PostFilter: when a pod fits nowhere, find the node
    where evicting the fewest, least important lower-priority pods makes it fit.

    On each node a filter did not rule out for good (``Unschedulable``, not
    ``UnschedulableAndUnresolvable``), every pod of lower priority is taken away; if the
    preemptor then fits, the victims are added back one by one, most important first,
    keeping back each that still leaves room (the reprieve). The surviving candidates
    are ranked by ``Candidate.rank``. The scheduling loop then nominates the node
    (``status.nominatedNodeName``), deletes the victims gracefully and retries the pod
    once they are gone.
    """

    name = "DefaultPreemption"
    #: kube-scheduler looks at no more candidate nodes than this (minCandidateNodesAbsolute).
    max_candidates = 100

    def post_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo],
                    statuses: Mapping[str, Status]) -> PostFilterResult:
        not_eligible = self._not_eligible(pod, nodes)
        if not_eligible:
            return PostFilterResult(Status.unschedulable(f"preemption: not eligible due to {not_eligible}."))
        framework = state.framework
        if framework is None:
            return PostFilterResult(Status.error("preemption needs the framework in the cycle state"))
        candidates: list[Candidate] = []
        reasons: Counter[str] = Counter()
        for info in nodes:
            st = statuses.get(info.name)
            if st is not None and st.code is Code.UNSCHEDULABLE_AND_UNRESOLVABLE:
                reasons["Preemption is not helpful for scheduling"] += 1
                continue
            victims = self._victims(framework, pod, info, nodes)
            if victims is None:
                reasons["No preemption victims found for incoming pod"] += 1
                continue
            candidates.append(Candidate(info.name, victims))
            if len(candidates) >= self.max_candidates:
                break
        best = pick_candidate(candidates)
        if best is None:
            parts = ", ".join(sorted(f"{n} {r}" for r, n in reasons.items()))
            return PostFilterResult(Status.unschedulable(f"preemption: 0/{len(nodes)} nodes are available: {parts}."))
        return PostFilterResult(SUCCESS, best.node, best.victims)

    @staticmethod
    def _not_eligible(pod: Obj, nodes: Sequence[NodeInfo]) -> str:
        """Why ``pod`` may not preempt now (kube-scheduler's PodEligibleToPreemptOthers), or ""."""
        if pod["spec"].get("preemptionPolicy") == "Never":
            return "preemptionPolicy=Never"
        nominated = pod.get("status", {}).get("nominatedNodeName")
        if nominated:
            # Victims it chose earlier are still terminating there: wait for them rather
            # than evict more.
            for info in nodes:
                if info.name == nominated and any(
                        p["metadata"].get("deletionTimestamp") and priority(p) < priority(pod) for p in info.pods):
                    return "a terminating pod on the nominated node"
        return ""

    @staticmethod
    def _victims(framework: Any, pod: Obj, info: NodeInfo, nodes: Sequence[NodeInfo]) -> tuple[Obj, ...] | None:
        """The fewest pods of ``info`` to evict for ``pod`` to fit there, None when none will do."""
        lower = [p for p in info.pods if priority(p) < priority(pod) and not p["metadata"].get("deletionTimestamp")]
        if not lower:
            return None
        uids = {p["metadata"]["uid"] for p in lower}

        def fits_without(gone: set[str]) -> bool:
            trial = info.without(gone)
            return bool(framework.fits(pod, trial, [trial if n.name == info.name else n for n in nodes]).ok)

        if not fits_without(uids):
            return None
        victims: list[Obj] = []
        for p in sorted(lower, key=_more_important_first):
            uid = p["metadata"]["uid"]
            if fits_without(uids - {uid}):
                uids.discard(uid)  # reprieved: it stays
            else:
                victims.append(p)
        return tuple(victims) if victims else None


# --- binding ----------------------------------------------------------------------------------


class DefaultBinder:
    """Binds through the scheduler: a write of ``spec.nodeName`` guarded by the pod's revision."""

    name = "DefaultBinder"

    async def bind(self, state: CycleState, pod: Obj, node_name: str, handle: Handle) -> Status:
        try:
            await handle.bind_pod(pod, node_name)
        except (ConflictError, NotFoundError) as e:
            return Status.error(f"binding rejected: {e}")
        return SUCCESS


_BUILT_IN: tuple[type, ...] = (
    NodeReady, NodeUnschedulable, NodeName, TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit,
    NodeResourcesBalancedAllocation, InterPodAffinity, PodTopologySpread, SelectorSpread, DefaultPreemption,
    DefaultBinder,
)

#: Plugin name → factory taking the plugin's ``args`` from the config file ({} when none).
REGISTRY: dict[str, Callable[[Args], Any]] = {
    cls.name: getattr(cls, "from_args", None) or no_args(cls) for cls in _BUILT_IN  # type: ignore[attr-defined]
}
