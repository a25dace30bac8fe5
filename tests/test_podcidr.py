"""Pod CIDRs (scheduler/podcidr.py) and the routes in Assignments, on a real etcd.

Each "scheduler" here is what an ``orch-scheduler`` process serves to agents: its own
etcd client (Store), Registry, pod and node informers and NodeService, behind a real
``grpc.aio`` server on 127.0.0.1; the tests speak the node protocol to it through real
gRPC stubs, as agents do. Two of them on one etcd prefix are two scheduler replicas:
registrations served by both race for the same blocks, and only the claim
transactions keep them apart. The allocation arithmetic and the Node the pod network
makes are tested as pure functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aetcd
import grpc
import pytest

from apimachinery.meta import NODE, POD, Obj
from apimachinery.pb import node_pb2 as pb
from apimachinery.pb import node_pb2_grpc as pb_grpc
from apimachinery.validation import validate
from scheduler.config import default_profiles
from scheduler.informer import Informer
from scheduler.main import parse_args
from scheduler.nodes import NodeService, node_from_registration
from scheduler.podcidr import (
    NETWORK_UNAVAILABLE,
    TAINT_NETWORK_UNAVAILABLE,
    ClusterCidr,
    read_claims,
    routes,
    usable_pod_addresses,
    with_pod_network,
)
from scheduler.registry import Registry
from scheduler.scheduling import build_node_infos
from scheduler.store import Store
from tests.etcd_fixture import EtcdServer, running_etcd

N = ipaddress.IPv4Network


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


# --- helpers ----------------------------------------------------------------------------------


def registration(name: str, ip: str = "", pods: int = 110) -> pb.RegisterRequest:
    res = pb.Resources(cpu_millis=4000, memory_bytes=8 << 30, pods=pods)
    addresses = [pb.NodeAddress(type="InternalIP", address=ip)] if ip else []
    return pb.RegisterRequest(node_name=name, capacity=res, allocatable=res, addresses=addresses,
                              agent_version="test", agent_endpoint="127.0.0.1:1")


@dataclass
class Replica:
    """One scheduler's node-protocol side, on its own etcd client."""

    store: Store
    registry: Registry
    nodes: Informer
    service: NodeService
    stub: pb_grpc.NodeServiceStub

    async def register(self, name: str, ip: str = "", pods: int = 110) -> str:
        return str((await self.stub.Register(registration(name, ip, pods), timeout=20)).pod_cidr)

    async def node(self, name: str) -> Obj:
        return await self.store.get(NODE, None, name)

    async def sees(self, name: str, node: Obj | None) -> None:
        """Until this replica's node cache has ``node`` as stored (None: no node ``name``)."""
        want = node["metadata"]["resourceVersion"] if node else None
        async with asyncio.timeout(10):
            while (self.nodes.cache.get(("", name)) or {}).get("metadata", {}).get("resourceVersion") != want:
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def replica(etcd: EtcdServer, prefix: str, cluster: ClusterCidr, *, resync: float = 60.0
                  ) -> AsyncIterator[Replica]:
    store = Store(aetcd.Client(host=etcd.host, port=etcd.port, timeout=10), prefix=prefix)
    pods, nodes = Informer(store, POD), Informer(store, NODE)
    tasks = [asyncio.create_task(pods.run()), asyncio.create_task(nodes.run())]
    registry = Registry(store)
    service = NodeService(registry, pods, heartbeat_interval=5, resync=resync, nodes=nodes, cluster_cidr=cluster)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_NodeServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(asyncio.gather(pods.synced.wait(), nodes.synced.wait()), 10)
        yield Replica(store, registry, nodes, service, pb_grpc.NodeServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(grace=None)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()


def run(body: Any, timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(body, timeout))


def condition(node: Obj, type_: str = NETWORK_UNAVAILABLE) -> Obj | None:
    return next((c for c in node.get("status", {}).get("conditions", []) if c.get("type") == type_), None)


def network_taints(node: Obj) -> list[Obj]:
    return [t for t in node.get("spec", {}).get("taints") or () if t.get("key") == TAINT_NETWORK_UNAVAILABLE]


def assert_has_cidr(node: Obj, cidr: str) -> None:
    assert node["spec"]["podCIDR"] == cidr and node["spec"]["podCIDRs"] == [cidr]
    cond = condition(node)
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "CIDRAssigned"), cond
    assert not network_taints(node)


def assert_has_no_cidr(node: Obj, cluster: str) -> None:
    assert "podCIDR" not in node["spec"] and "podCIDRs" not in node["spec"]
    cond = condition(node)
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "NoCIDRAvailable"), cond
    assert cluster in cond["message"]
    assert network_taints(node) == [{"key": TAINT_NETWORK_UNAVAILABLE, "effect": "NoSchedule"}]


def pod(name: str, node: str | None = None) -> Obj:
    p = validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                  "spec": {"containers": [{"name": "c", "image": "host", "command": ["sleep", "1d"]}]}})
    p["metadata"].update(uid=f"uid-{name}", resourceVersion="1")
    if node:
        p["spec"]["nodeName"] = node
    p["status"] = {"phase": "Running" if node else "Pending"}
    return p


def schedule(p: Obj, nodes: list[Obj], pods: Sequence[Obj] = ()) -> tuple[str | None, str]:
    fw = default_profiles()["default-scheduler"]
    fw.rng = random.Random(0)
    fw.post_filters = []  # no preemption: the filters' own message
    decision = fw.schedule(p, list(build_node_infos(nodes, list(pods)).values()))
    return decision.node, decision.message


# --- the pure part ----------------------------------------------------------------------------


def test_cluster_cidr_blocks_skip_anything_that_overlaps_a_claim() -> None:
    cluster = ClusterCidr.parse("10.244.0.0/16", 24)
    assert cluster.block_count == 256 and cluster.block(3) == N("10.244.3.0/24")
    free = cluster.free_blocks([N("10.244.0.0/24"), N("10.244.2.0/23"), N("10.244.5.128/25"), N("10.0.0.0/24")])
    assert [next(free) for _ in range(3)] == [N("10.244.1.0/24"), N("10.244.4.0/24"), N("10.244.6.0/24")]
    # A claim bigger than a block (the mask size was smaller once) covers every block in it.
    small = ClusterCidr.parse("10.244.0.0/24", 26)
    assert list(small.free_blocks([N("10.244.0.0/25")])) == [N("10.244.0.128/26"), N("10.244.0.192/26")]
    assert list(small.free_blocks([N("10.0.0.0/8")])) == []
    # Lazy: the first free block of a huge range costs nothing like its size.
    huge = ClusterCidr.parse("10.0.0.0/8", 30)
    assert next(huge.free_blocks([N("10.0.0.0/30")])) == N("10.0.0.4/30")


def test_usable_addresses_leave_out_network_gateway_and_broadcast() -> None:
    assert usable_pod_addresses(N("10.244.3.0/24")) == 253
    assert usable_pod_addresses(N("10.244.3.0/29")) == 5
    assert usable_pod_addresses(N("10.244.3.0/30")) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--cluster-cidr", "fd00::/64"], "--cluster-cidr 'fd00::/64': only IPv4 is supported"),
    (["--cluster-cidr", "10.244.0.1/16"], "--cluster-cidr '10.244.0.1/16': not an IPv4 network address"),
    (["--cluster-cidr", "banana"], "--cluster-cidr 'banana': not an IPv4 network address"),
    (["--node-cidr-mask-size", "16"], "--node-cidr-mask-size 16: must be larger than the prefix length of "
                                      "--cluster-cidr 10.244.0.0/16"),
    (["--cluster-cidr", "10.0.0.0/8", "--node-cidr-mask-size", "8"], "--node-cidr-mask-size 8: must be larger"),
    (["--node-cidr-mask-size", "31"], "--node-cidr-mask-size 31: must be at most 30"),
    (["--node-cidr-mask-size", "x"], "--node-cidr-mask-size: invalid int value"),
])
def test_bad_cidr_flags_are_usage_errors_that_name_the_flag(argv: list[str], message: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_good_cidr_flags_and_their_defaults() -> None:
    assert parse_args([]).cluster_cidr == ClusterCidr(N("10.244.0.0/16"), 24)
    args = parse_args(["--cluster-cidr", "172.20.0.0/14", "--node-cidr-mask-size", "26"])
    assert args.cluster_cidr == ClusterCidr(N("172.20.0.0/14"), 26) and args.cluster_cidr.block_count == 4096


def test_the_pod_network_of_a_node_and_its_undoing() -> None:
    cluster = ClusterCidr.parse("10.244.0.0/16", 29)
    node = node_from_registration(registration("n1", "10.0.0.1", pods=110), None)
    node["spec"]["taints"] = [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
    none = with_pod_network(node, None, cluster)
    assert_has_no_cidr(none, "10.244.0.0/16")
    assert none["spec"]["taints"][0]["key"] == "dedicated"  # the admin's taint stays first
    assert with_pod_network(none, None, cluster) == none  # nothing to write on the next heartbeat
    assigned = with_pod_network(none, N("10.244.0.8/29"), cluster)
    assert_has_cidr(assigned, "10.244.0.8/29")
    assert assigned["spec"]["taints"] == [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
    assert assigned["status"]["allocatable"]["pods"] == assigned["status"]["capacity"]["pods"] == "5"
    assert with_pod_network(assigned, N("10.244.0.8/29"), cluster) == assigned
    # A registration keeps the scheduler's condition, and its transition time.
    again = node_from_registration(registration("n1", "10.0.0.1"), assigned)
    assert condition(again) == condition(assigned)


def test_routes_are_every_other_node_with_a_cidr_and_an_internal_ip() -> None:
    def node(name: str, cidr: str | None, ip: str) -> Obj:
        n = node_from_registration(registration(name, ip), None)
        if cidr:
            n["spec"]["podCIDR"] = cidr
        return n

    nodes = [node("c", "10.244.2.0/24", "10.0.0.3"), node("a", "10.244.0.0/24", "10.0.0.1"),
             node("b", "10.244.1.0/24", "10.0.0.2"), node("no-cidr", None, "10.0.0.4"),
             node("no-ip", "10.244.3.0/24", "")]
    assert [(r.node_name, r.pod_cidr, r.address) for r in routes(nodes, exclude="b")] == [
        ("a", "10.244.0.0/24", "10.0.0.1"), ("c", "10.244.2.0/24", "10.0.0.3")]


# --- against etcd -----------------------------------------------------------------------------


def test_nodes_registering_at_once_through_two_schedulers_get_distinct_cidrs(etcd: EtcdServer) -> None:
    prefix, cluster = etcd.prefix(), ClusterCidr.parse("10.244.0.0/16", 24)
    names = [f"node-{i:02d}" for i in range(32)]

    async def body() -> None:
        async with replica(etcd, prefix, cluster) as a, replica(etcd, prefix, cluster) as b:
            replicas = (a, b)
            got = await asyncio.gather(*(replicas[i % 2].register(n, f"10.0.{i}.1") for i, n in enumerate(names)))
            cidrs = dict(zip(names, got, strict=True))
            assert all(cidrs.values()), cidrs
            assert len(set(cidrs.values())) == len(names), f"a block went to two nodes: {cidrs}"
            for name, cidr in cidrs.items():
                assert N(cidr).subnet_of(cluster.network) and N(cidr).prefixlen == 24
                node = await a.node(name)
                assert_has_cidr(node, cidr)
                assert node["status"]["allocatable"]["pods"] == "110"  # 253 fit in a /24: not capped
            claims = await read_claims(a.store)
            assert {str(c.block): c.holder for c in claims.values()} == {c: n for n, c in cidrs.items()}
            # Fresh blocks are the lowest ones: 32 nodes take the first 32 blocks.
            assert sorted(N(c) for c in cidrs.values()) == [cluster.block(i) for i in range(32)]

            # Registering again (an agent restart), through the other scheduler, all at once: the same blocks.
            again = await asyncio.gather(*(replicas[(i + 1) % 2].register(n, f"10.0.{i}.1")
                                           for i, n in enumerate(names)))
            assert dict(zip(names, again, strict=True)) == cidrs

            # One node registering through both at once (an agent that reconnected elsewhere while
            # its first registration was in flight): the Node's guard makes one of them re-read,
            # so both answer with the one block it got.
            twin = await asyncio.gather(*(replicas[i % 2].register("twin", "10.0.200.1") for i in range(6)))
            assert len(set(twin)) == 1 and twin[0]
            assert [c.holder for c in (await read_claims(a.store)).values()].count("twin") == 1
        # A scheduler started afresh (nothing in memory) keeps them too.
        async with replica(etcd, prefix, cluster) as c:
            assert await c.register("node-07", "10.0.7.1") == cidrs["node-07"]
            lowest_free = next(cluster.free_blocks(await read_claims(c.store)))  # twin took 32 or 33
            assert await c.register("node-new", "10.0.99.1") == str(lowest_free)

    run(body())


def test_no_free_block_leaves_the_node_unavailable_until_a_node_is_deleted(etcd: EtcdServer) -> None:
    prefix, cluster = etcd.prefix(), ClusterCidr.parse("10.250.0.0/24", 26)  # 4 blocks

    async def body() -> None:
        async with replica(etcd, prefix, cluster) as a, replica(etcd, prefix, cluster) as b:
            cidrs = {n: await a.register(n, f"10.0.0.{i + 1}") for i, n in enumerate(["n1", "n2", "n3", "n4"])}
            assert cidrs == {"n1": "10.250.0.0/26", "n2": "10.250.0.64/26", "n3": "10.250.0.128/26",
                             "n4": "10.250.0.192/26"}
            assert await b.register("n5", "10.0.0.5") == ""
            n5 = await a.node("n5")
            assert_has_no_cidr(n5, "10.250.0.0/24")
            ready = condition(n5, "Ready")
            assert ready is not None and ready["status"] == "True"  # registered, just without a network
            # The scheduler sends it no pod: the taint is not tolerated.
            node, message = schedule(pod("web"), [n5])
            assert node is None and "node.kubernetes.io/network-unavailable" in message, message

            # Heartbeats try again; nothing is free, so nothing is written.
            await b.sees("n5", n5)
            assert (await b.stub.Heartbeat(pb.HeartbeatRequest(node_name="n5"), timeout=10)).known
            assert (await a.node("n5"))["metadata"]["resourceVersion"] == n5["metadata"]["resourceVersion"]

            # `orchctl delete node n2` (through the registry) releases n2's block ...
            await a.registry.delete(NODE, None, "n2")
            assert N(cidrs["n2"]) not in await read_claims(a.store)
            # ... and n5's next heartbeat takes it, lifting the condition and the taint.
            await b.sees("n2", None)
            assert (await b.stub.Heartbeat(pb.HeartbeatRequest(node_name="n5"), timeout=10)).known
            n5 = await a.node("n5")
            assert_has_cidr(n5, cidrs["n2"])
            assert n5["status"]["allocatable"]["pods"] == "61"  # a /26 holds 64 - 3
            assert schedule(pod("web"), [n5])[0] == "n5"

            # A Node removed without its claim released (not through the registry): its claim is
            # stale, and the next node that finds no free block takes it over.
            await a.store.delete(NODE, None, "n3")
            assert (await read_claims(a.store))[N(cidrs["n3"])].holder == "n3"
            await b.sees("n3", None)  # b's cache tells which claims look stale
            assert await b.register("n6", "10.0.0.6") == cidrs["n3"]
            assert (await read_claims(a.store))[N(cidrs["n3"])].holder == "n6"
            # n3 comes back: nothing is free any more.
            assert await a.register("n3", "10.0.0.3") == ""

            # A node deleted that way and registered again gets its own block back, even
            # though a node without a block (n3) is waiting.
            await a.store.delete(NODE, None, "n4")
            assert await b.register("n4", "10.0.0.4") == cidrs["n4"]

    run(body())


def test_a_node_s_pods_are_capped_at_the_addresses_of_its_block(etcd: EtcdServer) -> None:
    prefix, cluster = etcd.prefix(), ClusterCidr.parse("10.251.0.0/24", 29)  # 5 pod addresses a node

    async def body() -> None:
        async with replica(etcd, prefix, cluster) as a:
            assert await a.register("big", "10.0.0.1", pods=110) == "10.251.0.0/29"
            assert await a.register("small", "10.0.0.2", pods=3) == "10.251.0.8/29"
            big, small = await a.node("big"), await a.node("small")
            assert big["status"]["capacity"]["pods"] == big["status"]["allocatable"]["pods"] == "5"
            assert small["status"]["capacity"]["pods"] == small["status"]["allocatable"]["pods"] == "3"
            # The scheduler's NodeResourcesFit stops at five pods on the node.
            bound = [pod(f"p{i}", "big") for i in range(5)]
            node, message = schedule(pod("sixth"), [big], bound)
            assert node is None and "Too many pods" in message, message
            assert schedule(pod("fifth"), [big], bound[:4])[0] == "big"

    run(body())


def test_assignments_carry_the_other_nodes_routes_and_change_with_the_nodes(etcd: EtcdServer) -> None:
    prefix, cluster = etcd.prefix(), ClusterCidr.parse("10.244.0.0/16", 24)

    async def body() -> None:
        # resync 60s: every message after the first is one a node change pushed.
        async with replica(etcd, prefix, cluster) as a, replica(etcd, prefix, cluster) as b:
            own = await a.register("n1", "10.0.0.1")
            stream = b.stub.WatchAssignments(pb.WatchAssignmentsRequest(node_name="n1"))

            async def until(want: list[tuple[str, str, str]]) -> None:
                """Read messages until one carries the routes ``want`` and n1's own pod CIDR;
                each must come promptly (long before the resync)."""
                while True:
                    msg = await asyncio.wait_for(stream.read(), 10)
                    assert msg is not grpc.aio.EOF
                    if [(r.node_name, r.pod_cidr, r.address) for r in msg.routes] == want and msg.pod_cidr == own:
                        return

            try:
                await until([])
                n3 = await a.register("n3", "10.0.0.3")
                n2 = await b.register("n2", "10.0.0.2")
                await until([("n2", n2, "10.0.0.2"), ("n3", n3, "10.0.0.3")])
                # Readdressed: the route follows.
                await a.register("n3", "10.0.0.33")
                await until([("n2", n2, "10.0.0.2"), ("n3", n3, "10.0.0.33")])
                # Deleted: its route goes.
                await a.registry.delete(NODE, None, "n2")
                await until([("n3", n3, "10.0.0.33")])
                # A node without an InternalIP gets no route, but it keeps its block.
                no_ip = await a.register("n4")
                assert no_ip
                await b.sees("n4", await b.node("n4"))
                assert [r.node_name for r in b.service.assignments("n1").routes] == ["n3"]
                assert b.service.assignments("n4").pod_cidr == no_ip
                assert [r.node_name for r in b.service.assignments("n4").routes] == ["n1", "n3"]
            finally:
                stream.cancel()

    run(body())


def test_a_node_name_or_label_kubernetes_would_refuse_is_refused_and_writes_nothing(etcd: EtcdServer) -> None:
    async def body() -> None:
        async with replica(etcd, "/bad-names", ClusterCidr.parse("10.244.0.0/16", 24)) as r:
            for name, labels, field in [("a/b", {}, "metadata.name"), ("UPPER", {}, "metadata.name"),
                                        ("ok", {"a/b/c": "x"}, "metadata.labels")]:
                req = registration(name)
                req.labels.update(labels)
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await r.stub.Register(req, timeout=10)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert field in (e.value.details() or "")
            items, _ = await r.store.list(NODE)
            assert items == []
            claims = await r.store.client.get_prefix(b"/bad-names/podcidrs/")
            assert list(claims) == []

    run(body())
