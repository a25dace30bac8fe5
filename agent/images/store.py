"""The node-local image store: content-addressed blobs, an index of names, unpacked layers.

On-disk layout under ``root`` (one store per node, e.g. ``<agent state>/images``)::

    index.json              {"schemaVersion": 1, "images": {<key>: {"digest", "mediaType",
                             "indexDigest"?, "importedAt"}}}; <key> is a normalised
                             reference: docker.io/library/busybox:1.35,
                             localhost:5000/app@sha256:..., or a bare sha256:... digest
                             for an image imported without a name
    index.lock              flock(2): exclusive for imports' commits, removals, tags;
                            shared for reads
    blobs/sha256/<hex>      manifests, image indexes, configs and (compressed) layer
                            blobs, each named by the sha256 of its bytes
    layers/<hex>/           one unpacked layer, named by its diffID (the sha256 of the
                            uncompressed tar), shared by every image and container
                            that has it; overlayfs lower directories
    tmp/                    staging: import-<pid>-<rand>/ (an import in progress),
                            gc-<pid>-<rand>/ (a layer being deleted), index-<pid>-<rand>

How an import stays all-or-nothing: everything it brings — blobs downloaded or
copied while their sha256 is computed, layers unpacked (and their diffIDs
checked) — goes into its own ``tmp/import-*`` directory first. Only when every
blob, every layer and the config all verified does it take the lock, ``syncfs``,
rename each new blob and layer to its final name (rename is atomic; a name
that already exists is the same content and is kept) and write ``index.json``
by rename. A refusal or a crash before that leaves nothing under a final name;
the staging directory is removed at once, or by the next store opened after a
crash (its pid is dead). A crash in the middle of the renames leaves only
complete, verified, unreferenced blobs or layers, which the next ``remove``
garbage-collects. Deleting a layer renames it into ``tmp/`` first, so a crash
never leaves half a layer under its name either.

Concurrent imports on one node (threads or processes) may unpack the same
layer twice in their own staging directories; the first rename wins and the
other copy is discarded. A layer another import would reuse cannot vanish
between its check and its commit: the commit re-checks under the lock and
unpacks whatever is missing.

Removal contract (as the kubelet's image GC): ``remove`` deletes layers that
no remaining image references, so the caller must not remove an image that a
container still runs from — its overlay's lower directories would vanish.

Blocking I/O throughout: call from a worker thread, never on the event loop.
Needs root (unpacking sets owners and trusted.* xattrs).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from agent.images import oci
from agent.images.errors import ImageError, ImageNeverPullError, InvalidImageNameError
from agent.images.oci import Descriptor, ImageConfig
from agent.images.reference import (
    Reference,
    default_pull_policy,
    parse_reference,
    validate_digest,
)
from agent.images.unpack import Limits, detect_compression, unpack_layer
from apimachinery.errors import NotFoundError

__all__ = ["PULL_POLICIES", "Image", "ImageRef", "ImageStore"]

log = logging.getLogger(__name__)

PULL_POLICIES = ("Always", "IfNotPresent", "Never")
INDEX_FILE = "index.json"
LOCK_FILE = "index.lock"
_CHUNK = 1 << 20
_STAGING_KINDS = ("import", "gc", "index")

BlobOpener = Callable[[Descriptor], AbstractContextManager[IO[bytes]]]

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """What an import or pull added: the index key and the image's manifest digest."""

    reference: str  # normalised: docker.io/library/busybox:1.35, or a bare sha256:... if unnamed
    digest: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image in the store: its manifest, config and layers, as found under ``reference``."""

    reference: str  # the index key it was found under
    digest: str  # sha256 of the manifest: the image's identity (Kubernetes' imageID)
    media_type: str  # of the manifest
    config_descriptor: Descriptor
    config: ImageConfig
    layers: tuple[Descriptor, ...]  # the compressed blobs, lowest first
    index_digest: str | None = None  # the image index / manifest list it was chosen from, if any

    @property
    def config_digest(self) -> str:
        """Docker's "image ID"."""
        return self.config_descriptor.digest

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return self.config.diff_ids

    @property
    def size(self) -> int:
        """Compressed size: config plus layers, as ``crictl images`` reports it."""
        return self.config_descriptor.size + sum(layer.size for layer in self.layers)


@dataclass
class _Staging:
    """One import in progress: its private directory and what it has verified so far."""

    dir: Path
    blobs: dict[str, Path] = field(default_factory=dict)  # digest -> staged file
    layers: dict[str, Path] = field(default_factory=dict)  # diffID -> staged unpacked layer
    required: dict[str, str] = field(default_factory=dict)  # diffID -> digest of its blob
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # index key -> entry
    names: builtins.list[ImageRef] = field(default_factory=builtins.list)


def _hex(digest: str) -> str:
    return validate_digest(digest).split(":", 1)[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _syncfs(path: Path) -> None:
    """syncfs(2) on the filesystem holding ``path``: staged files are on disk before they get their names."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs({str(path)!r}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageStore:
    """A node's images; see the module docstring for the layout and the guarantees."""

    def __init__(self, root: Path | str, *, limits: Limits | None = None, durable: bool = True) -> None:
        self.root = Path(root)
        self.limits = limits or Limits()
        self.durable = durable  # syncfs before committing names (off only for throwaway stores)
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.layers_dir = self.root / "layers"
        self.tmp_dir = self.root / "tmp"
        for d in (self.blobs_dir, self.layers_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        os.chmod(self.layers_dir, 0o755)  # overlayfs only needs search permission, but be plain
        with self._locked():
            if not (self.root / INDEX_FILE).exists():
                self._write_index({})
            self._clean_stale_staging()

    # ---------------------------------------------------------------- paths

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / _hex(digest)

    def layer_dir(self, diff_id: str) -> Path:
        return self.layers_dir / _hex(diff_id)

    def layer_dirs(self, image: Image) -> builtins.list[Path]:
        """The unpacked layers of ``image``, lowest first, ready to be overlayfs lower directories.

        A layer that occurs twice keeps only its topmost occurrence: the
        merged tree is the same (the upper copy shadows every path of the
        lower one), and overlayfs refuses the same lower directory twice (ELOOP).
        """
        seen: set[str] = set()
        top_down: builtins.list[Path] = []
        for diff_id in reversed(image.diff_ids):
            if diff_id in seen:
                continue
            seen.add(diff_id)
            path = self.layer_dir(diff_id)
            if not path.is_dir():
                raise ImageError(f"image {image.reference}: layer {diff_id} is missing from the store "
                                 f"({path}); remove the image and import or pull it again")
            top_down.append(path)
        return top_down[::-1]

    # ---------------------------------------------------------------- lock and index

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool = True) -> Iterator[None]:
        # flock locks belong to the open file description: a fresh open per use
        # makes threads of one process exclude each other too. Never nested.
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _read_index(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads((self.root / INDEX_FILE).read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise ImageError(f"image store index {self.root / INDEX_FILE} is corrupt: {e}") from e
        images = doc.get("images", {}) if isinstance(doc, dict) else {}
        return {str(k): v for k, v in images.items() if isinstance(v, dict)}

    def _write_index(self, images: dict[str, dict[str, Any]]) -> None:
        """Atomically replace index.json: a reader sees the old or the new file, never half of one."""
        tmp = self.tmp_dir / f"index-{os.getpid()}-{secrets.token_hex(6)}"
        data = json.dumps({"schemaVersion": 1, "images": dict(sorted(images.items()))}, indent=1) + "\n"
        try:
            with open(tmp, "w") as f:
                f.write(data)
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
            os.rename(tmp, self.root / INDEX_FILE)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.durable:
            _fsync_dir(self.root)

    def _clean_stale_staging(self) -> None:
        """Remove staging left by processes that died (crashed imports, interrupted deletions)."""
        for entry in self.tmp_dir.iterdir():
            kind, _, rest = entry.name.partition("-")
            pid_text = rest.split("-", 1)[0]
            if kind not in _STAGING_KINDS or not pid_text.isdigit():
                continue
            if int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
                log.info("image store %s: removing stale staging %s", self.root, entry.name)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    # ---------------------------------------------------------------- reading

    def _load(self, key: str, entry: dict[str, Any]) -> Image:
        digest = entry.get("digest", "")
        try:
            body = self.blob_path(digest).read_bytes()
            manifest = oci.parse_manifest(body, entry.get("mediaType", ""))
            config = oci.parse_config(self.blob_path(manifest.config.digest).read_bytes())
        except (OSError, InvalidImageNameError) as e:
            raise ImageError(f"image {key} in store {self.root} is damaged: {e}") from e
        return Image(reference=key, digest=digest, media_type=manifest.media_type,
                     config_descriptor=manifest.config, config=config, layers=manifest.layers,
                     index_digest=entry.get("indexDigest"))

    def resolve(self, reference: str) -> Image | None:
        """The image ``reference`` names on this node, or None. InvalidImageNameError if it doesn't parse.

        A tag is looked up by its normalised name (``busybox`` is
        ``docker.io/library/busybox:latest``). A digest matches the image whose
        manifest (or whose image index) has that digest, whatever name it was
        imported under: the content is the same.
        """
        ref = parse_reference(reference)
        with self._locked(exclusive=False):
            index = self._read_index()
            key = self._find(index, ref)
            return None if key is None else self._load(key, index[key])

    @staticmethod
    def _find(index: dict[str, dict[str, Any]], ref: Reference) -> str | None:
        if ref.key in index:
            return ref.key
        if not ref.digest:
            return None
        matches = [k for k, e in index.items() if ref.digest in (e.get("digest"), e.get("indexDigest"))]
        same_name = [k for k in matches if ref.name and k.startswith((ref.name + ":", ref.name + "@"))]
        found = same_name or sorted(matches)
        return found[0] if found else None

    def list(self) -> builtins.list[Image]:
        """Every (reference, image) in the store, sorted by reference."""
        with self._locked(exclusive=False):
            index = self._read_index()
            return [self._load(key, index[key]) for key in sorted(index)]

    def manifest_bytes(self, image: Image) -> bytes:
        return self.blob_path(image.digest).read_bytes()

    # ---------------------------------------------------------------- pull policy

    def ensure(self, reference: str, pull_policy: str | None = None, *, insecure_http: bool = False,
               registry_mirror: str | None = None) -> Image:
        """The image for a container, per Kubernetes' imagePullPolicy.

        ``Always`` asks the registry every time (blobs and layers already here
        are not fetched again), except for a digest reference that is present:
        its content cannot have changed. ``IfNotPresent`` pulls only if absent;
        ``Never`` never pulls and fails with ImageNeverPullError
        (``ErrImageNeverPull``) if absent. ``None`` means Kubernetes' default:
        ``Always`` for ``:latest`` or no tag, else ``IfNotPresent``.
        """
        policy = pull_policy or default_pull_policy(reference)
        if policy not in PULL_POLICIES:
            raise ImageError(f"unknown imagePullPolicy {policy!r} (one of {', '.join(PULL_POLICIES)})")
        present = self.resolve(reference)
        if policy == "Never":
            if present is None:
                raise ImageNeverPullError(f'Container image "{reference}" is not present with pull policy of Never')
            return present
        if present is not None and (policy == "IfNotPresent" or parse_reference(reference).digest):
            return present
        self.pull(reference, insecure_http=insecure_http, registry_mirror=registry_mirror)
        image = self.resolve(reference)
        if image is None:  # removed concurrently, between the commit and here
            raise ImageError(f"image {reference} vanished from the store right after it was pulled")
        return image

    # ---------------------------------------------------------------- imports

    def import_archive(self, path: Path | str, *, reference: str | None = None) -> builtins.list[ImageRef]:
        """Import an OCI image layout (directory or tar, optionally gzipped) or a ``docker save`` tarball.

        Detected by content: ``oci-layout`` means an OCI layout (Docker 25+
        ``docker save`` output is one too), else ``manifest.json`` means the
        classic ``docker save`` format. ``reference`` names the image when
        the archive holds exactly one (overriding the names inside).
        """
        path = Path(path)
        if path.is_dir():
            return self.import_oci_layout(path, reference=reference)
        with _open_source(path) as src:
            if src.exists("oci-layout"):
                return self._import_oci(src, reference)
            if src.exists("manifest.json"):
                return self._import_docker(src, reference)
        raise ImageError(f"{path}: not an image archive (neither an OCI layout with oci-layout and index.json "
                         "nor a docker save tarball with manifest.json)")

    def import_oci_layout(self, src: Path | str, *, reference: str | None = None) -> builtins.list[ImageRef]:
        """Import the images of an OCI image layout, a directory or a tar of one."""
        with _open_source(Path(src)) as source:
            return self._import_oci(source, reference)

    def import_docker_save(self, src: Path | str, *, reference: str | None = None) -> builtins.list[ImageRef]:
        """Import a ``docker save`` tarball (manifest.json, <id>.json configs, <id>/layer.tar)."""
        with _open_source(Path(src)) as source:
            return self._import_docker(source, reference)

    def _import_oci(self, src: _Source, reference: str | None) -> builtins.list[ImageRef]:
        layout = _json(src.read("oci-layout", 1 << 16), "oci-layout")
        if "imageLayoutVersion" not in layout:
            raise ImageError(f"{src.name}: oci-layout has no imageLayoutVersion")
        index_body = src.read("index.json", oci.MAX_MANIFEST_BYTES)
        index = oci.parse_index(index_body, oci.OCI_INDEX)
        images = [d for d in index.manifests if d.media_type in oci.MANIFEST_TYPES | oci.INDEX_TYPES]
        if not images:
            raise ImageError(f"{src.name}: index.json lists no image manifests")
        override = _override_reference(reference, len(images), src.name)

        def opener(desc: Descriptor) -> AbstractContextManager[IO[bytes]]:
            return src.open(f"blobs/sha256/{_hex(desc.digest)}")

        with self._staging() as stg:
            for desc in images:
                names = [override] if override else _layout_names(desc)
                self._import_descriptor(stg, desc, names, opener)
            return self._commit(stg)

    def _import_descriptor(self, stg: _Staging, desc: Descriptor, names: builtins.list[str],
                           opener: BlobOpener) -> None:
        """An index.json entry: an image manifest, or a nested index to pick this platform's manifest from."""
        index_digest = None
        if desc.media_type in oci.INDEX_TYPES:
            body = self._stage_small(stg, desc, opener, "image index")
            index_digest = desc.digest
            desc = oci.select_manifest(oci.parse_index(body, desc.media_type))
        body = self._stage_small(stg, desc, opener, "manifest")
        self._import_image(stg, body, desc.media_type, desc.digest, names, opener, index_digest)

    def _import_docker(self, src: _Source, reference: str | None) -> builtins.list[ImageRef]:
        entries = _json_list(src.read("manifest.json", oci.MAX_MANIFEST_BYTES), "manifest.json")
        override = _override_reference(reference, len(entries), src.name)
        with self._staging() as stg:
            by_path: dict[str, Descriptor] = {}
            for n, entry in enumerate(entries):
                config_path, layer_paths, tags = _docker_entry(entry, n)
                config = self._stage_file(stg, src, config_path, oci.OCI_CONFIG, by_path, oci.MAX_CONFIG_BYTES)
                layers = [self._stage_file(stg, src, p, None, by_path, self.limits.max_bytes) for p in layer_paths]
                manifest = {
                    "schemaVersion": 2,
                    "mediaType": oci.OCI_MANIFEST,
                    "config": config.to_json(),
                    "layers": [layer.to_json() for layer in layers],
                }
                body = json.dumps(manifest, separators=(",", ":")).encode()
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                self._put_staged_blob(stg, digest, body)
                names = [override] if override else tags

                def opener(desc: Descriptor) -> AbstractContextManager[IO[bytes]]:
                    raise ImageError(f"{src.name}: blob {desc.digest} is not in the archive")

                self._import_image(stg, body, oci.OCI_MANIFEST, digest, names, opener, None)
            return self._commit(stg)

    def _stage_file(self, stg: _Staging, src: _Source, path: str, media_type: str | None,
                    by_path: dict[str, Descriptor], limit: int) -> Descriptor:
        """A file of a docker save archive -> a staged blob, its digest computed (and checked if named by one)."""
        if path in by_path:
            return by_path[path]
        with src.open(path) as f:
            digest, size, staged = self._stage_stream(stg, f, None, None, f"{src.name}:{path}", limit)
        named = _digest_in_name(path)
        if named and named != digest:
            raise ImageError(f"{src.name}: {path}: blob digest mismatch: its name says {named}, "
                             f"its content has {digest}")
        if media_type is None:
            with open(staged, "rb") as f:
                kind = detect_compression(f.read(4))
            media_type = {"gzip": oci.OCI_LAYER_GZIP, "zstd": oci.OCI_LAYER_ZSTD}.get(kind, oci.OCI_LAYER)
        desc = Descriptor(media_type, digest, size)
        by_path[path] = desc
        return desc

    # ---------------------------------------------------------------- pull

    def pull(self, reference: str, *, insecure_http: bool = False, registry_mirror: str | None = None,
             platform: oci.Platform | None = None) -> ImageRef:
        """Pull ``reference`` from its registry (OCI distribution API) into the store.

        ``insecure_http``: plain HTTP instead of HTTPS (a loopback test
        registry). ``registry_mirror``: a base URL (``http://127.0.0.1:5000``)
        asked instead of the reference's registry; the repository path is the
        same. Blobs and layers already in the store are not fetched again.
        """
        from agent.images.registry import RegistryClient

        ref = parse_reference(reference)
        if not ref.name:
            raise InvalidImageNameError(f"cannot pull {reference!r}: a bare digest names no repository")
        client = RegistryClient.for_reference(ref, insecure_http=insecure_http, registry_mirror=registry_mirror)
        body, media_type, digest = client.get_manifest(ref.repository, ref.api_reference)
        with self._staging() as stg:
            index_digest = None
            if oci.is_index(body, media_type):
                index_digest = digest
                self._put_staged_blob(stg, digest, body)
                chosen = oci.select_manifest(oci.parse_index(body, media_type), platform)
                body, media_type, digest = client.get_manifest(ref.repository, chosen.digest)
            self._put_staged_blob(stg, digest, body)

            def opener(desc: Descriptor) -> AbstractContextManager[IO[bytes]]:
                return client.open_blob(ref.repository, desc.digest)

            self._import_image(stg, body, media_type, digest, [ref.key], opener, index_digest)
            refs = self._commit(stg)
        log.info("image store %s: pulled %s (%s)", self.root, ref.key, digest)
        return refs[0]

    # ---------------------------------------------------------------- the common import path

    @contextlib.contextmanager
    def _staging(self) -> Iterator[_Staging]:
        stg = _Staging(self.tmp_dir / f"import-{os.getpid()}-{secrets.token_hex(8)}")
        stg.dir.mkdir(mode=0o700)
        (stg.dir / "blobs").mkdir()
        (stg.dir / "layers").mkdir()
        try:
            yield stg
        finally:
            shutil.rmtree(stg.dir, ignore_errors=True)

    def _stage_stream(self, stg: _Staging, src: IO[bytes], expected: str | None, size: int | None, what: str,
                      limit: int) -> tuple[str, int, Path]:
        """Copy ``src`` into the staging area while hashing it; verify digest and size if given."""
        tmp = stg.dir / "blobs" / f"partial-{secrets.token_hex(6)}"
        hasher = hashlib.sha256()
        count = 0
        cap = limit if size is None else min(size, limit)
        try:
            with open(tmp, "xb") as out:
                while True:
                    chunk = src.read(min(_CHUNK, cap + 1 - count))
                    if not chunk:
                        break
                    count += len(chunk)
                    if count > cap:
                        if size is not None and size <= limit:
                            raise ImageError(f"{what}: blob is larger than the {size} bytes its descriptor says")
                        raise ImageError(f"{what}: blob is larger than the limit of {limit} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        digest = "sha256:" + hasher.hexdigest()
        if expected is not None and digest != expected:
            tmp.unlink()
            raise ImageError(f"{what}: blob digest mismatch: expected {expected}, got {digest}")
        if size is not None and count != size:
            tmp.unlink()
            raise ImageError(f"{what}: blob is {count} bytes, its descriptor says {size}")
        final = stg.dir / "blobs" / _hex(digest)
        if final.exists():
            tmp.unlink()
        else:
            os.rename(tmp, final)
        stg.blobs[digest] = final
        return digest, count, final

    def _put_staged_blob(self, stg: _Staging, digest: str, body: bytes) -> None:
        """Stage bytes we already hold and whose digest was checked (or computed) by the caller."""
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise ImageError(f"manifest: blob digest mismatch: expected {digest}, "
                             f"got sha256:{hashlib.sha256(body).hexdigest()}")
        path = stg.dir / "blobs" / _hex(digest)
        if digest not in stg.blobs:
            path.write_bytes(body)
            stg.blobs[digest] = path

    def _ensure_blob(self, stg: _Staging, desc: Descriptor, opener: BlobOpener, what: str) -> Path:
        """The blob ``desc`` in staging: already staged, hard-linked from the store, or fetched and verified."""
        if desc.digest in stg.blobs:
            return stg.blobs[desc.digest]
        staged = stg.dir / "blobs" / _hex(desc.digest)
        try:
            # A hard link, not a reference: a concurrent remove may unlink the
            # store's name, but not the content this import counts on.
            os.link(self.blob_path(desc.digest), staged)
            stg.blobs[desc.digest] = staged
            return staged
        except FileNotFoundError:
            pass
        limit = self.limits.max_bytes if what.startswith("layer") else oci.MAX_CONFIG_BYTES
        with opener(desc) as src:
            return self._stage_stream(stg, src, desc.digest, desc.size, what, limit)[2]

    def _stage_small(self, stg: _Staging, desc: Descriptor, opener: BlobOpener, what: str) -> bytes:
        path = self._ensure_blob(stg, desc, opener, f"{what} {desc.digest}")
        data = path.read_bytes()
        if len(data) > oci.MAX_MANIFEST_BYTES:
            raise ImageError(f"{what} {desc.digest} is over {oci.MAX_MANIFEST_BYTES} bytes")
        return data

    def _import_image(self, stg: _Staging, body: bytes, media_type: str, digest: str, names: builtins.list[str],
                      opener: BlobOpener, index_digest: str | None) -> None:
        """Verify and stage one image (its manifest already staged), and note its names for the commit."""
        manifest = oci.parse_manifest(body, media_type)
        config_path = self._ensure_blob(stg, manifest.config, opener, f"config {manifest.config.digest}")
        config = oci.parse_config(config_path.read_bytes())
        if len(config.diff_ids) != len(manifest.layers):
            raise ImageError(f"image {digest}: the manifest has {len(manifest.layers)} layers but the config's "
                             f"rootfs.diff_ids has {len(config.diff_ids)}")
        for i, (desc, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True)):
            blob = self._ensure_blob(stg, desc, opener, f"layer {i} {desc.digest}")
            previous = stg.required.setdefault(diff_id, desc.digest)
            if diff_id in stg.layers or self.layer_dir(diff_id).is_dir():
                continue  # already unpacked (and its diffID checked) by this import or an earlier one
            if previous != desc.digest:
                continue  # the same content under another compression, unpacked from that blob
            stg.layers[diff_id] = self._unpack(stg, blob, diff_id, desc.digest)
        entry: dict[str, Any] = {"digest": digest, "mediaType": manifest.media_type,
                                 "importedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if index_digest:
            entry["indexDigest"] = index_digest
        keys = [self._key(name) for name in names] or [digest]
        for key in keys:
            stg.entries[key] = entry
            stg.names.append(ImageRef(key, digest))

    def _unpack(self, stg: _Staging, blob: Path, diff_id: str, blob_digest: str) -> Path:
        dest = stg.dir / "layers" / _hex(diff_id)
        unpack_layer(blob, dest, diff_id=diff_id, what=blob_digest, limits=self.limits)
        return dest

    @staticmethod
    def _key(name: str) -> str:
        try:
            return parse_reference(name).key
        except InvalidImageNameError as e:
            raise ImageError(f"the archive names its image {name!r}, which is not a valid reference: {e}") from e

    def _commit(self, stg: _Staging) -> builtins.list[ImageRef]:
        """Give every staged blob and layer its final name and record the image names, under the lock."""
        with self._locked():
            if self.durable:
                _syncfs(stg.dir)
            for digest, path in stg.blobs.items():
                final = self.blob_path(digest)
                if not final.exists():
                    os.rename(path, final)
            for diff_id, blob_digest in stg.required.items():
                final = self.layer_dir(diff_id)
                if final.is_dir():
                    continue
                staged = stg.layers.get(diff_id)
                if staged is None:
                    # It existed when this import checked, and was removed since
                    # (remove takes this lock too, so not any more from here on).
                    staged = self._unpack(stg, self.blob_path(blob_digest), diff_id, blob_digest)
                    if self.durable:
                        _syncfs(stg.dir)
                os.rename(staged, final)
            if self.durable:
                _fsync_dir(self.blobs_dir)
                _fsync_dir(self.layers_dir)
            index = self._read_index()
            index.update(stg.entries)
            self._write_index(index)
        for ref in stg.names:
            log.info("image store %s: imported %s (%s)", self.root, ref.reference, ref.digest)
        return builtins.list(stg.names)

    # ---------------------------------------------------------------- tag and remove

    def tag(self, reference: str, new_reference: str) -> ImageRef:
        """Give the image ``reference`` names the additional name ``new_reference`` (a tag, not a digest)."""
        new = parse_reference(new_reference)
        if new.digest or not new.name:
            raise InvalidImageNameError(f"cannot tag as {new_reference!r}: a tag needs a repository and no digest")
        with self._locked():
            index = self._read_index()
            key = self._find(index, parse_reference(reference))
            if key is None:
                raise NotFoundError(f"image {reference!r} not found on this node")
            index[new.key] = dict(index[key])
            self._write_index(index)
            return ImageRef(new.key, index[key]["digest"])

    def remove(self, reference: str) -> None:
        """Forget ``reference`` and delete the blobs and layers no remaining image uses.

        A digest removes every name of that image. NotFoundError if nothing matches.
        """
        ref = parse_reference(reference)
        with self._locked():
            index = self._read_index()
            if ref.key in index:
                keys = [ref.key]
            elif ref.digest:
                keys = [k for k, e in index.items() if ref.digest in (e.get("digest"), e.get("indexDigest"))]
            else:
                keys = []
            if not keys:
                raise NotFoundError(f"image {reference!r} not found on this node")
            for key in keys:
                del index[key]
            self._write_index(index)
            self._collect_garbage(index)
        log.info("image store %s: removed %s", self.root, ", ".join(keys))

    def _collect_garbage(self, index: dict[str, dict[str, Any]]) -> None:
        blobs: set[str] = set()
        layers: set[str] = set()
        for key, entry in index.items():
            try:
                image = self._load(key, entry)
            except ImageError as e:
                # Without knowing what a damaged image uses, deleting anything might break it.
                log.warning("image store %s: not collecting garbage: %s", self.root, e)
                return
            blobs.update({image.digest, image.config_digest, *(d.digest for d in image.layers)})
            if image.index_digest:
                blobs.add(image.index_digest)
            layers.update(image.diff_ids)
        keep_blobs = {_hex(d) for d in blobs}
        keep_layers = {_hex(d) for d in layers}
        for path in self.blobs_dir.iterdir():
            if path.name not in keep_blobs:
                path.unlink(missing_ok=True)
        for path in self.layers_dir.iterdir():
            if path.name not in keep_layers:
                # Out of the namespace first, in one atomic step: a crash during
                # the rmtree must not leave half a layer under its name.
                doomed = self.tmp_dir / f"gc-{os.getpid()}-{secrets.token_hex(6)}"
                os.rename(path, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                if doomed.exists():
                    log.warning("image store %s: could not delete all of layer %s (left in %s)",
                                self.root, path.name, doomed)


# ---------------------------------------------------------------- archive sources


class _Source:
    """Files of an image archive by relative name: a directory or a tar (plain or compressed)."""

    name: str

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str) -> AbstractContextManager[IO[bytes]]:
        raise NotImplementedError

    def read(self, name: str, limit: int) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageError(f"{self.name}: {name} is larger than {limit} bytes")
        return data


def _archive_name(name: str) -> str:
    """A name inside an archive, normalised; ``..`` and absolute names are refused (they are never blobs)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts or name.startswith("/"):
        raise ImageError(f"refusing archive member name {name!r}")
    return "/".join(parts)


class _DirSource(_Source):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = str(root)

    def exists(self, name: str) -> bool:
        return (self.root / _archive_name(name)).is_file()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        try:
            f = open(self.root / _archive_name(name), "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise ImageError(f"{self.name}: {name} is missing") from None
        with f:
            yield f


class _TarSource(_Source):
    def __init__(self, path: Path) -> None:
        self.name = str(path)
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as e:
            raise ImageError(f"{path}: not a (compressed) tar archive: {e}") from e
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            for member in self.tar.getmembers():
                try:
                    self.members[_archive_name(member.name)] = member
                except ImageError:
                    continue  # a hostile outer name can only be refused when something asks for it
        except (tarfile.TarError, EOFError, OSError) as e:
            self.tar.close()
            raise ImageError(f"{path}: corrupt tar archive: {e}") from e

    def exists(self, name: str) -> bool:
        member = self.members.get(_archive_name(name))
        return member is not None and (member.isfile() or member.islnk() or member.issym())

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        member = self.members.get(_archive_name(name))
        f = None
        if member is not None:
            try:
                # Links are followed only to other members of this archive.
                f = self.tar.extractfile(member)
            except (tarfile.TarError, KeyError) as e:
                raise ImageError(f"{self.name}: {name}: {e}") from e
        if f is None:
            raise ImageError(f"{self.name}: {name} is missing (or not a file)")
        with f:
            yield f

    def close(self) -> None:
        self.tar.close()


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[_Source]:
    if path.is_dir():
        yield _DirSource(path)
        return
    if not path.exists():
        raise ImageError(f"{path}: no such file or directory")
    src = _TarSource(path)
    try:
        yield src
    finally:
        src.close()


# ---------------------------------------------------------------- archive metadata


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ImageError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc


def _json_list(data: bytes, what: str) -> builtins.list[Any]:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ImageError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(doc, builtins.list) or not doc:
        raise ImageError(f"{what} is not a non-empty JSON list")
    return doc


def _docker_entry(entry: Any, n: int) -> tuple[str, builtins.list[str], builtins.list[str]]:
    if not isinstance(entry, dict):
        raise ImageError(f"manifest.json[{n}] is not an object")
    config, layers, tags = entry.get("Config"), entry.get("Layers"), entry.get("RepoTags") or []
    if not isinstance(config, str) or not isinstance(layers, builtins.list) \
            or not all(isinstance(x, str) for x in layers) or not isinstance(tags, builtins.list):
        raise ImageError(f"manifest.json[{n}] needs Config (a path), Layers (paths) and RepoTags (a list)")
    return config, layers, [str(t) for t in tags]


def _digest_in_name(path: str) -> str | None:
    """The digest a docker save member's name claims: ``<hex>.json`` or ``blobs/sha256/<hex>``."""
    base = path.rsplit("/", 1)[-1].removesuffix(".json")
    if len(base) == 64 and all(c in "0123456789abcdef" for c in base) and (
            path.endswith(".json") or "/sha256/" in f"/{path}"):
        return f"sha256:{base}"
    return None


def _layout_names(desc: Descriptor) -> builtins.list[str]:
    """The names an OCI layout gives an index.json entry.

    ``io.containerd.image.name`` is a full reference (containerd, Docker 25+);
    ``org.opencontainers.image.ref.name`` is one if it has a ``/`` or ``:``,
    else a bare tag with no repository, which names nothing here (pass
    ``reference=``).
    """
    full = desc.annotation("io.containerd.image.name")
    if full:
        return [full]
    ref_name = desc.annotation("org.opencontainers.image.ref.name")
    if ref_name and ("/" in ref_name or ":" in ref_name):
        return [ref_name]
    return []


def _override_reference(reference: str | None, count: int, where: str) -> str | None:
    if reference is None:
        return None
    if count != 1:
        raise ImageError(f"{where} holds {count} images; reference= can only name one")
    ref = parse_reference(reference)
    if ref.digest:
        raise InvalidImageNameError(f"cannot import as {reference!r}: name it with a tag, not a digest")
    return ref.key

