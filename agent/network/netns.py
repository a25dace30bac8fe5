"""Network namespaces by path, entered by one thread at a time: the kernel layer under ``podnet``.

A pod's network namespace is an nsfs bind mount (``Runtime.sandbox_netns_path``), a
lab node's is one too. Everything here takes such a path (``None`` = the caller's own
namespace) and never forks: ``setns(CLONE_NEWNET)`` moves only the calling *thread*,
so a worker thread of the agent's asyncio loop can step into a namespace, make a
socket there and step back while every other thread stays put. A socket belongs to the
namespace it was created in for its whole life, so after the thread is back the
netlink socket still talks to the pod's namespace.

Why not pyroute2's own ``IPRoute(netns=...)``: in 0.9 it forks a helper process per
socket (``pyroute2.process.ChildProcess``) to ``setns`` and hand the socket back over
SCM_RIGHTS. Forking a multi-threaded process (gRPC threads) is unsafe, costs
milliseconds, and with its default ``flags=O_CREAT`` a missing path is silently
*created* as a new namespace. Here a missing path is an error.

``create``/``remove`` make and unmake namespaces the way ``ip netns add``/``del`` do
(a bind mount of ``/proc/thread-self/ns/net``); the agent's sandboxes make their own,
these are for the lab, tests and benchmarks.

Gotcha: ``/proc/thread-self``, never ``/proc/self`` (the main thread's namespace).
Gotcha: ``/proc/sys/net`` shows the namespace of the thread that opens the file, so
per-namespace sysctls are written from inside ``entered``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from agent.runtime import syscalls as sc

__all__ = ["NETLINK_ROUTE", "create", "entered", "inet_socket", "netlink_socket", "read_sysctl", "remove", "write_sysctl"]

#: <linux/netlink.h>
NETLINK_ROUTE = 0


def _open(path: str | os.PathLike[str]) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"network namespace {os.fspath(path)!r}: {e.strerror}") from None


@contextlib.contextmanager
def entered(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Run the body with the calling thread in the network namespace at ``path``.

    ``None`` is the thread's own namespace (nothing to switch). If the thread cannot go
    back, the process ends: a thread left in a pod's namespace would make the agent's
    next sockets there.
    """
    if path is None:
        yield
        return
    target = _open(path)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                sc.setns(target, sc.CLONE_NEWNET)
            except OSError as e:
                raise OSError(e.errno, f"setns into network namespace {os.fspath(path)!r}: {e.strerror}") from None
            try:
                yield
            finally:
                sc.return_to_namespace(own, sc.CLONE_NEWNET)
        finally:
            os.close(own)
    finally:
        os.close(target)


def netlink_socket(path: str | os.PathLike[str] | None, protocol: int = NETLINK_ROUTE) -> socket.socket:
    """A netlink socket (close-on-exec) that talks to the network namespace at ``path``."""
    with entered(path):
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, protocol)


def inet_socket(path: str | os.PathLike[str] | None, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """An AF_INET socket living in the network namespace at ``path``."""
    with entered(path):
        return socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC, proto)


def write_sysctl(path: str | os.PathLike[str] | None, key: str, value: str) -> None:
    """Write ``net.*`` sysctl ``key`` (dotted, e.g. ``net.ipv4.ip_forward``) of the namespace at ``path``."""
    if not key.startswith("net."):
        raise ValueError(f"sysctl {key!r} is not per network namespace")
    file = "/proc/sys/" + key.replace(".", "/")
    with entered(path):
        try:
            with open(file, "w") as f:
                f.write(value)
        except OSError as e:
            raise OSError(e.errno, f"sysctl {key}={value}: {e.strerror}") from None


def read_sysctl(path: str | os.PathLike[str] | None, key: str) -> str:
    file = "/proc/sys/" + key.replace(".", "/")
    with entered(path), open(file) as f:
        return f.read().strip()


def create(path: str | os.PathLike[str]) -> Path:
    """A new, empty network namespace (loopback down) held by a bind mount at ``path``.

    The file must not exist yet (EEXIST). The calling thread unshares, bind-mounts its
    new namespace and returns to its own one.
    """
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            sc.unshare(sc.CLONE_NEWNET)
            try:
                sc.mount("/proc/thread-self/ns/net", target, None, sc.MS_BIND)
            finally:
                sc.return_to_namespace(own, sc.CLONE_NEWNET)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    finally:
        os.close(own)
    return target


def remove(path: str | os.PathLike[str]) -> None:
    """Unmount and delete a namespace made by ``create`` (or ``ip netns add``); missing is fine.

    The namespace itself dies with its last reference: its veth ends go with it.
    """
    try:
        sc.umount2(path, sc.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
