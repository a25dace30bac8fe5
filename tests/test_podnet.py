"""The pod network library (``agent.network``): IPAM, bridge, veths, routes between nodes.

Pure parts (address arithmetic, route planning, the on-disk IPAM) run anywhere. The
kernel tests need root and run everything inside network namespaces they create
themselves (a "node" namespace holding the bridge, "pod" namespaces), as bind mounts
under the test's tmp dir; traffic never leaves them and the host namespace's links,
routes and sysctls are never touched. The ``net`` fixture removes every namespace it
made, also when the test fails, and checks that no mount, namespace file or link of
the test is left.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from agent.network import (
    RTPROT_ORCH,
    AddressesExhausted,
    Ipam,
    PodNetwork,
    PodNetworkError,
    RouteAction,
    RouteSyncError,
    host_veth_name,
    netns,
    plan_routes,
)
from agent.network.ipam import gateway_address, next_free, parse_cidr, pod_range
from agent.network.podnet import rtnl
from tests.conftest_runtime import host_mounts_mentioning

requires_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: creates network namespaces, bind mounts and links (CI runs as root, so this never skips there)",
)

CIDR = "10.244.3.0/24"


# ---------------------------------------------------------------- pure: addresses


def test_gateway_and_pod_range() -> None:
    net = parse_cidr(CIDR)
    assert gateway_address(net) == IPv4Address("10.244.3.1")
    rng = pod_range(net)
    assert (IPv4Address(rng.first), IPv4Address(rng.last), rng.size) == (
        IPv4Address("10.244.3.2"), IPv4Address("10.244.3.254"), 253)
    assert pod_range(parse_cidr("10.0.0.0/29")).size == 5  # .2 .. .6
    assert pod_range(parse_cidr("10.0.0.0/30")).size == 1


@pytest.mark.parametrize("bad", ["10.244.3.1/24", "10.0.0.0/31", "fd00::/64", "nonsense", "10.0.0.0/32"])
def test_parse_cidr_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="pod CIDR"):
        parse_cidr(bad)


def test_next_free_starts_after_last_and_wraps() -> None:
    rng = pod_range(parse_cidr("10.0.0.0/29"))  # ints of .2 .. .6
    base = int(IPv4Address("10.0.0.0"))
    assert next_free(rng, set(), None) == base + 2
    assert next_free(rng, set(), base + 3) == base + 4  # no immediate reuse of .3
    assert next_free(rng, {base + 2}, base + 6) == base + 3  # wraps past the end, skips used
    assert next_free(rng, set(), base + 200) == base + 2  # a last outside the range: from the start
    assert next_free(rng, {base + i for i in range(2, 7)}, base + 4) is None


def test_host_veth_name() -> None:
    names = {host_veth_name(secrets.token_hex(16)) for _ in range(1000)}
    assert len(names) == 1000
    assert all(len(n) == 15 and n.startswith("veth") for n in names)
    assert host_veth_name("abc") == host_veth_name("abc")


def test_plan_routes() -> None:
    n = IPv4Network
    a = IPv4Address
    desired = {n("10.244.1.0/24"): a("192.168.1.1"), n("10.244.2.0/24"): a("192.168.1.2"),
               n("10.244.4.0/24"): a("192.168.1.4")}
    owned = {n("10.244.1.0/24"): [a("192.168.1.1")],           # in step
             n("10.244.2.0/24"): [a("192.168.1.9")],           # node readdressed
             n("10.244.5.0/24"): [a("192.168.1.5")],           # node gone
             }
    assert plan_routes(desired, owned) == [
        RouteAction("delete", n("10.244.5.0/24"), a("192.168.1.5")),
        RouteAction("replace", n("10.244.2.0/24"), a("192.168.1.2")),
        RouteAction("add", n("10.244.4.0/24"), a("192.168.1.4")),
    ]
    assert plan_routes(desired, {n("10.244.1.0/24"): [a("192.168.1.7"), a("192.168.1.1")]}) == [
        RouteAction("delete", n("10.244.1.0/24"), a("192.168.1.7")),
        RouteAction("add", n("10.244.2.0/24"), a("192.168.1.2")),
        RouteAction("add", n("10.244.4.0/24"), a("192.168.1.4")),
    ]
    assert plan_routes({}, {}) == []


# ---------------------------------------------------------------- IPAM on disk (no root needed)


def test_ipam_idempotent_release_and_persisted(tmp_path: Path) -> None:
    ipam = Ipam(CIDR, tmp_path)
    a = ipam.allocate("pod-a")
    assert a == IPv4Address("10.244.3.2")
    assert ipam.allocate("pod-a") == a
    b = ipam.allocate("pod-b")
    assert b != a and b in IPv4Network(CIDR)
    assert (tmp_path / "addresses" / str(a)).read_text().strip() == "pod-a"
    # A new object (an agent restart) over the same directory: same answers, used ones stay used.
    again = Ipam(CIDR, tmp_path)
    assert again.lookup("pod-a") == a and again.allocate("pod-b") == b
    c = again.allocate("pod-c")
    assert c not in (a, b)
    assert again.release("pod-a") == a
    assert again.release("pod-a") is None  # idempotent
    assert again.lookup("pod-a") is None
    # No immediate reuse: the next pod gets the address after the last handed out, not a's.
    assert again.allocate("pod-d") == c + 1
    assert again.allocations() == {b: "pod-b", c: "pod-c", c + 1: "pod-d"}


def test_ipam_exhaustion_names_the_cidr(tmp_path: Path) -> None:
    ipam = Ipam("10.9.0.0/29", tmp_path)
    got = {ipam.allocate(f"pod-{i}") for i in range(5)}
    assert got == {IPv4Address(f"10.9.0.{i}") for i in range(2, 7)}
    with pytest.raises(AddressesExhausted, match=r"10\.9\.0\.0/29") as info:
        ipam.allocate("pod-6")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert ipam.allocate("pod-3") == IPv4Address("10.9.0.5")  # a holder still gets its own
    ipam.release("pod-1")
    assert ipam.allocate("pod-6") == IPv4Address("10.9.0.3")


def test_ipam_stale_pod_hint_is_ignored(tmp_path: Path) -> None:
    ipam = Ipam(CIDR, tmp_path)
    a = ipam.allocate("pod-a")
    # A crash between writing pods/<uid> and claiming the address file: the hint alone owns nothing.
    (tmp_path / "pods" / "pod-x").write_text(f"{a}\n")
    assert ipam.lookup("pod-x") is None
    assert ipam.allocate("pod-x") != a


def test_ipam_rejects_unsafe_uid(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Ipam(CIDR, tmp_path).allocate("../etc")


def test_ipam_concurrent_threads_and_processes(tmp_path: Path) -> None:
    ipam_dir = tmp_path / "ipam"

    def take(prefix: str, n: int) -> list[IPv4Address]:
        ipam = Ipam("10.10.0.0/22", ipam_dir)
        return [ipam.allocate(f"{prefix}-{i}") for i in range(n)]

    # Other processes are fresh interpreters, not forks: a fork of this multi-threaded
    # process (gRPC's and the tests' threads) can inherit a lock held mid-operation and hang.
    child = ("import sys\nfrom agent.network import Ipam\nipam = Ipam('10.10.0.0/22', sys.argv[1])\n"
             "print(' '.join(str(ipam.allocate(f'{sys.argv[2]}-{i}')) for i in range(60)))")
    children = [subprocess.Popen([sys.executable, "-c", child, str(ipam_dir), f"proc{k}"], stdout=subprocess.PIPE,
                                 cwd=Path(__file__).resolve().parent.parent, text=True) for k in range(2)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: take(f"thread{k}", 60), range(4)))
    addresses = [a for res in results for a in res]
    for proc in children:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        addresses += [IPv4Address(x) for x in out.split()]
    assert len(addresses) == 360 and len(set(addresses)) == 360
    assert len(Ipam("10.10.0.0/22", ipam_dir).allocations()) == 360


# ---------------------------------------------------------------- kernel fixtures and helpers


class Net:
    """The namespaces one test made, and the pod network of its node namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Path] = []
        self.node = self.namespace("node")
        self.pn = PodNetwork(CIDR, root / "state", node_netns=self.node)

    def namespace(self, name: str) -> Path:
        path = netns.create(self.root / f"ns-{name}")
        self.made.append(path)
        return path

    def pod(self, name: str) -> tuple[str, Path]:
        """A pod uid and its namespace, loopback up as a sandbox has it."""
        path = self.namespace(f"pod-{name}")
        with rtnl(path) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return f"{name}-{secrets.token_hex(4)}", path

    def close(self) -> None:
        for path in reversed(self.made):
            netns.remove(path)


@pytest.fixture(name="net")
def net_fixture(tmp_path: Path) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and links (CI runs as root)")
    host_links_before = set(link_names(None))
    threads_before = threading.active_count()
    children_before = own_children()
    net = Net(tmp_path)
    try:
        yield net
    finally:
        net.close()
        assert not host_mounts_mentioning(str(tmp_path)), "namespace bind mounts left behind"
        assert not list(tmp_path.glob("ns-*")), "namespace files left behind"
        assert set(link_names(None)) <= host_links_before, "links appeared in the host's namespace"
        assert threading.active_count() <= threads_before, "threads left running"
        # No child process was started (pyroute2 forks none here); the session's lab
        # processes may be children of this process already.
        assert own_children() <= children_before, "child processes left behind"


def own_children() -> set[int]:
    """Pids of this process's children, from every thread's children list."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            found.update(int(pid) for pid in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return found


def link_names(path: Path | None) -> list[str]:
    with rtnl(path) as ipr:
        return [link.get("IFLA_IFNAME") for link in ipr.get_links()]


def veths(path: Path | None) -> list[str]:
    with rtnl(path) as ipr:
        return [link.get("IFLA_IFNAME") for link in ipr.get_links()
                if link.get(("linkinfo", "kind")) == "veth"]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(path: Path, dst: IPv4Address | str, timeout: float = 3.0) -> bool:
    """ICMP echoes from inside the namespace at ``path`` (a raw socket made there), one
    every 0.25 s as ``ping -w`` sends them, until one is answered (True) or ``timeout``."""
    ident = secrets.randbits(16)
    with netns.inet_socket(path, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        deadline = time.monotonic() + timeout
        seq = 0
        while (left := deadline - time.monotonic()) > 0:
            seq += 1
            payload = secrets.token_bytes(16)
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
            try:
                s.sendto(packet, (str(dst), 0))
            except OSError as e:
                if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                    return False
                raise
            resend = time.monotonic() + min(0.25, left)
            while (wait := resend - time.monotonic()) > 0:
                if not select.select([s], [], [], wait)[0]:
                    break
                data, (src, _) = s.recvfrom(2048)
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if kind == 0 and rid == ident and src == str(dst):
                    return True
    return False


def tcp_roundtrip(server_ns: Path, server_ip: IPv4Address, client_ns: Path) -> bytes:
    """A TCP server in one namespace, a client in another: the bytes echoed back."""
    with netns.inet_socket(server_ns) as srv:
        srv.bind((str(server_ip), 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(conn.recv(100).upper())

        t = threading.Thread(target=serve, name="tcp-echo", daemon=True)
        t.start()
        with netns.inet_socket(client_ns) as cli:
            cli.settimeout(3)
            cli.connect((str(server_ip), port))
            cli.sendall(b"hello pod")
            answer = cli.recv(100)
        t.join(3)
    return answer


# ---------------------------------------------------------------- kernel tests


@requires_root
def test_two_pods_talk_to_each_other_and_the_gateway(net: Net) -> None:
    net.pn.ensure_bridge()
    uid_a, ns_a = net.pod("a")
    uid_b, ns_b = net.pod("b")
    a = net.pn.attach(uid_a, ns_a)
    b = net.pn.attach(uid_b, ns_b)
    assert a.ip != b.ip and {a.ip, b.ip} <= set(IPv4Network(CIDR).hosts())
    assert a.gateway == b.gateway == IPv4Address("10.244.3.1") and a.cidr.endswith("/24")
    assert sorted(veths(net.node)) == sorted([a.host_veth, b.host_veth])
    assert ping(ns_a, b.ip) and ping(ns_b, a.ip)
    assert ping(ns_a, a.gateway) and ping(ns_b, b.gateway)
    assert not ping(ns_a, "10.244.3.250", timeout=0.3)  # nobody there: the check can fail
    assert tcp_roundtrip(ns_b, b.ip, ns_a) == b"HELLO POD"
    # forwarding is on in the node's namespace, the test's own, not the host's
    assert netns.read_sysctl(net.node, "net.ipv4.ip_forward") == "1"


@requires_root
def test_ensure_bridge_is_idempotent_and_converges(net: Net) -> None:
    index = net.pn.ensure_bridge()
    with rtnl(net.node) as ipr:
        # someone adds a stray address and takes it down: the next ensure puts it right
        ipr.addr("add", index=index, address="10.1.2.3", prefixlen=8)
        ipr.link("set", index=index, state="down")
    assert net.pn.ensure_bridge() == index
    with rtnl(net.node) as ipr:
        link = ipr.link("get", index=index)[0]
        addrs = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.addr("dump", index=index)
                 if a["family"] == socket.AF_INET}
    assert link["flags"] & 1 and addrs == {("10.244.3.1", 24)}
    assert net.pn.remove_bridge() and not net.pn.remove_bridge()


@requires_root
def test_attach_twice_is_a_noop_and_a_half_done_attach_is_redone(net: Net) -> None:
    net.pn.ensure_bridge()
    uid, ns = net.pod("a")
    first = net.pn.attach(uid, ns)
    assert net.pn.attach(uid, ns) == first
    assert veths(net.node) == [first.host_veth] and veths(ns) == ["eth0"]
    # A crash after the veth was made and before eth0 was configured: redo it.
    with rtnl(ns) as ipr:
        ipr.flush_addr(index=ipr.link_lookup(ifname="eth0")[0])
    assert not ping(ns, first.gateway, timeout=0.3)
    assert net.pn.attach(uid, ns) == first
    assert ping(ns, first.gateway)
    assert veths(net.node) == [first.host_veth]


@requires_root
def test_detach_frees_the_address_and_the_veth(net: Net) -> None:
    net.pn.ensure_bridge()
    uid, ns = net.pod("a")
    a = net.pn.attach(uid, ns)
    assert net.pn.detach(uid, ns) == a.ip
    assert veths(net.node) == [] and veths(ns) == []
    assert net.pn.address(uid) is None and net.pn.ipam.allocations() == {}
    assert net.pn.detach(uid, ns) is None  # idempotent
    # A pod whose namespace is already gone: the veth went with it, the address is released.
    uid2, ns2 = net.pod("b")
    net.pn.attach(uid2, ns2)
    netns.remove(ns2)
    assert wait_until(lambda: veths(net.node) == [])
    assert net.pn.detach(uid2, ns2) is not None and net.pn.ipam.allocations() == {}


def wait_until(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@requires_root
def test_hundred_pods_attached_then_detached(net: Net) -> None:
    net.pn.ensure_bridge()
    pods = [net.pod(f"p{i}") for i in range(100)]
    got = [net.pn.attach(uid, ns) for uid, ns in pods]
    assert len({a.ip for a in got}) == 100 and all(a.ip in IPv4Network(CIDR) for a in got)
    assert len(veths(net.node)) == 100 and len(net.pn.ipam.allocations()) == 100
    assert ping(pods[0][1], got[99].ip)
    freed = [net.pn.detach(uid, ns) for uid, ns in pods]
    assert sorted(freed) == sorted(a.ip for a in got)  # type: ignore[type-var]
    assert veths(net.node) == [] and net.pn.ipam.allocations() == {}


@requires_root
def test_ipam_survives_a_new_pod_network_object(net: Net) -> None:
    net.pn.ensure_bridge()
    uid_a, ns_a = net.pod("a")
    a = net.pn.attach(uid_a, ns_a)
    restarted = PodNetwork(CIDR, net.root / "state", node_netns=net.node)  # an agent restart
    assert restarted.attach(uid_a, ns_a) == a
    uid_b, ns_b = net.pod("b")
    assert restarted.attach(uid_b, ns_b).ip != a.ip


@requires_root
def test_exhausted_cidr_fails_cleanly(net: Net) -> None:
    pn = PodNetwork("10.9.0.0/29", net.root / "small", bridge="orchsmall", node_netns=net.node)
    pn.ensure_bridge()
    pods = [net.pod(f"s{i}") for i in range(6)]
    for uid, ns in pods[:5]:
        pn.attach(uid, ns)
    with pytest.raises(AddressesExhausted, match=r"10\.9\.0\.0/29"):
        pn.attach(*pods[5])
    assert len(veths(net.node)) == 5 and veths(pods[5][1]) == []


@requires_root
def test_failed_attach_leaves_nothing(net: Net) -> None:
    net.pn.ensure_bridge()
    # 1. the namespace does not exist: nothing is made, and no namespace is created there
    missing = net.root / "no-such-ns"
    with pytest.raises(PodNetworkError, match="open the pod's network namespace") as info:
        net.pn.attach("ghost", missing)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOENT
    assert not missing.exists()
    # 2. a failure after the veth exists (the pod has a default route already): undone
    uid, ns = net.pod("a")
    with rtnl(ns) as ipr:
        ipr.route("add", dst="0.0.0.0/0", oif=ipr.link_lookup(ifname="lo")[0])
    with pytest.raises(PodNetworkError, match="configure eth0") as info:
        net.pn.attach(uid, ns)
    assert info.value.errno == errno.EEXIST and info.value.step.startswith("configure eth0")
    # 3. an eth0 that is not ours is in the way
    uid2, ns2 = net.pod("b")
    with rtnl(ns2) as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer="notours")
    with pytest.raises(PodNetworkError, match="create veth"):
        net.pn.attach(uid2, ns2)
    # 4. no bridge
    net.pn.remove_bridge()
    uid3, ns3 = net.pod("c")
    with pytest.raises(PodNetworkError, match="ensure_bridge first"):
        net.pn.attach(uid3, ns3)
    assert veths(net.node) == [] and veths(ns) == [] and veths(ns3) == []
    assert sorted(veths(ns2)) == ["eth0", "notours"]  # not ours: left alone
    assert net.pn.ipam.allocations() == {}


@requires_root
def test_counters_change_after_traffic(net: Net) -> None:
    net.pn.ensure_bridge()
    uid_a, ns_a = net.pod("a")
    uid_b, ns_b = net.pod("b")
    net.pn.attach(uid_a, ns_a)
    b = net.pn.attach(uid_b, ns_b)
    before = net.pn.counters(uid_a, ns_a)
    assert set(before) == {"rx_bytes", "tx_bytes", "rx_packets", "tx_packets",
                           "rx_errors", "tx_errors", "rx_dropped", "tx_dropped"}
    for _ in range(5):
        assert ping(ns_a, b.ip)
    after = net.pn.counters(uid_a, ns_a)
    assert after["tx_packets"] >= before["tx_packets"] + 5 and after["rx_packets"] >= before["rx_packets"] + 5
    assert after["tx_bytes"] > before["tx_bytes"] and after["rx_bytes"] > before["rx_bytes"]
    with pytest.raises(PodNetworkError, match="counters"):
        net.pn.counters(uid_a, net.root / "no-such-ns")


def owned_and_foreign(node: Path) -> tuple[dict[str, str], dict[str, tuple[str, int]]]:
    owned, foreign = {}, {}
    with rtnl(node) as ipr:
        for r in ipr.route("dump", family=socket.AF_INET, table=254):
            if r.get("RTA_GATEWAY") is None:
                continue
            dst = f"{r.get('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
            if r["proto"] == RTPROT_ORCH:
                owned[dst] = r.get("RTA_GATEWAY")
            else:
                foreign[dst] = (r.get("RTA_GATEWAY"), r["proto"])
    return owned, foreign


@requires_root
def test_routes_to_nodes_converges_and_leaves_foreign_routes_alone(net: Net) -> None:
    net.pn.ensure_bridge()
    with rtnl(net.node) as ipr:  # the node's uplink, where the other nodes are
        ipr.link("add", ifname="uplink0", kind="veth", peer="uplink0p")
        up = ipr.link_lookup(ifname="uplink0")[0]
        ipr.addr("add", index=up, address="192.168.77.1", prefixlen=24)
        ipr.link("set", index=up, state="up")
        ipr.route("add", dst="10.99.0.0/16", gateway="192.168.77.99", proto=4)  # an admin's (static)
        ipr.route("add", dst="10.244.9.0/24", gateway="192.168.77.98", proto=4)  # in the way of a node
    foreign = {"10.99.0.0/16": ("192.168.77.99", 4), "10.244.9.0/24": ("192.168.77.98", 4)}

    done = net.pn.routes_to_nodes({"10.244.1.0/24": "192.168.77.11", "10.244.2.0/24": "192.168.77.12",
                                   CIDR: "192.168.77.1"})  # our own CIDR is skipped
    assert {(x.op, str(x.dst)) for x in done} == {("add", "10.244.1.0/24"), ("add", "10.244.2.0/24")}
    assert owned_and_foreign(net.node) == ({"10.244.1.0/24": "192.168.77.11", "10.244.2.0/24": "192.168.77.12"},
                                           foreign)
    assert net.pn.routes_to_nodes({"10.244.1.0/24": "192.168.77.11", "10.244.2.0/24": "192.168.77.12"}) == []

    # node 2 readdressed, node 1 gone, node 4 new
    done = net.pn.routes_to_nodes({"10.244.2.0/24": "192.168.77.22", "10.244.4.0/24": "192.168.77.14"})
    assert [(x.op, str(x.dst)) for x in done] == [("delete", "10.244.1.0/24"), ("replace", "10.244.2.0/24"),
                                                  ("add", "10.244.4.0/24")]
    assert owned_and_foreign(net.node) == ({"10.244.2.0/24": "192.168.77.22", "10.244.4.0/24": "192.168.77.14"},
                                           foreign)

    # a CIDR someone else routes already: reported, not taken over; the rest still converges
    with pytest.raises(RouteSyncError, match=r"10\.244\.9\.0/24.*not ours") as info:
        net.pn.routes_to_nodes({"10.244.9.0/24": "192.168.77.19", "10.244.4.0/24": "192.168.77.14"})
    assert set(info.value.failed) == {"10.244.9.0/24"}
    assert owned_and_foreign(net.node) == ({"10.244.4.0/24": "192.168.77.14"}, foreign)

    assert net.pn.routes_to_nodes({}) == [RouteAction("delete", IPv4Network("10.244.4.0/24"),
                                                      IPv4Address("192.168.77.14"))]
    assert owned_and_foreign(net.node) == ({}, foreign)


@requires_root
def test_runs_from_a_thread_of_an_asyncio_program(net: Net) -> None:
    uid, ns = net.pod("a")

    async def main() -> tuple[str, str]:
        await asyncio.to_thread(net.pn.ensure_bridge)
        with pytest.raises(RuntimeError, match="worker thread"):
            net.pn.attach(uid, ns)  # on the loop's own thread: refused, nothing done
        addresses = await asyncio.gather(*(asyncio.to_thread(net.pn.attach, uid, ns) for _ in range(4)))
        assert len(set(addresses)) == 1
        await asyncio.to_thread(net.pn.detach, uid, ns)
        return str(addresses[0].ip), threading.current_thread().name

    ip, _ = asyncio.run(main())
    assert IPv4Address(ip) in IPv4Network(CIDR)
    assert veths(net.node) == [] and net.pn.ipam.allocations() == {}


@requires_root
def test_netns_helpers_refuse_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="network namespace") as info:
        netns.netlink_socket(tmp_path / "missing")
    assert info.value.errno == errno.ENOENT and not (tmp_path / "missing").exists()
    with pytest.raises(ValueError):
        netns.write_sysctl(None, "kernel.hostname", "x")
