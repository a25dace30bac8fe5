"""Safe unpacking of one image layer (a tar stream) into a directory overlayfs can stack.

Never ``tarfile.extractall``: a layer is hostile input. Every entry is created
with ``*at``-style calls relative to a directory file descriptor that was
opened with ``O_NOFOLLOW``, one path component at a time, so:

* an absolute name or a ``..`` component is refused outright;
* a parent that is a symlink is refused (``O_NOFOLLOW`` on every component):
  ``a -> /`` followed by ``a/etc/x`` can never write to the host. Stricter than
  "a symlink that points outside": a tar written from a real file tree never
  stores an entry below a symlink, so only a crafted layer does that;
* an existing file is unlinked and re-created with ``O_CREAT|O_EXCL|O_NOFOLLOW``,
  never opened for writing: a later entry cannot write through a symlink or a
  hard link planted by an earlier one;
* hard links must name a regular file or symlink already unpacked in this
  layer (``linkat`` without ``AT_SYMLINK_FOLLOW``);
* device nodes are refused (DESIGN); FIFOs are harmless and kept;
* the uncompressed stream and the file contents are each capped
  (``Limits.max_bytes``, default 10 GiB), the entry count too, and names are
  checked against PATH_MAX and NAME_MAX.

Whiteouts become overlayfs's own format (which *we* create, never one taken
from the image — image device nodes are refused above):

* ``dir/.wh.name``   -> a character device 0:0 ``dir/name``;
* ``dir/.wh..wh..opq`` -> ``trusted.overlay.opaque=y`` on ``dir``;
* a directory in this layer that replaces something a whiteout of this layer
  deleted is made opaque, so the lower directory's contents stay hidden;
* other ``.wh..wh.*`` names are AUFS bookkeeping (``.wh..wh.plnk``) and are skipped.

Preserved: modes (setuid/setgid too: the container's no_new_privs and
capability bounding set decide what they are worth), uid/gid, mtimes,
symlink targets (verbatim: they are resolved inside the container's root at
run time, never here), hard links, and ``SCHILY.xattr.*`` PAX xattrs, except
overlayfs's own (``trusted.overlay.*``), which would let a layer forge
opaque directories or redirects, and ``security.selinux`` (the runtime's to assign).

The uncompressed stream is hashed while it is read; ``unpack_layer`` checks
that hash against the image config's ``rootfs.diff_ids`` entry. On any
refusal or error the destination directory is removed: nothing of a refused
layer remains. Needs root (chown, trusted xattrs).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import importlib
import os
import shutil
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.images.errors import ImageError

__all__ = ["Limits", "detect_compression", "open_decompressed", "unpack_layer"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
AUFS_META_PREFIX = ".wh..wh."
OPAQUE_XATTR = "trusted.overlay.opaque"
PATH_MAX = 4096
NAME_MAX = 255
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 10 << 30  # uncompressed tar stream, and file contents written
    max_entries: int = 1_000_000


class _Refused(Exception):
    """An entry the layer may not contain; becomes an ImageError naming the layer and the entry."""


# ---------------------------------------------------------------- streams


class _HashingReader:
    """Wraps the uncompressed stream: sha256 of every byte read (the diffID) and a size cap."""

    def __init__(self, raw: IO[bytes], limit: int, what: str) -> None:
        self.raw, self.limit, self.what = raw, limit, what
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n is not None and n >= 0 else _CHUNK)
        self.count += len(data)
        if self.count > self.limit:
            raise ImageError(f"layer {self.what}: uncompressed size exceeds the limit of {self.limit} bytes")
        self.hash.update(data)
        return data

    def drain(self) -> None:
        """Read to the end: the diffID covers the tar's trailing zero blocks and padding too."""
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def detect_compression(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none`` from a blob's first bytes (media types are only a hint)."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


@contextmanager
def open_decompressed(path: Path, what: str) -> Iterator[IO[bytes]]:
    """The uncompressed bytes of a layer blob (gzip, zstd or plain tar)."""
    with open(path, "rb") as raw:
        kind = detect_compression(raw.read(4))
        raw.seek(0)
        if kind == "none":
            yield raw
        elif kind == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield gz  # type: ignore[misc]
        else:
            with _zstd_reader(raw, what) as zr:
                yield zr


@contextmanager
def _zstd_reader(raw: IO[bytes], what: str) -> Iterator[IO[bytes]]:
    """zstd through the ``zstandard`` module if installed, else the ``zstd`` binary (Debian: zstd)."""
    try:
        zstandard: Any = importlib.import_module("zstandard")
    except ImportError:
        zstandard = None
    if zstandard is not None:
        with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as reader:
            yield reader
        return
    binary = shutil.which("zstd")
    if binary is None:
        raise ImageError(f"layer {what} is zstd-compressed; install the zstd package or the zstandard module")
    # The child reads the fd itself: rewind the fd, not just Python's buffer
    # (a buffered seek within the buffer makes no lseek).
    os.lseek(raw.fileno(), 0, os.SEEK_SET)
    proc = subprocess.Popen([binary, "-dcq"], stdin=raw.fileno(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        yield proc.stdout
        proc.stdout.read()  # the rest, so zstd ends and its exit status means something
        rc = proc.wait()
        if rc != 0:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise ImageError(f"layer {what}: zstd failed (exit {rc}): {err}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


# ---------------------------------------------------------------- paths


def split_name(name: str) -> list[str]:
    """A tar member name -> its path components, refusing anything that could leave the layer."""
    if name.startswith("/"):
        raise _Refused("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused("path has a '..' component")
    if len(os.fsencode(name)) >= PATH_MAX:
        raise _Refused(f"path longer than {PATH_MAX - 1} bytes")
    for part in parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise _Refused(f"path component longer than {NAME_MAX} bytes")
    return parts


def _is_whiteout_node(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- the unpacker


class _Unpacker:
    def __init__(self, root_fd: int, limits: Limits) -> None:
        self.root_fd = root_fd
        self.limits = limits
        self.entries = 0
        self.written = 0
        self.dir_times: dict[tuple[str, ...], int] = {}

    # --- walking

    def open_dir(self, parts: list[str], *, create: bool) -> int:
        """An fd of the directory ``parts`` below the root, never following a symlink.

        Missing directories are created (tar's implicit parents) when ``create``;
        a whiteout device this layer made in the way is replaced by an opaque
        directory (the lower one was deleted, this layer makes a new one).
        """
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = _lstat_at(fd, part)
                    where = "/".join(parts[: i + 1])
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        raise _Refused(f"parent {where!r} is a symlink; nothing is unpacked through one") from None
                    if not create:
                        raise _Refused(f"{where!r} does not exist in this layer") from None
                    opaque = False
                    if st is not None:
                        if not _is_whiteout_node(st):
                            raise _Refused(f"parent {where!r} is not a directory") from None
                        os.unlink(part, dir_fd=fd)
                        opaque = True
                    os.mkdir(part, 0o755, dir_fd=fd)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(nfd, 0o755)  # mkdir applied the umask
                    if opaque:
                        os.setxattr(nfd, OPAQUE_XATTR, b"y")
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def clear(self, dir_fd: int, name: str, *, keep_dir: bool) -> tuple[bool, bool]:
        """Make room for a new entry ``name``: (a directory is kept, a whiteout of ours was replaced)."""
        st = _lstat_at(dir_fd, name)
        if st is None:
            return False, False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True, False
            shutil.rmtree(name, dir_fd=dir_fd)  # rmtree with dir_fd never follows symlinks (3.11+)
            return False, False
        os.unlink(name, dir_fd=dir_fd)
        return False, _is_whiteout_node(st)

    # --- entries

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise _Refused(f"layer has more than {self.limits.max_entries} entries")
        parts = split_name(member.name)
        if any(p.startswith(AUFS_META_PREFIX) and p != OPAQUE_MARKER for p in parts):
            return  # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): meaningless to overlayfs
        if any(p.startswith(WHITEOUT_PREFIX) for p in parts[:-1]):
            raise _Refused("a whiteout name used as a directory")
        if not parts:
            if not member.isdir():
                raise _Refused("the layer root must be a directory")
            self.apply_metadata(self.root_fd, member)
            self.dir_times[()] = self.mtime_ns(member)
            return
        *parent, name = parts
        if name == OPAQUE_MARKER:
            self.opaque(parent)
            return
        if name.startswith(WHITEOUT_PREFIX):
            self.whiteout(parent, name[len(WHITEOUT_PREFIX):])
            return
        if member.ischr() or member.isblk():
            raise _Refused("device nodes are not allowed in images")
        pfd = self.open_dir(parent, create=True)
        try:
            if member.isdir():
                self.directory(pfd, name, member, tuple(parts))
            elif member.isreg():
                self.regular(tar, pfd, name, member)
            elif member.issym():
                self.symlink(pfd, name, member)
            elif member.islnk():
                self.hardlink(pfd, name, parts, member)
            elif member.isfifo():
                self.clear(pfd, name, keep_dir=False)
                os.mkfifo(name, 0o600, dir_fd=pfd)
                self.metadata_at(pfd, name, member)
            else:
                raise _Refused(f"unsupported tar entry type {member.type!r}")
        finally:
            os.close(pfd)

    def opaque(self, parent: list[str]) -> None:
        fd = self.open_dir(parent, create=True)
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)

    def whiteout(self, parent: list[str], target: str) -> None:
        if target in ("", ".", ".."):
            raise _Refused("whiteout of an invalid name")
        pfd = self.open_dir(parent, create=True)
        try:
            st = _lstat_at(pfd, target)
            if st is None:
                # Overlayfs's whiteout: a char device 0:0 (mode 0, as the kernel's own).
                os.mknod(target, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
            elif stat.S_ISDIR(st.st_mode):
                # The same layer has the directory too: it stays, but what was
                # below it is deleted, i.e. it is opaque (OCI: a whiteout applies
                # to lower layers only).
                fd = os.open(target, _DIR_FLAGS, dir_fd=pfd)
                try:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
                finally:
                    os.close(fd)
            # else: a file of this same layer wins over the whiteout (OCI image spec).
        finally:
            os.close(pfd)

    def directory(self, pfd: int, name: str, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        kept, was_whiteout = self.clear(pfd, name, keep_dir=True)
        if not kept:
            os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        try:
            if was_whiteout:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            self.apply_metadata(fd, member)
        finally:
            os.close(fd)
        # Set last: every entry unpacked into the directory changes its mtime.
        self.dir_times[parts] = self.mtime_ns(member)

    def regular(self, tar: tarfile.TarFile, pfd: int, name: str, member: tarfile.TarInfo) -> None:
        self.clear(pfd, name, keep_dir=False)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            src = tar.extractfile(member)
            if src is not None:
                while chunk := src.read(_CHUNK):
                    self.written += len(chunk)
                    if self.written > self.limits.max_bytes:
                        raise _Refused(f"file contents exceed the limit of {self.limits.max_bytes} bytes")
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            self.apply_metadata(fd, member)
            os.utime(fd, ns=(self.mtime_ns(member),) * 2)
        finally:
            os.close(fd)

    def symlink(self, pfd: int, name: str, member: tarfile.TarInfo) -> None:
        if not member.linkname or len(os.fsencode(member.linkname)) >= PATH_MAX:
            raise _Refused("symlink target empty or longer than PATH_MAX")
        self.clear(pfd, name, keep_dir=False)
        os.symlink(member.linkname, name, dir_fd=pfd)
        self.metadata_at(pfd, name, member)

    def hardlink(self, pfd: int, name: str, parts: list[str], member: tarfile.TarInfo) -> None:
        try:
            target = split_name(member.linkname)
        except _Refused as e:
            raise _Refused(f"hard link target {member.linkname!r}: {e}") from None
        if not target:
            raise _Refused("hard link to the layer root")
        if target == parts:
            return  # a link to itself: already there
        *tparent, tname = target
        try:
            tfd = self.open_dir(tparent, create=False)
        except _Refused as e:
            raise _Refused(f"hard link target {member.linkname!r}: {e}") from None
        try:
            st = _lstat_at(tfd, tname)
            if st is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise _Refused(f"hard link target {member.linkname!r} is not a file unpacked earlier in this layer")
            self.clear(pfd, name, keep_dir=False)
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    # --- metadata

    @staticmethod
    def mtime_ns(member: tarfile.TarInfo) -> int:
        return round(float(member.mtime) * 1e9)

    @staticmethod
    def xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        out = []
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            attr = key[len("SCHILY.xattr."):]
            if attr.startswith(("trusted.overlay.", "user.overlay.")):
                raise _Refused(f"xattr {attr!r} is overlayfs's own; an image may not set it")
            if attr == "security.selinux":
                continue
            out.append((attr, value.encode("utf-8", "surrogateescape")))
        return out

    def apply_metadata(self, fd: int, member: tarfile.TarInfo) -> None:
        """Owner, mode, xattrs on an open file or directory.

        Order matters: chown clears the setuid/setgid bits and
        ``security.capability``, so the mode and the xattrs come after it.
        """
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        for attr, value in self.xattrs(member):
            os.setxattr(fd, attr, value)

    def metadata_at(self, pfd: int, name: str, member: tarfile.TarInfo) -> None:
        """Owner, mode, xattrs and mtime of a symlink or FIFO, by name relative to its directory."""
        os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        if not member.issym():  # symlinks have no mode of their own on Linux
            os.chmod(name, member.mode & 0o7777, dir_fd=pfd, follow_symlinks=False)
        # No *xattrat in Python: the fd's /proc path pins the directory, and the
        # last component is not followed.
        for attr, value in self.xattrs(member):
            os.setxattr(f"/proc/self/fd/{pfd}/{name}", attr, value, follow_symlinks=False)
        os.utime(name, ns=(self.mtime_ns(member),) * 2, dir_fd=pfd, follow_symlinks=False)

    def finish(self) -> None:
        for parts, mtime in self.dir_times.items():
            try:
                fd = self.open_dir(list(parts), create=False)
            except _Refused:
                continue  # replaced by a non-directory later in the layer
            try:
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)


def unpack_layer(blob: Path, dest: Path, *, diff_id: str, what: str, limits: Limits = Limits()) -> int:
    """Unpack the layer blob ``blob`` into the new directory ``dest``; return its uncompressed size.

    ``dest`` must not exist; it is created, and removed again if anything is
    refused or fails (ImageError naming the layer ``what`` and the entry).
    ``diff_id`` is the image config's ``rootfs.diff_ids`` entry for this layer.
    """
    os.mkdir(dest, 0o755)
    try:
        root_fd = os.open(dest, _DIR_FLAGS)
        try:
            os.fchmod(root_fd, 0o755)
            size = _unpack_into(blob, root_fd, diff_id=diff_id, what=what, limits=limits)
        finally:
            os.close(root_fd)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return size


def _unpack_into(blob: Path, root_fd: int, *, diff_id: str, what: str, limits: Limits) -> int:
    unpacker = _Unpacker(root_fd, limits)
    name = ""
    try:
        with open_decompressed(blob, what) as stream:
            reader = _HashingReader(stream, limits.max_bytes, what)
            with tarfile.open(fileobj=reader, mode="r|", encoding="utf-8",  # type: ignore[call-overload]
                              errors="surrogateescape") as tar:
                for member in tar:
                    name = member.name
                    unpacker.entry(tar, member)
            name = ""
            reader.drain()
        unpacker.finish()
    except _Refused as e:
        raise ImageError(f"layer {what}: refused entry {name!r}: {e}") from None
    except ImageError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ImageError(f"layer {what} is not a valid (compressed) tar: {e}") from e
    except OSError as e:
        at = f" at entry {name!r}" if name else ""
        raise ImageError(f"layer {what}: unpacking failed{at}: {e}") from e
    actual = reader.digest()
    if actual != diff_id:
        raise ImageError(f"layer {what}: uncompressed content has digest {actual}, "
                         f"but the image config's rootfs.diff_ids says {diff_id}")
    return reader.count
