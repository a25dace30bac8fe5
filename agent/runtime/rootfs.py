"""The root filesystem of an ``image: host`` container, built in its mount namespace.

``enter_host_rootfs`` runs in the container's child process after it has
unshared its mount namespace and before it execs. Step by step:

1. make ``/`` recursively private, so no mount below propagates to the host;
2. mount a tmpfs on the (empty) rootfs directory: the container's ``/``;
3. bind the host's ``/usr``, ``/bin``, ``/sbin`` and ``/lib*`` read-only, or
   recreate them as symlinks where the host has symlinks (merged /usr);
4. write a small generated ``/etc`` — never the host's, which holds secrets;
5. mount a fresh ``proc`` (it shows the PID namespace of the mounting process),
   a ``sysfs`` when the container has a network namespace of its own (sysfs
   shows the network devices of the mounting process's namespace), a minimal
   ``/dev`` and a tmpfs ``/tmp``; then bind the pod's volumes (hostPath,
   emptyDir) at their mount paths, read-only where asked;
6. unless privileged, as runc does: mask ``MASKED_PATHS`` (``/dev/null`` bound
   over files, an empty read-only tmpfs over directories) and make
   ``READONLY_PATHS`` read-only binds of themselves; /sys is read-only;
7. ``pivot_root`` into it, detach the old root and remove its mount point,
   ``chdir`` to the working directory;
8. with ``read_only`` (``readOnlyRootFilesystem``) remount ``/`` read-only.

Read-only root, as Docker's ``--read-only`` and Kubernetes: everything on
the root filesystem — /etc, /tmp, /var/tmp, /run, /root — is read-only, and
/tmp gets no tmpfs (in Kubernetes only volumes are writable; a pod that needs
scratch space mounts an emptyDir). /dev, /dev/shm, /dev/pts, /proc (with its
masks) and /sys are the separate mounts they always are, /dev/shm writable.

User namespaces: ``owner`` is the host uid/gid the container's root maps to.
The tmpfs mounts are made with that owner and the generated files chowned to
it, so the container's root owns its /, /etc, /tmp as it would without a user
namespace; the host's read-only binds stay owned by host root and show up as
``nobody`` inside. An image's layers are seen through idmapped mounts of the
pod's user namespace (``idmapped_layers``), so its files keep their owners
inside, root's included.

Volumes: each is a recursive bind of its source (a host path, or the pod's emptyDir
directory) onto its mount path, made before ``pivot_root``, so the mount path is
resolved *inside* the new root (``resolve_in_root``): an image's symlink cannot point
a mount at the host's ``/etc``. The mount point is created if missing (a directory,
or an empty file for a file source). ``readOnly`` is the second mount(2) a read-only
bind always takes; as in Kubernetes without ``recursiveReadOnly``, mounts below the
source stay as they are. Mounts are private: nothing propagates either way.
``prepare_host_path`` is the kubelet's check of a hostPath ``type``, run by the
Runtime in the node's mount namespace before the container starts.

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
from agent.runtime.overlay import mount_overlay

__all__ = [
    "BindMount",
    "DEV_NODES",
    "HOST_DIRS",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "RootfsSpec",
    "enter_host_rootfs",
    "enter_image_rootfs",
    "enter_rootfs",
    "etc_files",
    "prepare_host_path",
    "resolv_conf",
    "resolve_in_root",
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
#: Hidden from a container that is not privileged (runc's and Docker's defaults):
#: kernel memory, keyrings, timers and scheduler internals, firmware tables.
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
)
#: Read-only for a container that is not privileged: sysctls and hardware knobs
#: that are global to the host, not namespaced.
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

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
class BindMount:
    """A volume in a container: ``source`` on the node bound at ``destination`` in the container."""

    source: str
    destination: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class RootfsSpec:
    """What the container's root filesystem looks like."""

    rootfs: Path  # an empty directory; becomes the container's /
    hostname: str
    working_dir: str = "/"
    host_resolv_conf: str = "/etc/resolv.conf"
    tmpfs_size: str = "64m"  # for /, /tmp and /dev/shm each; charged to the container's memory cgroup
    privileged: bool = False  # no masked or read-only paths; /sys writable
    read_only: bool = False  # readOnlyRootFilesystem
    mount_sysfs: bool = False  # only in a network namespace of the container's (pod's) own
    owner: tuple[int, int] = (0, 0)  # host uid, gid of the container's root (user namespaces)
    # An image's unpacked layers, lowest first; empty for the host image.
    layers: tuple[str, ...] = ()
    # The container's state dir: the overlay's upper and work dirs and the generated /etc files live there.
    state_dir: Path | None = None
    # The pod's user namespace (an open fd) when ``owner`` is not host root: an image's
    # layers are then seen through idmapped mounts of it.
    userns_fd: int | None = None
    mounts: tuple[BindMount, ...] = ()  # the container's volumes, bound in this order

    def owner_options(self) -> str:
        """tmpfs options giving a new mount the container root's owner ("" when that is host root)."""
        uid, gid = self.owner
        return f"uid={uid},gid={gid}" if (uid, gid) != (0, 0) else ""


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


def populate_host_dirs(root: Path, owner: tuple[int, int] = (0, 0)) -> None:
    """Give ``root`` the host's /usr, /bin, /sbin, /lib*: read-only binds, or symlinks as on the host."""
    for host_dir in HOST_DIRS:
        if not os.path.lexists(host_dir):
            continue
        target = root / host_dir.lstrip("/")
        if os.path.islink(host_dir):
            # Merged /usr (Debian 12: /bin -> usr/bin): the link resolves
            # inside the container once /usr is bound.
            os.symlink(os.readlink(host_dir), target)
            os.lchown(target, *owner)
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
    os.chown(etc, *spec.owner)
    for name, text in etc_files(spec.hostname, host_resolv).items():
        (etc / name).write_text(text)
        os.chmod(etc / name, 0o644)
        os.chown(etc / name, *spec.owner)


def mount_proc(root: Path) -> None:
    """A fresh procfs: it shows the PID namespace of the process that mounts it."""
    target = root / "proc"
    target.mkdir(mode=0o555, exist_ok=True)
    sc.mount("proc", target, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def mount_sys(root: Path, spec: RootfsSpec) -> None:
    """A fresh sysfs, read-only unless privileged.

    Gotcha: sysfs shows the network devices of the mounting process's network
    namespace, so it is only mounted in the container's (pod's) own one; in a
    user namespace the kernel also wants that network namespace owned by it.
    """
    target = root / "sys"
    target.mkdir(mode=0o555, exist_ok=True)
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (0 if spec.privileged else sc.MS_RDONLY)
    sc.mount("sysfs", target, "sysfs", flags)


def mask_path(root: Path, path: str) -> None:
    """Hide ``path`` (absolute, in the container): /dev/null over a file, an empty read-only tmpfs over a dir.

    A path this kernel doesn't have is skipped.
    """
    target = root / path.lstrip("/")
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "size=4k,mode=555")
    else:
        sc.mount("/dev/null", target, None, sc.MS_BIND)


def readonly_path(root: Path, path: str) -> None:
    """Make ``path`` (absolute, in the container) a read-only bind of itself; skipped if missing."""
    target = root / path.lstrip("/")
    if not os.path.lexists(target):
        return
    bind_readonly(str(target), target, extra_flags=sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def restrict_kernel_paths(root: Path, spec: RootfsSpec) -> None:
    """Masked and read-only /proc (and /sys) paths, as runc applies them to a container that is not privileged."""
    if spec.privileged:
        return
    for path in MASKED_PATHS:
        if path.startswith("/sys/") and not spec.mount_sysfs:
            continue
        mask_path(root, path)
    for path in READONLY_PATHS:
        readonly_path(root, path)


def mount_dev(root: Path, spec: RootfsSpec) -> None:
    """A minimal /dev: host device nodes bound onto empty files, symlinks, shm and a private devpts."""
    dev = root / "dev"
    dev.mkdir(mode=0o755, exist_ok=True)
    mount_tmpfs(dev, mode="755", size="64k", flags=sc.MS_NOSUID | sc.MS_STRICTATIME, extra=spec.owner_options())
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
        os.lchown(dev / name, *spec.owner)
    shm = dev / "shm"
    shm.mkdir(mode=0o1777)
    mount_tmpfs(shm, mode="1777", size=spec.tmpfs_size, flags=sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                extra=spec.owner_options())
    pts = dev / "pts"
    pts.mkdir(mode=0o755)
    # newinstance: a devpts of our own, not the host's ptys; ptmxmode=0666
    # makes its ptmx usable through the /dev/ptmx -> pts/ptmx symlink. The
    # gid is a host gid: the container's tty group (5) mapped.
    sc.mount("devpts", pts, "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             f"newinstance,ptmxmode=0666,mode=0620,gid={spec.owner[1] + 5}")


def mount_tmp(root: Path, spec: RootfsSpec) -> None:
    """A tmpfs /tmp; with a read-only root just the (read-only) directory, as Docker's --read-only."""
    tmp = root / "tmp"
    tmp.mkdir()
    if spec.read_only:
        os.chmod(tmp, 0o1777)
        os.chown(tmp, *spec.owner)
        return
    mount_tmpfs(tmp, mode="1777", size=spec.tmpfs_size, flags=sc.MS_NOSUID | sc.MS_NODEV, extra=spec.owner_options())


#: Symlinks followed while resolving one path, as the kernel's MAXSYMLINKS.
MAX_SYMLINKS = 40


def resolve_in_root(root: Path, path: str) -> Path:
    """``root/path`` with every symlink on the way resolved as if ``root`` were ``/`` (and
    ``..`` stopping at it), like runc's securejoin: an absolute link in the image means the
    container's path, never the node's. The last component may be a missing name."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if not os.path.islink(candidate):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"too many levels of symbolic links in {path}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending = [p for p in target.split("/") if p not in ("", ".")] + pending
    return root.joinpath(*resolved)


def make_mount_point(target: Path, *, directory: bool, owner: tuple[int, int]) -> None:
    """Create ``target`` (and missing parents, owned by the container's root) to mount on:
    a directory, or an empty file for a file source. An existing one is kept."""
    missing = []
    parent = target.parent
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    for d in reversed(missing):
        d.mkdir(mode=0o755)
        os.chown(d, *owner)
    if os.path.lexists(target):
        return
    if directory:
        target.mkdir(mode=0o755)
    else:
        target.touch(mode=0o644)
    os.chown(target, *owner)


def bind_volume(source: str, target: Path, *, read_only: bool) -> None:
    """Bind ``source`` (recursively) on ``target``; read-only by a remount (the same gotcha
    as ``bind_readonly``: MS_RDONLY needs the second call, with the mount's locked flags)."""
    sc.mount(source, target, None, sc.MS_BIND | sc.MS_REC)
    if read_only:
        sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _mount_flags(str(target)))


def mount_volumes(root: Path, spec: RootfsSpec) -> None:
    """Bind every volume of the container at its mount path inside ``root``."""
    for m in spec.mounts:
        try:
            target = resolve_in_root(root, m.destination)
            make_mount_point(target, directory=os.path.isdir(m.source), owner=spec.owner)
            bind_volume(m.source, target, read_only=m.read_only)
        except OSError as e:
            raise OSError(e.errno, f"mount {m.source} at {m.destination}: {e.strerror or e}") from None


#: hostPath type -> (test on an existing path, what it must be)
_HOST_PATH_KINDS = {
    "Directory": (stat.S_ISDIR, "a directory"),
    "DirectoryOrCreate": (stat.S_ISDIR, "a directory"),
    "File": (stat.S_ISREG, "a file"),
    "FileOrCreate": (stat.S_ISREG, "a file"),
    "Socket": (stat.S_ISSOCK, "a socket"),
    "CharDevice": (stat.S_ISCHR, "a character device"),
    "BlockDevice": (stat.S_ISBLK, "a block device"),
}


def prepare_host_path(path: str, kind: str) -> None:
    """The kubelet's hostPath check, in the node's mount namespace: ``path`` must be what
    ``kind`` says, or is made when it says ...OrCreate (a directory 0755, an empty file
    0644, with missing parents). ``""`` checks nothing, but a missing path is made a
    directory, as containerd (and Docker's ``-v``) do. OSError naming the path otherwise."""
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is None:
        if kind in ("", "DirectoryOrCreate"):
            os.makedirs(path, mode=0o755, exist_ok=True)
            return
        if kind == "FileOrCreate":
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            return
        raise OSError(errno.ENOENT, f"hostPath type check failed: {path} does not exist")
    test = _HOST_PATH_KINDS.get(kind)
    if test is not None and not test[0](st.st_mode):
        raise OSError(errno.EINVAL, f"hostPath type check failed: {path} is not {test[1]}")


def pivot_into(root: Path) -> None:
    """Make ``root`` the process's / and drop every trace of the old root."""
    old = root / OLD_ROOT
    old.mkdir(mode=0o700, exist_ok=True)
    sc.pivot_root(root, old)
    os.chdir("/")
    # MNT_DETACH: the old root holds busy mounts (our own /proc, the host's
    # /dev ...) that a plain umount would refuse with EBUSY.
    sc.umount2(f"/{OLD_ROOT}", sc.MNT_DETACH)
    os.rmdir(f"/{OLD_ROOT}")


def remount_root_readonly() -> None:
    """Make ``/`` (the container's tmpfs root) read-only; the mounts on it keep their own flags."""
    sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | _mount_flags("/"))


def enter_working_dir(working_dir: str, owner: tuple[int, int] = (0, 0)) -> None:
    """chdir into the working directory, creating it if missing (as runc does), owned by the container's root."""
    wd = working_dir or "/"
    if not wd.startswith("/"):
        raise OSError(errno.EINVAL, f"workingDir must be absolute: {wd!r}")
    try:
        os.chdir(wd)
    except FileNotFoundError:
        missing = []
        parent = os.path.normpath(wd)
        while not os.path.lexists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        os.makedirs(wd, mode=0o755, exist_ok=True)
        for path in missing:
            os.chown(path, *owner)
        os.chdir(wd)


def enter_host_rootfs(spec: RootfsSpec) -> None:
    """Build the ``image: host`` root in the current mount namespace and pivot into it.

    The caller must already be in its own mount namespace; called in the
    host's, step 1 would make the host's mounts private.
    """
    root = spec.rootfs
    make_mounts_private()
    mount_tmpfs(root, mode="755", size=spec.tmpfs_size, extra=spec.owner_options())
    populate_host_dirs(root, spec.owner)
    write_etc(root, spec)
    for name in ("root", "run", "var", "var/tmp"):
        (root / name).mkdir(mode=0o1777 if name == "var/tmp" else 0o755)
        os.chown(root / name, *spec.owner)
    os.chmod(root / "var/tmp", 0o1777)  # mkdir applies the umask
    mount_tmp(root, spec)  # an image brings its own /tmp; the host image has none
    finish_and_enter(root, spec)


def finish_and_enter(root: Path, spec: RootfsSpec) -> None:
    """What every container's root gets last, whatever its image: a fresh /proc, /sys in a
    pod network namespace, a minimal /dev, its volumes, masked and read-only kernel paths; then
    pivot_root into it, the working directory, and the read-only remount if asked."""
    mount_proc(root)
    if spec.mount_sysfs:
        mount_sys(root, spec)
    mount_dev(root, spec)
    mount_volumes(root, spec)
    restrict_kernel_paths(root, spec)
    pivot_into(root)
    # The working directory is made (if missing) before / turns read-only, as runc does.
    enter_working_dir(spec.working_dir, spec.owner)
    if spec.read_only:
        remount_root_readonly()


def enter_rootfs(spec: RootfsSpec) -> None:
    """Build the container's root (an image's layers, or the host image) and pivot into it."""
    if spec.layers:
        enter_image_rootfs(spec)
    else:
        enter_host_rootfs(spec)


#: The /etc files the node writes for every container, bound over the image's own (as kubelet does).
MANAGED_ETC = ("hosts", "hostname", "resolv.conf")


def enter_image_rootfs(spec: RootfsSpec) -> None:
    """Mount the image's layers as an overlay with a writable layer of the container's own,
    bind the node-managed /etc files over the image's, and pivot into it.

    The upper and work dirs live in the container's state dir, so its writes go away
    with it; the layers below are shared and never written. A read-only root is the
    same overlay remounted read-only at the end: mount points must be made first.
    """
    if spec.state_dir is None:
        raise OSError(errno.EINVAL, "an image root needs the container's state dir")
    root = spec.rootfs
    make_mounts_private()
    upper, work, etc = spec.state_dir / "upper", spec.state_dir / "work", spec.state_dir / "etc"
    for d in (upper, work, etc):
        d.mkdir(mode=0o755, exist_ok=True)
    layers = [Path(p) for p in spec.layers]
    if spec.owner != (0, 0):
        if spec.userns_fd is None:
            raise OSError(errno.EINVAL, "an image root for a user namespace needs the pod's user namespace")
        layers = idmapped_layers(layers, spec.userns_fd, spec.state_dir / "lower")
        # The merged / is the upper dir: the container's root owns it, as it would without a user namespace.
        os.chown(upper, *spec.owner)
    mount_overlay(root, layers, upper, work)
    try:
        host_resolv = Path(spec.host_resolv_conf).read_text()
    except OSError:
        host_resolv = ""
    generated = etc_files(spec.hostname, host_resolv)
    (root / "etc").mkdir(mode=0o755, exist_ok=True)
    for name in MANAGED_ETC:
        source = etc / name
        source.write_text(generated[name])
        target = root / "etc" / name
        if target.is_symlink() or target.is_dir():
            continue  # the image wants something else there; leave it alone rather than follow it
        if not target.exists():
            target.touch(mode=0o644)
        os.chown(source, *spec.owner)
        sc.mount(str(source), str(target), None, sc.MS_BIND, None)
    finish_and_enter(root, spec)


def idmapped_layers(layers: list[Path], userns_fd: int, under: Path) -> list[Path]:
    """Each layer as an idmapped mount through the pod's user namespace, on ``under/<i>``.

    The layers are unpacked once per node with the image's own owners (root is
    0); a pod with ``hostUsers: false`` must see them owned by its own root, which
    the host knows as another uid. An idmapped mount shows them so without
    copying or chowning the shared layers (as containerd does for user-namespaced
    pods); overlayfs takes idmapped lower layers since Linux 5.19. The mounts live
    in the container's mount namespace only and go with it.
    """
    out = []
    for i, layer in enumerate(layers):
        target = under / str(i)
        target.mkdir(parents=True, exist_ok=True)
        fd = sc.open_tree(layer)
        try:
            sc.mount_setattr_idmap(fd, userns_fd)
            sc.move_mount(fd, target)
        finally:
            os.close(fd)
        out.append(target)
    return out
