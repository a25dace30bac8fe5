"""The root filesystem of an ``image: host`` container, built in its mount namespace.

``enter_host_rootfs`` runs in the container's child process after it has
unshared its mount namespace and before it execs. Step by step:

1. make ``/`` recursively private, so no mount below propagates to the host;
2. mount a tmpfs on the (empty) rootfs directory: the container's ``/``;
3. bind the host's ``/usr``, ``/bin``, ``/sbin`` and ``/lib*`` read-only, or
   recreate them as symlinks where the host has symlinks (merged /usr);
4. write a small generated ``/etc`` — never the host's, which holds secrets;
5. mount a fresh ``proc`` (it shows the PID namespace of the mounting process),
   a minimal ``/dev`` and a tmpfs ``/tmp``;
6. ``pivot_root`` into it, detach the old root and remove its mount point,
   ``chdir`` to the working directory.

The files of the generated ``/etc`` come from pure functions (``etc_files``) so
they are unit-testable without a kernel. Everything else is one small function
per kernel step. Gotcha for callers: after ``pivot_root`` the host's Python
library tree is gone from view, so the caller must have imported everything it
still needs (``shim.py`` does).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.runtime import syscalls as sc

__all__ = [
    "DEV_NODES",
    "HOST_DIRS",
    "RootfsSpec",
    "enter_host_rootfs",
    "etc_files",
    "resolv_conf",
]

log = logging.getLogger(__name__)

#: Host directories an ``image: host`` container sees, read-only.
HOST_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Device nodes bind-mounted from the host's /dev (runc's default set).
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_SYMLINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}
#: Where the old root sits between pivot_root and its detach.
OLD_ROOT = ".orch-old-root"

# Gotcha: statvfs reports mount flags as ST_*; they have the same bit values
# as MS_* for these, but spell the mapping out rather than rely on it.
_ST_TO_MS = (
    (os.ST_NOSUID, sc.MS_NOSUID),
    (os.ST_NODEV, sc.MS_NODEV),
    (os.ST_NOEXEC, sc.MS_NOEXEC),
    (os.ST_NOATIME, sc.MS_NOATIME),
    (os.ST_NODIRATIME, sc.MS_NODIRATIME),
    (os.ST_RELATIME, sc.MS_RELATIME),
)


@dataclass(frozen=True, slots=True)
class RootfsSpec:
    """What the container's root filesystem looks like."""

    rootfs: Path  # an empty directory; becomes the container's /
    hostname: str
    working_dir: str = "/"
    host_resolv_conf: str = "/etc/resolv.conf"
    tmpfs_size: str = "64m"  # for /, /tmp and /dev/shm each; charged to the container's memory cgroup


# ---------------------------------------------------------------- pure parts


def resolv_conf(host_text: str) -> str:
    """The host's resolv.conf reduced to ``nameserver``, ``search`` and ``options`` lines.

    Not the host file itself: comments and anything else stay out. Note that a
    loopback nameserver only works while containers share the host's network
    namespace.
    """
    keep = [line.strip() for line in host_text.splitlines()
            if line.split()[:1] and line.split()[0] in ("nameserver", "search", "options")]
    return "".join(f"{line}\n" for line in keep)


def etc_files(hostname: str, host_resolv_conf_text: str) -> dict[str, str]:
    """The generated /etc: relative file name -> contents."""
    return {
        "passwd": (
            "root:x:0:0:root:/root:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
        "hosts": (
            "127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n"
        ),
        "hostname": f"{hostname}\n",
        "resolv.conf": resolv_conf(host_resolv_conf_text),
        # Without nsswitch.conf glibc falls back to built-in defaults that
        # differ between versions; say "files, then DNS" explicitly.
        "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    }


# ---------------------------------------------------------------- kernel steps


def make_mounts_private() -> None:
    """Stop propagation both ways: nothing we mount from here reaches the host.

    Gotcha: on systemd hosts ``/`` is a shared mount, and a fresh mount
    namespace copies that; every mount below would then appear on the host.
    """
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)


def mount_tmpfs(target: Path, *, mode: str, size: str, flags: int = 0, extra: str = "") -> None:
    data = f"mode={mode},size={size}" + (f",{extra}" if extra else "")
    sc.mount("tmpfs", target, "tmpfs", flags, data)


def _mount_flags(path: str) -> int:
    flags = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS if flags & st)


def bind_readonly(source: str, target: Path, *, extra_flags: int = sc.MS_NOSUID | sc.MS_NODEV) -> None:
    """Bind ``source`` on ``target`` read-only.

    Gotcha: MS_RDONLY is ignored on the initial MS_BIND; it takes a second
    mount(MS_REMOUNT|MS_BIND|MS_RDONLY). That remount must also repeat the
    source mount's nosuid/nodev/noexec/atime flags, or the kernel refuses it
    (EPERM) where they are locked, e.g. in a user namespace.
    """
    sc.mount(source, target, None, sc.MS_BIND)
    sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _mount_flags(source) | extra_flags)


def populate_host_dirs(root: Path) -> None:
    """Give ``root`` the host's /usr, /bin, /sbin, /lib*: read-only binds, or symlinks as on the host."""
    for host_dir in HOST_DIRS:
        if not os.path.lexists(host_dir):
            continue
        target = root / host_dir.lstrip("/")
        if os.path.islink(host_dir):
            # Merged /usr (Debian 12: /bin -> usr/bin): the link resolves
            # inside the container once /usr is bound.
            os.symlink(os.readlink(host_dir), target)
        elif os.path.isdir(host_dir):
            target.mkdir(mode=0o755)
            bind_readonly(host_dir, target)


def write_etc(root: Path, spec: RootfsSpec) -> None:
    try:
        host_resolv = Path(spec.host_resolv_conf).read_text()
    except OSError:
        host_resolv = ""
    etc = root / "etc"
    etc.mkdir(mode=0o755)
    for name, text in etc_files(spec.hostname, host_resolv).items():
        (etc / name).write_text(text)
        os.chmod(etc / name, 0o644)


def mount_proc(root: Path) -> None:
    """A fresh procfs: it shows the PID namespace of the process that mounts it."""
    target = root / "proc"
    target.mkdir(mode=0o555)
    sc.mount("proc", target, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def mount_dev(root: Path, spec: RootfsSpec) -> None:
    """A minimal /dev: host device nodes bound onto empty files, symlinks, shm and a private devpts."""
    dev = root / "dev"
    dev.mkdir(mode=0o755)
    mount_tmpfs(dev, mode="755", size="64k", flags=sc.MS_NOSUID | sc.MS_STRICTATIME)
    for name in DEV_NODES:
        host_node = f"/dev/{name}"
        try:
            if not stat.S_ISCHR(os.stat(host_node).st_mode):
                continue
        except FileNotFoundError:
            continue
        # Binding the host's node, not mknod: works wherever the host's /dev
        # does, also without CAP_MKNOD; the bind is its own mount, so the
        # tmpfs's nodev-less flags don't matter for it.
        node = dev / name
        node.touch(mode=0o666)
        sc.mount(host_node, node, None, sc.MS_BIND)
    for name, target in DEV_SYMLINKS.items():
        os.symlink(target, dev / name)
    shm = dev / "shm"
    shm.mkdir(mode=0o1777)
    mount_tmpfs(shm, mode="1777", size=spec.tmpfs_size, flags=sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    pts = dev / "pts"
    pts.mkdir(mode=0o755)
    # newinstance: a devpts of our own, not the host's ptys; ptmxmode=0666
    # makes its ptmx usable through the /dev/ptmx -> pts/ptmx symlink.
    sc.mount("devpts", pts, "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")


def mount_tmp(root: Path, spec: RootfsSpec) -> None:
    tmp = root / "tmp"
    tmp.mkdir()
    mount_tmpfs(tmp, mode="1777", size=spec.tmpfs_size, flags=sc.MS_NOSUID | sc.MS_NODEV)


def pivot_into(root: Path) -> None:
    """Make ``root`` the process's / and drop every trace of the old root."""
    old = root / OLD_ROOT
    old.mkdir(mode=0o700)
    sc.pivot_root(root, old)
    os.chdir("/")
    # MNT_DETACH: the old root holds busy mounts (our own /proc, the host's
    # /dev ...) that a plain umount would refuse with EBUSY.
    sc.umount2(f"/{OLD_ROOT}", sc.MNT_DETACH)
    os.rmdir(f"/{OLD_ROOT}")


def enter_working_dir(working_dir: str) -> None:
    """chdir into the working directory, creating it if missing (as runc does)."""
    wd = working_dir or "/"
    if not wd.startswith("/"):
        raise OSError(errno.EINVAL, f"workingDir must be absolute: {wd!r}")
    try:
        os.chdir(wd)
    except FileNotFoundError:
        os.makedirs(wd, mode=0o755, exist_ok=True)
        os.chdir(wd)


def enter_host_rootfs(spec: RootfsSpec) -> None:
    """Build the ``image: host`` root in the current mount namespace and pivot into it.

    The caller must already be in its own mount namespace; called in the
    host's, step 1 would make the host's mounts private.
    """
    root = spec.rootfs
    make_mounts_private()
    mount_tmpfs(root, mode="755", size=spec.tmpfs_size)
    populate_host_dirs(root)
    write_etc(root, spec)
    for name in ("root", "run", "var", "var/tmp"):
        (root / name).mkdir(mode=0o1777 if name == "var/tmp" else 0o755)
    os.chmod(root / "var/tmp", 0o1777)  # mkdir applies the umask
    mount_proc(root)
    mount_dev(root, spec)
    mount_tmp(root, spec)
    pivot_into(root)
    enter_working_dir(spec.working_dir)
