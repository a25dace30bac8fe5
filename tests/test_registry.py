"""Pull and push against a real registry: Debian's ``docker-registry`` (distribution 2.8) on loopback.

The registry runs as a subprocess with a config of our own — filesystem
storage in a temp dir, ``127.0.0.1:<free port>``, no auth — and is killed by
its pid in the fixture's finalizer. Images are pushed with our own ``push``
and pulled into fresh stores. A small stdlib HTTP proxy in front of it adds
Docker Hub's bearer-token challenge, so that code path runs against real
registry content too. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.images import ImageError, ImagePullError, ImageStore, oci
from agent.images.registry import RegistryClient, push
from tests import imagebuild as ib
from tests.imagebuild import requires_busybox, requires_root, tree
from tests.registry_fixture import Registry, requires_registry

pytestmark = [requires_root, requires_busybox, requires_registry]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    """A store holding the test images to push."""
    d = tmp_path_factory.mktemp("source")
    store = ImageStore(d / "store")
    store.import_archive(ib.write_oci_layout(d / "layout", [(ib.busybox_image(), "busybox:1.35"),
                                                           (ib.whiteout_image(), "wh:1")]))
    return store


def _image(store: ImageStore, ref: str):  # type: ignore[no-untyped-def]
    image = store.resolve(ref)
    assert image is not None, ref
    return image


def test_push_then_pull_by_tag_and_by_digest(registry: Registry, source: ImageStore, tmp_path: Path) -> None:
    bb = _image(source, "busybox:1.35")
    assert push(source, f"{registry.host}/test/busybox:1.35", bb, insecure_http=True) == bb.digest
    # Pushing again uploads nothing new and yields the same digest.
    assert push(source, f"{registry.host}/test/busybox:1.35", bb, insecure_http=True) == bb.digest

    fresh = ImageStore(tmp_path / "fresh")
    ref = fresh.pull(f"{registry.host}/test/busybox:1.35", insecure_http=True)
    assert (ref.reference, ref.digest) == (f"{registry.host}/test/busybox:1.35", bb.digest)
    pulled = _image(fresh, f"{registry.host}/test/busybox:1.35")
    assert pulled.config == bb.config
    [layer] = fresh.layer_dirs(pulled)
    assert (layer / "bin/busybox").read_bytes() == ib.BUSYBOX.read_bytes()

    other = ImageStore(tmp_path / "other")
    by_digest = other.pull(f"{registry.host}/test/busybox@{bb.digest}", insecure_http=True)
    assert by_digest.digest == bb.digest
    assert _image(other, bb.digest).reference == f"{registry.host}/test/busybox@{bb.digest}"


def test_docker_hub_names_through_a_mirror(registry: Registry, source: ImageStore, tmp_path: Path) -> None:
    bb = _image(source, "busybox:1.35")
    push(source, f"{registry.host}/library/busybox:1.35", bb, insecure_http=True)
    fresh = ImageStore(tmp_path / "fresh")
    # "busybox:1.35" is docker.io/library/busybox:1.35; the mirror serves library/busybox.
    image = fresh.ensure("busybox:1.35", "IfNotPresent", registry_mirror=registry.url)
    assert image.digest == bb.digest and image.reference == "docker.io/library/busybox:1.35"


def test_pull_chooses_this_platform_from_an_index(registry: Registry, source: ImageStore, tmp_path: Path) -> None:
    host_image = _image(source, "busybox:1.35")
    foreign_arch = "s390x" if oci.host_platform().architecture != "s390x" else "arm64"
    foreign = ib.build_image([ib.busybox_layer()], architecture=foreign_arch)
    source.import_archive(ib.write_oci_layout(tmp_path / "foreign", [(foreign, "busybox:foreign")]))
    foreign_image = _image(source, "busybox:foreign")
    repo = f"{registry.host}/test/multi"
    for image in (host_image, foreign_image):
        push(source, f"{repo}@{image.digest}", image, insecure_http=True)
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
        {"mediaType": oci.OCI_MANIFEST, "digest": foreign_image.digest, "size": len(source.manifest_bytes(foreign_image)),
         "platform": {"os": "linux", "architecture": foreign_arch}},
        {"mediaType": oci.OCI_MANIFEST, "digest": host_image.digest, "size": len(source.manifest_bytes(host_image)),
         "platform": {"os": "linux", "architecture": oci.host_platform().architecture}},
    ]}).encode()
    index_digest = RegistryClient(registry.url).put_manifest("test/multi", "1", index, oci.OCI_INDEX)

    fresh = ImageStore(tmp_path / "fresh")
    assert fresh.pull(f"{repo}:1", insecure_http=True).digest == host_image.digest
    pulled = _image(fresh, f"{repo}:1")
    assert pulled.index_digest == index_digest and pulled.config.architecture == oci.host_platform().architecture
    assert _image(fresh, f"{repo}@{index_digest}").digest == host_image.digest  # the repo digest resolves too
    assert (fresh.root / "blobs/sha256" / index_digest.split(":")[1]).exists()


def test_a_tampered_blob_in_the_registry_is_refused(registry: Registry, source: ImageStore, tmp_path: Path) -> None:
    # An image of its own, so no other test shares the blob we damage.
    unique = ib.build_image([ib.make_layer([*ib.busybox_entries(), ib.file("etc/unique", "tamper test")])])
    source.import_archive(ib.write_oci_layout(tmp_path / "u", [(unique, "tamper:1")]))
    push(source, f"{registry.host}/test/tamper:1", _image(source, "tamper:1"), insecure_http=True)
    blob = registry.blob_file(unique.layers[0].digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    blob.write_bytes(bytes(data))
    tampered_digest = ib.sha256(bytes(data))

    fresh = ImageStore(tmp_path / "fresh")
    before = tree(fresh.root)
    with pytest.raises(ImageError) as err:
        fresh.pull(f"{registry.host}/test/tamper:1", insecure_http=True)
    message = str(err.value)
    assert "digest mismatch" in message
    assert unique.layers[0].digest in message and tampered_digest in message
    assert tree(fresh.root) == before  # no blob, no layer, no index entry
    assert fresh.resolve(f"{registry.host}/test/tamper:1") is None


def test_pull_errors_name_the_problem(registry: Registry, tmp_path: Path) -> None:
    fresh = ImageStore(tmp_path / "fresh")
    with pytest.raises(ImagePullError, match=r"not found \(MANIFEST_UNKNOWN") as err:
        fresh.pull(f"{registry.host}/test/absent:1", insecure_http=True)
    assert err.value.status == 404 and err.value.reason == "ErrImagePull"
    with pytest.raises(ImagePullError, match="cannot reach registry"):
        # HTTPS against a plain-HTTP registry: a clear transport error, not a hang.
        RegistryClient(f"https://{registry.host}", timeout=5).ping()


def test_always_sees_a_moved_tag_if_not_present_does_not(registry: Registry, source: ImageStore,
                                                          tmp_path: Path) -> None:
    bb, wh = _image(source, "busybox:1.35"), _image(source, "wh:1")
    ref = f"{registry.host}/test/moving:latest"
    push(source, ref, bb, insecure_http=True)
    node = ImageStore(tmp_path / "node")
    assert node.ensure(ref, "Always", insecure_http=True).digest == bb.digest
    push(source, ref, wh, insecure_http=True)  # the tag moves
    assert node.ensure(ref, "IfNotPresent", insecure_http=True).digest == bb.digest
    assert node.ensure(ref, None, insecure_http=True).digest == wh.digest  # :latest defaults to Always


# ---------------------------------------------------------------- bearer tokens


@dataclass
class TokenProxy:
    """A read-only front for the registry that demands a bearer token, like Docker Hub."""

    registry: Registry
    token: str = "orch-test-token"
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # method, path, authorized
    server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def token_proxy(registry: Registry) -> Iterator[TokenProxy]:
    proxy = TokenProxy(registry)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.handle_any("HEAD")

        def do_GET(self) -> None:
            self.handle_any("GET")

        def handle_any(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/token":
                proxy.token_requests.append(urllib.parse.parse_qs(url.query))
                body = json.dumps({"token": proxy.token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            authorized = self.headers.get("Authorization") == f"Bearer {proxy.token}"
            proxy.requests.append((method, url.path, authorized))
            if not authorized:
                m = re.match(r"^/v2/(.+)/(manifests|blobs)/", url.path)
                scope = f',scope="repository:{m.group(1)}:pull"' if m else ""
                self.send_response(401)
                self.send_header("WWW-Authenticate",
                                 f'Bearer realm="http://{proxy.host}/token",service="orch-test"{scope}')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            req = urllib.request.Request(f"{proxy.registry.url}{self.path}", method=method,
                                         headers={k: v for k, v in self.headers.items() if k in ("Accept",)})
            try:
                resp = direct.open(req, timeout=10)
            except urllib.error.HTTPError as e:
                resp = e
            with resp:
                body = resp.read()
                self.send_response(resp.status)
                for k in ("Content-Type", "Docker-Content-Digest"):
                    if resp.headers.get(k):
                        self.send_header(k, resp.headers[k])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(body)

    proxy.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.server.serve_forever, name="token-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
        thread.join(5)


def test_bearer_token_challenge_and_blob_reuse(token_proxy: TokenProxy, source: ImageStore, tmp_path: Path) -> None:
    bb = _image(source, "busybox:1.35")
    push(source, f"{token_proxy.registry.host}/test/private:1", bb, insecure_http=True)
    fresh = ImageStore(tmp_path / "fresh")
    ref = f"{token_proxy.host}/test/private:1"
    assert fresh.pull(ref, insecure_http=True).digest == bb.digest
    assert token_proxy.token_requests == [{"service": ["orch-test"], "scope": ["repository:test/private:pull"]}]
    first, *rest = token_proxy.requests
    assert not first[2] and all(authorized for _, _, authorized in rest)  # one challenge, then the token
    assert {path.split("/")[4] for _, path, _ in rest} == {"manifests", "blobs"}

    # Pulling again (Always) fetches the manifest only: blobs and layers are already here.
    token_proxy.requests.clear()
    assert fresh.ensure(ref, "Always", insecure_http=True).digest == bb.digest
    assert {path.split("/")[4] for _method, path, _auth in token_proxy.requests} == {"manifests"}
