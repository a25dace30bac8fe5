"""The scheduling queue: which Pending pod the scheduler tries next, and when it tries again.

kube-scheduler's PriorityQueue, in three sub-queues keyed by pod uid:

* **active**: pods to try now, highest ``spec.priority`` first, then in the order they
  arrived (kube-scheduler's PrioritySort queue-sort plugin);
* **backoff**: pods that failed recently, each waiting ``1 s · 2^(attempts-1)``
  (capped at 10 s) since its last attempt before it is active again, so that a pod
  that cannot fit does not spin the scheduler;
* **unschedulable**: pods no node could take. Nothing will change that until the
  cluster changes, so they wait for a *cluster event* that may help (a node added
  or changed, a pod deleted or moved: ``move_all``), or at most
  ``max_unschedulable_seconds`` (kube-scheduler's podMaxInUnschedulablePodsDuration,
  60 s), and then go to backoff or active.

A pod being tried is *in flight*: it is in no sub-queue until ``done`` or
``failed`` says how the attempt went. A cluster event that arrives meanwhile is
remembered (kube-scheduler's moveRequestCycle), so a pod that failed on a snapshot
older than that event goes to backoff rather than waiting for another event.

The queue is a plain data structure over pod objects and a clock; the scheduling
loop feeds it from the informers. It holds only hints: the loop re-adds every
Pending pod it sees on each resync, and ``add`` of a pod already queued is a no-op.

**Metrics.** ``on_incoming(queue, event)`` is called for every pod put into a sub-queue,
with kube-scheduler's event names (``PodAdd``, ``PodUpdate``, ``ScheduleAttemptFailure``,
``BackoffComplete``, ``UnschedulableTimeout``, or the cluster event given to
``move_all``): the ``scheduler_queue_incoming_pods_total`` counter. ``done`` returns the
bound pod's entry, whose ``arrived`` and ``attempts`` make the SLI latency.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from apimachinery.meta import Obj

INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 10.0
MAX_UNSCHEDULABLE_SECONDS = 60.0

ACTIVE, BACKOFF, UNSCHEDULABLE = "active", "backoff", "unschedulable"


def pod_uid(pod: Obj) -> str:
    return str(pod["metadata"]["uid"])


def pod_priority(pod: Obj) -> int:
    return int(pod["spec"].get("priority") or 0)


@dataclass(slots=True)
class QueuedPod:
    pod: Obj
    # When the pod first entered the queue: the tie-breaker among equal priorities.
    arrived: float
    attempts: int = 0
    last_attempt: float = 0.0
    # The scheduling cycle of its last attempt (see moveRequestCycle above).
    cycle: int = 0
    # When it was parked in the unschedulable sub-queue.
    parked: float = 0.0
    where: str = ""


@dataclass(slots=True)
class SchedulingQueue:
    clock: Callable[[], float] = time.monotonic
    initial_backoff: float = INITIAL_BACKOFF
    max_backoff: float = MAX_BACKOFF
    max_unschedulable_seconds: float = MAX_UNSCHEDULABLE_SECONDS
    # (sub-queue, event) for every pod that enters a sub-queue; see the module docstring.
    on_incoming: Callable[[str, str], None] | None = None
    _pods: dict[str, QueuedPod] = field(default_factory=dict)
    _active: list[tuple[int, float, int, str]] = field(default_factory=list)
    _in_flight: dict[str, QueuedPod] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _cycle: int = 0
    _move_request_cycle: int = -1

    # --- what the informers tell it ----------------------------------------------------

    def add(self, pod: Obj) -> bool:
        """A Pending pod seen: active if the queue did not know it. True when it was added."""
        uid = pod_uid(pod)
        if uid in self._pods:
            self._pods[uid].pod = pod
            return False
        if uid in self._in_flight:
            self._in_flight[uid].pod = pod
            return False
        self._push_active(QueuedPod(pod, self.clock()), "PodAdd")
        return True

    def update(self, pod: Obj) -> None:
        """A queued pod changed. A change of what scheduling reads (its spec or labels) may
        make it fit, so an unschedulable pod is tried again; a status write (the
        scheduler's own condition) moves nothing."""
        entry = self._pods.get(pod_uid(pod))
        if entry is None:
            self.add(pod)
            return
        old, entry.pod = entry.pod, pod
        if entry.where == UNSCHEDULABLE and (
                old["spec"] != pod["spec"] or old["metadata"].get("labels") != pod["metadata"].get("labels")):
            self._requeue(entry, "PodUpdate")

    def delete(self, uid: str) -> None:
        """The pod is gone or no longer Pending (bound, deleted): forget it."""
        entry = self._pods.pop(uid, None)
        if entry is not None:
            entry.where = ""  # its heap entry is now stale and skipped
        flying = self._in_flight.get(uid)
        if flying is not None:
            flying.where = "deleted"

    def move_all(self, event: str = "") -> int:
        """A cluster event that may make unschedulable pods fit: back to backoff or active.
        Returns how many moved."""
        self._move_request_cycle = self._cycle
        parked = [e for e in self._pods.values() if e.where == UNSCHEDULABLE]
        for entry in parked:
            self._requeue(entry, event or "MoveAll")
        return len(parked)

    # --- what the scheduling loop does ------------------------------------------------------

    def pop_all(self) -> list[Obj]:
        """Every active pod, in order, now in flight; the loop tries them in one pass."""
        self.flush()
        out: list[Obj] = []
        self._cycle += 1
        while self._active:
            _, _, _, uid = heapq.heappop(self._active)
            entry = self._pods.get(uid)
            if entry is None or entry.where != ACTIVE:
                continue
            del self._pods[uid]
            entry.where = "in flight"
            entry.cycle = self._cycle
            self._in_flight[uid] = entry
            out.append(entry.pod)
        return out

    def done(self, pod: Obj) -> QueuedPod | None:
        """The pod was bound: forget it. Its entry, if it was in flight."""
        return self._in_flight.pop(pod_uid(pod), None)

    def failed(self, pod: Obj, *, unschedulable: bool) -> None:
        """The attempt failed: ``unschedulable`` (no node fits) parks the pod until a cluster
        event, unless one came during the attempt; anything else (a lost race) backs off."""
        entry = self._in_flight.pop(pod_uid(pod), None)
        if entry is None or entry.where == "deleted":
            return
        entry.pod = pod
        entry.attempts += 1
        entry.last_attempt = self.clock()
        if unschedulable and entry.cycle > self._move_request_cycle:
            entry.where = UNSCHEDULABLE
            entry.parked = self.clock()
            self._pods[pod_uid(pod)] = entry
        else:
            entry.where = BACKOFF
            self._pods[pod_uid(pod)] = entry
        if self.on_incoming is not None:
            self.on_incoming(entry.where, "ScheduleAttemptFailure")

    def flush(self) -> None:
        """Backoff that has run out → active; pods parked longer than the limit → requeued."""
        now = self.clock()
        for entry in list(self._pods.values()):
            if entry.where == BACKOFF and now >= self.backoff_until(entry):
                self._push_active(entry, "BackoffComplete")
            elif entry.where == UNSCHEDULABLE and now - entry.parked >= self.max_unschedulable_seconds:
                self._requeue(entry, "UnschedulableTimeout")

    def next_wake(self) -> float | None:
        """Seconds until the next backoff ends or a parked pod is due, None when nothing waits."""
        now = self.clock()
        times = [self.backoff_until(e) if e.where == BACKOFF else e.parked + self.max_unschedulable_seconds
                 for e in self._pods.values() if e.where in (BACKOFF, UNSCHEDULABLE)]
        return max(0.0, min(times) - now) if times else None

    def has_active(self) -> bool:
        return any(e.where == ACTIVE for e in self._pods.values())

    def backoff_until(self, entry: QueuedPod) -> float:
        return entry.last_attempt + self.backoff_duration(entry.attempts)

    def backoff_duration(self, attempts: int) -> float:
        """1 s after the first failure, doubling to at most 10 s (kube-scheduler's defaults)."""
        if attempts <= 0:
            return 0.0
        return float(min(self.max_backoff, self.initial_backoff * 2 ** (attempts - 1)))

    def pending_pods(self) -> dict[str, int]:
        """How many pods each sub-queue holds (kube-scheduler's scheduler_pending_pods gauge)."""
        counts = {ACTIVE: 0, BACKOFF: 0, UNSCHEDULABLE: 0}
        for entry in self._pods.values():
            counts[entry.where] += 1
        return counts

    def where(self, uid: str) -> str | None:
        entry = self._pods.get(uid)
        if entry is not None:
            return entry.where
        return "in flight" if uid in self._in_flight else None

    def uids(self) -> set[str]:
        return set(self._pods) | set(self._in_flight)

    # --- internals ---------------------------------------------------------------------

    def _requeue(self, entry: QueuedPod, event: str) -> None:
        """Out of unschedulable: to backoff while its backoff lasts, else active."""
        if self.clock() < self.backoff_until(entry):
            entry.where = BACKOFF
            if self.on_incoming is not None:
                self.on_incoming(BACKOFF, event)
        else:
            self._push_active(entry, event)

    def _push_active(self, entry: QueuedPod, event: str) -> None:
        entry.where = ACTIVE
        uid = pod_uid(entry.pod)
        self._pods[uid] = entry
        heapq.heappush(self._active, (-pod_priority(entry.pod), entry.arrived, next(self._seq), uid))
        if self.on_incoming is not None:
            self.on_incoming(ACTIVE, event)
