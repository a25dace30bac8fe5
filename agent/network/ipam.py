"""IP address management for one node's pod CIDR, persisted on the node's disk.

The node owns one IPv4 CIDR (say ``10.244.3.0/24``, allocated by the scheduler). Its
first host address (``.1``) is the gateway, on the node's bridge; pods get ``.2`` up to
the last address before the broadcast address. State lives in a directory so an agent
restart never hands out an address still in use::

    <dir>/.lock               flock: threads and processes on one directory serialise
    <dir>/addresses/<ip>      created with O_EXCL: the address is taken; content = pod uid
    <dir>/pods/<pod uid>      the pod's address (a hint, see below)
    <dir>/last                the address handed out last: the search resumes after it

``addresses/`` is the truth. ``pods/`` makes "which address has this pod" one read
instead of a scan; it is written *before* the address file and removed *after* it, so
while a pod owns an address its ``pods/`` file points there, and a pod with no
``pods/`` file owns nothing. A ``pods/`` file whose address file is missing or names
another pod (a crash between the two writes) is stale and ignored.

The search for a free address starts after the last one handed out and wraps around
(as CNI's host-local plugin does): a pod deleted and another created right away do not
get the same address, so a peer's stale connection or ARP entry never reaches the
wrong pod.

The pure parts (``pod_range``, ``gateway_address``, ``next_free``) are plain functions
over ``ipaddress`` values.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from agent.network.errors import AddressesExhausted, IpamError

__all__ = ["Ipam", "PodRange", "gateway_address", "next_free", "parse_cidr", "pod_range"]

log = logging.getLogger(__name__)

_SAFE_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# ---------------------------------------------------------------- pure address arithmetic


@dataclass(frozen=True, slots=True)
class PodRange:
    """The addresses pods may get in a CIDR: ``first`` .. ``last`` inclusive (as integers)."""

    network: IPv4Network
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.first <= int(address) <= self.last


def parse_cidr(cidr: str | IPv4Network) -> IPv4Network:
    """``cidr`` as a network; host bits set, IPv6 or too small a prefix is a ValueError."""
    try:
        network = cidr if isinstance(cidr, IPv4Network) else ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        raise ValueError(f"pod CIDR {cidr!r}: {e}") from None
    if not isinstance(network, IPv4Network):
        raise ValueError(f"pod CIDR {cidr!r}: only IPv4 is supported")  # noqa: TRY004 - a bad value (an IPv6 CIDR string), not a bad type
    if network.prefixlen > 30:
        raise ValueError(f"pod CIDR {cidr!r}: a /{network.prefixlen} has no room for a gateway and a pod "
                         "(at most /30)")
    return network


def gateway_address(network: IPv4Network) -> IPv4Address:
    """The first host address: the bridge's."""
    return network.network_address + 1


def pod_range(network: IPv4Network) -> PodRange:
    """After the gateway, up to the last address before the broadcast address."""
    return PodRange(network, int(network.network_address) + 2, int(network.broadcast_address) - 1)


def next_free(rng: PodRange, used: set[int] | frozenset[int], last: int | None) -> int | None:
    """The first address of ``rng`` not in ``used``, searching from just after ``last``
    and wrapping around; None when every address is used."""
    start = rng.first if last is None or not rng.first <= last <= rng.last else last + 1
    if start > rng.last:
        start = rng.first
    for offset in range(rng.size):
        candidate = rng.first + (start - rng.first + offset) % rng.size
        if candidate not in used:
            return candidate
    return None


# ---------------------------------------------------------------- the allocator on disk


class Ipam:
    """Pod addresses of one CIDR, allocated under ``directory``; safe across threads and processes."""

    def __init__(self, cidr: str | IPv4Network, directory: str | os.PathLike[str]) -> None:
        self.network = parse_cidr(cidr)
        self.range = pod_range(self.network)
        self.gateway = gateway_address(self.network)
        self.dir = Path(directory)
        self._addresses = self.dir / "addresses"
        self._pods = self.dir / "pods"

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def __repr__(self) -> str:
        return f"Ipam({str(self.network)!r}, {str(self.dir)!r})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock belongs to the open file description: a fresh open per call, so two
        # threads of one process exclude each other as two processes do.
        self._addresses.mkdir(parents=True, exist_ok=True)
        self._pods.mkdir(exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _check_uid(pod_uid: str) -> None:
        if not _SAFE_UID.match(pod_uid):
            raise ValueError(f"pod uid {pod_uid!r} is not usable as a file name")

    def _owner(self, address: IPv4Address) -> str | None:
        try:
            return (self._addresses / str(address)).read_text().strip() or None
        except FileNotFoundError:
            return None

    def _recorded(self, pod_uid: str) -> IPv4Address | None:
        """The pod's address if it really owns one (the pods/ hint confirmed by addresses/)."""
        try:
            address = IPv4Address((self._pods / pod_uid).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return address if self._owner(address) == pod_uid else None

    def lookup(self, pod_uid: str) -> IPv4Address | None:
        """The address the pod holds, or None."""
        self._check_uid(pod_uid)
        with self._locked():
            return self._recorded(pod_uid)

    def allocate(self, pod_uid: str) -> IPv4Address:
        """The pod's address: the one it already holds, else a free one (AddressesExhausted if none)."""
        self._check_uid(pod_uid)
        with self._locked():
            held = self._recorded(pod_uid)
            if held is not None:
                if held in self.range:
                    return held
                # The node's CIDR changed under the pod: its old address is useless here.
                self._release(pod_uid, held)
            used = self._used()
            last = self._last()
            while True:
                candidate = next_free(self.range, used, last)
                if candidate is None:
                    raise AddressesExhausted(self.network, self.range.size)
                address = IPv4Address(candidate)
                _write_atomic(self._pods / pod_uid, f"{address}\n")
                try:
                    fd = os.open(self._addresses / str(address), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o644)
                except FileExistsError:
                    # Only a writer outside our lock (there should be none) gets here.
                    used.add(candidate)
                    continue
                except OSError as e:
                    raise IpamError(e.errno or errno.EIO, f"{self.network}: claim {address} for pod {pod_uid}: "
                                    f"{e.strerror}") from e
                with os.fdopen(fd, "w") as f:
                    f.write(f"{pod_uid}\n")
                _write_atomic(self.dir / "last", f"{address}\n")
                log.debug("pod %s: address %s allocated from %s", pod_uid, address, self.network)
                return address

    def release(self, pod_uid: str) -> IPv4Address | None:
        """Free the pod's address; returns it, or None if the pod held none (not an error)."""
        self._check_uid(pod_uid)
        with self._locked():
            held = self._recorded(pod_uid)
            self._release(pod_uid, held)
            return held

    def _release(self, pod_uid: str, held: IPv4Address | None) -> None:
        if held is not None:
            (self._addresses / str(held)).unlink(missing_ok=True)
            log.debug("pod %s: address %s released", pod_uid, held)
        (self._pods / pod_uid).unlink(missing_ok=True)

    def allocations(self) -> dict[IPv4Address, str]:
        """Every address taken under the directory (of any CIDR) -> the pod holding it."""
        with self._locked():
            out = {}
            for name in os.listdir(self._addresses):
                with contextlib.suppress(ValueError):
                    address = IPv4Address(name)
                    owner = self._owner(address)
                    if owner is not None:
                        out[address] = owner
            return out

    def holders(self) -> set[str]:
        """Uids with a ``pods/`` file: every pod holding an address, and perhaps one that
        only came close (a crash between the two writes; ``release`` clears it). No lock:
        a listing, for callers that only need a hint."""
        try:
            return {name for name in os.listdir(self._pods) if _SAFE_UID.match(name)}
        except FileNotFoundError:
            return set()

    def _used(self) -> set[int]:
        used = set()
        for name in os.listdir(self._addresses):
            with contextlib.suppress(ValueError):
                used.add(int(IPv4Address(name)))
        return used

    def _last(self) -> int | None:
        try:
            return int(IPv4Address((self.dir / "last").read_text().strip()))
        except (FileNotFoundError, ValueError):
            return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
