"""How a container's spec and its image's config combine, with Kubernetes' semantics.

* ``resolve_argv``: ``command`` replaces the image's Entrypoint *and* drops
  its Cmd; ``args`` alone replaces Cmd and keeps Entrypoint (the table in
  "Define a Command and Arguments for a Container"). An empty list counts as
  unset, as in the kubelet (``len(container.Command) != 0``).
* ``merge_env``: the image's Env first, the container's on top.
* ``resolve_working_dir``: the container's workingDir, else the image's, else ``/``.
* ``resolve_user``: ``runAsUser``/``runAsGroup`` win; otherwise the image's
  ``User`` — ``uid``, ``uid:gid``, ``name``, ``name:group`` — with names (and
  a numeric uid's primary group) looked up in the image's own ``/etc/passwd``
  and ``/etc/group``, read from its unpacked layers (topmost first, honouring
  whiteouts and opaque directories) without ever following a symlink out of
  them, as runc does inside the container's root. A name that is not there
  is an error, like runc's "unable to find user".
* ``verify_run_as_non_root``: the kubelet's ``runAsNonRoot`` check against
  the image's user, with its messages.

The kubelet expands ``$(VAR)`` only in the pod spec's command and args, never
in the image's Entrypoint or Cmd: the caller expands before calling
``resolve_argv``. Pure functions, except the reads of passwd/group files.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.images.errors import ContainerConfigError, ImageError
from agent.images.oci import ImageConfig
from agent.images.unpack import OPAQUE_XATTR

__all__ = [
    "merge_env",
    "read_image_file",
    "resolve_argv",
    "resolve_user",
    "resolve_working_dir",
    "verify_run_as_non_root",
]

_MAX_ID_FILE = 4 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def resolve_argv(image_config: ImageConfig, command: Sequence[str] | None, args: Sequence[str] | None) -> list[str]:
    """The argv to exec: Kubernetes' four cases of command/args against Entrypoint/Cmd."""
    if command:
        return [*command, *(args or [])]
    if args:
        return [*image_config.entrypoint, *args]
    return [*image_config.entrypoint, *image_config.cmd]


def merge_env(image_env: Sequence[str], container_env: Mapping[str, str]) -> dict[str, str]:
    """The image's ``KEY=value`` list, then the container's variables over it (order kept)."""
    env: dict[str, str] = {}
    for item in image_env:
        key, sep, value = item.partition("=")
        if key and sep:
            env[key] = value
    env.update(container_env)
    return env


def resolve_working_dir(image_config: ImageConfig, working_dir: str | None) -> str:
    return working_dir or image_config.working_dir or "/"


# ---------------------------------------------------------------- files inside an image


def read_image_file(layer_dirs: Sequence[Path], path: str, *, limit: int = _MAX_ID_FILE) -> bytes | None:
    """The bytes of ``path`` (absolute, inside the image) in the merged view of ``layer_dirs`` (lowest first).

    None if no layer has it (or an upper layer whites it out). Refuses
    (ImageError) to follow a symlink at any component: resolving one would
    need the whole merged tree, and following it on the host could leave the
    image. Regular files only, at most ``limit`` bytes.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ImageError(f"image file {path!r}: not an absolute path inside the image")
    for layer in reversed(layer_dirs):
        found, stop = _read_in_layer(layer, parts, path, limit)
        if found is not None or stop:
            return found
    return None


def _read_in_layer(layer: Path, parts: list[str], path: str, limit: int) -> tuple[bytes | None, bool]:
    """(content, stop): stop means lower layers are hidden (a whiteout, a file or an opaque directory on the way)."""
    fd = os.open(layer, _DIR_FLAGS)
    hides_lower = False
    try:
        for i, name in enumerate(parts):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None, hides_lower
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None, True  # whited out here: absent in the merged view
            if stat.S_ISLNK(st.st_mode):
                raise ImageError(f"image file {path!r}: {'/'.join(parts[: i + 1])!r} is a symlink in layer "
                                 f"{layer.name}; not followed")
            if i == len(parts) - 1:
                if not stat.S_ISREG(st.st_mode):
                    return None, True
                ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                with os.fdopen(ffd, "rb") as f:
                    data = f.read(limit + 1)
                if len(data) > limit:
                    raise ImageError(f"image file {path!r} is larger than {limit} bytes")
                return data, True
            if not stat.S_ISDIR(st.st_mode):
                return None, True  # a file here hides the whole path below it
            nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
            try:
                hides_lower = hides_lower or os.getxattr(fd, OPAQUE_XATTR) == b"y"
            except OSError as e:
                if e.errno not in (errno.ENODATA, errno.ENOTSUP):
                    raise
        return None, hides_lower
    finally:
        os.close(fd)


def _parse_colon_file(data: bytes | None) -> list[list[str]]:
    if data is None:
        return []
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def resolve_user(image_config: ImageConfig, run_as_user: int | None, run_as_group: int | None,
                 layer_dirs: Sequence[Path] = ()) -> tuple[int, int]:
    """(uid, gid) the container runs as; see the module docstring for the rules."""
    spec = image_config.user.strip()
    passwd: list[list[str]] | None = None

    def users() -> list[list[str]]:
        nonlocal passwd
        if passwd is None:
            passwd = [r for r in _parse_colon_file(read_image_file(layer_dirs, "/etc/passwd")) if len(r) >= 4]
        return passwd

    def primary_gid(uid: int) -> int:
        for row in users():
            if row[2] == str(uid) and row[3].isdigit():
                return int(row[3])
        return 0

    if run_as_user is not None:
        uid = run_as_user
        gid = run_as_group if run_as_group is not None else primary_gid(uid) if layer_dirs else 0
        return uid, gid

    user, _, group = spec.partition(":")
    if not user:
        uid = 0
    elif user.isdigit():
        uid = int(user)
    else:
        row = next((r for r in users() if r[0] == user), None)
        if row is None or not row[2].isdigit():
            raise ImageError(f"image user {user!r}: unable to find user {user}: no matching entries in the "
                             "image's /etc/passwd")
        uid = int(row[2])
    if run_as_group is not None:
        return uid, run_as_group
    if not group:
        return uid, primary_gid(uid) if layer_dirs else 0
    if group.isdigit():
        return uid, int(group)
    groups = [r for r in _parse_colon_file(read_image_file(layer_dirs, "/etc/group")) if len(r) >= 3]
    grow = next((r for r in groups if r[0] == group), None)
    if grow is None or not grow[2].isdigit():
        raise ImageError(f"image user {spec!r}: unable to find group {group}: no matching entries in the "
                         "image's /etc/group")
    return uid, int(grow[2])


def verify_run_as_non_root(image_config: ImageConfig, run_as_user: int | None, run_as_non_root: bool | None) -> None:
    """The kubelet's ``verifyRunAsNonRoot``: ContainerConfigError if the container would or might run as root.

    An image ``User`` that is a name cannot be verified without trusting the
    image's /etc/passwd, so the kubelet refuses it, and so does this.
    """
    if not run_as_non_root:
        return
    if run_as_user is not None:
        if run_as_user == 0:
            raise ContainerConfigError("container's runAsUser breaks non-root policy")
        return
    user = image_config.user.strip().partition(":")[0]
    if not user or (user.isdigit() and int(user) == 0):
        raise ContainerConfigError("container has runAsNonRoot and image will run as root")
    if not user.isdigit():
        raise ContainerConfigError(f"container has runAsNonRoot and image has non-numeric user ({user}), "
                                   "cannot verify user is non-root")
