"""A node's pod network: a bridge, one veth pair per pod, host-gateway routes to other nodes.

::

    node's network namespace                          pod's network namespace
    ┌─────────────────────────────────────┐           ┌──────────────────────────┐
    │ orch0 (bridge) 10.244.3.1/24        │           │ eth0 10.244.3.2/24       │
    │   └─ veth1a2b3c4d5e6 ───────────────┼── veth ───┼─ default via 10.244.3.1  │
    │ 10.244.7.0/24 via 192.168.50.12     │           └──────────────────────────┘
    │   proto 0x99 (routes_to_nodes)      │
    └─────────────────────────────────────┘

Each kernel step is one small function over a pyroute2 ``IPRoute`` (``_create_veth``,
``_configure_eth0``, ...); ``PodNetwork`` composes them, undoes them on failure and
keeps the address book (``ipam.Ipam``). Decisions that need no kernel are plain
functions: ``host_veth_name``, ``plan_routes``.

**Threads, not the event loop.** Every method blocks on netlink. The agent calls them
through ``asyncio.to_thread``; called on a thread that runs an event loop they raise
RuntimeError (pyroute2's synchronous API drives an event loop of its own, one per
call here, closed before returning). Nothing forks and nothing outlives a call: each
call opens its netlink sockets in the namespaces it needs (``netns.netlink_socket``,
a thread-local ``setns``), and closes them and pyroute2's loop before it returns.

**Namespaces by path.** ``node_netns`` is the node's namespace (None: the caller's own,
the agent in production; a lab node's or a test's otherwise); a pod's namespace is the
nsfs file of its sandbox (``Runtime.sandbox_netns_path``).

**Sysctls.** ``ensure_bridge(forwarding=True)`` sets ``net.ipv4.ip_forward=1`` in the
node's namespace (only if it is not 1 already): pods reach other nodes' pods through
the node, which must route between the bridge and its uplink, and the forwarding flag
must be on for both ingress interfaces; ``ip_forward`` turns it on for all of them
(``net.ipv4.conf.<dev>.forwarding`` per device would miss the uplink). Traffic
between pods on one bridge and to the gateway needs no sysctl. The setting belongs to
the namespace of ``node_netns``: a lab node or a test changes only its own namespace.

**Idempotent and crash-safe.** ``attach`` of an attached pod only checks and returns;
a pod left half-attached (a crash between steps) is torn down and redone; a failed
attach removes the pod's veth and releases its address before raising
``PodNetworkError`` (an OSError naming the step). ``detach`` of a detached pod, or of a
pod whose namespace is already gone, is fine.

**Routes we own.** ``routes_to_nodes`` marks its routes with routing protocol
``RTPROT_ORCH`` (0x99) and only ever changes or deletes routes carrying that mark, so
routes of the administrator, DHCP or the kernel are never touched.

**Hairpin mode** is on for every pod's bridge port, as Kubernetes' bridge plugin has it
(``hairpinMode``): a pod that reaches itself through the node (a hostPort on the node's
address, DNAT'd back to the pod) needs the bridge to send the frame out of the port it
came in by. With ``br_netfilter`` (bridge-nf-call-iptables=1, the default once the module
is loaded) DNAT happens at the bridge and the packet is *bridged* back, so without
hairpin it is dropped. The pod then also hears its own broadcasts; the kernel's
enhanced DAD (nonces, RFC 7527) keeps its IPv6 link-local address from failing DAD.

Kernel gotchas: the veth peer is created directly inside the pod's namespace
(IFLA_NET_NS_FD on the peer), so the pair is never seen half-moved; deleting either
end deletes both, and a namespace's death deletes its ends. A bridge without a MAC of
its own takes the lowest MAC of its ports, so its MAC (the pods' gateway MAC) would
change as pods come and go: ``ensure_bridge`` gives it a fixed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.network import netns
from agent.network.errors import NetworkError, PodNetworkError, RouteSyncError
from agent.network.ipam import Ipam

__all__ = [
    "POD_IFNAME",
    "RTPROT_ORCH",
    "PodAddress",
    "PodNetwork",
    "RouteAction",
    "bridge_mac",
    "check_bridge_name",
    "host_veth_name",
    "plan_routes",
]

log = logging.getLogger(__name__)

#: Routing protocol number marking routes routes_to_nodes made (rtm_protocol is a u8;
#: 0x99 = 153 is unassigned in iproute2's rt_protos).
RTPROT_ORCH = 0x99
#: The pod's end of its veth pair, inside the pod's namespace.
POD_IFNAME = "eth0"
#: <linux/if.h>
IFF_UP = 0x1
IFNAMSIZ = 16
OPERSTATE_TIMEOUT = 5.0  # seconds attach waits for a new veth to be operational (see _wait_operational)
RT_TABLE_MAIN = 254
_LOCK_STRIPES = 64
_STATS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped")


# ---------------------------------------------------------------- pure parts


def host_veth_name(pod_uid: str) -> str:
    """The node's end of the pod's veth: ``veth`` + 11 hex digits of sha256(uid), 15 characters
    (IFNAMSIZ - 1). Deterministic, so a restarted agent finds the pod's veth by name."""
    return "veth" + hashlib.sha256(pod_uid.encode()).hexdigest()[:11]


def bridge_mac(name: str, network: IPv4Network) -> str:
    """A fixed, locally administered unicast MAC for the bridge (02:xx:...)."""
    digest = hashlib.sha256(f"{name}/{network}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


@dataclass(frozen=True, slots=True)
class PodAddress:
    """What a pod got: its address in the node's CIDR, its gateway, its veth's node end."""

    pod_uid: str
    ip: IPv4Address
    network: IPv4Network
    gateway: IPv4Address
    host_veth: str

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def cidr(self) -> str:
        """``10.244.3.2/24``: the address as configured on the pod's eth0."""
        return f"{self.ip}/{self.prefixlen}"


@dataclass(frozen=True, slots=True)
class RouteAction:
    """One change to the node's routes: ``add``, ``replace`` (gateway changed) or ``delete``."""

    op: str
    dst: IPv4Network
    gateway: IPv4Address


def plan_routes(desired: Mapping[IPv4Network, IPv4Address],
                owned: Mapping[IPv4Network, list[IPv4Address]]) -> list[RouteAction]:
    """What turns the routes we own (``owned``: dst -> gateways of our routes to it) into ``desired``.

    A dst with one route of ours via the wrong gateway is replaced; with several (which we never
    make, but a crash or a hand might) the extra ones are deleted and the right one kept or added.
    """
    actions: list[RouteAction] = []
    for dst in sorted(set(owned) - set(desired)):
        actions.extend(RouteAction("delete", dst, gw) for gw in owned[dst])
    for dst in sorted(desired):
        want = desired[dst]
        have = owned.get(dst, [])
        if not have:
            actions.append(RouteAction("add", dst, want))
        elif want in have:
            actions.extend(RouteAction("delete", dst, gw) for gw in have if gw != want)
        else:
            actions.extend(RouteAction("delete", dst, gw) for gw in have[1:])
            actions.append(RouteAction("replace", dst, want))
    return actions


def check_bridge_name(name: str) -> None:
    """ValueError unless the kernel would take ``name`` as an interface name."""
    if not 0 < len(name) < IFNAMSIZ or "/" in name or name.strip() != name or any(c.isspace() for c in name):
        raise ValueError(f"bridge name {name!r}: 1 to {IFNAMSIZ - 1} characters, no '/' or spaces")


# ---------------------------------------------------------------- netlink plumbing


def _check_thread() -> None:
    """pyroute2's synchronous API runs an event loop of its own: not on a thread already running one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError("agent.network blocks on netlink: call it from a worker thread (asyncio.to_thread), "
                       "not from the event loop's thread")


@contextlib.contextmanager
def rtnl(path: str | os.PathLike[str] | None) -> Iterator[IPRoute]:
    """A synchronous IPRoute on a netlink socket made in the namespace at ``path``; closed after."""
    _check_thread()
    sock = netns.netlink_socket(path)
    try:
        # groups=0: no multicast subscriptions, so no event piles up in the socket.
        ipr = IPRoute(use_socket=sock, groups=0)
    except BaseException:
        sock.close()
        raise
    try:
        yield ipr
    finally:
        try:
            ipr.close()
        finally:
            sock.close()


def _errno(e: BaseException) -> int:
    if isinstance(e, NetlinkError):
        return int(e.code) or errno.EIO
    if isinstance(e, OSError) and e.errno:
        return e.errno
    return errno.EIO


def _detail(e: BaseException) -> str:
    if isinstance(e, NetlinkError):
        return os.strerror(e.code) if e.code else str(e)
    if isinstance(e, OSError):
        return e.strerror if e.strerror and e.filename is None else str(e)
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def _step(pod_uid: str, step: str) -> Iterator[None]:
    """Name the step in whatever kernel or file error escapes it."""
    try:
        yield
    except NetworkError:
        raise
    except (NetlinkError, OSError) as e:
        raise PodNetworkError(_errno(e), pod_uid, step, _detail(e)) from e


def _is_missing(e: BaseException) -> bool:
    return isinstance(e, NetlinkError) and e.code in (errno.ENODEV, errno.ENOENT, errno.ESRCH)


def _link(ipr: IPRoute, ifname: str) -> Any | None:
    """The link called ``ifname`` (a pyroute2 ifinfmsg), None if there is none."""
    try:
        links = ipr.link("get", ifname=ifname)
    except NetlinkError as e:
        if _is_missing(e):
            return None
        raise
    return links[0] if links else None


def _link_kind(link: Any) -> str | None:
    return link.get(("linkinfo", "kind"))


def _ipv4_addresses(ipr: IPRoute, index: int) -> set[tuple[str, int]]:
    return {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.addr("dump", family=socket.AF_INET, index=index)
            if a["index"] == index}


# ---------------------------------------------------------------- kernel steps


def _create_bridge(ipr: IPRoute, name: str, mac: str) -> None:
    try:
        ipr.link("add", ifname=name, kind="bridge", address=mac)
    except NetlinkError as e:
        if e.code != errno.EEXIST:  # made by a concurrent call: fine
            raise


def _create_veth(ipr: IPRoute, host_ifname: str, bridge_index: int, pod_netns_fd: int) -> None:
    """The pair in one request: node end enslaved to the bridge and up, peer born in the pod's namespace."""
    ipr.link("add", ifname=host_ifname, kind="veth", master=bridge_index, state="up",
             peer={"ifname": POD_IFNAME, "net_ns_fd": pod_netns_fd})


def _ensure_hairpin(ipr: IPRoute, link: Any | None, host_ifname: str) -> None:
    """Let the bridge send a frame back out of the port it came in by (see the module docstring);
    ``link`` is the port as just read (None: it is gone)."""
    if link is None:
        raise OSError(errno.ENODEV, f"{host_ifname} disappeared")
    if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA", "IFLA_BRPORT_MODE") != 1:
        ipr.brport("set", index=link["index"], mode=1)


def _configure_eth0(ipr: IPRoute, ip: IPv4Address, prefixlen: int, gateway: IPv4Address) -> None:
    """In the pod's namespace: eth0 up, its address, the default route via the gateway."""
    index = ipr.link("get", ifname=POD_IFNAME)[0]["index"]
    ipr.link("set", index=index, state="up")
    ipr.addr("add", index=index, address=str(ip), prefixlen=prefixlen)
    ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=index)


def _wait_operational(ipr: IPRoute, ifname: str, timeout: float = OPERSTATE_TIMEOUT) -> Any:
    """Wait until the kernel has the link's carrier in operational state UP.

    A veth's carrier is on as soon as both ends are up, but the kernel's linkwatch work
    applies it later, and only then swaps the link's placeholder qdisc, which drops
    every packet, for the real one. A pod that sends in that gap loses its first ARP
    request and waits a whole second for the retry. Not UP within ``timeout``: logged,
    not fatal (the link works once linkwatch runs). Returns the link as last read.
    """
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        link = _link(ipr, ifname)
        if link is None:
            raise OSError(errno.ENODEV, f"{ifname} disappeared")
        if link.get("IFLA_OPERSTATE") == "UP":
            return link
        if time.monotonic() >= deadline:
            log.warning("%s is still %s after %.1fs; going on", ifname, link.get("IFLA_OPERSTATE"), timeout)
            return link
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _eth0_configured(ipr: IPRoute, ip: IPv4Address, prefixlen: int, gateway: IPv4Address) -> bool:
    eth0 = _link(ipr, POD_IFNAME)
    if eth0 is None or _link_kind(eth0) != "veth" or not eth0["flags"] & IFF_UP:
        return False
    if (str(ip), prefixlen) not in _ipv4_addresses(ipr, eth0["index"]):
        return False
    for route in ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
        if route["dst_len"] == 0 and route.get("RTA_GATEWAY") == str(gateway) and route.get("RTA_OIF") == eth0["index"]:
            return True
    return False


def _delete_link(ipr: IPRoute, ifname: str) -> bool:
    """Delete ``ifname``; False if it did not exist."""
    link = _link(ipr, ifname)
    if link is None:
        return False
    try:
        ipr.link("del", index=link["index"])
    except NetlinkError as e:
        if not _is_missing(e):
            raise
        return False
    return True


# ---------------------------------------------------------------- the node's pod network


class PodNetwork:
    """The pod network of one node: its bridge, its pods' veths and addresses, routes to other nodes.

    ``pod_cidr`` is the node's pod CIDR (its first host address goes on the bridge);
    ``state_dir`` keeps the address allocations (``<state_dir>/ipam``); ``node_netns``
    is the node's network namespace (None: the caller's).
    """

    def __init__(self, pod_cidr: str | IPv4Network, state_dir: str | os.PathLike[str], *, bridge: str = "orch0",
                 node_netns: str | os.PathLike[str] | None = None) -> None:
        check_bridge_name(bridge)
        self.ipam = Ipam(pod_cidr, Path(state_dir) / "ipam")
        self.bridge = bridge
        self.node_netns = node_netns
        # attach/detach of one pod never interleave (two at once would each see the
        # other's half-made veth and redo it); pods on other stripes run in parallel.
        self._stripes = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))

    def _pod_lock(self, pod_uid: str) -> threading.Lock:
        return self._stripes[int(hashlib.sha256(pod_uid.encode()).hexdigest()[:8], 16) % _LOCK_STRIPES]

    @property
    def network(self) -> IPv4Network:
        return self.ipam.network

    @property
    def gateway(self) -> IPv4Address:
        return self.ipam.gateway

    def __repr__(self) -> str:
        return f"PodNetwork({str(self.network)!r}, bridge={self.bridge!r}, node_netns={self.node_netns!r})"

    def _pod_address(self, pod_uid: str, ip: IPv4Address) -> PodAddress:
        return PodAddress(pod_uid, ip, self.network, self.gateway, host_veth_name(pod_uid))

    # ------------------------------------------------------------ bridge

    def ensure_bridge(self, *, forwarding: bool = True) -> int:
        """Make the bridge exist with the gateway address (and no other IPv4 address), up;
        with ``forwarding``, ``net.ipv4.ip_forward=1`` in the node's namespace. Returns its index."""
        gateway = (str(self.gateway), self.network.prefixlen)
        with _step(self.bridge, "ensure bridge"), rtnl(self.node_netns) as ipr:
            link = _link(ipr, self.bridge)
            if link is None:
                _create_bridge(ipr, self.bridge, bridge_mac(self.bridge, self.network))
                link = _link(ipr, self.bridge)
                if link is None:
                    raise OSError(errno.ENODEV, f"bridge {self.bridge} vanished right after it was created")
                log.info("node network: bridge %s created for %s", self.bridge, self.network)
            elif _link_kind(link) != "bridge":
                raise OSError(errno.EEXIST, f"{self.bridge} exists and is a {_link_kind(link)}, not a bridge")
            index = int(link["index"])
            present = _ipv4_addresses(ipr, index)
            for address, prefixlen in present - {gateway}:
                # A gateway of an earlier CIDR of this node: the bridge is ours, it goes.
                ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
                log.info("node network: bridge %s: stale address %s/%d removed", self.bridge, address, prefixlen)
            if gateway not in present:
                try:
                    ipr.addr("add", index=index, address=gateway[0], prefixlen=gateway[1])
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
            if not link["flags"] & IFF_UP:
                ipr.link("set", index=index, state="up")
        if forwarding:
            with _step(self.bridge, "enable net.ipv4.ip_forward"):
                if netns.read_sysctl(self.node_netns, "net.ipv4.ip_forward") != "1":
                    netns.write_sysctl(self.node_netns, "net.ipv4.ip_forward", "1")
        return index

    def remove_bridge(self) -> bool:
        """Delete the bridge (the pods' veths stay, unenslaved); False if it was not there."""
        with _step(self.bridge, "remove bridge"), rtnl(self.node_netns) as ipr:
            return _delete_link(ipr, self.bridge)

    # ------------------------------------------------------------ pods

    def attach(self, pod_uid: str, netns_path: str | os.PathLike[str]) -> PodAddress:
        """Give the pod its veth, address and default route (idempotent); see the module docstring.

        A call on a thread that runs an event loop raises RuntimeError before doing anything.
        """
        _check_thread()
        with self._pod_lock(pod_uid):
            return self._attach_locked(pod_uid, netns_path)

    def _attach_locked(self, pod_uid: str, netns_path: str | os.PathLike[str]) -> PodAddress:
        host_ifname = host_veth_name(pod_uid)
        with _step(pod_uid, "open the pod's network namespace"):
            pod_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ip = self.ipam.allocate(pod_uid)  # IpamError/AddressesExhausted as they are: they name the CIDR
            address = self._pod_address(pod_uid, ip)
            try:
                self._attach(address, netns_path, pod_fd)
            except BaseException as e:
                self._undo_attach(pod_uid, host_ifname, e)
                raise
        finally:
            os.close(pod_fd)
        return address

    def _attach(self, a: PodAddress, netns_path: str | os.PathLike[str], pod_fd: int) -> None:
        with contextlib.ExitStack() as stack:
            with _step(a.pod_uid, "open netlink sockets in the pod's and the node's network namespaces"):
                pod = stack.enter_context(rtnl(netns_path))
                node = stack.enter_context(rtnl(self.node_netns))
            with _step(a.pod_uid, f"look up bridge {self.bridge}"):
                bridge = _link(node, self.bridge)
                if bridge is None:
                    raise OSError(errno.ENODEV, f"no bridge {self.bridge} (ensure_bridge first)")
            with _step(a.pod_uid, f"create veth {a.host_veth} with peer {POD_IFNAME} in the pod"):
                try:
                    _create_veth(node, a.host_veth, bridge["index"], pod_fd)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
                    if self._attached(node, pod, a, bridge["index"]):
                        # Pods attached before hairpin mode was turned on get it now.
                        _ensure_hairpin(node, _link(node, a.host_veth), a.host_veth)
                        log.debug("pod %s: already attached as %s", a.pod_uid, a.ip)
                        return
                    # Half-done (a crash, a recreated sandbox): start over.
                    log.info("pod %s: incomplete network found, redoing it", a.pod_uid)
                    _delete_link(node, a.host_veth)
                    _create_veth(node, a.host_veth, bridge["index"], pod_fd)
            with _step(a.pod_uid, f"configure {POD_IFNAME} ({a.cidr}, default via {a.gateway})"):
                _configure_eth0(pod, a.ip, a.prefixlen, a.gateway)
            with _step(a.pod_uid, f"wait for {POD_IFNAME} and {a.host_veth} to be operational"):
                _wait_operational(pod, POD_IFNAME)
                host_port = _wait_operational(node, a.host_veth)
            with _step(a.pod_uid, f"turn on hairpin mode of bridge port {a.host_veth}"):
                _ensure_hairpin(node, host_port, a.host_veth)  # the port as the wait last read it
            log.info("pod %s: network attached: %s via %s on %s", a.pod_uid, a.cidr, a.host_veth, self.bridge)

    def _attached(self, node: IPRoute, pod: IPRoute, a: PodAddress, bridge_index: int) -> bool:
        veth = _link(node, a.host_veth)
        if veth is None or _link_kind(veth) != "veth" or not veth["flags"] & IFF_UP:
            return False
        if veth.get("IFLA_MASTER") != bridge_index:
            return False
        return _eth0_configured(pod, a.ip, a.prefixlen, a.gateway)

    def _undo_attach(self, pod_uid: str, host_ifname: str, cause: BaseException) -> None:
        """After a failed attach: no veth, no address. Failures here are logged, the cause is raised."""
        try:
            with rtnl(self.node_netns) as node:
                _delete_link(node, host_ifname)
        except Exception as e:  # noqa: BLE001 - the original failure is what the caller must see
            log.error("pod %s: after a failed attach (%s), deleting veth %s failed too: %s",
                      pod_uid, cause, host_ifname, e)
        try:
            self.ipam.release(pod_uid)
        except Exception as e:  # noqa: BLE001
            log.error("pod %s: after a failed attach (%s), releasing its address failed too: %s", pod_uid, cause, e)

    def detach(self, pod_uid: str, netns_path: str | os.PathLike[str] | None = None) -> IPv4Address | None:
        """Remove the pod's veth and release its address; returns the address it had (None: none).

        Deleting the node's end deletes the pod's too. ``netns_path`` is only used when the
        node's end is gone already, to delete a stray ``eth0`` veth left in the pod's
        namespace; a namespace that no longer exists is fine.
        """
        _check_thread()
        with self._pod_lock(pod_uid):
            return self._detach_locked(pod_uid, netns_path)

    def _detach_locked(self, pod_uid: str, netns_path: str | os.PathLike[str] | None) -> IPv4Address | None:
        host_ifname = host_veth_name(pod_uid)
        with _step(pod_uid, f"delete veth {host_ifname}"), rtnl(self.node_netns) as node:
            deleted = _delete_link(node, host_ifname)
        if not deleted and netns_path is not None and os.path.exists(netns_path):
            with _step(pod_uid, f"delete a stray {POD_IFNAME} in the pod"), \
                    contextlib.suppress(FileNotFoundError), rtnl(netns_path) as pod:
                eth0 = _link(pod, POD_IFNAME)
                if eth0 is not None and _link_kind(eth0) == "veth":
                    _delete_link(pod, POD_IFNAME)
        with _step(pod_uid, "release its address"):
            released = self.ipam.release(pod_uid)
        if deleted or released:
            log.info("pod %s: network detached (veth %s%s)", pod_uid, host_ifname,
                     f", address {released} released" if released else "")
        return released

    def address(self, pod_uid: str) -> PodAddress | None:
        """The pod's address as recorded (no kernel call), None if it holds none."""
        ip = self.ipam.lookup(pod_uid)
        return None if ip is None else self._pod_address(pod_uid, ip)

    def counters(self, pod_uid: str, netns_path: str | os.PathLike[str]) -> dict[str, int]:
        """The pod's eth0 counters (64-bit): rx/tx bytes, packets, errors, dropped; seen from the pod,
        as cAdvisor reads them (``container_network_receive_bytes_total`` = ``rx_bytes``)."""
        with _step(pod_uid, f"read the counters of {POD_IFNAME}"), rtnl(netns_path) as pod:
            link = _link(pod, POD_IFNAME)
            if link is None:
                raise OSError(errno.ENODEV, f"no {POD_IFNAME} in the pod's network namespace")
            stats = link.get("IFLA_STATS64")
            if stats is None:
                raise OSError(errno.ENODATA, "the kernel sent no IFLA_STATS64")
            return {name: int(stats[name]) for name in _STATS}

    # ------------------------------------------------------------ routes between nodes

    def owned_routes(self) -> dict[IPv4Network, list[IPv4Address]]:
        """Our routes (protocol RTPROT_ORCH) in the node's main table: dst -> gateways."""
        with _step(self.bridge, "list routes"), rtnl(self.node_netns) as ipr:
            return _owned_routes(ipr)

    def routes_to_nodes(self, desired: Mapping[str | IPv4Network, str | IPv4Address]) -> list[RouteAction]:
        """Make our routes in the node's namespace exactly ``desired`` (pod CIDR -> that node's address).

        Level-triggered: adds missing routes, replaces those whose node moved, deletes ours that
        are no longer wanted. A route that is not ours is never changed; if one already covers a
        wanted CIDR exactly, that CIDR is reported as failed. The node's own CIDR is skipped.
        Everything that can converge does; then ``RouteSyncError`` lists what did not.
        Returns the actions done.
        """
        wanted: dict[IPv4Network, IPv4Address] = {}
        failed: dict[str, str] = {}
        for cidr, node_ip in desired.items():
            try:
                dst = ip_network(cidr, strict=True) if not isinstance(cidr, IPv4Network) else cidr
                gw = ip_address(node_ip) if not isinstance(node_ip, IPv4Address) else node_ip
                if not isinstance(dst, IPv4Network) or not isinstance(gw, IPv4Address):
                    raise ValueError("only IPv4 is supported")  # noqa: TRY004 - a bad value
            except ValueError as e:
                failed[str(cidr)] = f"invalid: {e}"
                continue
            if dst.overlaps(self.network):
                if dst != self.network:
                    failed[str(dst)] = f"overlaps this node's pod CIDR {self.network}"
                continue
            wanted[dst] = gw
        done: list[RouteAction] = []
        with _step(self.bridge, "sync routes to other nodes"), rtnl(self.node_netns) as ipr:
            for action in plan_routes(wanted, _owned_routes(ipr)):
                try:
                    _apply_route(ipr, action)
                except NetlinkError as e:
                    why = os.strerror(e.code) if e.code else str(e)
                    if action.op == "add" and e.code == errno.EEXIST:
                        why = "a route that is not ours already exists for it"
                    failed[str(action.dst)] = f"{action.op} via {action.gateway}: {why}"
                    continue
                done.append(action)
                log.info("node network: route %s %s via %s", action.op, action.dst, action.gateway)
        if failed:
            raise RouteSyncError(failed)
        return done


def _owned_routes(ipr: IPRoute) -> dict[IPv4Network, list[IPv4Address]]:
    owned: dict[IPv4Network, list[IPv4Address]] = {}
    for route in ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
        if route["proto"] != RTPROT_ORCH or route.get("RTA_TABLE", route["table"]) != RT_TABLE_MAIN:
            continue
        dst = IPv4Network(f"{route.get('RTA_DST') or '0.0.0.0'}/{route['dst_len']}")
        gw = route.get("RTA_GATEWAY")
        if gw is not None:
            owned.setdefault(dst, []).append(IPv4Address(gw))
    return owned


def _apply_route(ipr: IPRoute, action: RouteAction) -> None:
    spec = {"dst": str(action.dst), "gateway": str(action.gateway), "proto": RTPROT_ORCH, "table": RT_TABLE_MAIN}
    if action.op == "delete":
        try:
            ipr.route("del", **spec)
        except NetlinkError as e:
            if e.code != errno.ESRCH:  # gone already
                raise
    else:
        ipr.route(action.op, **spec)
