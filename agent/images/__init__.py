"""The node's image store: OCI layouts and ``docker save`` archives imported, registry pulls, safe unpacking.

Modules, each importing only those above it:

* ``errors``    — ``ImageError`` (a ``RuntimeError_``) and its kubelet-reason subclasses;
* ``reference`` — parse and normalise image references (``busybox`` ->
  ``docker.io/library/busybox:latest``), Kubernetes' default pull policy;
* ``oci``       — media types, descriptors, manifests, indexes, image configs (pure);
* ``unpack``    — one layer tar -> a directory, refusing path escapes, device
  nodes and overlay-xattr forgeries, writing overlayfs whiteouts, checking the diffID;
* ``config``    — Kubernetes' command/args/env/workingDir/user semantics against an image config;
* ``store``     — ``ImageStore``: blobs, index, layers; import, pull, resolve,
  remove, ``ensure`` (imagePullPolicy);
* ``registry``  — the OCI distribution API client, and ``push``.

``agent.runtime.overlay`` mounts the layers ``ImageStore.layer_dirs`` returns;
it lives with the runtime because it runs in the shim, which must not import
this package (``errors`` brings in gRPC).
"""

from __future__ import annotations

from agent.images.errors import (
    ContainerConfigError,
    ImageError,
    ImageNeverPullError,
    ImagePullError,
    InvalidImageNameError,
)
from agent.images.oci import ImageConfig
from agent.images.reference import Reference, default_pull_policy, parse_reference
from agent.images.store import PULL_POLICIES, Image, ImageRef, ImageStore
from agent.images.unpack import Limits

__all__ = [
    "PULL_POLICIES",
    "ContainerConfigError",
    "Image",
    "ImageConfig",
    "ImageError",
    "ImageNeverPullError",
    "ImagePullError",
    "ImageRef",
    "ImageStore",
    "InvalidImageNameError",
    "Limits",
    "Reference",
    "default_pull_policy",
    "parse_reference",
]
