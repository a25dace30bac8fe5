"""Per-kind object logic on top of the store: what apply, delete and status reports mean.

The gRPC servicers and the controllers both go through here, so that an object
created by a controller obeys the same rules as one applied by a user.

* ``apply``: every document is validated before anything is written, and all of
  them are written in one etcd transaction: an invalid or conflicting document
  leaves etcd exactly as it was.
* Apply replaces what the user owns (``metadata.labels``, ``metadata.annotations``,
  ``spec``) and keeps what the server owns (uid, creationTimestamp, status). An
  explicit ``metadata.resourceVersion`` in the document is a precondition.
* Nothing is sent to etcd that etcd would refuse as too large (``--max-request-bytes``,
  1.5 MiB for a whole transaction): that is a ValidationError naming the objects, not an
  etcd error that would reach the client as UNAVAILABLE (and make it try another scheduler).
* Pod security admission (``podsecurity.py``): a Pod, or a Deployment's pod template,
  that its namespace's level does not allow is refused, every violation named. Only
  what would change is checked — a created Pod, a created Deployment or a changed
  template — so tightening a Namespace leaves what runs alone, as in Kubernetes; the
  Deployment controller's pods go through ``create`` and are checked there. Unlike
  Kubernetes, which only warns about a template, orch refuses it at apply: a template
  whose pods could never be created is better known at once than as FailedCreate.
* ``delete`` of a Pod bound to a node is graceful: the Pod is marked with
  ``deletionTimestamp``; its node stops it and reports, and only then is the key
  removed (``finalize_pod``).
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apimachinery.errors import ConflictError, FieldError, NotFoundError, OrchError, ValidationError
from apimachinery.meta import KINDS, NAMESPACE, NODE, POD, PRIORITY_CLASS, Kind, Obj, now_rfc3339, ref
from apimachinery.validation import MAX_GRACE_PERIOD_SECONDS, MAX_OBJECT_BYTES, validate, validate_node_spec
from scheduler import podsecurity
from scheduler.podcidr import release_pod_cidrs
from scheduler.store import Store, Write

log = logging.getLogger(__name__)

#: A delete re-reads and tries again when the object changed under it (kubectl's delete never conflicts).
DELETE_ATTEMPTS = 5

USER_OWNED_METADATA = ("labels", "annotations", "ownerReferences")
#: Annotations the controllers write (the Deployment's revision): kept when an applied
#: document does not set them, as kubectl apply's three-way merge keeps them.
SERVER_OWNED_ANNOTATION_PREFIXES = ("deployment.kubernetes.io/",)

#: Kubernetes' DefaultTolerationSeconds admission (kube-apiserver's
#: --default-not-ready-toleration-seconds / --default-unreachable-toleration-seconds).
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
DEFAULT_TOLERATION_SECONDS = 300


def default_tolerations(spec: dict[str, Any], not_ready_seconds: int | None = DEFAULT_TOLERATION_SECONDS,
                        unreachable_seconds: int | None = DEFAULT_TOLERATION_SECONDS) -> None:
    """Give a pod spec that does not tolerate them NoExecute tolerations of the not-ready and
    unreachable taints for a limited time, as Kubernetes' DefaultTolerationSeconds does: its
    pods leave a lost node after that long. A toleration with that key (or none) and effect
    NoExecute (or none) already counts. ``None``: add none."""
    tolerations = list(spec.get("tolerations") or [])
    added = False
    for key, seconds in ((TAINT_NOT_READY, not_ready_seconds), (TAINT_UNREACHABLE, unreachable_seconds)):
        if seconds is None:
            continue
        if any(t.get("key", "") in (key, "") and t.get("effect", "") in ("NoExecute", "") for t in tolerations):
            continue
        tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds})
        added = True
    if added:
        spec["tolerations"] = tolerations


#: What an etcd transaction costs beyond its values, per object: the key twice (its compare
#: and its put) and the fields that frame them; and once, for the request and a fence.
TXN_BYTES_PER_OBJECT = 64
TXN_BYTES_FIXED = 1024


def check_transaction_size(objs: list[Obj], key_of: Callable[[Obj], bytes]) -> None:
    """Raise a ValidationError when writing ``objs`` in one transaction would exceed
    etcd's request limit; ``key_of(obj)`` is the object's etcd key."""
    sizes = [len(json.dumps(o, sort_keys=True, separators=(",", ":")).encode()) for o in objs]
    framing = [2 * len(key_of(o)) + TXN_BYTES_PER_OBJECT for o in objs]
    total = TXN_BYTES_FIXED + sum(sizes) + sum(framing)
    if total <= MAX_OBJECT_BYTES:
        return
    if len(objs) == 1:
        raise ValidationError(FieldError("", f"the object is too large: {sizes[0]} bytes as stored; the most is "
                                             f"{MAX_OBJECT_BYTES - TXN_BYTES_FIXED - framing[0]} "
                                             "(etcd's request limit)"))
    raise ValidationError(FieldError("", f"the objects are too large to write together: {total} bytes as stored "
                                         f"(the largest {max(sizes)}); the most is {MAX_OBJECT_BYTES} (etcd's request "
                                         "limit): apply them in smaller groups"))


@dataclass(frozen=True, slots=True)
class ApplyResult:
    action: str  # created | configured | unchanged
    obj: Obj


def _describe(i: int, raw: Any) -> str:
    if isinstance(raw, dict):
        md = raw.get("metadata")
        name = md.get("name", "?") if isinstance(md, dict) else "?"
        return f"document {i} ({raw.get('kind', '?')}/{name})"
    return f"document {i}"


def _validate_all(raws: list[Any]) -> list[Obj]:
    """Validate every document; raise one ValidationError listing every problem in all of them."""
    errors: list[FieldError] = []
    out: list[Obj] = []
    seen: dict[tuple[str, str, str], int] = {}
    for i, raw in enumerate(raws):
        label = _describe(i, raw)
        try:
            if isinstance(raw, dict) and raw.get("kind") == "Node":
                raise ValidationError(FieldError("kind", "Node objects are written by node registration, not applied"))
            if isinstance(raw, dict) and raw.get("kind") == "Event":
                raise ValidationError(FieldError("kind", "Event objects are recorded by the cluster's components, "
                                                         "not applied"))
            obj = validate(raw)
        except ValidationError as e:
            errors.extend(FieldError(f"{label}: {fe.path}" if fe.path else label, fe.message) for fe in e.errors)
            continue
        md = obj["metadata"]
        key = (obj["kind"], md.get("namespace", ""), md["name"])
        if key in seen:
            errors.append(FieldError(f"{label}: metadata.name",
                                     f"{obj['kind']} {md['name']!r} is also document {seen[key]}"))
        seen[key] = i
        out.append(obj)
    if errors:
        raise ValidationError(errors)
    return out


def _new_object(obj: Obj) -> Obj:
    md = obj["metadata"]
    md.pop("resourceVersion", None)
    md["uid"] = str(uuid.uuid4())
    md["creationTimestamp"] = now_rfc3339()
    md["generation"] = 1
    for server_owned in ("deletionTimestamp", "deletionGracePeriodSeconds"):
        md.pop(server_owned, None)
    if obj["kind"] == "Pod":
        obj["status"] = {"phase": "Pending"}
    elif obj["kind"] == "Namespace":
        obj["status"] = {"phase": "Active"}  # never Terminating: deleting one removes only the object
    elif obj["kind"] != "PriorityClass":  # a PriorityClass has no status
        obj["status"] = {}
    return obj


PRIORITY_CLASS_FIELDS = ("description", "globalDefault", "preemptionPolicy")


def _merge_priority_class(current: Obj, applied: Obj) -> Obj:
    """A PriorityClass keeps its fields at the top level; its value cannot change, as in Kubernetes."""
    if applied["value"] != current["value"]:
        raise ValidationError(FieldError("value", "may not be changed in an update"))
    merged = copy.deepcopy(current)
    for field in USER_OWNED_METADATA:
        if field in applied["metadata"]:
            merged["metadata"][field] = applied["metadata"][field]
        elif field != "ownerReferences":
            merged["metadata"].pop(field, None)
    for field in PRIORITY_CLASS_FIELDS:
        if field in applied:
            merged[field] = applied[field]
        else:
            merged.pop(field, None)
    return merged


def _merge_applied(current: Obj, applied: Obj) -> Obj:
    if current["kind"] == "PriorityClass":
        return _merge_priority_class(current, applied)
    merged = copy.deepcopy(current)
    md = merged["metadata"]
    for field in USER_OWNED_METADATA:
        if field in applied["metadata"]:
            md[field] = applied["metadata"][field]
        elif field != "ownerReferences":
            md.pop(field, None)
    kept = {k: v for k, v in (current["metadata"].get("annotations") or {}).items()
            if k.startswith(SERVER_OWNED_ANNOTATION_PREFIXES) and k not in (md.get("annotations") or {})}
    if kept:
        md["annotations"] = {**(md.get("annotations") or {}), **kept}
    spec = _pod_spec_update(current, applied) if current["kind"] == "Pod" else applied["spec"]
    if spec != current["spec"]:
        merged["spec"] = spec
        md["generation"] = int(md.get("generation", 1)) + 1
    return merged


def _pod_spec_update(current: Obj, applied: Obj) -> Obj:
    """A Pod's spec is fixed once created, as in Kubernetes; re-applying it unchanged is fine.

    The scheduler sets ``spec.nodeName``, so a manifest without one still matches.
    """
    cur, new = current["spec"], applied["spec"]
    bound = cur.get("nodeName")
    if not new.get("nodeName") and bound:
        new = {**new, "nodeName": bound}
    if new == cur:
        return cur
    changed = sorted(k for k in set(cur) | set(new) if cur.get(k) != new.get(k))
    raise ValidationError([
        FieldError(f"spec.{k}", "field is immutable: a Pod's spec cannot change after it is created; "
                                "delete and re-create the Pod, or use a Deployment")
        for k in changed
    ])


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pod_priority(spec: dict[str, Any], classes: dict[str, Obj], default: str | None) -> list[FieldError]:
    """Resolve a pod spec's priority in place; the problems, by field."""
    name = spec.get("priorityClassName") or default
    if name is None:
        return []  # priority 0 (or the one given), preemptionPolicy PreemptLowerPriority
    pc = classes.get(name)
    if pc is None:
        return [FieldError("spec.priorityClassName", f"no PriorityClass with name {name} was found")]
    value = int(pc["value"])
    if spec.get("priority") is not None and spec["priority"] != value:
        return [FieldError("spec.priority", f"the integer value of priority ({spec['priority']}) must not be "
                                            f"provided in pod spec; priority admission controller computed {value} "
                                            "from the given PriorityClass name")]
    spec["priorityClassName"] = name
    spec["priority"] = value
    spec.setdefault("preemptionPolicy", pc.get("preemptionPolicy") or "PreemptLowerPriority")
    return []


def keep_transition_times(current: list[Obj], reported: list[Obj]) -> list[Obj]:
    """``reported`` conditions, each keeping the ``lastTransitionTime`` it has in ``current``
    while its status is unchanged: the time says when the status last changed, not when
    a node last reported it (a node stamps every report; Ready's age is what rollouts and
    ``minReadySeconds`` go by)."""
    before = {c.get("type"): c for c in current}
    out = []
    for c in reported:
        old = before.get(c.get("type"))
        if old is not None and old.get("status") == c.get("status") and old.get("lastTransitionTime"):
            c = {**c, "lastTransitionTime": old["lastTransitionTime"]}
        out.append(c)
    return out


class Registry:
    def __init__(self, store: Store, *, not_ready_toleration_seconds: int | None = DEFAULT_TOLERATION_SECONDS,
                 unreachable_toleration_seconds: int | None = DEFAULT_TOLERATION_SECONDS) -> None:
        self.store = store
        self.not_ready_toleration_seconds = not_ready_toleration_seconds
        self.unreachable_toleration_seconds = unreachable_toleration_seconds

    def _admit(self, objs: list[Obj]) -> None:
        """Admission after validation: defaults that depend on the server's settings."""
        for obj in objs:
            if obj["kind"] == "Pod":
                default_tolerations(obj["spec"], self.not_ready_toleration_seconds,
                                    self.unreachable_toleration_seconds)

    async def _admit_priority(self, objs: list[Obj]) -> None:
        """Kubernetes' Priority admission: a pod's ``spec.priority`` (and its default
        ``preemptionPolicy``) come from the PriorityClass its ``priorityClassName`` names,
        or from the one marked ``globalDefault`` when it names none; and only one class
        may be the default. PriorityClasses applied in the same batch count."""
        if not any(o["kind"] in ("Pod", "PriorityClass") for o in objs):
            return
        stored, _ = await self.store.list(PRIORITY_CLASS)
        classes = {c["metadata"]["name"]: c for c in stored}
        classes.update({o["metadata"]["name"]: o for o in objs if o["kind"] == "PriorityClass"})
        defaults = sorted(n for n, c in classes.items() if c.get("globalDefault"))
        errors: list[FieldError] = []
        for i, obj in enumerate(objs):
            label = _describe(i, obj)
            if obj["kind"] == "PriorityClass" and obj.get("globalDefault") and len(defaults) > 1:
                other = next(n for n in defaults if n != obj["metadata"]["name"])
                errors.append(FieldError(f"{label}: globalDefault",
                                         f"PriorityClass {other} is already marked as default. Only one default "
                                         "can exist"))
            elif obj["kind"] == "Pod":
                errors.extend(FieldError(f"{label}: {fe.path}", fe.message)
                              for fe in _pod_priority(obj["spec"], classes, defaults[0] if defaults else None))
        if errors:
            raise ValidationError(errors)

    async def _pod_security_errors(self, objs: list[Obj], batch: list[Obj]) -> list[list[FieldError]]:
        """Pod security admission: for each of ``objs`` (Pods, Deployments) the FieldErrors of
        what its namespace's level forbids. The level is read from etcd now, not from a cache;
        a Namespace in ``batch`` (the same apply) counts as it will be."""
        applied = {o["metadata"]["name"]: o for o in batch if o["kind"] == "Namespace"}
        levels: dict[str, str] = {}
        out = []
        for obj in objs:
            namespace = obj["metadata"]["namespace"]
            if namespace not in levels:
                ns = applied.get(namespace) or await self.store.get_or_none(NAMESPACE, None, namespace)
                levels[namespace] = podsecurity.level_of(ns)
            out.append(podsecurity.errors(obj, levels[namespace], namespace))
        return out

    async def _admit_pod_security(self, checked: list[tuple[int, Obj]], batch: list[Obj]) -> None:
        """Refuse the apply if any of ``checked`` (document index, object) breaks its namespace's level."""
        found = await self._pod_security_errors([o for _, o in checked], batch)
        errors = [FieldError(f"{_describe(i, obj)}: {fe.path}", fe.message)
                  for (i, obj), problems in zip(checked, found, strict=True) for fe in problems]
        if errors:
            raise ValidationError(errors)

    # --- apply -------------------------------------------------------------

    async def apply(self, raws: list[Any], *, dry_run: bool = False) -> list[ApplyResult]:
        objs = _validate_all(raws)
        self._admit(objs)
        await self._admit_priority(objs)
        results: list[ApplyResult] = []
        writes: list[Write] = []
        # What pod security admission looks at: new Pods and Deployments, changed templates.
        checked: list[tuple[int, Obj]] = []
        for i, obj in enumerate(objs):
            kind = KINDS[obj["kind"]]
            md = obj["metadata"]
            current = await self.store.get_or_none(kind, md.get("namespace"), md["name"])
            precondition = md.get("resourceVersion")
            if current is None:
                if precondition:
                    raise ConflictError(
                        f'Operation cannot be fulfilled on {kind.plural} "{md["name"]}": the object has been deleted'
                        f" (resourceVersion {precondition} given)")
                new = _new_object(obj)
                results.append(ApplyResult("created", new))
                writes.append(Write(new, 0))
                if kind.kind in ("Pod", "Deployment"):
                    checked.append((i, new))
                continue
            current_rv = int(current["metadata"]["resourceVersion"])
            if precondition and int(precondition) != current_rv:
                raise ConflictError(
                    f'Operation cannot be fulfilled on {kind.plural} "{md["name"]}": the object has been modified '
                    f"(resourceVersion {current_rv}, applied {precondition}); "
                    "please apply your changes to the latest version and try again")
            if current["metadata"].get("deletionTimestamp"):
                raise ConflictError(f'{kind.plural} "{md["name"]}" is being deleted; wait for it to go, then apply')
            merged = _merge_applied(current, obj)
            if merged == current:
                results.append(ApplyResult("unchanged", current))
                continue
            results.append(ApplyResult("configured", merged))
            writes.append(Write(merged, current_rv))
            if kind.kind == "Deployment" and merged["spec"].get("template") != current["spec"].get("template"):
                checked.append((i, merged))
        await self._admit_pod_security(checked, objs)
        if not writes:
            return results
        # Dry runs too: a dry run says whether the real apply would go through.
        check_transaction_size([w.obj for w in writes], self.store.key_of)
        if dry_run:
            return results
        stored = await self.store.write(writes)
        by_key = {self.store.key_of(o): o for o in stored}
        return [ApplyResult(r.action, by_key.get(self.store.key_of(r.obj), r.obj)) for r in results]

    async def create(self, obj: Obj) -> Obj:
        """Create one object (validated and admitted like an applied one); for controllers.

        A pod its namespace's pod security level forbids (the namespace was tightened after
        its Deployment was applied) is a ValidationError naming the fields, for the
        controller to report."""
        (valid,) = _validate_all([obj])
        self._admit([valid])
        await self._admit_priority([valid])
        (problems,) = await self._pod_security_errors([valid], [])
        if problems:
            raise ValidationError(problems)
        return await self.store.create(_new_object(valid))

    # --- delete ------------------------------------------------------------

    async def delete(self, kind: Kind, namespace: str | None, name: str,
                     grace_period_seconds: int | None = None) -> Obj:
        conflicts = 0
        while True:
            obj = await self.store.get(kind, namespace, name)
            try:
                if kind is POD:
                    return await self._delete_pod(obj, grace_period_seconds)
                await self.store.delete(obj, expected_rv=int(obj["metadata"]["resourceVersion"]))
            except ConflictError:
                # Changed between our read and our write (a pod bound meanwhile, a status
                # written): a delete is not an update, so it goes on with what is there now.
                conflicts += 1
                if conflicts == DELETE_ATTEMPTS:
                    raise
                continue
            log.info("deleted %s %s", kind.kind, ref(obj))
            if kind is NODE:
                await self._release_pod_cidrs(name)
            return obj

    async def _release_pod_cidrs(self, node_name: str) -> None:
        """Free a deleted node's pod CIDR for the next node. The Node is gone already, so a
        failure here is no failure of the delete: the block is stale, and the next node
        that finds no free block takes it over (scheduler/podcidr.py)."""
        try:
            await release_pod_cidrs(self.store, node_name)
        except OrchError as e:
            log.warning("node %s deleted, but its pod CIDR claim stays until a node takes it over: %s",
                        node_name, e)

    async def _delete_pod(self, pod: Obj, grace: int | None) -> Obj:
        node_name = pod["spec"].get("nodeName")
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        # A pod stored before the cap existed may ask for more than a date can hold.
        grace = min(grace, MAX_GRACE_PERIOD_SECONDS)
        node = await self.store.get_or_none(NODE, None, node_name) if node_name else None
        if node is None:
            # Never reached a node (or the node is gone): nothing runs it, remove it now.
            await self.store.delete(pod, expected_rv=int(pod["metadata"]["resourceVersion"]))
            log.info("deleted pod %s (not running on any node)", ref(pod))
            return pod

        def mark(p: Obj) -> Obj | None:
            md = p["metadata"]
            if md.get("deletionTimestamp") and int(md.get("deletionGracePeriodSeconds", 0)) <= grace:
                return None
            deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=grace)
            md["deletionTimestamp"] = deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
            md["deletionGracePeriodSeconds"] = grace
            return p

        md = pod["metadata"]
        updated = await self.store.update_with_retry(POD, md["namespace"], md["name"], mark)
        log.info("pod %s marked for deletion (grace %ss) on node %s", ref(pod), grace, node_name)
        return updated or pod

    async def finalize_pod(self, node_name: str, namespace: str, name: str, uid: str) -> bool:
        """Remove a pod whose node reports it stopped and cleaned up.

        Only a pod marked for deletion, bound to that node, with that uid; the delete is
        guarded by the revision read.
        """
        for _ in range(8):
            pod = await self.store.get_or_none(POD, namespace, name)
            if pod is None or pod["metadata"].get("uid") != uid:
                return False
            if pod["spec"].get("nodeName") != node_name or not pod["metadata"].get("deletionTimestamp"):
                log.warning("node %s reported pod %s/%s removed, but it is %s; ignored", node_name, namespace,
                            name, "not being deleted" if pod["spec"].get("nodeName") == node_name
                            else f"bound to {pod['spec'].get('nodeName')!r}")
                return False
            try:
                await self.store.delete(pod, expected_rv=int(pod["metadata"]["resourceVersion"]))
                log.info("pod %s/%s removed after its node stopped it", namespace, name)
                return True
            except ConflictError:
                continue
        return False

    # --- nodes ---------------------------------------------------------------

    async def patch_node_spec(self, name: str, patch: Any) -> Obj:
        """Apply a JSON merge patch to a Node's spec (cordon, taints), validated whole and
        written with compare-and-swap on the latest copy (re-read on a lost race)."""
        if not isinstance(patch, dict):
            raise ValidationError(FieldError("spec", "the patch must be a JSON object"))

        def mutate(node: Obj) -> Obj | None:
            spec = validate_node_spec(merge_patch(node.get("spec") or {}, patch))
            if spec == (node.get("spec") or {}):
                return None
            node["spec"] = spec
            check_transaction_size([node], self.store.key_of)
            return node

        updated = await self.store.update_with_retry(NODE, None, name, mutate)
        return updated if updated is not None else await self.store.get(NODE, None, name)

    # --- status --------------------------------------------------------------

    async def update_pod_status(self, node_name: str, namespace: str, name: str, uid: str,
                                status: Obj) -> Obj | None:
        """Write the status a node reports, keeping the conditions the scheduler owns."""

        def mutate(pod: Obj) -> Obj | None:
            if pod["metadata"].get("uid") != uid:
                raise NotFoundError(f'pods "{name}" with uid {uid} not found')
            if pod["spec"].get("nodeName") != node_name:
                raise ConflictError(f'pods "{name}" is not bound to node {node_name}')
            current = pod.get("status", {})
            new = dict(status)
            scheduled = [c for c in current.get("conditions", []) if c.get("type") == "PodScheduled"]
            reported = [c for c in status.get("conditions", []) if c.get("type") != "PodScheduled"]
            new["conditions"] = scheduled + keep_transition_times(current.get("conditions", []), reported)
            if new == current:
                return None
            pod["status"] = new
            return pod

        return await self.store.update_with_retry(POD, namespace, name, mutate)


