"""Controllers: Deployments (rolling updates, revision history), garbage collection, node lifecycle.

Each controller is a pure planning function over the informers' objects —
``plan_deployment(deployment, pods) -> DeploymentPlan``, ``plan_revisions``,
``plan_node`` and ``plan_evictions`` — and a loop that runs it for everything on
any change (a hint) and every ``resync`` seconds (the truth), then carries the plan
out through the registry. A crash, a missed event or a scheduler restart heals on
the next pass.

**Deployments.** Kubernetes keeps one ReplicaSet per pod template; orch keeps the
pods directly, labelled ``pod-template-hash``, and records each template it has had
as a ``ControllerRevision`` (``<deployment>-<hash>``, ``revision: N``, the template
in ``data.template``), owned by the Deployment. The current one's number is the
``deployment.kubernetes.io/revision`` annotation on the Deployment and on the pods
created from it. Going back to an older template (``rollout undo``, or re-applying
it) gives that revision the next number, as Kubernetes does with the old
ReplicaSet. ``revisionHistoryLimit`` unused revisions are kept; older ones go.

Rolling updates follow kube-controller-manager's arithmetic (``maxSurge`` rounds up,
``maxUnavailable`` down; both 0 means one may be unavailable): new pods are added
while the total stays within ``replicas + maxSurge``; old pods are removed, the
unready first, only while ``replicas - maxUnavailable`` pods stay ready. A pass
whose writes the pod cache has not seen yet waits for them (read your own writes:
the role of Kubernetes' controller expectations), so no pass removes a ready pod
twice on stale data.

**Nodes.** Agents' heartbeats renew ``kube-node-lease/<node>`` (scheduler/nodes.py).
A node whose lease this controller has not seen renewed for ``grace`` seconds is
``Ready=Unknown``; a node that is not Ready is tainted ``node.kubernetes.io/unreachable``
(Unknown) or ``node.kubernetes.io/not-ready`` (False), both ``NoSchedule`` and
``NoExecute``, and the taints go when it is Ready again. Pods on a ``NoExecute``-tainted
node are evicted (a graceful delete) at once when they do not tolerate the taint, or
after their toleration's ``tolerationSeconds`` (the registry gives every pod 300 s by
default, as Kubernetes' DefaultTolerationSeconds admission does). A node that is
unreachable cannot confirm that a pod stopped: once an evicted pod's grace period has
passed on such a node it is removed (Kubernetes' pod garbage collection), so its
Deployment's replacement counts alone.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apimachinery.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    OrchError,
    ValidationError,
)
from apimachinery.labels import selector_from_label_selector
from apimachinery.meta import (
    CONTROLLER_REVISION,
    DEPLOYMENT,
    NODE,
    NODE_LEASE_NAMESPACE,
    POD,
    Obj,
    now_rfc3339,
    ref,
)
from apimachinery.validation import validate_node_spec
from scheduler.events import NORMAL, WARNING, EventRecorder
from scheduler.informer import Informer, Loop
from scheduler.plugins import controller_uid, tolerates
from scheduler.registry import Registry
from scheduler.store import Store

log = logging.getLogger(__name__)

TEMPLATE_HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE_ANNOTATION = "kubernetes.io/change-cause"
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
TERMINAL = ("Succeeded", "Failed")
MAX_NAME_LENGTH = 253  # an object name is a DNS-1123 subdomain

TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
NODE_CONDITION_TAINTS = (TAINT_UNREACHABLE, TAINT_NOT_READY)


def template_hash(template: Obj) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def pod_ready(pod: Obj) -> bool:
    for c in pod.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def ready_for(pod: Obj, now: float) -> float | None:
    """Seconds the pod's Ready condition has been True (None when it is not)."""
    for c in pod.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            if c.get("status") != "True":
                return None
            since = _parse_time(str(c.get("lastTransitionTime", "")))
            return 0.0 if since is None else max(0.0, now - since.timestamp())
    return None


def pod_available(pod: Obj, min_ready_seconds: int, now: float) -> bool:
    """Kubernetes' availability: Ready for at least ``minReadySeconds``."""
    ready = ready_for(pod, now)
    return ready is not None and ready >= min_ready_seconds


def _terminating(pod: Obj) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _hash_of(pod: Obj) -> str | None:
    return pod["metadata"].get("labels", {}).get(TEMPLATE_HASH_LABEL)


# --- Deployments: the plan ------------------------------------------------------------


@dataclass(slots=True)
class DeploymentPlan:
    create: int = 0
    delete: list[Obj] = field(default_factory=list)
    status: Obj = field(default_factory=dict)
    # Seconds until a Ready pod reaches minReadySeconds and becomes available: plan again then.
    recheck_in: float | None = None


def _deletion_rank(pod: Obj) -> tuple[int, int, str]:
    """Which pods go first when scaling down: unscheduled, then not ready, then the newest."""
    scheduled = 1 if pod["spec"].get("nodeName") else 0
    ready = 1 if pod_ready(pod) else 0
    newest_first = "".join(chr(255 - ord(ch)) for ch in pod["metadata"].get("creationTimestamp", ""))
    return (scheduled, ready, newest_first)


def _scaled(value: int | str, total: int, round_up: bool) -> int:
    """An int-or-percent of ``total``: Kubernetes' GetScaledValueFromIntOrPercent."""
    if isinstance(value, int):
        return value
    amount = int(value.rstrip("%")) * total / 100
    return math.ceil(amount) if round_up else math.floor(amount)


def resolve_fenceposts(rolling_update: Mapping[str, Any] | None, replicas: int) -> tuple[int, int]:
    """``(maxSurge, maxUnavailable)`` as pod counts for ``replicas``: surge rounds up,
    unavailable rounds down, and when both come to 0 one pod may be unavailable (else
    the rollout could never move), as Kubernetes' ResolveFenceposts."""
    ru = rolling_update or {}
    surge = _scaled(ru.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = _scaled(ru.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, replicas) if replicas else unavailable


def plan_deployment(dep: Obj, owned: list[Obj], now: float | None = None) -> DeploymentPlan:
    """What to create and delete so that ``owned`` converges on the Deployment's spec.

    Pods of the current template are *new*, the others *old*. ``Recreate`` removes every
    old pod and creates new ones only once no old pod is left, terminating or not.
    ``RollingUpdate`` (the default) steps from old to new within ``maxSurge`` and
    ``maxUnavailable``, gated on the pods' availability: Ready for ``minReadySeconds``
    (by ``now``, default the clock).
    """
    now = time.time() if now is None else now
    spec = dep["spec"]
    min_ready = int(spec.get("minReadySeconds", 0))

    def available(pod: Obj) -> bool:
        return pod_available(pod, min_ready, now)

    replicas = int(spec.get("replicas", 1))
    current_hash = template_hash(spec["template"])
    strategy = spec.get("strategy") or {}
    plan = DeploymentPlan()
    new: list[Obj] = []
    old: list[Obj] = []
    old_terminating = False
    for pod in owned:
        if _terminating(pod):
            old_terminating = old_terminating or _hash_of(pod) != current_hash
            continue
        if pod.get("status", {}).get("phase") in TERMINAL:
            plan.delete.append(pod)
        elif _hash_of(pod) != current_hash:
            old.append(pod)
        else:
            new.append(pod)

    if len(new) > replicas:
        surplus = sorted(new, key=_deletion_rank)[: len(new) - replicas]
        plan.delete.extend(surplus)
        new = [p for p in new if p not in surplus]

    if strategy.get("type") == "Recreate":
        plan.delete.extend(old)
        if not old and not old_terminating:
            plan.create = replicas - len(new)
    elif not old:
        plan.create = replicas - len(new)
    else:
        surge, max_unavailable = resolve_fenceposts(strategy.get("rollingUpdate"), replicas)
        # Scale up the new pods within replicas + maxSurge.
        plan.create = max(0, min(replicas + surge - len(new) - len(old), replicas - len(new)))
        # Scale down the old ones: never below replicas - maxUnavailable available pods.
        min_available = replicas - max_unavailable
        new_available = sum(1 for p in new if available(p))
        all_pods = len(new) + plan.create + len(old)
        new_unavailable = len(new) + plan.create - new_available
        max_scaled_down = all_pods - min_available - new_unavailable
        ranked = sorted(old, key=_deletion_rank)
        unavailable_old = [p for p in ranked if not available(p)]
        cleanup = unavailable_old[: max(0, max_scaled_down)]
        available_now = new_available + sum(1 for p in old if available(p))
        available_old = [p for p in ranked if available(p)]
        scale_down = available_old[: max(0, available_now - min_available)]
        plan.delete.extend(cleanup + scale_down)

    deleted = {id(p) for p in plan.delete}
    left = [p for p in new + old if id(p) not in deleted]
    ready = sum(1 for p in left if pod_ready(p))
    available_left = sum(1 for p in left if available(p))
    waiting = [min_ready - r for p in left if (r := ready_for(p, now)) is not None and r < min_ready]
    plan.recheck_in = min(waiting) if waiting else None
    plan.status = {
        "observedGeneration": dep["metadata"].get("generation", 1),
        "replicas": len(left),
        "updatedReplicas": sum(1 for p in left if _hash_of(p) == current_hash),
        "readyReplicas": ready,
        "availableReplicas": available_left,
        "unavailableReplicas": max(0, replicas - available_left),
    }
    plan.status["conditions"], deadline_in = deployment_conditions(dep, plan.status, now)
    if deadline_in is not None:
        plan.recheck_in = deadline_in if plan.recheck_in is None else min(plan.recheck_in, deadline_in)
    return plan


# Kubernetes' Deployment condition reasons (pkg/controller/deployment/util).
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
RS_UPDATED = "ReplicaSetUpdated"
TIMED_OUT = "ProgressDeadlineExceeded"


def _made_progress(before: Obj, after: Obj) -> bool:
    """Kubernetes' DeploymentProgressing: more updated, ready or available pods than last
    time, fewer old ones, or a spec the controller had not seen."""
    def n(s: Obj, key: str) -> int:
        return int(s.get(key, 0))

    return (n(after, "observedGeneration") != n(before, "observedGeneration")
            or n(after, "updatedReplicas") > n(before, "updatedReplicas")
            or n(after, "readyReplicas") > n(before, "readyReplicas")
            or n(after, "availableReplicas") > n(before, "availableReplicas")
            or n(after, "replicas") - n(after, "updatedReplicas") < n(before, "replicas") - n(before, "updatedReplicas"))


def _condition(conditions: list[Obj], kind: str, status: str, reason: str, message: str, stamp: str,
               *, update: bool) -> Obj:
    """The condition ``kind`` as it is to be: lastTransitionTime moves only when its status
    changes, lastUpdateTime when ``update`` (progress made) or the reason changes."""
    old = next((c for c in conditions if c.get("type") == kind), None)
    same_status = old is not None and old.get("status") == status
    same_reason = same_status and old is not None and old.get("reason") == reason
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": old["lastUpdateTime"] if same_reason and not update and old and old.get(
                "lastUpdateTime") else stamp,
            "lastTransitionTime": old["lastTransitionTime"] if same_status and old and old.get(
                "lastTransitionTime") else stamp}


def deployment_conditions(dep: Obj, status: Obj, now: float) -> tuple[list[Obj], float | None]:
    """The Deployment's ``Available`` and ``Progressing`` conditions for ``status`` (what the
    controller is about to write), as Kubernetes' Deployment controller sets them, and the
    seconds until the progress deadline passes (None: no deadline pending).

    ``Available``: at least ``replicas - maxUnavailable`` pods available. ``Progressing``:
    True/NewReplicaSetAvailable once the rollout is complete; True/ReplicaSetUpdated, its
    lastUpdateTime moved, whenever the rollout made progress; False/ProgressDeadlineExceeded
    once ``progressDeadlineSeconds`` (default 600) passed since the last progress.
    """
    spec = dep["spec"]
    name = dep["metadata"]["name"]
    before = dep.get("status") or {}
    conditions: list[Obj] = list(before.get("conditions") or [])
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    replicas = int(spec.get("replicas", 1))
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate" or replicas == 0:
        max_unavailable = 0
    else:
        max_unavailable = resolve_fenceposts(strategy.get("rollingUpdate"), replicas)[1]
    if status["availableReplicas"] >= replicas - max_unavailable:
        available = _condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                               "Deployment has minimum availability.", stamp, update=False)
    else:
        available = _condition(conditions, "Available", "False", "MinimumReplicasUnavailable",
                               "Deployment does not have minimum availability.", stamp, update=False)

    deadline = int(spec.get("progressDeadlineSeconds", 600))
    complete = (status["updatedReplicas"] == replicas and status["replicas"] == replicas
                and status["availableReplicas"] == replicas)
    old = next((c for c in conditions if c.get("type") == "Progressing"), None)
    deadline_in: float | None = None
    if complete:
        progressing = _condition(conditions, "Progressing", "True", NEW_RS_AVAILABLE,
                                 f'Deployment "{name}" has successfully progressed.', stamp, update=False)
    elif old is None or _made_progress(before, status):
        progressing = _condition(conditions, "Progressing", "True", RS_UPDATED,
                                 f'Deployment "{name}" is progressing.', stamp, update=True)
        deadline_in = float(deadline)
    elif old.get("reason") in (TIMED_OUT, NEW_RS_AVAILABLE):
        # Timed out stays so until progress resumes; a rollout that completed does not time
        # out again (a pod lost later is Available's business) until the next rollout.
        progressing = old
    else:
        last = _parse_time(str(old.get("lastUpdateTime", ""))) or datetime.datetime.fromtimestamp(now, datetime.UTC)
        left = deadline - (now - last.timestamp())
        if left <= 0:
            progressing = _condition(conditions, "Progressing", "False", TIMED_OUT,
                                     f'Deployment "{name}" has timed out progressing.', stamp, update=True)
        else:
            progressing = {**old, "status": "True", "reason": RS_UPDATED,
                           "message": f'Deployment "{name}" is progressing.'}
            deadline_in = left
    others = [c for c in conditions if c.get("type") not in ("Available", "Progressing")]
    return [available, progressing, *others], deadline_in


def pod_from_template(dep: Obj, revision: int | None = None) -> Obj:
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
        "ownerReferences": [_owner_reference(dep)],
    }
    annotations = dict(template.get("metadata", {}).get("annotations") or {})
    if revision is not None:
        annotations[REVISION_ANNOTATION] = str(revision)
    if annotations:
        pod_md["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_md, "spec": template["spec"]}


def _owner_reference(dep: Obj) -> Obj:
    md = dep["metadata"]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": md["name"], "uid": md["uid"],
            "controller": True, "blockOwnerDeletion": True}


# --- Deployments: the revision history -------------------------------------------------


def revision_number(rev: Obj) -> int:
    try:
        return int(rev.get("revision", 0))
    except (TypeError, ValueError):
        return 0


def revision_name(dep: Obj, h: str) -> str:
    return f"{dep['metadata']['name'][: MAX_NAME_LENGTH - len(h) - 1]}-{h}"


def new_revision(dep: Obj, number: int) -> Obj:
    """The ControllerRevision recording the Deployment's current template as revision ``number``."""
    template = dep["spec"]["template"]
    h = template_hash(template)
    md: Obj = {
        "name": revision_name(dep, h),
        "namespace": dep["metadata"]["namespace"],
        "labels": {**template.get("metadata", {}).get("labels", {}), TEMPLATE_HASH_LABEL: h},
        "annotations": {REVISION_ANNOTATION: str(number)},
        "ownerReferences": [_owner_reference(dep)],
    }
    cause = dep["metadata"].get("annotations", {}).get(CHANGE_CAUSE_ANNOTATION)
    if cause:
        md["annotations"][CHANGE_CAUSE_ANNOTATION] = cause
    return {"apiVersion": CONTROLLER_REVISION.api_version, "kind": CONTROLLER_REVISION.kind, "metadata": md,
            "data": {"template": template}, "revision": number}


@dataclass(slots=True)
class RevisionPlan:
    number: int  # the current template's revision
    create: Obj | None = None
    renumber: Obj | None = None  # an older revision that is current again, with its new number
    delete: list[Obj] = field(default_factory=list)


def plan_revisions(dep: Obj, revisions: list[Obj], owned: list[Obj]) -> RevisionPlan:
    """The revision history of ``dep`` given its ControllerRevisions and pods.

    The current template gets a revision when it has none, or the next number when
    it is an older one come back; unused old revisions beyond ``revisionHistoryLimit``
    (the oldest first) are deleted. A revision some pod still has is never deleted.
    """
    h = template_hash(dep["spec"]["template"])
    highest = max((revision_number(r) for r in revisions), default=0)
    current = next((r for r in revisions if r["metadata"].get("labels", {}).get(TEMPLATE_HASH_LABEL) == h), None)
    plan = RevisionPlan(number=highest + 1)
    if current is None:
        plan.create = new_revision(dep, highest + 1)
    elif revision_number(current) < highest:
        again = json.loads(json.dumps(current))
        again["revision"] = highest + 1
        again["metadata"].setdefault("annotations", {})[REVISION_ANNOTATION] = str(highest + 1)
        plan.renumber = again
    else:
        plan.number = revision_number(current)
    limit = int(dep["spec"].get("revisionHistoryLimit", 10))
    in_use = {_hash_of(p) for p in owned}
    old = sorted((r for r in revisions if r is not current), key=revision_number)
    unused = [r for r in old if r["metadata"].get("labels", {}).get(TEMPLATE_HASH_LABEL) not in in_use]
    plan.delete = unused[: max(0, len(old) - limit)]
    return plan


# --- Deployments: the controller -------------------------------------------------------


DEPLOYMENT_OWNER = "deployment-owner"  # the pod informer's index of pods by their Deployment's uid


def deployment_owner_uid(pod: Obj) -> str | None:
    """The uid of the Deployment controlling ``pod`` (None: no Deployment owns it)."""
    for owner in pod["metadata"].get("ownerReferences") or ():
        if owner.get("controller") and owner.get("kind") == "Deployment":
            return str(owner.get("uid"))
    return None


class DeploymentController:
    def __init__(self, registry: Registry, deployments: Informer, pods: Informer,
                 revisions: Informer | None = None, resync: float = 10.0,
                 events: EventRecorder | None = None) -> None:
        self.registry = registry
        self.store: Store = registry.store
        self.deployments = deployments
        self.pods = pods
        self.revisions = revisions
        self.events = events
        # The pod revision this controller's last writes reached; a pass waits until the
        # pod informer has seen them (it would otherwise plan on pods it already changed).
        self._written = 0
        # The pods by owning Deployment: a pass reads its Deployments' pods, not every pod.
        pods.add_index(DEPLOYMENT_OWNER, deployment_owner_uid)
        informers = [deployments, pods] + ([revisions] if revisions is not None else [])
        self.loop = Loop("deployment controller", informers, self.reconcile_all, resync)

    def _wrote(self, obj: Obj | None) -> None:
        if obj is not None:
            self._written = max(self._written, int(obj["metadata"].get("resourceVersion") or 0))

    async def reconcile_all(self) -> None:
        if self.pods.revision < self._written:
            return  # our own writes are on their way to the cache; their events wake us again
        deps = {d["metadata"]["uid"]: d for d in self.deployments.items()}
        owned = {uid: self.pods.by_index(DEPLOYMENT_OWNER, uid) for uid in deps}
        orphans = [pod for owner in self.pods.index_values(DEPLOYMENT_OWNER) if owner not in deps
                   for pod in self.pods.by_index(DEPLOYMENT_OWNER, owner)]
        revisions: dict[str, list[Obj]] = {uid: [] for uid in deps}
        orphan_revisions: list[Obj] = []
        for rev in self.revisions.items() if self.revisions is not None else ():
            owner = controller_uid(rev)
            if owner in revisions:
                revisions[owner].append(rev)
            elif owner is not None:
                orphan_revisions.append(rev)
        for uid, dep in deps.items():
            await self._reconcile(dep, owned[uid], revisions[uid])
        # Garbage collection: the Deployment is gone, so are its pods and revisions (background cascade).
        for pod in orphans:
            if not pod["metadata"].get("deletionTimestamp") and await self._owner_gone(pod):
                await self._delete_pod(pod, "its Deployment was deleted")
        for rev in orphan_revisions:
            if await self._owner_gone(rev):
                try:
                    await self.store.delete(rev, expected_rv=int(rev["metadata"]["resourceVersion"]))
                except (NotFoundError, ConflictError):
                    pass

    async def _owner_gone(self, obj: Obj) -> bool:
        """Ask etcd, not the cache: a Deployment created a moment ago may not be cached yet."""
        for owner in obj["metadata"].get("ownerReferences", []):
            if owner.get("controller"):
                live = await self.store.get_or_none(DEPLOYMENT, obj["metadata"]["namespace"], owner["name"])
                return live is None or live["metadata"]["uid"] != owner.get("uid")
        return False

    async def _reconcile(self, dep: Obj, owned: list[Obj], revisions: list[Obj]) -> None:
        selector = selector_from_label_selector(dep["spec"]["selector"])
        owned = [p for p in owned if selector.matches(p["metadata"].get("labels", {}))]
        number = await self._sync_revisions(dep, owned, revisions)
        plan = plan_deployment(dep, owned)
        if plan.recheck_in is not None:
            self.loop.wake_after(plan.recheck_in)
        if plan.create > 0:
            await self._event(dep, NORMAL, "ScalingReplicaSet",
                              f"Creating {plan.create} pod(s) of revision {number or '?'}")
        for _ in range(max(0, plan.create)):
            pod = pod_from_template(dep, number)
            try:
                created = await self.registry.create(pod)
                self._wrote(created)
                log.info("deployment %s: created pod %s (revision %s)", ref(dep), created["metadata"]["name"],
                         number)
            except OrchError as e:
                # As kube's ReplicaSet controller: said on the Deployment (repeats only count up),
                # the others would fail alike, and the next pass tries again.
                log.warning("deployment %s: creating a pod failed: %s", ref(dep), e)
                await self._event(dep, WARNING, "FailedCreate", f"Error creating: {e}")
                break
        for pod in plan.delete:
            await self._delete_pod(pod, f"deployment {ref(dep)} has too many or outdated pods")
        annotations = dep["metadata"].get("annotations", {})
        status = {**dep.get("status", {}), **plan.status}
        if dep.get("status") != status or (number and annotations.get(REVISION_ANNOTATION) != str(number)):
            updated = {**dep, "status": status}
            if number:
                updated["metadata"] = {**dep["metadata"], "annotations": {**annotations,
                                                                          REVISION_ANNOTATION: str(number)}}
            try:
                await self.store.update(updated, dep["metadata"]["resourceVersion"])
            except (ConflictError, NotFoundError):
                pass  # the next pass recomputes from fresh data

    async def _sync_revisions(self, dep: Obj, owned: list[Obj], revisions: list[Obj]) -> int:
        """Bring the revision history up to date; the current template's revision number (0: unknown)."""
        if self.revisions is None:
            return 0
        plan = plan_revisions(dep, revisions, owned)
        try:
            if plan.create is not None:
                md = plan.create["metadata"]
                md.update(uid=secrets.token_hex(16), creationTimestamp=now_rfc3339())
                existing = await self.store.get_or_none(CONTROLLER_REVISION, md["namespace"], md["name"])
                if existing is None:
                    await self.store.create(plan.create)
                    log.info("deployment %s: revision %d recorded", ref(dep), plan.number)
                elif existing["metadata"].get("uid") and controller_uid(existing) == dep["metadata"]["uid"]:
                    return revision_number(existing)  # the cache was behind; next pass sees it
                else:
                    return 0
            elif plan.renumber is not None:
                await self.store.update(plan.renumber, plan.renumber["metadata"]["resourceVersion"])
                log.info("deployment %s: revision %d is current again as revision %d", ref(dep),
                         revision_number(next(r for r in revisions
                                              if r["metadata"]["name"] == plan.renumber["metadata"]["name"])),
                         plan.number)
            for rev in plan.delete:
                await self.store.delete(rev, expected_rv=int(rev["metadata"]["resourceVersion"]))
                log.info("deployment %s: revision %d dropped from the history", ref(dep), revision_number(rev))
        except (ConflictError, NotFoundError, AlreadyExistsError) as e:
            log.debug("deployment %s: revision history: %s; next pass", ref(dep), e)
        return plan.number

    async def _delete_pod(self, pod: Obj, why: str) -> None:
        md = pod["metadata"]
        try:
            self._wrote(await self.registry.delete(POD, md["namespace"], md["name"]))
            log.info("deleting pod %s: %s", ref(pod), why)
        except (NotFoundError, ConflictError):
            pass

    async def _event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        if self.events is not None:
            await self.events.record(obj, type_, reason, message)


# --- Node lifecycle: the plan -------------------------------------------------------------


def ready_condition(node: Obj) -> Obj | None:
    for c in node.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            return dict(c)
    return None


def desired_condition_taints(node: Obj, now: str) -> list[Obj]:
    """The node's taints with the not-ready/unreachable ones made to match its Ready condition.

    Unknown (or no condition) → unreachable; False → not-ready; True → neither. An
    existing taint keeps its ``timeAdded`` (eviction deadlines count from it).
    """
    cond = ready_condition(node)
    status = cond.get("status") if cond else "Unknown"
    wanted_key = {"True": None, "False": TAINT_NOT_READY}.get(str(status), TAINT_UNREACHABLE)
    taints = list(node.get("spec", {}).get("taints") or [])
    out = [t for t in taints if t.get("key") not in NODE_CONDITION_TAINTS or t.get("key") == wanted_key]
    if wanted_key is not None:
        for effect in ("NoSchedule", "NoExecute"):
            if not any(t.get("key") == wanted_key and t.get("effect") == effect for t in out):
                taint: Obj = {"key": wanted_key, "effect": effect}
                if effect == "NoExecute":
                    taint["timeAdded"] = now
                out.append(taint)
    return out


@dataclass(slots=True)
class NodePlan:
    mark_unknown: bool = False  # set Ready=Unknown: the lease lapsed
    taints: list[Obj] | None = None  # the node's new spec.taints, when they change


def plan_node(node: Obj, lease_age: float | None, grace: float, now: str) -> NodePlan:
    """What the lifecycle controller changes on ``node``: ``lease_age`` is how long ago
    the controller last saw its lease renewed (None: never seen at all)."""
    plan = NodePlan()
    cond = ready_condition(node)
    lapsed = lease_age is not None and lease_age > grace
    if lapsed and (cond is None or cond.get("status") != "Unknown"):
        plan.mark_unknown = True
        node = json.loads(json.dumps(node))
        _set_unknown(node, now)
    taints = desired_condition_taints(node, now)
    if taints != list(node.get("spec", {}).get("taints") or []):
        plan.taints = taints
    return plan


def _set_unknown(node: Obj, now: str) -> None:
    conds = node.setdefault("status", {}).setdefault("conditions", [])
    for c in conds:
        if c.get("type") == "Ready":
            c.update(status="Unknown", reason="NodeStatusUnknown", message="Agent stopped posting node status.",
                     lastTransitionTime=now)
            return
    conds.append({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                  "message": "Agent stopped posting node status.", "lastTransitionTime": now})


def _parse_time(text: str) -> datetime.datetime | None:
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
    return None


@dataclass(frozen=True, slots=True)
class Eviction:
    pod: Obj
    taint: Obj
    reason: str


def eviction_deadline(pod: Obj, taints: Iterable[Obj]) -> tuple[float | None, Obj | None]:
    """When ``pod`` must leave a node with these NoExecute taints, as Kubernetes' taint manager.

    ``(0, taint)``: at once (an untolerated taint); ``(t, taint)``: ``t`` seconds after
    the epoch, the earliest ``timeAdded + tolerationSeconds`` over the taints;
    ``(None, None)``: never (tolerated without a time limit).
    """
    tolerations = pod["spec"].get("tolerations") or ()
    earliest: tuple[float | None, Obj | None] = (None, None)
    for taint in taints:
        if taint.get("effect") != "NoExecute":
            continue
        matching = [t for t in tolerations if tolerates(t, taint)]
        if not matching:
            return 0.0, taint
        limits = [int(t["tolerationSeconds"]) for t in matching if t.get("tolerationSeconds") is not None]
        if not limits:
            continue  # tolerated for ever
        added = _parse_time(str(taint.get("timeAdded", ""))) if taint.get("timeAdded") else None
        start = added.timestamp() if added else 0.0
        at = start + max(0, min(limits))
        if earliest[0] is None or at < earliest[0]:
            earliest = (at, taint)
    return earliest


def plan_evictions(pods: Iterable[Obj], nodes: Mapping[str, Obj], now: float) -> tuple[list[Eviction], float | None]:
    """The pods to evict from NoExecute-tainted nodes at ``now`` (epoch seconds), and the
    next time another one falls due (None: none will)."""
    evict: list[Eviction] = []
    next_due: float | None = None
    for pod in pods:
        node = nodes.get(pod["spec"].get("nodeName") or "")
        if node is None or _terminating(pod) or pod.get("status", {}).get("phase") in TERMINAL:
            continue
        taints = [t for t in node.get("spec", {}).get("taints") or () if t.get("effect") == "NoExecute"]
        if not taints:
            continue
        at, taint = eviction_deadline(pod, taints)
        if at is None or taint is None:
            continue
        if at <= now:
            seconds = "" if at == 0 else " after its toleration's tolerationSeconds"
            evict.append(Eviction(pod, taint, f"node {node['metadata']['name']} has taint "
                                              f"{taint['key']}:{taint['effect']}{seconds}"))
        elif next_due is None or at < next_due:
            next_due = at
    return evict, next_due


def plan_pod_gc(pods: Iterable[Obj], nodes: Mapping[str, Obj], now: float) -> list[Obj]:
    """Pods being deleted on an unreachable node whose grace period is over: nothing will
    ever confirm that they stopped, so they are removed (Kubernetes' pod GC)."""
    out = []
    for pod in pods:
        md = pod["metadata"]
        node = nodes.get(pod["spec"].get("nodeName") or "")
        if node is None or not md.get("deletionTimestamp"):
            continue
        if not any(t.get("key") == TAINT_UNREACHABLE and t.get("effect") == "NoExecute"
                   for t in node.get("spec", {}).get("taints") or ()):
            continue
        deadline = _parse_time(str(md["deletionTimestamp"]))
        if deadline is not None and deadline.timestamp() <= now:
            out.append(pod)
    return out


# --- Node lifecycle: the controller -----------------------------------------------------


class NodeLifecycleController:
    """Watches node leases, marks lapsed nodes Unknown, keeps condition taints, evicts."""

    def __init__(self, store: Store, nodes: Informer, grace: float = 40.0, resync: float | None = None, *,
                 leases: Informer | None = None, pods: Informer | None = None,
                 registry: Registry | None = None, events: EventRecorder | None = None) -> None:
        self.store = store
        self.nodes = nodes
        self.leases = leases
        self.pods = pods
        self.registry = registry
        self.events = events
        self.grace = grace
        # Lease renewals are not hints (thousands a second on a large cluster): passes run on
        # node changes and on this resync, often enough to notice a lapse within the grace.
        resync = resync if resync is not None else max(0.2, min(5.0, grace / 4))
        self.loop = Loop("node lifecycle", [nodes], self.reconcile_all, resync)
        # node → (the renewTime last seen, monotonic time it was first seen). Kubernetes'
        # controller also measures lapses on its own clock: the nodes' clocks do not matter,
        # and a newly elected leader gives every node a full grace period.
        self._seen: dict[str, tuple[str | None, float]] = {}

    def lease_age(self, name: str, lease: Obj | None, now: float) -> float:
        renewed = str(lease["spec"].get("renewTime")) if lease else None
        seen = self._seen.get(name)
        if seen is None or seen[0] != renewed:
            self._seen[name] = (renewed, now)
            return 0.0
        return now - seen[1]

    async def reconcile_all(self) -> None:
        if self.leases is not None:
            await self.leases.synced.wait()
        mono = time.monotonic()
        now = now_rfc3339()
        leases = {}
        if self.leases is not None:
            leases = {lease["metadata"]["name"]: lease for lease in self.leases.items()
                      if lease["metadata"].get("namespace") == NODE_LEASE_NAMESPACE}
        nodes: dict[str, Obj] = {}
        for node in self.nodes.items():
            name = node["metadata"]["name"]
            age = self.lease_age(name, leases.get(name), mono) if self.leases is not None else None
            plan = plan_node(node, age, self.grace, now)
            if plan.mark_unknown or plan.taints is not None:
                node = await self._carry_out(node, plan, age) or node
            nodes[name] = node
        for name in set(self._seen) - set(nodes):
            del self._seen[name]
        if self.pods is not None and self.registry is not None:
            await self._evict(nodes)

    async def _carry_out(self, node: Obj, plan: NodePlan, age: float | None) -> Obj | None:
        name = node["metadata"]["name"]
        stamp = now_rfc3339()

        def mutate(n: Obj) -> Obj | None:
            if plan.mark_unknown:
                cond = ready_condition(n)
                if cond is not None and cond.get("status") == "Unknown":
                    pass
                else:
                    _set_unknown(n, stamp)
            taints = desired_condition_taints(n, stamp)
            if taints == list(n.get("spec", {}).get("taints") or []) and not plan.mark_unknown:
                return None
            n["spec"] = validate_node_spec({**n.get("spec", {}), "taints": taints})
            if not taints:
                n["spec"].pop("taints", None)
            return n

        try:
            updated = await self.store.update_with_retry(NODE, None, name, mutate)
        except (NotFoundError, ValidationError) as e:
            log.warning("node %s: could not update its condition taints: %s", name, e)
            return None
        if updated is None:
            return None
        if plan.mark_unknown:
            log.warning("node %s: lease not renewed for %.0fs, marked NotReady (Unknown)", name, age or 0)
            await self._event(updated, NORMAL, "NodeNotReady", f"Node {name} status is now: NodeNotReady")
        keys = sorted({t["key"] for t in updated.get("spec", {}).get("taints") or ()
                       if t.get("key") in NODE_CONDITION_TAINTS})
        log.info("node %s: condition taints now %s", name, keys or "none")
        return updated

    async def _evict(self, nodes: dict[str, Obj]) -> None:
        assert self.pods is not None and self.registry is not None
        tainted = {n: node for n, node in nodes.items()
                   if any(t.get("effect") == "NoExecute" for t in node.get("spec", {}).get("taints") or ())}
        if not tainted:
            return
        pods = [p for p in self.pods.items() if p["spec"].get("nodeName") in tainted]
        now = time.time()
        evictions, _ = plan_evictions(pods, tainted, now)
        for ev in evictions:
            md = ev.pod["metadata"]
            try:
                await self.registry.delete(POD, md["namespace"], md["name"])
            except (NotFoundError, ConflictError):
                continue
            log.warning("pod %s evicted: %s", ref(ev.pod), ev.reason)
            await self._event(ev.pod, NORMAL, "TaintManagerEviction", f"Marking for deletion Pod {ref(ev.pod)}")
        for pod in plan_pod_gc(pods, tainted, now):
            md = pod["metadata"]
            try:
                await self.store.delete(pod, expected_rv=int(md["resourceVersion"]))
            except (NotFoundError, ConflictError):
                continue
            log.warning("pod %s removed: its node %s is unreachable and its grace period is over",
                        ref(pod), pod["spec"].get("nodeName"))
            await self._event(pod, WARNING, "PodGCForceDeleted",
                              f"Forcibly deleted pod {ref(pod)}: node {pod['spec'].get('nodeName')} is unreachable")

    async def _event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        if self.events is not None:
            await self.events.record(obj, type_, reason, message)
