"""The node protocol servicer: registration, heartbeats, assignments and pod status.

Agents dial in; the scheduler never needs to reach a node. A heartbeat renews the
node's Lease (``kube-node-lease/<node>``, as kubelet's): one small compare-and-swap
write, and no write to the Node at all unless its Ready condition must change or its
status is older than ``NODE_STATUS_REFRESH`` seconds, so heartbeats of many nodes
neither churn the Node objects nor wake everything that watches them. The node
lifecycle controller (scheduler/controllers.py) reads the leases. Each agent holds one
``WatchAssignments`` stream, and every message on it is the node's whole desired
set of pods (from the pod informer), sent on any change to the node's pods and at
least every ``resync`` seconds, so an agent that missed one converges on the next.

**Pod network.** Registration gives a node its pod CIDR (scheduler/podcidr.py: a block
of ``--cluster-cidr`` claimed in etcd in the same transaction as the Node), returned
in ``RegisterResponse.pod_cidr``. A node left without one (no block free) is retried on
each heartbeat, so it gets one as soon as a block frees up. Every ``Assignments``
message also carries the node's own pod CIDR and the host-gateway routes to every
other node's (pod CIDR → InternalIP), from the node informer; a change to any node's
pod CIDR or InternalIP, or a node added or deleted, wakes every stream at once.
Heartbeat-only status writes change neither, so they wake nothing.

**Metrics address.** An agent that serves Prometheus metrics says where in
``RegisterRequest.metrics_endpoint`` (HOST:PORT, as Prometheus should reach it; a value
that is not one is refused with INVALID_ARGUMENT before anything is written). It is
kept beside the agent endpoint, in ``status.daemonEndpoints.metricsEndpoint``
(``{Address, Port}``), and the service discovery (scheduler/sd.py) lists it while the
node is Ready. A registration without one drops it.

**Node identity (Kubernetes' NodeRestriction and node authorizer).** On a server with
mutual TLS the caller's certificate says who it is (``apimachinery.pki.peer_identity``),
and every method checks it before it reads or writes anything:

* only a node — ``CN=system:node:<name>, O=system:nodes`` — may call NodeService; the
  admin, the scheduler, users, and a TLS client without a certificate are refused;
* a node acts only for itself: the ``node_name`` of Register, Heartbeat,
  WatchAssignments and ReportPodStatus must be the one in its certificate, so it can
  neither register, renew the lease of, read the pods of, nor report for another node;
* ReportPodStatus (status or ``removed``) only for a pod bound to it: the pod's
  ``spec.nodeName`` must be the certificate's node. The binding is read from the pods
  informer and, when the informer has not seen the pod bound (yet), from etcd: a
  report is refused only on etcd's word, never on a stale cache's. ``spec.nodeName``
  never changes once set (a Pod's spec is immutable), so a cached binding for the
  same uid is as good as etcd's. A report for a pod that no longer exists, or a uid
  that is not the stored pod's, is no forgery (the pod was deleted and maybe re-created
  elsewhere): it is passed on and changes nothing, as before. Behind this check,
  ``Registry.update_pod_status`` / ``finalize_pod`` compare ``spec.nodeName`` with the
  request's node inside their compare-and-swap, so nothing slips between read and write;
* Register may not *change* labels a node has no business setting, exactly
  NodeRestriction's rule: none under ``node-restriction.kubernetes.io/`` (the domain
  reserved for labels that admins set and that workloads may trust to steer pods onto
  nodes), and of the other ``kubernetes.io``/``k8s.io`` labels only kubelet's own
  (``kubernetes.io/hostname``, ``kubernetes.io/os``, ``kubernetes.io/arch``, the
  topology and instance-type labels, anything under ``kubelet.kubernetes.io/`` and
  ``node.kubernetes.io/``) — so ``node-role.kubernetes.io/control-plane`` is refused
  too. Labels outside those domains (``orch.dev/lab``, ``disk=ssd``) are free. A label
  resent with the value the Node already has is no change and passes (an admin may
  have set it); a registration never removes labels.
* **Taints**, as NodeRestriction decides: a node may not modify its taints, because
  removing one would steer pods it must not run onto it. Here that holds by
  construction: ``RegisterRequest`` has no taints and a registration keeps the stored
  spec (taints, cordon, pod CIDR) as it is. (Kubernetes lets a kubelet *create* its
  Node with taints, ``--register-with-taints``; orch's protocol offers no such thing,
  and an admin taints a Node through the Cluster API.)

A refusal is PERMISSION_DENIED (Kubernetes' Forbidden) naming the certificate's node
and what it claimed, is logged as a WARNING (who, which method, which node or pod) and
counted in ``NodeService.refusals``; the gRPC server metrics count it too
(``grpc_server_handled_total{grpc_service="orch.v1.NodeService",
grpc_code="PermissionDenied"}``). Nothing is written before the check passes.

Without a client certificate on a plaintext server (``--insecure``) there is no
identity and every call is allowed, as before mTLS; the scheduler warns about that
mode where it starts. A TLS connection without a client certificate is refused: it is
not the insecure mode, and no node connects that way.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import math
import platform
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn

import grpc

from apimachinery import pki
from apimachinery.errors import (
    AlreadyExistsError,
    ConflictError,
    FieldError,
    ForbiddenError,
    NotFoundError,
    OrchError,
    ValidationError,
)
from apimachinery.meta import (
    LEASE,
    NODE,
    NODE_LEASE_NAMESPACE,
    POD,
    Obj,
    now_rfc3339,
    parse_rfc3339,
)
from apimachinery.pb import node_pb2 as pb
from apimachinery.pb import node_pb2_grpc as pb_grpc
from apimachinery.quantity import format_cpu, format_memory
from apimachinery.validation import validate_node_identity
from scheduler.informer import Informer
from scheduler.podcidr import (
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_NODE_CIDR_MASK_SIZE,
    NETWORK_UNAVAILABLE,
    ClusterCidr,
    PodCidrAllocator,
    parse_pod_cidr,
    route_entry,
    routes,
)
from scheduler.registry import Registry
from scheduler.store import WatchEvent

log = logging.getLogger(__name__)

#: A Node's status (lastHeartbeatTime) is rewritten at least this often while its lease is
#: renewed every heartbeat (kubelet's nodeStatusReportFrequency is 5 minutes).
NODE_STATUS_REFRESH = 60.0

#: Node conditions the scheduler owns, not the agent: a registration keeps them.
SERVER_OWNED_CONDITIONS = (NETWORK_UNAVAILABLE,)


def now_micro() -> str:
    """A MicroTime, as a Lease's renewTime is in Kubernetes."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_lease(node_name: str, lease_duration: float, node_uid: str | None = None) -> Obj:
    now = now_micro()
    md: Obj = {"name": node_name, "namespace": NODE_LEASE_NAMESPACE}
    if node_uid:
        md["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}]
    return {"apiVersion": LEASE.api_version, "kind": LEASE.kind, "metadata": md,
            "spec": {"holderIdentity": node_name, "leaseDurationSeconds": math.ceil(lease_duration),
                     "acquireTime": now, "renewTime": now}}


def _resources(r: pb.Resources) -> dict[str, str]:
    return {"cpu": format_cpu(r.cpu_millis), "memory": format_memory(r.memory_bytes), "pods": str(r.pods)}


def _ready_condition(status: str, reason: str, message: str) -> Obj:
    now = now_rfc3339()
    return {"type": "Ready", "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now}


def node_from_registration(req: pb.RegisterRequest, current: Obj | None) -> Obj:
    """The Node an agent's registration describes, on top of ``current`` (the stored one, if
    any): the agent's status replaces the old one except for the conditions the scheduler
    owns; the spec (pod CIDR, taints, cordon) is kept. The pod network is added by
    ``PodCidrAllocator.assign``."""
    labels = {
        "kubernetes.io/hostname": req.node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
    }
    node: Obj = current or {"apiVersion": "v1", "kind": "Node", "metadata": {"name": req.node_name}, "spec": {}}
    kept = [c for c in node.get("status", {}).get("conditions", []) if c.get("type") in SERVER_OWNED_CONDITIONS]
    md = node["metadata"]
    # Labels an admin added stay; the agent's own labels win where both set one.
    md["labels"] = {**md.get("labels", {}), **labels, **dict(req.labels)}
    node["status"] = {
        "capacity": _resources(req.capacity),
        "allocatable": _resources(req.allocatable),
        "addresses": [{"type": a.type, "address": a.address} for a in req.addresses],
        "nodeInfo": {
            "kernelVersion": req.kernel_version,
            "kubeletVersion": req.agent_version,
            "operatingSystem": "linux",
            "architecture": labels["kubernetes.io/arch"],
            "cgroupDriver": req.cgroup_driver,
        },
        "conditions": [_ready_condition("True", "AgentReady", "orch-agent is posting ready status"), *kept],
    }
    endpoints: Obj = {}
    host, _, port = req.agent_endpoint.rpartition(":")
    if host and port.isdigit():
        # Where schedulers reach the agent's logs and exec (scheduler/proxy.py). Kubernetes
        # keeps the port only; the host is kept too, as an agent may listen on loopback.
        endpoints["kubeletEndpoint"] = {"Port": int(port), "Address": host.strip("[]")}
    metrics = metrics_endpoint(req.metrics_endpoint)
    if metrics is not None:
        # Where Prometheus scrapes the agent: the service discovery (scheduler/sd.py) lists it.
        endpoints["metricsEndpoint"] = metrics
    if endpoints:
        node["status"]["daemonEndpoints"] = endpoints
    return node


def metrics_endpoint(text: str) -> Obj | None:
    """``RegisterRequest.metrics_endpoint`` as ``{Address, Port}`` (None when empty); a value that
    is not HOST:PORT is refused: Prometheus could not scrape it."""
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(FieldError("metrics_endpoint", f"expected HOST:PORT with a port from 1 to 65535, "
                                                             f"got {text!r}"))
    return {"Address": host, "Port": int(port)}


# --- NodeRestriction: who may do what (pure decisions; the servicer only applies them) -----


class NodeRestrictionError(ForbiddenError):
    """A caller acting beyond what its certificate allows: PERMISSION_DENIED, Kubernetes'
    Forbidden."""


#: The label domain reserved to admins: nodes may never set labels under it, so a workload
#: that selects on it knows no node put itself there (Kubernetes' NodeRestriction).
RESTRICTED_LABEL_DOMAIN = "node-restriction.kubernetes.io"
#: The kubernetes.io / k8s.io labels a kubelet may set on its own Node (k8s.io/kubelet's
#: well_known_labels.go); every other label of those domains is refused to a node.
KUBELET_LABELS = frozenset({
    "kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch",
    "beta.kubernetes.io/os", "beta.kubernetes.io/arch",
    "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type", "node.kubernetes.io/instance-type",
})
KUBELET_LABEL_DOMAINS = ("kubelet.kubernetes.io", "node.kubernetes.io")


def _label_domain(key: str) -> str:
    prefix, slash, _ = key.partition("/")
    return prefix if slash else ""


def _in_domain(domain: str, suffix: str) -> bool:
    return domain == suffix or domain.endswith("." + suffix)


def node_may_set_label(key: str) -> bool:
    """Whether a node may set label ``key`` on itself (NodeRestriction's getForbiddenLabels)."""
    domain = _label_domain(key)
    if _in_domain(domain, RESTRICTED_LABEL_DOMAIN):
        return False
    if _in_domain(domain, "kubernetes.io") or _in_domain(domain, "k8s.io"):
        return key in KUBELET_LABELS or any(_in_domain(domain, d) for d in KUBELET_LABEL_DOMAINS)
    return True


def forbidden_labels(requested: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The labels of a registration that a node may not set, sorted. Only *changes* count, as
    in Kubernetes: a label resent with the value the Node has (an admin's) is no change."""
    return sorted(k for k, v in requested.items() if current.get(k) != v and not node_may_set_label(k))


def authorize_node(identity: pki.Identity | None, tls: bool, method: str, claimed: str) -> str | None:
    """The node the caller may act for, or None on a plaintext connection (``--insecure``:
    anything goes, as before mTLS). Raises NodeRestrictionError for a caller that is no
    node and for a node claiming another node's name."""
    if identity is None:
        if not tls:
            return None
        raise NodeRestrictionError(f"only nodes (group {pki.NODES_GROUP}) may call NodeService/{method}; "
                                   "a caller without a client certificate is not one")
    node = identity.node_name
    if node is None:
        raise NodeRestrictionError(f"only nodes (group {pki.NODES_GROUP}) may call NodeService/{method}; "
                                   f"{identity.user} is not one")
    if claimed != node:
        raise NodeRestrictionError(f"NodeService/{method}: node {node} (by its certificate) may act only for "
                                   f"itself, not for node {claimed!r}")
    return node


def authorize_pod_report(node: str, namespace: str, name: str, bound_to: str | None) -> None:
    """A node reports status for (or finalizes) only pods bound to it. ``bound_to``: the
    pod's ``spec.nodeName`` ("" unbound), None when there is no such pod (nothing to refuse:
    the report changes nothing)."""
    if bound_to is not None and bound_to != node:
        where = f"node {bound_to}" if bound_to else "no node"
        raise NodeRestrictionError(f"NodeService/ReportPodStatus: node {node} may report only for pods bound to "
                                   f"it; pod {namespace}/{name} is bound to {where}")


def _is_tls(context: grpc.aio.ServicerContext) -> bool:
    auth: Any = context.auth_context() or {}
    return list(auth.get("transport_security_type") or ()) == [b"ssl"]


class NodeService(pb_grpc.NodeServiceServicer):
    """``nodes``: the node informer, for the routes in Assignments and to spare heartbeats
    reads (without it, Assignments carry no routes). ``cluster_cidr``: where pod CIDRs
    come from (default 10.244.0.0/16 in /24 blocks)."""

    def __init__(self, registry: Registry, pods: Informer, heartbeat_interval: int = 5,
                 resync: float = 30.0, *, nodes: Informer | None = None, lease_duration: float = 40.0,
                 cluster_cidr: ClusterCidr | None = None) -> None:
        self.registry = registry
        self.store = registry.store
        self.pods = pods
        self.nodes = nodes
        self.pod_cidrs = PodCidrAllocator(
            self.store, cluster_cidr or ClusterCidr.parse(DEFAULT_CLUSTER_CIDR, DEFAULT_NODE_CIDR_MASK_SIZE),
            nodes=nodes)
        self.lease_duration = lease_duration
        # The last stored copy of each node's Lease: a renewal is one write guarded by it.
        self._leases: dict[str, Obj] = {}
        self.heartbeat_interval = heartbeat_interval
        self.resync = resync
        self._versions: dict[str, int] = defaultdict(int)
        # Each node's (pod CIDR, InternalIP); ``_routes_version`` counts its changes, which
        # concern every node's routes.
        self._route_table: dict[str, tuple[str, str]] = {}
        self._routes_version = 0
        # Every node's route, built once per ``_routes_version``: a node change sends a
        # message to every stream, and each takes this list less its own entry.
        self._routes: tuple[int, list[pb.NodeRoute]] = (-1, [])
        self._changed = asyncio.Condition()
        #: Calls refused by NodeRestriction, by (method, reason): see the module docstring.
        self.refusals: Counter[tuple[str, str]] = Counter()
        pods.add_listener(self._on_pod_event)
        if nodes is not None:
            nodes.add_listener(self._on_node_event)

    def _on_pod_event(self, ev: WatchEvent | None) -> None:
        if ev is None:
            for node in list(self._versions):
                self._versions[node] += 1
        else:
            node = ev.obj["spec"].get("nodeName")
            if not node:
                return
            self._versions[node] += 1
        asyncio.get_running_loop().create_task(self._notify())

    def _on_node_event(self, ev: WatchEvent | None) -> None:
        """Wake every stream when what routes depend on changed; not on heartbeat writes."""
        assert self.nodes is not None
        if ev is None:
            table = {n["metadata"]["name"]: route_entry(n) for n in self.nodes.items()}
        else:
            table = dict(self._route_table)
            if ev.type == "DELETED":
                table.pop(ev.obj["metadata"]["name"], None)
            else:
                table[ev.obj["metadata"]["name"]] = route_entry(ev.obj)
        if table == self._route_table:
            return
        self._route_table = table
        self._routes_version += 1
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- NodeRestriction ----------------------------------------------------

    async def _caller_node(self, context: grpc.aio.ServicerContext, method: str, claimed: str) -> str | None:
        """The node the caller is (None: plaintext server); aborts the call if it is no node
        or not the node it claims to be."""
        identity = pki.peer_identity(context)
        try:
            return authorize_node(identity, _is_tls(context), method, claimed)
        except NodeRestrictionError as e:
            await self._refuse(context, e, method, identity.user if identity else "(no client certificate)",
                               f"node {claimed!r}", "not a node" if identity is None or identity.node_name is None
                               else "other node")

    async def _refuse(self, context: grpc.aio.ServicerContext, error: NodeRestrictionError, method: str,
                      who: str, target: str, reason: str) -> NoReturn:
        """Log, count and end the call with PERMISSION_DENIED."""
        self.refusals[(method, reason)] += 1
        log.warning("NodeRestriction: refused NodeService/%s by %s for %s: %s", method, who, target, error)
        await context.abort(error.code, str(error))
        raise error  # not reached: abort raises (grpc ships no type hints that say so)

    async def _pod_bound_to(self, namespace: str, name: str, uid: str) -> str | None:
        """The node the pod with this uid is bound to ("" none), None when there is no such pod.
        The informer answers when it has the pod bound (a binding never changes); else etcd."""
        pod = self.pods.cache.get((namespace, name))
        if pod is not None and pod["metadata"].get("uid") == uid and pod["spec"].get("nodeName"):
            return str(pod["spec"]["nodeName"])
        pod = await self.store.get_or_none(POD, namespace, name)
        if pod is None or pod["metadata"].get("uid") != uid:
            return None
        return str(pod["spec"].get("nodeName") or "")

    # --- the node protocol ------------------------------------------------------

    async def Register(self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        caller = await self._caller_node(context, "Register", request.node_name)
        cidr = ""
        try:
            stored = await self.register(request, restrict_labels=caller is not None)
            cidr = str(stored.get("spec", {}).get("podCIDR") or "")
            log.info("node %s registered (pod CIDR %s)", request.node_name, cidr or "none")
            await self.renew_lease(request.node_name)
        except NodeRestrictionError as e:
            await self._refuse(context, e, "Register", f"node {caller}", f"node {request.node_name!r}",
                               "restricted label")
        except OrchError as e:
            await context.abort(e.code, str(e))
        return pb.RegisterResponse(heartbeat_interval_seconds=self.heartbeat_interval, pod_cidr=cidr)

    async def register(self, request: pb.RegisterRequest, *, restrict_labels: bool = False) -> Obj:
        """Create or rewrite the Node, with its pod CIDR; re-read when it changed meanwhile.
        A node name or label Kubernetes would refuse is refused (INVALID_ARGUMENT);
        ``restrict_labels`` (the caller is a node): so is a label a node may not set on
        itself (PERMISSION_DENIED), checked against the copy the write is guarded by."""
        validate_node_identity(request.node_name, dict(request.labels))
        for attempt in range(8):
            current = await self.store.get_or_none(NODE, None, request.node_name)
            if restrict_labels:
                self._check_labels(request, current)
            node = node_from_registration(request, current)
            if current is None:
                node["metadata"] = {**node["metadata"], "uid": str(uuid.uuid4()), "creationTimestamp": now_rfc3339()}
            rv = 0 if current is None else int(current["metadata"]["resourceVersion"])
            try:
                stored = await self.pod_cidrs.assign(node, rv, write=True)
            except (ConflictError, AlreadyExistsError):
                await asyncio.sleep(random.uniform(0, min(0.01 * 2 ** attempt, 0.5)))
                continue
            assert stored is not None  # write=True always writes
            return stored
        raise ConflictError(f'nodes "{request.node_name}": too many concurrent writers, gave up')

    @staticmethod
    def _check_labels(request: pb.RegisterRequest, current: Obj | None) -> None:
        have = (current or {}).get("metadata", {}).get("labels") or {}
        refused = forbidden_labels(dict(request.labels), have)
        if refused:
            raise NodeRestrictionError(
                f"NodeService/Register: node {request.node_name} may not set labels {', '.join(refused)}: nodes may "
                f"set no label under {RESTRICTED_LABEL_DOMAIN}/ and, of kubernetes.io and k8s.io labels, only "
                "kubelet's own (NodeRestriction); an admin sets these through the Cluster API")

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        def beat(node: Obj) -> Obj:
            conds = node.setdefault("status", {}).setdefault("conditions", [])
            ready = next((c for c in conds if c.get("type") == "Ready"), None)
            if ready is None or ready.get("status") != "True":
                conds[:] = [c for c in conds if c.get("type") != "Ready"]
                conds.append(_ready_condition("True", "AgentReady", "orch-agent is posting ready status"))
                log.info("node %s is Ready again", request.node_name)
            else:
                ready["lastHeartbeatTime"] = now_rfc3339()
            return node

        await self._caller_node(context, "Heartbeat", request.node_name)
        try:
            if self._needs_pod_cidr(request.node_name):
                await self.assign_pod_cidr(request.node_name)
            if self._node_status_due(request.node_name):
                await self.store.update_with_retry(NODE, None, request.node_name, beat)
            await self.renew_lease(request.node_name)
        except NotFoundError:
            return pb.HeartbeatResponse(known=False)
        except OrchError as e:
            await context.abort(e.code, str(e))
        return pb.HeartbeatResponse(known=True)

    def _needs_pod_cidr(self, name: str) -> bool:
        """Whether the node has no pod CIDR (as the cache has it; unknown: maybe)."""
        node = self.nodes.cache.get(("", name)) if self.nodes is not None else None
        return node is None or parse_pod_cidr(node.get("spec", {}).get("podCIDR")) is None

    async def assign_pod_cidr(self, name: str) -> Obj | None:
        """Give a registered node that has none a pod CIDR if one is free (or mark it
        NetworkUnavailable, if it is not yet); the stored Node when it changed."""
        for _ in range(4):
            node = await self.store.get(NODE, None, name)
            if parse_pod_cidr(node.get("spec", {}).get("podCIDR")) is not None:
                return None
            try:
                return await self.pod_cidrs.assign(node, int(node["metadata"]["resourceVersion"]), write=False)
            except ConflictError:
                continue
        raise ConflictError(f'nodes "{name}": too many concurrent writers, gave up')

    def _node_status_due(self, name: str) -> bool:
        """Whether this heartbeat must write the Node too: it is not Ready (in the cache),
        not cached at all, or its status is older than NODE_STATUS_REFRESH."""
        if self.nodes is None:
            return True
        node = self.nodes.cache.get(("", name))
        if node is None:
            return True
        ready = next((c for c in node.get("status", {}).get("conditions", []) if c.get("type") == "Ready"), None)
        if ready is None or ready.get("status") != "True" or not ready.get("lastHeartbeatTime"):
            return True
        try:
            beat = parse_rfc3339(ready["lastHeartbeatTime"])
        except ValueError:
            return True
        return (datetime.datetime.now(datetime.UTC) - beat).total_seconds() >= NODE_STATUS_REFRESH

    async def renew_lease(self, name: str) -> None:
        """Renew ``kube-node-lease/<name>``: one write guarded by the copy last stored,
        re-read (or created) when someone else changed it."""
        for _ in range(4):
            lease = self._leases.get(name) or await self.store.get_or_none(LEASE, NODE_LEASE_NAMESPACE, name)
            try:
                if lease is None:
                    node = await self.store.get(NODE, None, name)
                    stored = await self.store.create(
                        {**(fresh := node_lease(name, self.lease_duration, node["metadata"].get("uid"))),
                         "metadata": {**fresh["metadata"], "uid": str(uuid.uuid4()),
                                      "creationTimestamp": now_rfc3339()}})
                else:
                    renewed = {**lease, "spec": {**lease["spec"], "renewTime": now_micro(),
                                                 "leaseDurationSeconds": math.ceil(self.lease_duration)}}
                    stored = await self.store.update(renewed, lease["metadata"]["resourceVersion"])
                self._leases[name] = stored
                return
            except (ConflictError, AlreadyExistsError):
                self._leases.pop(name, None)
        raise ConflictError(f'leases "{name}": too many concurrent writers, gave up')

    def _assigned(self, node: str) -> list[Obj]:
        pods = [p for p in self.pods.items() if p["spec"].get("nodeName") == node]
        return sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))

    def assignments(self, node: str) -> pb.Assignments:
        """The node's whole desired state: its pods, its pod CIDR and its routes."""
        own = self.nodes.cache.get(("", node)) if self.nodes is not None else None
        return pb.Assignments(
            pods_json=[json.dumps(p) for p in self._assigned(node)], resource_version=self.pods.revision,
            routes=[r for r in self._all_routes() if r.node_name != node],
            pod_cidr=str(parse_pod_cidr((own or {}).get("spec", {}).get("podCIDR")) or ""))

    def _all_routes(self) -> list[pb.NodeRoute]:
        if self.nodes is None:
            return []
        if self._routes[0] != self._routes_version:
            self._routes = (self._routes_version, [
                pb.NodeRoute(node_name=r.node_name, pod_cidr=r.pod_cidr, address=r.address)
                for r in routes(self.nodes.items(), exclude="")])
        return self._routes[1]

    async def WatchAssignments(self, request: pb.WatchAssignmentsRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Assignments]:
        node = request.node_name
        await self._caller_node(context, "WatchAssignments", node)
        await self.pods.synced.wait()
        if self.nodes is not None:
            await self.nodes.synced.wait()
        log.info("node %s opened its assignments stream", node)
        while True:
            seen = (self._versions[node], self._routes_version)
            yield self.assignments(node)
            await self._wait_for_change(node, seen)

    async def _wait_for_change(self, node: str, seen: tuple[int, int]) -> None:
        """Until the node's pods or anyone's routes change, or ``resync`` seconds pass (the
        periodic full resend)."""

        def changed() -> bool:
            return (self._versions[node], self._routes_version) != seen

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(changed), self.resync)
            except TimeoutError:
                pass

    async def ReportPodStatus(self, request: pb.PodStatusReport, context: grpc.aio.ServicerContext) -> pb.PodStatusAck:
        caller = await self._caller_node(context, "ReportPodStatus", request.node_name)
        try:
            if caller is not None:
                bound_to = await self._pod_bound_to(request.namespace, request.name, request.uid)
                authorize_pod_report(caller, request.namespace, request.name, bound_to)
            if request.removed:
                await self.registry.finalize_pod(request.node_name, request.namespace, request.name, request.uid)
            else:
                await self.registry.update_pod_status(request.node_name, request.namespace, request.name,
                                                      request.uid, json.loads(request.status_json))
        except NodeRestrictionError as e:
            await self._refuse(context, e, "ReportPodStatus", f"node {caller}",
                               f"pod {request.namespace}/{request.name}", "pod of another node")
        except NotFoundError:
            pass  # the pod is gone already: nothing to record
        except OrchError as e:
            await context.abort(e.code, str(e))
        return pb.PodStatusAck()
