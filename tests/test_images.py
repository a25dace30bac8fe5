"""The node-local image store: imports, safe unpacking, verification, overlay mounts, pull policies.

Every image is built by ``tests/imagebuild.py`` from Debian's static busybox.
Tests that mount do it in a throwaway mount namespace of a child process
(``unshare(CLONE_NEWNS)`` and ``/`` made private first), so no mount reaches
the host; each checks afterwards that the host's mount table does not show it.
Refusals are checked the strict way: the store's whole tree (every path,
type, mode, size and content hash) is the same before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.images import (
    ContainerConfigError,
    ImageError,
    ImageNeverPullError,
    ImagePullError,
    ImageStore,
    InvalidImageNameError,
    Limits,
    default_pull_policy,
    oci,
    parse_reference,
)
from agent.images.config import (
    merge_env,
    read_image_file,
    resolve_argv,
    resolve_user,
    resolve_working_dir,
    verify_run_as_non_root,
)
from agent.images.oci import ImageConfig
from agent.images.unpack import unpack_layer
from agent.runtime.overlay import MOUNT_DATA_MAX, overlay_options
from apimachinery.errors import NotFoundError, RuntimeError_
from tests import imagebuild as ib

REPO = Path(__file__).resolve().parent.parent

requires_root = ib.requires_root
requires_busybox = ib.requires_busybox
tree = ib.tree

BUSYBOX_REF = "docker.io/library/busybox:1.35"
#: An address nothing listens on: a pull that reaches it fails at once.
DEAD_REGISTRY = "http://127.0.0.1:9"


# ---------------------------------------------------------------- helpers


def host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


NS_PRELUDE = '''
import json, os, sys
from pathlib import Path
from agent.runtime import syscalls as sc
from agent.runtime.overlay import mount_overlay
# A throwaway mount namespace: nothing mounted here outlives this process or reaches the host.
sc.unshare(sc.CLONE_NEWNS)
sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
args = json.loads(sys.argv[1])
result = {}

def listing(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = oct(os.lstat(p).st_mode)
    return out

def run_chrooted(root, script):
    """busybox sh -c script, chrooted into root; (exit code, output)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(w, 1); os.dup2(w, 2)
            os.chroot(root); os.chdir("/")
            os.execve("/bin/sh", ["sh", "-c", script], {"PATH": "/bin"})
        finally:
            os._exit(127)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()
'''


def in_mount_namespace(code: str, **args: Any) -> dict[str, Any]:
    """Run ``code`` (which fills ``result``) in a child process with a mount namespace of its own."""
    script = NS_PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(result))\n"
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                          timeout=60, cwd=REPO, check=False)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def busybox() -> ib.BuiltImage:
    return ib.busybox_image()


@pytest.fixture(scope="module")
def whiteout() -> ib.BuiltImage:
    return ib.whiteout_image()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def busybox_store(store: ImageStore, busybox: ib.BuiltImage, tmp_path: Path) -> ImageStore:
    store.import_archive(ib.write_oci_layout(tmp_path / "busybox-layout", [(busybox, BUSYBOX_REF)]))
    return store


# ---------------------------------------------------------------- references (pure)


@pytest.mark.parametrize(("text", "key"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.35", "docker.io/library/busybox:1.35"),
    ("library/busybox:1.35", "docker.io/library/busybox:1.35"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("user/app", "docker.io/user/app:latest"),
    ("localhost:5000/busybox:1.35", "localhost:5000/busybox:1.35"),
    ("localhost/busybox", "localhost/busybox:latest"),
    ("quay.io/org/sub/app:v1.2-rc_3", "quay.io/org/sub/app:v1.2-rc_3"),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
    ("busybox@sha256:" + "a" * 64, "docker.io/library/busybox@sha256:" + "a" * 64),
    ("busybox:1.35@sha256:" + "b" * 64, "docker.io/library/busybox@sha256:" + "b" * 64),
    ("sha256:" + "c" * 64, "sha256:" + "c" * 64),
    ("@sha256:" + "d" * 64, "sha256:" + "d" * 64),
])
def test_reference_normalisation(text: str, key: str) -> None:
    assert parse_reference(text).key == key


@pytest.mark.parametrize(("text", "words"), [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("busybox:", "bad tag"),
    ("busybox:-x", "bad tag"),
    ("busybox@sha256:abc", "sha256 digest"),
    ("busybox@sha512:" + "a" * 128, "unsupported digest algorithm"),
    ("a b", "whitespace"),
    ("bad_host:5000/x", "bad registry host"),
    ("x//y", "bad repository component"),
    (":tag", "no repository"),
])
def test_reference_refusals(text: str, words: str) -> None:
    with pytest.raises(InvalidImageNameError, match=words) as err:
        parse_reference(text)
    assert err.value.reason == "InvalidImageName"
    assert isinstance(err.value, RuntimeError_)


@given(st.text(max_size=80))
def test_reference_parser_never_crashes(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidImageNameError:
        return
    assert parse_reference(ref.key).key == ref.key  # normalising is idempotent


def test_reference_familiar_and_api() -> None:
    ref = parse_reference("busybox:1.35")
    assert ref.familiar() == "busybox:1.35"
    assert ref.api_host == "registry-1.docker.io" and ref.repository == "library/busybox"
    assert parse_reference("localhost:5000/x/y@sha256:" + "e" * 64).api_reference == "sha256:" + "e" * 64


@pytest.mark.parametrize(("text", "policy"), [
    ("busybox", "Always"), ("busybox:latest", "Always"), ("busybox:1.35", "IfNotPresent"),
    ("localhost:5000/busybox", "Always"), ("localhost:5000/busybox:1", "IfNotPresent"),
    ("busybox@sha256:" + "a" * 64, "IfNotPresent"),
])
def test_default_pull_policy(text: str, policy: str) -> None:
    assert default_pull_policy(text) == policy


# ---------------------------------------------------------------- OCI documents (pure)


def test_schema1_and_artifacts_are_refused() -> None:
    with pytest.raises(ImageError, match="schema 1"):
        oci.parse_manifest(json.dumps({"schemaVersion": 1, "name": "x"}).encode())
    artifact = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": "sha256:" + "0" * 64,
                           "size": 2}, "layers": []}
    with pytest.raises(ImageError, match="not a container image"):
        oci.parse_manifest(json.dumps(artifact).encode())
    artifact["config"]["mediaType"] = oci.OCI_CONFIG  # type: ignore[index]
    artifact["layers"] = [{"mediaType": "application/x-foo", "digest": "sha256:" + "1" * 64, "size": 1}]
    with pytest.raises(ImageError, match="unsupported layer media type"):
        oci.parse_manifest(json.dumps(artifact).encode())
    artifact["layers"] = [{"mediaType": oci.OCI_LAYER, "digest": "sha256:../../etc", "size": 1}]
    with pytest.raises(ImageError, match="not a sha256 digest"):
        oci.parse_manifest(json.dumps(artifact).encode())


def test_platform_selection() -> None:
    def desc(arch: str, variant: str = "") -> dict[str, Any]:
        return {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(arch.encode() + variant.encode())
                .hexdigest(), "size": 1, "platform": {"os": "linux", "architecture": arch, "variant": variant}}
    index = oci.parse_index(json.dumps({"schemaVersion": 2, "manifests": [
        desc("arm", "v6"), desc("arm", "v7"), desc("arm64", "v8"), desc("amd64"), desc("s390x")]}).encode())
    assert oci.select_manifest(index, oci.Platform("linux", "arm", "v7")).platform == oci.Platform("linux", "arm", "v7")
    assert oci.select_manifest(index, oci.Platform("linux", "amd64")).platform.architecture == "amd64"  # type: ignore[union-attr]
    host = oci.select_manifest(index)
    assert host.platform is not None and host.platform.architecture == oci.host_platform().architecture
    with pytest.raises(ImageError, match="no image for platform linux/riscv64"):
        oci.select_manifest(index, oci.Platform("linux", "riscv64"))


# ---------------------------------------------------------------- imports




def _write(fmt: str, dest: Path, image: ib.BuiltImage, name: str) -> Path:
    if fmt == "oci-dir":
        return ib.write_oci_layout(dest / "layout", [(image, name)])
    if fmt == "oci-tar":
        return ib.write_oci_archive(dest / "image.tar", [(image, name)])
    if fmt == "oci-tar-gz":
        return ib.write_oci_archive(dest / "image.tar.gz", [(image, name)], gz=True)
    return ib.write_docker_save(dest / "save.tar", [(image, [parse_reference(name).familiar()])])


@requires_root
@requires_busybox
@pytest.mark.parametrize("fmt", ["oci-dir", "oci-tar", "oci-tar-gz", "docker-save"])
def test_import_each_format_and_resolve(fmt: str, store: ImageStore, busybox: ib.BuiltImage, tmp_path: Path) -> None:
    refs = store.import_archive(_write(fmt, tmp_path, busybox, BUSYBOX_REF))
    assert [r.reference for r in refs] == [BUSYBOX_REF]
    image = store.resolve("busybox:1.35")
    assert image is not None
    if fmt != "docker-save":  # docker save has no manifest: the store writes one
        assert image.digest == busybox.digest
    assert image.config_digest == busybox.config_digest
    for ref in ("busybox:1.35", BUSYBOX_REF, image.digest, "@" + image.digest, f"busybox@{image.digest}"):
        found = store.resolve(ref)
        assert found is not None and found.digest == image.digest, ref
    assert store.resolve("busybox") is None  # :latest was never imported
    assert store.resolve("localhost:5000/busybox:1.35") is None
    assert image.config.cmd == ("sh",) and image.config.exposed_ports == ("8080/tcp",)
    assert image.config.env == ("PATH=/usr/sbin:/usr/bin:/sbin:/bin",) and image.config.working_dir == "/"
    [layer] = store.layer_dirs(image)
    assert layer == store.root / "layers" / busybox.layers[0].diff_id.split(":")[1]
    bb = layer / "bin" / "busybox"
    assert bb.read_bytes() == ib.BUSYBOX.read_bytes() and os.access(bb, os.X_OK)
    assert os.readlink(layer / "bin" / "sh") == "busybox"
    assert (layer / "etc" / "passwd").read_text() == ib.PASSWD
    assert stat.S_IMODE(os.stat(layer / "tmp").st_mode) == 0o1777
    assert os.listdir(store.root / "tmp") == []
    assert [i.reference for i in store.list()] == [BUSYBOX_REF]


@requires_root
@requires_busybox
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_uncompressed_and_zstd_layers(compression: str, store: ImageStore, tmp_path: Path) -> None:
    if compression == "zstd" and not shutil.which("zstd"):
        pytest.skip("needs the zstd binary (Debian package zstd) to build a zstd layer")
    image = ib.busybox_image(compression)
    store.import_archive(ib.write_oci_layout(tmp_path / "l", [(image, "busybox:zz")]))
    resolved = store.resolve("busybox:zz")
    assert resolved is not None
    assert (store.layer_dirs(resolved)[0] / "bin/busybox").stat().st_size == ib.BUSYBOX.stat().st_size


@requires_root
@requires_busybox
def test_layers_are_shared_between_images_and_formats(store: ImageStore, busybox: ib.BuiltImage,
                                                      whiteout: ib.BuiltImage, tmp_path: Path) -> None:
    store.import_archive(ib.write_oci_layout(tmp_path / "a", [(busybox, BUSYBOX_REF)]))
    refs = store.import_archive(ib.write_docker_save(tmp_path / "b.tar", [(whiteout, ["wh:1", "wh:alias"])]))
    assert sorted(r.reference for r in refs) == ["docker.io/library/wh:1", "docker.io/library/wh:alias"]
    wh = store.resolve("wh:1")
    bb = store.resolve("busybox:1.35")
    assert wh is not None and bb is not None
    assert store.layer_dirs(wh)[0] == store.layer_dirs(bb)[0]
    assert len(os.listdir(store.root / "layers")) == 3


@requires_root
@requires_busybox
def test_oci_layout_names_and_reference_override(store: ImageStore, busybox: ib.BuiltImage, tmp_path: Path) -> None:
    # An OCI layout entry with no name at all: imported under its digest only.
    refs = store.import_archive(ib.write_oci_layout(tmp_path / "a", [(busybox, None)]))
    assert refs[0].reference == busybox.digest
    assert store.resolve(busybox.digest) is not None
    refs = store.import_oci_layout(tmp_path / "a", reference="localhost:5000/mine/bb:2")
    assert refs[0].reference == "localhost:5000/mine/bb:2"
    assert store.tag("localhost:5000/mine/bb:2", "other:3").reference == "docker.io/library/other:3"
    assert store.resolve("other:3") is not None


@requires_root
@requires_busybox
def test_unpacked_metadata_is_preserved(store: ImageStore, whiteout: ib.BuiltImage, tmp_path: Path) -> None:
    store.import_archive(ib.write_oci_layout(tmp_path / "l", [(whiteout, "wh:1")]))
    image = store.resolve("wh:1")
    assert image is not None
    _, data_layer, upper = store.layer_dirs(image)
    suid = os.lstat(data_layer / "data/suid")
    assert stat.S_IMODE(suid.st_mode) == 0o4755 and (suid.st_uid, suid.st_gid) == (1000, 1001)
    assert os.getxattr(data_layer / "data/xattr", "user.orch.test") == b"hello"
    assert os.lstat(data_layer / "data/hard").st_ino == os.lstat(data_layer / "data/keep").st_ino
    assert stat.S_ISFIFO(os.lstat(data_layer / "data/fifo").st_mode)
    assert os.readlink(data_layer / "data/abs-link") == "/etc/passwd"  # kept verbatim, never followed
    assert os.lstat(data_layer / "data/old").st_mtime == 1_000_000_000
    assert os.lstat(data_layer / "data").st_mtime == ib.MTIME  # set after its contents
    gone = os.lstat(upper / "data/gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0  # overlayfs's whiteout
    assert not (upper / "data/.wh.gone").exists()
    assert os.getxattr(upper / "opaque", "trusted.overlay.opaque") == b"y"
    assert not (upper / "opaque/.wh..wh..opq").exists()


# ---------------------------------------------------------------- refusals leave nothing


def _assert_refused_cleanly(store: ImageStore, archive: Path, words: list[str]) -> ImageError:
    before = tree(store.root)
    with pytest.raises(ImageError) as err:
        store.import_archive(archive)
    message = str(err.value)
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    assert tree(store.root) == before, "a refused import left something in the store"
    assert ImageStore(store.root).list() == store.list()
    return err.value


@requires_root
@requires_busybox
@pytest.mark.parametrize("name", sorted(ib.HOSTILE_LAYERS))
def test_hostile_layers_are_refused_and_leave_nothing(name: str, busybox_store: ImageStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    image = ib.hostile_image(name, outside)
    _, words = ib.HOSTILE_LAYERS[name]
    err = _assert_refused_cleanly(busybox_store, ib.write_oci_layout(tmp_path / "l", [(image, "evil:1")]),
                                  [words, image.layers[0].digest, "refused entry"])
    assert isinstance(err, RuntimeError_)
    assert os.listdir(outside) == []
    assert not Path("/etc/orch-escape-test").exists()
    assert not (tmp_path / "orch-escape").exists() and not (busybox_store.root / "orch-escape").exists()
    assert busybox_store.resolve("evil:1") is None


@requires_root
@requires_busybox
@pytest.mark.parametrize(("kind", "words"), [
    ("layer", ["digest mismatch", "expected sha256:", ", got sha256:"]),
    ("config", ["config", "digest mismatch"]),
    ("manifest", ["manifest", "digest mismatch"]),
    ("diffid", ["rootfs.diff_ids says", "uncompressed content has digest"]),
])
def test_lying_digests_are_refused_and_leave_nothing(kind: str, words: list[str], busybox_store: ImageStore,
                                                     tmp_path: Path) -> None:
    image = ib.tampered_image(kind)
    err = _assert_refused_cleanly(busybox_store, ib.write_oci_layout(tmp_path / "l", [(image, "tampered:1")]), words)
    if kind == "layer":  # names the blob and both digests
        actual = ib.sha256(image.extra_blobs[image.layers[0].digest])
        assert image.layers[0].digest in str(err) and actual in str(err)


@requires_root
@requires_busybox
def test_docker_save_with_a_lying_config_name_is_refused(store: ImageStore, busybox: ib.BuiltImage,
                                                         tmp_path: Path) -> None:
    archive = ib.write_docker_save(tmp_path / "s.tar", [(busybox, ["bb:1"])])
    files = {}
    import tarfile
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.isfile():
                files[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    config_name = f"{busybox.config_digest.split(':')[1]}.json"
    files[config_name] = files[config_name].replace(b'"sh"', b'"xx"')
    ib._write_tar(archive, files)
    _assert_refused_cleanly(store, archive, ["digest mismatch", config_name])


@requires_root
@requires_busybox
def test_size_limit(tmp_path: Path, busybox: ib.BuiltImage) -> None:
    store = ImageStore(tmp_path / "store", limits=Limits(max_bytes=1 << 20))
    _assert_refused_cleanly(store, ib.write_oci_layout(tmp_path / "l", [(busybox, BUSYBOX_REF)]),
                            ["exceeds the limit"])


@requires_root
def test_not_an_archive(store: ImageStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    _assert_refused_cleanly(store, junk, ["not a (compressed) tar"])
    ib._write_tar(junk, {"hello.txt": b"hi"})
    _assert_refused_cleanly(store, junk, ["not an image archive"])


@requires_root
def test_unpack_never_writes_through_an_existing_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("original")
    layer = ib.make_layer([
        ib.symlink("f", str(victim)), ib.file("f", "replaced"),  # the later entry replaces the symlink
        ib.file("keep", "kept"), ib.hardlink("h", "keep"), ib.file("h", "new"),  # ... and the hard link
    ], "none")
    blob = tmp_path / "blob"
    blob.write_bytes(layer.blob)
    unpack_layer(blob, tmp_path / "out", diff_id=layer.diff_id, what="test")
    assert victim.read_text() == "original"
    assert (tmp_path / "out/f").read_text() == "replaced" and not (tmp_path / "out/f").is_symlink()
    assert (tmp_path / "out/keep").read_text() == "kept" and (tmp_path / "out/h").read_text() == "new"


@requires_root
def test_unpack_removes_its_directory_on_refusal(tmp_path: Path) -> None:
    layer = ib.make_layer([ib.directory("a"), ib.file("a/b", "x"), ib.file("../c", "x")])
    blob = tmp_path / "blob"
    blob.write_bytes(layer.blob)
    with pytest.raises(ImageError, match=r"refused entry '\.\./c': path has a '\.\.' component"):
        unpack_layer(blob, tmp_path / "out", diff_id=layer.diff_id, what="test")
    assert not (tmp_path / "out").exists() and not (tmp_path / "c").exists()


@requires_root
def test_whiteout_then_directory_in_one_layer_is_opaque(tmp_path: Path) -> None:
    layer = ib.make_layer([ib.file(".wh.d", ""), ib.directory("d"), ib.file("d/x", "x"),
                           ib.directory("e"), ib.file(".wh.e", ""), ib.file("f", "f"), ib.file(".wh.f", "")], "none")
    blob = tmp_path / "blob"
    blob.write_bytes(layer.blob)
    unpack_layer(blob, tmp_path / "out", diff_id=layer.diff_id, what="test")
    for d in ("d", "e"):  # the lower d/e were deleted; this layer's own are new, so opaque
        assert os.getxattr(tmp_path / "out" / d, "trusted.overlay.opaque") == b"y"
    assert (tmp_path / "out/f").read_text() == "f"  # a file of the same layer wins over its whiteout


# ---------------------------------------------------------------- concurrency and crashes


@requires_root
@requires_busybox
def test_concurrent_imports_from_processes(store: ImageStore, busybox: ib.BuiltImage, tmp_path: Path) -> None:
    layouts = [ib.write_oci_layout(tmp_path / f"l{i}", [(busybox, f"busybox:c{i}")]) for i in range(4)]
    code = ("import sys; from agent.images import ImageStore; "
            "ImageStore(sys.argv[1]).import_archive(sys.argv[2])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.root), str(p)], cwd=REPO,
                              stderr=subprocess.PIPE) for p in layouts]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    assert sorted(i.reference for i in store.list()) == [f"docker.io/library/busybox:c{i}" for i in range(4)]
    assert len(os.listdir(store.root / "layers")) == 1
    assert os.listdir(store.root / "tmp") == []


@requires_root
def test_stale_staging_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = store.root / "tmp" / f"import-{dead.pid}-abcdef"
    (stale / "layers" / "half").mkdir(parents=True)
    (stale / "layers" / "half" / "file").write_text("half a layer")
    mine = store.root / "tmp" / f"import-{os.getpid()}-live"
    mine.mkdir()
    ImageStore(store.root)
    assert not stale.exists()
    assert mine.exists()  # a live process's staging is left alone


# ---------------------------------------------------------------- remove and garbage collection


@requires_root
@requires_busybox
def test_remove_collects_unreferenced_blobs_and_layers(store: ImageStore, busybox: ib.BuiltImage,
                                                       whiteout: ib.BuiltImage, tmp_path: Path) -> None:
    empty = tree(store.root)
    store.import_archive(ib.write_oci_layout(tmp_path / "a", [(busybox, BUSYBOX_REF), (whiteout, "wh:1")]))
    store.tag("wh:1", "wh:2")
    bb = store.resolve(BUSYBOX_REF)
    assert bb is not None
    store.remove("wh:1")
    assert store.resolve("wh:2") is not None and len(os.listdir(store.root / "layers")) == 3
    store.remove(whiteout.digest)  # a digest removes every remaining name
    assert store.resolve("wh:2") is None
    assert os.listdir(store.root / "layers") == [bb.diff_ids[0].split(":")[1]]
    assert sorted(os.listdir(store.root / "blobs/sha256")) == sorted(
        d.split(":")[1] for d in busybox.blobs())
    store.remove("busybox:1.35")
    assert os.listdir(store.root / "layers") == [] and os.listdir(store.root / "blobs/sha256") == []
    after = tree(store.root)
    assert {k for k in after if k != "index.json"} == {k for k in empty if k != "index.json"}
    with pytest.raises(NotFoundError):
        store.remove("busybox:1.35")


# ---------------------------------------------------------------- pull policies (no registry needed)


@requires_root
@requires_busybox
def test_pull_policies(busybox_store: ImageStore, busybox: ib.BuiltImage) -> None:
    s = busybox_store
    with pytest.raises(ImageNeverPullError) as never:
        s.ensure("busybox:9.9", "Never")
    assert str(never.value) == 'Container image "busybox:9.9" is not present with pull policy of Never'
    assert never.value.reason == "ErrImageNeverPull"
    assert s.ensure("busybox:1.35", "Never").digest == busybox.digest
    # IfNotPresent and present: no registry is asked (the mirror would refuse the connection).
    assert s.ensure("busybox:1.35", "IfNotPresent", registry_mirror=DEAD_REGISTRY).digest == busybox.digest
    assert s.ensure("busybox:1.35", None, registry_mirror=DEAD_REGISTRY).digest == busybox.digest  # default
    # A digest cannot change: present is enough even with Always.
    assert s.ensure(f"busybox@{busybox.digest}", "Always", registry_mirror=DEAD_REGISTRY).digest == busybox.digest
    # Always with a tag asks the registry even though the image is here.
    with pytest.raises(ImagePullError, match="cannot reach registry") as pull:
        s.ensure("busybox:1.35", "Always", registry_mirror=DEAD_REGISTRY)
    assert pull.value.reason == "ErrImagePull"
    with pytest.raises(ImagePullError):
        s.ensure("busybox:absent", "IfNotPresent", registry_mirror=DEAD_REGISTRY)
    with pytest.raises(ImageError, match="unknown imagePullPolicy"):
        s.ensure("busybox:1.35", "Sometimes")
    with pytest.raises(InvalidImageNameError):
        s.ensure("Not A Name", "Never")


# ---------------------------------------------------------------- overlay mounts


def test_overlay_options_order_escaping_and_relative_paths() -> None:
    opts = overlay_options(["/s/layers/low", "/s/layers/mid", "/s/layers/top"], None, None)
    assert opts == "lowerdir=/s/layers/top:/s/layers/mid:/s/layers/low"  # topmost first for overlayfs
    opts = overlay_options(["/s/layers/a:b", "/s/layers/c,d"], "/c/up\\x", "/c/work", base="/s/layers")
    assert opts == "lowerdir=c\\,d:a\\:b,upperdir=/c/up\\\\x,workdir=/c/work,index=off"
    # Relative names cost 65 bytes a layer: 55 layers plus a container's upper and work dirs fit.
    many = [f"/var/lib/orch/node-1/images/layers/{i:064x}" for i in range(55)]
    assert len(overlay_options(many, None, None)) > MOUNT_DATA_MAX
    assert len(overlay_options(many, "/var/lib/orch/node-1/containers/" + "f" * 64 + "/upper",
                               "/var/lib/orch/node-1/containers/" + "f" * 64 + "/work",
                               base="/var/lib/orch/node-1/images/layers")) < MOUNT_DATA_MAX


@requires_root
@requires_busybox
def test_overlay_merges_layers_and_honours_whiteouts(store: ImageStore, whiteout: ib.BuiltImage,
                                                     tmp_path: Path) -> None:
    store.import_archive(ib.write_oci_layout(tmp_path / "l", [(whiteout, "wh:1")]))
    image = store.resolve("wh:1")
    assert image is not None
    target = tmp_path / "rootfs"
    target.mkdir()
    result = in_mount_namespace('''
        mount_overlay(Path(args["target"]), [Path(p) for p in args["lowers"]])
        result["tree"] = listing(args["target"])
        result["run"] = run_chrooted(args["target"], "echo hello from $(cat /data/keep); ls /opaque; id -u")
        try:
            open(os.path.join(args["target"], "new-file"), "w")
            result["write"] = "allowed"
        except OSError as e:
            result["write"] = e.errno
        result["mounts"] = open("/proc/self/mountinfo").read()
    ''', target=str(target), lowers=[str(p) for p in store.layer_dirs(image)])
    merged = result["tree"]
    assert "bin/busybox" in merged and "data/keep" in merged and "data/new" in merged
    assert "data/gone" not in merged and "data/gonedir" not in merged and "data/gonedir/inner" not in merged
    assert "opaque/upperfile" in merged
    assert "opaque/lowerfile" not in merged and "opaque/sub" not in merged  # the opaque dir hides the lower
    assert not any(".wh." in name for name in merged)
    assert result["run"] == [0, "hello from kept\nupperfile\n0\n"]
    assert result["write"] == 30  # EROFS: no upper dir, read-only
    assert f" {target} " in result["mounts"] and "overlay" in result["mounts"]
    assert str(target) not in host_mounts()
    assert os.listdir(target) == []


@requires_root
@requires_busybox
def test_overlay_with_upper_dir_takes_writes_and_deletions(store: ImageStore, whiteout: ib.BuiltImage,
                                                           tmp_path: Path) -> None:
    store.import_archive(ib.write_oci_layout(tmp_path / "l", [(whiteout, "wh:1")]))
    image = store.resolve("wh:1")
    assert image is not None
    layers_before = tree(store.root / "layers")
    for d in ("rootfs", "upper", "work"):
        (tmp_path / d).mkdir()
    result = in_mount_namespace('''
        mount_overlay(Path(args["target"]), [Path(p) for p in args["lowers"]], Path(args["upper"]),
                      Path(args["work"]))
        result["run"] = run_chrooted(args["target"], "echo written > /data/mine && rm /data/keep && cat /data/mine")
    ''', target=str(tmp_path / "rootfs"), lowers=[str(p) for p in store.layer_dirs(image)],
        upper=str(tmp_path / "upper"), work=str(tmp_path / "work"))
    assert result["run"] == [0, "written\n"]
    assert (tmp_path / "upper/data/mine").read_text() == "written\n"
    keep = os.lstat(tmp_path / "upper/data/keep")
    assert stat.S_ISCHR(keep.st_mode) and keep.st_rdev == 0  # the kernel's own whiteout in the upper dir
    assert tree(store.root / "layers") == layers_before  # image layers are never written
    assert str(tmp_path / "rootfs") not in host_mounts()


@requires_root
@requires_busybox
def test_overlay_of_a_single_layer_read_only(busybox_store: ImageStore, tmp_path: Path) -> None:
    image = busybox_store.resolve(BUSYBOX_REF)
    assert image is not None
    target = tmp_path / "rootfs"
    target.mkdir()
    result = in_mount_namespace('''
        mount_overlay(Path(args["target"]), [Path(p) for p in args["lowers"]])
        result["run"] = run_chrooted(args["target"], "echo one layer; ls /")
    ''', target=str(target), lowers=[str(p) for p in busybox_store.layer_dirs(image)])
    assert result["run"] == [0, "one layer\nbin\netc\nroot\ntmp\n"]


@requires_root
def test_overlay_of_many_layers_fits_the_option_page(tmp_path: Path) -> None:
    # 60 layers under a long path: absolute lowerdirs would overflow the 4 KiB page.
    base = tmp_path / ("long-directory-name-" * 4) / "layers"
    lowers = []
    for i in range(60):
        layer = base / f"{i:064x}"
        (layer / "files").mkdir(parents=True)
        (layer / "files" / f"f{i}").write_text(str(i))
        (layer / "shadowed").write_text(str(i))
        lowers.append(layer)
    assert len(overlay_options([str(p) for p in lowers], None, None)) > MOUNT_DATA_MAX
    target = tmp_path / "rootfs"
    target.mkdir()
    cwd_before = os.getcwd()
    result = in_mount_namespace('''
        cwd = os.getcwd()
        mount_overlay(Path(args["target"]), [Path(p) for p in args["lowers"]])
        result["files"] = sorted(os.listdir(os.path.join(args["target"], "files")))
        result["top"] = open(os.path.join(args["target"], "shadowed")).read()
        result["cwd_restored"] = os.getcwd() == cwd
    ''', target=str(target), lowers=[str(p) for p in lowers])
    assert result["files"] == sorted(f"f{i}" for i in range(60))
    assert result["top"] == "59"  # the last (topmost) layer wins
    assert result["cwd_restored"] and os.getcwd() == cwd_before


# ---------------------------------------------------------------- Kubernetes semantics (config.py)


def test_resolve_argv_follows_kubernetes() -> None:
    cfg = ImageConfig(entrypoint=("/entry",), cmd=("--default",))
    assert resolve_argv(cfg, None, None) == ["/entry", "--default"]
    assert resolve_argv(cfg, ["/cmd"], None) == ["/cmd"]  # command drops Cmd too
    assert resolve_argv(cfg, None, ["--arg"]) == ["/entry", "--arg"]  # args keep Entrypoint
    assert resolve_argv(cfg, ["/cmd"], ["--arg"]) == ["/cmd", "--arg"]
    assert resolve_argv(cfg, [], []) == ["/entry", "--default"]  # empty lists count as unset
    assert resolve_argv(ImageConfig(), None, None) == []


def test_env_and_working_dir() -> None:
    cfg = ImageConfig(env=("PATH=/bin", "A=image", "EMPTY=", "B=x=y"), working_dir="/app")
    assert merge_env(cfg.env, {"A": "container", "C": "c"}) == {"PATH": "/bin", "A": "container", "EMPTY": "",
                                                                 "B": "x=y", "C": "c"}
    assert resolve_working_dir(cfg, "") == "/app" and resolve_working_dir(cfg, "/w") == "/w"
    assert resolve_working_dir(ImageConfig(), None) == "/"


@requires_root
@requires_busybox
def test_resolve_user_from_the_image(store: ImageStore, whiteout: ib.BuiltImage, tmp_path: Path) -> None:
    store.import_archive(ib.write_oci_layout(tmp_path / "l", [(whiteout, "wh:1")]))
    image = store.resolve("wh:1")
    assert image is not None
    layers = store.layer_dirs(image)

    def user(spec: str, run_as_user: int | None = None, run_as_group: int | None = None) -> tuple[int, int]:
        return resolve_user(ImageConfig(user=spec), run_as_user, run_as_group, layers)

    assert user("") == (0, 0)
    assert user("1000") == (1000, 1001)  # primary group from the image's /etc/passwd
    assert user("4242") == (4242, 0)
    assert user("7:8") == (7, 8)
    assert user("app") == (1000, 1001)
    assert user("app:staff") == (1000, 50)
    assert user("app:9") == (1000, 9)
    assert user("app", 5) == (5, 0)  # runAsUser wins; its group from passwd, else 0
    assert user("app", 1000) == (1000, 1001)
    assert user("app", None, 77) == (1000, 77)  # runAsGroup wins
    with pytest.raises(ImageError, match="unable to find user ghost"):
        user("ghost")
    with pytest.raises(ImageError, match="unable to find group nogroup2"):
        user("app:nogroup2")
    assert read_image_file(layers, "/data/keep") == b"kept\n"
    assert read_image_file(layers, "/data/gone") is None  # whited out
    assert read_image_file(layers, "/opaque/lowerfile") is None  # below an opaque dir
    assert read_image_file(layers, "/opaque/upperfile") == b"the only file in opaque/\n"
    with pytest.raises(ImageError, match="symlink"):
        read_image_file(layers, "/data/abs-link")


@requires_root
def test_user_lookup_never_follows_a_symlinked_passwd(tmp_path: Path) -> None:
    layer = ib.make_layer([ib.directory("etc"), ib.symlink("etc/passwd", "/etc/passwd")], "none")
    blob = tmp_path / "blob"
    blob.write_bytes(layer.blob)
    unpack_layer(blob, tmp_path / "layer", diff_id=layer.diff_id, what="test")
    with pytest.raises(ImageError, match="symlink"):
        resolve_user(ImageConfig(user="root"), None, None, [tmp_path / "layer"])


@requires_root
@requires_busybox
def test_repeated_layers_collapse_to_the_topmost(store: ImageStore, tmp_path: Path) -> None:
    empty = ib.make_layer([])
    marker_low = ib.make_layer([ib.file("which", "low")])
    marker_high = ib.make_layer([ib.file("which", "high")])
    # busybox, empty, low, empty, high, low: overlayfs refuses a lower dir twice (ELOOP).
    image = ib.build_image([ib.busybox_layer(), empty, marker_low, empty, marker_high, marker_low])
    store.import_archive(ib.write_oci_layout(tmp_path / "l", [(image, "dup:1")]))
    resolved = store.resolve("dup:1")
    assert resolved is not None
    dirs = store.layer_dirs(resolved)
    names = [p.name for p in dirs]
    assert len(dirs) == 4 and len(set(names)) == 4
    assert names[-1] == marker_low.diff_id.split(":")[1]  # kept where it is topmost
    (tmp_path / "rootfs").mkdir()
    result = in_mount_namespace('''
        mount_overlay(Path(args["target"]), [Path(p) for p in args["lowers"]])
        result["which"] = open(os.path.join(args["target"], "which")).read()
    ''', target=str(tmp_path / "rootfs"), lowers=[str(p) for p in dirs])
    assert result["which"] == "low"


@requires_root
@requires_busybox
def test_oci_layout_with_a_nested_multi_platform_index(store: ImageStore, busybox: ib.BuiltImage,
                                                       tmp_path: Path) -> None:
    nested = json.dumps({"schemaVersion": 2, "mediaType": ib.OCI_INDEX, "manifests": [
        {"mediaType": ib.OCI_MANIFEST, "digest": "sha256:" + "5" * 64, "size": 10,
         "platform": {"os": "linux", "architecture": "mips64le"}},
        {"mediaType": ib.OCI_MANIFEST, "digest": busybox.digest, "size": len(busybox.manifest),
         "platform": {"os": "linux", "architecture": oci.host_platform().architecture}},
    ]}).encode()
    layout = tmp_path / "layout"
    ib.write_oci_layout(layout, [(busybox, None)])
    (layout / "blobs/sha256" / ib.sha256(nested).split(":")[1]).write_bytes(nested)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": ib.OCI_INDEX, "digest": ib.sha256(nested), "size": len(nested),
         "annotations": {"io.containerd.image.name": "docker.io/library/multi:1"}}]}))
    [ref] = store.import_archive(layout)
    assert ref.digest == busybox.digest
    image = store.resolve("multi:1")
    assert image is not None and image.index_digest == ib.sha256(nested)
    assert store.resolve(f"multi@{ib.sha256(nested)}") is not None


@pytest.mark.parametrize(("user", "run_as_user", "message"), [
    ("", None, "image will run as root"),
    ("0:0", None, "image will run as root"),
    ("app", None, "non-numeric user (app), cannot verify user is non-root"),
    ("1000", 0, "runAsUser breaks non-root policy"),
    ("0", 1000, None),
    ("1000:1000", None, None),
])
def test_run_as_non_root(user: str, run_as_user: int | None, message: str | None) -> None:
    cfg = ImageConfig(user=user)
    verify_run_as_non_root(cfg, run_as_user, None)  # unset: nothing to check
    verify_run_as_non_root(cfg, run_as_user, False)
    if message is None:
        verify_run_as_non_root(cfg, run_as_user, True)
        return
    with pytest.raises(ContainerConfigError, match=re.escape(message)) as err:
        verify_run_as_non_root(cfg, run_as_user, True)
    assert err.value.reason == "CreateContainerConfigError"


CRASH_SCRIPT = '''
import os, signal, sys
from agent.images import store as store_module
from agent.images.store import ImageStore

def crash(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

where = sys.argv[3]
if where == "after-first-layer":
    original = store_module.unpack_layer
    def unpack_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        crash()
    store_module.unpack_layer = unpack_then_crash
else:  # in the commit, after the blobs and layers got their names, before index.json
    ImageStore._write_index = lambda self, images: crash()
ImageStore(sys.argv[1]).import_archive(sys.argv[2])
'''


@requires_root
@requires_busybox
@pytest.mark.parametrize("where", ["after-first-layer", "before-index"])
def test_a_crashed_import_leaves_no_half_layer(where: str, busybox_store: ImageStore, whiteout: ib.BuiltImage,
                                               tmp_path: Path) -> None:
    layout = ib.write_oci_layout(tmp_path / "l", [(whiteout, "wh:1")])
    before = tree(busybox_store.root)
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(busybox_store.root), str(layout), where],
                          cwd=REPO, capture_output=True, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    reopened = ImageStore(busybox_store.root)  # finds the dead process's staging and removes it
    assert reopened.resolve("wh:1") is None
    after = tree(reopened.root)
    if where == "after-first-layer":
        assert after == before
    else:
        # Complete, verified layers and blobs under their final names, but no index entry: orphans.
        new = sorted(set(after) - set(before))
        assert new and all(p.startswith(("blobs/", "layers/")) for p in new)
        for diff_id in (ib.data_layer().diff_id, ib.upper_layer().diff_id):
            assert (reopened.root / "layers" / diff_id.split(":")[1] / "data").is_dir()
        # Importing again completes it; removing it collects everything it brought.
        reopened.import_archive(layout)
        assert reopened.resolve("wh:1") is not None
        reopened.remove("wh:1")
        assert {k for k in tree(reopened.root) if k != "index.json"} == {k for k in before if k != "index.json"}
    assert os.listdir(reopened.root / "tmp") == []
