"""Prometheus HTTP service discovery: every place in the cluster that serves ``/metrics``.

Served at ``GET /sd`` on the scheduler's metrics address (``--metrics-listen``), in the
format of Prometheus' ``http_sd_configs`` (https://prometheus.io/docs/prometheus/latest/http_sd/):
a JSON list of target groups, computed from the informers at request time, so one
``http_sd_configs`` entry follows the cluster as nodes come and go::

    scrape_configs:
      - job_name: orch
        http_sd_configs: [{url: "http://127.0.0.1:10259/sd"}]

* **agents**: every node whose Ready condition is True and whose agent registered a
  metrics address (``RegisterRequest.metrics_endpoint``, kept in
  ``status.daemonEndpoints.metricsEndpoint``). One group per node, labelled ``node``,
  ``role="agent"``; for relabelling (Prometheus drops ``__meta_`` labels after it), as
  Prometheus' Kubernetes SD names them: ``__meta_orch_node_name``,
  ``__meta_orch_node_label_<label>`` and ``__meta_orch_node_labelpresent_<label>`` for every
  node label (the name sanitized: each character outside ``[a-zA-Z0-9_]`` becomes ``_``),
  ``__meta_orch_node_address_<type>``. A node deleted or not Ready is left out.
* **schedulers**: every live replica that serves metrics, ``role="scheduler"``, with
  ``__meta_orch_scheduler_identity`` and ``__meta_orch_scheduler_leader`` ("true"/"false").

**How schedulers are found.** Each replica announces itself with a Lease
``orch-system/scheduler-<identity>`` (``SchedulerAnnouncer``): its metrics address in the
``orch.io/metrics-address`` annotation, ``renewTime`` rewritten every third of
``leaseDurationSeconds``, and the key attached to an etcd lease of that TTL, so a replica
that dies (SIGKILL included) disappears when etcd expires it; a graceful stop deletes
it at once. A Lease whose ``renewTime`` this scheduler has not seen change for longer
than its ``leaseDurationSeconds`` is left out too (measured on this process's monotonic
clock, as the node lifecycle controller measures node leases, so clock skew between
hosts does not matter): that covers an announcement written without an etcd lease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aetcd.exceptions

from apimachinery.errors import AlreadyExistsError, ConflictError, NotFoundError, OrchError, UnavailableError
from apimachinery.meta import LEASE, Obj, now_rfc3339
from scheduler.framework import node_ready
from scheduler.informer import Informer
from scheduler.leader import LEASE_NAME, LEASE_NAMESPACE
from scheduler.metrics import Route, join_host_port
from scheduler.nodes import now_micro
from scheduler.store import Store

log = logging.getLogger(__name__)

SD_PATH = "/sd"
ANNOUNCE_NAMESPACE = "orch-system"
ANNOUNCE_PREFIX = "scheduler-"
METRICS_ADDRESS_ANNOTATION = "orch.io/metrics-address"
DEFAULT_ANNOUNCE_TTL = 15.0

_ETCD_ERRORS = (aetcd.exceptions.ClientError, OSError, TimeoutError)


def sanitize_label_name(name: str) -> str:
    """Prometheus' SanitizeLabelName: every character outside ``[a-zA-Z0-9_]`` becomes ``_``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def announcement_name(identity: str) -> str:
    """``scheduler-<identity>`` as an object name: lower case, ``[a-z0-9.-]`` only."""
    return ANNOUNCE_PREFIX + re.sub(r"[^a-z0-9.-]+", "-", identity.lower()).strip("-.")


def metrics_endpoint(node: Obj) -> str | None:
    """``HOST:PORT`` of the node agent's ``/metrics``, when it registered one."""
    ep = ((node.get("status") or {}).get("daemonEndpoints") or {}).get("metricsEndpoint") or {}
    address, port = ep.get("Address"), ep.get("Port")
    if not address or not isinstance(port, int) or not 0 < port < 65536:
        return None
    return join_host_port(str(address), port)


def agent_group(node: Obj) -> dict[str, Any] | None:
    """The target group of a node's agent; None when it is not Ready or serves no metrics."""
    target = metrics_endpoint(node)
    if target is None or not node_ready(node):
        return None
    name = str(node["metadata"]["name"])
    labels = {"node": name, "role": "agent", "__meta_orch_node_name": name}
    for key, value in sorted((node["metadata"].get("labels") or {}).items()):
        labels[f"__meta_orch_node_label_{sanitize_label_name(key)}"] = str(value)
        labels[f"__meta_orch_node_labelpresent_{sanitize_label_name(key)}"] = "true"
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") and address.get("address"):
            labels.setdefault(f"__meta_orch_node_address_{sanitize_label_name(address['type'])}", address["address"])
    return {"targets": [target], "labels": labels}


def scheduler_group(lease: Obj, leader: str | None) -> dict[str, Any] | None:
    address = (lease["metadata"].get("annotations") or {}).get(METRICS_ADDRESS_ANNOTATION)
    if not address:
        return None
    identity = str(lease.get("spec", {}).get("holderIdentity") or "")
    return {"targets": [address],
            "labels": {"role": "scheduler", "__meta_orch_scheduler_identity": identity,
                       "__meta_orch_scheduler_leader": "true" if identity and identity == leader else "false"}}


def is_announcement(lease: Obj) -> bool:
    md = lease["metadata"]
    return md.get("namespace") == ANNOUNCE_NAMESPACE and str(md.get("name", "")).startswith(ANNOUNCE_PREFIX)


def target_groups(nodes: Iterable[Obj], announcements: Iterable[Obj], leader: str | None) -> list[dict[str, Any]]:
    """The HTTP SD answer: the agents of ``nodes`` (by name), then the schedulers of the live
    ``announcements`` (by name)."""
    groups = [g for n in sorted(nodes, key=lambda n: str(n["metadata"]["name"])) if (g := agent_group(n))]
    groups += [g for lease in sorted(announcements, key=lambda x: str(x["metadata"]["name"]))
               if (g := scheduler_group(lease, leader))]
    return groups


class ServiceDiscovery:
    """Answers ``GET /sd`` from the node and lease informers."""

    def __init__(self, nodes: Informer, leases: Informer, clock: Callable[[], float] = time.monotonic) -> None:
        self.nodes = nodes
        self.leases = leases
        self.clock = clock
        # announcement name → (renewTime last seen, when this process first saw it)
        self._seen: dict[str, tuple[str, float]] = {}

    def _live(self, lease: Obj, now: float) -> bool:
        name = str(lease["metadata"]["name"])
        renewed = str(lease.get("spec", {}).get("renewTime") or "")
        duration = float(lease.get("spec", {}).get("leaseDurationSeconds") or DEFAULT_ANNOUNCE_TTL)
        seen = self._seen.get(name)
        if seen is None or seen[0] != renewed:
            self._seen[name] = (renewed, now)
            return True
        return now - seen[1] <= duration

    def groups(self) -> list[dict[str, Any]]:
        now = self.clock()
        announcements = [lease for lease in self.leases.items() if is_announcement(lease)]
        live = [lease for lease in announcements if self._live(lease, now)]
        for gone in set(self._seen) - {str(lease["metadata"]["name"]) for lease in announcements}:
            del self._seen[gone]
        election = self.leases.cache.get((LEASE_NAMESPACE, LEASE_NAME))
        leader = str(election["spec"].get("holderIdentity") or "") if election else None
        return target_groups(self.nodes.items(), live, leader)

    def route(self) -> Route:
        def answer(headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
            body = json.dumps(self.groups(), sort_keys=True).encode()
            return 200, {"Content-Type": "application/json"}, body

        return answer


class SchedulerAnnouncer:
    """Keeps ``orch-system/scheduler-<identity>`` alive while this scheduler serves metrics at
    ``address`` (see the module docstring)."""

    def __init__(self, store: Store, identity: str, address: str, ttl: float = DEFAULT_ANNOUNCE_TTL) -> None:
        if ttl < 2:
            raise ValueError(f"the announcement TTL must be at least 2s (etcd's minimum), got {ttl}")
        self.store = store
        self.identity = identity
        self.address = address
        self.ttl = math.ceil(ttl)
        self.name = announcement_name(identity)
        self._lease_id: int | None = None
        self._stored: Obj | None = None

    def _record(self) -> Obj:
        now = now_micro()
        return {"apiVersion": LEASE.api_version, "kind": LEASE.kind,
                "metadata": {"name": self.name, "namespace": ANNOUNCE_NAMESPACE,
                             "annotations": {METRICS_ADDRESS_ANNOTATION: self.address}},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.ttl,
                         "acquireTime": now, "renewTime": now}}

    async def _etcd_lease(self) -> int:
        """The etcd lease the key hangs on: refreshed, or a new one when it expired."""
        client = self.store.client
        try:
            if self._lease_id is not None:
                reply = await client.refresh_lease(self._lease_id)
                if reply is not None and reply.TTL > 0:
                    return self._lease_id
                self._stored = None  # expired: etcd deleted the key with it
            lease = await client.lease(self.ttl)
        except _ETCD_ERRORS as e:
            raise UnavailableError(f"etcd: {e or type(e).__name__}") from e
        self._lease_id = int(lease.id)
        return self._lease_id

    async def renew(self) -> Obj:
        """One renewal: the etcd lease refreshed and ``renewTime`` rewritten (created if missing)."""
        lease_id = await self._etcd_lease()
        record = self._record()
        try:
            if self._stored is None:
                current = await self.store.get_or_none(LEASE, ANNOUNCE_NAMESPACE, self.name)
                if current is None:
                    record["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339())
                    self._stored = await self.store.create(record, lease=lease_id)
                    log.info("announced scheduler %s (metrics at %s) as %s/%s", self.identity, self.address,
                             ANNOUNCE_NAMESPACE, self.name)
                    return self._stored
                self._stored = current
            md = self._stored["metadata"]
            record["metadata"] = {**md, "annotations": {**(md.get("annotations") or {}),
                                                        METRICS_ADDRESS_ANNOTATION: self.address}}
            record["spec"]["acquireTime"] = self._stored.get("spec", {}).get("acquireTime", record["spec"]["renewTime"])
            self._stored = await self.store.update(record, md["resourceVersion"], lease=lease_id)
            return self._stored
        except (ConflictError, AlreadyExistsError, NotFoundError):
            self._stored = None  # someone else wrote it: read it again next time
            raise

    async def run(self) -> None:
        """Renew every third of the TTL until cancelled; then withdraw."""
        try:
            while True:
                try:
                    await self.renew()
                except OrchError as e:
                    log.warning("announcing scheduler %s: %s; trying again", self.identity, e)
                await asyncio.sleep(self.ttl / 3)
        finally:
            await asyncio.shield(self.withdraw())

    async def withdraw(self) -> None:
        """Leave the SD answer at once: revoke the etcd lease (etcd deletes the key with it)."""
        lease_id, self._lease_id, self._stored = self._lease_id, None, None
        if lease_id is None:
            return
        try:
            async with asyncio.timeout(2):
                await self.store.client.revoke_lease(lease_id)
        except _ETCD_ERRORS as e:
            log.debug("withdrawing scheduler %s: %r (its lease expires by itself)", self.identity, e)
