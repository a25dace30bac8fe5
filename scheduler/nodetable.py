"""The numbers the node-state and resource plugins read, as columns with one row per node of
a scheduling pass, so that their Filter and Score run as a few numpy operations over all
the nodes at once instead of one Python call per node and plugin.

Why: at 5,000 nodes a cycle filters at least the 500 nodes it scores (kube-scheduler's
adaptive ``percentageOfNodesToScore``), five default Filter plugins and three Score
plugins each. As Python calls that is ~4,000 calls and ~2.6 ms per pod, 70 % of the
scheduler's CPU in the SchedulingBasic benchmark (bench/scheduler_perf.py); as columns it
is a few dozen array operations.

**The per-node methods stay the definition.** A plugin may add vectorised forms of its
methods (``filter_table``, ``score_table``, ``normalize_table``: see
docs/scheduling-plugins.md); each must decide exactly as the per-node method would, and
tests/test_nodetable.py checks the built-in ones against their per-node forms on random
clusters. A plugin without them is called per node, as always, on the nodes the
vectorised filters let through. Where the per-node statuses matter (no node fits: the
message counts the reasons of every node, and preemption reads them), the framework runs
the per-node filters after all.

The table is built once per pass from the pass's NodeInfos and kept current as the pass
assumes pods on nodes (``NodeInfo.add_pod`` calls ``pod_added``). Copies of a NodeInfo
(``NodeInfo.without``: nominated pods, preemption) are not in any table: a cycle over such
copies runs per node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from scheduler.framework import NodeInfo

Mask = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


def _ints(values: Sequence[int]) -> Ints:
    return np.fromiter(values, np.int64, len(values))


def _bools(values: Sequence[bool]) -> Mask:
    return np.fromiter(values, np.bool_, len(values))


class NodeTable:
    """Columns over ``infos`` (row ``i`` is ``infos[i]``, whose ``row`` is set to ``i``)."""

    __slots__ = ("infos", "everyone", "ready", "unschedulable", "schedulable", "any_unschedulable", "tainted", "alloc_cpu", "alloc_memory",
                 "alloc_pods", "requested_cpu", "requested_memory", "non_zero_cpu", "non_zero_memory", "pod_count")

    def __init__(self, infos: Sequence[NodeInfo]) -> None:
        self.infos = list(infos)
        for row, info in enumerate(self.infos):
            info.table, info.row = self, row
        nodes = self.infos
        self.everyone: Mask = np.ones(len(nodes), np.bool_)
        self.ready = _bools([n.ready for n in nodes])
        self.unschedulable = _bools([n.unschedulable for n in nodes])
        self.schedulable: Mask = ~self.unschedulable
        self.any_unschedulable = bool(self.unschedulable.any())
        self.tainted = _bools([bool(n.taints) for n in nodes])
        self.alloc_cpu = _ints([n.allocatable[0] for n in nodes])
        self.alloc_memory = _ints([n.allocatable[1] for n in nodes])
        self.alloc_pods = _ints([n.allocatable[2] for n in nodes])
        self.requested_cpu = _ints([n.requested_cpu for n in nodes])
        self.requested_memory = _ints([n.requested_memory for n in nodes])
        self.non_zero_cpu = _ints([n.non_zero_cpu for n in nodes])
        self.non_zero_memory = _ints([n.non_zero_memory for n in nodes])
        self.pod_count = _ints([len(n.pods) for n in nodes])

    def __len__(self) -> int:
        return len(self.infos)

    def pod_added(self, info: NodeInfo) -> None:
        """``info`` (a row of this table) took a pod: copy its sums."""
        row = info.row
        self.requested_cpu[row] = info.requested_cpu
        self.requested_memory[row] = info.requested_memory
        self.non_zero_cpu[row] = info.non_zero_cpu
        self.non_zero_memory[row] = info.non_zero_memory
        self.pod_count[row] = len(info.pods)

    def rows(self, infos: Sequence[NodeInfo]) -> Ints:
        """The rows of ``infos`` (all of this table), in their order."""
        return np.fromiter((i.row for i in infos), np.int64, len(infos))

    def ring(self, passing: Mask, start: int, first: int) -> Ints:
        """The rows where ``passing`` holds, in the order a cycle visits them: from ring
        position ``first`` (row ``start + first``, round the end) to the row before ``start``."""
        total = len(self.infos)
        found = np.flatnonzero(passing)
        if first >= total:
            return found[:0]
        at = (start + first) % total
        if first == 0 or at >= start:
            return np.concatenate((found[found >= at], found[found < start]))
        return found[(found >= at) & (found < start)]
