"""Per-kind object logic on top of the store: what apply, delete and status reports mean.

The gRPC servicers and the controllers both go through here, so that an object
created by a controller obeys the same rules as one applied by a user.

* ``apply``: every document is validated before anything is written, and all of
  them are written in one etcd transaction: an invalid or conflicting document
  leaves etcd exactly as it was.
* Apply replaces what the user owns (``metadata.labels``, ``metadata.annotations``,
  ``spec``) and keeps what the server owns (uid, creationTimestamp, status). An
  explicit ``metadata.resourceVersion`` in the document is a precondition.
* ``delete`` of a Pod bound to a node is graceful: the Pod is marked with
  ``deletionTimestamp``; its node stops it and reports, and only then is the key
  removed (``finalize_pod``).
"""

from __future__ import annotations

import copy
import datetime
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from apimachinery.errors import ConflictError, FieldError, NotFoundError, ValidationError
from apimachinery.meta import KINDS, NODE, POD, Kind, Obj, now_rfc3339, ref
from apimachinery.validation import validate
from scheduler.store import Store, Write

log = logging.getLogger(__name__)

#: A delete re-reads and tries again when the object changed under it (kubectl's delete never conflicts).
DELETE_ATTEMPTS = 5

USER_OWNED_METADATA = ("labels", "annotations", "ownerReferences")


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
    else:
        obj["status"] = {}
    return obj


def _merge_applied(current: Obj, applied: Obj) -> Obj:
    merged = copy.deepcopy(current)
    md = merged["metadata"]
    for field in USER_OWNED_METADATA:
        if field in applied["metadata"]:
            md[field] = applied["metadata"][field]
        elif field != "ownerReferences":
            md.pop(field, None)
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


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- apply -------------------------------------------------------------

    async def apply(self, raws: list[Any], *, dry_run: bool = False) -> list[ApplyResult]:
        objs = _validate_all(raws)
        results: list[ApplyResult] = []
        writes: list[Write] = []
        for obj in objs:
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
        if dry_run or not writes:
            return results
        stored = await self.store.write(writes)
        by_key = {self.store.key_of(o): o for o in stored}
        return [ApplyResult(r.action, by_key.get(self.store.key_of(r.obj), r.obj)) for r in results]

    async def create(self, obj: Obj) -> Obj:
        """Create one object (validated like an applied one); for controllers."""
        (valid,) = _validate_all([obj])
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
            return obj

    async def _delete_pod(self, pod: Obj, grace: int | None) -> Obj:
        node_name = pod["spec"].get("nodeName")
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
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
            new["conditions"] = scheduled + [c for c in status.get("conditions", []) if c.get("type") != "PodScheduled"]
            if new == current:
                return None
            pod["status"] = new
            return pod

        return await self.store.update_with_retry(POD, namespace, name, mutate)


