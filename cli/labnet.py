"""The lab's network: every node in a network namespace of its own, joined by one bridge.

::

    host namespace    orch<id> 10.250.N.1/24        etcd and schedulers: 127.0.0.1:P,
                         │ veth                      schedulers also 10.250.N.1:P
    lab namespace      host ───────┐
    <lab>/netns/lab                lab0  (bridge, no address)
                       lab-node-1 ─┤
                       lab-node-2 ─┘
                         │ veth, one per node
    node namespaces    eth0 10.250.N.11/24          agent of lab-node-1 (and its pods' bridge)
    <lab>/netns/<node> eth0 10.250.N.12/24          agent of lab-node-2

The host end ``orch<id>`` (the lab id: 8 hex digits, so the name fits IFNAMSIZ) is the
one thing the lab adds to the host's namespace: a link, its address and the kernel's
connected (and local/broadcast) routes for it. Schedulers listen on its address too,
so agents dial them over the lab network, and the schedulers' log/exec proxy reaches
the agents (listening on their node's address) the same way back. The nodes have no
default route: the lab's traffic stays on the /24 (and the pods' networks the agents
route between themselves), whatever the host forwards.

**Namespaces are files in the lab directory** (``<lab>/netns/...``, nsfs bind mounts
made by ``agent.network.netns.create``), not in ``/run/netns``: concurrent labs never
clash over names and ``ip netns`` is left alone. ``nsenter --net=PATH`` enters one.

**The subnet.** A /24 of ``DEFAULT_POOL`` (10.250.0.0/16), the third octet derived
from the lab id, moving on to the next /24 while one overlaps an address or a route
of the host (the machine's own networks, and other labs' host ends). The choice and
the host end's address are made under a lock (``LOCK_FILE``, flock), so two labs
starting together never pick the same /24.

**Teardown** deletes the host end (deleting one end of a veth deletes both), then
unmounts every namespace file; a namespace dies with its last reference, and its
veth ends with it. Everything needed is in lab.json (``LabNetwork.to_state``), so it
works after a crash, and a second run finds nothing to do.

Kernel gotchas, written down:

- With ``br_netfilter`` loaded, bridged IPv4 frames go through the iptables/nftables
  hooks of the *bridge's* namespace (the ``bridge-nf-call-*`` sysctls are per namespace
  on current kernels, 1 in a new one). The lab namespace has no rules, so nothing would
  be dropped, but the lab turns them off there anyway: lab0 is plain L2, and a rule
  someone adds to the lab namespace later cannot silently filter node-to-node traffic.
  It turns them off in every node's namespace too, as on a machine without
  br_netfilter: the pods' bridge needs none of it (hostPorts are DNAT'd where packets
  are routed, and a pod reaching its own node's hostPort is masqueraded), and with the
  hooks on every frame bridged to a pod pays for them (bench/pod_network_throughput.py:
  about 0.83 of a plain veth's throughput with them off against 0.74 with them on, in
  one run, both ways measured alternately). The agent leaves the sysctls alone: on a
  real node they are the administrator's.
- The host end is deleted explicitly, not left to the lab namespace's death: a
  namespace is destroyed asynchronously (the kernel's cleanup_net work), so its veth
  ends, the host's one included, would outlive ``down`` for a moment.
- The host end gets IPv6 disabled before it goes up: otherwise the kernel gives it a
  link-local address and routes the lab never asked for.
- A new veth's carrier reaches operational state UP a little after both ends are up
  (linkwatch); until then its qdisc drops everything. ``create`` waits for it, so an
  agent's first SYN to the scheduler is not lost (a second lost to the retransmit).
- ``setns`` moves only the calling thread (``agent.network.netns``), and pyroute2's
  ``IPRoute`` here is built on a netlink socket made inside the namespace: nothing forks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.network import netns
from agent.network.podnet import rtnl
from apimachinery.errors import OrchError

__all__ = ["BRIDGE", "DEFAULT_POOL", "LabError", "LabNetwork", "LabNetworkError", "choose_subnet", "create",
           "host_networks", "is_netns", "remove", "remove_namespaces"]

DEFAULT_POOL = IPv4Network("10.250.0.0/16")
BRIDGE = "lab0"
#: The lab namespace's end of the host veth.
HOST_PORT = "host"
#: A node's uplink, in the node's namespace.
UPLINK = "eth0"
#: Node i gets host number FIRST_NODE + i of the /24 (.11, .12, ...); .1 is the host end.
FIRST_NODE = 10
MAX_NODES = 254 - FIRST_NODE
LOCK_FILE = Path("/run/lock/orch-lab-network.lock")
OPERSTATE_TIMEOUT = 5.0
IFNAMSIZ = 16


class LabError(OrchError):
    """Anything ``orchctl lab`` cannot do (defined here, the lowest layer; ``cli.lab`` re-exports it)."""


class LabNetworkError(LabError):
    """A step of building or removing the lab's network failed; the message names the step."""


# ---------------------------------------------------------------- the plan (no kernel)


@dataclass(frozen=True, slots=True)
class LabNetwork:
    """Where everything of one lab's network is: all ``down`` needs, as lab.json keeps it."""

    subnet: IPv4Network
    host_ifname: str
    netns_dir: Path

    @property
    def host_address(self) -> IPv4Address:
        return self.subnet.network_address + 1

    @property
    def lab_netns(self) -> Path:
        return self.netns_dir / "lab"

    def node_netns(self, node: str) -> Path:
        return self.netns_dir / node

    def node_address(self, i: int) -> IPv4Address:
        """The address of the i-th node (1-based)."""
        if not 1 <= i <= MAX_NODES:
            raise ValueError(f"node number {i}: a lab's /24 has room for nodes 1 to {MAX_NODES}")
        return self.subnet.network_address + FIRST_NODE + i

    def to_state(self) -> dict[str, Any]:
        return {"subnet": str(self.subnet), "hostInterface": self.host_ifname,
                "hostAddress": str(self.host_address), "netnsDir": str(self.netns_dir),
                "netns": str(self.lab_netns), "bridge": BRIDGE}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LabNetwork:
        return cls(IPv4Network(state["subnet"]), str(state["hostInterface"]), Path(state["netnsDir"]))


def host_ifname(ident: str) -> str:
    name = f"orch{ident}"
    if len(name) >= IFNAMSIZ:
        raise ValueError(f"lab id {ident!r}: the host interface name {name!r} is longer than {IFNAMSIZ - 1}")
    return name


def choose_subnet(ident: str, taken: Iterable[IPv4Network], pool: IPv4Network = DEFAULT_POOL) -> IPv4Network:
    """The first /24 of ``pool``, from the one the lab id points at on, that overlaps nothing ``taken``.

    Starting where the id points spreads labs over the pool, so concurrent labs rarely
    even look at the same /24; ``taken`` (the host's addresses and routes) settles it.
    """
    if pool.prefixlen > 24:
        raise ValueError(f"subnet pool {pool}: must hold at least one /24")
    subnets = list(pool.subnets(new_prefix=24))
    taken = [t for t in taken if t.prefixlen > 0]  # a default route overlaps everything and takes nothing
    start = int(ident, 16) % len(subnets)
    for k in range(len(subnets)):
        candidate = subnets[(start + k) % len(subnets)]
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise LabNetworkError(f"no free /24 left in {pool}: every one overlaps an address or route of this host")


def is_netns(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a network namespace (an nsfs file), not merely exists: a crash
    inside ``netns.create`` can leave the empty file it was about to mount on."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/thread-self/ns/net").st_dev
    except OSError:
        return False


# ---------------------------------------------------------------- netlink plumbing


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Name the step in a kernel error escaping it."""
    try:
        yield
    except LabNetworkError:
        raise
    except NetlinkError as e:
        raise LabNetworkError(f"lab network: {what}: {os.strerror(e.code) if e.code else e}") from e
    except OSError as e:
        raise LabNetworkError(f"lab network: {what}: {e}") from e


def _link(ipr: IPRoute, ifname: str) -> Any | None:
    try:
        links = ipr.link("get", ifname=ifname)
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return links[0] if links else None


def _index(ipr: IPRoute, ifname: str) -> int:
    link = _link(ipr, ifname)
    if link is None:
        raise OSError(errno.ENODEV, f"no link {ifname}")
    return int(link["index"])


def _wait_operational(ipr: IPRoute, ifname: str, deadline: float) -> None:
    """Until the link's operstate is UP (see the module docstring); past ``deadline`` it is an error."""
    pause = 0.0005
    while True:
        link = _link(ipr, ifname)
        state = None if link is None else link.get("IFLA_OPERSTATE")
        if state == "UP":
            return
        if time.monotonic() >= deadline:
            raise OSError(errno.ETIMEDOUT, f"{ifname} is {state or 'gone'}, not UP, after {OPERSTATE_TIMEOUT:.0f}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Held while a lab picks its subnet and puts the address on its host end."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------- reading the host


def host_networks() -> list[IPv4Network]:
    """Every IPv4 network the host's namespace has an address in or a route to (read-only)."""
    found: list[IPv4Network] = []
    with rtnl(None) as ipr:
        for a in ipr.addr("dump", family=socket.AF_INET):
            found.append(IPv4Interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}").network)
        for r in ipr.route("dump", family=socket.AF_INET):
            if r["dst_len"] > 0 and r.get("RTA_DST"):
                found.append(IPv4Network(f"{r.get('RTA_DST')}/{r['dst_len']}", strict=False))
    return found


# ---------------------------------------------------------------- building


def _make_lab_namespace(net: LabNetwork) -> None:
    """The lab namespace with bridge lab0 up, plain L2 (no bridge-netfilter)."""
    with _step(f"create the lab namespace {net.lab_netns}"):
        netns.create(net.lab_netns)
    with _step(f"create bridge {BRIDGE}"), rtnl(net.lab_netns) as ipr:
        ipr.link("add", ifname=BRIDGE, kind="bridge")
        ipr.link("set", index=_index(ipr, BRIDGE), state="up")
    _bridges_plain_l2(net.lab_netns, "the lab namespace")


def _bridges_plain_l2(path: Path, where: str) -> None:
    """Turn off br_netfilter's hooks for the bridges of the namespace at ``path`` (see the
    module docstring); nothing to do where br_netfilter is not loaded."""
    for family in ("iptables", "ip6tables", "arptables"):
        try:
            netns.write_sysctl(path, f"net.bridge.bridge-nf-call-{family}", "0")
        except OSError as e:
            if e.errno != errno.ENOENT:  # no br_netfilter: nothing to turn off
                raise LabNetworkError(f"lab network: turn off bridge-nf-call-{family} in {where}: {e}") from e


def _make_host_end(net: LabNetwork) -> None:
    """The veth from the host into lab0; the host end gets the subnet's .1 (and no IPv6)."""
    host_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _step(f"create veth {net.host_ifname} (host) <-> {HOST_PORT} on {BRIDGE}"), \
                rtnl(net.lab_netns) as lab:
            lab.link("add", ifname=HOST_PORT, kind="veth", master=_index(lab, BRIDGE), state="up",
                     peer={"ifname": net.host_ifname, "net_ns_fd": host_fd})
    finally:
        os.close(host_fd)
    with _step(f"disable IPv6 on {net.host_ifname}"), contextlib.suppress(FileNotFoundError):
        # No file when the host has IPv6 off altogether: then there is nothing to disable.
        Path(f"/proc/sys/net/ipv6/conf/{net.host_ifname}/disable_ipv6").write_text("1")
    with _step(f"give {net.host_ifname} {net.host_address}/{net.subnet.prefixlen}"), rtnl(None) as host:
        index = _index(host, net.host_ifname)
        host.addr("add", index=index, address=str(net.host_address), prefixlen=net.subnet.prefixlen)
        host.link("set", index=index, state="up")


def _make_node(net: LabNetwork, node: str, address: IPv4Address) -> None:
    """The node's namespace: loopback up, eth0 (peer on lab0) with the node's address."""
    path = net.node_netns(node)
    with _step(f"create the namespace of {node}"):
        netns.create(path)
    _bridges_plain_l2(path, f"the namespace of {node}")
    node_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _step(f"create veth {node} on {BRIDGE} <-> {UPLINK} in {node}"), rtnl(net.lab_netns) as lab:
            lab.link("add", ifname=node, kind="veth", master=_index(lab, BRIDGE), state="up",
                     peer={"ifname": UPLINK, "net_ns_fd": node_fd})
    finally:
        os.close(node_fd)
    with _step(f"configure {UPLINK} {address}/{net.subnet.prefixlen} in {node}"), rtnl(path) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")
        index = _index(ipr, UPLINK)
        ipr.addr("add", index=index, address=str(address), prefixlen=net.subnet.prefixlen)
        ipr.link("set", index=index, state="up")


def _wait_links(net: LabNetwork, nodes: Sequence[str]) -> None:
    deadline = time.monotonic() + OPERSTATE_TIMEOUT
    with _step(f"wait for {net.host_ifname} to be up"), rtnl(None) as host:
        _wait_operational(host, net.host_ifname, deadline)
    for node in nodes:
        with _step(f"wait for {UPLINK} of {node} to be up"), rtnl(net.node_netns(node)) as ipr:
            _wait_operational(ipr, UPLINK, deadline)


def create(netns_dir: Path, ident: str, nodes: Sequence[str], record: Callable[[LabNetwork], None],
           pool: IPv4Network = DEFAULT_POOL) -> LabNetwork:
    """Build the lab's network for ``nodes`` (node i+1 is ``nodes[i]``); see the module docstring.

    ``record`` is called with the plan before the kernel is touched, so that a crash
    at any later point leaves lab.json knowing what to remove. On failure the caller
    removes what was made (``remove``); nothing here is undone half-way.
    """
    if len(nodes) > MAX_NODES:
        raise LabNetworkError(f"--nodes: at most {MAX_NODES} nodes fit a lab's /24, not {len(nodes)}")
    for node in nodes:
        if not 0 < len(node) < IFNAMSIZ:
            raise LabNetworkError(f"node name {node!r}: names the node's port on {BRIDGE}, "
                                  f"so at most {IFNAMSIZ - 1} characters")
    ifname = host_ifname(ident)
    with _step(f"make {netns_dir}"):
        netns_dir.mkdir(parents=True, exist_ok=True)
    with _lock():
        with _step("read the host's addresses and routes"):
            taken = host_networks()
        net = LabNetwork(choose_subnet(ident, taken, pool), ifname, netns_dir)
        record(net)
        with _step(f"check that {ifname} is free"), rtnl(None) as host:
            if _link(host, ifname) is not None:
                raise LabNetworkError(f"lab network: the host already has a link {ifname} (a lab with the same id "
                                      f"that is running, or one left behind: `ip link del {ifname}` removes it)")
        _make_lab_namespace(net)
        _make_host_end(net)
    for i, node in enumerate(nodes, start=1):
        _make_node(net, node, net.node_address(i))
    _wait_links(net, nodes)
    return net


# ---------------------------------------------------------------- removing


def remove(net: LabNetwork) -> None:
    """Delete the host end and every namespace of the lab. Missing pieces are fine; safe to repeat."""
    with _step(f"delete {net.host_ifname}"), rtnl(None) as host:
        link = _link(host, net.host_ifname)
        if link is not None and link.get(("linkinfo", "kind")) == "veth":
            try:
                host.link("del", index=link["index"])
            except NetlinkError as e:
                if e.code not in (errno.ENODEV, errno.ENOENT):
                    raise
    remove_namespaces(net.netns_dir)


def remove_namespaces(netns_dir: Path) -> None:
    """Unmount and delete every namespace file in ``netns_dir`` (nodes first, the lab last), then the dir."""
    try:
        files = sorted(netns_dir.iterdir(), key=lambda p: (p.name == "lab", p.name))
    except FileNotFoundError:
        return
    for path in files:
        with _step(f"remove the namespace {path}"):
            netns.remove(path)
    with contextlib.suppress(OSError):
        netns_dir.rmdir()
