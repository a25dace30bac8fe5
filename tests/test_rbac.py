"""Users, roles and the audit log of the Cluster API (scheduler/auth.py, scheduler/audit.py),
on real parts: a real etcd, the real ClusterService in a grpc.aio server on a TLS port with
``pki.reloading_server_credentials`` over a PKI made here, and clients presenting real user
certificates (CN = user, O = groups) or a bearer token of a real token file.

Every refusal is checked three ways: its status code, its message (which names the missing
permission, kubectl-style), and etcd's revision, which must not move.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from apimachinery import pki
from apimachinery.pb import agent_pb2
from apimachinery.pb import cluster_pb2 as pb
from apimachinery.pb import cluster_pb2_grpc
from apimachinery.pki import PKI, TLSFiles
from scheduler import auth
from scheduler.api import ClusterService, add_cluster_service
from scheduler.audit import AuditLog
from scheduler.registry import Registry
from scheduler.store import Store
from tests.etcd_fixture import EtcdServer, running_etcd
from tests.fuzzing import SERVER_OPTIONS, ApiServer

#: Users with certificates, and their groups (the certificate's O).
USERS = {"vic": ["viewers"], "alice": ["team-a"], "ada": ["ops"], "bob": []}

BINDINGS = """\
bindings:
- name: viewers
  role: view
  clusterWide: true
  groups: [viewers]
- name: team-a-editors
  role: edit
  namespaces: [team-a]
  groups: [team-a]
- name: team-b-editors
  role: edit
  namespaces: [team-b]
  groups: [team-b]
- name: ops-admin
  role: admin
  clusterWide: true
  users: [ada]
"""

CAROL_TOKEN = "carol-0123456789abcdef"
TOKENS = f"""\
# token,user,uid,groups
{CAROL_TOKEN},carol,1001,"team-b,contractors"
"""


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """The cluster's PKI: scheduler, admin, node-a, and a certificate per user of USERS."""
    p = PKI(tmp_path_factory.mktemp("rbac") / "pki")
    p.init(nodes={"node-a": []})
    for name, groups in USERS.items():
        p.issue(pki.user_slot(name), pki.user_spec(name, groups))
    return p


def pod(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "main", "image": "host", "command": ["sleep", "1000"]}]}}


def deployment(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "main", "image": "host"}]}}}}


# --- a secure Cluster API server -------------------------------------------------------------------


class SecureApi(ApiServer):
    """tests/fuzzing.py's ApiServer on a TLS port (or plaintext), with the scheduler's
    access control built from its command-line flags (``auth.add_arguments``/``from_args``)."""

    def __init__(self, etcd: EtcdServer, cluster: PKI, workdir: Path, *, require_client_auth: bool = True,
                 plaintext: bool = False, flags: tuple[str, ...] = ()) -> None:
        self.pki = cluster
        self.require_client_auth = require_client_auth
        self.plaintext = plaintext
        (workdir / "bindings.yaml").write_text(BINDINGS)
        (workdir / "tokens.csv").write_text(TOKENS)
        self.audit_path = workdir / "audit.log"
        parser = argparse.ArgumentParser()
        auth.add_arguments(parser)
        args = parser.parse_args(["--authorization-config", str(workdir / "bindings.yaml"),
                                  "--token-auth-file", str(workdir / "tokens.csv"),
                                  "--audit-log-path", str(self.audit_path), *flags])
        self.access = auth.from_args(args)
        try:
            super().__init__(etcd, etcd.prefix())
        except BaseException:
            self.access.close()
            raise

    async def _start(self) -> None:
        self.store = Store.connect(self.etcd.endpoint, self.prefix)
        self.service = ClusterService(Registry(self.store), self.access)
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        add_cluster_service(self.server, self.service)
        if self.plaintext:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = pki.reloading_server_credentials(TLSFiles.for_slot(self.pki.dir, pki.SCHEDULER),
                                                           require_client_auth=self.require_client_auth)
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        await self.server.start()

    def client(self, slot: str | None = None, token: str | None = None) -> Client:
        """A client with the certificate of ``slot`` (``admin``, ``users/alice``, …), a token, both or neither."""
        if self.plaintext:
            channel = grpc.insecure_channel(self.address)
        else:
            ca = self.pki.ca_cert_path().read_bytes()
            if slot is None:
                credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            else:
                credentials = pki.load_tls(TLSFiles.for_slot(self.pki.dir, slot)).channel_credentials()
            channel = grpc.secure_channel(self.address, credentials)
        return Client(channel, token)

    def records(self) -> list[dict[str, Any]]:
        """Every audit record so far."""
        assert self.access.audit is not None
        self.access.audit.flush()
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.access.close()


class Client:
    def __init__(self, channel: grpc.Channel, token: str | None) -> None:
        self.channel = channel
        self.stub = cluster_pb2_grpc.ClusterStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token is not None else None

    def apply(self, *objs: dict[str, Any], dry_run: bool = False) -> list[str]:
        reply = self.stub.Apply(pb.ApplyRequest(objects_json=[json.dumps(o) for o in objs], dry_run=dry_run),
                                metadata=self.metadata, timeout=10)
        return [r.action for r in reply.results]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        reply = self.stub.Get(pb.GetRequest(kind=kind, namespace=namespace, name=name), metadata=self.metadata,
                              timeout=10)
        return dict(json.loads(reply.object_json))

    def list(self, kind: str, namespace: str = "") -> list[str]:
        reply = self.stub.List(pb.ListRequest(kind=kind, namespace=namespace), metadata=self.metadata, timeout=10)
        return sorted(f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
                      for o in map(json.loads, reply.items_json))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.stub.Delete(pb.DeleteRequest(kind=kind, namespace=namespace, name=name), metadata=self.metadata,
                         timeout=10)

    def patch_node(self, name: str, patch: dict[str, Any]) -> None:
        self.stub.PatchNode(pb.PatchNodeRequest(name=name, spec_patch_json=json.dumps(patch)),
                            metadata=self.metadata, timeout=10)

    def watch_first(self, kind: str, namespace: str = "") -> str:
        """Open a watch and read its first event (a matching object must exist), then cancel it."""
        call = self.stub.Watch(pb.WatchRequest(kind=kind, namespace=namespace), metadata=self.metadata, timeout=10)
        try:
            return str(next(call).type)  # raises the refusal
        finally:
            call.cancel()

    def logs(self, namespace: str, name: str) -> None:
        list(self.stub.PodLogs(agent_pb2.LogsRequest(namespace=namespace, pod=name), metadata=self.metadata,
                               timeout=10))

    def exec(self, namespace: str, name: str) -> None:
        start = agent_pb2.ExecInput(start=agent_pb2.ExecStart(namespace=namespace, pod=name, command=["true"]))
        list(self.stub.PodExec(iter([start]), metadata=self.metadata, timeout=10))

    def import_image(self, node: str = "") -> None:
        list(self.stub.ImportImage(iter([agent_pb2.ImageChunk(data=b"not a tarball", node=node)]),
                                   metadata=self.metadata, timeout=10))

    def top(self, kind: str, namespace: str = "") -> None:
        self.stub.Top(pb.TopRequest(kind=kind, namespace=namespace), metadata=self.metadata, timeout=10)

    def close(self) -> None:
        self.channel.close()


def refused(code: grpc.StatusCode, call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """Assert ``call`` fails with ``code``; its message."""
    with pytest.raises(grpc.RpcError) as e:
        call(*args, **kwargs)
    err: Any = e.value
    assert err.code() == code, f"{err.code()}: {err.details()}"
    return str(err.details())


def denied(call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    return refused(grpc.StatusCode.PERMISSION_DENIED, call, *args, **kwargs)


def not_denied(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """``call`` gets past authorisation: it succeeds, or fails for another reason (no agent here)."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as e:
        err: Any = e
        assert err.code() not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), err.details()


@pytest.fixture
def make_api(etcd: EtcdServer, cluster: PKI, tmp_path: Path) -> Iterator[Callable[..., SecureApi]]:
    made: list[SecureApi] = []

    def make(**kwargs: Any) -> SecureApi:
        workdir = tmp_path / f"api{len(made)}"
        workdir.mkdir()
        api = SecureApi(etcd, cluster, workdir, **kwargs)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api: Callable[..., SecureApi]) -> SecureApi:
    """A TLS server that requires a client certificate, as the scheduler's."""
    return make_api()


USER_ALICE = 'user "alice" (groups: team-a)'


# --- roles ---------------------------------------------------------------------------------------------


def test_a_viewer_reads_but_cannot_write(api: SecureApi) -> None:
    admin, vic = api.client("admin"), api.client("users/vic")
    assert admin.apply(pod("web", "team-a"), deployment("site", "team-b")) == ["created", "created"]

    assert vic.get("pods", "team-a", "web")["metadata"]["name"] == "web"
    assert vic.list("pods", "team-a") == ["team-a/web"]
    assert vic.list("deployments") == ["team-b/site"]  # a cluster-wide binding: every namespace
    assert [n.split("/")[1] for n in vic.list("nodes")] == []  # cluster-scoped reads too
    assert vic.watch_first("pods") == "ADDED"
    not_denied(vic.logs, "team-a", "web")  # view reads logs, as Kubernetes' view (docs/rbac.md)

    before = api.revision()
    who = 'user "vic" (groups: viewers)'
    assert denied(vic.apply, pod("new", "team-a")) == f'{who} cannot create or update pods in namespace "team-a"'
    assert denied(vic.apply, pod("new", "team-a"), dry_run=True) == (
        f'{who} cannot create or update pods in namespace "team-a"')
    assert denied(vic.apply, pod("web", "team-a", tier="front")) == (
        f'{who} cannot create or update pods in namespace "team-a"')
    assert denied(vic.delete, "pods", "team-a", "web") == f'{who} cannot delete pods in namespace "team-a"'
    assert denied(vic.delete, "deploy", "team-b", "site") == f'{who} cannot delete deployments in namespace "team-b"'
    assert denied(vic.patch_node, "node-a", {"unschedulable": True}) == f"{who} cannot patch nodes at the cluster scope"
    assert denied(vic.exec, "team-a", "web") == f'{who} cannot create pods/exec in namespace "team-a"'
    assert api.revision() == before, "a refused request wrote to etcd"
    assert not admin.get("pods", "team-a", "web")["metadata"].get("labels")


def test_an_editor_of_one_namespace_stays_in_it(api: SecureApi) -> None:
    admin, alice = api.client("admin"), api.client("users/alice")
    admin.apply(pod("other", "team-b"), deployment("site", "team-b"))

    assert alice.apply(pod("web", "team-a"), deployment("site", "team-a")) == ["created", "created"]
    assert alice.apply(pod("web", "team-a", tier="front")) == ["configured"]
    assert alice.apply(pod("dry", "team-a"), dry_run=True) == ["created"]
    assert alice.list("pods", "team-a") == ["team-a/web"]  # the dry run wrote nothing
    assert alice.watch_first("pods", "team-a") == "ADDED"
    not_denied(alice.logs, "team-a", "web")  # allowed: fails on, as the pod has no node
    not_denied(alice.exec, "team-a", "web")
    alice.delete("pods", "team-a", "web")
    assert alice.list("pods", "team-a") == []

    before = api.revision()
    # The same words whether the object exists or not: alice may not know what team-b holds.
    assert denied(alice.apply, pod("web", "team-b")) == (
        f'{USER_ALICE} cannot create or update pods in namespace "team-b"')
    assert denied(alice.apply, pod("other", "team-b", tier="front")) == (
        f'{USER_ALICE} cannot create or update pods in namespace "team-b"')
    # One object out of bounds refuses the whole Apply: the team-a pod is not created either.
    assert denied(alice.apply, pod("ok", "team-a"), pod("x", "team-b"), deployment("y", "team-c")) == (
        f'{USER_ALICE} cannot create or update pods in namespace "team-b", '
        'nor create or update deployments in namespace "team-c"')
    assert denied(alice.delete, "deployments", "team-b", "site") == (
        f'{USER_ALICE} cannot delete deployments in namespace "team-b"')
    assert denied(alice.get, "pods", "team-b", "other") == f'{USER_ALICE} cannot get pods in namespace "team-b"'
    assert denied(alice.list, "pods", "team-b") == f'{USER_ALICE} cannot list pods in namespace "team-b"'
    assert denied(alice.list, "pods") == f"{USER_ALICE} cannot list pods across all namespaces"
    assert denied(alice.watch_first, "pods") == f"{USER_ALICE} cannot watch pods across all namespaces"
    assert denied(alice.logs, "team-b", "other") == f'{USER_ALICE} cannot get pods/log in namespace "team-b"'
    assert denied(alice.exec, "team-b", "other") == f'{USER_ALICE} cannot create pods/exec in namespace "team-b"'
    assert denied(alice.top, "pods") == f"{USER_ALICE} cannot get pods/metrics across all namespaces"
    assert denied(alice.list, "nodes") == f"{USER_ALICE} cannot list nodes at the cluster scope"
    assert denied(alice.import_image) == f"{USER_ALICE} cannot create images at the cluster scope"
    assert api.revision() == before, "a refused request wrote to etcd"
    assert admin.list("pods", "team-a") == []
    assert admin.list("pods", "team-b") == ["team-b/other"]


def test_admin_cluster_admin_schedulers_and_nodes(api: SecureApi) -> None:
    admin, ada = api.client("admin"), api.client("users/ada")
    api.put_node("node-a")

    # admin, bound cluster-wide: every namespaced kind everywhere, but not the cluster-scoped writes.
    assert ada.apply(pod("p", "team-b"), deployment("d", "team-c")) == ["created", "created"]
    assert ada.list("pods") == ["team-b/p"]
    ada.delete("deployments", "team-c", "d")
    assert ada.list("nodes") == ["/node-a"]
    who = 'user "ada" (groups: ops)'
    assert denied(ada.patch_node, "node-a", {"unschedulable": True}) == f"{who} cannot patch nodes at the cluster scope"
    assert denied(ada.import_image) == f"{who} cannot create images at the cluster scope"

    # system:masters (admin.crt) can do everything.
    admin.patch_node("node-a", {"unschedulable": True})
    assert admin.get("nodes", "", "node-a")["spec"]["unschedulable"] is True
    not_denied(admin.import_image, "node-a")  # allowed; the node has no agent to take it
    admin.delete("pods", "team-b", "p")
    assert admin.list("pods") == []

    # The scheduler (system:schedulers) too; a node has no Cluster API access at all.
    assert api.client("scheduler").list("nodes") == ["/node-a"]
    node = api.client("nodes/node-a")
    assert denied(node.get, "nodes", "", "node-a") == (
        'user "system:node:node-a" (groups: system:nodes) cannot get nodes at the cluster scope: '
        "nodes have no access to the Cluster API")
    denied(node.list, "pods", "default")
    # bob has a certificate and no binding: authenticated, allowed nothing.
    assert denied(api.client("users/bob").list, "pods", "default") == (
        'user "bob" cannot list pods in namespace "default"')


def test_a_role_with_create_but_not_update_has_the_object_looked_up(api: SecureApi) -> None:
    """No built-in role grants one of the two; an Apply then needs to know which it is."""
    create_only = auth.Role("create-only", (auth.Rule(("create",), ("pods",)),), "create pods, change nothing")
    api.access.authorizer = auth.Authorizer([auth.Binding("creators", create_only, users=frozenset({"bob"}),
                                                          namespaces=frozenset({"team-a"}))])
    bob = api.client("users/bob")
    assert bob.apply(pod("p", "team-a")) == ["created"]
    assert denied(bob.apply, pod("p", "team-a", tier="front")) == 'user "bob" cannot update pods in namespace "team-a"'
    assert [(r["verb"], r["decision"]) for r in api.records()] == [("create", "allow"), ("update", "deny")]


def test_bearer_tokens(api: SecureApi) -> None:
    """On the mutual-TLS port a certificate gets a caller through the handshake; a token,
    when sent, says who the caller is (scheduler/auth.py's gotchas: why not kube's order)."""
    carol = api.client("users/bob", token=CAROL_TOKEN)
    assert carol.apply(pod("c", "team-b")) == ["created"]
    assert carol.list("pods", "team-b") == ["team-b/c"]
    before = api.revision()
    assert denied(carol.apply, pod("c", "team-a")) == (
        'user "carol" (groups: team-b, contractors) cannot create or update pods in namespace "team-a"')
    # A bad token is refused, never passed over for the certificate's user.
    guessed = api.client("admin", token="guessed")
    assert refused(grpc.StatusCode.UNAUTHENTICATED, guessed.list, "pods", "team-b") == "invalid bearer token"
    assert refused(grpc.StatusCode.UNAUTHENTICATED, guessed.apply, pod("g", "team-b")) == "invalid bearer token"
    basic = api.client("admin")
    basic.metadata = (("authorization", "Basic Y2Fyb2w6cHc="),)
    assert refused(grpc.StatusCode.UNAUTHENTICATED, basic.list, "pods", "team-b") == (
        'malformed authorization header: expected "Bearer <token>"')
    assert api.revision() == before
    [created, refusal, *unauthenticated] = api.records()
    assert (created["user"], created["uid"], created["authenticatedBy"], created["certificate"]) == (
        "carol", "1001", "token", "bob")
    assert (refusal["user"], refusal["decision"]) == ("carol", "deny")
    assert [(r["method"], r["code"]) for r in unauthenticated] == [
        ("List", "UNAUTHENTICATED"), ("Apply", "UNAUTHENTICATED"), ("List", "UNAUTHENTICATED")]


def test_a_tls_port_without_client_certificates(make_api: Callable[..., SecureApi]) -> None:
    """``require_client_auth=False``: gRPC does not even ask for a certificate. A token user
    connects with none; anybody else is anonymous, and refused."""
    api = make_api(require_client_auth=False)
    carol = api.client(token=CAROL_TOKEN)
    assert carol.apply(pod("c", "team-b")) == ["created"]
    before = api.revision()
    anonymous = api.client()
    assert refused(grpc.StatusCode.UNAUTHENTICATED, anonymous.apply, pod("a", "team-b")) == (
        "no client certificate and no bearer token: anonymous requests are not allowed")
    refused(grpc.StatusCode.UNAUTHENTICATED, anonymous.watch_first, "pods", "team-b")
    # The admin's certificate is not asked for, so it does not count.
    refused(grpc.StatusCode.UNAUTHENTICATED, api.client("admin").list, "pods", "team-b")
    assert api.revision() == before


def test_a_plaintext_port_makes_the_anonymous_caller_admin(make_api: Callable[..., SecureApi]) -> None:
    """``--insecure``: no certificates at all. Anonymous is cluster-admin (kube's old insecure
    port); a caller who brings a token is that user, and bound by its roles."""
    api = make_api(plaintext=True)
    anonymous = api.client()
    assert anonymous.apply(pod("x", "team-a")) == ["created"]
    anonymous.delete("pods", "team-a", "x")
    carol = api.client(token=CAROL_TOKEN)
    denied(carol.list, "pods", "team-a")
    [created, deleted, refusal] = api.records()
    assert (created["user"], created["groups"], created["authenticatedBy"]) == (
        "system:anonymous", ["system:unauthenticated", "system:masters"], "insecure")
    assert (deleted["verb"], deleted["decision"]) == ("delete", "allow")
    assert (refusal["user"], refusal["uid"], refusal["authenticatedBy"]) == ("carol", "1001", "token")


# --- the audit log -------------------------------------------------------------------------------------


def test_the_audit_log_has_one_record_per_attempt(api: SecureApi) -> None:
    admin, alice, vic = api.client("admin"), api.client("users/alice"), api.client("users/vic")
    admin.apply(pod("other", "team-b"))                                    # 1 allow
    alice.apply(pod("web", "team-a"))                                      # 2 allow, create
    alice.apply(pod("web", "team-a"), pod("web2", "team-a"), dry_run=True)  # 3 allow, update + create, dry run
    denied(alice.delete, "pods", "team-b", "other")                        # 4 deny
    vic.get("pods", "team-a", "web")                                       # an allowed read: not recorded
    vic.list("pods")                                                       # nor this
    denied(api.client("users/bob").get, "pods", "team-a", "web")           # 5 a refused read is recorded
    refused(grpc.StatusCode.UNAUTHENTICATED, api.client("users/bob", token="guessed").delete, "pods", "team-a",
            "web")                                                         # 6
    refused(grpc.StatusCode.INVALID_ARGUMENT, alice.apply, {"kind": "Pod"})  # 7 a mutating call, refused as invalid
    alice.delete("pods", "team-a", "web")                                  # 8 allow

    records = api.records()
    assert [(r["method"], r["user"], r["verb"], r["namespace"], r["decision"], r["code"]) for r in records] == [
        ("Apply", "admin", "create", "team-b", "allow", "OK"),
        ("Apply", "alice", "create", "team-a", "allow", "OK"),
        ("Apply", "alice", None, "team-a", "allow", "OK"),
        ("Delete", "alice", "delete", "team-b", "deny", "PERMISSION_DENIED"),
        ("Get", "bob", "get", "team-a", "deny", "PERMISSION_DENIED"),
        ("Delete", None, None, None, "deny", "UNAUTHENTICATED"),
        ("Apply", "alice", None, None, None, "INVALID_ARGUMENT"),
        ("Delete", "alice", "delete", "team-a", "allow", "OK"),
    ]
    created, dry, refusal, unauthenticated = records[1], records[2], records[3], records[5]
    assert created["groups"] == ["team-a", "system:authenticated"]
    assert created["authenticatedBy"] == "x509"
    assert created["resource"] == "pods" and created["name"] == "web"
    assert created["reason"] == 'allowed by binding "team-a-editors" (role edit in namespace team-a)'
    assert created["stage"] == "ResponseComplete" and "dryRun" not in created
    assert created["sourceAddress"].startswith("127.0.0.1:")
    assert created["timestamp"].endswith("Z") and len({r["auditID"] for r in records}) == len(records)
    assert dry["dryRun"] is True and dry["name"] is None
    assert dry["objects"] == [{"verb": "update", "resource": "pods", "namespace": "team-a", "name": "web"},
                              {"verb": "create", "resource": "pods", "namespace": "team-a", "name": "web2"}]
    assert (refusal["resource"], refusal["name"]) == ("pods", "other")
    assert refusal["reason"] == f'{USER_ALICE} cannot delete pods in namespace "team-b"'
    assert unauthenticated["reason"] == "invalid bearer token" and unauthenticated["groups"] == []
    assert os.stat(api.audit_path).st_mode & 0o777 == 0o600


def test_reads_are_audited_when_asked_and_a_watch_once_when_it_opens(make_api: Callable[..., SecureApi]) -> None:
    api = make_api(flags=("--audit-log-reads",))
    vic = api.client("users/vic")
    api.put_pod("web", namespace="team-a")
    vic.list("pods", "team-a")
    assert vic.watch_first("pods") == "ADDED"
    records = api.records()
    assert [(r["method"], r["verb"], r["namespace"], r["stage"], r["code"]) for r in records] == [
        ("List", "list", "team-a", "ResponseComplete", "OK"),
        ("Watch", "watch", None, "ResponseStarted", None),
    ]
    assert records[1]["reason"] == 'allowed by binding "viewers" (role view cluster-wide)'


def test_audit_log_rotates_and_never_tears_a_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path, max_bytes=4096, max_backups=2)
    record = {"method": "Apply", "reason": "x" * 200}

    def writer(n: int) -> None:
        for i in range(200):
            audit.write({**record, "writer": n, "i": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit.close()
    files = [path, Path(f"{path}.1"), Path(f"{path}.2")]
    assert all(f.exists() for f in files) and not Path(f"{path}.3").exists()
    for f in files:
        assert f.stat().st_size < 4096 + 512 * 300  # rotated once a batch passes the size
        for line in f.read_text().splitlines():
            assert json.loads(line)["reason"] == "x" * 200
    audit.close()  # idempotent


# --- the files ---------------------------------------------------------------------------------------------


def test_authorization_config_problems_name_their_field() -> None:
    doc = {"bindings": [
        {"role": "editor", "namespaces": ["team-a"], "users": ["a"]},
        {"role": "view", "users": ["a"]},
        {"role": "view", "clusterWide": True, "namespaces": ["x"], "groups": ["g"]},
        {"role": "edit", "namespaces": ["Team_A"], "group": ["g"]},
        {"role": "view", "clusterWide": True, "groups": ["system:nodes"]},
        {"name": "n", "role": "view", "clusterWide": "yes", "users": [""]},
    ], "roles": []}
    with pytest.raises(auth.ConfigError) as e:
        auth.parse_authorization_config(doc, "bindings.yaml")
    text = str(e.value)
    for expected in (
        'bindings[0].role: unknown role string "editor"; the roles are view, edit, admin, cluster-admin; '
        'did you mean "edit"?',
        "bindings[1]: give the namespaces it applies in, or clusterWide: true",
        "bindings[2]: give namespaces or clusterWide: true, not both",
        "bindings[3].group: unknown field",
        'did you mean "groups"?',
        "bindings[3]: binds nobody",
        "bindings[3].namespaces[0]:",
        "bindings[4].groups[0]: nodes have no Cluster API access",
        "bindings[5].clusterWide: must be true or false, got string",
        "bindings[5].users[0]: must be a non-empty string",
        "roles: unknown field",
    ):
        assert expected in text, (expected, text)
    assert text.startswith("bindings.yaml: ")
    assert auth.parse_authorization_config(None) == []


def test_token_file_problems_name_their_line() -> None:
    users = auth.parse_token_file('t1,alice,1\n\n# comment\nt2, bob ,2,"g1, g2,"\n')
    assert sorted((u.name, u.uid, u.groups, u.via) for u in users.values()) == [
        ("alice", "1", (), "token"), ("bob", "2", ("g1", "g2"), "token")]
    assert "t1" not in users and auth.token_digest("t1") in users  # digests, not tokens
    with pytest.raises(auth.ConfigError) as e:
        auth.parse_token_file("t1,alice\nt2,bob,2\nt2,carol,3\n,dave,4\n", "tokens.csv")
    assert str(e.value) == ("tokens.csv: line 1: has 2 columns; expected token,user,uid[,\"group1,group2\"]; "
                            "line 3: token: is also the token of line 2; line 4: token: is empty")


def test_bad_files_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="orch-scheduler")
    auth.add_arguments(parser)
    bad = tmp_path / "b.yaml"
    bad.write_text("bindings:\n- role: root\n  clusterWide: true\n  users: [x]\n")
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--authorization-config", str(bad)])
    assert e.value.code == 2
    assert f'{bad}: bindings[0].role: unknown role string "root"' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--token-auth-file", str(tmp_path / "missing.csv")])
    assert "missing.csv: cannot read it: No such file or directory" in capsys.readouterr().err
    args = parser.parse_args(["--audit-log-path", str(tmp_path / "no-such-dir" / "audit.log")])
    with pytest.raises(SystemExit) as e:
        auth.from_args(args)
    assert "cannot open --audit-log-path" in str(e.value) and "No such file or directory" in str(e.value)
    access = auth.from_args(parser.parse_args([]))
    assert access.audit is None and access.authorizer.bindings == () and access.authenticator.tokens is None
