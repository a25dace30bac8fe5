"""NodeRestriction on the node protocol (scheduler/nodes.py), on real parts.

Each test runs what an ``orch-scheduler`` serves to agents — its own etcd client (Store),
Registry, pod and node informers and NodeService — behind a real ``grpc.aio`` server on
127.0.0.1 with mutual TLS (``pki.reloading_server_credentials`` over a PKI made in a
temporary directory with apimachinery.pki) and the scheduler's gRPC metrics interceptor.
Agents are played by real gRPC channels holding real node certificates. What a refused
call did *not* do is checked in etcd itself: the object is absent, or its stored bytes
and mod_revision are the same as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aetcd
import grpc
import pytest

from apimachinery import pki
from apimachinery.meta import LEASE, NODE, NODE_LEASE_NAMESPACE, POD, Obj
from apimachinery.pb import node_pb2 as pb
from apimachinery.pb import node_pb2_grpc as pb_grpc
from apimachinery.pki import PKI, LeafSpec, TLSFiles
from scheduler.informer import Informer
from scheduler.metrics import SchedulerMetrics
from scheduler.nodes import NodeService, forbidden_labels, node_may_set_label
from scheduler.registry import Registry
from scheduler.store import Store
from tests.etcd_fixture import EtcdServer, running_etcd

DENIED = grpc.StatusCode.PERMISSION_DENIED
NODE_A, NODE_B = "nodes/node-a", "nodes/node-b"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """The cluster PKI: scheduler, admin, node-a, node-b, user alice, and a certificate that
    names node-b without the system:nodes group (what a CA-signed user cert could claim)."""
    p = PKI(tmp_path_factory.mktemp("node-restriction") / "pki")
    p.init(nodes={"node-a": [], "node-b": []})
    p.issue(pki.user_slot("alice"), pki.user_spec("alice", ["dev"]))
    p.issue("users/fake-node-b", LeafSpec("system:node:node-b", ("dev",), client=True))
    return p


# --- an in-process scheduler with mTLS ------------------------------------------------------


@dataclass
class Scheduler:
    store: Store
    registry: Registry
    pods: Informer
    service: NodeService
    metrics: SchedulerMetrics
    port: int
    certs: PKI
    tls: bool
    pods_task: asyncio.Task[None]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def stub(self, slot: str | None) -> pb_grpc.NodeServiceStub:
        """A stub on a channel of its own, with ``slot``'s certificate (None: TLS without one,
        or plaintext on a plaintext server)."""
        target = f"127.0.0.1:{self.port}"
        if not self.tls:
            channel = grpc.aio.insecure_channel(target)
        elif slot is None:
            ca = pki.TLSFiles.for_slot(self.certs.dir, pki.SCHEDULER).ca.read_bytes()
            channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca))
        else:
            material = pki.load_tls(TLSFiles.for_slot(self.certs.dir, slot))
            channel = grpc.aio.secure_channel(target, material.channel_credentials())
        self.channels.append(channel)
        return pb_grpc.NodeServiceStub(channel)

    async def raw(self, kind: Any, namespace: str | None, name: str) -> tuple[bytes, int] | None:
        """The stored bytes and mod_revision of an object, straight from etcd (None: absent)."""
        kv = await self.store.client.get(self.store.key(kind, namespace, name))
        return None if kv is None else (bytes(kv.value), int(kv.mod_revision))

    async def pod(self, name: str, node: str | None) -> Obj:
        """A pod created through the Registry, bound to ``node`` (None: unbound)."""
        spec: Obj = {"containers": [{"name": "app", "image": "host", "command": ["sleep", "60"]}]}
        if node:
            spec["nodeName"] = node
        return await self.registry.create({"apiVersion": "v1", "kind": "Pod",
                                           "metadata": {"name": name, "namespace": "default"}, "spec": spec})

    async def cached(self, name: str) -> None:
        """Until the pod informer has pod ``default/name``."""
        async with asyncio.timeout(10):
            while ("default", name) not in self.pods.cache:
                await asyncio.sleep(0.01)

    def denied(self, method: str) -> float:
        """How many calls of ``method`` the gRPC server metrics counted as PermissionDenied."""
        value = self.metrics.registry.get_sample_value("grpc_server_handled_total", {
            "grpc_type": "server_stream" if method == "WatchAssignments" else "unary",
            "grpc_service": "orch.v1.NodeService", "grpc_method": method, "grpc_code": "PermissionDenied"})
        return value or 0.0


@contextlib.asynccontextmanager
async def scheduler(etcd: EtcdServer, certs: PKI, *, tls: bool = True,
                    client_auth: bool = True) -> AsyncIterator[Scheduler]:
    store = Store(aetcd.Client(host=etcd.host, port=etcd.port, timeout=10), prefix=etcd.prefix())
    pods, nodes = Informer(store, POD), Informer(store, NODE)
    pods_task, nodes_task = asyncio.create_task(pods.run()), asyncio.create_task(nodes.run())
    registry = Registry(store)
    service = NodeService(registry, pods, heartbeat_interval=5, resync=60, nodes=nodes)
    metrics = SchedulerMetrics()
    server = grpc.aio.server(interceptors=[metrics.grpc], options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_NodeServiceServicer_to_server(service, server)
    if tls:
        credentials = pki.reloading_server_credentials(TLSFiles.for_slot(certs.dir, pki.SCHEDULER),
                                                       require_client_auth=client_auth)
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    assert port, "no port"
    await server.start()
    s = Scheduler(store, registry, pods, service, metrics, port, certs, tls, pods_task)
    try:
        await asyncio.wait_for(asyncio.gather(pods.synced.wait(), nodes.synced.wait()), 10)
        yield s
    finally:
        for channel in s.channels:
            await channel.close()
        await server.stop(grace=None)
        for t in (pods_task, nodes_task):
            t.cancel()
        await asyncio.gather(pods_task, nodes_task, return_exceptions=True)
        await store.close()


def run(body: Any, timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(body, timeout))


def registration(name: str, labels: dict[str, str] | None = None) -> pb.RegisterRequest:
    res = pb.Resources(cpu_millis=2000, memory_bytes=4 << 30, pods=110)
    return pb.RegisterRequest(node_name=name, labels=labels or {}, capacity=res, allocatable=res,
                              agent_version="test", agent_endpoint="127.0.0.1:1")


def report(node: str, pod: Obj, *, phase: str = "Running", removed: bool = False) -> pb.PodStatusReport:
    md = pod["metadata"]
    return pb.PodStatusReport(node_name=node, namespace=md["namespace"], name=md["name"], uid=md["uid"],
                              status_json=json.dumps({"phase": phase}), removed=removed)


async def refused(call: Any) -> str:
    """Await a unary call (or the first message of a stream); assert PERMISSION_DENIED; its details."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        if hasattr(call, "read"):
            await call.read()
        else:
            await call
    assert e.value.code() == DENIED, e.value
    return str(e.value.details())


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "scheduler.nodes" and r.levelno == logging.WARNING]


# --- a node acts only for itself --------------------------------------------------------------


def test_a_node_may_register_heartbeat_and_watch_only_as_itself(etcd: EtcdServer, certs: PKI,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.nodes")

    async def scenario() -> None:
        async with scheduler(etcd, certs) as s:
            a, b = s.stub(NODE_A), s.stub(NODE_B)

            # Register as node-b with node-a's certificate: refused, nothing written.
            details = await refused(a.Register(registration("node-b"), timeout=10))
            assert "node node-a (by its certificate)" in details and "'node-b'" in details, details
            assert await s.raw(NODE, None, "node-b") is None
            assert await s.raw(LEASE, NODE_LEASE_NAMESPACE, "node-b") is None

            # Each as itself: allowed (so the check is no blanket refusal).
            await a.Register(registration("node-a"), timeout=10)
            await b.Register(registration("node-b"), timeout=10)
            assert (await s.store.get(NODE, None, "node-a"))["metadata"]["name"] == "node-a"

            # Heartbeat for node-b: refused, node-b's lease and Node untouched.
            lease_b, node_b = (await s.raw(LEASE, NODE_LEASE_NAMESPACE, "node-b"),
                               await s.raw(NODE, None, "node-b"))
            details = await refused(a.Heartbeat(pb.HeartbeatRequest(node_name="node-b"), timeout=10))
            assert "node-a" in details and "'node-b'" in details, details
            assert await s.raw(LEASE, NODE_LEASE_NAMESPACE, "node-b") == lease_b
            assert await s.raw(NODE, None, "node-b") == node_b
            lease_a = await s.raw(LEASE, NODE_LEASE_NAMESPACE, "node-a")
            assert (await a.Heartbeat(pb.HeartbeatRequest(node_name="node-a"), timeout=10)).known
            renewed = await s.raw(LEASE, NODE_LEASE_NAMESPACE, "node-a")
            assert lease_a is not None and renewed is not None and renewed[1] > lease_a[1]

            # node-b's assignments: refused before a single pod is sent; its own: its pod only.
            await s.pod("web-a", "node-a")
            await s.pod("web-b", "node-b")
            await s.cached("web-b")
            details = await refused(a.WatchAssignments(pb.WatchAssignmentsRequest(node_name="node-b"), timeout=10))
            assert "node-a" in details and "'node-b'" in details, details
            stream = a.WatchAssignments(pb.WatchAssignmentsRequest(node_name="node-a"), timeout=10)
            first = await stream.read()
            stream.cancel()
            assert [json.loads(p)["metadata"]["name"] for p in first.pods_json] == ["web-a"]

            assert s.service.refusals == {("Register", "other node"): 1, ("Heartbeat", "other node"): 1,
                                          ("WatchAssignments", "other node"): 1}
            assert [s.denied(m) for m in ("Register", "Heartbeat", "WatchAssignments")] == [1, 1, 1]

    run(scenario())
    logged = warnings(caplog)
    assert len(logged) == 3, logged
    for method, line in zip(("Register", "Heartbeat", "WatchAssignments"), logged, strict=True):
        assert f"NodeService/{method} by system:node:node-a for node 'node-b'" in line, line


def test_a_node_may_report_status_for_and_finalize_only_its_own_pods(etcd: EtcdServer, certs: PKI,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.nodes")

    async def scenario() -> None:
        async with scheduler(etcd, certs) as s:
            a, b = s.stub(NODE_A), s.stub(NODE_B)
            await a.Register(registration("node-a"), timeout=10)
            await b.Register(registration("node-b"), timeout=10)
            pod_a, pod_b = await s.pod("web-a", "node-a"), await s.pod("web-b", "node-b")
            await s.cached("web-b")

            # node-b's pod, claimed as node-b, then honestly as node-a: both refused, etcd untouched.
            before = await s.raw(POD, "default", "web-b")
            details = await refused(a.ReportPodStatus(report("node-b", pod_b), timeout=10))
            assert "node-a" in details and "'node-b'" in details, details
            details = await refused(a.ReportPodStatus(report("node-a", pod_b), timeout=10))
            assert "node node-a may report only for pods bound to it" in details, details
            assert "pod default/web-b is bound to node node-b" in details, details
            assert await s.raw(POD, "default", "web-b") == before

            # Its own pod: written.
            await a.ReportPodStatus(report("node-a", pod_a), timeout=10)
            assert (await s.store.get(POD, "default", "web-a"))["status"]["phase"] == "Running"

            # Finalizing: both pods are being deleted; node-a may remove only its own.
            for name in ("web-a", "web-b"):
                await s.registry.delete(POD, "default", name)
            marked = await s.raw(POD, "default", "web-b")
            assert marked is not None and marked != before
            await refused(a.ReportPodStatus(report("node-a", pod_b, removed=True), timeout=10))
            await refused(a.ReportPodStatus(report("node-b", pod_b, removed=True), timeout=10))
            assert await s.raw(POD, "default", "web-b") == marked
            await a.ReportPodStatus(report("node-a", pod_a, removed=True), timeout=10)
            assert await s.raw(POD, "default", "web-a") is None
            await b.ReportPodStatus(report("node-b", pod_b, removed=True), timeout=10)
            assert await s.raw(POD, "default", "web-b") is None

            assert s.service.refusals == {("ReportPodStatus", "other node"): 2,
                                          ("ReportPodStatus", "pod of another node"): 2}
            assert s.denied("ReportPodStatus") == 4

    run(scenario())
    logged = warnings(caplog)
    assert sum("by node node-a for pod default/web-b" in line for line in logged) == 2, logged


def test_the_binding_is_read_from_etcd_when_the_informer_has_not_seen_the_pod(etcd: EtcdServer,
                                                                              certs: PKI) -> None:
    """A lagging informer neither lets a forged report through nor refuses an honest one."""

    async def scenario() -> None:
        async with scheduler(etcd, certs) as s:
            a = s.stub(NODE_A)
            await a.Register(registration("node-a"), timeout=10)
            # Freeze the pod cache: from here on it sees no new pod.
            s.pods_task.cancel()
            await asyncio.gather(s.pods_task, return_exceptions=True)
            theirs, ours, unbound = (await s.pod("late-b", "node-b"), await s.pod("late-a", "node-a"),
                                     await s.pod("late-unbound", None))
            assert not {("default", n) for n in ("late-b", "late-a", "late-unbound")} & s.pods.cache.keys()

            before = await s.raw(POD, "default", "late-b")
            details = await refused(a.ReportPodStatus(report("node-a", theirs), timeout=10))
            assert "bound to node node-b" in details, details
            assert await s.raw(POD, "default", "late-b") == before
            before = await s.raw(POD, "default", "late-unbound")
            details = await refused(a.ReportPodStatus(report("node-a", unbound), timeout=10))
            assert "bound to no node" in details, details
            assert await s.raw(POD, "default", "late-unbound") == before

            await a.ReportPodStatus(report("node-a", ours), timeout=10)
            assert (await s.store.get(POD, "default", "late-a"))["status"]["phase"] == "Running"
            # A report for a pod that is gone is no forgery: it changes nothing, as before.
            await a.ReportPodStatus(report("node-a", {"metadata": {**theirs["metadata"], "uid": "gone"}}),
                                    timeout=10)
            assert await s.raw(POD, "default", "late-b") is not None

    run(scenario())


# --- only nodes ------------------------------------------------------------------------------


@pytest.mark.parametrize("slot, user", [
    (pki.ADMIN, "admin"),
    ("users/alice", "alice"),
    (pki.SCHEDULER, "system:scheduler"),
    ("users/fake-node-b", "system:node:node-b"),  # a node's name without the system:nodes group
])
def test_only_nodes_may_call_node_service(etcd: EtcdServer, certs: PKI, caplog: pytest.LogCaptureFixture,
                                          slot: str, user: str) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.nodes")

    async def scenario() -> None:
        async with scheduler(etcd, certs) as s:
            await s.stub(NODE_B).Register(registration("node-b"), timeout=10)
            pod_b = await s.pod("web-b", "node-b")
            await s.cached("web-b")
            before = await s.raw(POD, "default", "web-b")
            lease = await s.raw(LEASE, NODE_LEASE_NAMESPACE, "node-b")
            stub = s.stub(slot)
            calls = {
                "Register": stub.Register(registration("node-c"), timeout=10),
                "Heartbeat": stub.Heartbeat(pb.HeartbeatRequest(node_name="node-b"), timeout=10),
                "WatchAssignments": stub.WatchAssignments(pb.WatchAssignmentsRequest(node_name="node-b"), timeout=10),
                "ReportPodStatus": stub.ReportPodStatus(report("node-b", pod_b), timeout=10),
            }
            for method, call in calls.items():
                details = await refused(call)
                assert details == f"only nodes (group system:nodes) may call NodeService/{method}; {user} is not one"
            assert await s.raw(NODE, None, "node-c") is None
            assert await s.raw(POD, "default", "web-b") == before
            assert await s.raw(LEASE, NODE_LEASE_NAMESPACE, "node-b") == lease
            assert sum(s.service.refusals.values()) == 4 and all(r == "not a node" for _, r in s.service.refusals)

    run(scenario())
    logged = warnings(caplog)
    # The four calls run at once: their lines come in any order.
    assert sorted(line.split(" by ")[0] for line in logged) == [
        f"NodeRestriction: refused NodeService/{m}" for m in ("Heartbeat", "Register", "ReportPodStatus",
                                                              "WatchAssignments")], logged
    assert all(f" by {user} for " in line for line in logged), logged


def test_a_tls_caller_without_a_client_certificate_is_no_node(etcd: EtcdServer, certs: PKI) -> None:
    """Only a plaintext server runs without identities; TLS without a client certificate is refused."""

    async def scenario() -> None:
        async with scheduler(etcd, certs, client_auth=False) as s:
            details = await refused(s.stub(None).Register(registration("node-a"), timeout=10))
            assert details == ("only nodes (group system:nodes) may call NodeService/Register; "
                               "a caller without a client certificate is not one")
            assert await s.raw(NODE, None, "node-a") is None

    run(scenario())


def test_a_plaintext_server_has_no_identities_and_allows_as_before(etcd: EtcdServer, certs: PKI) -> None:
    async def scenario() -> None:
        async with scheduler(etcd, certs, tls=False) as s:
            anyone = s.stub(None)
            await anyone.Register(registration("node-b", {"node-restriction.kubernetes.io/x": "y"}), timeout=10)
            assert (await anyone.Heartbeat(pb.HeartbeatRequest(node_name="node-b"), timeout=10)).known
            pod_b = await s.pod("web-b", "node-b")
            await anyone.ReportPodStatus(report("node-b", pod_b), timeout=10)
            assert (await s.store.get(POD, "default", "web-b"))["status"]["phase"] == "Running"
            assert not s.service.refusals

    run(scenario())


# --- labels a node may not give itself ----------------------------------------------------------


def test_a_node_may_not_set_restricted_labels_on_itself(etcd: EtcdServer, certs: PKI,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.nodes")

    async def scenario() -> None:
        async with scheduler(etcd, certs) as s:
            a = s.stub(NODE_A)
            for labels in ({"node-restriction.kubernetes.io/pci": "true"},
                           {"disk": "ssd", "node-role.kubernetes.io/control-plane": ""}):
                details = await refused(a.Register(registration("node-a", labels), timeout=10))
                assert f"node node-a may not set labels {next(k for k in labels if 'kubernetes.io' in k)}" in details
                assert await s.raw(NODE, None, "node-a") is None
            allowed = {"topology.kubernetes.io/zone": "z1", "node.kubernetes.io/instance-type": "lab",
                       "kubelet.kubernetes.io/x": "1", "orch.dev/lab": "t", "disk": "ssd"}
            await a.Register(registration("node-a", allowed), timeout=10)
            labels = (await s.store.get(NODE, None, "node-a"))["metadata"]["labels"]
            assert allowed.items() <= labels.items()

            # An admin's restricted label: kept by a re-registration, resent unchanged it passes,
            # changed it is refused.
            def admin_label(node: Obj) -> Obj:
                node["metadata"]["labels"]["node-restriction.kubernetes.io/pci"] = "true"
                return node

            await s.store.update_with_retry(NODE, None, "node-a", admin_label)
            await a.Register(registration("node-a", allowed), timeout=10)
            await a.Register(registration("node-a", {**allowed, "node-restriction.kubernetes.io/pci": "true"}),
                             timeout=10)
            stored = await s.raw(NODE, None, "node-a")
            await refused(a.Register(registration("node-a", {"node-restriction.kubernetes.io/pci": "false"}),
                                     timeout=10))
            assert await s.raw(NODE, None, "node-a") == stored
            labels = (await s.store.get(NODE, None, "node-a"))["metadata"]["labels"]
            assert labels["node-restriction.kubernetes.io/pci"] == "true"
            assert s.service.refusals == {("Register", "restricted label"): 3}

    run(scenario())
    assert sum("NodeService/Register by node node-a" in line for line in warnings(caplog)) == 3


@pytest.mark.parametrize("key, allowed", [
    ("node-restriction.kubernetes.io/pci", False),
    ("example.node-restriction.kubernetes.io/pci", False),
    ("node-role.kubernetes.io/control-plane", False),
    ("kubernetes.io/role", False),
    ("k8s.io/x", False),
    ("team.k8s.io/x", False),
    ("kubernetes.io/hostname", True),
    ("kubernetes.io/arch", True),
    ("topology.kubernetes.io/region", True),
    ("node.kubernetes.io/instance-type", True),
    ("node.kubernetes.io/anything", True),
    ("x.kubelet.kubernetes.io/y", True),
    ("notkubernetes.io/x", True),  # another domain that merely ends alike
    ("orch.dev/lab", True),
    ("disk", True),
])
def test_which_labels_a_node_may_set(key: str, allowed: bool) -> None:
    assert node_may_set_label(key) is allowed


def test_only_changed_labels_count() -> None:
    have = {"node-restriction.kubernetes.io/pci": "true", "node-role.kubernetes.io/worker": ""}
    assert forbidden_labels({"node-restriction.kubernetes.io/pci": "true", "disk": "ssd"}, have) == []
    assert forbidden_labels({"node-role.kubernetes.io/worker": "x", "node-restriction.kubernetes.io/a": "1"},
                            have) == ["node-restriction.kubernetes.io/a", "node-role.kubernetes.io/worker"]


def test_the_certificates_are_what_the_tests_assume(certs: PKI) -> None:
    """Guards the fixtures: a test above passing for the wrong reason would prove nothing."""
    def who(slot: str) -> pki.Identity:
        return pki.identity_of(pki.read_cert(Path(certs.cert_path(slot))))

    assert who(NODE_A).node_name == "node-a" and who(NODE_B).node_name == "node-b"
    assert who("users/fake-node-b").node_name is None and who(pki.ADMIN).is_admin
