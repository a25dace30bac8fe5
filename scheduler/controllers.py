"""Controllers: Deployments (replicas from a template), garbage collection, node lifecycle.

Each controller is a pure planning function over the informers' objects —
``plan_deployment(deployment, pods) -> DeploymentPlan`` — and a loop that runs it
for everything on any change (a hint) and every ``resync`` seconds (the truth),
then carries the plan out through the registry. A crash, a missed event or a
scheduler restart heals on the next pass.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, field

from apimachinery.errors import ConflictError, NotFoundError, OrchError
from apimachinery.labels import selector_from_label_selector
from apimachinery.meta import DEPLOYMENT, NODE, POD, Obj, now_rfc3339, parse_rfc3339, ref
from scheduler.informer import Informer, Loop
from scheduler.plugins import controller_uid
from scheduler.registry import Registry
from scheduler.store import Store

log = logging.getLogger(__name__)

TEMPLATE_HASH_LABEL = "pod-template-hash"
TERMINAL = ("Succeeded", "Failed")
MAX_NAME_LENGTH = 253  # an object name is a DNS-1123 subdomain


def template_hash(template: Obj) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def pod_ready(pod: Obj) -> bool:
    for c in pod.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


@dataclass(slots=True)
class DeploymentPlan:
    create: int = 0
    delete: list[Obj] = field(default_factory=list)
    status: Obj = field(default_factory=dict)


def _deletion_rank(pod: Obj) -> tuple[int, int, str]:
    """Which pods go first when scaling down: unscheduled, then not ready, then the newest."""
    scheduled = 1 if pod["spec"].get("nodeName") else 0
    ready = 1 if pod_ready(pod) else 0
    newest_first = "".join(chr(255 - ord(ch)) for ch in pod["metadata"].get("creationTimestamp", ""))
    return (scheduled, ready, newest_first)


def plan_deployment(dep: Obj, owned: list[Obj]) -> DeploymentPlan:
    """What to create and delete so that ``owned`` converges on the Deployment's spec.

    Pods of an older template are replaced at once (the Recreate strategy); rolling
    updates gated on readiness come with the scheduling issue.
    """
    spec = dep["spec"]
    replicas = int(spec.get("replicas", 1))
    current_hash = template_hash(spec["template"])
    plan = DeploymentPlan()
    active: list[Obj] = []
    for pod in owned:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        if pod.get("status", {}).get("phase") in TERMINAL:
            plan.delete.append(pod)
        elif pod["metadata"].get("labels", {}).get(TEMPLATE_HASH_LABEL) != current_hash:
            plan.delete.append(pod)
        else:
            active.append(pod)
    if len(active) > replicas:
        surplus = sorted(active, key=_deletion_rank)[: len(active) - replicas]
        plan.delete.extend(surplus)
        active = [p for p in active if p not in surplus]
    plan.create = replicas - len(active)
    ready = sum(1 for p in active if pod_ready(p))
    plan.status = {
        "observedGeneration": dep["metadata"].get("generation", 1),
        "replicas": len([p for p in owned if not p["metadata"].get("deletionTimestamp")]),
        "updatedReplicas": len(active),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, replicas - ready),
    }
    return plan


def pod_from_template(dep: Obj) -> Obj:
    spec = dep["spec"]
    template = spec["template"]
    h = template_hash(template)
    md = dep["metadata"]
    labels = {**template.get("metadata", {}).get("labels", {}), TEMPLATE_HASH_LABEL: h}
    suffix = secrets.token_hex(3)[:5]
    # Cut the base, as Kubernetes cuts a generateName, so a long (valid) Deployment name
    # still gives a valid pod name; the random suffix keeps the names apart.
    base = f"{md['name']}-{h[:8]}-"[: MAX_NAME_LENGTH - len(suffix)]
    pod_md: Obj = {
        "name": base + suffix,
        "namespace": md["namespace"],
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": md["name"], "uid": md["uid"],
            "controller": True, "blockOwnerDeletion": True,
        }],
    }
    annotations = template.get("metadata", {}).get("annotations")
    if annotations:
        pod_md["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_md, "spec": template["spec"]}


class DeploymentController:
    def __init__(self, registry: Registry, deployments: Informer, pods: Informer, resync: float = 10.0) -> None:
        self.registry = registry
        self.store: Store = registry.store
        self.deployments = deployments
        self.pods = pods
        self.loop = Loop("deployment controller", [deployments, pods], self.reconcile_all, resync)

    async def reconcile_all(self) -> None:
        deps = {d["metadata"]["uid"]: d for d in self.deployments.items()}
        owned: dict[str, list[Obj]] = {uid: [] for uid in deps}
        orphans: list[Obj] = []
        for pod in self.pods.items():
            owner = controller_uid(pod)
            if owner is None:
                continue
            if owner in owned:
                owned[owner].append(pod)
            elif any(r.get("kind") == "Deployment" for r in pod["metadata"].get("ownerReferences", [])):
                orphans.append(pod)
        for uid, dep in deps.items():
            await self._reconcile(dep, owned[uid])
        # Garbage collection: the Deployment is gone, so are its pods (background cascade).
        for pod in orphans:
            if not pod["metadata"].get("deletionTimestamp") and await self._owner_gone(pod):
                await self._delete_pod(pod, "its Deployment was deleted")

    async def _owner_gone(self, pod: Obj) -> bool:
        """Ask etcd, not the cache: a Deployment created a moment ago may not be cached yet."""
        for owner in pod["metadata"].get("ownerReferences", []):
            if owner.get("controller"):
                live = await self.store.get_or_none(DEPLOYMENT, pod["metadata"]["namespace"], owner["name"])
                return live is None or live["metadata"]["uid"] != owner.get("uid")
        return False

    async def _reconcile(self, dep: Obj, owned: list[Obj]) -> None:
        selector = selector_from_label_selector(dep["spec"]["selector"])
        owned = [p for p in owned if selector.matches(p["metadata"].get("labels", {}))]
        plan = plan_deployment(dep, owned)
        for _ in range(max(0, plan.create)):
            pod = pod_from_template(dep)
            try:
                created = await self.registry.create(pod)
                log.info("deployment %s: created pod %s", ref(dep), created["metadata"]["name"])
            except OrchError as e:
                log.warning("deployment %s: creating a pod failed: %s", ref(dep), e)
        for pod in plan.delete:
            await self._delete_pod(pod, f"deployment {ref(dep)} has too many or outdated pods")
        if dep.get("status") != {**dep.get("status", {}), **plan.status}:
            try:
                await self.store.update({**dep, "status": {**dep.get("status", {}), **plan.status}},
                                        dep["metadata"]["resourceVersion"])
            except (ConflictError, NotFoundError):
                pass  # the next pass recomputes from fresh data

    async def _delete_pod(self, pod: Obj, why: str) -> None:
        md = pod["metadata"]
        try:
            await self.registry.delete(POD, md["namespace"], md["name"])
            log.info("deleting pod %s: %s", ref(pod), why)
        except (NotFoundError, ConflictError):
            pass


def heartbeat_age(node: Obj, now: datetime.datetime) -> float | None:
    for c in node.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready" and c.get("lastHeartbeatTime"):
            return (now - parse_rfc3339(c["lastHeartbeatTime"])).total_seconds()
    return None


class NodeLifecycleController:
    """A node whose agent stopped heartbeating for ``grace`` seconds becomes NotReady (Unknown)."""

    def __init__(self, store: Store, nodes: Informer, grace: float = 40.0, resync: float = 5.0) -> None:
        self.store = store
        self.nodes = nodes
        self.grace = grace
        self.loop = Loop("node lifecycle", [nodes], self.reconcile_all, resync)

    async def reconcile_all(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        for node in self.nodes.items():
            age = heartbeat_age(node, now)
            if age is None or age <= self.grace:
                continue

            def mark(n: Obj) -> Obj | None:
                conds = n.get("status", {}).get("conditions", [])
                for c in conds:
                    if c.get("type") == "Ready":
                        if c.get("status") == "Unknown":
                            return None
                        c.update(status="Unknown", reason="NodeStatusUnknown",
                                 message="Agent stopped posting node status.", lastTransitionTime=now_rfc3339())
                return n

            try:
                if await self.store.update_with_retry(NODE, None, node["metadata"]["name"], mark):
                    log.warning("node %s: no heartbeat for %.0fs, marked NotReady", node["metadata"]["name"], age)
            except NotFoundError:
                pass


