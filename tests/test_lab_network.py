"""The lab is a network: each node in a network namespace of its own on the lab bridge, and
after ``lab down`` the host's namespaces, links, addresses and routes exactly as before.

The host is only ever *read* here (pyroute2 dumps in the host's namespace); the one
link the lab adds to it is made by ``lab up`` itself. Traffic goes only between
namespaces the lab made.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from agent.network import netns
from cli import labnet
from tests.conftest import LabCluster, running_lab
from tests.helpers import pid_alive, wait_for

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates namespaces and links")

#: Host ends of *other* labs (another test run on this machine may start or stop one meanwhile).
LAB_LINK = re.compile(r"orch[0-9a-f]{8}")


# ---------------------------------------------------------------- the host, read-only


@dataclass(frozen=True)
class HostNetwork:
    netns: frozenset[str]
    links: frozenset[tuple[Any, ...]]
    addresses: frozenset[tuple[Any, ...]]
    routes: frozenset[tuple[Any, ...]]

    def without_links(self, names: set[str]) -> HostNetwork:
        """This view minus the links called ``names`` and their addresses and routes."""
        gone = {link[0] for link in self.links if link[1] in names}
        return HostNetwork(self.netns, frozenset(lk for lk in self.links if lk[0] not in gone),
                           frozenset(a for a in self.addresses if a[0] not in gone),
                           frozenset(r for r in self.routes if r[0] not in gone))

    def link_names(self) -> set[str]:
        return {link[1] for link in self.links}


def host_network() -> HostNetwork:
    """``ip netns``, links, addresses and routes (every table, both families) of the host's namespace."""
    run_netns = Path("/run/netns")
    names = frozenset(p.name for p in run_netns.iterdir()) if run_netns.is_dir() else frozenset()
    with IPRoute(groups=0) as ipr:
        links = frozenset((lk["index"], lk.get("IFLA_IFNAME"), lk.get(("linkinfo", "kind")), lk.get("IFLA_ADDRESS"),
                           lk.get("IFLA_MTU"), lk.get("IFLA_MASTER")) for lk in ipr.link("dump"))
        addresses = frozenset((a["index"], a["family"], a.get("IFA_ADDRESS"), a["prefixlen"])
                              for a in ipr.addr("dump"))
        routes = frozenset((r.get("RTA_OIF"), r["family"], r.get("RTA_TABLE"), r.get("RTA_DST"), r["dst_len"],
                            r.get("RTA_GATEWAY"), r.get("RTA_PREFSRC"), r["proto"], r["scope"], r["type"],
                            r.get("RTA_PRIORITY")) for r in ipr.route("dump"))
    return HostNetwork(names, links, addresses, routes)


def others(before: HostNetwork, after: HostNetwork, own: str) -> set[str]:
    """Host ends of other labs in either view: not this test's business."""
    return {n for n in before.link_names() | after.link_names() if LAB_LINK.fullmatch(n) and n != own}


def netns_inode(path: str | Path) -> int:
    return os.stat(path).st_ino


def proc_netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


# ---------------------------------------------------------------- the subnet choice (no kernel)


def test_subnet_starts_where_the_lab_id_points_and_skips_what_the_host_uses() -> None:
    assert labnet.choose_subnet("00000005", []) == IPv4Network("10.250.5.0/24")
    assert labnet.choose_subnet("00000105", []) == IPv4Network("10.250.5.0/24")  # modulo the 256 /24s
    taken = [IPv4Network("10.250.5.0/24"), IPv4Network("10.250.6.7/32"), IPv4Network("0.0.0.0/0")]
    assert labnet.choose_subnet("00000005", taken) == IPv4Network("10.250.7.0/24")
    assert labnet.choose_subnet("000000ff", [IPv4Network("10.250.255.0/24")]) == IPv4Network("10.250.0.0/24")
    # A route covering the whole pool leaves nothing.
    with pytest.raises(labnet.LabNetworkError, match="no free /24 left in 10.250.0.0/16"):
        labnet.choose_subnet("00000005", [IPv4Network("10.0.0.0/8")])


def test_the_plan_round_trips_through_lab_json() -> None:
    net = labnet.LabNetwork(IPv4Network("10.250.9.0/24"), "orch0123abcd", Path("/l/netns"))
    assert net.host_address == IPv4Address("10.250.9.1")
    assert net.node_address(1) == IPv4Address("10.250.9.11")
    assert net.node_netns("lab-node-2") == Path("/l/netns/lab-node-2")
    assert labnet.LabNetwork.from_state(net.to_state()) == net
    with pytest.raises(ValueError, match="node number 245"):
        net.node_address(245)


# ---------------------------------------------------------------- a real lab


@needs_root
def test_each_node_has_its_own_network_and_down_leaves_the_host_as_it_was(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli import lab as labmod

    before = host_network()
    with running_lab(tmp_path / "lab", 3, "net-lab-logs") as lab:
        state = labmod.load_state(lab.dir)
        assert state is not None
        own = state["network"]["hostInterface"]
        check_host_gained_only_the_host_end(before, host_network(), lab)
        check_agents_run_in_their_node_namespaces(lab)
        check_nodes_reach_each_other(lab)
        check_nodes_report_their_lab_addresses(lab)
        check_orchctl_reaches_the_scheduler_and_status_shows_the_network(lab, capsys)
        check_restarted_agent_is_back_in_its_namespace(lab)
    after = host_network()
    ignore = others(before, after, own)
    assert after.without_links(ignore) == before.without_links(ignore)
    assert own not in after.link_names()
    assert not (tmp_path / "lab").exists()
    labmod.down(tmp_path / "lab")  # safe to repeat: nothing left to do


def check_host_gained_only_the_host_end(before: HostNetwork, during: HostNetwork, lab: LabCluster) -> None:
    net = lab.info["network"]
    ignore = others(before, during, net["host_interface"])
    before, during = before.without_links(ignore), during.without_links(ignore)
    assert during.netns == before.netns, "the lab must not touch /run/netns"
    new_links = during.links - before.links
    assert {lk[1] for lk in new_links} == {net["host_interface"]} and before.links <= during.links
    (index,) = {lk[0] for lk in new_links}
    assert during.addresses - before.addresses == {(index, socket.AF_INET, net["host_address"], 24)}
    assert before.routes <= during.routes
    assert {r[0] for r in during.routes - before.routes} == {index}  # only the host end's own routes
    subnet = IPv4Network(net["subnet"])
    assert subnet.prefixlen == 24 and IPv4Address(net["host_address"]) == subnet.network_address + 1


def check_agents_run_in_their_node_namespaces(lab: LabCluster) -> None:
    agents = lab.info["agents"]
    paths = [a["netns"] for a in agents]
    assert paths == [str(lab.dir / "netns" / f"lab-node-{i}") for i in (1, 2, 3)]
    inodes = {netns_inode(p) for p in paths}
    assert len(inodes) == 3 and proc_netns_inode(os.getpid()) not in inodes
    for agent in agents:
        assert proc_netns_inode(agent["pid"]) == netns_inode(agent["netns"]), agent["node"]
    subnet = IPv4Network(lab.info["network"]["subnet"])
    addresses = [IPv4Address(a["address"]) for a in agents]
    assert len(set(addresses)) == 3 and all(a in subnet for a in addresses)
    assert IPv4Address(lab.info["network"]["host_address"]) not in addresses


def check_nodes_reach_each_other(lab: LabCluster) -> None:
    """TCP from node 1's namespace to a listener of ours in node 2's namespace, on node 2's address."""
    one, two = lab.agent("lab-node-1"), lab.agent("lab-node-2")
    with netns.inet_socket(two["netns"]) as listener:
        listener.bind((two["address"], 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with netns.inet_socket(one["netns"]) as client:
            client.settimeout(5)
            client.connect((two["address"], port))
            listener.settimeout(5)
            conn, peer = listener.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
        assert peer[0] == one["address"]


def check_nodes_report_their_lab_addresses(lab: LabCluster) -> None:
    with lab.client() as c:
        items, _ = c.list("Node")
    internal = {n["metadata"]["name"]: [a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"]
                for n in items}
    for agent in lab.info["agents"]:
        assert internal[agent["node"]] == [agent["address"]]


def check_orchctl_reaches_the_scheduler_and_status_shows_the_network(lab: LabCluster,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert lab.server.startswith("127.0.0.1:")  # orchctl's config keeps loopback
    capsys.readouterr()
    assert lab.orchctl("get", "nodes", "-o", "wide") == 0
    out = capsys.readouterr().out
    for agent in lab.info["agents"]:
        assert re.search(rf"^{agent['node']}\s+Ready\s.*\s{re.escape(agent['address'])}\s", out, re.M), out
    assert lab.orchctl("lab", "status", "--dir", str(lab.dir)) == 0
    out = capsys.readouterr().out
    for agent in lab.info["agents"]:
        assert re.search(rf"^{agent['node']}\s+{re.escape(agent['address'])}\s+{re.escape(agent['netns'])}$", out, re.M)
    assert "nsenter --net=" in out


def check_restarted_agent_is_back_in_its_namespace(lab: LabCluster) -> None:
    from cli import lab as labmod

    new = labmod.restart(lab.dir, "lab-node-3", signal.SIGKILL)
    path = lab.agent("lab-node-3")["netns"]
    assert "--netns" in new["argv"] and path in new["argv"]
    wait_for(lambda: pid_alive(new["pid"]) and proc_netns_inode(new["pid"]) == netns_inode(path), timeout=10,
             what="the restarted agent to be in its node's namespace")


@needs_root
def test_a_failed_up_removes_the_network_too(tmp_path: Path) -> None:
    """The agent refuses its flags, so ``up`` fails after the network was made; it must all go."""
    from cli import lab as labmod

    own = labnet.host_ifname(labmod.lab_id(tmp_path / "lab"))
    before = host_network()
    with pytest.raises(labmod.LabError, match="lab-node-1 exited during start-up"):
        labmod.up(tmp_path / "lab", 1, node_cpu="lots")
    after = host_network()
    ignore = others(before, after, own)
    assert after.without_links(ignore) == before.without_links(ignore)
    assert not (tmp_path / "lab").exists()
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
