"""Raw Linux system calls the container runtime needs, through ctypes.

Python 3.11 has no ``os.unshare``, ``os.mount`` or ``os.pivot_root``, so this
module is the one place that talks to libc directly. Each function is a thin
wrapper over one kernel call; the constants carry the kernel's own names so the
code above reads like the man pages. Every wrapper raises ``OSError`` with the
errno and a message naming the call and its path, e.g.
``OSError(EINVAL, "pivot_root('/x', '/x/.old'): Invalid argument")``.

Nothing here decides anything: ``rootfs.py``, ``security.py``, ``sandbox.py`` and
``shim.py`` compose these calls.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = [
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MNT_FORCE",
    "MS_BIND",
    "MS_NOATIME",
    "MS_NODEV",
    "MS_NODIRATIME",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_RELATIME",
    "MS_REMOUNT",
    "MS_SHARED",
    "MS_SLAVE",
    "MS_STRICTATIME",
    "PR_CAPBSET_DROP",
    "PR_CAPBSET_READ",
    "PR_CAP_AMBIENT",
    "PR_CAP_AMBIENT_CLEAR_ALL",
    "PR_GET_NO_NEW_PRIVS",
    "PR_SET_KEEPCAPS",
    "PR_SET_NO_NEW_PRIVS",
    "capget",
    "capset",
    "mount",
    "mount_setattr_idmap",
    "move_mount",
    "open_tree",
    "pivot_root",
    "prctl",
    "return_to_namespace",
    "sethostname",
    "setns",
    "umount2",
    "unshare",
]

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

# umount2 flags
MNT_FORCE = 1
MNT_DETACH = 2

# <linux/prctl.h>
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# <linux/capability.h>: version 3 takes two 32-bit words per set (64 capabilities).
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# glibc has no pivot_root wrapper, so it goes through syscall(2) by number.
_SYS_PIVOT_ROOT = {
    "x86_64": 155,
    "amd64": 155,
    "aarch64": 41,
    "arm64": 41,
}

_libc = ctypes.CDLL(None, use_errno=True)

_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.sethostname.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_libc.capget.restype = ctypes.c_int
_libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_libc.capset.restype = ctypes.c_int


def _fail(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


def _b(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``unshare(2)``).

    Gotcha: ``CLONE_NEWPID`` does not move the caller; it makes the caller's
    *next child* PID 1 of the new namespace, and once that child dies the
    namespace cannot get another process (fork fails with ENOMEM).
    ``CLONE_NEWNS`` implies ``CLONE_FS``, which fails with EINVAL in a process
    with more than one thread.
    """
    if _libc.unshare(flags) != 0:
        raise _fail(f"unshare({flags:#x})")


def mount(
    source: str | os.PathLike[str] | None,
    target: str | os.PathLike[str],
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """``mount(2)``: mount ``source`` of type ``fstype`` on ``target``."""
    rc = _libc.mount(_b(source), _b(target), None if fstype is None else fstype.encode(), flags,
                     None if data is None else data.encode())
    if rc != 0:
        raise _fail(f"mount({source!s}, {os.fspath(target)!r}, {fstype}, {flags:#x}, {data!r})")


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    """``umount2(2)``: unmount ``target``; ``MNT_DETACH`` makes it lazy."""
    if _libc.umount2(_b(target), flags) != 0:
        raise _fail(f"umount2({os.fspath(target)!r}, {flags:#x})")


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    """``pivot_root(2)``: make ``new_root`` the root mount, old root moves to ``put_old``.

    Gotchas (each is EINVAL): ``new_root`` must be a mount point that is not on
    the current root's mount; ``put_old`` must be at or under ``new_root``; and
    neither the new root nor the old root's parent mount may be shared, which
    is why the caller makes ``/`` recursively private first.
    """
    machine = platform.machine().lower()
    number = _SYS_PIVOT_ROOT.get(machine)
    if number is None:
        raise OSError(0, f"pivot_root: no syscall number known for machine {machine!r}")
    if _libc.syscall(ctypes.c_long(number), _b(new_root), _b(put_old)) != 0:
        raise _fail(f"pivot_root({os.fspath(new_root)!r}, {os.fspath(put_old)!r})")


# The new mount API (Linux 5.2, mount_setattr 5.12): one syscall number on every architecture.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def open_tree(path: str | os.PathLike[str], flags: int = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC) -> int:
    """``open_tree(2)``: with ``OPEN_TREE_CLONE``, a detached copy of the mount at ``path``; returns its fd."""
    fd = _libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD), _b(path), ctypes.c_uint(flags))
    if fd < 0:
        raise _fail(f"open_tree({os.fspath(path)!r})")
    return int(fd)


def mount_setattr_idmap(mount_fd: int, userns_fd: int) -> None:
    """``mount_setattr(2)`` with ``MOUNT_ATTR_IDMAP``: the detached mount ``mount_fd`` shows
    its files' owners mapped through the user namespace ``userns_fd`` (an idmapped mount).

    Gotcha: only a detached mount (``open_tree`` clone) that was never attached can be
    idmapped, and the filesystem must support it (ext4, xfs, btrfs, tmpfs since 6.3).
    """
    attr = _MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
    rc = _libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(mount_fd), b"",
                       ctypes.c_uint(AT_EMPTY_PATH), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if rc != 0:
        raise _fail("mount_setattr(MOUNT_ATTR_IDMAP)")


def move_mount(mount_fd: int, target: str | os.PathLike[str]) -> None:
    """``move_mount(2)``: attach the detached mount ``mount_fd`` on ``target``."""
    rc = _libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(mount_fd), b"", ctypes.c_int(AT_FDCWD),
                       _b(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
    if rc != 0:
        raise _fail(f"move_mount({os.fspath(target)!r})")


def sethostname(name: str) -> None:
    """``sethostname(2)`` in the caller's UTS namespace."""
    raw = name.encode()
    if _libc.sethostname(raw, len(raw)) != 0:
        raise _fail(f"sethostname({name!r})")


def setns(fd: int, nstype: int) -> None:
    """``setns(2)``: move the calling thread into the namespace ``fd`` refers to.

    Gotchas: a user namespace can only be joined by a single-threaded process
    whose fs information is not shared; joining one's own user namespace again
    is EINVAL. A mount namespace likewise needs an unshared fs (EINVAL).
    """
    if _libc.setns(fd, nstype) != 0:
        raise _fail(f"setns({fd}, {nstype:#x})")


def return_to_namespace(fd: int, nstype: int) -> None:
    """``setns`` the calling thread back into the namespace ``fd`` it came from.

    A thread that cannot go back would hand the namespace it is stuck in (a pod's) to
    everything it makes next, so the process ends instead (exit status 70), loudly.
    """
    try:
        setns(fd, nstype)
    except OSError as e:
        os.write(2, f"cannot return to the thread's own namespace ({nstype:#x}): {e}\n".encode())
        os._exit(70)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)``; returns the call's non-negative result."""
    rc = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if rc < 0:
        raise _fail(f"prctl({option}, {arg2}, {arg3})")
    return int(rc)


def capget() -> tuple[int, int, int]:
    """``capget(2)`` of the calling thread: (effective, permitted, inheritable) as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise _fail("capget")
    return (data[0].effective | data[1].effective << 32,
            data[0].permitted | data[1].permitted << 32,
            data[0].inheritable | data[1].inheritable << 32)


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """``capset(2)`` of the calling thread, with 64-bit masks (bit n = capability n).

    Gotcha: it only ever narrows ``permitted``; ``effective`` must be a subset
    of the new ``permitted`` (EPERM otherwise).
    """
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise _fail(f"capset(effective={effective:#x}, permitted={permitted:#x}, inheritable={inheritable:#x})")
