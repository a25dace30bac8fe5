"""Issue 2's end-to-end path on a real 2-node lab: orchctl → scheduler → etcd → agent → container."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from apimachinery.errors import ConflictError
from tests.conftest import REPO, LabCluster
from tests.helpers import (
    cgroup_dir,
    container_id,
    memory_limit_file,
    ns_inode,
    nspid,
    pid_alive,
    wait_for,
)

# A container that exits at once on SIGTERM (PID 1 of a namespace ignores signals it does not handle).
LOOP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]


def pod_manifest(name: str, ns: str, memory: str = "64Mi", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"containers": [{"name": "main", "image": "host", "command": LOOP,
                                 "resources": {"limits": {"memory": memory, "cpu": "250m"}}}], **spec},
    }


def deployment_manifest(name: str, ns: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "main", "image": "host", "command": LOOP,
                                                  "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}}]}},
        },
    }


def write_yaml(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def running(lab: LabCluster, ns: str, name: str) -> dict[str, Any] | None:
    with lab.client() as c:
        pod = c.get("Pod", name, ns)
    return pod if pod.get("status", {}).get("phase") == "Running" and pod["status"].get("containerStatuses") \
        and "running" in pod["status"]["containerStatuses"][0]["state"] else None


def live_pods(lab: LabCluster, ns: str, selector: str = "") -> list[dict[str, Any]]:
    with lab.client() as c:
        items, _ = c.list("Pod", ns, selector)
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


# --- a Pod --------------------------------------------------------------------------


def test_pod_runs_isolated_with_its_limits_and_is_deleted_within_grace(
        lab: LabCluster, ns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_yaml(tmp_path / "pod.yaml", pod_manifest("hello", ns, memory="64Mi",
                                                              terminationGracePeriodSeconds=10))
    assert lab.orchctl("apply", "-f", str(manifest)) == 0
    assert "pod/hello created" in capsys.readouterr().out

    pod = wait_for(lambda: running(lab, ns, "hello"), timeout=60, what="pod hello Running")
    node = pod["spec"]["nodeName"]
    assert node in {"lab-node-1", "lab-node-2"}
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("orch://")
    pid = lab.container_pid(node, container_id(pod))

    # Its own PID namespace, where it is PID 1; its own mount, UTS and IPC namespaces.
    assert ns_inode(pid, "pid") != ns_inode("self", "pid")
    assert nspid(pid)[-1] == 1 and nspid(pid)[0] == pid
    for kind in ("mnt", "uts", "ipc"):
        assert ns_inode(pid, kind) != ns_inode("self", kind), kind
    # Its cgroup: under a per-pod parent named for the pod uid, with the spec's memory limit.
    cg = cgroup_dir(pid, "memory")
    assert pod["metadata"]["uid"] in str(cg.parent.name)
    assert int(memory_limit_file(cg).read_text()) == 64 * 1024 * 1024

    assert lab.orchctl("get", "pods", "-n", ns) == 0
    out = capsys.readouterr().out
    assert "hello" in out and "Running" in out

    started = time.monotonic()
    assert lab.orchctl("delete", "pod", "hello", "-n", ns) == 0
    assert 'pod "hello" deleted' in capsys.readouterr().out
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the container process to stop")
    wait_for(lambda: not cg.exists(), timeout=10, what="the container cgroup to go")
    assert not cg.parent.exists(), "the pod's cgroup parent is left behind"
    assert time.monotonic() - started < 10, "not stopped within the grace period"
    with lab.client() as c:
        assert c.list("Pod", ns)[0] == []


def test_unschedulable_pod_stays_pending_with_the_reason(lab: LabCluster, ns: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with lab.client() as c:
        c.apply([pod_manifest("huge", ns, memory="64Gi")])

        def reason() -> str | None:
            pod = c.get("Pod", "huge", ns)
            for cond in pod.get("status", {}).get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["status"] == "False":
                    return str(cond["message"])
            return None

        message = wait_for(reason, timeout=30, what="an Unschedulable condition")
        assert message == ("0/2 nodes are available: 2 Insufficient memory. "
                           "preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.")
        assert c.get("Pod", "huge", ns)["status"]["phase"] == "Pending"
    assert lab.orchctl("describe", "pod", "huge", "-n", ns) == 0
    assert "2 Insufficient memory" in capsys.readouterr().out


# --- a Deployment --------------------------------------------------------------------


def test_deployment_spreads_scales_down_by_apply_and_deletes_its_pods(lab: LabCluster, ns: str,
                                                                      tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "web.yaml", deployment_manifest("web", ns, 3))
    assert lab.orchctl("apply", "-f", str(path)) == 0

    def three_running() -> list[dict[str, Any]] | None:
        pods = live_pods(lab, ns, "app=web")
        ok = len(pods) == 3 and all(p["status"].get("phase") == "Running" for p in pods)
        return pods if ok else None

    pods = wait_for(three_running, timeout=60, what="3 Running pods")
    assert {p["spec"]["nodeName"] for p in pods} == {"lab-node-1", "lab-node-2"}
    for p in pods:
        (owner,) = p["metadata"]["ownerReferences"]
        assert owner["kind"] == "Deployment" and owner["name"] == "web" and owner["controller"] is True

    write_yaml(path, deployment_manifest("web", ns, 1))
    assert lab.orchctl("apply", "-f", str(path)) == 0
    with lab.client() as c:
        wait_for(lambda: len(c.list("Pod", ns, "app=web")[0]) == 1, timeout=60, what="exactly 1 pod")
        time.sleep(2)  # the controller must not overshoot or re-create
        (left,) = c.list("Pod", ns, "app=web")[0]
        assert left["status"]["phase"] == "Running" and not left["metadata"].get("deletionTimestamp")
        assert c.get("Deployment", "web", ns)["spec"]["replicas"] == 1

    assert lab.orchctl("delete", "-f", str(path)) == 0
    with lab.client() as c:
        wait_for(lambda: not c.list("Pod", ns)[0], timeout=60, what="the deployment's pods to go")


# --- validation and the store --------------------------------------------------------


async def _etcd_objects(lab: LabCluster) -> dict[bytes, tuple[int, bytes]]:
    """Every object key in etcd with its revision and value, but Nodes (their heartbeats write)."""
    async with lab.etcd_store().client as client:  # mutual TLS, as the scheduler's
        rng = await client.get_prefix(b"/orch/")
        return {kv.key: (kv.mod_revision, kv.value) for kv in rng if not kv.key.startswith(b"/orch/nodes/")}


def test_invalid_multi_document_file_is_refused_whole_and_writes_nothing(
        lab: LabCluster, ns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = pod_manifest("good", ns)
    bad = pod_manifest("bad", ns)
    bad["spec"]["containers"][0]["resources"]["limits"]["memory"] = "64MB"
    path = write_yaml(tmp_path / "mixed.yaml", good, bad)
    before = asyncio.run(_etcd_objects(lab))

    assert lab.orchctl("apply", "-f", str(path)) == 1
    err = capsys.readouterr().err
    assert 'spec.containers[0].resources.limits.memory: "64MB" is not a quantity; use 64Mi or 67108864' in err
    assert "mixed.yaml" in err and "error:" in err

    assert asyncio.run(_etcd_objects(lab)) == before
    with lab.client() as c:
        assert c.list("Pod", ns)[0] == []


def test_concurrent_updates_from_one_resource_version_one_wins_one_conflicts(
        lab: LabCluster, ns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with lab.client() as c:
        c.apply([deployment_manifest("race", ns, 0)])
        # Read the revision once the controller has written the status: from then on
        # nothing but the two racers writes this object.
        settled = wait_for(lambda: (d := c.get("Deployment", "race", ns)).get("status", {}).get("observedGeneration")
                           and d, timeout=30, what="the controller to record the deployment's status")
        rv = settled["metadata"]["resourceVersion"]
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def update(replicas: int) -> None:
        doc = deployment_manifest("race", ns, replicas)
        doc["metadata"]["resourceVersion"] = rv
        with lab.client() as c:
            barrier.wait()
            try:
                c.apply([doc])
                outcomes.append("ok")
            except ConflictError:
                outcomes.append("conflict")

    threads = [threading.Thread(target=update, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "ok"]
    with lab.client() as c:
        dep = c.get("Deployment", "race", ns)
    assert dep["spec"]["replicas"] in (1, 2)
    assert int(dep["metadata"]["resourceVersion"]) > int(rv)

    # orchctl says so: a stale resourceVersion is a conflict, exit code 1.
    stale = deployment_manifest("race", ns, 0)
    stale["metadata"]["resourceVersion"] = rv
    assert lab.orchctl("apply", "-f", str(write_yaml(tmp_path / "stale.yaml", stale))) == 1
    assert "the object has been modified" in capsys.readouterr().err


# --- faults ----------------------------------------------------------------------------


def test_killing_the_scheduler_loses_nothing(lab: LabCluster, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cli import lab as labmod

    with lab.client() as c:
        c.apply([pod_manifest("steady", ns), deployment_manifest("steady-web", ns, 2)])
    pod = wait_for(lambda: running(lab, ns, "steady"), timeout=60, what="pod steady Running")
    wait_for(lambda: len([p for p in live_pods(lab, ns, "app=steady-web")
                          if p["status"].get("phase") == "Running"]) == 2, timeout=60, what="2 deployment pods")
    before = {p["metadata"]["uid"]: p for p in live_pods(lab, ns)}
    pid = lab.container_pid(pod["spec"]["nodeName"], container_id(pod))

    labmod.restart(lab.dir, "scheduler", signal.SIGKILL)
    assert pid_alive(pid), "a scheduler outage stopped a container"

    def same_pods_running() -> bool:
        after = {p["metadata"]["uid"]: p for p in live_pods(lab, ns)}
        return after.keys() == before.keys() and all(p["status"]["phase"] == "Running" for p in after.values())

    wait_for(same_pods_running, timeout=30, what="the same pods, Running, after the restart")
    time.sleep(3)  # a restarted controller must not create or delete anything
    assert {p["metadata"]["uid"] for p in live_pods(lab, ns)} == before.keys()
    assert pid_alive(pid)
    assert lab.orchctl("get", "pods", "-n", ns) == 0
    out = capsys.readouterr().out
    assert "steady" in out and out.count("Running") == 3


def test_killing_an_agent_keeps_its_containers_and_the_new_agent_adopts_them(lab: LabCluster, ns: str) -> None:
    from cli import lab as labmod

    with lab.client() as c:
        c.apply([pod_manifest("adopted", ns)])
    pod = wait_for(lambda: running(lab, ns, "adopted"), timeout=60, what="pod adopted Running")
    node, cid = pod["spec"]["nodeName"], container_id(pod)
    pid = lab.container_pid(node, cid)

    labmod.restart(lab.dir, node, signal.SIGKILL)
    assert pid_alive(pid), "killing the agent killed a container"
    time.sleep(3)  # the new agent has reconciled by now: it must not start a second container
    containers = list((Path(lab.agent(node)["state_dir"]) / "containers").iterdir())
    assert [d.name for d in containers if d.name == cid] == [cid]
    assert len([d for d in containers if (d / "config.json").exists()
                and json.loads((d / "config.json").read_text()).get("pod_uid") == pod["metadata"]["uid"]]) == 1
    after = wait_for(lambda: running(lab, ns, "adopted"), timeout=30, what="pod still Running")
    assert container_id(after) == cid and after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert pid_alive(pid)


def test_a_container_that_exits_while_its_agent_is_down_reports_its_real_exit_code(lab: LabCluster,
                                                                                  ns: str) -> None:
    from cli import lab as labmod

    doomed = pod_manifest("exits-alone", ns, restartPolicy="Never")
    doomed["spec"]["containers"][0]["command"] = ["/bin/sh", "-c", "sleep 2; exit 5"]
    with lab.client() as c:
        c.apply([doomed])
    pod = wait_for(lambda: running(lab, ns, "exits-alone"), timeout=60, what="pod exits-alone Running")
    node, cid = pod["spec"]["nodeName"], container_id(pod)

    # The agent is gone for longer than the container lives; its shim records the exit.
    labmod.restart(lab.dir, node, signal.SIGKILL, down_for=4)
    with lab.client() as c:
        def finished() -> dict[str, Any] | None:
            p = c.get("Pod", "exits-alone", ns)
            return p if p["status"].get("phase") == "Failed" else None

        done = wait_for(finished, timeout=30, what="the exit to be reported by the new agent")
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 5 and term["reason"] == "Error" and container_id(done) == cid


# --- the CLI as a real process -------------------------------------------------------


def test_orchctl_smoke_as_a_subprocess(lab: LabCluster, ns: str, tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "p.yaml", pod_manifest("smoke", ns))
    env = {**os.environ, "ORCH_SERVER": lab.server, "ORCHCONFIG": str(tmp_path / "none.yaml")}
    orchctl = [sys.executable, "-m", "cli.main", *lab.tls_flags()]  # the server from $ORCH_SERVER
    run = subprocess.run([*orchctl, "apply", "-f", "-"], input=path.read_text(), text=True,
                         capture_output=True, env=env, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "pod/smoke created" in run.stdout
    wait_for(lambda: running(lab, ns, "smoke"), timeout=60, what="pod smoke Running")
    got = subprocess.run([*orchctl, "get", "pod", "smoke", "-n", ns, "-o", "json"], text=True,
                         capture_output=True, env=env, cwd=REPO, timeout=60)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["status"]["phase"] == "Running"
    missing = subprocess.run([*orchctl, "get", "pod", "nope", "-n", ns], text=True, capture_output=True,
                             env=env, cwd=REPO, timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("error:")
    usage = subprocess.run([*orchctl, "frobnicate"], text=True, capture_output=True, env=env, cwd=REPO, timeout=60)
    assert usage.returncode == 2


def test_dry_run_validates_shows_changes_and_writes_nothing(lab: LabCluster, ns: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "d.yaml", deployment_manifest("dry", ns, 2))
    assert lab.orchctl("apply", "-f", str(path), "--dry-run") == 0
    assert "deployment.apps/dry created (server dry run)" in capsys.readouterr().out
    with lab.client() as c:
        assert c.list("Deployment", ns)[0] == []
        c.apply([deployment_manifest("dry", ns, 2)])
        rv = c.get("Deployment", "dry", ns)["metadata"]["resourceVersion"]

    write_yaml(path, deployment_manifest("dry", ns, 5))
    assert lab.orchctl("apply", "-f", str(path), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "deployment.apps/dry configured (server dry run)" in out
    assert "spec.replicas: 2 -> 5" in out
    bad = deployment_manifest("dry", ns, 5)
    bad["spec"]["template"]["spec"]["containers"][0]["imagee"] = "typo"
    assert lab.orchctl("apply", "-f", str(write_yaml(tmp_path / "bad.yaml", bad)), "--dry-run") == 1
    assert "spec.template.spec.containers[0].imagee: unknown field" in capsys.readouterr().err
    with lab.client() as c:
        dep = c.get("Deployment", "dry", ns)
        # The controller may have written status meanwhile; the spec is what dry runs must not touch.
        assert dep["spec"]["replicas"] == 2 and dep["metadata"]["generation"] == 1
        assert int(dep["metadata"]["resourceVersion"]) >= int(rv)


def test_pods_finish_with_their_exit_codes(lab: LabCluster, ns: str) -> None:
    ok = pod_manifest("ok", ns, restartPolicy="Never")
    ok["spec"]["containers"][0]["command"] = ["/bin/sh", "-c", "echo done"]
    bad = pod_manifest("bad", ns, restartPolicy="Never")
    bad["spec"]["containers"][0]["command"] = ["/bin/sh", "-c", "exit 3"]
    with lab.client() as c:
        c.apply([ok, bad])

        def finished(name: str) -> dict[str, Any] | None:
            pod = c.get("Pod", name, ns)
            return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

        done = wait_for(lambda: finished("ok"), timeout=60, what="pod ok to finish")
        failed = wait_for(lambda: finished("bad"), timeout=60, what="pod bad to finish")
    assert done["status"]["phase"] == "Succeeded"
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert failed["status"]["phase"] == "Failed"
    term = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert failed["status"]["containerStatuses"][0]["containerID"].startswith("orch://")


async def _compact_now(lab: LabCluster) -> int:
    async with lab.etcd_store().client as client:
        rev = (await client.get_prefix(b"/orch/none/")).header.revision
        await client.compact(rev)
        return int(rev)


def test_watch_from_a_resource_version_and_after_compaction(lab: LabCluster, ns: str) -> None:
    from apimachinery.errors import ExpiredError

    with lab.client() as c:
        _, rv = c.list("Pod", ns)
        c.apply([pod_manifest("watched", ns)])
        events = []
        for kind, obj in c.watch("Pod", ns, resource_version=rv, timeout=10):
            events.append((kind, obj["metadata"]["name"]))
            if kind == "MODIFIED":
                break
        assert events[0] == ("ADDED", "watched")
        # The history the watch started from is compacted away: the client is told to relist.
        asyncio.run(_compact_now(lab))
        with pytest.raises(ExpiredError, match="too old resource version"):
            next(iter(c.watch("Pod", ns, resource_version=rv, timeout=10)))
        # The scheduler's own informers carry on: new work still gets scheduled and run.
        c.apply([pod_manifest("after-compaction", ns)])
    wait_for(lambda: running(lab, ns, "after-compaction"), timeout=60, what="a pod applied after compaction")


def test_get_with_selectors_namespaces_and_formats(lab: LabCluster, ns: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    a = pod_manifest("sel-a", ns)
    b = pod_manifest("sel-b", ns)
    b["metadata"]["labels"] = {"app": "other", "tier": "db"}
    with lab.client() as c:
        c.apply([a, b])
    wait_for(lambda: running(lab, ns, "sel-a") and running(lab, ns, "sel-b"), timeout=60, what="both pods")
    capsys.readouterr()
    assert lab.orchctl("get", "pods", "-n", ns, "-l", "tier=db", "-o", "name") == 0
    assert capsys.readouterr().out.split() == ["pod/sel-b"]
    assert lab.orchctl("get", "pods", "-A", "-l", "app in (sel-a,other)", "-o", "wide") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert "sel-a" in out and "sel-b" in out and "lab-node-" in out
    assert lab.orchctl("get", "pod", "sel-a", "-n", ns, "-o", "yaml") == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["metadata"]["name"] == "sel-a" and doc["status"]["phase"] == "Running"
    assert lab.orchctl("get", "nodes") == 0
    nodes = capsys.readouterr().out
    assert nodes.count("Ready") == 2
    assert lab.orchctl("get", "pods", "-n", ns, "-l", "app=") == 0
    assert lab.orchctl("get", "pods", "-n", ns, "-l", "=bad") == 1
    assert "error:" in capsys.readouterr().err


def test_nodes_register_capacity_and_allocatable_less_system_reserved(lab: LabCluster) -> None:
    with lab.client() as c:
        nodes, _ = c.list("Node")
    assert sorted(n["metadata"]["name"] for n in nodes) == ["lab-node-1", "lab-node-2"]
    for node in nodes:
        status = node["status"]
        # The lab's nodes advertise 2 CPUs and 4Gi; the agent keeps cpu=100m,memory=256Mi back by default.
        assert status["capacity"]["cpu"] == "2" and status["capacity"]["memory"] == "4Gi"
        assert status["allocatable"]["cpu"] == "1900m" and status["allocatable"]["memory"] == "3840Mi"
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == node["metadata"]["name"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"
