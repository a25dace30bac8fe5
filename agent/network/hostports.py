"""hostPort: a pod's port published on the node's own addresses, by nftables DNAT.

``spec.containers[].ports[].hostPort`` (with ``protocol`` TCP, UDP or SCTP and an
optional ``hostIP``) makes ``<node address>:<hostPort>`` reach ``<pod IP>:<containerPort>``.

**Why nftables and not a proxy in the agent.** The rules live in the kernel, so a
published port keeps working while the agent is down or restarting (containers outlive
the agent: DESIGN invariant 4), and no byte is copied through userspace: conntrack
rewrites the first packet's destination and every later packet and reply of the
connection follows that binding. It is also what Kubernetes does (the ``portmap`` CNI
plugin, whose nftables backend writes nearly these rules).

**One table, rewritten whole.** Everything lives in ``table ip orch-hostports``, which
no one else writes. ``apply`` sends one nftables transaction: ``add table`` (so the
next command cannot fail on a missing table), ``delete table``, and the whole table
again from the desired set. The kernel swaps it in atomically: no moment without
rules, no stale rule left over, whatever the table held before (a crash, a hand).
The agent calls it on start and whenever the set of published ports changes::

    table ip orch-hostports {
        chain prerouting {   # packets arriving for this node (from a peer, a pod, the lab host)
            type nat hook prerouting priority dstnat; policy accept;
            fib daddr type local ip daddr != 127.0.0.0/8 jump hostports
        }
        chain output {       # connections made on the node itself
            type nat hook output priority -100; policy accept;
            fib daddr type local ip daddr != 127.0.0.0/8 jump hostports
        }
        chain postrouting {  # hairpin: a pod reaching a published port of its own node
            type nat hook postrouting priority srcnat; policy accept;
            ct status dnat ip saddr 10.244.3.0/24 oifname "orch0" masquerade
        }
        chain hostports {    # hostIP-specific rules first, then the ones on every address
            ip daddr 192.168.50.11 tcp dport 8443 dnat to 10.244.3.7:443 comment "default/web"
            tcp dport 8080 dnat to 10.244.3.2:80 comment "default/api"
        }
    }

``fib daddr type local``: only traffic addressed to one of the node's own addresses is
published, so a connection the node makes to another host on the same port is left alone.

Gotchas:

* libnftables 1.0.6 (Debian 12) refuses the symbolic ``priority dstnat`` on the
  *output* hook ("invalid priority expression value in this context"); -100 is the
  same number (NF_IP_PRI_NAT_DST). It also lacks ``destroy table``, hence the
  ``add``/``delete`` pair.
* Not on loopback: DNAT of ``127.0.0.1:hostPort`` to a pod would need
  ``route_localnet=1``, which also lets the pods on the bridge reach the node's
  loopback-only services (CVE-2020-8558). Use the node's address.
* Hairpin: a pod connecting to its own node's address:hostPort is DNAT'd back onto the
  bridge; the answering pod would reply straight to the client over the bridge (or to
  itself, a martian source), bypassing the conntrack binding. Masquerading DNAT'd
  connections from the pod CIDR that leave through the bridge makes the replies come
  back through the node. ``apply`` does that when given the CIDR and the bridge.
* Forwarding: DNAT'd packets are forwarded to the bridge, so ``net.ipv4.ip_forward`` must
  be 1 (``PodNetwork.ensure_bridge`` sets it) and no other firewall of the namespace may
  drop them in its own forward chain (an accept here cannot overrule a drop elsewhere).
* Conntrack keeps a connection's binding after the rules change: an established TCP
  connection to a pod that was replaced stays bound to the old address until it ends,
  and so does a UDP "connection" that keeps sending (as with Kubernetes' portmap).

Everything blocks and enters the node's network namespace on the calling thread: run
it in a worker thread. libnftables is loaded with ctypes (Debian package
``libnftables1``); without it ``NftablesUnavailable`` says what to install.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.network import netns
from agent.network.errors import HostPortError, NftablesUnavailable

__all__ = [
    "FAMILY",
    "TABLE",
    "HostPort",
    "apply",
    "host_ports",
    "plan_ports",
    "remove",
    "render",
    "run",
    "table",
]

log = logging.getLogger(__name__)

FAMILY = "ip"
TABLE = "orch-hostports"
LIBRARY = "libnftables.so.1"
PACKAGE = "libnftables1"
#: nft's keyword for each Kubernetes protocol.
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
#: NF_IP_PRI_NAT_DST: ``priority dstnat``, spelled as a number (see the gotcha above).
_PRIORITY_DSTNAT = -100
_COMMENT_MAX = 100  # nft keeps at most 128 bytes of a rule's comment


# ---------------------------------------------------------------- the desired set (pure)


@dataclass(frozen=True, slots=True)
class HostPort:
    """One published port: ``host_ip`` (None: every local address) : ``host_port`` -> ``pod_ip`` : ``container_port``."""

    protocol: str  # TCP | UDP | SCTP
    host_port: int
    host_ip: str | None
    pod_ip: str
    container_port: int
    pod: str  # namespace/name, for the rule's comment and the logs

    def conflicts(self, other: HostPort) -> bool:
        """Same protocol and port, and the same address or either on every address (as the scheduler's NodePorts)."""
        return ((self.protocol, self.host_port) == (other.protocol, other.host_port)
                and (self.host_ip == other.host_ip or None in (self.host_ip, other.host_ip)))

    def describe(self) -> str:
        return f"{self.host_ip or '*'}:{self.host_port}/{self.protocol} -> {self.pod_ip}:{self.container_port}"


def host_ports(pod: dict[str, Any], pod_ip: str) -> tuple[list[HostPort], list[str]]:
    """The ports ``pod`` (a Pod object) publishes at ``pod_ip``, and why any it asks for cannot be.

    The Cluster API validated the spec; this still refuses what the node cannot do (an
    IPv6 hostIP: the table is IPv4) with the field's path rather than failing the rest.
    """
    md = pod.get("metadata") or {}
    name = f"{md.get('namespace', 'default')}/{md.get('name', '?')}"
    ports: list[HostPort] = []
    problems: list[str] = []
    for i, container in enumerate((pod.get("spec") or {}).get("containers") or ()):
        for j, port in enumerate(container.get("ports") or ()):
            if not port.get("hostPort"):
                continue
            path = f"pod {name}: spec.containers[{i}].ports[{j}]"
            try:
                host_port, container_port = int(port["hostPort"]), int(port["containerPort"])
            except (KeyError, TypeError, ValueError):
                problems.append(f"{path}: hostPort and containerPort must be port numbers")
                continue
            if not (0 < host_port < 65536 and 0 < container_port < 65536):
                problems.append(f"{path}: ports must be 1-65535, got {host_port} -> {container_port}")
                continue
            protocol = str(port.get("protocol") or "TCP").upper()
            if protocol not in PROTOCOLS:
                problems.append(f"{path}.protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
                continue
            host_ip = port.get("hostIP") or None
            if host_ip is not None:
                try:
                    address = ipaddress.ip_address(host_ip)
                except ValueError:
                    problems.append(f"{path}.hostIP: {host_ip!r} is not an IP address")
                    continue
                if address.version != 4:
                    problems.append(f"{path}.hostIP: {host_ip} is IPv6; the node publishes IPv4 only")
                    continue
                host_ip = None if address.is_unspecified else str(address)
            ports.append(HostPort(protocol, host_port, host_ip, pod_ip, container_port, name))
    return ports, problems


def plan_ports(pods: Iterable[tuple[dict[str, Any], str]]) -> tuple[list[HostPort], list[str]]:
    """Every port the node publishes for ``pods`` ((Pod, pod IP) pairs), in rule order, and problems.

    Two pods asking for one port (the scheduler's NodePorts filter keeps this from
    happening, but a node must not depend on it): the older pod keeps it, by
    creationTimestamp then name, so the choice is the same on every pass.
    """
    def age(entry: tuple[dict[str, Any], str]) -> tuple[str, str, str]:
        md = entry[0].get("metadata") or {}
        return (str(md.get("creationTimestamp") or ""), f"{md.get('namespace')}/{md.get('name')}", str(md.get("uid")))

    chosen: list[HostPort] = []
    problems: list[str] = []
    for pod, pod_ip in sorted(pods, key=age):
        wanted, bad = host_ports(pod, pod_ip)
        problems += bad
        for port in wanted:
            holder = next((p for p in chosen if p.conflicts(port)), None)
            if holder is not None:
                problems.append(f"pod {port.pod}: hostPort {port.host_port}/{port.protocol} is already published "
                                f"for pod {holder.pod}; not published")
                continue
            chosen.append(port)
    # hostIP-specific rules before the ones on every address, each by protocol and port.
    chosen.sort(key=lambda p: (p.host_ip is None, p.protocol, p.host_port, p.host_ip or ""))
    return chosen, problems


def _quote(text: str) -> str:
    safe = "".join(c for c in text if c.isprintable() and c not in '"\\')
    return f'"{safe[:_COMMENT_MAX]}"'


def render(ports: Sequence[HostPort], *, pod_cidr: str | None = None, bridge: str | None = None) -> str:
    """The nftables transaction that makes our table exactly ``ports`` (see the module docstring).

    With ``pod_cidr`` and ``bridge``, DNAT'd connections from pods of the bridge are
    masqueraded (hairpin). No ports: the table is only deleted.
    """
    lines = [f"add table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}"]
    if not ports:
        return "\n".join(lines) + "\n"
    local = "fib daddr type local ip daddr != 127.0.0.0/8"
    lines += [
        f"table {FAMILY} {TABLE} {{",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        f"\t\t{local} jump hostports",
        "\t}",
        "\tchain output {",
        f"\t\ttype nat hook output priority {_PRIORITY_DSTNAT}; policy accept;",
        f"\t\t{local} jump hostports",
        "\t}",
    ]
    if pod_cidr and bridge:
        network = ipaddress.IPv4Network(pod_cidr, strict=True)
        lines += [
            "\tchain postrouting {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            f"\t\tct status dnat ip saddr {network} oifname {_quote(bridge)} masquerade",
            "\t}",
        ]
    lines.append("\tchain hostports {")
    for p in ports:
        match = f"ip daddr {ipaddress.IPv4Address(p.host_ip)} " if p.host_ip else ""
        target = f"{ipaddress.IPv4Address(p.pod_ip)}:{int(p.container_port)}"
        lines.append(f"\t\t{match}{PROTOCOLS[p.protocol]} dport {int(p.host_port)} dnat to {target} "
                     f"comment {_quote(p.pod)}")
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- libnftables (ctypes)

_lib: ctypes.CDLL | None = None
# libnftables keeps some process-wide state (its parser's and its cache's); one caller at a time.
_lock = threading.Lock()


def _libnftables() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as e:
        raise NftablesUnavailable(errno.ENOPKG, f"hostPort needs {LIBRARY} (nftables' library), which cannot be "
                                  f"loaded: {e}; install Debian's {PACKAGE} (apt-get install {PACKAGE})") from e
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.restype = None
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, name).restype = ctypes.c_char_p  # copied into bytes before the context is freed
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    _lib = lib
    return lib


def run(commands: str, netns_path: str | os.PathLike[str] | None = None) -> str:
    """Run nft ``commands`` (one transaction) in the network namespace at ``netns_path``
    (None: the caller's); returns nft's output. A refused command raises HostPortError
    with nft's message, which quotes the command and marks the offending part."""
    lib = _libnftables()
    with _lock, netns.entered(netns_path):
        # The context (and its netlink socket) is made, used and freed inside the
        # namespace, on this thread only.
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise HostPortError(errno.ENOMEM, "nft_ctx_new failed")
        try:
            if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
                raise HostPortError(errno.ENOMEM, "libnftables: cannot buffer its output")
            rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            out = lib.nft_ctx_get_output_buffer(ctx) or b""
            err = lib.nft_ctx_get_error_buffer(ctx) or b""
        finally:
            lib.nft_ctx_free(ctx)
    if rc != 0:
        detail = err.decode(errors="replace").strip() or f"status {rc}, no message"
        raise HostPortError(errno.EINVAL, f"nft refused the command: {detail}")
    return out.decode(errors="replace")


def apply(ports: Sequence[HostPort], netns_path: str | os.PathLike[str] | None = None, *,
          pod_cidr: str | None = None, bridge: str | None = None) -> None:
    """Make the table exactly ``ports`` (in order: see ``plan_ports``), atomically; none: no table."""
    run(render(ports, pod_cidr=pod_cidr, bridge=bridge), netns_path)
    log.debug("hostPorts: %s", ", ".join(p.describe() for p in ports) if ports else "none published")


def remove(netns_path: str | os.PathLike[str] | None = None) -> None:
    """Delete our table (missing is fine). Without libnftables there is nothing to delete:
    the table can only have been made with it."""
    try:
        _libnftables()
    except NftablesUnavailable:
        return
    run(render([]), netns_path)


def table(netns_path: str | os.PathLike[str] | None = None) -> str | None:
    """Our table as ``nft list table`` prints it, None if there is none."""
    try:
        return run(f"list table {FAMILY} {TABLE}", netns_path)
    except HostPortError as e:
        if "No such file or directory" in str(e):
            return None
        raise
