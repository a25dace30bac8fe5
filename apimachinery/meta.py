"""Kinds the API serves and small helpers over Kubernetes-shaped objects (plain dicts)."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Kind:
    kind: str
    api_version: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()


POD = Kind("Pod", "v1", "pods", True, ("po", "pod"))
DEPLOYMENT = Kind("Deployment", "apps/v1", "deployments", True, ("deploy", "deployment"))
NODE = Kind("Node", "v1", "nodes", False, ("no", "node"))
# Namespaces stay implicit (a pod may go into one that has no object); a Namespace object
# exists to carry the namespace's labels, its pod security level above all.
NAMESPACE = Kind("Namespace", "v1", "namespaces", False, ("ns", "namespace"))
# Read-only through the API (validation does not accept it): the schedulers' leader
# election record, as kube-system/kube-scheduler is in Kubernetes (scheduler/leader.py).
LEASE = Kind("Lease", "coordination.k8s.io/v1", "leases", True, ("lease",))

# Written by the cluster's components (scheduler/events.py), never applied; they expire
# after an hour through an etcd lease, as kube-apiserver's --event-ttl does.
EVENT = Kind("Event", "v1", "events", True, ("ev", "event"))
PRIORITY_CLASS = Kind("PriorityClass", "scheduling.k8s.io/v1", "priorityclasses", False, ("pc", "priorityclass"))

# A Deployment's revision history, one per pod template it has had (written by the
# Deployment controller, read by `orchctl rollout history|undo`; scheduler/controllers.py).
CONTROLLER_REVISION = Kind("ControllerRevision", "apps/v1", "controllerrevisions", True, ("controllerrevision",))

#: Where each node's heartbeat Lease lives, as in Kubernetes.
NODE_LEASE_NAMESPACE = "kube-node-lease"

KINDS: dict[str, Kind] = {k.kind: k for k in (POD, DEPLOYMENT, NODE, NAMESPACE, LEASE, EVENT, PRIORITY_CLASS,
                                              CONTROLLER_REVISION)}

#: The Pod Security Standards' levels, loosest first; a Namespace chooses one with its
#: ``pod-security.kubernetes.io/enforce`` label (scheduler/podsecurity.py). A namespace
#: without the label, or without a Namespace object, is at ``baseline``.
POD_SECURITY_LEVELS = ("privileged", "baseline", "restricted")
POD_SECURITY_LABEL_PREFIX = "pod-security.kubernetes.io/"
POD_SECURITY_ENFORCE_LABEL = POD_SECURITY_LABEL_PREFIX + "enforce"
DEFAULT_POD_SECURITY_LEVEL = "baseline"


def kind_for(word: str) -> Kind | None:
    """The Kind for what a user typed: ``pods``, ``pod``, ``po``, ``Pod``, ``deploy`` …"""
    w = word.lower()
    for k in KINDS.values():
        if w in (k.kind.lower(), k.plural, *k.short_names):
            return k
    return None


_last_second: tuple[int, str] = (0, "")


def now_rfc3339() -> str:
    """Now, to the second, as Kubernetes writes timestamps. Formatted once per second: a
    scheduler binding hundreds of pods a second stamps each condition and Event."""
    global _last_second
    second = int(time.time())
    if second != _last_second[0]:
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _last_second[1]


def parse_rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def ref(obj: Obj) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects), for log lines and messages."""
    md = obj.get("metadata", {})
    ns = md.get("namespace")
    return f"{ns}/{md.get('name')}" if ns else str(md.get("name"))
