"""Pod sandboxes: the network, UTS and IPC namespaces a pod's containers share.

In Kubernetes every container of a pod sees the same network (one loopback,
one IP), the same hostname and the same System V IPC; each still has its own
PID, mount and cgroup namespace. A sandbox holds those shared namespaces while
no process is in them, the way ``ip netns add`` does: a bind mount of the
namespace's nsfs file keeps the namespace alive::

    <state_dir>/sandboxes/<pod uid>/
        net  uts  ipc     bind mounts of /proc/<pid>/ns/{net,uts,ipc}
        user              also, for a pod with hostUsers: false
        sandbox.json      written last: the sandbox is complete

A container's child ``setns()``es into them (``shim.py``). The network
namespace has loopback up and nothing else; the network layer adds the pod's
veth later (``Runtime.sandbox_netns_path``).

**Creation** happens in a short-lived child: fork, the child unshares the
namespaces, sets the hostname and brings ``lo`` up, tells the parent over a
pipe, the parent bind-mounts ``/proc/<child>/ns/*`` and the child exits. The
agent's own threads never change namespace. The child is forked from a
process that may have other threads (gRPC), so it does only what is safe
there: system calls on already-imported modules, no logging, no imports.

**User namespaces** (``hostUsers: false``): the child first unshares a user
namespace, the parent writes its ``uid_map``/``gid_map`` (container 0..65535
-> host ``base``..``base``+65535), and the network, UTS and IPC namespaces are
then created *inside* it, so they belong to it: the container's root can bind
low ports, and sysfs can be mounted for its network namespace. Each pod gets
its own range, ``base`` = 65536·k, k >= 1, allocated without collisions by
creating ``<state_dir>/userns/<k>`` with O_EXCL (the file names its pod).
Ranges are unique per state directory: two agents on one machine (a lab)
would hand out the same ranges.

**The host's namespaces** (``hostNetwork``, ``hostIPC``): a pod may share the node's
network namespace (and with it, as in containerd, the node's UTS namespace: its
hostname) or IPC namespace instead of having its own. The sandbox then holds a bind
mount of the node's namespace file under the same name, so a container joins it as it
would join a namespace of the pod's own; nothing is created for those kinds, and the
node's hostname is never set. ``Sandbox.host`` lists them. The node's namespaces are
the files the caller names (the agent's own, or the node's network namespace when the
agent is not in it).

**emptyDir volumes** live in the sandbox too, ``volumes/<name>``: a directory of the
pod's (a tmpfs for ``medium: Memory``), made for the pod's first container that mounts
it, kept across container restarts, removed with the sandbox.

**Removal** unmounts the bind mounts (the namespaces die with their last
process) and removes the directory and the range. ``remove_all`` also
unmounts whatever ``/proc/self/mountinfo`` still lists below the sandboxes
directory, so a half-made sandbox never outlives a cleanup.

Gotcha: the bind mounts live in the host's mount namespace and every mount
namespace copied from it, i.e. each new container's, until that container
pivots and detaches its old root. Containers do that before they exec.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtime import syscalls as sc

__all__ = [
    "ID_RANGE_SIZE",
    "NAMESPACE_FLAGS",
    "IdMap",
    "Sandbox",
    "Sandboxes",
    "interface_up",
]

log = logging.getLogger(__name__)

#: Namespace kinds a sandbox holds, with their clone flags; "user" only for hostUsers: false.
NAMESPACE_FLAGS = {
    "user": sc.CLONE_NEWUSER,
    "net": sc.CLONE_NEWNET,
    "uts": sc.CLONE_NEWUTS,
    "ipc": sc.CLONE_NEWIPC,
}
#: Ids per pod user namespace (Kubernetes uses the same size).
ID_RANGE_SIZE = 65536
#: k ranges over 1 .. MAX_RANGES: 65536·k stays below the invalid uid 2**32-1.
MAX_RANGES = (2**32 // ID_RANGE_SIZE) - 2
SANDBOX_FILE = "sandbox.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# <linux/sockios.h>, <net/if.h>
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in a 24-byte union


@dataclass(frozen=True, slots=True)
class IdMap:
    """Container ids 0 .. size-1 are host ids host_id .. host_id+size-1 (for uids and gids alike)."""

    host_id: int
    size: int = ID_RANGE_SIZE

    def map_line(self) -> str:
        """The line for /proc/<pid>/uid_map and gid_map."""
        return f"0 {self.host_id} {self.size}\n"


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A pod's sandbox on disk: the namespace files to join and, with a user namespace, its id map."""

    pod_uid: str
    dir: Path
    hostname: str
    idmap: IdMap | None
    host: tuple[str, ...] = ()  # kinds that are the node's namespaces, bound here, not made (sorted)

    @property
    def kinds(self) -> tuple[str, ...]:
        return ("user", "net", "uts", "ipc") if self.idmap is not None else ("net", "uts", "ipc")

    def path(self, kind: str) -> Path:
        return self.dir / kind

    def namespaces(self) -> dict[str, str]:
        """kind -> nsfs file, for runtime.json (what the shim's child joins)."""
        return {kind: str(self.path(kind)) for kind in self.kinds}

    def volume_dir(self, name: str) -> Path:
        return self.dir / "volumes" / name

    def to_dict(self) -> dict[str, Any]:
        return {
            "podUID": self.pod_uid,
            "hostname": self.hostname,
            "idmap": None if self.idmap is None else {"hostID": self.idmap.host_id, "size": self.idmap.size},
            "host": list(self.host),
        }

    @classmethod
    def from_dict(cls, directory: Path, data: dict[str, Any]) -> Sandbox:
        raw = data.get("idmap")
        idmap = None if raw is None else IdMap(int(raw["hostID"]), int(raw["size"]))
        return cls(pod_uid=str(data["podUID"]), dir=directory, hostname=str(data["hostname"]), idmap=idmap,
                   host=tuple(sorted(str(k) for k in data.get("host") or ())))


# ---------------------------------------------------------------- kernel steps


def interface_up(name: str) -> None:
    """Set IFF_UP on interface ``name`` of the caller's network namespace (SIOCSIFFLAGS).

    An ioctl, not netlink: it runs in the forked child, where starting
    pyroute2 (imports, threads) would not be safe.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s, _SIOCGIFFLAGS, _IFREQ.pack(name.encode(), 0))
        flags = _IFREQ.unpack(raw)[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | _IFF_UP))


def _namespace_child(hostname: str, with_userns: bool, to_parent: int, from_parent: int) -> None:
    """The forked child: make the namespaces, report, wait to be bind-mounted. Never returns."""
    code = 1
    try:
        if with_userns:
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(to_parent, b"u")
            if os.read(from_parent, 1) != b"m":
                os._exit(1)
        sc.unshare(sc.CLONE_NEWNET | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC)
        sc.sethostname(hostname)
        interface_up("lo")
        os.write(to_parent, b"n")
        os.read(from_parent, 1)  # EOF: the parent is done with our /proc/<pid>/ns
        code = 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        with contextlib.suppress(OSError):
            os.write(to_parent, b"E" + str(e).encode(errors="replace")[:2000])
    finally:
        os._exit(code)


def _read_reply(fd: int, expected: bytes) -> None:
    first = os.read(fd, 1)
    if first == expected:
        return
    rest = b""
    while chunk := os.read(fd, 4096):
        rest += chunk
    text = rest.decode(errors="replace") if first == b"E" else "exited unexpectedly"
    raise OSError(errno.EIO, f"sandbox namespace child: {text}")


def _write_map(pid: int, name: str, idmap: IdMap) -> None:
    try:
        Path(f"/proc/{pid}/{name}").write_text(idmap.map_line())
    except OSError as e:
        raise OSError(e.errno, f"write /proc/{pid}/{name} ({idmap.map_line().strip()!r}): {e.strerror}") from None


def _bind_namespace(pid: int | str, kind: str, target: Path) -> None:
    _bind_namespace_file(f"/proc/{pid}/ns/{kind}", target)


def _bind_namespace_file(source: str, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    sc.mount(source, target, None, sc.MS_BIND)


def create_namespaces(directory: Path, hostname: str, idmap: IdMap | None,
                      host: Mapping[str, str] | None = None) -> None:
    """Make the sandbox's namespaces and bind-mount them into ``directory``; the kinds in
    ``host`` (kind -> the node's nsfs file) are bound from there instead.

    Without a user namespace the calling thread makes them itself and steps
    back (``_create_in_place``); a user namespace cannot be left again, so then
    a short-lived child makes them. On error whatever was mounted stays for
    the caller to tear down.
    """
    host = dict(host or {})
    if idmap is not None and host:
        raise OSError(errno.EINVAL, "a pod with a user namespace of its own cannot share the node's namespaces")
    for kind, source in sorted(host.items()):
        if kind not in _OWN_NAMESPACES:
            raise OSError(errno.EINVAL, f"{kind!r} is no namespace a sandbox can share with the node")
        _bind_namespace_file(source, directory / kind)
    if idmap is None:
        _create_in_place(directory, hostname, frozenset(_OWN_NAMESPACES) - set(host))
        return
    kinds = ("user", "net", "uts", "ipc") if idmap is not None else ("net", "uts", "ipc")
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(up_r)
        os.close(down_w)
        _namespace_child(hostname, idmap is not None, up_w, down_r)
    os.close(up_w)
    os.close(down_r)
    try:
        if idmap is not None:
            _read_reply(up_r, b"u")
            # Written by us, a process with CAP_SETUID/CAP_SETGID over the
            # parent namespace: the child may then call setgroups(2) in it.
            _write_map(pid, "uid_map", idmap)
            _write_map(pid, "gid_map", idmap)
            os.write(down_w, b"m")
        _read_reply(up_r, b"n")
        for kind in kinds:
            _bind_namespace(pid, kind, directory / kind)
    finally:
        os.close(down_w)  # the child's read returns EOF and it exits
        os.close(up_r)
        os.waitpid(pid, 0)


_OWN_NAMESPACES = {"net": sc.CLONE_NEWNET, "uts": sc.CLONE_NEWUTS, "ipc": sc.CLONE_NEWIPC}


def _create_in_place(directory: Path, hostname: str, kinds: frozenset[str] = frozenset(_OWN_NAMESPACES)) -> None:
    """Unshare the calling thread into new namespaces of ``kinds`` (net, uts, ipc), bind-mount
    them, and return the thread to the namespaces it had.

    Saves the fork of a child (a few milliseconds of a pod's start). Namespaces
    belong to a thread, so other threads of the process never see the switch.
    Gotcha: ``/proc/thread-self``, not ``/proc/self`` (the main thread's). The
    hostname is set and ``lo`` brought up only in namespaces made here: in the
    node's own, either would change the node.
    """
    if not kinds:
        return
    own = {kind: os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in kinds}
    try:
        flags = 0
        for kind in kinds:
            flags |= _OWN_NAMESPACES[kind]
        sc.unshare(flags)
        try:
            if "uts" in kinds:
                sc.sethostname(hostname)
            if "net" in kinds:
                interface_up("lo")
            for kind in sorted(kinds):
                _bind_namespace("thread-self", kind, directory / kind)
        finally:
            for kind, fd in own.items():
                sc.return_to_namespace(fd, _OWN_NAMESPACES[kind])
    finally:
        for fd in own.values():
            os.close(fd)


#: (sandbox dir, hostname, id map, {kind: the node's nsfs file} for the kinds shared with the node)
NamespaceCreator = Callable[[Path, str, "IdMap | None", Mapping[str, str]], None]


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(directory: Path) -> list[str]:
    """Mount points in our mount namespace at or below ``directory``, deepest first."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if point.startswith(prefix) or point == prefix.rstrip("/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _unmount(path: str) -> None:
    try:
        sc.umount2(path, sc.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
            raise


# ---------------------------------------------------------------- the id range allocator


class IdRanges:
    """Host id ranges for pod user namespaces: ``<dir>/<k>`` exists while range 65536·k is taken."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def allocate(self, owner: str) -> IdMap:
        self.dir.mkdir(parents=True, exist_ok=True)
        for k in range(1, MAX_RANGES + 1):
            try:
                fd = os.open(self.dir / str(k), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{owner}\n")
            return IdMap(k * ID_RANGE_SIZE)
        raise OSError(errno.ENOSPC, "no free user namespace id range")

    def release(self, idmap: IdMap) -> None:
        (self.dir / str(idmap.host_id // ID_RANGE_SIZE)).unlink(missing_ok=True)


# ---------------------------------------------------------------- the manager


class Sandboxes:
    """The pod sandboxes of one runtime state directory.

    Every method takes an flock on ``<sandboxes>/.lock``: threads of one
    agent and separate processes on one state dir serialise their changes.
    """

    def __init__(self, state_dir: Path, create: NamespaceCreator | None = None) -> None:
        self.root = state_dir / "sandboxes"
        self.ranges = IdRanges(state_dir / "userns")
        # Who forks the namespace child: a multi-threaded caller (the agent, with gRPC's
        # threads) must not fork itself, so the Runtime hands this to its fork server.
        self.create = create or create_namespaces

    def _dir(self, pod_uid: str) -> Path:
        if not _SAFE_NAME.match(pod_uid):
            raise ValueError(f"pod uid {pod_uid!r} is not usable as a directory name")
        return self.root / pod_uid

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, directory: Path) -> Sandbox | None:
        """The sandbox in ``directory`` if it is complete and its namespaces are still mounted."""
        try:
            data = json.loads((directory / SANDBOX_FILE).read_text())
            sandbox = Sandbox.from_dict(directory, data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("sandbox %s: unreadable %s: %s", directory.name, SANDBOX_FILE, e)
            return None
        # After a reboot the files are there but the mounts (and namespaces) are not.
        if not all(os.path.ismount(sandbox.path(kind)) for kind in sandbox.kinds):
            return None
        return sandbox

    def get(self, pod_uid: str) -> Sandbox | None:
        return self._read(self._dir(pod_uid))

    def ensure(self, pod_uid: str, hostname: str, *, host_users: bool = True,
               host: Mapping[str, str] | None = None) -> Sandbox:
        """The pod's sandbox, created if missing (or left half-made by a crash). ``host``: the
        kinds the pod shares with the node, each with the node's nsfs file to bind."""
        directory = self._dir(pod_uid)
        shared = tuple(sorted(host or {}))
        if shared and not host_users:
            raise ValueError(f"pod {pod_uid}: a pod with hostUsers false cannot share the node's "
                             f"{', '.join(shared)} namespace")
        with self._locked():
            existing = self._read(directory)
            if existing is not None:
                if (existing.idmap is None) != host_users:
                    raise ValueError(f"pod {pod_uid}: its sandbox was made with hostUsers "
                                     f"{existing.idmap is None}, a container asks for {host_users}")
                if existing.host != shared:
                    raise ValueError(f"pod {pod_uid}: its sandbox shares {list(existing.host)} with the node, "
                                     f"a container asks for {list(shared)}")
                return existing
            self._teardown(directory)
            directory.mkdir(mode=0o755, parents=True)
            idmap = None if host_users else self.ranges.allocate(pod_uid)
            sandbox = Sandbox(pod_uid=pod_uid, dir=directory, hostname=hostname, idmap=idmap, host=shared)
            try:
                # The pod's id map is recorded before anything can fail, so a
                # teardown after a crash releases its range.
                _write_json(directory / ".idmap.json", sandbox.to_dict())
                self.create(directory, hostname, idmap, dict(host or {}))
                _write_json(directory / SANDBOX_FILE, sandbox.to_dict())
            except BaseException:
                with contextlib.suppress(OSError):
                    self._teardown(directory)
                raise
            log.info("pod %s: sandbox created (hostname %s%s%s)", pod_uid, hostname,
                     f", user namespace -> host ids {idmap.host_id}+{idmap.size}" if idmap else "",
                     f", the node's {' and '.join(shared)} namespaces" if shared else "")
            return sandbox

    def empty_dir(self, sandbox: Sandbox, name: str, *, memory: bool = False, size_bytes: int | None = None) -> Path:
        """The pod's emptyDir volume ``name`` (made if missing): a directory every user may
        write, as the kubelet makes it, or a tmpfs of ``size_bytes`` (the kernel's default,
        half the RAM, without) for ``medium: Memory``. Its pages are charged to the memory
        cgroup of whoever writes them."""
        if not _SAFE_NAME.match(name):
            raise ValueError(f"volume name {name!r} is not usable as a directory name")
        path = sandbox.volume_dir(name)
        with self._locked():
            if path.is_dir() and (not memory or os.path.ismount(path)):
                return path
            path.mkdir(mode=0o777, parents=True, exist_ok=True)
            if memory:
                size = f",size={size_bytes}" if size_bytes else ""
                sc.mount("tmpfs", path, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode=1777{size}")
            os.chmod(path, 0o1777 if memory else 0o777)  # mkdir applies the umask
            log.info("pod %s: emptyDir %s made%s", sandbox.pod_uid, name, " (tmpfs)" if memory else "")
            return path

    def remove(self, pod_uid: str) -> None:
        """Unmount and remove the pod's sandbox; missing is fine."""
        directory = self._dir(pod_uid)
        with self._locked():
            self._teardown(directory)

    def pod_uids(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.root) if not n.startswith(".") and _SAFE_NAME.match(n))
        except FileNotFoundError:
            return []

    def remove_all(self) -> None:
        """Remove every sandbox, every mount below the sandboxes directory and the id ranges."""
        if not self.root.exists():
            shutil.rmtree(self.ranges.dir, ignore_errors=True)
            return
        with self._locked():
            for pod_uid in self.pod_uids():
                self._teardown(self.root / pod_uid)
            for point in mounts_under(self.root):
                _unmount(point)
        shutil.rmtree(self.root)
        shutil.rmtree(self.ranges.dir, ignore_errors=True)

    def _teardown(self, directory: Path) -> None:
        if not directory.exists():
            return
        for _ in range(8):  # a point mounted over twice is listed once per mount
            points = mounts_under(directory)
            if not points:
                break
            for point in points:
                _unmount(point)
        recorded = _read_json(directory / ".idmap.json")
        if recorded and recorded.get("idmap"):
            self.ranges.release(Sandbox.from_dict(directory, recorded).idmap)  # type: ignore[arg-type]
        shutil.rmtree(directory)
        log.info("pod %s: sandbox removed", directory.name)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
