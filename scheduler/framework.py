"""The scheduling framework: extension points as small Protocols, as in kube-scheduler.

A scheduling cycle for one pod runs every PreFilter plugin once (writing what the
Filters need into the CycleState), every Filter plugin for every node, then every
Score plugin for the nodes that passed, and picks the highest weighted sum. "Does
not fit" is a ``Status`` with a reason, never an exception; the reasons of every
node are summed up in the message a Pending pod carries:

    0/2 nodes are available: 1 Insufficient memory, 1 node(s) didn't match Pod's node affinity/selector.

``framework.schedule`` is a pure function of the pod and the NodeInfos: the loop
in ``scheduler.scheduling`` does the I/O.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from apimachinery.meta import Obj
from apimachinery.quantity import parse_cpu, parse_memory
from apimachinery.validation import pod_requests

MAX_SCORE = 100


class Code(enum.Enum):
    SUCCESS = "Success"
    UNSCHEDULABLE = "Unschedulable"
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


SUCCESS = Status()


class CycleState(dict[str, Any]):
    """What a PreFilter computes once per pod and the Filters read for every node."""


@dataclass(slots=True)
class NodeInfo:
    """A node and the pods the scheduler counts on it (bound or assumed)."""

    node: Obj
    pods: list[Obj] = field(default_factory=list)
    requested_cpu: int = 0
    requested_memory: int = 0

    @property
    def name(self) -> str:
        return str(self.node["metadata"]["name"])

    def allocatable(self) -> tuple[int, int, int]:
        alloc = self.node.get("status", {}).get("allocatable", {})
        return (
            parse_cpu(alloc.get("cpu", "0")),
            parse_memory(alloc.get("memory", "0")),
            int(alloc.get("pods", 110)),
        )

    def add_pod(self, pod: Obj) -> None:
        cpu, mem = pod_requests(pod["spec"])
        self.pods.append(pod)
        self.requested_cpu += cpu
        self.requested_memory += mem


class PreFilterPlugin(Protocol):
    name: str

    def pre_filter(self, state: CycleState, pod: Obj) -> Status: ...


class FilterPlugin(Protocol):
    name: str

    def filter(self, state: CycleState, pod: Obj, node: NodeInfo) -> Status: ...


class ScorePlugin(Protocol):
    name: str

    def score(self, state: CycleState, pod: Obj, node: NodeInfo) -> int:
        """0 (worst) to MAX_SCORE (best)."""
        ...


@dataclass(frozen=True, slots=True)
class Decision:
    node: str | None
    message: str
    scores: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Framework:
    """One scheduling profile: its plugins, in order, and score weights."""

    pre_filters: list[PreFilterPlugin]
    filters: list[FilterPlugin]
    scores: list[tuple[ScorePlugin, int]]
    rng: random.Random = field(default_factory=random.Random)

    def schedule(self, pod: Obj, nodes: list[NodeInfo]) -> Decision:
        state = CycleState()
        for pf in self.pre_filters:
            st = pf.pre_filter(state, pod)
            if not st.ok:
                return Decision(None, f"0/{len(nodes)} nodes are available: {', '.join(st.reasons)}.")
        feasible: list[NodeInfo] = []
        reasons: Counter[str] = Counter()
        for info in nodes:
            for f in self.filters:
                st = f.filter(state, pod, info)
                if not st.ok:
                    # Like kube-scheduler, a node counts once per reason of the first
                    # filter that rejects it.
                    reasons.update(st.reasons)
                    break
            else:
                feasible.append(info)
        if not feasible:
            return Decision(None, unschedulable_message(len(nodes), reasons))
        totals: dict[str, int] = {}
        for info in feasible:
            totals[info.name] = sum(w * plugin.score(state, pod, info) for plugin, w in self.scores)
        best = max(totals.values())
        # Break ties at random so equal nodes share the load, as kube-scheduler does.
        winner = self.rng.choice(sorted(n for n, s in totals.items() if s == best))
        return Decision(winner, f"bound to {winner}", totals)


def unschedulable_message(n_nodes: int, reasons: Counter[str]) -> str:
    if n_nodes == 0:
        return "0/0 nodes are available: no nodes registered."
    parts = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items(), key=lambda rc: rc[0]))
    return f"0/{n_nodes} nodes are available: {parts}."
