"""Image references: parse, validate and normalise them the way Docker and the kubelet do.

``busybox``                         -> docker.io/library/busybox:latest
``busybox:1.35``                    -> docker.io/library/busybox:1.35
``user/app``                        -> docker.io/user/app:latest
``localhost:5000/busybox:1.35``     -> localhost:5000/busybox:1.35
``busybox@sha256:<hex>``            -> docker.io/library/busybox@sha256:<hex>
``sha256:<hex>`` / ``@sha256:<hex>`` -> a bare digest: "the image with this manifest digest"

The grammar is distribution/reference's (``reference/regexp.go``): the first
path component is a registry only if it contains a ``.`` or a ``:`` or is
``localhost``; repository components are lowercase. Only ``sha256`` digests
are accepted, since it is the only algorithm the store verifies.

Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.images.errors import InvalidImageNameError

__all__ = [
    "DOCKER_HUB",
    "Reference",
    "default_pull_policy",
    "parse_reference",
    "validate_digest",
]

DOCKER_HUB = "docker.io"
#: Where Docker Hub's distribution API actually answers.
DOCKER_HUB_API = "registry-1.docker.io"
_LEGACY_HUB_NAMES = {"index.docker.io", "registry-1.docker.io"}

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME_MAX = 255


def validate_digest(digest: str, what: str = "digest") -> str:
    """``digest`` if it is ``sha256:<64 lowercase hex>``, else InvalidImageNameError."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        algorithm = digest.split(":", 1)[0] if isinstance(digest, str) and ":" in digest else ""
        if algorithm and algorithm != "sha256" and re.match(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*$", algorithm):
            raise InvalidImageNameError(f"{what} {digest!r}: unsupported digest algorithm {algorithm!r} "
                                        "(only sha256)")
        raise InvalidImageNameError(f"{what} {digest!r} is not a sha256 digest (sha256:<64 hex digits>)")
    return digest


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference. ``repository`` is empty for a bare digest."""

    domain: str  # "docker.io", "localhost:5000"; "" for a bare digest
    repository: str  # "library/busybox"; "" for a bare digest
    tag: str | None  # None when only a digest was given
    digest: str | None  # "sha256:<hex>"

    @property
    def name(self) -> str:
        """``docker.io/library/busybox`` (no tag, no digest); "" for a bare digest."""
        return f"{self.domain}/{self.repository}" if self.repository else ""

    @property
    def key(self) -> str:
        """What the store indexes an image under: ``name@digest`` if there is a digest, else ``name:tag``."""
        if self.digest:
            return f"{self.name}@{self.digest}" if self.name else self.digest
        return f"{self.name}:{self.tag}"

    @property
    def api_host(self) -> str:
        """The host[:port] whose ``/v2/`` API serves this repository."""
        return DOCKER_HUB_API if self.domain == DOCKER_HUB else self.domain

    @property
    def api_reference(self) -> str:
        """What goes in ``/v2/<repository>/manifests/<...>``: the digest if any, else the tag."""
        return self.digest or self.tag or "latest"

    def familiar(self) -> str:
        """The short form people type: ``busybox:1.35``, ``user/app:latest``, ``localhost:5000/x:1``."""
        if not self.name:
            return self.digest or ""
        name = self.name
        if self.domain == DOCKER_HUB:
            name = self.repository.removeprefix("library/") if self.repository.count("/") == 1 else self.repository
        suffix = (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return name + suffix

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.repository, tag, None)

    def __str__(self) -> str:
        if not self.name:
            return self.digest or ""
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(text: str) -> Reference:
    """Parse and normalise ``text``; InvalidImageNameError saying why if it is not a reference."""
    if not isinstance(text, str) or not text:
        raise InvalidImageNameError("invalid image reference: empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidImageNameError(f"invalid image reference {text!r}: contains whitespace")
    bare = text.removeprefix("@")
    if bare.startswith("sha256:") and "/" not in bare and "@" not in bare:
        return Reference("", "", None, validate_digest(bare, f"image reference {text!r}:"))
    if text.startswith("@"):
        raise InvalidImageNameError(f"invalid image reference {text!r}: a digest must be sha256:<64 hex digits>")

    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        validate_digest(digest, f"image reference {text!r}: digest")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:  # a colon after the last slash separates the tag; before it is a port
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidImageNameError(f"invalid image reference {text!r}: bad tag {tag!r} "
                                        "(letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')")
    if not rest:
        raise InvalidImageNameError(f"invalid image reference {text!r}: no repository name")

    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
        if not _DOMAIN.match(domain):
            raise InvalidImageNameError(f"invalid image reference {text!r}: bad registry host {domain!r}")
        if domain in _LEGACY_HUB_NAMES:
            domain = DOCKER_HUB
    else:
        domain, path = DOCKER_HUB, rest
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    for component in path.split("/"):
        if not _PATH_COMPONENT.match(component):
            lower = " (repository names must be lowercase)" if component.lower() != component else ""
            raise InvalidImageNameError(f"invalid image reference {text!r}: bad repository component "
                                        f"{component!r}{lower}")
    if len(f"{domain}/{path}") > _NAME_MAX:
        raise InvalidImageNameError(f"invalid image reference {text!r}: name longer than {_NAME_MAX} characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain, path, tag, digest)


def default_pull_policy(reference: str) -> str:
    """Kubernetes' default imagePullPolicy: Always for ``:latest`` or no tag (and no digest), else IfNotPresent."""
    ref = parse_reference(reference)
    if ref.digest:
        return "IfNotPresent"
    explicit_tag = ":" in reference.rsplit("/", 1)[-1]
    return "Always" if not explicit_tag or ref.tag == "latest" else "IfNotPresent"
