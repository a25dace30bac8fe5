"""hostPort publishing with nftables DNAT (``agent.network.hostports``).

The pure parts (which ports a pod publishes, conflicts, the rendered transaction) run
anywhere. The kernel tests build, inside namespaces they create (``net`` fixture of
``test_podnet``, which removes them and checks nothing leaks into the host's
namespace): a "node" namespace with the pod bridge, "pod" namespaces with servers,
and a "client" namespace joined to the node by a veth (node 192.168.77.1 and .3,
client .2). Every nftables rule is written in the node namespace, never the host's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.network import HostPortError, NftablesUnavailable, hostports, netns
from agent.network.hostports import HostPort, host_ports, plan_ports, render
from agent.network.podnet import rtnl, _wait_operational
from tests.test_podnet import CIDR, Net, net_fixture, requires_root  # noqa: F401 - the `net` fixture

NODE_IP = "192.168.77.1"
NODE_IP2 = "192.168.77.3"
CLIENT_IP = "192.168.77.2"


def pod(name: str, ports: list[dict[str, Any]], created: str = "2024-05-01T10:00:00Z",
        namespace: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "creationTimestamp": created},
            "spec": {"containers": [{"name": "app", "image": "host", "ports": ports}]}}


# ---------------------------------------------------------------- pure: the desired set


def test_host_ports_of_a_pod() -> None:
    p = pod("web", [{"containerPort": 80, "hostPort": 8080},
                    {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "10.0.0.5"},
                    {"containerPort": 9000},  # not published
                    {"containerPort": 443, "hostPort": 8443, "hostIP": "0.0.0.0"},
                    {"containerPort": 81, "hostPort": 8081, "hostIP": "fd00::1"}])
    ports, problems = host_ports(p, "10.244.3.2")
    assert ports == [HostPort("TCP", 8080, None, "10.244.3.2", 80, "default/web"),
                     HostPort("UDP", 5353, "10.0.0.5", "10.244.3.2", 53, "default/web"),
                     HostPort("TCP", 8443, None, "10.244.3.2", 443, "default/web")]
    assert problems == ["pod default/web: spec.containers[0].ports[4].hostIP: fd00::1 is IPv6; "
                        "the node publishes IPv4 only"]
    _, problems = host_ports(pod("bad", [{"containerPort": "x", "hostPort": 1},
                                         {"containerPort": 1, "hostPort": 70000},
                                         {"containerPort": 1, "hostPort": 2, "protocol": "ICMP"}]), "10.244.3.9")
    assert [p.split(": ", 2)[1] for p in problems] == ["spec.containers[0].ports[0]", "spec.containers[0].ports[1]",
                                                       "spec.containers[0].ports[2].protocol"]


def test_plan_ports_keeps_the_older_pod_on_a_conflict_and_orders_specific_first() -> None:
    older = pod("older", [{"containerPort": 80, "hostPort": 8080}], created="2024-05-01T10:00:00Z")
    newer = pod("newer", [{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.5"},
                          {"containerPort": 80, "hostPort": 8080, "protocol": "UDP"},
                          {"containerPort": 81, "hostPort": 9090, "hostIP": "10.0.0.5"}],
                created="2024-05-01T11:00:00Z")
    ports, problems = plan_ports([(newer, "10.244.3.3"), (older, "10.244.3.2")])
    assert [(p.pod, p.host_ip, p.protocol, p.host_port) for p in ports] == [
        ("default/newer", "10.0.0.5", "TCP", 9090),  # a specific address first
        ("default/older", None, "TCP", 8080),
        ("default/newer", None, "UDP", 8080),  # another protocol is another port
    ]
    assert problems == ["pod default/newer: hostPort 8080/TCP is already published for pod default/older; "
                        "not published"]
    assert plan_ports([]) == ([], [])


def test_render_is_one_whole_table() -> None:
    ports, _ = plan_ports([(pod("web", [{"containerPort": 80, "hostPort": 8080},
                                        {"containerPort": 53, "hostPort": 53, "protocol": "UDP",
                                         "hostIP": "10.0.0.5"}]), "10.244.3.2")])
    text = render(ports, pod_cidr=CIDR, bridge="orch0")
    lines = [line.strip() for line in text.splitlines()]
    # the old table goes whatever it held (add first, so the delete cannot fail), then the new one
    assert lines[:3] == ["add table ip orch-hostports", "delete table ip orch-hostports", "table ip orch-hostports {"]
    assert "type nat hook prerouting priority dstnat; policy accept;" in lines
    assert "type nat hook output priority -100; policy accept;" in lines
    assert lines.count("fib daddr type local ip daddr != 127.0.0.0/8 jump hostports") == 2
    assert 'ct status dnat ip saddr 10.244.3.0/24 oifname "orch0" masquerade' in lines
    rules = lines[lines.index("chain hostports {") + 1:-2]
    assert rules == ['ip daddr 10.0.0.5 udp dport 53 dnat to 10.244.3.2:53 comment "default/web"',
                     'tcp dport 8080 dnat to 10.244.3.2:80 comment "default/web"']
    assert render([]) == "add table ip orch-hostports\ndelete table ip orch-hostports\n"
    assert "masquerade" not in render(ports)  # no CIDR, no hairpin rule


# ---------------------------------------------------------------- kernel: the node, its pods, a client


class Lan:
    """A client namespace on a veth to the node namespace: the node's "uplink"."""

    def __init__(self, net: Net) -> None:
        self.client = net.namespace("client")
        client_fd = os.open(self.client, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with rtnl(net.node) as node:
                node.link("add", ifname="uplink0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": client_fd})
                up = node.link_lookup(ifname="uplink0")[0]
                node.addr("add", index=up, address=NODE_IP, prefixlen=24)
                node.addr("add", index=up, address=NODE_IP2, prefixlen=24)
                node.link("set", index=up, state="up")
        finally:
            os.close(client_fd)
        with rtnl(self.client) as client:
            eth0 = client.link_lookup(ifname="eth0")[0]
            client.addr("add", index=eth0, address=CLIENT_IP, prefixlen=24)
            client.link("set", index=eth0, state="up")
            client.link("set", index=client.link_lookup(ifname="lo")[0], state="up")
            _wait_operational(client, "eth0")
        with rtnl(net.node) as node:
            node.link("set", index=node.link_lookup(ifname="lo")[0], state="up")
            _wait_operational(node, "uplink0")


@contextlib.contextmanager
def server(ns: Path, port: int, name: str, kind: int = socket.SOCK_STREAM) -> Iterator[None]:
    """A server in namespace ``ns`` on 0.0.0.0:``port``: it answers ``<name> saw <peer address>``."""
    srv = netns.inet_socket(ns, kind)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.settimeout(0.05)
    if kind == socket.SOCK_STREAM:
        srv.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                if kind == socket.SOCK_STREAM:
                    conn, peer = srv.accept()
                    with conn:
                        conn.settimeout(3)
                        conn.recv(100)
                        conn.sendall(f"{name} saw {peer[0]}".encode())
                else:
                    _, peer = srv.recvfrom(100)
                    srv.sendto(f"{name} saw {peer[0]}".encode(), peer)
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, name=f"server-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        srv.close()


def ask(ns: Path, ip: str, port: int, kind: int = socket.SOCK_STREAM) -> str:
    with netns.inet_socket(ns, kind) as c:
        c.settimeout(3)
        if kind == socket.SOCK_STREAM:
            c.connect((ip, port))
            c.sendall(b"hello")
            return c.recv(200).decode()
        c.sendto(b"hello", (ip, port))
        return c.recv(200).decode()


def published(*entries: tuple[dict[str, Any], str]) -> list[HostPort]:
    ports, problems = plan_ports(entries)
    assert problems == []
    return ports


@requires_root
def test_host_port_reaches_the_pod_from_outside_the_node_and_from_the_node(net: Net) -> None:
    net.pn.ensure_bridge()
    lan = Lan(net)
    uid, ns = net.pod("web")
    a = net.pn.attach(uid, ns)
    with server(ns, 80, "web"), server(ns, 53, "dns", socket.SOCK_DGRAM):
        # Nothing published yet: the node refuses (the check can fail).
        with pytest.raises(ConnectionRefusedError):
            ask(lan.client, NODE_IP, 8080)
        hostports.apply(published((pod("web", [{"containerPort": 80, "hostPort": 8080},
                                                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"}]),
                                   str(a.ip))), net.node, pod_cidr=CIDR, bridge=net.pn.bridge)
        # From another host: the pod sees the client's own address (DNAT only, no SNAT).
        assert ask(lan.client, NODE_IP, 8080) == f"web saw {CLIENT_IP}"
        assert ask(lan.client, NODE_IP2, 8080) == f"web saw {CLIENT_IP}"  # every local address
        assert ask(lan.client, NODE_IP, 5353, socket.SOCK_DGRAM) == f"dns saw {CLIENT_IP}"
        # From the node itself (the output chain), to its own address.
        assert ask(net.node, NODE_IP, 8080) == f"web saw {NODE_IP}"
        # Not on loopback (see the module's gotcha), and not on other ports.
        with pytest.raises(ConnectionRefusedError):
            ask(net.node, "127.0.0.1", 8080)
        with pytest.raises(ConnectionRefusedError):
            ask(lan.client, NODE_IP, 8081)
    text = hostports.table(net.node)
    assert text is not None and "dnat to 10.244.3." in text
    hostports.remove(net.node)
    assert hostports.table(net.node) is None
    hostports.remove(net.node)  # idempotent


@requires_root
def test_replacing_the_set_removes_stale_rules_and_host_ip_is_respected(net: Net) -> None:
    net.pn.ensure_bridge()
    lan = Lan(net)
    uid_a, ns_a = net.pod("a")
    uid_b, ns_b = net.pod("b")
    a, b = net.pn.attach(uid_a, ns_a), net.pn.attach(uid_b, ns_b)
    with server(ns_a, 80, "a"), server(ns_b, 80, "b"):
        hostports.apply(published((pod("a", [{"containerPort": 80, "hostPort": 8080}]), str(a.ip))), net.node)
        assert ask(lan.client, NODE_IP, 8080) == f"a saw {CLIENT_IP}"
        # The set changes: a's port is gone, b is published on one address only.
        hostports.apply(published((pod("b", [{"containerPort": 80, "hostPort": 9090, "hostIP": NODE_IP2}]),
                                   str(b.ip))), net.node)
        with pytest.raises(ConnectionRefusedError):
            ask(lan.client, NODE_IP, 8080)
        assert ask(lan.client, NODE_IP2, 9090) == f"b saw {CLIENT_IP}"
        with pytest.raises(ConnectionRefusedError):
            ask(lan.client, NODE_IP, 9090)  # the node's other address: not published there
        # A port moved to another pod: the same hostPort now reaches b.
        hostports.apply(published((pod("b", [{"containerPort": 80, "hostPort": 8080}]), str(b.ip))), net.node)
        assert ask(lan.client, NODE_IP, 8080) == f"b saw {CLIENT_IP}"
        assert hostports.table(net.node).count("dnat to") == 1  # type: ignore[union-attr]
    hostports.remove(net.node)


@requires_root
def test_hairpin_a_pod_reaches_a_published_port_of_its_own_node(net: Net) -> None:
    net.pn.ensure_bridge()
    Lan(net)
    uid_a, ns_a = net.pod("a")
    uid_b, ns_b = net.pod("b")
    a = net.pn.attach(uid_a, ns_a)
    net.pn.attach(uid_b, ns_b)
    with server(ns_a, 80, "a"):
        hostports.apply(published((pod("a", [{"containerPort": 80, "hostPort": 8080}]), str(a.ip))), net.node,
                        pod_cidr=CIDR, bridge=net.pn.bridge)
        # Masqueraded to the gateway, so the replies come back through the node's conntrack.
        assert ask(ns_b, NODE_IP, 8080) == f"a saw {net.pn.gateway}"
        assert ask(ns_a, NODE_IP, 8080) == f"a saw {net.pn.gateway}"  # to itself
    hostports.remove(net.node)


@requires_root
def test_a_refused_command_says_what_nft_said(net: Net) -> None:
    with pytest.raises(HostPortError, match="nft refused the command: Error: syntax error") as info:
        hostports.run("add table ip orch-hostports; bogus", net.node)
    assert "bogus" in str(info.value)
    # One transaction: the table of the first half was not made either.
    assert hostports.table(net.node) is None
    with pytest.raises(HostPortError, match="No such file or directory"):
        hostports.run("delete table ip orch-hostports", net.node)


def test_missing_libnftables_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostports, "_lib", None)
    monkeypatch.setattr(hostports, "LIBRARY", "libnftables-not-here.so.0")
    with pytest.raises(NftablesUnavailable, match=r"apt-get install libnftables1") as info:
        hostports.run("list ruleset")
    assert info.value.errno == errno.ENOPKG
    hostports.remove()  # nothing could have been made without it: nothing to do, no error
