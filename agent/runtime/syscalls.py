"""Raw Linux system calls the container runtime needs, through ctypes.

Python 3.11 has no ``os.unshare``, ``os.mount`` or ``os.pivot_root``, so this
module is the one place that talks to libc directly. Each function is a thin
wrapper over one kernel call; the constants carry the kernel's own names so the
code above reads like the man pages. Every wrapper raises ``OSError`` with the
errno and a message naming the call and its path, e.g.
``OSError(EINVAL, "pivot_root('/x', '/x/.old'): Invalid argument")``.

Nothing here decides anything: ``rootfs.py`` and ``shim.py`` compose these calls.
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
    "mount",
    "pivot_root",
    "sethostname",
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


def sethostname(name: str) -> None:
    """``sethostname(2)`` in the caller's UTS namespace."""
    raw = name.encode()
    if _libc.sethostname(raw, len(raw)) != 0:
        raise _fail(f"sethostname({name!r})")
