"""The agent's pod network wiring (``--network bridge``), without a scheduler or a lab.

Pure parts: the status fields (``podIP``, ``podIPs``, ``hostIP``, ``hostIPs``), the
record that keeps the address, the waiting reasons. Kernel parts: a real ``Agent``
over a real ``Runtime`` whose node network is a namespace the test creates (``net``
fixture of ``test_podnet``; the agent is told ``node_netns``, so its bridge, veths,
routes and nftables table are made there, never in the host's namespace). The
scheduler's part is played by setting what its messages would set (``want_cidr``,
``want_routes``, ``desired``) and running the agent's own steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from agent.agent import Agent, NodeConfig
from agent.main import main as agent_main
from agent.main import parse_args
from agent.network import hostports, netns
from agent.network import node as node_network
from agent.network.podnet import rtnl, host_veth_name
from agent.reconcile import ContainerRecord, PodRecord, RemoveContainer, RemovePod, StartContainer, pod_status
from agent.runtime.runtime import ContainerStatus, Runtime
from apimachinery.validation import validate
from tests.conftest_runtime import cgroup_dirs_named, host_mounts_mentioning, processes_mentioning, unique_name
from tests.test_podnet import CIDR, Net, net_fixture, owned_and_foreign, requires_root, veths  # noqa: F401

NODE_IP = "192.168.77.1"
T0 = 1_714_557_600.0

SERVER = ["python3", "-c", """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(8)
while True:
    c, peer = s.accept()
    with c:
        c.sendall(f"{socket.gethostname()} saw {peer[0]}".encode())
"""]


def make_pod(name: str, *, ports: list[dict[str, Any]] | None = None, command: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "host", "command": command or ["sleep", "1000"]}
    if ports:
        container["ports"] = ports
    pod = validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                    "spec": {"containers": [container], "terminationGracePeriodSeconds": 0}})
    pod["metadata"].update(uid=f"{name}-{os.urandom(4).hex()}", creationTimestamp="2024-05-01T10:00:00Z",
                           resourceVersion="3")
    pod["spec"]["nodeName"] = "n1"
    return pod


# ---------------------------------------------------------------- pure: status and record


def test_status_reports_pod_and_host_addresses_as_kubernetes_does() -> None:
    pod = make_pod("web")
    record = PodRecord(pod, start_time="2024-05-01T10:00:00Z", pod_ip="10.244.3.7")
    status = pod_status(pod, record, [], T0, host_ip=NODE_IP)
    assert (status["hostIP"], status["hostIPs"]) == (NODE_IP, [{"ip": NODE_IP}])
    assert (status["podIP"], status["podIPs"]) == ("10.244.3.7", [{"ip": "10.244.3.7"}])
    # Not attached yet (or --network none): no podIP at all, as the kubelet reports it.
    bare = pod_status(pod, PodRecord(pod), [], T0, host_ip=NODE_IP)
    assert "podIP" not in bare and "podIPs" not in bare and bare["hostIP"] == NODE_IP
    # The address is part of the record on disk: an agent restart reads it back.
    again = PodRecord.from_json(record.to_json())
    assert again.pod_ip == "10.244.3.7" and pod_status(pod, again, [], T0, NODE_IP) == status
    assert PodRecord.from_json({"pod": pod}).pod_ip is None  # a record from before the field


def test_waiting_reasons_of_a_pod_whose_network_is_not_there() -> None:
    pod = make_pod("web")
    for reason, message in (("NetworkNotReady", "network is not ready: no pod CIDR from the scheduler yet"),
                            ("FailedCreatePodSandBox", "Failed to create pod sandbox: pod CIDR 10.9.0.0/30 is "
                                                       "exhausted: all 1 pod addresses are in use")):
        record = PodRecord(pod, containers={"app": ContainerRecord(last_error=message, last_error_at=T0,
                                                                   last_error_reason=reason)})
        status = pod_status(pod, record, [], T0 + 1, NODE_IP)
        assert status["phase"] == "Pending"
        assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": reason, "message": message}}


def test_command_line_network_flags() -> None:
    assert (parse_args([]).network, parse_args([]).bridge) == ("bridge", "orch0")  # what a Kubernetes user expects
    args = parse_args(["--network", "none", "--bridge", "pods0"])
    assert (args.network, args.bridge) == ("none", "pods0")
    with pytest.raises(SystemExit) as info:
        parse_args(["--network", "flannel"])
    assert info.value.code == 2


@requires_root
def test_a_bad_bridge_name_is_a_usage_error_before_anything_runs(caplog: pytest.LogCaptureFixture) -> None:
    assert agent_main(["--bridge", "a-bridge-name-too-long"]) == 2
    assert "--bridge: bridge name 'a-bridge-name-too-long': 1 to 15 characters" in caplog.text


def test_a_node_config_touches_no_network_unless_asked(tmp_path: Path) -> None:
    assert NodeConfig(name="n", schedulers=("x:1",), state_dir=tmp_path, cgroup_root="c", cpu_millis=1,
                      memory_bytes=1).network == "none"


# ---------------------------------------------------------------- a real agent in a node namespace


@dataclass
class Node:
    net: Net
    runtime: Runtime
    config: NodeConfig

    def agent(self) -> Agent:
        """A new Agent over the node's state: a fresh one is an agent restart."""
        return Agent(self.config, self.runtime)


@pytest.fixture(name="node")
def node_fixture(net: Net, tmp_path: Path) -> Iterator[Node]:
    """A Runtime of its own (state and cgroups removed and checked afterwards), and an agent
    config whose network is the ``net`` node namespace, with an uplink address."""
    with rtnl(net.node) as ipr:
        # The node's uplink: a veth whose peer stays in the node too (dummy links may be missing).
        ipr.link("add", ifname="uplink0", kind="veth", peer="uplink0p")
        up = ipr.link_lookup(ifname="uplink0")[0]
        ipr.addr("add", index=up, address=NODE_IP, prefixlen=24)
        ipr.link("set", index=up, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="uplink0p")[0], state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    cgroup_parent = unique_name()
    state_dir = tmp_path / "agent"
    runtime = Runtime(state_dir, f"{cgroup_parent}/node-1")
    config = NodeConfig(name="n1", schedulers=("127.0.0.1:1",), state_dir=runtime.state_dir,
                        cgroup_root=runtime.cgroup_root, cpu_millis=2000, memory_bytes=2**31,
                        address=NODE_IP, network="bridge", node_netns=net.node)
    try:
        yield Node(net, runtime, config)
    finally:
        # What --cleanup does (main.cleanup), here in the test's node namespace.
        forkserver = _read_pid(state_dir / "forkserver.json")
        runtime.cleanup_all()
        if forkserver is not None:  # started by this process: killed above, reaped here
            with contextlib.suppress(ChildProcessError):
                os.waitpid(forkserver, 0)
        failed = node_network.cleanup(runtime.state_dir / "network", node_netns=net.node)
        for name in ("pods", "images"):
            shutil.rmtree(runtime.state_dir / name, ignore_errors=True)
        with contextlib.suppress(OSError):
            runtime.state_dir.rmdir()
        runtime.driver.remove(cgroup_parent)
        assert failed == []
        assert not cgroup_dirs_named(cgroup_parent), "cgroups left behind"
        assert not processes_mentioning(str(state_dir)), "processes left behind"
        assert not host_mounts_mentioning(str(state_dir)), "mounts left behind"
        assert not state_dir.exists(), list(state_dir.rglob("*"))
        assert sorted(veths(net.node)) == ["uplink0", "uplink0p"], "pod veths left behind"


def _read_pid(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def pod_veths(node: Node) -> list[str]:
    return sorted(v for v in veths(node.net.node) if not v.startswith("uplink"))


def add_route(ns: Path, dst: str, gateway: str) -> None:
    with rtnl(ns) as ipr:
        ipr.route("add", dst=dst, gateway=gateway, proto=0x99)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def shut(agent: Agent) -> None:
    agent.pool.shutdown(wait=True)


def connect(ns: Path, ip: str, port: int, timeout: float = 15.0) -> str:
    """The server's answer to a TCP connection from namespace ``ns``; retried while it starts listening."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with netns.inet_socket(ns) as c:
                c.settimeout(2)
                c.connect((ip, port))
                return c.recv(200).decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def remove_everything(agent: Agent, uid: str) -> None:
    """What the planner does for a deleted pod: stop and remove its containers, then RemovePod."""
    for st in await asyncio.to_thread(agent.runtime.list):
        if st.config.pod_uid == uid:
            await asyncio.to_thread(agent.runtime.stop, st.config.id, 0)
            await agent._execute(RemoveContainer(uid, st.config.id))
    await agent._execute(RemovePod(uid))


@requires_root
def test_agent_attaches_before_the_first_container_publishes_host_ports_and_detaches(node: Node) -> None:
    pod = make_pod("web", command=SERVER, ports=[{"containerPort": 8080, "hostPort": 18080}])
    uid = pod["metadata"]["uid"]

    async def scenario() -> None:
        agent = node.agent()
        try:
            agent.desired = {uid: pod}
            # 1. No pod CIDR yet: the container waits, without back-off and without a sandbox half-made.
            await agent._start(StartContainer(uid, "app", restart=False))
            crec = agent.records[uid].containers["app"]
            assert (crec.last_error_reason, crec.start_failures) == ("NetworkNotReady", 0)
            assert agent.runtime.list() == [] and agent.runtime.sandbox_pod_uids() == []
            # 2. The scheduler's CIDR arrives: the bridge is made, the container starts in an attached sandbox.
            agent.want_cidr = CIDR
            await agent.sync_network()
            assert agent.network is not None and agent.network.cidr == CIDR
            await agent._start(StartContainer(uid, "app", restart=False))
            record = agent.records[uid]
            assert record.containers["app"].last_error is None, record.containers["app"]
            ip = record.pod_ip
            assert ip is not None and IPv4Address(ip) in IPv4Network(CIDR)
            assert await asyncio.to_thread(pod_veths, node) == [host_veth_name(uid)]
            states = agent.runtime.list()
            assert [s.status for s in states] == [ContainerStatus.RUNNING]
            status = pod_status(pod, record, states, time.time(), NODE_IP)
            assert (status["podIP"], status["podIPs"], status["hostIP"]) == (ip, [{"ip": ip}], NODE_IP)
            # The container's process is in the attached namespace: the node reaches it by its address
            # (from the bridge's, the pods' gateway).
            gateway = IPv4Network(CIDR).network_address + 1
            assert await asyncio.to_thread(connect, node.net.node, ip, 8080) == f"web saw {gateway}"
            # 3. Its hostPort, on the node's address, from the node itself.
            await agent.sync_network()
            assert await asyncio.to_thread(connect, node.net.node, NODE_IP, 18080) == f"web saw {NODE_IP}"
            # 4. A container restart does not attach again (the record and this process remember it).
            attached = agent.net_verified[uid]
            await agent._ensure_pod_network(uid, pod, record)
            assert agent.net_verified[uid] == attached and record.pod_ip == ip
        finally:
            shut(agent)

        # 5. An agent restart: the same address from the record, checked once, the table rewritten.
        agent = node.agent()
        try:
            agent.desired = {uid: pod}
            assert agent.records[uid].pod_ip == ip
            agent.want_cidr = CIDR
            await agent.sync_network()
            sandboxes = set(agent.runtime.sandbox_pod_uids())
            assert agent._unverified(sandboxes, time.time()) == [uid]
            agent.busy.add(uid)
            await agent._verify_network(uid)
            assert agent.net_verified[uid] == CIDR and agent._unverified(sandboxes, time.time()) == []
            assert agent.records[uid].pod_ip == ip and await asyncio.to_thread(pod_veths, node) == [host_veth_name(uid)]
            assert await asyncio.to_thread(connect, node.net.node, NODE_IP, 18080) == f"web saw {NODE_IP}"
            # 6. Deleted: veth gone, address released, hostPort unpublished.
            await remove_everything(agent, uid)
            assert uid not in agent.records and await asyncio.to_thread(pod_veths, node) == []
            assert agent.network is not None and agent.network.pods is not None
            assert agent.network.pods.ipam.allocations() == {}
            await agent.sync_network()
            assert await asyncio.to_thread(hostports.table, node.net.node) is None
        finally:
            shut(agent)

    run(scenario())


@requires_root
def test_exhausted_cidr_makes_the_pod_wait_with_the_reason_and_leaves_nothing_half_made(node: Node) -> None:
    first, second = make_pod("first"), make_pod("second")
    uid1, uid2 = first["metadata"]["uid"], second["metadata"]["uid"]

    async def scenario() -> None:
        agent = node.agent()
        try:
            agent.desired = {uid1: first, uid2: second}
            agent.want_cidr = "10.9.0.0/30"  # room for one pod
            await agent.sync_network()
            record1 = agent.records[uid1] = PodRecord(first)
            await agent._ensure_pod_network(uid1, first, record1)
            assert record1.pod_ip == "10.9.0.2"
            await agent._start(StartContainer(uid2, "app", restart=False))
            crec = agent.records[uid2].containers["app"]
            assert crec.last_error_reason == "FailedCreatePodSandBox" and crec.start_failures == 1
            assert crec.last_error is not None and crec.last_error.startswith("Failed to create pod sandbox: ")
            assert "10.9.0.0/30 is exhausted" in crec.last_error
            assert agent.records[uid2].pod_ip is None
            assert await asyncio.to_thread(pod_veths, node) == [host_veth_name(uid1)]  # none for the second pod
            status = pod_status(second, agent.records[uid2], [], time.time(), NODE_IP)
            assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "FailedCreatePodSandBox"
            # The first pod goes: the second one gets the address on its retry.
            await remove_everything(agent, uid1)
            await agent._start(StartContainer(uid2, "app", restart=False))
            assert agent.records[uid2].pod_ip == "10.9.0.2"
            assert agent.records[uid2].containers["app"].last_error is None
        finally:
            shut(agent)

    run(scenario())


@requires_root
def test_reconcile_loop_releases_an_address_no_pod_owns_and_routes_follow_the_scheduler(node: Node) -> None:
    async def scenario() -> None:
        agent = node.agent()
        task = None
        try:
            agent.want_cidr = CIDR
            await agent.sync_network()
            net = agent.network
            assert net is not None and net.pods is not None
            # An agent that died between attaching a pod and recording it left this address.
            leaked = await asyncio.to_thread(net.pods.ipam.allocate, "ghost-pod")
            assert leaked in IPv4Network(CIDR)
            agent.have_assignments = True
            task = asyncio.get_running_loop().create_task(agent.reconcile_loop(interval=0.05))
            deadline = time.monotonic() + 10
            while await asyncio.to_thread(net.pods.ipam.allocations):
                assert time.monotonic() < deadline, "the leaked address was never released"
                await asyncio.sleep(0.05)
            # Routes: only once the scheduler has sent them, then exactly its set.
            await asyncio.to_thread(add_route, node.net.node, "10.244.7.0/24", "192.168.77.7")  # ours, from before
            await agent.sync_network()
            assert (await asyncio.to_thread(owned_and_foreign, node.net.node))[0] == {"10.244.7.0/24": "192.168.77.7"}  # not touched yet
            agent.want_routes = {"10.244.1.0/24": "192.168.77.11", CIDR: NODE_IP}
            await agent.sync_network()
            assert (await asyncio.to_thread(owned_and_foreign, node.net.node))[0] == {"10.244.1.0/24": "192.168.77.11"}
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            shut(agent)

    run(scenario())


@requires_root
def test_cleanup_removes_what_the_agent_made_in_its_namespace(node: Node) -> None:
    pod = make_pod("web", ports=[{"containerPort": 80, "hostPort": 18081}])
    uid = pod["metadata"]["uid"]

    async def scenario() -> None:
        agent = node.agent()
        try:
            agent.want_cidr = CIDR
            agent.want_routes = {"10.244.1.0/24": "192.168.77.11"}
            await agent.sync_network()
            record = agent.records[uid] = PodRecord(pod)
            await agent._ensure_pod_network(uid, pod, record)
            await agent.sync_network()
        finally:
            shut(agent)

    run(scenario())
    assert hostports.table(node.net.node) is not None and pod_veths(node) == [host_veth_name(uid)]
    assert owned_and_foreign(node.net.node)[0] == {"10.244.1.0/24": "192.168.77.11"}
    state = node.runtime.state_dir / "network"
    # From another namespace (a --cleanup without the agent's --netns): nothing of the node's is touched.
    copy = node.runtime.state_dir / "network-copy"
    shutil.copytree(state, copy)
    assert node_network.cleanup(copy, node_netns=node.net.namespace("elsewhere")) == [] and not copy.exists()
    assert hostports.table(node.net.node) is not None and pod_veths(node) == [host_veth_name(uid)]
    assert node_network.cleanup(state, node_netns=node.net.node) == []
    with rtnl(node.net.node) as ipr:  # no bridge, no pod veth
        assert {link.get("IFLA_IFNAME") for link in ipr.get_links()} == {"lo", "uplink0", "uplink0p"}
    assert owned_and_foreign(node.net.node)[0] == {}
    assert hostports.table(node.net.node) is None and not state.exists()
    assert node_network.cleanup(state, node_netns=node.net.node) == []  # nothing recorded: nothing touched
    with pytest.raises(ConnectionRefusedError):
        connect(node.net.node, NODE_IP, 18081, timeout=0.2)


@pytest.mark.parametrize(("host", "insecure", "plain_http"), [
    ("127.0.0.1:5000", (), True),
    ("localhost:5000", (), True),
    ("[::1]:5000", (), True),
    ("10.250.5.1:5000", ("10.250.5.0/24",), True),  # a lab's registry on the host's end of its network
    ("10.250.6.1:5000", ("10.250.5.0/24",), False),
    ("reg.example:5000", ("reg.example:5000",), True),
    ("reg.example:5000", ("reg.example",), True),
    ("reg.example:5000", ("other.example:5000",), False),
    ("registry-1.docker.io", (), False),
])
def test_insecure_registries_as_docker_decides(host: str, insecure: tuple[str, ...], plain_http: bool) -> None:
    from agent.agent import insecure_registry

    assert insecure_registry(host, insecure) is plain_http
