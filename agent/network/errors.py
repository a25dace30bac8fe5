"""The network package's exceptions. Every one is an ``OSError`` with an errno, so a
caller that handles kernel failures handles these too::

    OSError
     └── NetworkError              anything the pod network could not do
          ├── IpamError            the address store on disk failed
          │    └── AddressesExhausted   no free address left in the node's pod CIDR (ENOSPC)
          ├── PodNetworkError      a step of attach/detach/counters failed; ``.step`` names it
          ├── RouteSyncError       routes_to_nodes could not converge some routes
          ├── NetworkNotReady      the node has no pod CIDR (yet): pods cannot be attached (EAGAIN)
          └── HostPortError        the hostPort nftables table could not be written (nft's own message)
               └── NftablesUnavailable  libnftables is not installed (ENOPKG)

``reason`` on NetworkNotReady is the waiting reason the agent shows on the pod's containers.
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Network

__all__ = [
    "AddressesExhausted",
    "HostPortError",
    "IpamError",
    "NetworkError",
    "NetworkNotReady",
    "NftablesUnavailable",
    "PodNetworkError",
    "RouteSyncError",
]


class NetworkError(OSError):
    """Base of the pod network's errors."""


class IpamError(NetworkError):
    """The on-disk address store failed."""


class AddressesExhausted(IpamError):
    """Every pod address of the node's CIDR is taken."""

    def __init__(self, network: IPv4Network, size: int) -> None:
        super().__init__(errno.ENOSPC, f"pod CIDR {network} is exhausted: all {size} pod addresses are in use")
        self.network = network


class PodNetworkError(NetworkError):
    """A step of setting up or reading a pod's network failed (``step`` says which)."""

    def __init__(self, code: int, pod_uid: str, step: str, detail: str) -> None:
        super().__init__(code, f"pod {pod_uid}: {step}: {detail}")
        self.pod_uid = pod_uid
        self.step = step


class RouteSyncError(NetworkError):
    """Some routes to other nodes' pod CIDRs could not be set (``failed``: CIDR -> reason)."""

    def __init__(self, failed: dict[str, str]) -> None:
        summary = "; ".join(f"{cidr}: {why}" for cidr, why in sorted(failed.items()))
        super().__init__(errno.EIO, f"routes to {len(failed)} pod CIDR(s) not converged: {summary}")
        self.failed = failed


class NetworkNotReady(NetworkError):
    """No pod can be attached yet: the node has no pod CIDR (``str`` says why)."""

    reason = "NetworkNotReady"

    def __init__(self, why: str) -> None:
        super().__init__(errno.EAGAIN, f"network is not ready: {why}")


class HostPortError(NetworkError):
    """Writing or reading the hostPort table failed; the message is nft's, with the command."""


class NftablesUnavailable(HostPortError):
    """libnftables could not be loaded."""
