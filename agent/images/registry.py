"""A client of the OCI distribution API (``/v2/``), standard library only: pull manifests and blobs, push images.

Pulling (``ImageStore.pull`` drives it): ``get_manifest`` asks for a tag or
digest with an ``Accept`` of every manifest and index type we read, checks
the body against the digest asked for (or the registry's
``Docker-Content-Digest`` for a tag), and ``open_blob`` streams a blob, which
the store hashes while it writes it to its staging area.

Pushing (``push``): each blob the registry lacks (``HEAD`` says 404) goes up
as a monolithic upload — ``POST /v2/<name>/blobs/uploads/`` then ``PUT
<Location>&digest=<digest>`` with the whole blob — then the manifest's exact
stored bytes are ``PUT`` under the tag, so its digest does not change.

Auth: anonymous, plus the bearer-token dance of Docker Hub and most
registries: a 401 with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``
is answered by an anonymous ``GET realm?service=...&scope=...`` and the
request retried with ``Authorization: Bearer <token>``. The header is never
forwarded on a redirect (blob downloads redirect to CDNs, which reject it).
A ``Basic`` challenge (credentials required) is a clear error.

Transport: HTTPS with the system's CAs, or plain HTTP with ``insecure_http``
(a loopback test registry). Loopback hosts bypass any HTTP proxy from the
environment. Every failure is an ``ImagePullError`` naming the registry, the
repository and what the registry said.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from pathlib import Path
from typing import IO, TYPE_CHECKING

from agent.images import oci
from agent.images.errors import ImageError, ImagePullError, InvalidImageNameError
from agent.images.reference import Reference, parse_reference

if TYPE_CHECKING:
    from agent.images.store import Image, ImageStore

__all__ = ["MANIFEST_ACCEPT", "RegistryClient", "push"]

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = f"{oci.OCI_MANIFEST}, {oci.OCI_INDEX}, {oci.DOCKER_MANIFEST}, {oci.DOCKER_LIST}"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """One registry endpoint (``https://host[:port]``); anonymous pulls, token auth, pushes."""

    def __init__(self, endpoint: str, *, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ImagePullError(f"registry endpoint {endpoint!r} is not an http(s) URL")
        self.endpoint = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.host = parsed.netloc
        self.timeout = timeout
        handlers: list[urllib.request.BaseHandler] = []
        if _is_loopback(parsed.netloc):
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)
        self._tokens: dict[str, str] = {}  # scope -> bearer token
        self._token: str | None = None  # the last one granted: tried first on the next request

    @classmethod
    def for_reference(cls, ref: Reference, *, insecure_http: bool = False,
                      registry_mirror: str | None = None, timeout: float = 30.0) -> RegistryClient:
        if registry_mirror:
            return cls(registry_mirror, timeout=timeout)
        return cls(f"{'http' if insecure_http else 'https'}://{ref.api_host}", timeout=timeout)

    # ---------------------------------------------------------------- requests

    def _url(self, repository: str, kind: str, ref: str = "") -> str:
        return f"{self.endpoint}/v2/{repository}/{kind}/{ref}"

    def _open(self, method: str, url: str, *, headers: dict[str, str] | None = None,
              body: bytes | Path | None = None, ok: tuple[int, ...] = (200,)) -> HTTPResponse:
        """One request, retried once with a bearer token after a 401 challenge; non-``ok`` -> ImagePullError."""
        for attempt in (0, 1):
            data: bytes | IO[bytes] | None
            if isinstance(body, Path):
                data = open(body, "rb")  # noqa: SIM115 - closed below; reopened for a retry
            else:
                data = body
            req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
            if isinstance(body, Path):
                req.add_header("Content-Length", str(body.stat().st_size))
            if self._token:
                # Unredirected: a redirect to another host (a CDN) must not get our token.
                req.add_unredirected_header("Authorization", f"Bearer {self._token}")
            try:
                resp = self._opener.open(req, timeout=self.timeout)
            except urllib.error.HTTPError as e:
                if e.code == 401 and attempt == 0 and self._authenticate(e.headers.get("WWW-Authenticate", ""), url):
                    e.close()
                    continue
                raise self._error(method, url, e) from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise ImagePullError(f"cannot reach registry {self.host} ({method} {url}): {reason}") from e
            finally:
                if not isinstance(data, (bytes, type(None))):
                    data.close()
            if resp.status not in ok:
                resp.close()
                raise ImagePullError(f"registry {self.host}: {method} {url}: unexpected HTTP {resp.status}")
            return resp
        raise ImagePullError(f"registry {self.host}: {method} {url}: still unauthorized after authenticating")

    def _error(self, method: str, url: str, e: urllib.error.HTTPError) -> ImagePullError:
        """An HTTP error with the registry's own error codes and messages (``{"errors": [...]}``)."""
        try:
            payload = json.loads(e.read(1 << 16) or b"{}")
            details = "; ".join(f"{err.get('code', '?')}: {err.get('message', '')}"
                                for err in payload.get("errors", []) if isinstance(err, dict))
        except (ValueError, AttributeError, OSError):
            details = ""
        finally:
            e.close()
        what = {401: "unauthorized (this registry needs credentials)", 403: "forbidden", 404: "not found"}.get(
            e.code, f"HTTP {e.code}")
        return ImagePullError(f"registry {self.host}: {method} {url}: {what}" + (f" ({details})" if details else ""),
                              status=e.code)

    def _authenticate(self, challenge: str, url: str) -> bool:
        """Answer a ``Bearer`` challenge with an anonymous token; False if there is nothing we can answer."""
        scheme, _, params_text = challenge.strip().partition(" ")
        if scheme.lower() == "basic":
            raise ImagePullError(f"registry {self.host} wants Basic auth for {url}; "
                                 "orch pulls anonymously and has no credentials for it")
        if scheme.lower() != "bearer":
            return False
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        realm = params.get("realm")
        if not realm:
            raise ImagePullError(f"registry {self.host}: bearer challenge without a realm: {challenge!r}")
        scope = params.get("scope", "")
        if scope in self._tokens:
            self._token = self._tokens[scope]
            return True
        query = {k: v for k, v in (("service", params.get("service")), ("scope", scope or None)) if v}
        token_url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        opener = self._opener if _is_loopback(urllib.parse.urlsplit(realm).netloc) else urllib.request.build_opener()
        try:
            with opener.open(urllib.request.Request(token_url), timeout=self.timeout) as resp:
                doc = json.loads(resp.read(1 << 20))
        except urllib.error.HTTPError as e:
            raise self._error("GET", token_url, e) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ImagePullError(f"registry {self.host}: cannot get a token from {realm}: {e}") from e
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise ImagePullError(f"registry {self.host}: the token service {realm} answered without a token")
        self._tokens[scope] = self._token = token
        return True

    # ---------------------------------------------------------------- pull

    def ping(self) -> None:
        """``GET /v2/``: the registry speaks the distribution API (and we may talk to it)."""
        self._open("GET", f"{self.endpoint}/v2/").close()

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index by tag or digest, its digest verified."""
        with self._open("GET", self._url(repository, "manifests", reference),
                        headers={"Accept": MANIFEST_ACCEPT}) as resp:
            body = resp.read(oci.MAX_MANIFEST_BYTES + 1)
            media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
            claimed = resp.headers.get("Docker-Content-Digest")
        if len(body) > oci.MAX_MANIFEST_BYTES:
            raise ImageError(f"registry {self.host}: manifest {repository}:{reference} is over "
                             f"{oci.MAX_MANIFEST_BYTES} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = reference if reference.startswith("sha256:") else claimed
        if expected and expected.startswith("sha256:") and expected != digest:
            raise ImageError(f"registry {self.host}: manifest {repository}@{reference}: blob digest mismatch: "
                             f"expected {expected}, got {digest}")
        return body, media_type, digest

    @contextlib.contextmanager
    def open_blob(self, repository: str, digest: str) -> Iterator[IO[bytes]]:
        """A stream of the blob; the caller hashes and checks it (``ImageStore`` does)."""
        with self._open("GET", self._url(repository, "blobs", digest)) as resp:
            yield resp

    # ---------------------------------------------------------------- push

    def blob_exists(self, repository: str, digest: str) -> bool:
        try:
            self._open("HEAD", self._url(repository, "blobs", digest)).close()
        except ImagePullError as e:
            if e.status == 404:
                return False
            raise
        return True

    def upload_blob(self, repository: str, digest: str, path: Path) -> None:
        """A monolithic upload: POST for an upload URL, then PUT the whole blob to it with its digest."""
        with self._open("POST", f"{self.endpoint}/v2/{repository}/blobs/uploads/", body=b"", ok=(202,)) as resp:
            location = resp.headers.get("Location")
        if not location:
            raise ImagePullError(f"registry {self.host}: upload for {repository} started without a Location")
        url = urllib.parse.urljoin(self.endpoint + "/", location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        self._open("PUT", url, body=path, headers={"Content-Type": "application/octet-stream"},
                   ok=(201, 204)).close()

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest (or index) under a tag or its digest; the digest the registry computed."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        with self._open("PUT", self._url(repository, "manifests", reference), body=body,
                        headers={"Content-Type": media_type}, ok=(201, 200)) as resp:
            claimed = resp.headers.get("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise ImagePullError(f"registry {self.host}: stored manifest {repository}:{reference} as {claimed}, "
                                 f"but its bytes have digest {digest}")
        return digest


def push(store: ImageStore, reference: str, image: Image, *, insecure_http: bool = False,
         registry_mirror: str | None = None) -> str:
    """Push ``image`` from ``store`` to the registry and repository ``reference`` names; its manifest digest.

    The tag of ``reference`` (``latest`` if it has none) names it there; a
    reference with a digest must carry ``image``'s own. Blobs the registry
    already has are not uploaded again.
    """
    ref = parse_reference(reference)
    if not ref.name:
        raise InvalidImageNameError(f"cannot push to {reference!r}: a bare digest names no repository")
    if ref.digest and ref.digest != image.digest:
        raise InvalidImageNameError(f"cannot push image {image.digest} as {reference!r}: the digest differs")
    client = RegistryClient.for_reference(ref, insecure_http=insecure_http, registry_mirror=registry_mirror)
    for desc in (*image.layers, image.config_descriptor):
        if client.blob_exists(ref.repository, desc.digest):
            continue
        client.upload_blob(ref.repository, desc.digest, store.blob_path(desc.digest))
    digest = client.put_manifest(ref.repository, ref.digest or ref.tag or "latest", store.manifest_bytes(image),
                                 image.media_type)
    log.info("pushed %s as %s (%s)", image.reference, ref, digest)
    return digest
