"""The OCI image format as data: media types, descriptors, manifests, indexes and image configs.

Parses and validates the JSON documents of the OCI image spec and their
Docker v2 (schema 2) equivalents, which have the same shape under other media
types. Schema 1 manifests (signed, pre-2017) are refused with a clear error.
Pure functions over bytes: no I/O, so every refusal is unit-testable.

Every digest that will become a file name is validated here
(``sha256:<64 hex>``), so nothing later builds a path from untrusted text.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass
from typing import Any

from agent.images.errors import ImageError, InvalidImageNameError
from agent.images.reference import validate_digest

__all__ = [
    "CONFIG_TYPES",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "MANIFEST_TYPES",
    "Descriptor",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "host_platform",
    "is_index",
    "parse_config",
    "parse_index",
    "parse_manifest",
    "select_manifest",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYER_TYPES = frozenset({
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    DOCKER_LAYER, DOCKER_FOREIGN_LAYER,
})
#: Larger manifests are refused before they are parsed (containerd's limit).
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20

# Python's platform.machine() -> the OCI/Go architecture name, and its variant.
_ARCHES = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i386": ("386", ""), "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def host_platform() -> Platform:
    """The platform of this machine, as an index names it (linux/amd64, linux/arm64/v8, ...)."""
    machine = _platform.machine().lower()
    arch, variant = _ARCHES.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A reference to a blob: its media type, digest and size (OCI descriptor)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    def annotation(self, key: str) -> str | None:
        return next((v for k, v in self.annotations if k == key), None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            out["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                out["platform"]["variant"] = self.platform.variant
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The runtime defaults of an image (the ``config`` object of an OCI image config)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "KEY=value", in the image's order
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str = ""
    os: str = ""
    architecture: str = ""
    variant: str = ""
    diff_ids: tuple[str, ...] = ()  # rootfs.diff_ids, lowest layer first
    created: str = ""

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out


# ---------------------------------------------------------------- parsing


def _load(body: bytes, what: str, limit: int) -> dict[str, Any]:
    if len(body) > limit:
        raise ImageError(f"{what} is {len(body)} bytes, over the limit of {limit}")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc


def _digest(value: Any, what: str) -> str:
    try:
        return validate_digest(value, what)
    except InvalidImageNameError as e:
        raise ImageError(str(e)) from e


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise ImageError(f"{what} is not a descriptor object")
    media_type = raw.get("mediaType", "")
    size = raw.get("size")
    if not isinstance(media_type, str):
        raise ImageError(f"{what}.mediaType is not a string")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}.size is not a non-negative integer: {size!r}")
    plat = None
    if isinstance(raw.get("platform"), dict):
        p = raw["platform"]
        plat = Platform(str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", "") or ""))
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ImageError(f"{what}.annotations is not an object")
    return Descriptor(media_type, _digest(raw.get("digest"), f"{what}.digest"), size, plat,
                      tuple((str(k), str(v)) for k, v in annotations.items()))


def _media_type(doc: dict[str, Any], hint: str) -> str:
    """The document's own mediaType, else the one the transport said (a Content-Type or a descriptor)."""
    media_type = doc.get("mediaType") or hint.split(";")[0].strip()
    if media_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ImageError("Docker schema 1 manifests are not supported (deprecated since 2017); "
                         "re-push the image with a current client")
    return str(media_type)


def is_index(body: bytes, media_type_hint: str = "") -> bool:
    """Whether ``body`` is an image index / manifest list rather than an image manifest."""
    doc = _load(body, "manifest", MAX_MANIFEST_BYTES)
    media_type = _media_type(doc, media_type_hint)
    if media_type in INDEX_TYPES:
        return True
    if media_type in MANIFEST_TYPES:
        return False
    # mediaType is optional in OCI documents: the shape decides.
    return "manifests" in doc and "layers" not in doc


def parse_manifest(body: bytes, media_type_hint: str = "") -> Manifest:
    doc = _load(body, "manifest", MAX_MANIFEST_BYTES)
    media_type = _media_type(doc, media_type_hint) or OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise ImageError(f"not an image manifest: media type {media_type!r}")
    if doc.get("schemaVersion") != 2:
        raise ImageError(f"manifest schemaVersion is {doc.get('schemaVersion')!r}, expected 2")
    config = _descriptor(doc.get("config"), "manifest config")
    if config.media_type not in CONFIG_TYPES:
        raise ImageError(f"not a container image: config media type {config.media_type!r} "
                         "(an OCI artifact, not something to run)")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise ImageError("manifest has no layers list")
    layers = tuple(_descriptor(raw, f"manifest layers[{i}]") for i, raw in enumerate(raw_layers))
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_TYPES:
            raise ImageError(f"manifest layers[{i}] ({layer.digest}): unsupported layer media type "
                             f"{layer.media_type!r}")
    return Manifest(media_type, config, layers)


def parse_index(body: bytes, media_type_hint: str = "") -> Index:
    doc = _load(body, "image index", MAX_MANIFEST_BYTES)
    media_type = _media_type(doc, media_type_hint) or OCI_INDEX
    if media_type not in INDEX_TYPES:
        raise ImageError(f"not an image index: media type {media_type!r}")
    raw = doc.get("manifests")
    if not isinstance(raw, list):
        raise ImageError("image index has no manifests list")
    return Index(media_type, tuple(_descriptor(m, f"index manifests[{i}]") for i, m in enumerate(raw)))


def select_manifest(index: Index, want: Platform | None = None) -> Descriptor:
    """The manifest of ``index`` for ``want`` (default: this machine), as containerd's platform matcher.

    An exact variant match wins; a manifest without a variant matches any;
    entries with no platform (attestations, or a single-image OCI layout) are
    the last resort, and only if they are the only image manifests.
    """
    want = want or host_platform()
    candidates = [m for m in index.manifests if m.media_type in MANIFEST_TYPES or not m.media_type]
    exact = [m for m in candidates if m.platform and m.platform.os == want.os
             and m.platform.architecture == want.architecture]
    for m in exact:
        if m.platform and m.platform.variant == want.variant:
            return m
    for m in exact:
        if m.platform and not m.platform.variant:
            return m
    if exact:
        return exact[0]
    untyped = [m for m in candidates if m.platform is None]
    if len(untyped) == 1 and len(candidates) == 1:
        return untyped[0]
    offered = ", ".join(sorted({str(m.platform) for m in candidates if m.platform})) or "none"
    raise ImageError(f"no image for platform {want} in the index (it has: {offered})")


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"image config {what} is not a list of strings")
    return tuple(value)


def parse_config(body: bytes) -> ImageConfig:
    """An image config JSON (OCI or Docker) -> ImageConfig; the runtime part may be absent."""
    doc = _load(body, "image config", MAX_CONFIG_BYTES)
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise ImageError("image config 'config' is not an object")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageError("image config has no rootfs of type 'layers'")
    diff_ids = tuple(_digest(d, f"image config rootfs.diff_ids[{i}]")
                     for i, d in enumerate(_strings(rootfs.get("diff_ids"), "rootfs.diff_ids")))
    ports = cfg.get("ExposedPorts") or {}
    labels = cfg.get("Labels") or {}
    if not isinstance(ports, dict) or not isinstance(labels, dict):
        raise ImageError("image config ExposedPorts and Labels must be objects")
    for key in ("WorkingDir", "User", "StopSignal"):
        if not isinstance(cfg.get(key) or "", str):
            raise ImageError(f"image config {key} is not a string")
    return ImageConfig(
        entrypoint=_strings(cfg.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(cfg.get("Cmd"), "Cmd"),
        env=_strings(cfg.get("Env"), "Env"),
        working_dir=cfg.get("WorkingDir") or "",
        user=cfg.get("User") or "",
        exposed_ports=tuple(sorted(str(p) for p in ports)),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        stop_signal=cfg.get("StopSignal") or "",
        os=str(doc.get("os", "")),
        architecture=str(doc.get("architecture", "")),
        variant=str(doc.get("variant", "") or ""),
        diff_ids=diff_ids,
        created=str(doc.get("created", "") or ""),
    )

