"""The cluster PKI (apimachinery/pki.py, ``orchctl pki``) proven with real TLS.

The certificates are checked the way their users will check them: gRPC (BoringSSL)
servers on 127.0.0.1 that require a client certificate, gRPC channels that present
one, and a real etcd (Go's crypto/tls) started with ``--client-cert-auth``. A
refusal is always shown next to an acceptance on the same server, so a server
that refuses everything cannot pass for one that checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from apimachinery import pki
from apimachinery.pki import PKI, LeafSpec, PkiError, TLSFiles
from cli.main import main
from tests.etcd_fixture import _free_port, etcd_binary

REPO = Path(__file__).resolve().parent.parent
UTC = datetime.UTC


@pytest.fixture
def cluster(tmp_path: Path) -> PKI:
    """A PKI directory as ``orchctl pki init`` makes it, with two nodes."""
    p = PKI(tmp_path / "pki")
    p.init(scheduler_sans=["10.0.0.1", "sched.lab"], nodes={"node-a": ["10.1.0.2"], "node-b": []})
    return p


def files(p: PKI, slot: str, *, ca: Path | None = None) -> TLSFiles:
    f = TLSFiles.for_slot(p.dir, slot)
    return TLSFiles(f.cert, f.key, ca or f.ca)


# --- a gRPC server that says who called ---------------------------------------------------


async def _who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    identity = pki.peer_identity(context)
    return json.dumps(None if identity is None else
                      {"user": identity.user, "groups": list(identity.groups), "node": identity.node_name}).encode()


@contextlib.asynccontextmanager
async def tls_server(credentials: grpc.ServerCredentials) -> AsyncIterator[int]:
    """A grpc.aio server on a free loopback port with one method, ``/t.Who/Am``; its port."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "t.Who", {"Am": grpc.unary_unary_rpc_method_handler(_who)})])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port, "no port"
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def call(port: int, credentials: grpc.ChannelCredentials, channel: grpc.aio.Channel | None = None) -> Any:
    """The identity the server saw, or the AioRpcError raised."""
    async def once(ch: grpc.aio.Channel) -> Any:
        return json.loads(await ch.unary_unary("/t.Who/Am")(b"", timeout=10))

    if channel is not None:
        return await once(channel)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as ch:
        return await once(ch)


async def refused(port: int, credentials: grpc.ChannelCredentials) -> str:
    """Assert the server refuses this client; the gRPC status it got."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call(port, credentials)
    # A refused handshake is UNAVAILABLE on the client ("Socket closed" / "Tls handshake failed").
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    return str(e.value.details())


def client(f: TLSFiles) -> grpc.ChannelCredentials:
    return pki.load_tls(f).channel_credentials()


def served_certificate(port: int, f: TLSFiles) -> x509.Certificate:
    """The certificate the server presents, from a real handshake with Python's ssl (HTTP/2's ALPN)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(f.ca))
    ctx.load_cert_chain(str(f.cert), str(f.key))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# --- the certificates themselves --------------------------------------------------------------


def test_init_makes_the_kubeadm_like_layout_and_every_leaf_verifies(cluster: PKI) -> None:
    names = {p.relative_to(cluster.dir).as_posix() for p in cluster.dir.rglob("*") if p.is_file()}
    assert names == {
        "ca.crt", "ca.key", "scheduler.crt", "scheduler.key", "admin.crt", "admin.key",
        "nodes/node-a.crt", "nodes/node-a.key", "nodes/node-b.crt", "nodes/node-b.key",
        "etcd/ca.crt", "etcd/ca.key", "etcd/server.crt", "etcd/server.key",
        "etcd/scheduler-client.crt", "etcd/scheduler-client.key"}
    ca = cluster.load_ca("cluster")
    etcd_ca = cluster.load_ca("etcd")
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert bc.critical and bc.value.ca and ku.key_cert_sign and ku.crl_sign
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    assert ca.cert.subject != etcd_ca.cert.subject

    for slot in cluster.leaf_slots():
        cert = pki.read_cert(cluster.cert_path(slot))
        own, other = (etcd_ca, ca) if slot.startswith("etcd/") else (ca, etcd_ca)
        assert pki.check(cert, own.bundle) is None, slot
        assert pki.check(cert, other.bundle) == "not signed by a CA of the trust bundle", slot
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert pki.same_key(cert, pki.read_key(cluster.key_path(slot)))

    def usages(slot: str) -> set[Any]:
        cert = pki.read_cert(cluster.cert_path(slot))
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    both = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert usages("scheduler") == both and usages("nodes/node-a") == both and usages("etcd/server") == both
    assert usages("admin") == usages("etcd/scheduler-client") == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_scheduler_certificate_serves_every_san_and_always_loopback(cluster: PKI) -> None:
    """cryptography's own (WebPKI-strict) verifier, as a second opinion beside BoringSSL's."""
    ca = cluster.load_ca()
    cert = pki.read_cert(cluster.cert_path("scheduler"))
    builder = verification.PolicyBuilder().store(verification.Store(list(ca.bundle)))
    for subject in (verification.DNSName("localhost"), verification.DNSName("sched.lab"),
                    verification.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    verification.IPAddress(ipaddress.ip_address("10.0.0.1"))):
        chain = builder.build_server_verifier(subject).verify(cert, [])
        assert chain[-1] == ca.cert
    with pytest.raises(verification.VerificationError):
        builder.build_server_verifier(verification.DNSName("elsewhere.lab")).verify(cert, [])
    node = pki.read_cert(cluster.cert_path("nodes/node-a"))
    assert pki.describe_sans(node) == ["localhost", "node-a", "127.0.0.1", "10.1.0.2"]


def test_serials_are_random_and_validity_is_configurable_and_capped_by_the_ca(tmp_path: Path) -> None:
    now = datetime.datetime.now(UTC)
    cert, key = pki.create_ca(validity=3600, now=now)
    ca = pki.CA(cert, key)
    a, _ = pki.issue(ca, pki.admin_spec(), 90, now=now)
    b, _ = pki.issue(ca, pki.admin_spec(), 90, now=now)
    assert a.serial_number != b.serial_number and a.serial_number > 2**64
    assert a.not_valid_after_utc == (now + datetime.timedelta(seconds=90)).replace(microsecond=0)
    # Backdated for clock skew between machines.
    assert a.not_valid_before_utc <= now - datetime.timedelta(seconds=pki.CLOCK_SKEW - 1)
    long, _ = pki.issue(ca, pki.admin_spec(), 10 * 365 * 86400, now=now)
    assert long.not_valid_after_utc == cert.not_valid_after_utc

    assert pki.expires_within(a, 91, now) and not pki.expires_within(a, 80, now)
    assert pki.expires_within(a, 0, now + datetime.timedelta(seconds=91))
    assert str(pki.check(a, [cert], now + datetime.timedelta(seconds=91))).startswith("expired at")
    assert pki.check(a, [cert], now) is None


def test_key_files_are_0600_from_the_moment_they_exist(tmp_path: Path) -> None:
    """In a child with umask 0, an audit hook looks at the key's temporary file the first
    time the writer touches it after creating it (its fchmod, or else its rename) and
    records its mode then: a file created 0644 and tightened later would show 0644."""
    script = f"""
import os, stat, sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from apimachinery import pki
seen = []
def hook(event, args):
    if event == "os.chmod" and isinstance(args[0], int) and not seen:
        seen.append(("fchmod", stat.S_IMODE(os.fstat(args[0]).st_mode)))
    elif event == "os.rename" and ".tmp-" in str(args[0]) and not seen:
        seen.append(("rename", stat.S_IMODE(os.stat(args[0]).st_mode)))
os.umask(0)
sys.addaudithook(hook)
pki.write_key(Path({str(tmp_path / "x.key")!r}), pki.new_key())
print(seen[0][1])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 0o600
    assert (tmp_path / "x.key").stat().st_mode & 0o777 == 0o600


def test_files_have_their_modes_and_no_temporary_is_left(cluster: PKI) -> None:
    old_umask = os.umask(0o077)  # even a tight umask leaves certificates readable: others verify them
    try:
        cluster.rotate("admin")
    finally:
        os.umask(old_umask)
    for path in cluster.dir.rglob("*"):
        if path.is_file():
            assert not path.name.startswith("."), f"temporary left: {path}"
            assert path.stat().st_mode & 0o777 == (0o600 if path.suffix == ".key" else 0o644), path


def test_identity_helpers(cluster: PKI) -> None:
    node = pki.identity_of(pki.read_cert(cluster.cert_path("nodes/node-a")))
    assert node == pki.Identity("system:node:node-a", ("system:nodes",)) and node.node_name == "node-a"
    admin = pki.identity_of(pki.read_cert(cluster.cert_path("admin")))
    assert admin.user == "admin" and admin.is_admin and admin.node_name is None
    assert pki.identity_of(pki.read_cert(cluster.cert_path("scheduler"))).is_scheduler
    user = cluster.issue(pki.user_slot("alice"), pki.user_spec("alice", ["dev", "ops", "dev"]))
    assert pki.identity_from_pem(user.cert_path.read_bytes()) == pki.Identity("alice", ("dev", "ops"))
    # The node name needs both the system:node: prefix and the system:nodes group (NodeRestriction's rule).
    forged, _ = pki.issue(cluster.load_ca(), LeafSpec("system:node:node-b", ("dev",), client=True))
    assert pki.identity_of(forged).node_name is None


@pytest.mark.parametrize("bad, message", [
    (lambda: pki.node_spec("Node_A"), "invalid node name"),
    (lambda: pki.node_spec("n" * 53), "at most 52"),
    (lambda: pki.user_spec("system:evil"), "reserved"),
    (lambda: pki.user_spec("a/b"), "invalid user name 'a/b'"),
    (lambda: pki.user_spec("bob", ["ok", "bad group"]), "invalid group 'bad group'"),
    (lambda: pki.scheduler_spec(["not a name"]), "neither an IP address nor a DNS name"),
    (lambda: pki.parse_duration("10 days"), "invalid duration '10 days'"),
    (lambda: pki.parse_duration("0s"), "must be more than 0"),
    (lambda: pki.parse_duration("inf"), "at most 100y"),
    (lambda: pki.parse_duration("nan"), "must be more than 0"),
])
def test_bad_names_and_durations_are_refused_with_the_reason(bad: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bad()


_PROPERTY_CA = pki.CA(*pki.create_ca())


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=30))
def test_any_duration_or_san_text_parses_or_gets_a_clear_error(text: str) -> None:
    try:
        assert 0 < pki.parse_duration(text) <= pki.MAX_VALIDITY
    except ValueError as e:
        assert str(e).startswith(f"invalid duration {text.strip()!r}")
    try:
        value = pki.parse_san(text)
    except ValueError as e:
        assert "is neither an IP address nor a DNS name" in str(e)
    else:  # whatever is accepted can be written into a certificate and read back
        dns, ips = pki.split_sans([value], loopback=False)
        cert, _ = pki.issue(_PROPERTY_CA, LeafSpec("x", (), dns, ips, server=True), key=_PROPERTY_CA.key)
        assert pki.describe_sans(cert) == [str(value)]


def test_parse_duration() -> None:
    assert pki.parse_duration("90") == 90 and pki.parse_duration("1d12h") == 36 * 3600
    assert pki.parse_duration("10y") == 10 * 365 * 86400 and pki.parse_duration("500ms") == 0.5


def test_load_tls_refuses_a_key_of_another_certificate(cluster: PKI) -> None:
    mixed = TLSFiles(cluster.cert_path("admin"), cluster.key_path("nodes/node-a"), cluster.ca_cert_path())
    with pytest.raises(PkiError, match="node-a.key does not belong to .*admin.crt"):
        pki.load_tls(mixed, attempts=2, pause=0)
    material = pki.load_tls(files(cluster, "admin"))
    assert material.root_certificates == cluster.ca_cert_path().read_bytes()


def test_a_ca_key_that_matches_no_certificate_of_the_bundle_is_a_clear_error(cluster: PKI) -> None:
    shutil.copy(cluster.key_path("etcd/ca"), cluster.key_path("ca"))
    with pytest.raises(PkiError, match="ca.key belongs to none of the 1 certificate"):
        cluster.load_ca()


# --- mutual TLS, for real ----------------------------------------------------------------------


def test_mtls_accepts_cluster_clients_and_refuses_the_rest(cluster: PKI, tmp_path: Path) -> None:
    other = PKI(tmp_path / "other")
    other.init(nodes={"node-a": []})
    ca = cluster.load_ca()
    past = datetime.datetime.now(UTC) - datetime.timedelta(hours=2)
    expired, key = pki.issue(ca, pki.node_spec("node-a"), 3600, now=past)  # expired an hour ago
    pki.write_key(tmp_path / "expired.key", key)
    pki.write_certs(tmp_path / "expired.crt", [expired])
    cluster_ca = cluster.ca_cert_path().read_bytes()

    async def scenario() -> None:
        server = pki.load_tls(files(cluster, "scheduler")).server_credentials(require_client_auth=True)
        async with tls_server(server) as port:
            assert await call(port, client(files(cluster, "nodes/node-a"))) == {
                "user": "system:node:node-a", "groups": ["system:nodes"], "node": "node-a"}
            assert await call(port, client(files(cluster, "admin"))) == {
                "user": "admin", "groups": ["system:masters"], "node": None}
            await refused(port, grpc.ssl_channel_credentials(root_certificates=cluster_ca))  # no certificate
            await refused(port, client(files(other, "nodes/node-a", ca=cluster.ca_cert_path())))  # another CA
            await refused(port, client(TLSFiles(tmp_path / "expired.crt", tmp_path / "expired.key",
                                                cluster.ca_cert_path())))
            # etcd's CA is not the cluster's: the scheduler's etcd client certificate opens nothing here.
            await refused(port, client(files(cluster, "etcd/scheduler-client", ca=cluster.ca_cert_path())))
            # And the client checks the server: one that trusts another CA does not talk to this server.
            await refused(port, client(files(cluster, "admin", ca=other.ca_cert_path())))
            assert (await call(port, client(files(cluster, "nodes/node-b"))))["node"] == "node-b"

    asyncio.run(scenario())


def test_leaf_rotation_new_key_and_serial_and_both_accepted_during_the_overlap(cluster: PKI) -> None:
    old = pki.load_tls(files(cluster, "nodes/node-a"))  # what a running agent holds
    old_cert = x509.load_pem_x509_certificate(old.certificate_chain)
    new = cluster.rotate("nodes/node-a")
    new_files = files(cluster, "nodes/node-a")
    assert new.cert.serial_number != old_cert.serial_number
    new_key = pki.read_key(cluster.key_path("nodes/node-a"))
    assert pki.same_key(new.cert, new_key) and not pki.same_key(old_cert, new_key)
    assert pki.spec_of(new.cert) == pki.spec_of(old_cert)
    assert (new.cert.not_valid_after_utc - new.cert.not_valid_before_utc) == \
           (old_cert.not_valid_after_utc - old_cert.not_valid_before_utc)

    async def scenario() -> None:
        server = pki.load_tls(files(cluster, "scheduler")).server_credentials()
        async with tls_server(server) as port:
            assert (await call(port, old.channel_credentials()))["node"] == "node-a"
            assert (await call(port, client(new_files)))["node"] == "node-a"

    asyncio.run(scenario())


def test_a_server_picks_up_its_rotated_certificate_without_dropping_a_connection(cluster: PKI) -> None:
    scheduler = files(cluster, "scheduler")
    node = files(cluster, "nodes/node-a")

    async def scenario() -> None:
        async with tls_server(pki.reloading_server_credentials(scheduler)) as port:
            before = await asyncio.to_thread(served_certificate, port, node)
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client(node)) as open_channel:
                assert (await call(port, client(node), open_channel))["node"] == "node-a"
                rotated = cluster.rotate("scheduler")
                after = await asyncio.to_thread(served_certificate, port, node)
                assert before.serial_number != after.serial_number == rotated.cert.serial_number
                # The connection opened before the rotation goes on working.
                assert (await call(port, client(node), open_channel))["node"] == "node-a"
            assert (await call(port, client(node)))["node"] == "node-a"

    asyncio.run(scenario())


def test_a_trust_bundle_of_two_cas_accepts_clients_of_both(cluster: PKI, tmp_path: Path) -> None:
    other = PKI(tmp_path / "other")
    other.init(nodes={"node-z": []})
    bundle = tmp_path / "bundle.crt"
    pki.write_certs(bundle, [*pki.read_certs(cluster.ca_cert_path()), *pki.read_certs(other.ca_cert_path())])
    third = PKI(tmp_path / "third")
    third.init(nodes={"node-y": []})

    async def scenario() -> None:
        server = pki.load_tls(files(cluster, "scheduler", ca=bundle)).server_credentials()
        async with tls_server(server) as port:
            assert (await call(port, client(files(cluster, "nodes/node-a", ca=bundle))))["node"] == "node-a"
            assert (await call(port, client(files(other, "nodes/node-z", ca=bundle))))["node"] == "node-z"
            await refused(port, client(files(third, "nodes/node-y", ca=bundle)))

    asyncio.run(scenario())


def test_ca_rotation_through_a_bundle_with_a_server_that_never_restarts(cluster: PKI) -> None:
    """The documented procedure, step by step, against one reloading server."""
    node_a = files(cluster, "nodes/node-a")

    async def scenario() -> None:
        async with tls_server(pki.reloading_server_credentials(files(cluster, "scheduler"))) as port:
            old_ca = cluster.load_ca().cert
            # 1. A new CA signs; ca.crt trusts both. Components reload the bundle.
            new_ca = cluster.begin_ca_rotation().cert
            assert pki.read_certs(cluster.ca_cert_path()) == [new_ca, old_ca]
            with pytest.raises(PkiError, match="rotation is under way"):
                cluster.begin_ca_rotation()
            old_leaf = pki.load_tls(node_a)  # node-a: old certificate, new bundle
            assert (await call(port, old_leaf.channel_credentials()))["node"] == "node-a"
            cluster.issue(pki.node_slot("node-c"), pki.node_spec("node-c"))  # signed by the new CA
            assert (await call(port, client(files(cluster, "nodes/node-c"))))["node"] == "node-c"
            with pytest.raises(PkiError, match="still signed by an old CA: admin.crt, .*nodes/node-a.crt"):
                cluster.finish_ca_rotation()
            # 2. Every leaf again, from the new CA; the server reloads its own on the next handshake.
            for slot in cluster.leaf_slots():
                if not slot.startswith("etcd/"):
                    cluster.rotate(slot)
            assert cluster.stale_leaves() == []
            assert (await call(port, old_leaf.channel_credentials()))["node"] == "node-a"  # still in the overlap
            # 3. Only the new CA: the old leaf is refused, the new one accepted.
            cluster.finish_ca_rotation()
            assert pki.read_certs(cluster.ca_cert_path()) == [new_ca]
            await refused(port, old_leaf.channel_credentials())
            assert (await call(port, client(node_a)))["node"] == "node-a"
            assert pki.check(pki.read_cert(cluster.cert_path("scheduler")), [new_ca]) is None

    asyncio.run(scenario())


# --- etcd, with Go's TLS --------------------------------------------------------------------


@contextlib.contextmanager
def tls_etcd(p: PKI) -> Iterator[int]:
    """etcd on a free loopback port serving etcd/server.crt with ``--client-cert-auth
    --trusted-ca-file etcd/ca.crt`` (as the lab will start it); killed by PID at the end."""
    work = Path(tempfile.mkdtemp(prefix="orch-test-etcd-tls-"))
    client_port, peer_port = _free_port(), _free_port()
    log = open(work / "etcd.log", "wb")
    proc = subprocess.Popen(
        [etcd_binary(), "--name", "t", "--data-dir", str(work / "data"),
         "--listen-client-urls", f"https://127.0.0.1:{client_port}",
         "--advertise-client-urls", f"https://127.0.0.1:{client_port}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-cluster", f"t=http://127.0.0.1:{peer_port}", "--log-level", "warn",
         "--cert-file", str(p.cert_path("etcd/server")), "--key-file", str(p.key_path("etcd/server")),
         "--client-cert-auth", "--trusted-ca-file", str(p.ca_cert_path("etcd"))],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield client_port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def test_etcd_accepts_only_the_schedulers_etcd_client_certificate(cluster: PKI) -> None:
    from aetcd import rpc  # type: ignore[import-untyped]

    async def range_with(port: int, credentials: grpc.ChannelCredentials) -> int:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as ch:
            reply = await rpc.KVStub(ch).Range(rpc.RangeRequest(key=b"/x"), timeout=5)
            return int(reply.header.revision)

    async def scenario(port: int) -> None:
        good = client(files(cluster, "etcd/scheduler-client"))
        deadline = time.monotonic() + 30
        while True:  # etcd takes a moment to serve; a refusal of the good client is only that
            try:
                assert await range_with(port, good) >= 1
                break
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        etcd_ca = cluster.ca_cert_path("etcd").read_bytes()
        for credentials in (grpc.ssl_channel_credentials(root_certificates=etcd_ca),
                            client(files(cluster, "nodes/node-a", ca=cluster.ca_cert_path("etcd"))),
                            client(files(cluster, "scheduler", ca=cluster.ca_cert_path("etcd")))):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await range_with(port, credentials)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE

    with tls_etcd(cluster) as port:
        asyncio.run(scenario(port))


# --- orchctl pki -------------------------------------------------------------------------------


def test_orchctl_pki_init_show_issue_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d), "--scheduler-san", "10.0.0.1,sched.lab",
                 "--node", "node-a=10.1.0.2", "--node", "node-b", "--validity", "90s"]) == 0
    out = capsys.readouterr().out
    assert "scheduler.crt: CN=system:scheduler,O=system:schedulers (SANs localhost,sched.lab,127.0.0.1,10.0.0.1" in out
    assert "nodes/node-a.crt: CN=system:node:node-a,O=system:nodes" in out
    ca_before = (d / "ca.crt").read_bytes()

    assert main(["pki", "init", "--dir", str(d)]) == 1
    assert "already holds a CA" in capsys.readouterr().err
    assert (d / "ca.crt").read_bytes() == ca_before

    assert main(["pki", "issue", "user", "alice", "--group", "dev", "--group", "ops", "--dir", str(d)]) == 0
    assert "users/alice.crt: CN=alice,O=dev,O=ops" in capsys.readouterr().out
    assert main(["pki", "issue", "node", "node-c", "--address", "10.1.0.4", "--dir", str(d)]) == 0
    capsys.readouterr()
    assert main(["pki", "issue", "node", "node-c", "--dir", str(d)]) == 1
    assert "nodes/node-c.crt already exists: `orchctl pki rotate node node-c`" in capsys.readouterr().err

    serial = pki.read_cert(d / "nodes/node-a.crt").serial_number
    assert main(["pki", "rotate", "node", "node-a", "--dir", str(d)]) == 0
    assert f"replaces serial {serial:x}" in capsys.readouterr().out
    assert pki.read_cert(d / "nodes/node-a.crt").serial_number != serial

    assert main(["pki", "show", "--dir", str(d)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["CERTIFICATE", "SUBJECT", "SANS", "NOT", "AFTER", "DAYS", "LEFT", "STATUS"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {"admin.crt", "ca.crt", "etcd/ca.crt", "etcd/scheduler-client.crt", "etcd/server.crt",
                         "nodes/node-a.crt", "nodes/node-b.crt", "nodes/node-c.crt", "scheduler.crt",
                         "users/alice.crt"}
    assert "expires soon" in rows["nodes/node-a.crt"] and rows["nodes/node-a.crt"].split()[-3] == "0"
    assert "ok, signing CA" in rows["ca.crt"]
    assert "localhost,node-c,127.0.0.1,10.1.0.4" in rows["nodes/node-c.crt"]

    assert main(["pki", "show", "--dir", str(d), "-o", "json"]) == 0
    shown = {r["certificate"]: r for r in json.loads(capsys.readouterr().out)}
    assert shown["users/alice.crt"]["subject"] == "CN=alice,O=dev,O=ops" and shown["users/alice.crt"]["daysLeft"] == 364
    assert 0 < shown["admin.crt"]["secondsLeft"] <= 90


def test_orchctl_pki_ca_rotation_and_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d), "--node", "node-a"]) == 0
    assert main(["pki", "issue", "user", "bob", "--dir", str(d)]) == 0
    assert main(["pki", "rotate", "ca", "--dir", str(d)]) == 0
    assert len(pki.read_certs(d / "ca.crt")) == 2
    assert main(["pki", "rotate", "ca", "--finish", "--dir", str(d)]) == 1
    assert "still signed by an old CA" in capsys.readouterr().err
    assert main(["pki", "rotate", "all", "--dir", str(d)]) == 0
    assert main(["pki", "rotate", "ca", "--finish", "--dir", str(d)]) == 0
    assert len(pki.read_certs(d / "ca.crt")) == 1
    capsys.readouterr()

    # --force: new CAs, and every leaf already here (bob too) issued again from them.
    old_ca = pki.read_cert(d / "ca.crt")
    assert main(["pki", "init", "--dir", str(d), "--force"]) == 0
    p = PKI(d)
    assert p.load_ca().cert != old_ca
    assert all(e.problem is None for e in p.entries()), [(e.name, e.problem) for e in p.entries()]
    assert pki.identity_of(pki.read_cert(d / "users/bob.crt")).user == "bob"


def test_show_reports_expired_and_untrusted_certificates(cluster: PKI, capsys: pytest.CaptureFixture[str]) -> None:
    past = datetime.datetime.now(UTC) - datetime.timedelta(days=3)
    PKI(cluster.dir, now=lambda: past).issue(pki.node_slot("old"), pki.node_spec("old"), 86400)
    stranger = PKI(cluster.dir.parent / "stranger")
    stranger.init()
    cluster.cert_path("users/eve").parent.mkdir()
    shutil.copy(stranger.cert_path("admin"), cluster.cert_path("users/eve"))
    shutil.copy(stranger.key_path("admin"), cluster.key_path("users/eve"))
    assert main(["pki", "show", "--dir", str(cluster.dir), "-o", "json"]) == 0
    shown = {r["certificate"]: r for r in json.loads(capsys.readouterr().out)}
    assert shown["nodes/old.crt"]["status"].startswith("expired at") and shown["nodes/old.crt"]["daysLeft"] == -2
    assert shown["users/eve.crt"]["status"] == "not signed by a CA of the trust bundle"


@pytest.mark.parametrize("argv, message", [
    (["pki", "init", "--node", "Bad_Name"], "argument --node: invalid node name"),
    (["pki", "init", "--node", "a=10.0.0.1", "--node", "a"], "argument --node: node 'a' given twice"),
    (["pki", "init", "--node", "a=10.0.0.1,no way"], "argument --node: 'no way' is neither an IP"),
    (["pki", "init", "--validity", "3q"], "argument --validity: invalid duration '3q'"),
    (["pki", "init", "--ca-validity=0s"], "argument --ca-validity: invalid duration '0s': must be more than 0"),
    (["pki", "init", "--scheduler-san", "sched_1"], "argument --scheduler-san: 'sched_1' is neither"),
    (["pki", "issue", "user", "system:evil"], "argument NAME: invalid user name 'system:evil'"),
    (["pki", "issue", "user", "bob", "--group", "a b"], "argument --group: invalid group 'a b'"),
    (["pki", "issue", "group", "x"], "argument node|user: invalid choice: 'group'"),
    (["pki", "rotate"], "the following arguments are required: node|user|scheduler"),
    (["pki", "rotate", "node"], "the following arguments are required: NAME"),
])
def test_orchctl_pki_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                   message: str) -> None:
    assert main([*argv, "--dir", str(tmp_path / "pki")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "pki").exists()


def test_orchctl_pki_errors_about_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "show", "--dir", str(d)]) == 1
    assert f"error: {d}: no such directory" in capsys.readouterr().err
    assert main(["pki", "issue", "node", "a", "--dir", str(d)]) == 1
    assert f"error: {d}/ca.crt: no such certificate file" in capsys.readouterr().err
    assert main(["pki", "init", "--dir", str(d)]) == 0
    assert main(["pki", "rotate", "node", "ghost", "--dir", str(d)]) == 1
    assert "nodes/ghost.crt: no such certificate to rotate" in capsys.readouterr().err
    assert main(["pki", "rotate", "ca", "--force", "--dir", str(d)]) == 1
    assert "--force only goes with --finish" in capsys.readouterr().err


def test_orchctl_pki_as_a_real_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "cli.main", "pki", "init", "--dir", str(tmp_path / "pki"),
                           "--node", "n1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "nodes/n1.crt: CN=system:node:n1,O=system:nodes" in done.stdout
