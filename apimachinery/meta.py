"""Kinds the API serves and small helpers over Kubernetes-shaped objects (plain dicts)."""

from __future__ import annotations

import datetime
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
# Read-only through the API (validation does not accept it): the schedulers' leader
# election record, as kube-system/kube-scheduler is in Kubernetes (scheduler/leader.py).
LEASE = Kind("Lease", "coordination.k8s.io/v1", "leases", True, ("lease",))

KINDS: dict[str, Kind] = {k.kind: k for k in (POD, DEPLOYMENT, NODE, LEASE)}


def kind_for(word: str) -> Kind | None:
    """The Kind for what a user typed: ``pods``, ``pod``, ``po``, ``Pod``, ``deploy`` …"""
    w = word.lower()
    for k in KINDS.values():
        if w in (k.kind.lower(), k.plural, *k.short_names):
            return k
    return None


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def ref(obj: Obj) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects), for log lines and messages."""
    md = obj.get("metadata", {})
    ns = md.get("namespace")
    return f"{ns}/{md.get('name')}" if ns else str(md.get("name"))
