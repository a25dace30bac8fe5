"""The pure part of ``orchctl rollout``, ``scale`` and ``drain``: kubectl's rules and words
over plain objects, with no client, so that they are unit-tested as they are.

* ``rollout_status``: kubectl's DeploymentStatusViewer — is the rollout done, and if
  not, the line that says what it waits for.
* ``owned_revisions`` / ``choose_revision``: a Deployment's history (its
  ControllerRevisions, written by the Deployment controller) and the one ``undo`` goes to.
* ``drain_plan``: which pods a drain deletes, and which it refuses (kubectl's rule:
  a pod no controller would re-create is lost for good, so it takes ``--force``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE_ANNOTATION = "kubernetes.io/change-cause"
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"


class RolloutError(Exception):
    """A history request that cannot be met (no such revision, no history), or a rollout
    that exceeded its progress deadline."""


def _md(obj: Obj) -> dict[str, Any]:
    md = obj.get("metadata")
    return md if isinstance(md, dict) else {}


def rollout_status(dep: Obj) -> tuple[str, bool]:
    """kubectl's message for a Deployment's rollout, and whether it is complete; RolloutError
    once the rollout exceeded its progress deadline (``Progressing`` False,
    ``ProgressDeadlineExceeded``), as kubectl fails then."""
    name = _md(dep).get("name", "")
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    if int(_md(dep).get("generation", 1)) > int(status.get("observedGeneration", 0)):
        return "Waiting for deployment spec update to be observed...", False
    progressing: Obj = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        raise RolloutError(f'deployment "{name}" exceeded its progress deadline')
    replicas = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas", 0))
    total = int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    if updated < replicas:
        return (f'Waiting for deployment "{name}" rollout to finish: {updated} out of {replicas} new replicas '
                "have been updated..."), False
    if total > updated:
        return (f'Waiting for deployment "{name}" rollout to finish: {total - updated} old replicas are pending '
                "termination..."), False
    if available < updated:
        return (f'Waiting for deployment "{name}" rollout to finish: {available} of {updated} updated replicas '
                "are available..."), False
    return f'deployment "{name}" successfully rolled out', True


def revision_of(obj: Obj) -> int:
    try:
        return int(obj.get("revision", _md(obj).get("annotations", {}).get(REVISION_ANNOTATION, 0)))
    except (TypeError, ValueError):
        return 0


def owned_revisions(dep: Obj, revisions: Iterable[Obj]) -> list[Obj]:
    """``dep``'s ControllerRevisions, oldest first."""
    uid = _md(dep).get("uid")
    mine = [r for r in revisions
            if any(o.get("controller") and o.get("uid") == uid for o in _md(r).get("ownerReferences") or [])]
    return sorted(mine, key=revision_of)


def current_revision(dep: Obj) -> int:
    try:
        return int((_md(dep).get("annotations") or {}).get(REVISION_ANNOTATION, 0))
    except (TypeError, ValueError):
        return 0


def choose_revision(dep: Obj, revisions: list[Obj], to_revision: int = 0) -> Obj:
    """The revision ``rollout undo`` goes back to: ``to_revision``, or the one before the current."""
    name = _md(dep).get("name", "")
    if to_revision:
        for r in revisions:
            if revision_of(r) == to_revision:
                return r
        raise RolloutError(f"unable to find specified revision {to_revision} in history")
    current = current_revision(dep)
    older = [r for r in revisions if revision_of(r) != current and (not current or revision_of(r) < current)]
    if not older:
        raise RolloutError(f'no rollout history found for deployment "{name}"' if not revisions
                           else f'no previous revision of deployment "{name}" to roll back to')
    return older[-1]


def history_table(revisions: list[Obj]) -> str:
    rows = [("REVISION", "CHANGE-CAUSE")]
    for r in revisions:
        cause = (_md(r).get("annotations") or {}).get(CHANGE_CAUSE_ANNOTATION) or "<none>"
        rows.append((str(revision_of(r)), cause))
    width = max(len(a) for a, _ in rows) + 2
    return "\n".join(f"{a:<{width}}{b}" for a, b in rows)


# --- drain ---------------------------------------------------------------------------------


@dataclass(slots=True)
class DrainPlan:
    delete: list[Obj] = field(default_factory=list)
    unmanaged: list[Obj] = field(default_factory=list)  # no controller: refused without --force

    @staticmethod
    def names(pods: Iterable[Obj]) -> str:
        return ", ".join(f"{_md(p).get('namespace', '')}/{_md(p).get('name', '')}" for p in pods)


def drain_plan(node: str, pods: Iterable[Obj], *, force: bool = False) -> DrainPlan:
    """The pods a drain of ``node`` deletes. Finished pods always go; a pod that declares no
    controller only with ``force`` (kubectl's rule); pods already being deleted are waited
    for, not deleted again."""
    plan = DrainPlan()
    for pod in pods:
        if (pod.get("spec") or {}).get("nodeName") != node:
            continue
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        controlled = any(o.get("controller") for o in _md(pod).get("ownerReferences") or [])
        if not (finished or controlled or force):
            plan.unmanaged.append(pod)
        else:
            plan.delete.append(pod)
    return plan
