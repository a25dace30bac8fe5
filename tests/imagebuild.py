"""Build test images from nothing but Debian's static busybox: OCI layouts, docker save tarballs, hostile archives.

No network, no docker: each image is made here, byte by byte, with tarfile,
gzip and json, so the tests know every digest in it. ``/bin/busybox`` comes
from the ``busybox-static`` package (statically linked, so it runs in an
image with no libc).

* ``busybox_image()``   one gzip layer: bin/busybox, applet symlinks, /etc/passwd, /etc/group
* ``whiteout_image()``  busybox + a data layer + an upper layer that whites out
  ``data/gone`` and makes ``opaque/`` opaque
* ``write_oci_layout`` / ``write_oci_archive`` / ``write_docker_save``
  the three archive formats the store imports
* ``HOSTILE_LAYERS``    layers the unpacker must refuse, each with the words
  its error must contain
* ``tampered_image``    well-formed images whose digests lie (layer, config,
  manifest, diffID)
* ``tree``, ``requires_root``, ``requires_busybox``: shared by the image and
  registry tests
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "true", "false", "echo", "sleep", "cat", "ls", "id", "env", "pwd", "test", "mkdir", "rm",
           "touch", "stat", "readlink", "wc", "head", "whoami")
MTIME = 1_600_000_000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1001:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1001:\nstaff:x:50:app\nnogroup:x:65534:\n"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


# ---------------------------------------------------------------- tar entries


@dataclass
class Entry:
    info: tarfile.TarInfo
    data: bytes = b""


def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0, mtime: int = MTIME) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, gid, mtime
    ti.uname = ti.gname = ""
    return ti


def file(name: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0,
         xattrs: dict[str, str] | None = None, mtime: int = MTIME) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    ti = _info(name, tarfile.REGTYPE, mode, uid, gid, mtime)
    ti.size = len(raw)
    if xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return Entry(ti, raw)


def directory(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = MTIME) -> Entry:
    return Entry(_info(name, tarfile.DIRTYPE, mode, uid, gid, mtime))


def symlink(name: str, target: str) -> Entry:
    ti = _info(name, tarfile.SYMTYPE, 0o777)
    ti.linkname = target
    return Entry(ti)


def hardlink(name: str, target: str) -> Entry:
    ti = _info(name, tarfile.LNKTYPE, 0o644)
    ti.linkname = target
    return Entry(ti)


def device(name: str, major: int, minor: int, *, block: bool = False) -> Entry:
    ti = _info(name, tarfile.BLKTYPE if block else tarfile.CHRTYPE, 0o600)
    ti.devmajor, ti.devminor = major, minor
    return Entry(ti)


def fifo(name: str) -> Entry:
    return Entry(_info(name, tarfile.FIFOTYPE, 0o644))


def tar_bytes(entries: list[Entry]) -> bytes:
    """An uncompressed PAX tar of ``entries``, names exactly as given (no sanitising: hostile ones too)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            tar.addfile(e.info, io.BytesIO(e.data) if e.info.isreg() else None)
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# ---------------------------------------------------------------- images


@dataclass
class Layer:
    tar: bytes  # uncompressed: its sha256 is the diffID
    blob: bytes  # as stored in the image (compressed or not)
    media_type: str

    @property
    def diff_id(self) -> str:
        return sha256(self.tar)

    @property
    def digest(self) -> str:
        return sha256(self.blob)


@dataclass
class BuiltImage:
    layers: list[Layer]
    config: bytes
    manifest: bytes
    extra_blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes (tampered tests)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    def blobs(self) -> dict[str, bytes]:
        out = {sha256(self.manifest): self.manifest, sha256(self.config): self.config}
        out.update({layer.digest: layer.blob for layer in self.layers})
        out.update(self.extra_blobs)
        return out


def make_layer(entries: list[Entry], compression: str = "gzip") -> Layer:
    raw = tar_bytes(entries)
    if compression == "gzip":
        return Layer(raw, gzip_bytes(raw), OCI_LAYER_GZIP)
    if compression == "zstd":
        import subprocess

        blob = subprocess.run(["zstd", "-q", "-c"], input=raw, stdout=subprocess.PIPE, check=True).stdout
        return Layer(raw, blob, OCI_LAYER_ZSTD)
    return Layer(raw, raw, OCI_LAYER)


def build_image(layers: list[Layer], *, config: dict | None = None, architecture: str | None = None,
                diff_ids: list[str] | None = None) -> BuiltImage:
    """An OCI manifest + config over ``layers`` (lowest first). ``diff_ids`` overrides the true ones (to lie)."""
    runtime = {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"], "WorkingDir": "/"}
    runtime.update(config or {})
    config_doc = {
        "created": "2020-09-13T12:26:40Z",
        "architecture": architecture or host_arch(),
        "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids or [layer.diff_id for layer in layers]},
        "history": [{"created_by": "tests/imagebuild.py"} for _ in layers],
    }
    config_bytes = json.dumps(config_doc, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": len(layer.blob)}
                   for layer in layers],
    }
    return BuiltImage(layers, config_bytes, json.dumps(manifest, sort_keys=True).encode())


def busybox_entries() -> list[Entry]:
    entries = [directory("bin"), directory("etc"), directory("tmp", 0o1777), directory("root", 0o700),
               file("bin/busybox", BUSYBOX.read_bytes(), 0o755)]
    entries += [symlink(f"bin/{applet}", "busybox") for applet in APPLETS]
    entries += [file("etc/passwd", PASSWD), file("etc/group", GROUP)]
    return entries


def busybox_layer(compression: str = "gzip") -> Layer:
    return make_layer(busybox_entries(), compression)


def busybox_image(compression: str = "gzip", **config: object) -> BuiltImage:
    return build_image([busybox_layer(compression)], config={"ExposedPorts": {"8080/tcp": {}}, **config})


def data_layer() -> Layer:
    """The middle layer of ``whiteout_image``: files to delete and hide, and metadata to preserve."""
    return make_layer([
        directory("data", 0o755),
        file("data/keep", "kept\n"),
        file("data/gone", "deleted by the upper layer\n"),
        directory("data/gonedir"),
        file("data/gonedir/inner", "deleted with its directory\n"),
        directory("opaque"),
        file("opaque/lowerfile", "hidden by the opaque upper dir\n"),
        directory("opaque/sub"),
        file("opaque/sub/deep", "hidden too\n"),
        file("data/suid", "#!/bin/sh\n", 0o4755, uid=1000, gid=1001),
        file("data/xattr", "x", xattrs={"user.orch.test": "hello"}),
        hardlink("data/hard", "data/keep"),
        fifo("data/fifo"),
        symlink("data/abs-link", "/etc/passwd"),
        file("data/old", "mtime kept\n", mtime=1_000_000_000),
    ])


def upper_layer() -> Layer:
    return make_layer([
        directory("data", 0o755),
        file("data/.wh.gone", ""),
        file("data/.wh.gonedir", ""),
        file("data/new", "added by the upper layer\n"),
        directory("opaque"),
        file("opaque/.wh..wh..opq", ""),
        file("opaque/upperfile", "the only file in opaque/\n"),
    ])


def whiteout_image() -> BuiltImage:
    return build_image([busybox_layer(), data_layer(), upper_layer()])


# ---------------------------------------------------------------- archive formats


def _index(images: list[tuple[BuiltImage, str | None]]) -> bytes:
    manifests = []
    for image, name in images:
        desc: dict = {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest),
                      "platform": {"os": "linux", "architecture": host_arch()}}
        if name:
            tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
            desc["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}
        manifests.append(desc)
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()


def oci_layout_files(images: list[tuple[BuiltImage, str | None]]) -> dict[str, bytes]:
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": _index(images)}
    for image, _ in images:
        for digest, data in image.blobs().items():
            files[f"blobs/sha256/{digest.split(':')[1]}"] = data
    return files


def write_oci_layout(dest: Path, images: list[tuple[BuiltImage, str | None]]) -> Path:
    """An OCI image layout directory; names go in ``io.containerd.image.name`` (tag in ref.name)."""
    for name, data in oci_layout_files(images).items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
    return dest


def _write_tar(dest: Path, files: dict[str, bytes], *, gz: bool = False) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)})
        for d in dirs:
            tar.addfile(_info(d, tarfile.DIRTYPE, 0o755))
        for name, data in files.items():
            ti = _info(name, tarfile.REGTYPE, 0o644)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    dest.write_bytes(gzip_bytes(buf.getvalue()) if gz else buf.getvalue())
    return dest


def write_oci_archive(dest: Path, images: list[tuple[BuiltImage, str | None]], *, gz: bool = False) -> Path:
    """An OCI layout as a tar (what ``docker save`` writes since Docker 25, minus its manifest.json)."""
    return _write_tar(dest, oci_layout_files(images), gz=gz)


def write_docker_save(dest: Path, images: list[tuple[BuiltImage, list[str]]]) -> Path:
    """The classic ``docker save`` format: manifest.json, <config hex>.json, <layer id>/layer.tar (uncompressed)."""
    files: dict[str, bytes] = {}
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    for image, tags in images:
        layer_paths = []
        for layer in image.layers:
            layer_id = hashlib.sha256(layer.diff_id.encode()).hexdigest()
            files[f"{layer_id}/layer.tar"] = layer.tar
            files[f"{layer_id}/VERSION"] = b"1.0"
            files[f"{layer_id}/json"] = json.dumps({"id": layer_id}).encode()
            layer_paths.append(f"{layer_id}/layer.tar")
        config_name = f"{image.config_digest.split(':')[1]}.json"
        files[config_name] = image.config
        manifest.append({"Config": config_name, "RepoTags": tags or None, "Layers": layer_paths})
        for tag in tags:
            repo, _, t = tag.rpartition(":")
            repositories.setdefault(repo, {})[t] = layer_paths[-1].split("/")[0]
    files["manifest.json"] = json.dumps(manifest).encode()
    files["repositories"] = json.dumps(repositories).encode()
    return _write_tar(dest, files)


# ---------------------------------------------------------------- hostile and lying archives


def _prefix() -> list[Entry]:
    """Harmless entries first, so a refusal comes after something was already unpacked."""
    return [directory("ok"), file("ok/file", "fine\n"), directory("ok/dir")]


#: name -> (layer entries, builder taking the test's "outside" dir, words the error must contain)
HOSTILE_LAYERS: dict[str, tuple[Callable[[Path], list[Entry]], str]] = {
    "dotdot": (lambda out: [*_prefix(), file("../orch-escape", "x")], "'..' component"),
    "dotdot-nested": (lambda out: [*_prefix(), file("ok/../../orch-escape", "x")], "'..' component"),
    "absolute": (lambda out: [*_prefix(), file(str(out / "abs-escape"), "x")], "absolute path"),
    "symlinked-parent-root": (lambda out: [*_prefix(), symlink("a", "/"), file("a/etc/orch-escape-test", "x")],
                              "parent 'a' is a symlink"),
    "symlinked-parent-outside": (lambda out: [*_prefix(), symlink("a", str(out)), file("a/x", "x")],
                                 "parent 'a' is a symlink"),
    "symlinked-parent-relative": (lambda out: [*_prefix(), symlink("ok/up", "../../../../../../.."),
                                               directory("ok/up/tmp")], "parent 'ok/up' is a symlink"),
    "char-device": (lambda out: [*_prefix(), directory("dev"), device("dev/sda", 8, 0)], "device nodes"),
    "block-device": (lambda out: [*_prefix(), device("disk", 8, 0, block=True)], "device nodes"),
    "whiteout-device-from-image": (lambda out: [*_prefix(), device("ok/wh", 0, 0)], "device nodes"),
    "hardlink-outside": (lambda out: [*_prefix(), hardlink("h", "../../../../etc/passwd")], "hard link target"),
    "hardlink-absolute": (lambda out: [*_prefix(), hardlink("h", "/etc/passwd")], "hard link target"),
    "hardlink-through-symlink": (lambda out: [*_prefix(), symlink("s", "/etc"), hardlink("h", "s/passwd")],
                                 "hard link target"),
    "overlay-xattr": (lambda out: [*_prefix(), file("ok/x", "x", xattrs={"trusted.overlay.redirect": "/etc"})],
                      "overlayfs's own"),
    "long-component": (lambda out: [*_prefix(), file("ok/" + "n" * 300, "x")], "longer than 255"),
}


def hostile_image(name: str, outside: Path) -> BuiltImage:
    build, _ = HOSTILE_LAYERS[name]
    return build_image([make_layer(build(outside))])


def tampered_image(kind: str) -> BuiltImage:
    """A busybox-like image whose ``kind`` of digest lies: layer, config, manifest or diffid.

    Its layer carries a unique file so that its blobs are not shared with
    any other test image.
    """
    layer = make_layer([*busybox_entries(), file("etc/tampered", kind)])
    if kind == "diffid":
        return build_image([layer], diff_ids=[sha256(b"not the layer")])
    image = build_image([layer])
    if kind == "layer":
        bad = bytearray(layer.blob)
        bad[len(bad) // 2] ^= 0xFF
        # The manifest still names the true digest; the bytes under that name differ.
        image.extra_blobs = {layer.digest: bytes(bad)}
    elif kind == "config":
        image.extra_blobs = {image.config_digest: image.config.replace(b'"sh"', b'"xx"')}
    elif kind == "manifest":
        image.extra_blobs = {image.digest: image.manifest.replace(b'"schemaVersion": 2', b'"schemaVersion": 3')}
    return image


# ---------------------------------------------------------------- shared test helpers


requires_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: unpacking sets owners and trusted.* xattrs, mounts need CAP_SYS_ADMIN "
           "(CI runs as root, so this never skips there)",
)
requires_busybox = pytest.mark.skipif(not BUSYBOX.is_file(),
                                      reason="needs /bin/busybox from Debian's busybox-static package")


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root``: (type, mode, size, sha256 of a file's content, symlink target)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            content = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                             st.st_size if content else 0, content, target)
    return out
