"""Mutual TLS on every connection of a lab (issue 7): who is let in, and who is not.

Every refusal is shown next to an acceptance on the same server, so a server that
refuses everything cannot pass for one that checks:

* the scheduler (Cluster API and node protocol) and **every agent** of the shared lab
  refuse a client without a certificate, with one from another CA, and with an
  expired one signed by the lab's own CA; the scheduler refuses a plaintext client;
* an agent admits the scheduler's certificate only: the admin's and another node's,
  though signed by the cluster CA, get PERMISSION_DENIED naming who was refused;
* the lab's etcd refuses a client without etcd's client certificate (plaintext, the
  CA alone, the scheduler's *cluster* certificate);
* ``orchctl`` says in one line which side refused whom (exit 1);
* without TLS material the scheduler and the agent refuse to start, naming the flags;
  ``--insecure`` runs plaintext and warns, in a lab of its own (``lab up --insecure``).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from apimachinery import pki
from apimachinery.errors import UnavailableError
from apimachinery.pb import agent_pb2, agent_pb2_grpc, cluster_pb2, cluster_pb2_grpc
from cli.main import main
from tests.conftest import REPO, LabCluster, running_lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates namespaces and cgroups")


# --- certificates ------------------------------------------------------------------------------


def write_pair(d: Path, name: str, cert: Any, key: Any) -> pki.TLSFiles:
    """``cert`` and ``key`` as PEM files in ``d`` (CA: the lab's, so only the leaf is bad)."""
    crt, k = d / f"{name}.crt", d / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return pki.TLSFiles(crt, k, d / "unused-ca.crt")


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, lab: LabCluster) -> dict[str, pki.TLSFiles]:
    """Client certificates that must not get in: another CA's, and an expired one of the lab's CA
    (each for the admin and for the scheduler, so an agent's refusal is the handshake's, not
    the identity check's)."""
    d = tmp_path_factory.mktemp("bad-certs")
    other = pki.PKI(d / "other")
    other.init()
    lab_ca = pki.PKI(Path(lab_tls(lab)["pkiDir"])).load_ca()
    hours_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    out = {}
    for who, spec in (("admin", pki.admin_spec()), ("scheduler", pki.scheduler_spec())):
        out[f"other-ca-{who}"] = pki.TLSFiles.for_slot(other.dir, who)
        cert, key = pki.issue(lab_ca, spec, 60, now=hours_ago)  # valid for a minute, two hours ago
        out[f"expired-{who}"] = write_pair(d, f"expired-{who}", cert, key)
    return out


def lab_tls(lab: LabCluster) -> dict[str, Any]:
    tls = lab.tls
    assert tls is not None, "the lab runs without TLS"
    return tls


def credentials(files: pki.TLSFiles | None, ca: Path) -> grpc.ChannelCredentials:
    """``files``' certificate presented, ``ca`` trusted (None: no certificate presented)."""
    if files is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    material = pki.load_tls(pki.TLSFiles(files.cert, files.key, ca))
    return material.channel_credentials()


def call(target: str, creds: grpc.ChannelCredentials | None, rpc: str, server_name: str | None = None) -> str:
    """"OK" or the code and details of one call: List nodes (scheduler) or Stats (agent)."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (grpc.secure_channel(target, creds, options=options) if creds is not None
               else grpc.insecure_channel(target))
    try:
        if rpc == "scheduler":
            cluster_pb2_grpc.ClusterStub(channel).List(cluster_pb2.ListRequest(kind="Node"), timeout=10)
        else:
            agent_pb2_grpc.NodeAgentStub(channel).Stats(agent_pb2.StatsRequest(), timeout=10)
        return "OK"
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()}"
    finally:
        channel.close()


def agents(lab: LabCluster) -> Iterator[tuple[str, str]]:
    """(node, HOST:PORT of its agent API) for every node of the lab, as the scheduler dials them."""
    from scheduler.proxy import agent_endpoint

    with lab.client() as c:
        nodes = c.list("Node")[0]
    assert len(nodes) == len(lab.info["agents"])
    for node in nodes:
        endpoint = agent_endpoint(node)
        assert endpoint is not None
        yield node["metadata"]["name"], endpoint


# --- the scheduler and every agent ------------------------------------------------------------


def test_the_scheduler_refuses_clients_without_a_good_certificate(lab: LabCluster,
                                                                  bad: dict[str, pki.TLSFiles]) -> None:
    tls = lab_tls(lab)
    ca = Path(tls["certificateAuthority"])
    admin = pki.TLSFiles.for_slot(Path(tls["pkiDir"]), pki.ADMIN)
    for address in lab.server.split(","):
        assert call(address, credentials(admin, ca), "scheduler") == "OK"
        refused = {"no certificate": call(address, credentials(None, ca), "scheduler"),
                   "another CA": call(address, credentials(bad["other-ca-admin"], ca), "scheduler"),
                   "expired": call(address, credentials(bad["expired-admin"], ca), "scheduler"),
                   "etcd's CA": call(address, credentials(
                       pki.TLSFiles.for_slot(Path(tls["pkiDir"]), pki.ETCD_SCHEDULER_CLIENT), ca), "scheduler"),
                   "plaintext": call(address, None, "scheduler")}
        for what, outcome in refused.items():
            assert outcome.startswith("UNAVAILABLE"), (what, outcome)


def test_every_agent_admits_the_scheduler_only(lab: LabCluster, bad: dict[str, pki.TLSFiles]) -> None:
    tls = lab_tls(lab)
    pki_dir, ca = Path(tls["pkiDir"]), Path(tls["certificateAuthority"])
    scheduler = pki.TLSFiles.for_slot(pki_dir, pki.SCHEDULER)
    names = [a["node"] for a in lab.info["agents"]]
    seen = []
    for node, endpoint in agents(lab):
        seen.append(node)
        assert call(endpoint, credentials(scheduler, ca), "agent", node) == "OK"
        # Refused in the handshake: no certificate, another CA's, an expired one — each the
        # scheduler's own subject, so it is TLS that refuses them, not the identity check.
        for what in ("no certificate", "other-ca-scheduler", "expired-scheduler"):
            files = None if what == "no certificate" else bad[what]
            outcome = call(endpoint, credentials(files, ca), "agent", node)
            assert outcome.startswith("UNAVAILABLE"), (node, what, outcome)
        assert call(endpoint, None, "agent").startswith("UNAVAILABLE")  # plaintext
        # Signed by the cluster CA, but not the scheduler: refused by name.
        outcome = call(endpoint, credentials(pki.TLSFiles.for_slot(pki_dir, pki.ADMIN), ca), "agent", node)
        assert outcome.startswith("PERMISSION_DENIED: user 'admin' (groups system:masters) may not call "
                                  f"/orch.v1.NodeAgent/Stats on node {node}"), outcome
        other = next(n for n in names if n != node)
        outcome = call(endpoint, credentials(pki.TLSFiles.for_slot(pki_dir, pki.node_slot(other)), ca), "agent", node)
        assert outcome.startswith(f"PERMISSION_DENIED: user 'system:node:{other}' (groups system:nodes) may not "
                                  f"call /orch.v1.NodeAgent/Stats on node {node}"), outcome
        # The scheduler checks the agent's certificate for the node's name, not just the CA:
        # another node's agent (a valid certificate) cannot answer for this one.
        assert call(endpoint, credentials(scheduler, ca), "agent", other).startswith("UNAVAILABLE")
    assert sorted(seen) == sorted(names)


def test_orchctl_says_who_refused_whom(lab: LabCluster, bad: dict[str, pki.TLSFiles], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    tls = lab_tls(lab)
    no_config = ["--config", str(tmp_path / "none.yaml"), "--server", lab.server]
    ca = ["--certificate-authority", tls["certificateAuthority"]]

    def orchctl(*args: str) -> str:
        assert main([*no_config, *args, "get", "nodes"]) == 1
        err = capsys.readouterr().err
        lines = err.count("\n") - ("--insecure" in args)  # --insecure: its warning first
        assert lines == 1 and "Traceback" not in err, err  # one line, no gRPC dump
        return err

    server = lab.server.split(",")[0]
    assert orchctl(*ca) == (f"error: TLS handshake with {server} failed: the server refused our certificate: we "
                            "presented none, and the scheduler requires one (--client-certificate and --client-key, "
                            "or clientCertificate and clientKey in the config)\n")
    expired = bad["expired-admin"]
    assert orchctl(*ca, "--client-certificate", str(expired.cert), "--client-key", str(expired.key)).startswith(
        f"error: TLS handshake with {server} failed: the server refused our certificate: {expired.cert} expired at ")
    other = bad["other-ca-admin"]
    assert orchctl(*ca, "--client-certificate", str(other.cert), "--client-key", str(other.key)) == (
        f"error: TLS handshake with {server} failed: the server refused our certificate: {other.cert} is not signed "
        f"by a CA in {tls['certificateAuthority']}, so not by the cluster's CA either\n")
    # The other way round: the server's certificate is not signed by the CA we trust.
    assert orchctl("--certificate-authority", str(other.ca), "--client-certificate", tls["clientCertificate"],
                   "--client-key", tls["clientKey"]) == (
        f"error: TLS handshake with {server} failed: the server's certificate is not signed by the CA in {other.ca}\n")
    assert orchctl("--insecure") == (
        f"warning: --insecure: talking to {lab.server} in plaintext, without TLS: anyone on the path can read and "
        "change what is sent, and whoever serves that address is trusted\n"
        f"error: {server} closed the plaintext connection at once: it most likely requires TLS; connect with "
        "--certificate-authority, --client-certificate and --client-key (or the config's certificateAuthority, "
        "clientCertificate and clientKey) instead of --insecure\n")
    # The admin certificate, from flags or from a config (paths relative to the config's directory).
    assert lab.orchctl("get", "nodes") == 0
    capsys.readouterr()
    config = tmp_path / "conf" / "config.yaml"
    config.parent.mkdir()
    for name in ("ca.crt", "admin.crt", "admin.key"):
        (config.parent / name).write_bytes((Path(tls["pkiDir"]) / name).read_bytes())
    config.write_text(yaml.safe_dump({"server": lab.server, "certificateAuthority": "ca.crt",
                                      "clientCertificate": "admin.crt", "clientKey": "admin.key"}))
    assert main(["--config", str(config), "get", "nodes"]) == 0
    assert "lab-node-1" in capsys.readouterr().out


# --- etcd ------------------------------------------------------------------------------------------


def test_etcd_refuses_a_client_without_the_schedulers_etcd_certificate(lab: LabCluster) -> None:
    from scheduler.store import EtcdTLS, Store

    tls = lab_tls(lab)
    pki_dir = Path(tls["pkiDir"])
    endpoint = str(lab.info["etcd"])
    etcd_ca = Path(tls["etcdCA"])

    async def revision(etcd: EtcdTLS | None) -> int:
        store = Store.connect(endpoint, timeout=5, tls=etcd)
        try:
            return await store.revision()
        finally:
            await store.close()

    async def ca_only() -> str:
        async with grpc.aio.secure_channel(endpoint, grpc.ssl_channel_credentials(etcd_ca.read_bytes())) as ch:
            from aetcd import rpc

            try:
                await rpc.KVStub(ch).Range(rpc.RangeRequest(key=b"/orch/"), timeout=5)
                return "OK"
            except grpc.aio.AioRpcError as e:
                return e.code().name

    async def through_the_fixture() -> int:
        store = lab.etcd_store()
        try:
            return await store.revision()
        finally:
            await store.close()

    assert asyncio.run(revision(EtcdTLS(etcd_ca, Path(tls["etcdCert"]), Path(tls["etcdKey"])))) > 1
    assert asyncio.run(through_the_fixture()) > 1
    with pytest.raises(UnavailableError):
        asyncio.run(revision(None))  # plaintext
    with pytest.raises(UnavailableError):  # the scheduler's cluster certificate: the wrong CA for etcd
        asyncio.run(revision(EtcdTLS(etcd_ca, pki_dir / "scheduler.crt", pki_dir / "scheduler.key")))
    assert asyncio.run(ca_only()) == "UNAVAILABLE"


# --- refusing to run without TLS; --insecure ------------------------------------------------------


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_scheduler_and_agent_refuse_to_start_without_tls_material(tmp_path: Path) -> None:
    done = run_module("scheduler.main", "--etcd", "127.0.0.1:1", "--metrics-listen", "off")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "orch-scheduler: error: no TLS material: give --pki-dir DIR, or --tls-cert-file, --tls-private-key-file and "
        "--client-ca-file (orchctl pki init makes them); or --insecure for plaintext, which lets anyone who can "
        "reach the port own the cluster")
    done = run_module("scheduler.main", "--tls-cert-file", "x.crt", "--metrics-listen", "off")
    assert done.returncode == 2 and "--tls-private-key-file, --client-ca-file missing" in done.stderr
    done = run_module("scheduler.main", "--insecure", "--pki-dir", str(tmp_path), "--metrics-listen", "off")
    assert done.returncode == 2 and "--insecure is plaintext; it cannot be given with --pki-dir" in done.stderr
    done = run_module("scheduler.main", "--pki-dir", str(tmp_path / "absent"), "--metrics-listen", "off")
    assert done.returncode == 1 and f"{tmp_path / 'absent' / 'scheduler.key'}: no such file" in done.stderr

    done = run_module("agent.main", "--node-name", "n1", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 2
    assert "no TLS material: give --pki-dir DIR, or --tls-cert-file, --tls-private-key-file and --ca-file" in done.stderr
    p = pki.PKI(tmp_path / "pki")
    p.init(nodes={"n2": []})
    done = run_module("agent.main", "--node-name", "n1", "--state-dir", str(tmp_path / "state"),
                      "--tls-cert-file", str(p.cert_path("nodes/n2")), "--tls-private-key-file",
                      str(p.key_path("nodes/n2")), "--ca-file", str(p.ca_cert_path()))
    assert done.returncode == 1 and "is the certificate of system:node:n2, not of node n1" in done.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was made


def test_lab_up_insecure_is_plaintext_everywhere_and_says_so(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with running_lab(tmp_path / "lab", 1, "insecure-lab-logs", insecure=True) as lab:
        assert lab.info["tls"] == {"enabled": False} and lab.tls is None
        assert not (tmp_path / "lab" / "pki").exists()
        with lab.client() as c:
            assert [n["metadata"]["name"] for n in c.list("Node")[0]] == ["lab-node-1"]
        assert lab.orchctl("get", "nodes") == 0  # with --insecure
        captured = capsys.readouterr()
        assert "lab-node-1" in captured.out
        assert captured.err.startswith(f"warning: --insecure: talking to {lab.server} in plaintext")
        scheduler_log = Path(lab.info["schedulers"][0]["log"]).read_text()
        assert "WARNING scheduler: --insecure: the Cluster API and the node protocol are served in PLAINTEXT" in \
            scheduler_log and "anyone who can reach these ports owns the cluster" in scheduler_log
        agent_log = Path(lab.agent("lab-node-1")["log"]).read_text()
        assert "WARNING agent: node lab-node-1: --insecure: PLAINTEXT to the schedulers" in agent_log
        # A TLS client gets told the server does not speak TLS.
        other = pki.PKI(tmp_path / "other")
        other.init()
        assert main(["--config", str(tmp_path / "none.yaml"), "--server", lab.server, "--certificate-authority",
                     str(other.ca_cert_path()), "--client-certificate", str(other.cert_path("admin")),
                     "--client-key", str(other.key_path("admin")), "get", "nodes"]) == 1
        assert capsys.readouterr().err == (f"error: TLS handshake with {lab.server} failed: the server does not "
                                           "speak TLS (a scheduler started with --insecure? then pass --insecure "
                                           "too)\n")
        # lab status says so, and orchctl's config for the lab is plaintext.
        assert main(["lab", "status", "--dir", str(lab.dir)]) == 0
        assert "tls:      OFF (lab up --insecure)" in capsys.readouterr().out


# --- flags and config, without a cluster ---------------------------------------------------------


def test_flags_resolve_to_the_pki_layout_and_refuse_what_does_not_fit() -> None:
    from agent.main import node_tls
    from agent.main import parse_args as agent_args
    from scheduler.main import TLSConfigError, etcd_tls, parse_args, serving_tls
    from scheduler.store import EtcdTLS

    p = Path("/p")
    args = parse_args(["--pki-dir", "/p"])
    assert serving_tls(args) == pki.TLSFiles(p / "scheduler.crt", p / "scheduler.key", p / "ca.crt")
    assert etcd_tls(args) is None  # a bare HOST:PORT is plaintext
    args = parse_args(["--pki-dir", "/p", "--tls-cert-file", "/x.crt", "--etcd", "https://10.0.0.1:2379"])
    assert serving_tls(args) == pki.TLSFiles(Path("/x.crt"), p / "scheduler.key", p / "ca.crt")
    assert etcd_tls(args) == EtcdTLS(p / "etcd/ca.crt", p / "etcd/scheduler-client.crt",
                                     p / "etcd/scheduler-client.key")
    assert serving_tls(parse_args(["--insecure"])) is None
    for argv, message in ((["--etcd-cafile", "/ca"], "missing: --etcd-certfile, --etcd-keyfile"),
                          (["--etcd", "http://h:1", "--etcd-cafile", "/ca"], "is plaintext; it cannot be given"),
                          (["--etcd", "unix://x"], "expected HOST:PORT, http://HOST:PORT or https://HOST:PORT")):
        with pytest.raises(TLSConfigError, match=message):
            etcd_tls(parse_args(argv))

    assert node_tls(agent_args(["--node-name", "n1", "--pki-dir", "/p"])) == pki.TLSFiles(
        p / "nodes/n1.crt", p / "nodes/n1.key", p / "ca.crt")
    assert node_tls(agent_args(["--node-name", "n1", "--insecure"])) is None
    with pytest.raises(ValueError, match="invalid node name"):
        node_tls(agent_args(["--node-name", "Node_1", "--pki-dir", "/p"]))
    with pytest.raises(ValueError, match="--insecure is plaintext; it cannot be given with --ca-file"):
        node_tls(agent_args(["--node-name", "n1", "--insecure", "--ca-file", "/ca"]))


def test_orchctl_config_holds_tls_files_and_a_token_and_flags_beat_it(tmp_path: Path) -> None:
    from cli.client import ClientTLS
    from cli.config import Config, ConfigError, load_config, resolve_credentials, save_config

    path = tmp_path / "orch" / "config.yaml"
    config = Config(server="h:1", lab_dir="/l", certificate_authority="/p/ca.crt", client_certificate="/p/admin.crt",
                    client_key="/p/admin.key", token="s3cret")
    save_config(path, config)
    assert load_config(path) == config
    assert path.stat().st_mode & 0o777 == 0o600  # it may hold a token
    assert yaml.safe_load(path.read_text())["clientCertificate"] == "/p/admin.crt"  # kubeconfig's spelling

    creds = resolve_credentials(config, client_certificate="/flag.crt", token="t2")
    assert creds.tls == ClientTLS(Path("/p/ca.crt"), Path("/flag.crt"), Path("/p/admin.key")) and creds.token == "t2"
    assert resolve_credentials(config, insecure=True).tls is None
    assert resolve_credentials(Config(server="h:1", insecure=True)).tls is None
    assert resolve_credentials(Config()).tls == ClientTLS()  # TLS with the system's roots: never plaintext unasked
    with pytest.raises(ConfigError, match="--insecure is plaintext: it cannot be used with --certificate-authority"):
        resolve_credentials(config, certificate_authority="/ca.crt", insecure=True)
    path.write_text("server: h:1\ninsecure: yes please\n")
    with pytest.raises(ConfigError, match="'insecure' must be true or false"):
        load_config(path)
    path.write_text("server: h:1\nclientKey: [a]\n")
    with pytest.raises(ConfigError, match="'clientKey' must be a file path"):
        load_config(path)


def test_the_token_is_sent_as_bearer_authorization_metadata() -> None:
    import concurrent.futures

    from cli.client import ClusterClient

    seen: list[dict[str, str]] = []

    class Cluster(cluster_pb2_grpc.ClusterServicer):
        def List(self, request: Any, context: grpc.ServicerContext) -> Any:
            seen.append(dict(context.invocation_metadata()))
            return cluster_pb2.ListResponse()

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    cluster_pb2_grpc.add_ClusterServicer_to_server(Cluster(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with ClusterClient(f"127.0.0.1:{port}", token="abc.def") as c:
            c.list("Pod")
        with ClusterClient(f"127.0.0.1:{port}") as c:
            c.list("Pod")
    finally:
        server.stop(None)
    assert seen[0]["authorization"] == "Bearer abc.def"
    assert "authorization" not in seen[1]
