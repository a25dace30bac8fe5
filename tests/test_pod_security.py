"""Pod security levels per namespace (issue 7): the Pod Security Standards' checks, their
enforcement when objects are applied (a real Registry on a real etcd), the Namespace kind,
and the runtime that gives the ``privileged`` level its meaning: the node's network, PID
and IPC namespaces, hostPath and emptyDir volumes (real namespaces and mounts).

Host namespaces are only ever the test's own: a hostNetwork container runs in a network
namespace this test makes (the node's, as the agent would pass it), never the host's
network; hostPID and hostIPC containers run ``sleep`` in the test process's namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aetcd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_runtime import (
    container_output,
    make_config,
    requires_root,
    run_to_exit,
    runtime_fixture,  # noqa: F401 - the `runtime` fixture
    wait_for,
)

from agent.agent import volume_mounts
from agent.network.podnet import rtnl
from agent.reconcile import PodRecord, StartContainer, pod_status
from agent.runtime import syscalls as sc
from agent.runtime.rootfs import prepare_host_path, resolve_in_root
from agent.runtime.runtime import ContainerState, ContainerStatus, Runtime
from apimachinery.errors import RuntimeError_, ValidationError
from apimachinery.meta import DEPLOYMENT, NAMESPACE, POD, kind_for
from apimachinery.validation import validate
from cli.printers import TableOptions, table
from scheduler import podsecurity
from scheduler.registry import Registry
from scheduler.store import Store
from tests.etcd_fixture import EtcdServer, running_etcd
from tests.test_agent_network import node_fixture  # noqa: F401 - the `node` fixture: an agent in a node namespace
from tests.test_podnet import net_fixture  # noqa: F401 - its `net` fixture

ENFORCE = "pod-security.kubernetes.io/enforce"

# A container the restricted level accepts as it stands.
RESTRICTED_SC = {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                 "seccompProfile": {"type": "RuntimeDefault"}, "capabilities": {"drop": ["ALL"]}}


def pod(name: str = "p", namespace: str = "default", annotations: dict[str, str] | None = None,
        container: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    c = {"name": "c", "image": "host", "command": ["sleep", "1000"], **(container or {})}
    md: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        md["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": {"containers": [c], **spec}}


def deployment(name: str, namespace: str, container: dict[str, Any] | None = None, replicas: int = 1,
               **spec: Any) -> dict[str, Any]:
    template = pod(name, namespace, container=container, **spec)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": template["spec"]}}}


def namespace(name: str, level: str | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if level is not None:
        md["labels"] = {ENFORCE: level}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": md}


def paths(level: str, obj: dict[str, Any]) -> list[str]:
    valid = validate(obj)
    return [v.path for v in podsecurity.check_pod(level, valid["spec"], valid["metadata"])]


def errors(e: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return [str(fe) for fe in e.value.errors]


# ---------------------------------------------------------------- the checks, as Kubernetes decides

C0 = "spec.containers[0]"
SC0 = f"{C0}.securityContext"
UNRESTRICTED = [f"{SC0}.capabilities.drop", f"{SC0}.seccompProfile.type", f"{SC0}.allowPrivilegeEscalation",
                f"{SC0}.runAsNonRoot"]  # what a plain container lacks for restricted, in check order

CASES: list[tuple[str, dict[str, Any], dict[str, list[str]]]] = [
    ("a plain pod", pod(), {"baseline": [], "restricted": UNRESTRICTED}),
    ("a restricted pod", pod(container={"securityContext": RESTRICTED_SC}), {"baseline": [], "restricted": []}),
    ("privileged", pod(container={"securityContext": {"privileged": True}}),
     {"baseline": [f"{SC0}.privileged"]}),
    ("the host's namespaces", pod(hostNetwork=True, hostPID=True, hostIPC=True),
     {"baseline": ["spec.hostNetwork", "spec.hostPID", "spec.hostIPC"]}),
    ("a hostPath volume", pod(volumes=[{"name": "h", "hostPath": {"path": "/var/log"}}],
                              container={"securityContext": RESTRICTED_SC}),
     {"baseline": ["spec.volumes[0].hostPath"], "restricted": ["spec.volumes[0].hostPath"]}),
    ("an emptyDir volume", pod(volumes=[{"name": "e", "emptyDir": {}}], container={"securityContext": RESTRICTED_SC}),
     {"baseline": [], "restricted": []}),
    ("a hostPort", pod(container={"ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]}),
     {"baseline": [f"{C0}.ports[0].hostPort"]}),
    # hostNetwork makes every containerPort a hostPort (Kubernetes' defaulting): both are reported.
    ("hostNetwork with a port", pod(hostNetwork=True, container={"ports": [{"containerPort": 80}]}),
     {"baseline": ["spec.hostNetwork", f"{C0}.ports[0].hostPort"]}),
    # NET_RAW is in Docker's default set but not in the standard's baseline set.
    ("capabilities beyond baseline", pod(container={"securityContext": {"capabilities": {
        "add": ["CHOWN", "NET_RAW", "CAP_KILL", "SYS_ADMIN"]}}}),
     {"baseline": [f"{SC0}.capabilities.add[1]", f"{SC0}.capabilities.add[3]"]}),
    ("restricted adds NET_BIND_SERVICE only", pod(container={"securityContext": {
        **RESTRICTED_SC, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "CHOWN"]}}}),
     {"baseline": [], "restricted": [f"{SC0}.capabilities.add[1]"]}),
    ("seccomp Unconfined on the pod", pod(securityContext={"seccompProfile": {"type": "Unconfined"}},
                                          container={"securityContext": RESTRICTED_SC}),
     {"baseline": ["spec.securityContext.seccompProfile.type"],
      "restricted": ["spec.securityContext.seccompProfile.type"]}),
    ("pod-level settings cover the containers", pod(
        securityContext={"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        container={"securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}),
     {"restricted": []}),
    ("a container undoing the pod's runAsNonRoot", pod(
        securityContext={"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        container={"securityContext": {**RESTRICTED_SC, "runAsNonRoot": False}}),
     {"baseline": [], "restricted": [f"{SC0}.runAsNonRoot"]}),
    ("runAsUser 0", pod(securityContext={"runAsUser": 0}, container={"securityContext": RESTRICTED_SC}),
     {"baseline": [], "restricted": ["spec.securityContext.runAsUser"]}),
    # Root in a user namespace of the pod's own is nobody on the node: both checks are waived.
    ("runAsUser 0 with hostUsers false", pod(hostUsers=False, securityContext={"runAsUser": 0}, container={
        "securityContext": {**RESTRICTED_SC, "runAsNonRoot": None}}), {"restricted": []}),
    ("privilege escalation allowed", pod(container={"securityContext": {**RESTRICTED_SC,
                                                                        "allowPrivilegeEscalation": True}}),
     {"baseline": [], "restricted": [f"{SC0}.allowPrivilegeEscalation"]}),
    ("AppArmor annotations", pod(annotations={
        "container.apparmor.security.beta.kubernetes.io/c": "unconfined",
        "container.apparmor.security.beta.kubernetes.io/d": "localhost/mine",
        "container.apparmor.security.beta.kubernetes.io/e": "runtime/default"}),
     {"baseline": ["metadata.annotations[container.apparmor.security.beta.kubernetes.io/c]"]}),
]


@pytest.mark.parametrize(("what", "obj", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_level_allows_what_the_standard_does(what: str, obj: dict[str, Any],
                                                  expected: dict[str, list[str]]) -> None:
    assert paths("privileged", obj) == []  # privileged checks nothing
    for level, want in expected.items():
        assert paths(level, obj) == want, (what, level)


def test_violations_name_the_field_the_level_and_the_namespace() -> None:
    obj = validate(pod(namespace="web", container={"ports": [{"containerPort": 80, "hostPort": 8080}],
                                                   "securityContext": {"privileged": True}}))
    assert [str(e) for e in podsecurity.errors(obj, "baseline", "web")] == [
        'spec.containers[0].securityContext.privileged: forbidden by pod security level "baseline" of namespace "web"',
        'spec.containers[0].ports[0].hostPort: forbidden by pod security level "baseline" of namespace "web" '
        "(got 8080)",
    ]
    plain = validate(pod())
    assert str(podsecurity.errors(plain, "restricted", "x")[2]) == (
        'spec.containers[0].securityContext.allowPrivilegeEscalation: must be false, as pod security level '
        '"restricted" of namespace "x" requires')
    assert str(podsecurity.errors(plain, "restricted", "x")[3]) == (
        'spec.containers[0].securityContext.runAsNonRoot: must be true (here or in spec.securityContext), as pod '
        'security level "restricted" of namespace "x" requires')
    # A Deployment's pod template, under its own path.
    dep = validate(deployment("d", "web", container={"securityContext": {"privileged": True}}))
    assert [v.path for v in podsecurity.violations(dep, "baseline")] == [
        "spec.template.spec.containers[0].securityContext.privileged"]
    with pytest.raises(ValueError, match="unknown pod security level"):
        podsecurity.check_pod("lax", plain["spec"])


def test_a_namespace_level_comes_from_its_enforce_label_else_baseline() -> None:
    assert podsecurity.level_of(None) == "baseline"  # no Namespace object at all
    assert podsecurity.level_of(validate(namespace("a"))) == "baseline"
    assert podsecurity.level_of(validate(namespace("a", "privileged"))) == "privileged"
    assert podsecurity.level_of(validate(namespace("a", "restricted"))) == "restricted"


# ---------------------------------------------------------------- the Namespace kind


def test_namespace_validation() -> None:
    ns = validate({**namespace("team-a", "restricted"), "status": {"phase": "Active"}})
    assert ns == {"apiVersion": "v1", "kind": "Namespace", "spec": {},
                  "metadata": {"name": "team-a", "labels": {ENFORCE: "restricted"}}}
    assert kind_for("ns") is NAMESPACE and not NAMESPACE.namespaced
    bad = namespace("team.a", "privilegd")
    bad["metadata"]["labels"].update({"pod-security.kubernetes.io/warn": "restricted",
                                      "pod-security.kubernetes.io/enforce-version": "v1.29"})
    bad["spec"] = {"finalizers": ["kubernetes"]}
    with pytest.raises(ValidationError) as e:
        validate(bad)
    assert errors(e) == [
        "spec.finalizers: unknown field; orch does not support Kubernetes' finalizers",
        'metadata.name: "team.a" must consist of lower case alphanumeric characters or \'-\', and must start and '
        "end with an alphanumeric character (e.g. 'my-name' or '123-abc')",
        f'metadata.labels[{ENFORCE}]: must be one of "privileged", "baseline", "restricted", got string '
        '"privilegd"; did you mean "privileged"?',
        "metadata.labels[pod-security.kubernetes.io/warn]: orch does not support pod security warnings, only "
        "enforce",
        'metadata.labels[pod-security.kubernetes.io/enforce-version]: must be "latest", got string "v1.29": orch '
        "enforces the latest version of the Pod Security Standards only",
    ]


def test_orchctl_get_ns_prints_name_status_age() -> None:
    ns = {"kind": "Namespace", "metadata": {"name": "team-a", "creationTimestamp": "2024-05-01T10:00:00Z"},
          "status": {"phase": "Active"}}
    opts = TableOptions(now=datetime.datetime(2024, 5, 1, 10, 5, tzinfo=datetime.UTC))
    assert table("Namespace", [ns], opts).splitlines() == ["NAME     STATUS   AGE", "team-a   Active   5m"]


# ---------------------------------------------------------------- volumes and host namespaces in validation


def test_volumes_and_host_namespaces_are_validated() -> None:
    spec = validate(pod(hostNetwork=True, volumes=[{"name": "logs", "hostPath": {"path": "/var/log"}}, {"name": "s"}],
                        container={"ports": [{"containerPort": 9100}],
                                   "volumeMounts": [{"name": "logs", "mountPath": "/logs", "readOnly": True},
                                                    {"name": "s", "mountPath": "/scratch"}]}))["spec"]
    assert spec["volumes"] == [{"name": "logs", "hostPath": {"path": "/var/log", "type": ""}},
                               {"name": "s", "emptyDir": {}}]  # Kubernetes' defaults
    assert spec["containers"][0]["ports"][0]["hostPort"] == 9100  # a hostNetwork pod's port is the node's
    bad = pod(hostNetwork=True, hostUsers=False,
              volumes=[{"name": "x", "hostPath": {"path": "/a/../etc", "type": "Dir"}}, {"name": "x", "secret": {}}],
              container={"ports": [{"containerPort": 80, "hostPort": 81}],
                         "volumeMounts": [{"name": "y", "mountPath": "/"}, {"name": "x", "mountPath": "/d",
                                                                              "subPath": "a"}]})
    with pytest.raises(ValidationError) as e:
        validate(bad)
    assert errors(e) == [
        "spec.containers[0].volumeMounts[0].mountPath: must not be /: a volume cannot take the place of the "
        "container's root",
        "spec.containers[0].volumeMounts[1].subPath: unknown field; orch does not support Kubernetes' subPath",
        "spec.volumes[0].hostPath.path: must not contain '..'",
        'spec.volumes[0].hostPath.type: must be one of "", "DirectoryOrCreate", "Directory", "FileOrCreate", '
        '"File", "Socket", "CharDevice", "BlockDevice", got string "Dir"',
        "spec.volumes[1].secret: orch does not support Kubernetes' secret volumes, only hostPath and emptyDir",
        "spec.hostNetwork: may not be true when hostUsers is false: a pod in a user namespace of its own cannot "
        "share the node's namespaces",
        "spec.containers[0].ports[0].hostPort: must match containerPort (80) when hostNetwork is true",
        'spec.volumes[1].name: duplicate volume name "x"',
        'spec.containers[0].volumeMounts[0].name: no volume named "y" in spec.volumes',
    ]
    with pytest.raises(ValidationError) as e:
        validate(pod(container={"securityContext": {"seccompProfile": {"type": "Localhost",
                                                                       "localhostProfile": "p.json"}}}))
    assert errors(e) == ["spec.containers[0].securityContext.seccompProfile.type: orch does not support Localhost "
                         'seccomp profiles; use "RuntimeDefault" (Docker\'s default profile) or "Unconfined"']


# ---------------------------------------------------------------- admission through a Registry on etcd


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


def on_registry(etcd: EtcdServer, body: Any) -> None:
    async def run() -> None:
        store = Store(aetcd.Client(host=etcd.host, port=etcd.port, timeout=5), prefix=etcd.prefix())
        try:
            await body(Registry(store), store)
        finally:
            await store.client.delete_prefix(f"{store.prefix}/".encode())
            await store.close()

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_privileged_pod_is_refused_in_a_baseline_namespace_and_nothing_is_written(etcd: EtcdServer) -> None:
    async def body(reg: Registry, store: Store) -> None:
        privileged = pod("priv", "default", container={"securityContext": {"privileged": True}})
        fine = pod("fine", "default")
        before = await store.revision()
        with pytest.raises(ValidationError) as e:
            await reg.apply([fine, privileged])  # no Namespace object: baseline
        assert errors(e) == ['document 1 (Pod/priv): spec.containers[0].securityContext.privileged: forbidden by '
                             'pod security level "baseline" of namespace "default"']
        assert await store.revision() == before  # the whole apply was refused, the good pod too
        # A dry run says the same.
        with pytest.raises(ValidationError):
            await reg.apply([privileged], dry_run=True)

        # hostNetwork and hostPath are baseline violations as well, every one listed.
        host = pod("host", "default", hostNetwork=True, volumes=[{"name": "h", "hostPath": {"path": "/tmp"}}],
                   container={"volumeMounts": [{"name": "h", "mountPath": "/h"}]})
        with pytest.raises(ValidationError) as e:
            await reg.apply([host])
        assert [fe.path for fe in e.value.errors] == ["document 0 (Pod/host): spec.hostNetwork",
                                                      "document 0 (Pod/host): spec.volumes[0].hostPath"]
        assert await store.revision() == before

        # A Namespace labelled privileged allows it, applied in the same batch or before.
        results = await reg.apply([namespace("default", "privileged"), privileged])
        assert [r.action for r in results] == ["created", "created"]
        assert results[0].obj["status"] == {"phase": "Active"} and "namespace" not in results[0].obj["metadata"]
        assert (await store.get(POD, "default", "priv"))["spec"]["containers"][0]["securityContext"] == {
            "privileged": True}
        await reg.apply([host])

        # Tightened later: what runs stays, re-applying it unchanged is fine (Kubernetes leaves
        # running pods alone too), a new one is refused.
        await reg.apply([namespace("default", "baseline")])
        assert [r.action for r in await reg.apply([privileged])] == ["unchanged"]
        with pytest.raises(ValidationError, match="Pod/priv2"):
            await reg.apply([pod("priv2", "default", container={"securityContext": {"privileged": True}})])
        # Deleting the Namespace object takes the label with it: baseline again.
        await reg.delete(NAMESPACE, None, "default")
        with pytest.raises(ValidationError, match='level "baseline" of namespace "default"'):
            await reg.apply([pod("priv3", "default", container={"securityContext": {"privileged": True}})])

    on_registry(etcd, body)


def test_restricted_namespace_wants_the_restricted_settings(etcd: EtcdServer) -> None:
    async def body(reg: Registry, store: Store) -> None:
        await reg.apply([namespace("locked", "restricted")])
        with pytest.raises(ValidationError) as e:
            await reg.apply([pod("plain", "locked")])
        assert [fe.path.removeprefix("document 0 (Pod/plain): ") for fe in e.value.errors] == UNRESTRICTED
        assert [r.action for r in await reg.apply([pod("ok", "locked",
                                                       container={"securityContext": RESTRICTED_SC})])] == ["created"]

    on_registry(etcd, body)


def test_a_deployment_template_is_checked_at_apply_and_its_pods_at_create(etcd: EtcdServer) -> None:
    async def body(reg: Registry, store: Store) -> None:
        admin = {"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}
        before = await store.revision()
        with pytest.raises(ValidationError) as e:
            await reg.apply([deployment("net", "ops", container=admin)])
        assert errors(e) == [
            'document 0 (Deployment/net): spec.template.spec.containers[0].securityContext.capabilities.add[0]: '
            'forbidden by pod security level "baseline" of namespace "ops" (got "NET_ADMIN")']
        assert await store.revision() == before

        await reg.apply([namespace("ops", "privileged"), deployment("net", "ops", container=admin)])
        # The namespace is tightened: the Deployment stays, a scale (same template) goes through ...
        await reg.apply([namespace("ops", "baseline")])
        assert [r.action for r in await reg.apply([deployment("net", "ops", container=admin, replicas=3)])] == [
            "configured"]
        # ... a changed template that still breaks the level does not ...
        changed = deployment("net", "ops", container={**admin, "env": [{"name": "A", "value": "1"}]})
        with pytest.raises(ValidationError, match=r"capabilities\.add\[0\]"):
            await reg.apply([changed])
        # ... and the pods its controller would create are refused, the field named, nothing written.
        template = (await store.get(DEPLOYMENT, "ops", "net"))["spec"]["template"]
        new_pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "net-abc12", "namespace": "ops", **copy.deepcopy(template["metadata"])},
                   "spec": copy.deepcopy(template["spec"])}
        before = await store.revision()
        with pytest.raises(ValidationError) as e:
            await reg.create(new_pod)
        assert errors(e) == ['spec.containers[0].securityContext.capabilities.add[0]: forbidden by pod security '
                             'level "baseline" of namespace "ops" (got "NET_ADMIN")']
        assert await store.revision() == before

    on_registry(etcd, body)


# ---------------------------------------------------------------- the agent's side, pure


def test_the_agent_hands_the_runtime_each_mount_with_its_source_and_reports_the_node_ip() -> None:
    valid = validate(pod(hostNetwork=True,
                         volumes=[{"name": "logs", "hostPath": {"path": "/var/log", "type": "Directory"}},
                                  {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
                         container={"volumeMounts": [{"name": "mem", "mountPath": "/m"},
                                                     {"name": "logs", "mountPath": "/logs", "readOnly": True}]}))
    assert volume_mounts(valid["spec"], valid["spec"]["containers"][0]) == [
        {"name": "mem", "mountPath": "/m", "readOnly": False, "emptyDir": {"medium": "Memory", "sizeBytes": 16 << 20}},
        {"name": "logs", "mountPath": "/logs", "readOnly": True, "hostPath": {"path": "/var/log", "type": "Directory"}},
    ]
    valid["metadata"]["uid"] = "u1"
    status = pod_status(valid, PodRecord(valid), [], 0.0, host_ip="10.250.0.11")
    assert status["podIP"] == status["hostIP"] == "10.250.0.11"  # the node's network, the node's address


def test_mount_paths_resolve_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")  # absolute: the container's /etc, not the node's
    (root / "up").symlink_to("../../../..")
    (root / "loop").symlink_to("loop")
    assert resolve_in_root(root, "/escape/x") == root / "etc" / "x"
    assert resolve_in_root(root, "/up/etc/y") == root / "etc" / "y"
    assert resolve_in_root(root, "/../../new/./z") == root / "new" / "z"
    with pytest.raises(OSError, match="symbolic links"):
        resolve_in_root(root, "/loop/x")


def test_host_path_types_are_checked_or_made_as_the_kubelet_does(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    prepare_host_path(str(tmp_path), "Directory")
    prepare_host_path(str(tmp_path / "file"), "File")
    prepare_host_path("/dev/null", "CharDevice")
    with pytest.raises(OSError, match=f"{tmp_path}/file is not a directory"):
        prepare_host_path(str(tmp_path / "file"), "Directory")
    with pytest.raises(OSError, match="is not a socket"):
        prepare_host_path(str(tmp_path), "Socket")
    with pytest.raises(OSError, match="does not exist"):
        prepare_host_path(str(tmp_path / "missing"), "File")
    prepare_host_path(str(tmp_path / "made" / "dir"), "DirectoryOrCreate")
    prepare_host_path(str(tmp_path / "made2" / "f"), "FileOrCreate")
    prepare_host_path(str(tmp_path / "plain"), "")  # made a directory, as containerd does
    assert (tmp_path / "made" / "dir").is_dir() and (tmp_path / "made2" / "f").is_file()
    assert (tmp_path / "plain").is_dir()


# ---------------------------------------------------------------- the runtime, on real namespaces and mounts


def _ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _wait_log(st: ContainerState, text: str) -> str:
    wait_for(lambda: text in container_output(st.log_path), what=f"{text!r} in the log of {st.config.name}")
    return container_output(st.log_path)


@requires_root
def test_host_path_volumes_are_bound_read_only_or_writable(runtime: Runtime, tmp_path: Path) -> None:
    data, out_dir = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "hello").write_text("from the node\n")
    script = textwrap.dedent("""\
        cat /data/hello
        touch /data/new 2>/dev/null && echo data-writable || echo data-read-only
        echo written > /out/result && echo out-writable
        grep -c ' /data ' /proc/self/mountinfo
    """)
    done, out = run_to_exit(runtime, ["sh", "-c", script], volume_mounts=[
        {"name": "data", "mountPath": "/data", "readOnly": True, "hostPath": {"path": str(data), "type": "Directory"}},
        {"name": "out", "mountPath": "/out", "readOnly": False,
         "hostPath": {"path": str(out_dir), "type": "DirectoryOrCreate"}}])
    assert done.exit_code == 0, out
    assert out.splitlines() == ["from the node", "data-read-only", "out-writable", "1"]
    assert not (data / "new").exists() and (out_dir / "result").read_text() == "written\n"

    # A hostPath that is not what its type says: the start fails, naming the volume; nothing runs.
    with pytest.raises(RuntimeError_, match=r"volume 'data': hostPath type check failed: .* is not a file"):
        runtime.start(make_config(["true"], volume_mounts=[
            {"name": "data", "mountPath": "/d", "hostPath": {"path": str(data), "type": "File"}}]))


@requires_root
def test_an_empty_dir_is_the_pods_and_shared_by_its_containers(runtime: Runtime) -> None:
    disk = {"name": "scratch", "mountPath": "/scratch", "emptyDir": {"medium": ""}}
    mem = {"name": "mem", "mountPath": "/mem", "emptyDir": {"medium": "Memory", "sizeBytes": 4 << 20}}
    done, out = run_to_exit(runtime, ["sh", "-c", "echo one > /scratch/f; echo two > /mem/g; "
                                                  "grep ' /mem ' /proc/self/mountinfo"],
                            pod_uid="shared", name="writer", volume_mounts=[disk, mem])
    assert done.exit_code == 0 and " - tmpfs " in out and "size=4096k" in out, out
    done, out = run_to_exit(runtime, ["sh", "-c", "cat /scratch/f /mem/g"], pod_uid="shared", name="reader",
                            volume_mounts=[disk, mem])
    assert (done.exit_code, out) == (0, "one\ntwo\n")
    runtime.remove_pod("shared")  # goes with the pod; the fixture checks no mount is left


@pytest.fixture
def node_netns(tmp_path: Path) -> Iterator[Path]:
    """A network namespace of the test's own, held by a bind mount: the node's, for hostNetwork."""
    if os.geteuid() != 0:
        pytest.skip("needs root: makes a network namespace")
    path = tmp_path / "node-net"
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True, timeout=30)
    try:
        yield path
    finally:
        sc.umount2(path, sc.MNT_DETACH)


@requires_root
def test_host_network_pid_and_ipc_are_the_nodes(runtime: Runtime, node_netns: Path) -> None:
    hostname = os.uname().nodename
    script = "echo pid=$$ host=$(hostname); ls /sys/class/net; echo ready; exec sleep 1000"
    st = runtime.start(make_config(["sh", "-c", script], pod_uid="hostpod", hostname=hostname, host_network=True,
                                   host_pid=True, host_ipc=True, node_netns=str(node_netns)))
    out = _wait_log(st, "ready").splitlines()
    assert st.status == ContainerStatus.RUNNING and st.pid is not None
    # The node's network namespace (here: the test's), its UTS and IPC namespaces, its PIDs.
    assert _ns(st.pid, "net") == f"net:[{os.stat(node_netns).st_ino}]" != _ns(os.getpid(), "net")
    assert _ns(st.pid, "uts") == _ns(os.getpid(), "uts") and _ns(st.pid, "ipc") == _ns(os.getpid(), "ipc")
    assert _ns(st.pid, "pid") == _ns(os.getpid(), "pid") and _ns(st.pid, "mnt") != _ns(os.getpid(), "mnt")
    assert out[0] == f"pid={st.pid} host={hostname}"  # a node pid, not 1; the node's hostname
    assert out[1:-1] == ["lo"]  # the test's namespace has loopback only
    assert os.uname().nodename == hostname  # nothing set the node's hostname
    # The network layer is never handed the node's namespace as the pod's.
    assert runtime.sandbox_netns_path("hostpod") is None
    # exec into it joins what differs (mount, cgroup) and nothing else.
    assert runtime.exec_sync(st.config.id, ["sh", "-c", "echo $$ > /dev/null; hostname"], 10) == (0, f"{hostname}\n")
    # A pod that shares nothing still gets its own namespaces.
    other = runtime.start(make_config(["sleep", "1000"], pod_uid="ownpod"))
    assert other.pid is not None
    assert _ns(other.pid, "net") != _ns(st.pid, "net") and _ns(other.pid, "pid") != _ns(st.pid, "pid")
    # The network layer may make a hostIPC pod's sandbox first (to attach it): the same sandbox.
    runtime.ensure_sandbox("ipcpod", "ipcpod", host_ipc=True)
    ipc = runtime.start(make_config(["sleep", "1000"], pod_uid="ipcpod", host_ipc=True))
    assert ipc.pid is not None and _ns(ipc.pid, "ipc") == _ns(os.getpid(), "ipc")
    assert _ns(ipc.pid, "net") not in (_ns(os.getpid(), "net"), _ns(st.pid, "net"))  # its own network
    with pytest.raises(RuntimeError_, match=r"shares \['ipc'\] with the node, a container asks for \[\]"):
        runtime.start(make_config(["true"], pod_uid="ipcpod", name="odd"))
    runtime.remove(st.config.id)
    runtime.remove_pod("hostpod")
    assert os.path.exists(node_netns) and os.stat(node_netns).st_ino  # the node's namespace outlives the pod


# ---------------------------------------------------------------- a real agent: hostNetwork end to end

HOST_NET_PORT = 18099
HOST_NET_SERVER = ["python3", "-c", f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {HOST_NET_PORT}))
s.listen(8)
while True:
    c, peer = s.accept()
    with c:
        c.sendall(f"{{socket.gethostname()}} saw {{peer[0]}}".encode())
"""]


@requires_root
def test_an_agent_runs_a_host_network_pod_in_the_nodes_namespace_at_the_nodes_address(node: Any) -> None:
    """No veth, no address, no wait for a pod CIDR; the node's address is the pod's; and removing
    the pod leaves the node's namespace alone, its eth0 above all (the network layer deletes a
    stray eth0 in a pod's namespace, which for this pod would be the node's)."""
    from tests.test_agent_network import (
        NODE_IP,
        connect,
        pod_veths,
        remove_everything,
        shut,
    )
    from tests.test_podnet import CIDR, veths

    valid = validate(pod("hostnet", hostNetwork=True, terminationGracePeriodSeconds=0,
                         container={"command": HOST_NET_SERVER}))
    valid["metadata"].update(uid=f"hostnet-{os.urandom(4).hex()}", creationTimestamp="2024-05-01T10:00:00Z")
    valid["spec"]["nodeName"] = "n1"
    uid = valid["metadata"]["uid"]
    with rtnl(node.net.node) as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer="eth0peer")

    async def scenario() -> None:
        agent = node.agent()
        try:
            # What the runtime is told: the node's namespace file, the node's hostname.
            cfg = agent.container_config(valid, valid["spec"]["containers"][0])
            assert (cfg.host_network, cfg.host_pid, cfg.host_ipc) == (True, False, False)
            assert (cfg.node_netns, cfg.hostname) == (str(node.net.node), os.uname().nodename)
            assert not cfg.seccomp_unconfined
            unconfined = validate(pod(securityContext={"seccompProfile": {"type": "Unconfined"}}))
            unconfined["metadata"]["uid"] = "u2"
            assert agent.container_config(unconfined, unconfined["spec"]["containers"][0]).seccomp_unconfined
            agent.desired = {uid: valid}
            await agent._start(StartContainer(uid, "c", restart=False))  # no pod CIDR yet, and no need of one
            record = agent.records[uid]
            agent.want_cidr = CIDR  # now the node has its pod network: the pod stays out of it
            await agent.sync_network()
            assert agent._unverified(set(agent.runtime.sandbox_pod_uids()), 0.0) == [uid]
            agent.busy.add(uid)
            await agent._verify_network(uid)
            assert agent._unverified(set(agent.runtime.sandbox_pod_uids()), 0.0) == []
            assert record.containers["c"].last_error is None, record.containers["c"]
            assert record.pod_ip is None and await asyncio.to_thread(pod_veths, node) == ["eth0", "eth0peer"]
            states = await asyncio.to_thread(agent.runtime.list)
            assert [s.status for s in states] == [ContainerStatus.RUNNING]
            status = pod_status(valid, record, states, 0.0, NODE_IP)
            assert (status["podIP"], status["hostIP"]) == (NODE_IP, NODE_IP)
            answer = await asyncio.to_thread(connect, node.net.node, NODE_IP, HOST_NET_PORT)
            assert answer == f"{os.uname().nodename} saw {NODE_IP}"  # the node's hostname, the node's address
            await remove_everything(agent, uid)
            assert uid not in agent.records
            assert "eth0" in await asyncio.to_thread(veths, node.net.node)
        finally:
            shut(agent)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        with rtnl(node.net.node) as ipr:
            ipr.link("del", ifname="eth0")


# --- end to end: a Namespace tightened under a running Deployment ------------------------


def test_a_deployment_in_a_tightened_namespace_gets_failed_create_not_privileged_pods(lab: Any, ns: str) -> None:
    """As Kubernetes: tightening a Namespace leaves running pods alone, but the Deployment
    controller's next pod is refused, and the Deployment says so in a FailedCreate Event."""
    from tests.helpers import wait_for

    def namespace(level: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": level}}}

    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "tool", "namespace": ns},
                  "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "tool"}}, "template": {
                      "metadata": {"labels": {"app": "tool"}},
                      "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                          "name": "c", "image": "host", "command": ["sleep", "600"],
                          "securityContext": {"privileged": True}}]}}}}
    with lab.client() as c:
        try:
            c.apply([namespace("privileged"), deployment])
            first = wait_for(lambda: [p for p in c.list("Pod", ns)[0] if p["status"].get("phase") == "Running"],
                             timeout=60, what="the privileged pod to run")[0]
            c.apply([namespace("baseline")])
            time.sleep(1)
            assert c.get("Pod", first["metadata"]["name"], ns)["status"]["phase"] == "Running"  # left alone
            c.delete("Pod", first["metadata"]["name"], ns, grace_period_seconds=0)

            def failed_create() -> list[dict[str, Any]]:
                return [e for e in c.list("Event", ns)[0]
                        if e["reason"] == "FailedCreate" and e["involvedObject"]["name"] == "tool"]

            event = wait_for(failed_create, timeout=60, what="a FailedCreate event on the Deployment")[0]
            assert event["type"] == "Warning"
            assert "privileged" in event["message"] and '"baseline"' in event["message"], event["message"]
            assert not [p for p in c.list("Pod", ns)[0]
                        if p["metadata"]["name"] != first["metadata"]["name"]], "no pod was created after all"
        finally:
            with contextlib.suppress(Exception):
                c.delete("Namespace", ns)
