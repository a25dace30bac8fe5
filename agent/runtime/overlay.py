"""Overlay root filesystems: an image's unpacked layers stacked by overlayfs, with an optional writable upper dir.

``mount_overlay(target, lowerdirs, upperdir, workdir)`` mounts one overlay on
``target`` with the mount syscall (``syscalls.mount``). ``lowerdirs`` are
given lowest layer first, as ``ImageStore.layer_dirs`` returns them; overlayfs
wants the topmost first, so the order is reversed in the options. Without an
upper dir the mount is read-only.

The option string is the hard part. Gotchas:

* mount(2) copies at most one page of options (4096 bytes, NUL included):
  50 layers at absolute paths like ``/var/lib/orch/node-1/images/layers/<64 hex>``
  overflow it. The classic trick (containerd, Docker): ``chdir`` into the
  directory that holds the layers and name them relatively — overlayfs
  resolves the paths at mount time, against the caller's cwd — so each layer
  costs 65 bytes (about 60 layers with room for upper and work dirs). The
  cwd is restored afterwards; it is process-wide, so this runs in a
  single-threaded process (the shim's container child) or not concurrently
  with anything that depends on the cwd. ``lowerdir+`` (one option per layer
  through fsconfig, no page limit) would lift the limit but needs Linux 6.8.
* ``,`` separates options, ``:`` lower dirs, and ``\\`` escapes either: any of
  the three in a path is escaped.
* overlayfs wants at least two lower dirs when there is no upper dir ("at
  least 2 lowerdir are needed while upperdir nonexistent", still so in 6.x).
  For a one-layer image mounted read-only, the (empty) mount point itself is
  the second, bottom layer: it is resolved before the overlay covers it, and
  being empty it adds nothing.
* the same directory twice as a lower dir is refused (ELOOP, "overlapping");
  ``layer_dirs`` already drops repeats.
* the work dir must be an empty directory on the upper dir's filesystem.
* ``index=off`` with an upper dir: with the index feature on (a distro
  default some kernels are built with), a lower dir shared by two overlays
  is refused as "in use"; image layers are shared by design (Docker sets it too).

Run it in the container's own mount namespace, after making ``/`` private
(``rootfs.make_mounts_private``): the mount then never appears on the host.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from agent.runtime import syscalls as sc

__all__ = ["MOUNT_DATA_MAX", "mount_overlay", "overlay_options"]

#: Longest option string mount(2) takes: one page, less the terminating NUL.
MOUNT_DATA_MAX = 4095


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _shorter(path: str, base: str | None) -> str:
    if base is None:
        return path
    rel = os.path.relpath(path, base)
    return rel if len(rel) < len(path) else path


def overlay_options(lowerdirs: Sequence[str], upperdir: str | None, workdir: str | None,
                    *, base: str | None = None) -> str:
    """The overlayfs option string; ``lowerdirs`` lowest first, all absolute.

    With ``base`` (the directory the mount will be made from), each path is
    written relative to it where that is shorter. Pure: no I/O.
    """
    lowers = [_escape(_shorter(p, base)) for p in reversed(lowerdirs)]
    options = ["lowerdir=" + ":".join(lowers)]
    if upperdir is not None and workdir is not None:
        options += [f"upperdir={_escape(_shorter(upperdir, base))}", f"workdir={_escape(_shorter(workdir, base))}",
                    "index=off"]
    return ",".join(options)


def mount_overlay(target: Path, lowerdirs: Sequence[Path], upperdir: Path | None = None,
                  workdir: Path | None = None, *, flags: int = 0) -> None:
    """Mount the overlay of ``lowerdirs`` (lowest first) on ``target``; read-only without ``upperdir``.

    ``flags`` are extra MS_* flags (e.g. ``MS_NOSUID``). Raises OSError with
    the errno: EINVAL for bad arguments, E2BIG when the options cannot fit in
    a page even with relative paths, or whatever mount(2) says.
    """
    if not lowerdirs:
        raise OSError(errno.EINVAL, "mount_overlay: no lower directories")
    if (upperdir is None) != (workdir is None):
        raise OSError(errno.EINVAL, "mount_overlay: upperdir and workdir go together")
    target_abs = os.path.abspath(target)
    lowers = [os.path.abspath(p) for p in lowerdirs]
    for path in lowers:
        if not os.path.isdir(path):
            raise OSError(errno.ENOENT, f"mount_overlay: lower directory {path!r} does not exist")
    if upperdir is None and len(lowers) == 1:
        if os.listdir(target_abs):
            raise OSError(errno.ENOTEMPTY, f"mount_overlay: a one-layer read-only overlay needs an empty mount "
                                           f"point, and {target_abs!r} is not empty")
        lowers.insert(0, target_abs)  # the bottom layer: see the module docstring
    upper = None if upperdir is None else os.path.abspath(upperdir)
    work = None if workdir is None else os.path.abspath(workdir)
    base = os.path.commonpath([os.path.dirname(p) for p in lowers])
    options = overlay_options(lowers, upper, work, base=base)
    if len(options.encode()) > MOUNT_DATA_MAX:
        raise OSError(errno.E2BIG, f"mount_overlay: options for {len(lowers)} layers are {len(options.encode())} "
                                   f"bytes even with relative paths; mount(2) takes at most {MOUNT_DATA_MAX}")
    mount_flags = flags | (sc.MS_RDONLY if upper is None else 0)
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(base)
        sc.mount("overlay", target_abs, "overlay", mount_flags, options)
    finally:
        os.fchdir(cwd)
        os.close(cwd)
