"""The scheduling framework: extension points as small Protocols, as in kube-scheduler.

One scheduling cycle for one pod, in one profile (a ``Framework``):

    PreFilter ─▶ Filter (every node) ─▶ PostFilter (only when no node fits)
              ─▶ PreScore ─▶ Score (+ NormalizeScore) ─▶ Reserve ─▶ Bind

A plugin is a small class with a ``name`` and one method per extension point it
implements; a profile lists which plugins run at which point (see
``scheduler.config``). PreFilter and PreScore run once per pod and write what the
later points need into the ``CycleState``; a PreFilter or PreScore that returns
``Status.skip()`` says "nothing to check for this pod", and its Filter or Score is
not called at all in this cycle (kube-scheduler's Skip code; it keeps cheap the
pods that use no affinity, taints or spread).

"Does not fit" is a ``Status`` with a reason, never an exception; the reasons of
every node are summed up, in kube-scheduler's words and order, in the message a
Pending pod carries:

    0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}.

``Framework.schedule`` is a pure function of the pod and the NodeInfos, so the
whole decision is unit-tested without I/O. Reserve, Unreserve and Bind are run by
the scheduling loop (``scheduler.scheduling``) after a decision; Bind plugins reach
the cluster through the ``Handle`` the loop passes them.

**Metrics.** A profile given a ``MetricsRecorder`` (scheduler/metrics.py) reports how
long each extension point took, once per cycle (kube-scheduler's
``framework_extension_point_duration_seconds``; unlike kube-scheduler, Filter is
timed too, as the one pass over the nodes it is here). How long each *plugin* took
(``plugin_execution_duration_seconds``) is measured only in the cycles the recorder
samples, as kube-scheduler does (10 % of them), and in those only on the first
``TIMED_NODES_PER_CYCLE`` nodes at the per-node points (Filter, Score): kube-scheduler
times every node of a sampled cycle and records asynchronously; here the
observation runs inline, and a cycle visits hundreds of nodes (timing them all made
a sampled cycle ~40 % slower). An unsampled cycle runs the very same loops as
without a recorder, plus a handful of clock reads.
"""

from __future__ import annotations

import enum
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from apimachinery.meta import Obj
from apimachinery.quantity import parse_cpu, parse_memory
from apimachinery.validation import container_requests

if TYPE_CHECKING:
    from scheduler.nodetable import NodeTable

MAX_SCORE = 100

# kube-scheduler scores a container without a request as if it asked for this much
# (pkg/scheduler/util.DefaultMilliCPURequest and DefaultMemoryRequest), so that a
# node full of request-less pods does not look empty to the scoring plugins.
DEFAULT_MILLI_CPU_REQUEST = 100
DEFAULT_MEMORY_REQUEST = 200 * 1024 * 1024


class Code(enum.Enum):
    SUCCESS = "Success"
    # Does not fit; evicting pods (preemption) might make room.
    UNSCHEDULABLE = "Unschedulable"
    # Does not fit, and no preemption can change that (a taint, a node name, a label).
    UNSCHEDULABLE_AND_UNRESOLVABLE = "UnschedulableAndUnresolvable"
    # A PreFilter or PreScore with nothing to do for this pod: its Filter or Score is skipped.
    SKIP = "Skip"
    ERROR = "Error"


@dataclass(frozen=True, slots=True)
class Status:
    code: Code = Code.SUCCESS
    reasons: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code is Code.SUCCESS

    @classmethod
    def unschedulable(cls, *reasons: str) -> Status:
        return cls(Code.UNSCHEDULABLE, reasons)

    @classmethod
    def unresolvable(cls, *reasons: str) -> Status:
        return cls(Code.UNSCHEDULABLE_AND_UNRESOLVABLE, reasons)

    @classmethod
    def skip(cls) -> Status:
        return cls(Code.SKIP)

    @classmethod
    def error(cls, reason: str) -> Status:
        return cls(Code.ERROR, (reason,))


SUCCESS = Status()


class CycleState(dict[str, Any]):
    """What PreFilter and PreScore compute once per pod, keyed by plugin name, for the
    Filter and Score calls that follow (one per node).

    ``nodes`` is every node of the cycle, feasible or not: what scores that count pods
    cluster-wide (InterPodAffinity, PodTopologySpread) read, as kube-scheduler's plugins
    read its snapshot.
    """

    def __init__(self, nodes: Sequence[NodeInfo] = (), framework: Framework | None = None,
                 nodes_with_affinity_pods: Sequence[NodeInfo] | None = None) -> None:
        super().__init__()
        self.nodes = nodes
        # This cycle is one the metrics recorder samples: its plugins are timed one by one.
        self.record_plugin_metrics = False
        # The profile running this cycle: what a PostFilter (preemption) re-runs the
        # filters with, as kube-scheduler's plugins reach them through their Handle.
        self.framework = framework
        self._with_affinity = nodes_with_affinity_pods
        # The NodeTable over ``nodes`` when the caller has one (Framework.schedule), and the
        # rows of the feasible nodes when the filters found them all in it.
        self.table: NodeTable | None = None
        self.feasible_rows: Any = None

    @property
    def nodes_with_affinity_pods(self) -> Sequence[NodeInfo]:
        """The nodes holding a pod with inter-pod (anti-)affinity (kube-scheduler's snapshot
        keeps this list too): all that InterPodAffinity must visit for a pod with no
        affinity of its own. The scheduling loop keeps it; otherwise it is found here."""
        if self._with_affinity is None:
            self._with_affinity = [n for n in self.nodes if n.pods_with_affinity]
        return self._with_affinity


def pod_resource_requests(pod: Obj) -> tuple[int, int, int, int]:
    """``(cpu, memory, non-zero cpu, non-zero memory)`` a pod asks of its node; the non-zero
    pair counts a container without a request at kube-scheduler's defaults, for scoring."""
    cpu = memory = nz_cpu = nz_memory = 0
    for container in pod["spec"].get("containers") or []:
        c, m = container_requests(container)
        cpu += c
        memory += m
        nz_cpu += c or DEFAULT_MILLI_CPU_REQUEST
        nz_memory += m or DEFAULT_MEMORY_REQUEST
    return cpu, memory, nz_cpu, nz_memory


def node_ready(node: Obj) -> bool:
    """The node's Ready condition is True."""
    for c in node.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def has_pod_affinity(pod: Obj) -> bool:
    affinity = pod["spec"].get("affinity") or {}
    return bool(affinity.get("podAffinity") or affinity.get("podAntiAffinity"))


def has_required_anti_affinity(pod: Obj) -> bool:
    anti = (pod["spec"].get("affinity") or {}).get("podAntiAffinity") or {}
    return bool(anti.get("requiredDuringSchedulingIgnoredDuringExecution"))


@dataclass(slots=True)
class NodeInfo:
    """A node and the pods the scheduler counts on it (bound or assumed), with the sums
    the plugins read for every node, kept as pods are added rather than recomputed."""

    node: Obj
    pods: list[Obj] = field(default_factory=list)
    requested_cpu: int = 0
    requested_memory: int = 0
    non_zero_cpu: int = 0
    non_zero_memory: int = 0
    # Pods with inter-pod (anti-)affinity: the few InterPodAffinity must look at.
    pods_with_affinity: list[Obj] = field(default_factory=list)
    pods_with_required_anti_affinity: list[Obj] = field(default_factory=list)
    # Read once from the node: every Filter and Score of every pod in a pass reads them
    # (a cycle calls the filters for hundreds of nodes; a dict walk each time adds up).
    name: str = field(init=False)
    ready: bool = field(init=False)
    taints: tuple[Obj, ...] = field(init=False)
    unschedulable: bool = field(init=False)  # cordoned: spec.unschedulable
    # ``(cpu millicores, memory bytes, pods)`` the node offers.
    allocatable: tuple[int, int, int] = field(init=False)
    # The pass's NodeTable holding this node's numbers as row ``row`` (scheduler/nodetable.py),
    # kept current by ``add_pod``; None for a copy (``without``), which no table holds.
    table: NodeTable | None = field(default=None, init=False, repr=False, compare=False)
    row: int = field(default=-1, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.name = str(self.node["metadata"]["name"])
        status = self.node.get("status", {})
        self.ready = node_ready(self.node)
        spec = self.node.get("spec", {})
        self.taints = tuple(spec.get("taints") or ())
        self.unschedulable = bool(spec.get("unschedulable"))
        alloc = status.get("allocatable", {})
        self.allocatable = (
            parse_cpu(alloc.get("cpu", "0")),
            parse_memory(alloc.get("memory", "0")),
            int(alloc.get("pods", 110)),
        )

    @property
    def labels(self) -> Mapping[str, str]:
        return self.node["metadata"].get("labels") or {}

    def without(self, uids: set[str], extra: Sequence[Obj] = ()) -> NodeInfo:
        """A copy of this node with the pods of ``uids`` taken away and ``extra`` added:
        what preemption and nominated pods make of a node."""
        info = NodeInfo(self.node)
        for pod in self.pods:
            if pod["metadata"].get("uid") not in uids:
                info.add_pod(pod)
        for pod in extra:
            info.add_pod(pod)
        return info

    def add_pod(self, pod: Obj) -> None:
        cpu, mem, nz_cpu, nz_mem = pod_resource_requests(pod)
        self.pods.append(pod)
        self.requested_cpu += cpu
        self.requested_memory += mem
        self.non_zero_cpu += nz_cpu
        self.non_zero_memory += nz_mem
        if has_pod_affinity(pod):
            self.pods_with_affinity.append(pod)
        if has_required_anti_affinity(pod):
            self.pods_with_required_anti_affinity.append(pod)
        if self.table is not None:
            self.table.pod_added(self)


# --- the extension points -----------------------------------------------------------


@runtime_checkable
class PreFilterPlugin(Protocol):
    name: str

    def pre_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status: ...


@runtime_checkable
class FilterPlugin(Protocol):
    name: str

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status: ...


@dataclass(frozen=True, slots=True)
class PostFilterResult:
    """What a PostFilter (preemption) proposes: a node the pod could use once ``victims`` are gone."""

    status: Status
    nominated_node: str | None = None
    victims: tuple[Obj, ...] = ()


@runtime_checkable
class PostFilterPlugin(Protocol):
    name: str

    def post_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo],
                    statuses: Mapping[str, Status]) -> PostFilterResult: ...


@runtime_checkable
class PreScorePlugin(Protocol):
    name: str

    def pre_score(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> Status: ...


@runtime_checkable
class ScorePlugin(Protocol):
    name: str

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        """0 (worst) to MAX_SCORE (best), or any integer when the plugin normalizes."""
        ...


@runtime_checkable
class NormalizeScorePlugin(Protocol):
    """kube-scheduler's ScoreExtensions: rescale every node's raw score into 0..MAX_SCORE,
    for scores only meaningful relative to each other (counts, weights)."""

    def normalize_score(self, state: CycleState, pod: Obj, scores: dict[str, int]) -> None: ...


@runtime_checkable
class ReservePlugin(Protocol):
    name: str

    def reserve(self, state: CycleState, pod: Obj, node_name: str) -> Status: ...

    def unreserve(self, state: CycleState, pod: Obj, node_name: str) -> None: ...


class Handle(Protocol):
    """What Bind plugins may use of the scheduler around them (kube-scheduler's
    framework.Handle). Passed per call rather than at construction, so that profiles are
    plain values built from the config file before the scheduler connects to anything."""

    async def bind_pod(self, pod: Obj, node_name: str) -> Obj:
        """Write the binding, guarded by the pod's resourceVersion; raises ConflictError
        or NotFoundError when the pod changed or went meanwhile."""
        ...


@runtime_checkable
class BindPlugin(Protocol):
    name: str

    async def bind(self, state: CycleState, pod: Obj, node_name: str, handle: Handle) -> Status:
        """Bind, or ``Status.skip()`` to leave the pod to the next Bind plugin."""
        ...


#: The extension points, by the names the config file uses, and the Protocol a plugin
#: enabled there must implement.
EXTENSION_POINTS: Mapping[str, type] = {
    "preFilter": PreFilterPlugin,
    "filter": FilterPlugin,
    "postFilter": PostFilterPlugin,
    "preScore": PreScorePlugin,
    "score": ScorePlugin,
    "reserve": ReservePlugin,
    "bind": BindPlugin,
}


def default_normalize_score(scores: dict[str, int], *, reverse: bool = False) -> None:
    """kube-scheduler's DefaultNormalizeScore: scale so the highest becomes MAX_SCORE
    (``reverse``: so the highest becomes 0, for counts of bad things)."""
    highest = max(scores.values(), default=0)
    if highest == 0:
        if reverse:
            for name in scores:
                scores[name] = MAX_SCORE
        return
    for name, score in scores.items():
        scaled = MAX_SCORE * score // highest
        scores[name] = MAX_SCORE - scaled if reverse else scaled


def default_normalize_table(scores: Any, *, reverse: bool = False) -> Any:
    """``default_normalize_score`` over an int64 array of scores: the normalized array."""
    highest = int(scores.max()) if len(scores) else 0
    if highest == 0:
        return np.full_like(scores, MAX_SCORE) if reverse else scores
    scaled = MAX_SCORE * scores // highest
    return MAX_SCORE - scaled if reverse else scaled


# --- metrics ----------------------------------------------------------------------

#: At the per-node extension points of a sampled cycle, each plugin is timed on this many
#: nodes (the first ones the cycle visits, which rotate from cycle to cycle).
TIMED_NODES_PER_CYCLE = 16


class MetricsRecorder(Protocol):
    """Where a profile's cycles report durations (scheduler.metrics.ProfileRecorder).
    ``status`` is a ``Code`` value: kube-scheduler's status label."""

    def sample_plugins(self) -> bool:
        """Whether the cycle starting now times its plugins one by one."""
        ...

    def observe_extension_point(self, point: str, status: str, seconds: float) -> None: ...

    def observe_plugin(self, plugin: str, point: str, status: str, seconds: float) -> None: ...


class _TimedFilter:
    """A Filter plugin whose every call is timed: what a sampled cycle runs on its first nodes."""

    __slots__ = ("plugin", "name", "recorder")

    def __init__(self, plugin: FilterPlugin, recorder: MetricsRecorder) -> None:
        self.plugin, self.name, self.recorder = plugin, plugin.name, recorder

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status:
        start = time.perf_counter()
        st = self.plugin.filter(state, pod, node)
        self.recorder.observe_plugin(self.name, "Filter", st.code.value, time.perf_counter() - start)
        return st


class _TimedScore:
    """The same for a Score plugin."""

    __slots__ = ("plugin", "name", "recorder")

    def __init__(self, plugin: ScorePlugin, recorder: MetricsRecorder) -> None:
        self.plugin, self.name, self.recorder = plugin, plugin.name, recorder

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        start = time.perf_counter()
        score = self.plugin.score(state, pod, node)
        self.recorder.observe_plugin(self.name, "Score", Code.SUCCESS.value, time.perf_counter() - start)
        return score


R = TypeVar("R")


# --- one scheduling cycle ----------------------------------------------------------------


class Scores(Mapping[str, int]):
    """Each scored node's weighted total, read as a dict: made one only when read, since
    the scheduling loop reads none (a cycle at 5,000 nodes scores 500)."""

    __slots__ = ("_nodes", "_totals", "_dict")

    def __init__(self, nodes: Sequence[NodeInfo], totals: Any) -> None:
        self._nodes, self._totals = nodes, totals
        self._dict: dict[str, int] | None = None

    def _scores(self) -> dict[str, int]:
        if self._dict is None:
            self._dict = dict(zip((n.name for n in self._nodes), self._totals.tolist(), strict=True))
        return self._dict

    def __getitem__(self, name: str) -> int:
        return self._scores()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scores())

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return repr(self._scores())


@dataclass(frozen=True, slots=True)
class Decision:
    node: str | None
    message: str
    scores: Mapping[str, int] = field(default_factory=dict)
    state: CycleState = field(default_factory=CycleState)
    # Set when no node fits and a PostFilter (preemption) found room by evicting ``victims``.
    nominated_node: str | None = None
    victims: tuple[Obj, ...] = ()
    error: bool = False


#: kube-scheduler's bounds on how many feasible nodes a cycle looks for (schedule_one.go).
MIN_FEASIBLE_NODES_TO_FIND = 100
MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND = 5
BASE_PERCENTAGE_OF_NODES_TO_SCORE = 50


def num_feasible_nodes_to_find(num_nodes: int, percentage: int = 0) -> int:
    """How many feasible nodes a cycle looks for before it stops filtering, as kube-scheduler's
    ``percentageOfNodesToScore``: every node of a small cluster (under 100); otherwise
    ``percentage`` % of them, where 0 means adaptive (50 % less 1 % per 125 nodes, at least
    5 %), and never fewer than 100. 5,000 nodes: 500."""
    if num_nodes < MIN_FEASIBLE_NODES_TO_FIND:
        return num_nodes
    if percentage <= 0:
        percentage = max(BASE_PERCENTAGE_OF_NODES_TO_SCORE - num_nodes // 125, MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND)
    return max(num_nodes * percentage // 100, MIN_FEASIBLE_NODES_TO_FIND)


@dataclass(slots=True)
class Framework:
    """One scheduling profile: the plugins at each extension point, in order, and the
    weight of each Score plugin.

    A cycle stops filtering once it has ``num_feasible_nodes_to_find`` feasible nodes and
    scores only those; the next cycle starts where this one stopped, so every node gets
    its turn (kube-scheduler's ``nextStartNodeIndex``). A pod that fits nowhere is still
    filtered against every node, so its message counts them all.
    """

    scheduler_name: str = "default-scheduler"
    pre_filters: list[PreFilterPlugin] = field(default_factory=list)
    filters: list[FilterPlugin] = field(default_factory=list)
    post_filters: list[PostFilterPlugin] = field(default_factory=list)
    pre_scores: list[PreScorePlugin] = field(default_factory=list)
    scores: list[tuple[ScorePlugin, int]] = field(default_factory=list)
    reserves: list[ReservePlugin] = field(default_factory=list)
    binds: list[BindPlugin] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)
    percentage_of_nodes_to_score: int = 0  # 0: adaptive, as kube-scheduler's default
    next_start_node_index: int = 0
    # Set by the scheduling loop when the scheduler exports metrics; None: nothing is timed.
    recorder: MetricsRecorder | None = None

    def schedule(self, pod: Obj, nodes: Sequence[NodeInfo],
                 nodes_with_affinity_pods: Sequence[NodeInfo] | None = None,
                 table: NodeTable | None = None) -> Decision:
        """Choose a node for ``pod``, or say in kube-scheduler's words why none fits.
        ``nodes_with_affinity_pods``: see ``CycleState`` (found from ``nodes`` when None).
        ``table``: the NodeTable whose ``infos`` are ``nodes``, for the plugins' vectorised
        forms (scheduler/nodetable.py); None: every plugin is called per node."""
        state = CycleState(nodes, self, nodes_with_affinity_pods)
        state.table = table
        if self.recorder is not None:
            state.record_plugin_metrics = self.recorder.sample_plugins()
        start = time.perf_counter()
        skipped, st = self._pre_filter(state, pod, nodes)
        start = self._lap("PreFilter", st.code, start)
        if not st.ok:
            return self._no_fit(state, pod, nodes, {n.name: st for n in nodes},
                                f"0/{len(nodes)} nodes are available: {', '.join(st.reasons)}.")
        feasible, statuses = self._filter(state, pod, nodes, skipped)
        self._lap("Filter", Code.SUCCESS if feasible else Code.UNSCHEDULABLE, start)
        if not feasible:
            return self._no_fit(state, pod, nodes, statuses, unschedulable_message(len(nodes), statuses))
        if len(feasible) == 1:
            # As kube-scheduler: with one candidate there is nothing to score.
            only = feasible[0].name
            return Decision(only, f"bound to {only}", state=state)
        totals = self._score(state, pod, feasible)
        if isinstance(totals, Status):
            return Decision(None, totals.reasons[0], state=state, error=True)
        # Break ties at random so equal nodes share the load, as kube-scheduler does (its
        # reservoir sampling over the scored nodes: a uniform pick among the best).
        tied = np.flatnonzero(totals == totals.max())
        winner = feasible[int(tied[self.rng.randrange(len(tied))])].name
        return Decision(winner, f"bound to {winner}", Scores(feasible, totals), state)

    def fits(self, pod: Obj, node: NodeInfo, nodes: Sequence[NodeInfo]) -> Status:
        """Would ``pod`` pass every PreFilter and Filter on ``node``, the cluster being ``nodes``
        (which holds ``node``)? What preemption asks of a node with some pods taken away."""
        state = CycleState(nodes, self)
        skipped, st = self._pre_filter(state, pod, nodes)
        if not st.ok:
            return st
        for f in self.filters:
            if f.name in skipped:
                continue
            st = f.filter(state, pod, node)
            if not st.ok:
                return st
        return SUCCESS

    def _lap(self, point: str, code: Code, since: float) -> float:
        """Report that ``point`` ran from ``since`` until now with ``code``; returns now."""
        now = time.perf_counter()
        if self.recorder is not None:
            self.recorder.observe_extension_point(point, code.value, now - since)
        return now

    def _call(self, state: CycleState, plugin: str, point: str, method: Callable[..., R], *args: Any) -> R:
        """``method(*args)``, timed as ``plugin`` at ``point`` when the cycle is sampled: for
        the points that run once per cycle (the per-node ones use ``_TimedFilter``/``_TimedScore``)."""
        if not state.record_plugin_metrics or self.recorder is None:
            return method(*args)
        start = time.perf_counter()
        result = method(*args)
        status = result.status if isinstance(result, PostFilterResult) else result
        code = status.code.value if isinstance(status, Status) else Code.SUCCESS.value
        self.recorder.observe_plugin(plugin, point, code, time.perf_counter() - start)
        return result

    def _pre_filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo]) -> tuple[set[str], Status]:
        """Every PreFilter: the names of those that skip this pod, and the first refusal (or SUCCESS)."""
        skipped: set[str] = set()
        for pf in self.pre_filters:
            st = self._call(state, pf.name, "PreFilter", pf.pre_filter, state, pod, nodes)
            if st.code is Code.SKIP:
                skipped.add(pf.name)
            elif not st.ok:
                return skipped, st
        return skipped, SUCCESS

    def _filter(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo],
                skipped: set[str]) -> tuple[list[NodeInfo], dict[str, Status]]:
        filters: list[FilterPlugin] = [f for f in self.filters if f.name not in skipped]
        feasible: list[NodeInfo] = []
        statuses: dict[str, Status] = {}
        total = len(nodes)
        wanted = num_feasible_nodes_to_find(total, self.percentage_of_nodes_to_score)
        start = self.next_start_node_index % total if total else 0
        # A sampled cycle runs timed stand-ins on its first nodes; the rest of its nodes, and
        # every node of an unsampled cycle, go through the very same loop without them.
        done = 0
        if state.record_plugin_metrics and self.recorder is not None:
            timed: list[FilterPlugin] = [_TimedFilter(f, self.recorder) for f in filters]
            done = self._filter_nodes(state, pod, nodes, start, 0, min(TIMED_NODES_PER_CYCLE, total), timed,
                                      feasible, statuses, wanted)
        if len(feasible) < wanted and state.table is not None:
            done = self._filter_table(state, pod, state.table, start, done, filters, feasible, wanted)
            if not feasible:
                # No node fits: the message counts every node's reasons, and preemption
                # reads them, so the nodes are filtered one by one after all.
                state.feasible_rows = None
                done = self._filter_nodes(state, pod, nodes, start, 0, total, filters, feasible, statuses, wanted)
        elif len(feasible) < wanted:
            done = self._filter_nodes(state, pod, nodes, start, done, total, filters, feasible, statuses, wanted)
        if total:
            self.next_start_node_index = (start + done) % total
        return feasible, statuses

    @staticmethod
    def _filter_nodes(state: CycleState, pod: Obj, nodes: Sequence[NodeInfo], start: int, first: int, end: int,
                      filters: list[FilterPlugin], feasible: list[NodeInfo], statuses: dict[str, Status],
                      wanted: int) -> int:
        """Filter the ``first``-th to the ``end``-th node from ``start`` (round the ring) into
        ``feasible`` and ``statuses``, stopping once ``wanted`` are feasible; returns how
        many nodes from ``start`` have been visited."""
        total = len(nodes)
        for i in range(first, end):
            info = nodes[(start + i) % total]
            for f in filters:
                st = f.filter(state, pod, info)
                if st is not SUCCESS and not st.ok:  # the identity test first: the common case, fast
                    # Like kube-scheduler, a node counts under the reasons of the first
                    # filter that rejects it.
                    statuses[info.name] = st
                    break
            else:
                feasible.append(info)
                if len(feasible) >= wanted:
                    return i + 1
        return end

    @staticmethod
    def _filter_table(state: CycleState, pod: Obj, table: NodeTable, start: int, first: int,
                      filters: list[FilterPlugin], feasible: list[NodeInfo], wanted: int) -> int:
        """``_filter_nodes`` from ring position ``first`` on, with the plugins that have a
        ``filter_table`` run over every node at once and the others called per node on the
        nodes those let through. Fills only ``feasible``: the statuses of the nodes refused
        are not known here. Returns how many nodes from ``start`` have been visited."""
        passing = table.everyone
        per_node: list[FilterPlugin] = []
        for f in filters:
            vectorised = getattr(f, "filter_table", None)
            mask = vectorised(state, pod, table) if vectorised is not None else None
            if mask is None:
                per_node.append(f)
            else:
                passing = passing & mask
        total = len(table)
        candidates = table.ring(passing, start, first)
        need = wanted - len(feasible)
        infos = table.infos
        if not per_node:
            chosen = candidates[:need]
            if not feasible:
                state.feasible_rows = chosen  # what Score would otherwise look up again
            feasible.extend(infos[row] for row in chosen.tolist())
            return (int(chosen[-1]) - start) % total + 1 if len(chosen) == need else total
        for row in candidates.tolist():
            info = infos[row]
            for f in per_node:
                st = f.filter(state, pod, info)
                if st is not SUCCESS and not st.ok:
                    break
            else:
                feasible.append(info)
                if len(feasible) >= wanted:
                    return (row - start) % total + 1
        return total

    def _no_fit(self, state: CycleState, pod: Obj, nodes: Sequence[NodeInfo],
                statuses: dict[str, Status], message: str) -> Decision:
        if not self.post_filters:
            return Decision(None, message, state=state)
        start = time.perf_counter()
        for pf in self.post_filters:
            result = self._call(state, pf.name, "PostFilter", pf.post_filter, state, pod, nodes, statuses)
            if result.nominated_node is not None:
                self._lap("PostFilter", Code.SUCCESS, start)
                # As kube-scheduler: the pod's message stays the fit error; the victims say the rest.
                return Decision(None, message, state=state,
                                nominated_node=result.nominated_node, victims=result.victims)
            if result.status.reasons:
                message = f"{message} {' '.join(result.status.reasons)}"
        self._lap("PostFilter", Code.UNSCHEDULABLE, start)
        return Decision(None, message, state=state)

    def _score(self, state: CycleState, pod: Obj, feasible: list[NodeInfo]) -> Any:
        """PreScore, then Score (with NormalizeScore): each node's weighted total (an int64
        array in the order of ``feasible``), or an error Status."""
        skipped: set[str] = set()
        start = time.perf_counter()
        for ps in self.pre_scores:
            st = self._call(state, ps.name, "PreScore", ps.pre_score, state, pod, feasible)
            if st.code is Code.SKIP:
                skipped.add(ps.name)
            elif not st.ok:
                self._lap("PreScore", st.code, start)
                return Status.error(f"running PreScore plugin {ps.name}: {'; '.join(st.reasons)}")
        start = self._lap("PreScore", Code.SUCCESS, start)
        totals = self._run_scores(state, pod, feasible, skipped)
        self._lap("Score", totals.code if isinstance(totals, Status) else Code.SUCCESS, start)
        return totals

    def _run_scores(self, state: CycleState, pod: Obj, feasible: list[NodeInfo], skipped: set[str]) -> Any:
        totals = np.zeros(len(feasible), np.int64)
        sampled = state.record_plugin_metrics and self.recorder is not None
        table, rows = state.table, state.feasible_rows
        if table is not None and rows is None:
            rows = table.rows(feasible)
        for plugin, weight in self.scores:
            if plugin.name in skipped:
                continue
            scores = self._plugin_scores(state, pod, plugin, feasible, rows, sampled)
            normalize = getattr(plugin, "normalize_score", None)  # NormalizeScorePlugin
            if normalize is not None:
                vectorised = getattr(plugin, "normalize_table", None)
                if vectorised is not None:
                    scores = self._call(state, plugin.name, "ScoreExtensionNormalize", vectorised, state, pod, scores)
                else:
                    names = [info.name for info in feasible]
                    by_name = dict(zip(names, scores.tolist(), strict=True))
                    self._call(state, plugin.name, "ScoreExtensionNormalize", normalize, state, pod, by_name)
                    scores = np.fromiter((by_name[name] for name in names), np.int64, len(names))
            if scores.min() < 0 or scores.max() > MAX_SCORE:
                at = int(np.flatnonzero((scores < 0) | (scores > MAX_SCORE))[0])
                return Status.error(f"plugin {plugin.name} gave node {feasible[at].name} the invalid score "
                                    f"{int(scores[at])}, not within [0, {MAX_SCORE}]")
            totals += weight * scores
        return totals

    def _plugin_scores(self, state: CycleState, pod: Obj, plugin: ScorePlugin, feasible: list[NodeInfo],
                       rows: Any, sampled: bool) -> Any:
        """One Score plugin's scores of ``feasible``, as an int64 array in their order: from its
        ``score_table`` when it has one and the cycle has a table (timed as one call in a
        sampled cycle), else from a call per node (the first ``TIMED_NODES_PER_CYCLE``
        timed in a sampled cycle)."""
        vectorised = getattr(plugin, "score_table", None)
        if vectorised is not None and rows is not None:
            if not sampled:
                return vectorised(state, pod, state.table, rows)
            assert self.recorder is not None
            began = time.perf_counter()
            scores = vectorised(state, pod, state.table, rows)
            self.recorder.observe_plugin(plugin.name, "Score", Code.SUCCESS.value, time.perf_counter() - began)
            return scores
        if sampled:
            assert self.recorder is not None
            timed = _TimedScore(plugin, self.recorder)
            listed = [timed.score(state, pod, info) for info in feasible[:TIMED_NODES_PER_CYCLE]]
            listed += [plugin.score(state, pod, info) for info in feasible[TIMED_NODES_PER_CYCLE:]]
        else:
            listed = [plugin.score(state, pod, info) for info in feasible]
        return np.fromiter(listed, np.int64, len(listed))

    # --- after a decision: run by the scheduling loop ---------------------------------

    def reserve(self, state: CycleState, pod: Obj, node_name: str) -> Status:
        """Every Reserve plugin, in order; when one refuses, what the others reserved is undone."""
        start = time.perf_counter()
        for plugin in self.reserves:
            st = self._call(state, plugin.name, "Reserve", plugin.reserve, state, pod, node_name)
            if not st.ok:
                self._lap("Reserve", st.code, start)
                self.unreserve(state, pod, node_name)
                return st
        self._lap("Reserve", Code.SUCCESS, start)
        return SUCCESS

    def unreserve(self, state: CycleState, pod: Obj, node_name: str) -> None:
        start = time.perf_counter()
        for plugin in reversed(self.reserves):
            self._call(state, plugin.name, "Unreserve", plugin.unreserve, state, pod, node_name)
        self._lap("Unreserve", Code.SUCCESS, start)

    async def bind(self, state: CycleState, pod: Obj, node_name: str, handle: Handle) -> Status:
        """The first Bind plugin that does not skip binds the pod."""
        start = time.perf_counter()
        code = Code.ERROR  # also when a plugin raises
        try:
            for plugin in self.binds:
                plugin_start = time.perf_counter()
                st = await plugin.bind(state, pod, node_name, handle)
                if state.record_plugin_metrics and self.recorder is not None:
                    self.recorder.observe_plugin(plugin.name, "Bind", st.code.value, time.perf_counter() - plugin_start)
                if st.code is not Code.SKIP:
                    code = st.code
                    return st
            return Status.error(f"no bind plugin bound pod to {node_name}")
        finally:
            self._lap("Bind", code, start)


def unschedulable_message(n_nodes: int, statuses: Mapping[str, Status]) -> str:
    """kube-scheduler's FitError text: every reason with the number of nodes it rejected,
    the "N reason" strings sorted as strings, as kube-scheduler sorts them."""
    if n_nodes == 0:
        return "0/0 nodes are available: no nodes registered."
    reasons: Counter[str] = Counter()
    for st in statuses.values():
        reasons.update(st.reasons)
    parts = ", ".join(sorted(f"{count} {reason}" for reason, count in reasons.items()))
    return f"0/{n_nodes} nodes are available: {parts}."
