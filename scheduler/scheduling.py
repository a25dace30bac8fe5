"""The scheduling loop: Pending pods → the scheduling queue → their profile's framework → a
binding that cannot double-book a node.

**Feeding the queue.** The pod and node informers' notifications are translated
into queue operations (``scheduler.queue``): a new Pending pod is added, a bound or
deleted one forgotten; a node added or changed in a way scheduling reads
(allocatable, labels, taints, cordon, readiness), a pod deleted or finished, moves
the parked unschedulable pods back. Every ``resync`` seconds the loop re-adds every
Pending pod it sees (level-triggered: a lost hint costs a few seconds, never a pod).

**A pass** takes every active pod, highest priority first, and decides each against
NodeInfos built once per pass from the informers, with the pods this scheduler
bound meanwhile *assumed* on their nodes (until the informer shows them) and the
pods nominated by preemption counted on their nominated node for pods of no higher
priority, as kube-scheduler does, so that the room a preemption made is kept for
the preemptor.

**Explained decisions.** A pod no node takes gets the ``PodScheduled=False``
condition (reason ``Unschedulable``, kube-scheduler's ``0/N nodes are available: …``
message) and a Warning ``FailedScheduling`` Event with the same text; a bound pod a
Normal ``Scheduled`` Event. When a PostFilter (``DefaultPreemption``) found room by
evicting lower-priority pods, the pod's ``status.nominatedNodeName`` is set, the
victims are deleted gracefully through the registry, each with a ``Preempted``
Event, and the pod waits in the queue until their deletion moves it back.

**Bindings that cannot double-book.** A binding is one etcd transaction (``Store.bind``)
guarded by the pod's revision — so a pod changed or deleted since the decision is
never bound, and never bound twice — and by the revision of its node's allocation
ledger (``<prefix>/nodeallocations/<node>``: the uid and requests of every pod bound
there). Before writing, the binder recomputes the ledger from the pods and checks
that the pod still fits the node's allocatable (cpu, memory, pod count); if another
scheduler bound to that node meanwhile, the transaction fails, the binder re-reads
the ledger and checks again. So two schedulers working from stale caches can at
worst waste an attempt; they can never put a node over its allocatable.

The ledger is *derived from the pods*: an entry whose pod the informer no longer
shows (deleted, finished, or re-created with another uid) is dropped at the next
bind to that node — but only once the informer has caught up with the ledger's
revision, so a pod bound by another scheduler that this one has not seen yet is
never mistaken for a deleted one. Pods found on the node but missing from the
ledger (given ``spec.nodeName`` by hand, or bound before the ledger existed) are
added. Nothing else has to maintain it: deletes, evictions and restarts leave it
merely stale, and staleness only ever errs on the side of less room.

A pod is scheduled by the profile its ``spec.schedulerName`` names. A pod naming a
profile this scheduler does not have is left alone, Pending, with no condition and
no event, as kube-scheduler leaves it: another scheduler may own that name.

**Metrics** (given a ``SchedulerMetrics``, scheduler/metrics.py), where kube-scheduler
records them: an attempt's result and duration once it is decided (``unschedulable``,
``error``) or bound (``scheduled``: the decision and the binding), the SLI latency from
the pod's first entry into the queue to its binding, a preemption attempt for every
PostFilter run; the framework times its extension points, the queue counts incoming
pods, and the pending-pods gauge reads the queue when scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from apimachinery.errors import ConflictError, NotFoundError, OrchError
from apimachinery.meta import POD, Obj, now_rfc3339, ref
from apimachinery.validation import DEFAULT_SCHEDULER_NAME
from scheduler.events import NORMAL, WARNING, EventRecorder
from scheduler.framework import Code, Decision, Framework, NodeInfo, Status, pod_resource_requests
from scheduler.informer import Informer, obj_key
from scheduler.nodetable import NodeTable
from scheduler.queue import MAX_UNSCHEDULABLE_SECONDS, SchedulingQueue
from scheduler.registry import Registry
from scheduler.store import MAX_OBJECTS_PER_TXN, AllocationConflict, NodeAllocation, Store, WatchEvent

if TYPE_CHECKING:
    from scheduler.metrics import SchedulerMetrics

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")
#: How often one binding re-reads a contended ledger before the pod goes back to the queue.
BIND_ATTEMPTS = 8
#: Events waiting to be written; beyond this they are dropped (client-go's broadcaster drops too).
MAX_QUEUED_EVENTS = 1000
EVENT_DROP_REPORT = 10.0  # seconds between warnings about dropped events


def is_pending(pod: Obj) -> bool:
    spec = pod["spec"]
    return (
        not spec.get("nodeName")
        and not pod["metadata"].get("deletionTimestamp")
        and pod.get("status", {}).get("phase", "Pending") == "Pending"
    )


def is_terminal(pod: Obj) -> bool:
    return pod.get("status", {}).get("phase") in TERMINAL


def scheduler_name(pod: Obj) -> str:
    return str(pod["spec"].get("schedulerName") or DEFAULT_SCHEDULER_NAME)


def priority(pod: Obj) -> int:
    return int(pod["spec"].get("priority") or 0)


def build_node_infos(nodes: list[Obj], pods: list[Obj]) -> dict[str, NodeInfo]:
    infos = {n["metadata"]["name"]: NodeInfo(n) for n in nodes}
    for pod in pods:
        node = pod["spec"].get("nodeName")
        if node in infos and not is_terminal(pod):
            infos[node].add_pod(pod)
    return infos


def _condition(status: str, reason: str = "", message: str = "") -> Obj:
    cond: Obj = {"type": "PodScheduled", "status": status, "lastTransitionTime": now_rfc3339()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def node_signature(node: Obj) -> str:
    """What of a node scheduling reads: a change here may let an unschedulable pod fit."""
    ready = next((c.get("status") for c in node.get("status", {}).get("conditions", []) if c.get("type") == "Ready"),
                 None)
    return json.dumps([node.get("status", {}).get("allocatable"), node["metadata"].get("labels"),
                       node.get("spec", {}).get("taints"), node.get("spec", {}).get("unschedulable"), ready],
                      sort_keys=True)


# --- the allocation ledger: pure --------------------------------------------------------------


def ledger_entry(pod: Obj) -> dict[str, Any]:
    cpu, memory, _, _ = pod_resource_requests(pod)
    md = pod["metadata"]
    return {"namespace": md.get("namespace", ""), "name": md["name"], "cpu": cpu, "memory": memory}


def reconcile_ledger(allocation: NodeAllocation, pods: Mapping[tuple[str, str], Obj], pods_revision: int,
                     on_node: Sequence[Obj]) -> dict[str, dict[str, Any]]:
    """The ledger as the pods say it should be.

    ``pods`` is an informer's cache, consistent at ``pods_revision``. An entry is dropped
    only when that cache is at least as new as the ledger and no longer shows its pod
    bound to the node and running: every entry was written together with its pod's
    binding, at or before the ledger's revision, so a cache that new would show it.
    ``on_node``: the pods the scheduler counts on the node, added when missing.
    """
    ledger = dict(allocation.pods)
    if pods_revision >= allocation.revision:
        for uid, entry in list(ledger.items()):
            current = pods.get((entry.get("namespace", ""), entry.get("name", "")))
            if (current is None or current["metadata"].get("uid") != uid or is_terminal(current)
                    or current["spec"].get("nodeName") != allocation.node):
                del ledger[uid]
    for pod in on_node:
        uid = pod["metadata"].get("uid")
        if uid and uid not in ledger and not is_terminal(pod):
            ledger[uid] = ledger_entry(pod)
    return ledger


def ledger_shortfall(ledger: Mapping[str, Mapping[str, Any]], entry: Mapping[str, Any],
                     allocatable: tuple[int, int, int]) -> list[str]:
    """Why the pod of ``entry`` does not fit beside the ``ledger``'s pods (kube-scheduler's
    reasons), empty when it fits."""
    cpu = sum(int(e.get("cpu", 0)) for e in ledger.values()) + int(entry["cpu"])
    memory = sum(int(e.get("memory", 0)) for e in ledger.values()) + int(entry["memory"])
    alloc_cpu, alloc_memory, alloc_pods = allocatable
    reasons = []
    if len(ledger) + 1 > alloc_pods:
        reasons.append("Too many pods")
    if entry["cpu"] and cpu > alloc_cpu:
        reasons.append("Insufficient cpu")
    if entry["memory"] and memory > alloc_memory:
        reasons.append("Insufficient memory")
    return reasons


#: Bindings in flight at once: enough to hide etcd's latency, few enough that a burst of
#: conflicts on one node's ledger stays small.
MAX_BINDS_IN_FLIGHT = 16

#: A pass that finds more nodes than this without a cached ledger reads all ledgers at once.
PREFETCH_LEDGERS_ABOVE = 16


class NodeFullError(ConflictError):
    """The node's ledger has no room for the pod: another scheduler filled it first."""


# --- the loop ------------------------------------------------------------------------------------


class SchedulingLoop:
    def __init__(self, store: Store, pods: Informer, nodes: Informer, profiles: Mapping[str, Framework],
                 resync: float = 5.0, *, registry: Registry | None = None,
                 max_unschedulable_seconds: float = MAX_UNSCHEDULABLE_SECONDS,
                 metrics: SchedulerMetrics | None = None) -> None:
        self.store = store
        self.pods = pods
        self.nodes = nodes
        self.profiles = profiles
        self.resync = resync
        self.registry = registry or Registry(store)
        self.metrics = metrics
        self.queue = SchedulingQueue(max_unschedulable_seconds=max_unschedulable_seconds,
                                     on_incoming=metrics.queue_incoming_pod if metrics is not None else None)
        if metrics is not None:
            for name, framework in profiles.items():
                framework.recorder = metrics.profile_recorder(name)
            metrics.watch_pending_pods(self.pending_pods)
        self.recorders = {name: EventRecorder(store, name) for name in profiles}
        # uid -> the bound pod as written, until the informer catches up.
        self._assumed: dict[str, Obj] = {}
        # uid -> the pod as decided (on its node) while its binding is in flight.
        self._binding: dict[str, Obj] = {}
        self._bind_slots = asyncio.Semaphore(MAX_BINDS_IN_FLIGHT)
        self._bind_tasks: set[asyncio.Task[None]] = set()
        # node -> its ledger as this scheduler last wrote it (re-read on conflict).
        self._allocations: dict[str, NodeAllocation] = {}
        self._infos: dict[str, NodeInfo] = {}
        self._table = NodeTable([])  # the pass's columns over ``_infos`` (scheduler/nodetable.py)
        self._affinity_nodes: list[NodeInfo] = []  # the infos holding pods with inter-pod affinity
        self._bound: dict[str, tuple[str, bool]] = {}  # uid -> (node, terminal), to notice moves
        self._node_signatures: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._events: asyncio.Queue[tuple[Obj, str, str, str, str]] = asyncio.Queue(MAX_QUEUED_EVENTS)
        self._events_dropped = 0
        self._drop_reported = -math.inf
        pods.add_listener(self._on_pod)
        nodes.add_listener(self._on_node)

    def pending_pods(self) -> dict[str, int]:
        """Pods waiting in each sub-queue: active, backoff, unschedulable."""
        return self.queue.pending_pods()

    # --- from the informers to the queue ----------------------------------------------------

    def _ours(self, pod: Obj) -> bool:
        return is_pending(pod) and scheduler_name(pod) in self.profiles

    def _on_pod(self, ev: WatchEvent | None) -> None:
        if ev is None:
            self._resync_queue()
            self.queue.move_all("relist")
            self._wake.set()
            return
        pod, uid = ev.obj, ev.obj["metadata"]["uid"]
        if ev.type == "DELETED":
            self.queue.delete(uid)
            if self._bound.pop(uid, None) is not None:
                self._cluster_event("AssignedPodDelete")
            return
        if self._ours(pod):
            self.queue.update(pod)
            self._wake.set()
        else:
            self.queue.delete(uid)
        node = pod["spec"].get("nodeName")
        if node:
            state = (node, is_terminal(pod))
            before = self._bound.get(uid)
            self._bound[uid] = state
            if before is not None and before != state:
                self._cluster_event("AssignedPodUpdate")

    def _on_node(self, ev: WatchEvent | None) -> None:
        if ev is None:
            self._node_signatures = {n["metadata"]["name"]: node_signature(n) for n in self.nodes.items()}
            self._cluster_event("NodeRelist")
            return
        name = ev.obj["metadata"]["name"]
        if ev.type == "DELETED":
            self._node_signatures.pop(name, None)
            self._allocations.pop(name, None)
            return
        sig = node_signature(ev.obj)
        if self._node_signatures.get(name) != sig:
            self._node_signatures[name] = sig
            self._cluster_event("NodeAdd" if ev.type == "ADDED" else "NodeUpdate")

    def _cluster_event(self, event: str) -> None:
        if self.queue.move_all(event):
            log.debug("%s: unschedulable pods move back to the queue", event)
        self._wake.set()

    def _resync_queue(self) -> None:
        """Level-triggered: every Pending pod of ours is queued, nothing else is."""
        ours = {p["metadata"]["uid"]: p for p in self.pods.items() if self._ours(p)}
        for pod in ours.values():
            if pod["metadata"]["uid"] not in self._assumed:
                self.queue.add(pod)
        for uid in self.queue.uids() - set(ours):
            self.queue.delete(uid)

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        for inf in (self.pods, self.nodes):
            await inf.synced.wait()
        writer = asyncio.create_task(self._write_events(), name="scheduler event writer")
        last_resync = time.monotonic()
        self._resync_queue()
        try:
            while True:
                self._wake.clear()
                try:
                    await self.schedule_pending()
                except OrchError as e:
                    log.warning("scheduling pass failed: %s", e)
                if time.monotonic() - last_resync >= self.resync:
                    self._resync_queue()
                    last_resync = time.monotonic()
                if self.queue.has_active():
                    continue
                timeout = self.resync - (time.monotonic() - last_resync)
                wake = self.queue.next_wake()
                if wake is not None:
                    timeout = min(timeout, wake)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(timeout, 0.01))
        finally:
            for task in (writer, *self._bind_tasks):
                task.cancel()
            await asyncio.gather(writer, *self._bind_tasks, return_exceptions=True)

    def _current_pods(self) -> list[Obj]:
        """The informer's pods, with assumed bindings laid over copies it has not caught up with."""
        pods = []
        for pod in self.pods.items():
            uid = pod["metadata"]["uid"]
            binding = self._binding.get(uid)
            if binding is not None and not pod["spec"].get("nodeName"):
                pods.append(binding)  # counted on its node while the binding is in flight
                continue
            assumed = self._assumed.get(uid)
            if assumed is not None:
                if int(pod["metadata"]["resourceVersion"]) >= int(assumed["metadata"]["resourceVersion"]):
                    del self._assumed[uid]
                else:
                    pod = assumed
            pods.append(pod)
        live = {p["metadata"]["uid"] for p in pods}
        for uid in [u for u in self._assumed if u not in live]:
            del self._assumed[uid]
        return pods

    async def schedule_pending(self) -> None:
        """One pass: every active pod of the queue, in its order."""
        batch = self.queue.pop_all()
        if not batch:
            return
        pods = self._current_pods()
        self._infos = infos = build_node_infos(self.nodes.items(), pods)
        self._table = NodeTable(list(infos.values()))
        await self._prefetch_allocations(infos)
        self._affinity_nodes = [info for info in infos.values() if info.pods_with_affinity]
        nominated = [p for p in pods if is_pending(p) and p.get("status", {}).get("nominatedNodeName")]
        for queued in batch:
            pod = self._latest(queued)
            if pod is None:
                self.queue.done(queued)
                continue
            try:
                await self._schedule_one(pod, infos, nominated)
            except OrchError as e:
                log.warning("scheduling pod %s failed: %s", ref(pod), e)
                self.queue.failed(pod, unschedulable=False)

    async def _prefetch_allocations(self, infos: Mapping[str, NodeInfo]) -> None:
        """Read every node's ledger in one range read when many are not cached: a pass that
        binds pods to hundreds of nodes for the first time would otherwise read each ledger
        in a call of its own before its binding (half the etcd calls of SchedulingBasic's
        first 10,000 pods). A stale entry costs what it always costs: the binding's guard
        fails and the ledger is read again."""
        missing = [name for name in infos if name not in self._allocations]
        if len(missing) <= PREFETCH_LEDGERS_ABOVE:
            return
        try:
            fetched = await self.store.list_allocations()
        except OrchError as e:
            log.debug("reading the node ledgers failed (each is read when needed): %s", e)
            return
        for name in missing:
            self._allocations[name] = fetched.get(name) or NodeAllocation(name, {}, 0)

    def _latest(self, queued: Obj) -> Obj | None:
        """The informer's copy of a queued pod, if it is still ours to schedule."""
        pod = self.pods.cache.get(obj_key(queued))
        uid = queued["metadata"]["uid"]
        if pod is None or pod["metadata"]["uid"] != uid or uid in self._assumed or not self._ours(pod):
            return None
        return pod

    def _nodes_for(self, pod: Obj, infos: Mapping[str, NodeInfo],
                   nominated: Sequence[Obj]) -> tuple[list[NodeInfo], bool]:
        """The nodes as ``pod`` sees them: with the pods nominated there by preemption that
        are at least as important counted as if already bound (kube-scheduler's
        RunFilterPluginsWithNominatedPods), so a lower-priority pod cannot take their room.
        The flag: some are such copies rather than the pass's own NodeInfos."""
        extra: dict[str, list[Obj]] = defaultdict(list)
        for other in nominated:
            node = other["status"]["nominatedNodeName"]
            uid = other["metadata"]["uid"]
            if (uid != pod["metadata"]["uid"] and uid not in self._assumed and node in infos
                    and priority(other) >= priority(pod)):
                extra[node].append(other)
        if not extra:
            return self._table.infos, False
        return [info.without(set(), extra[name]) if name in extra else info for name, info in infos.items()], True

    def _attempt(self, result: str, framework: Framework, start: float) -> None:
        """Count an attempt that ended with ``result``, ``start`` being when it began."""
        if self.metrics is not None:
            self.metrics.schedule_attempt(result, framework.scheduler_name, time.perf_counter() - start)

    async def _schedule_one(self, pod: Obj, infos: dict[str, NodeInfo], nominated: Sequence[Obj]) -> None:
        start = time.perf_counter()
        framework = self.profiles[scheduler_name(pod)]
        nodes, overlaid = self._nodes_for(pod, infos, nominated)
        # The pass's list of nodes with affinity pods holds its own NodeInfos; with nominated
        # pods laid over copies of some, the cycle finds the list itself.
        decision = (framework.schedule(pod, nodes, None, None) if overlaid else
                    framework.schedule(pod, nodes, self._affinity_nodes, self._table))
        if decision.node is None:
            if decision.error:
                self._attempt("error", framework, start)
                log.error("scheduling pod %s: %s", ref(pod), decision.message)
                self.queue.failed(pod, unschedulable=False)
                return
            self._attempt("unschedulable", framework, start)
            if self.metrics is not None and framework.post_filters:
                self.metrics.preemption_attempt(len(decision.victims))
            if decision.nominated_node is not None:
                await self._preempt(framework, pod, decision)
            await self._mark_unschedulable(framework, pod, decision.message, decision.nominated_node)
            self.queue.failed(pod, unschedulable=True)
            return
        if self.metrics is not None:
            self.metrics.algorithm_duration.observe(time.perf_counter() - start)
        status = framework.reserve(decision.state, pod, decision.node)
        if not status.ok:
            rejected = status.code in (Code.UNSCHEDULABLE, Code.UNSCHEDULABLE_AND_UNRESOLVABLE)
            self._attempt("unschedulable" if rejected else "error", framework, start)
            await self._mark_unschedulable(framework, pod, "; ".join(status.reasons))
            self.queue.failed(pod, unschedulable=False)
            return
        # As kube-scheduler's binding cycle: the pod counts on its node from now on, and the
        # next pod is decided while this one's binding transaction is in flight.
        assumed = {**pod, "spec": {**pod["spec"], "nodeName": decision.node}}
        self._binding[pod["metadata"]["uid"]] = assumed
        info = infos[decision.node]
        info.add_pod(assumed)
        if info.pods_with_affinity and info not in self._affinity_nodes:
            self._affinity_nodes.append(info)
        await self._bind_slots.acquire()
        task = asyncio.get_running_loop().create_task(self._bind(framework, pod, decision, start),
                                                      name=f"bind {ref(pod)}")
        self._bind_tasks.add(task)
        task.add_done_callback(self._bind_tasks.discard)

    async def _bind(self, framework: Framework, pod: Obj, decision: Decision, start: float) -> None:
        """The Bind plugins for a decided pod; a refusal (the pod changed, was deleted or
        out-bid since the decision, or this scheduler no longer leads) is undone and the pod
        decided again from fresh data. ``start``: when its attempt began."""
        assert decision.node is not None
        try:
            status = await framework.bind(decision.state, pod, decision.node, self)
        except OrchError as e:
            status = Status.error(str(e))
        finally:
            self._binding.pop(pod["metadata"]["uid"], None)
            self._bind_slots.release()
        if not status.ok:
            self._attempt("error", framework, start)
            log.info("binding pod %s to %s failed: %s", ref(pod), decision.node, "; ".join(status.reasons))
            framework.unreserve(decision.state, pod, decision.node)
            self.queue.failed(pod, unschedulable=False)
            self._wake.set()
            return
        self._attempt("scheduled", framework, start)
        entry = self.queue.done(pod)
        if entry is not None and self.metrics is not None:
            self.metrics.pod_scheduled(entry.attempts + 1, self.queue.clock() - entry.arrived)
        md = pod["metadata"]
        bound = self._assumed.get(md["uid"], pod)
        self._emit(framework, bound, NORMAL, "Scheduled",
                   f"Successfully assigned {md['namespace']}/{md['name']} to {decision.node}")

    # --- binding -------------------------------------------------------------------------------

    async def bind_pod(self, pod: Obj, node: str) -> Obj:
        """The framework Handle's binding: ``spec.nodeName`` and the PodScheduled condition,
        written with the node's ledger in one transaction, only if the pod is still at
        the revision the decision was made from and the node still has room."""
        bound = {**pod, "spec": {**pod["spec"], "nodeName": node}}
        status = dict(pod.get("status", {}))
        status["conditions"] = [c for c in status.get("conditions", []) if c.get("type") != "PodScheduled"]
        status["conditions"].append(_condition("True"))
        for gone in ("reason", "message", "nominatedNodeName"):
            status.pop(gone, None)
        bound["status"] = status
        entry = ledger_entry(pod)
        uid = pod["metadata"]["uid"]
        allocatable = self._allocatable(node)
        for attempt in range(BIND_ATTEMPTS):
            cached = self._allocations.get(node)
            allocation = cached if cached is not None else await self.store.get_allocation(node)
            on_node = self._infos[node].pods if node in self._infos else []
            ledger = reconcile_ledger(allocation, self.pods.cache, self.pods.revision, on_node)
            ledger.pop(uid, None)
            short = ledger_shortfall(ledger, entry, allocatable)
            if short:
                if cached is not None:
                    self._allocations.pop(node, None)  # perhaps stale: decide on a fresh read
                    continue
                raise NodeFullError(f'node "{node}" has no room left for pod {ref(pod)}: {", ".join(short)}')
            ledger[uid] = entry
            try:
                stored, written = await self.store.bind(bound, int(pod["metadata"]["resourceVersion"]),
                                                        NodeAllocation(node, ledger, allocation.revision))
            except AllocationConflict:
                self._allocations.pop(node, None)
                await asyncio.sleep(random.uniform(0, min(0.005 * 2 ** attempt, 0.2)))
                continue
            self._allocations[node] = written
            self._assumed[uid] = stored
            log.info("bound pod %s to node %s", ref(pod), node)
            return stored
        raise ConflictError(f'node "{node}": too many concurrent bindings, pod {ref(pod)} goes back to the queue')

    def _allocatable(self, node: str) -> tuple[int, int, int]:
        info = self._infos.get(node)
        if info is None:
            obj = self.nodes.cache.get(("", node))
            if obj is None:
                raise NotFoundError(f'nodes "{node}" not found')
            info = NodeInfo(obj)
        return info.allocatable

    # --- explaining, and preempting ----------------------------------------------------------

    async def _mark_unschedulable(self, framework: Framework, pod: Obj, message: str,
                                  nominated: str | None = None) -> None:
        """PodScheduled=False with the reason, and a FailedScheduling Event (counted, when repeated)."""
        self._emit(framework, pod, WARNING, "FailedScheduling", message)
        status = pod.get("status", {})
        same = any(c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("message") == message
                   for c in status.get("conditions", []))
        if same and (nominated is None or status.get("nominatedNodeName") == nominated):
            return
        new_status = dict(status)
        new_status["phase"] = "Pending"
        new_status["conditions"] = [c for c in status.get("conditions", []) if c.get("type") != "PodScheduled"]
        new_status["conditions"].append(_condition("False", "Unschedulable", message))
        if nominated is not None:
            new_status["nominatedNodeName"] = nominated
        try:
            await self.store.update({**pod, "status": new_status}, pod["metadata"]["resourceVersion"])
            log.info("pod %s unschedulable: %s", ref(pod), message)
        except (ConflictError, NotFoundError):
            pass

    async def _preempt(self, framework: Framework, pod: Obj, decision: Decision) -> None:
        """Delete the victims gracefully, each with a Preempted Event; the preemptor is retried
        once their deletion moves it back from the unschedulable queue."""
        for victim in decision.victims:
            md = victim["metadata"]
            try:
                await self.registry.delete(POD, md["namespace"], md["name"])
            except NotFoundError:
                continue
            except OrchError as e:
                log.warning("preempting pod %s for %s failed: %s", ref(victim), ref(pod), e)
                continue
            log.info("pod %s preempted by %s on node %s", ref(victim), ref(pod), decision.nominated_node)
            self._emit(framework, victim, NORMAL, "Preempted",
                       f"Preempted by {ref(pod)} on node {decision.nominated_node}")

    def _emit(self, framework: Framework, obj: Obj, type_: str, reason: str, message: str) -> None:
        """Queue an Event for the writer task: a binding never waits for its Event."""
        try:
            self._events.put_nowait((obj, type_, reason, message, framework.scheduler_name))
        except asyncio.QueueFull:
            # Best effort, as client-go's broadcaster: dropped, and said once per EVENT_DROP_REPORT seconds.
            self._events_dropped += 1
            now = time.monotonic()
            if now - self._drop_reported >= EVENT_DROP_REPORT:
                log.warning("%d event(s) dropped (%s about %s the last): %d events wait already",
                            self._events_dropped, reason, ref(obj), MAX_QUEUED_EVENTS)
                self._events_dropped, self._drop_reported = 0, now

    async def _write_events(self) -> None:
        """Write the queued Events: all that are waiting at once, new ones created together
        (``EventRecorder.record_many``), per component."""
        while True:
            waiting = [await self._events.get()]
            while not self._events.empty() and len(waiting) < MAX_OBJECTS_PER_TXN:
                waiting.append(self._events.get_nowait())
            by_component: dict[str, list[tuple[Obj, str, str, str]]] = defaultdict(list)
            for obj, type_, reason, message, component in waiting:
                by_component[component].append((obj, type_, reason, message))
            for component, items in by_component.items():
                recorder = self.recorders.get(component) or EventRecorder(self.store, component)
                await recorder.record_many(items)
