"""Pods from real images on the real lab: pulled by each node from a registry on the lab's
network (the host's end of it: nodes live in network namespaces of their own, where
127.0.0.1 is the node's own loopback), refused cleanly when the image cannot be had, and
run with their securityContext."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.images import ImageStore
from agent.images.registry import push
from tests import imagebuild as ib
from tests.conftest import LabCluster
from tests.helpers import container_id, wait_for
from tests.registry_fixture import Registry, requires_registry, running_registry

pytestmark = [requires_registry, pytest.mark.skipif(not ib.BUSYBOX.exists(), reason="needs busybox-static")]

# Docker's default capability set, as /proc/PID/status prints it.
DOCKER_DEFAULT_CAPS = 0x00000000A80425FB


@pytest.fixture(scope="module")
def registry(lab: LabCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry where the lab's nodes reach it: on the host's address on the lab network
    (which `lab up` gives its agents as an insecure, plain-HTTP registry network)."""
    with running_registry(tmp_path_factory.mktemp("registry"), lab.info["network"]["host_address"]) as r:
        yield r


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox, built by the test, pushed to the registry; its reference."""
    d = tmp_path_factory.mktemp("src")
    source = ImageStore(d / "store")
    source.import_archive(ib.write_oci_layout(d / "layout", [(ib.busybox_image(), "busybox:e2e")]))
    image = source.resolve("busybox:e2e")
    assert image is not None
    reference = f"{registry.host}/busybox:e2e"
    push(source, reference, image, insecure_http=True)
    return reference


def pod(name: str, ns: str, image: str, command: list[str], **container: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": image, "command": command,
                                     "resources": {"limits": {"memory": "32Mi"}}, **container}]}}


def status_of(lab: LabCluster, ns: str, name: str) -> dict[str, Any]:
    with lab.client() as c:
        return c.get("Pod", name, ns)


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def test_pods_pull_a_busybox_image_from_a_registry_on_both_nodes(lab: LabCluster, ns: str, pushed: str) -> None:
    names = ["bb-1", "bb-2"]
    manifests = [pod(n, ns, pushed, ["/bin/sh", "-c", "echo from-busybox; exec sleep 600"]) for n in names]
    for i, m in enumerate(manifests):
        m["spec"]["nodeName"] = f"lab-node-{i + 1}"  # one pod on each node, so both nodes pull
    with lab.client() as c:
        c.apply(manifests)

    def running(name: str) -> dict[str, Any] | None:
        p = status_of(lab, ns, name)
        cs = p.get("status", {}).get("containerStatuses") or [{}]
        return p if "running" in cs[0].get("state", {}) else None

    for name in names:
        p = wait_for(lambda name=name: running(name), timeout=60, what=f"{name} Running")
        node = p["spec"]["nodeName"]
        pid = lab.container_pid(node, container_id(p))
        # Its root is the image's: busybox is PID 1's binary, and the host's /usr is nowhere.
        assert Path(f"/proc/{pid}/exe").resolve().name == "busybox"
        assert not Path(f"/proc/{pid}/root/usr/lib/os-release").exists()
        log = (Path(lab.agent(node)["state_dir"]) / "containers" / container_id(p) / "container.log").read_text()
        assert "from-busybox" in log


def test_an_image_that_cannot_be_pulled_is_reported_and_leaves_nothing(lab: LabCluster, ns: str,
                                                                         registry: Registry) -> None:
    image = f"{registry.host}/does-not-exist:1"
    with lab.client() as c:
        c.apply([pod("nopull", ns, image, ["/bin/true"])])

    def waiting_reason() -> str | None:
        cs = status_of(lab, ns, "nopull").get("status", {}).get("containerStatuses") or [{}]
        reason = cs[0].get("state", {}).get("waiting", {}).get("reason")
        return reason if reason in ("ErrImagePull", "ImagePullBackOff") else None

    wait_for(waiting_reason, timeout=30, what="ErrImagePull")
    p = status_of(lab, ns, "nopull")
    assert p["status"]["phase"] == "Pending"
    message = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert "does-not-exist" in message
    node_dir = Path(lab.agent(p["spec"]["nodeName"])["state_dir"])
    uid = p["metadata"]["uid"]
    assert not any(json_pod_uid(d) == uid for d in (node_dir / "containers").glob("*")), "a half-built container"


def json_pod_uid(container_dir: Path) -> str | None:
    import json

    try:
        return str(json.loads((container_dir / "config.json").read_text())["pod_uid"])
    except (OSError, ValueError, KeyError):
        return None


def test_security_context_reaches_the_process(lab: LabCluster, ns: str) -> None:
    with lab.client() as c:
        c.apply([
            pod("default-sc", ns, "host", ["/bin/sleep", "600"]),
            pod("locked", ns, "host", ["/bin/sleep", "600"],
                securityContext={"runAsUser": 1000, "runAsGroup": 1000, "capabilities": {"drop": ["ALL"]},
                                 "readOnlyRootFilesystem": True}),
        ])

    def pid_of(name: str) -> int | None:
        p = status_of(lab, ns, name)
        cs = p.get("status", {}).get("containerStatuses") or [{}]
        if "running" not in cs[0].get("state", {}):
            return None
        return lab.container_pid(p["spec"]["nodeName"], container_id(p))

    default = proc_status(wait_for(lambda: pid_of("default-sc"), timeout=60, what="default-sc Running"))
    assert int(default["CapEff"], 16) == DOCKER_DEFAULT_CAPS and int(default["CapBnd"], 16) == DOCKER_DEFAULT_CAPS
    assert default["NoNewPrivs"] == "1" and default["Seccomp"] == "2"
    locked = proc_status(wait_for(lambda: pid_of("locked"), timeout=60, what="locked Running"))
    assert locked["Uid"].split()[0] == "1000" and locked["Gid"].split()[0] == "1000"
    assert int(locked["CapEff"], 16) == 0 and int(locked["CapBnd"], 16) == 0


def test_orchctl_image_import_into_every_node_then_run_it_with_pull_policy_never(
        lab: LabCluster, ns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = ib.write_oci_archive(tmp_path / "busybox.tar", [(ib.busybox_image(), "busybox:imported")])
    assert lab.orchctl("image", "import", str(archive)) == 0
    out = capsys.readouterr().out
    for node in ("lab-node-1", "lab-node-2"):
        assert f"node {node}: imported docker.io/library/busybox:imported (sha256:" in out

    manifests = [pod(f"local-{i}", ns, "busybox:imported", ["/bin/sh", "-c", "echo imported-ok; exec sleep 600"],
                     imagePullPolicy="Never") for i in (1, 2)]
    for i, m in enumerate(manifests):
        m["spec"]["nodeName"] = f"lab-node-{i + 1}"
    with lab.client() as c:
        c.apply(manifests)
    for m in manifests:
        name = m["metadata"]["name"]
        wait_for(lambda name=name: "running" in (status_of(lab, ns, name).get("status", {})
                                                  .get("containerStatuses") or [{}])[0].get("state", {}),
                 timeout=60, what=f"{name} Running from the imported image")

    # A hostile archive is refused by every node, naming the problem; no node keeps any of it.
    evil = ib.write_oci_archive(tmp_path / "evil.tar", [(ib.hostile_image("dotdot", tmp_path), "evil:1")])
    assert lab.orchctl("image", "import", str(evil)) == 1
    err = capsys.readouterr().err
    assert err.count("'..' component") == 2, err
    for node in ("lab-node-1", "lab-node-2"):
        assert ImageStore(Path(lab.agent(node)["state_dir"]) / "images").resolve("evil:1") is None
