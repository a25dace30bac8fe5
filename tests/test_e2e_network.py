"""Issue 5 end to end on a 3-node lab: pod IPs, pod-to-pod TCP across nodes, hostPort,
an agent restart that keeps addresses, and 100 pods whose deletion frees 100 addresses.

The lab is a network (cli/lab.py): every node's agent in its own network namespace on
the lab bridge, pods on each node's bridge, host-gateway routes between the nodes' pod
CIDRs. Traffic only flows inside the namespaces the lab made; the host reaches the
nodes through the lab's veth (hostPort is tested from there).
"""

from __future__ import annotations

import ipaddress
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apimachinery.errors import OrchError
from tests.conftest import LabCluster, needs_root, running_lab
from tests.helpers import wait_for

pytestmark = needs_root

PORT = 8080
# An echo server: one line in, "echo <line> from <hostname> for <the client's address as seen>" back.
SERVER = ["python3", "-c", """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(64)
while True:
    c, peer = s.accept()
    with c:
        line = c.makefile().readline().strip()
        c.sendall(f"echo {line} from {socket.gethostname()} for {peer[0]}\\n".encode())
"""]
# Connects to argv[1]:8080, sends argv[2], prints the answer.
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], 8080), timeout=5) as c:
    c.sendall(sys.argv[2].encode() + b"\\n")
    print(c.makefile().readline().strip())
"""
SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


@pytest.fixture(scope="module")
def netlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    with running_lab(tmp_path_factory.mktemp("orch-netlab"), 3, "netlab-logs", node_cpu="4",
                     node_memory="8Gi") as lab:
        yield lab


@pytest.fixture
def netns_name(netlab: LabCluster) -> Iterator[str]:
    name = f"n-{secrets.token_hex(4)}"
    yield name
    netlab.empty_namespace(name, timeout=90)


def pod(name: str, ns: str, node: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "host", "command": command}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [container], **spec}}


def running_with_ip(lab: LabCluster, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        with lab.client() as c:
            p = c.get("Pod", name, ns)
        st = p.get("status", {})
        return p if st.get("phase") == "Running" and st.get("podIP") else None

    return wait_for(check, timeout=timeout, what=f"pod {ns}/{name} Running with a podIP")


def exec_out(lab: LabCluster, ns: str, name: str, command: list[str]) -> tuple[int, str]:
    out, code = b"", None
    with lab.client() as c:
        for o in c.exec(ns, name, "main", command):
            which = o.WhichOneof("output")
            if which in ("stdout", "stderr"):
                out += getattr(o, which)
            elif which == "result":
                code = o.result.exit_code
    assert code is not None, "exec ended without a result"
    return code, out.decode()


def connect_from(lab: LabCluster, ns: str, client: str, ip: str) -> str:
    """The echo server's answer as seen by pod ``client``; retried while the server starts listening."""
    token = secrets.token_hex(4)

    def attempt() -> str | None:
        try:
            code, out = exec_out(lab, ns, client, ["python3", "-c", CLIENT, ip, token])
        except OrchError:
            return None  # the pod's agent is not reachable yet (a restarted agent re-registering)
        return out.strip() if code == 0 else None

    answer = wait_for(attempt, timeout=30, interval=0.5, what=f"{client} to reach {ip}:{PORT}")
    assert answer.startswith(f"echo {token} from "), answer
    return answer


def node_cidrs(lab: LabCluster) -> dict[str, ipaddress.IPv4Network]:
    with lab.client() as c:
        nodes = c.list("Node")[0]
    return {n["metadata"]["name"]: ipaddress.ip_network(n["spec"]["podCIDR"]) for n in nodes}


def node_address(lab: LabCluster, node: str) -> str:
    with lab.client() as c:
        n = c.get("Node", node)
    return next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")


def node_netns(lab: LabCluster, node: str) -> Path:
    return Path(lab.agent(node)["netns"])


def veths(path: Path) -> set[str]:
    from agent.network.podnet import rtnl

    with rtnl(path) as ipr:
        return {str(link.get("IFLA_IFNAME")) for link in ipr.get_links()
                if link.get_attr("IFLA_LINKINFO") and link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "veth"
                and link.get("IFLA_IFNAME") != "eth0"}


def allocated(lab: LabCluster, node: str) -> set[str]:
    """The addresses the node's IPAM has handed out (its on-disk book)."""
    from agent.network.ipam import Ipam

    cidr = node_cidrs(lab)[node]
    return {str(ip) for ip in Ipam(cidr, Path(lab.agent(node)["state_dir"]) / "network" / "ipam").allocations()}


def test_pods_talk_tcp_across_nodes_both_ways_by_pod_ip(netlab: LabCluster, netns_name: str) -> None:
    ns = netns_name
    with netlab.client() as c:
        c.apply([pod("server-a", ns, "lab-node-1", SERVER), pod("server-b", ns, "lab-node-2", SERVER),
                 pod("client-a", ns, "lab-node-1", SLEEP), pod("client-b", ns, "lab-node-2", SLEEP),
                 pod("client-c", ns, "lab-node-3", SLEEP)])
    pods = {name: running_with_ip(netlab, ns, name)
            for name in ("server-a", "server-b", "client-a", "client-b", "client-c")}

    # Unique addresses, each inside the CIDR of the node the pod runs on; hostIP is the node's.
    cidrs = node_cidrs(netlab)
    assert len(set(cidrs.values())) == 3
    ips = [p["status"]["podIP"] for p in pods.values()]
    assert len(set(ips)) == len(ips)
    for p in pods.values():
        node = p["spec"]["nodeName"]
        assert ipaddress.ip_address(p["status"]["podIP"]) in cidrs[node], (p["status"], cidrs[node])
        assert p["status"]["podIPs"] == [{"ip": p["status"]["podIP"]}]
        assert p["status"]["hostIP"] == node_address(netlab, node)

    ip_a, ip_b = pods["server-a"]["status"]["podIP"], pods["server-b"]["status"]["podIP"]

    def client_ip(name: str) -> str:
        return str(pods[name]["status"]["podIP"])

    # A → B and B → A across nodes, node 3 → node 1, and on one node too; no NAT on the
    # way: the server sees the client pod's own address.
    assert connect_from(netlab, ns, "client-a", ip_b).endswith(f"from server-b for {client_ip('client-a')}")
    assert connect_from(netlab, ns, "client-b", ip_a).endswith(f"from server-a for {client_ip('client-b')}")
    assert connect_from(netlab, ns, "client-c", ip_a).endswith(f"from server-a for {client_ip('client-c')}")
    assert connect_from(netlab, ns, "client-a", ip_a).endswith(f"from server-a for {client_ip('client-a')}")
    # The check can fail: nothing listens on the client pods.
    code, _ = exec_out(netlab, ns, "client-a", ["python3", "-c", CLIENT, pods["client-b"]["status"]["podIP"], "x"])
    assert code != 0


@pytest.fixture
def privileged_ns(netlab: LabCluster, netns_name: str) -> Iterator[str]:
    """``netns_name`` with a Namespace at pod security level privileged: the baseline level
    (the default) forbids hostPort. The Namespace object goes afterwards."""
    with netlab.client() as c:
        c.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": netns_name, "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}])
    try:
        yield netns_name
    finally:
        with netlab.client() as c:
            c.delete("Namespace", netns_name)


def test_host_port_answers_on_the_nodes_lab_address(netlab: LabCluster, privileged_ns: str) -> None:
    ns = privileged_ns
    host_port = 18000 + secrets.randbelow(1000)
    with netlab.client() as c:
        c.apply([pod("published", ns, "lab-node-1", SERVER,
                     container={"ports": [{"containerPort": PORT, "hostPort": host_port}]})])
    running_with_ip(netlab, ns, "published")
    address = node_address(netlab, "lab-node-1")
    token = secrets.token_hex(4)

    def ask() -> str | None:
        try:
            with socket.create_connection((address, host_port), timeout=2) as s:
                s.sendall(token.encode() + b"\n")
                return s.makefile().readline().strip()
        except OSError:
            return None

    answer = wait_for(ask, timeout=30, interval=0.5, what=f"{address}:{host_port}")
    assert answer is not None and answer.startswith(f"echo {token} from published for "), answer
    # Only on node 1: node 2's address has nothing on that port.
    other = node_address(netlab, "lab-node-2")
    with pytest.raises(OSError):
        socket.create_connection((other, host_port), timeout=2).close()


def test_agent_restart_keeps_pod_addresses_and_connectivity(netlab: LabCluster, netns_name: str) -> None:
    from cli import lab as labmod

    ns = netns_name
    with netlab.client() as c:
        c.apply([pod("server", ns, "lab-node-2", SERVER), pod("client", ns, "lab-node-1", SLEEP)])
    before = {n: running_with_ip(netlab, ns, n)["status"]["podIP"] for n in ("server", "client")}
    connect_from(netlab, ns, "client", before["server"])

    labmod.restart(netlab.dir, "lab-node-2", signal.SIGKILL)
    labmod.restart(netlab.dir, "lab-node-1", signal.SIGKILL)
    netlab.info = labmod.status(netlab.dir)
    # Until the restarted agents have reported again, then: same addresses, same pods.
    after = {n: running_with_ip(netlab, ns, n)["status"]["podIP"] for n in ("server", "client")}
    assert after == before
    assert connect_from(netlab, ns, "client", before["server"]).endswith(f"from server for {before['client']}")


def test_deleting_100_pods_frees_100_addresses_and_100_veths(netlab: LabCluster, netns_name: str) -> None:
    ns = netns_name
    node = "lab-node-3"
    path = node_netns(netlab, node)
    veths_before, addrs_before = veths(path), allocated(netlab, node)
    with netlab.client() as c:
        for first in range(0, 100, 50):  # an apply writes at most 60 objects at once
            c.apply([pod(f"p{i}", ns, node, SLEEP) for i in range(first, first + 50)])

    def all_running() -> list[dict[str, Any]] | None:
        with netlab.client() as c:
            items = c.list("Pod", ns)[0]
        ok = [p for p in items if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")]
        return ok if len(ok) == 100 else None

    pods = wait_for(all_running, timeout=240, interval=1, what="100 pods Running with addresses")
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 100
    assert len(veths(path) - veths_before) == 100
    assert allocated(netlab, node) - addrs_before == ips

    with netlab.client() as c:
        for p in pods:
            c.delete("Pod", p["metadata"]["name"], ns, grace_period_seconds=0)
    def none_left() -> bool:
        with netlab.client() as c:
            return not c.list("Pod", ns)[0]

    wait_for(none_left, timeout=180, interval=1, what="100 pods deleted")
    wait_for(lambda: veths(path) == veths_before, timeout=30, what="their veths to go")
    assert allocated(netlab, node) == addrs_before


def test_pods_deleted_while_their_network_is_set_up_leak_nothing(netlab: LabCluster, netns_name: str) -> None:
    ns = netns_name
    node = "lab-node-2"
    path = node_netns(netlab, node)
    veths_before, addrs_before = veths(path), allocated(netlab, node)
    with netlab.client() as c:
        c.apply([pod(f"brief{i}", ns, node, SLEEP) for i in range(20)])
        # Deleted at once: some before their sandbox exists, some mid-attach, some running.
        for i in range(20):
            c.delete("Pod", f"brief{i}", ns, grace_period_seconds=0)

    def none_left() -> bool:
        with netlab.client() as c:
            return not c.list("Pod", ns)[0]

    wait_for(none_left, timeout=120, interval=0.5, what="the pods to go")
    wait_for(lambda: veths(path) == veths_before, timeout=30, what="no veth left")
    assert allocated(netlab, node) == addrs_before
