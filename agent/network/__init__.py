"""The node's pod network: IPAM for the node's pod CIDR, a bridge, a veth per pod,
host-gateway routes to other nodes' pod CIDRs (pyroute2; no ``ip`` commands), and
hostPorts (nftables DNAT through libnftables).

Layers, lowest first: ``netns`` (entering a network namespace by path from one
thread), ``ipam`` (addresses on disk), ``podnet`` (the kernel steps and ``PodNetwork``),
``hostports`` (the nftables table of published ports), ``node`` (``NodeNetwork``: the
agent's view, the CIDR from the scheduler, what was last applied, cleanup).
Errors are in ``errors`` (all OSError). Every call blocks: run it in a worker thread.
"""

from __future__ import annotations

from agent.network.errors import (
    AddressesExhausted,
    HostPortError,
    IpamError,
    NetworkError,
    NetworkNotReady,
    NftablesUnavailable,
    PodNetworkError,
    RouteSyncError,
)
from agent.network.ipam import Ipam
from agent.network.podnet import (
    RTPROT_ORCH,
    PodAddress,
    PodNetwork,
    RouteAction,
    host_veth_name,
    plan_routes,
)

__all__ = [
    "RTPROT_ORCH",
    "AddressesExhausted",
    "HostPortError",
    "Ipam",
    "IpamError",
    "NetworkError",
    "NetworkNotReady",
    "NftablesUnavailable",
    "PodAddress",
    "PodNetwork",
    "PodNetworkError",
    "RouteAction",
    "RouteSyncError",
    "host_veth_name",
    "plan_routes",
]
