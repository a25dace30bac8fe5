"""The scheduling loop: Pending pods → their profile's framework → bind with a guarded etcd write.

The loop reads the pod and node informers, never etcd; a pass starts on any change
(a hint) and at least every ``resync`` seconds (the truth). A binding is an update
of the pod guarded by the revision the decision was made from, so a pod changed or
deleted meanwhile is never bound from stale data, and the same pod is never bound
twice. Bound pods are *assumed* on their node until the informer shows the binding,
so two decisions in a row never double-book a node.

A pod is scheduled by the profile its ``spec.schedulerName`` names. A pod naming a
profile this scheduler does not have is left alone, Pending, with no condition and
no event, as kube-scheduler leaves it: another scheduler may own that name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from apimachinery.errors import ConflictError, NotFoundError
from apimachinery.meta import Obj, now_rfc3339, ref
from apimachinery.validation import DEFAULT_SCHEDULER_NAME
from scheduler.framework import Decision, Framework, NodeInfo
from scheduler.informer import Informer, Loop
from scheduler.store import Store

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")


def is_pending(pod: Obj) -> bool:
    spec = pod["spec"]
    return (
        not spec.get("nodeName")
        and not pod["metadata"].get("deletionTimestamp")
        and pod.get("status", {}).get("phase", "Pending") == "Pending"
    )


def scheduler_name(pod: Obj) -> str:
    return str(pod["spec"].get("schedulerName") or DEFAULT_SCHEDULER_NAME)


def build_node_infos(nodes: list[Obj], pods: list[Obj]) -> dict[str, NodeInfo]:
    infos = {n["metadata"]["name"]: NodeInfo(n) for n in nodes}
    for pod in pods:
        node = pod["spec"].get("nodeName")
        if node in infos and pod.get("status", {}).get("phase") not in TERMINAL:
            infos[node].add_pod(pod)
    return infos


def _condition(status: str, reason: str = "", message: str = "") -> Obj:
    cond: Obj = {"type": "PodScheduled", "status": status, "lastTransitionTime": now_rfc3339()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


class SchedulingLoop:
    def __init__(self, store: Store, pods: Informer, nodes: Informer, profiles: Mapping[str, Framework],
                 resync: float = 5.0) -> None:
        self.store = store
        self.pods = pods
        self.nodes = nodes
        self.profiles = profiles
        # uid -> the bound pod as written, until the informer catches up.
        self._assumed: dict[str, Obj] = {}
        self.loop = Loop("scheduling loop", [pods, nodes], self.schedule_pending, resync)

    async def run(self) -> None:
        await self.loop.run()

    def _current_pods(self) -> list[Obj]:
        """The informer's pods, with assumed bindings laid over copies it has not caught up with."""
        pods = []
        for pod in self.pods.items():
            uid = pod["metadata"]["uid"]
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
        pods = self._current_pods()
        infos = build_node_infos(self.nodes.items(), pods)
        pending = sorted((p for p in pods if is_pending(p) and scheduler_name(p) in self.profiles),
                         key=lambda p: (-int(p["spec"].get("priority", 0)), p["metadata"]["creationTimestamp"]))
        for pod in pending:
            framework = self.profiles[scheduler_name(pod)]
            decision = framework.schedule(pod, list(infos.values()))
            if decision.node is None:
                await self._mark_unschedulable(pod, decision.message)
                continue
            bound = await self._reserve_and_bind(framework, pod, decision)
            if bound is not None:
                infos[decision.node].add_pod(bound)

    async def _reserve_and_bind(self, framework: Framework, pod: Obj, decision: Decision) -> Obj | None:
        """The decided pod bound, or None when a Reserve or Bind plugin refused (undone)."""
        assert decision.node is not None
        status = framework.reserve(decision.state, pod, decision.node)
        if not status.ok:
            await self._mark_unschedulable(pod, "; ".join(status.reasons))
            return None
        status = await framework.bind(decision.state, pod, decision.node, self)
        if not status.ok:
            # Changed or deleted since the decision: the next pass decides again from fresh data.
            log.info("binding pod %s to %s failed: %s", ref(pod), decision.node, "; ".join(status.reasons))
            framework.unreserve(decision.state, pod, decision.node)
            return None
        return self._assumed.get(pod["metadata"]["uid"])

    async def bind_pod(self, pod: Obj, node: str) -> Obj:
        """The framework Handle's binding: ``spec.nodeName`` and the PodScheduled condition,
        written only if the pod is still at the revision the decision was made from."""
        bound = {**pod, "spec": {**pod["spec"], "nodeName": node}}
        status = dict(pod.get("status", {}))
        status["conditions"] = [c for c in status.get("conditions", []) if c.get("type") != "PodScheduled"]
        status["conditions"].append(_condition("True"))
        status.pop("reason", None)
        status.pop("message", None)
        bound["status"] = status
        stored = await self.store.update(bound, pod["metadata"]["resourceVersion"])
        self._assumed[stored["metadata"]["uid"]] = stored
        log.info("bound pod %s to node %s", ref(pod), node)
        return stored

    async def _mark_unschedulable(self, pod: Obj, message: str) -> None:
        status = pod.get("status", {})
        for c in status.get("conditions", []):
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("message") == message:
                return
        new_status = dict(status)
        new_status["phase"] = "Pending"
        new_status["conditions"] = [c for c in status.get("conditions", []) if c.get("type") != "PodScheduled"]
        new_status["conditions"].append(_condition("False", "Unschedulable", message))
        try:
            await self.store.update({**pod, "status": new_status}, pod["metadata"]["resourceVersion"])
            log.info("pod %s unschedulable: %s", ref(pod), message)
        except (ConflictError, NotFoundError):
            pass

