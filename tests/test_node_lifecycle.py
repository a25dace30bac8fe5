"""Node lifecycle and drain on a real lab of this module's own (2 nodes, low timeouts).

* An agent stops (SIGKILL, by the lab's recorded PID): its lease lapses, the node goes
  ``Ready=Unknown`` with the ``node.kubernetes.io/unreachable`` taints, its Deployment
  pods are evicted after their (default, here 5 s) toleration and come back Running on
  the other node; the agent comes back: the taints go and the node is Ready again.
* ``orchctl cordon``, ``uncordon`` and ``drain`` (graceful, waits; a pod no controller
  owns is refused without ``--force``).

The lab is torn down by PID afterwards, also when a test fails; ``lab.down`` also stops
the containers that the SIGKILLed agent left running.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import LabCluster, running_lab
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates namespaces and cgroups")

GRACE = 5.0  # --node-monitor-grace-period
TOLERATION = 5  # --default-unreachable-toleration-seconds
NODES = ("lab-node-1", "lab-node-2")


@pytest.fixture(scope="module")
def nl_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    with running_lab(tmp_path_factory.mktemp("orch-nl-lab"), 2, "nl-lab-logs", node_cpu="2", node_memory="2Gi",
                     scheduler_args=["--node-monitor-grace-period", str(GRACE), "--heartbeat-interval", "1",
                                     "--default-unreachable-toleration-seconds", str(TOLERATION),
                                     "--default-not-ready-toleration-seconds", str(TOLERATION)]) as lab:
        yield lab


def deployment(name: str, ns: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": 2,
                                       "containers": [{"name": "c", "image": "host",
                                                       "command": ["/bin/sleep", "600"],
                                                       "resources": {"limits": {"memory": "32Mi",
                                                                                "cpu": "50m"}}}]}}},
    }


def bare_pod(name: str, ns: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 2,
                     "containers": [{"name": "c", "image": "host", "command": ["/bin/sleep", "600"],
                                     "resources": {"limits": {"memory": "32Mi", "cpu": "50m"}}}]}}


def pods(lab: LabCluster, ns: str) -> list[dict[str, Any]]:
    with lab.client() as c:
        return c.list("Pod", ns)[0]


def running(lab: LabCluster, ns: str) -> list[dict[str, Any]]:
    return [p for p in pods(lab, ns) if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def node(lab: LabCluster, name: str) -> dict[str, Any]:
    with lab.client() as c:
        return c.get("Node", name)


def ready_status(n: dict[str, Any]) -> str:
    return next((c["status"] for c in n["status"].get("conditions", []) if c["type"] == "Ready"), "")


def condition_taints(n: dict[str, Any]) -> set[tuple[str, str]]:
    return {(t["key"], t["effect"]) for t in n["spec"].get("taints") or ()
            if t["key"].startswith("node.kubernetes.io/")}


def cleanup(lab: LabCluster, ns: str) -> None:
    with lab.client() as c:
        for kind in ("Deployment", "Pod"):
            for obj in c.list(kind, ns)[0]:
                try:
                    c.delete(kind, obj["metadata"]["name"], ns, grace_period_seconds=0)
                except Exception:  # noqa: BLE001, S110 - already going; the wait below is the check
                    pass
    wait_for(lambda: not pods(lab, ns), timeout=60, what=f"the pods of {ns} to go")


def test_pods_get_the_default_not_ready_and_unreachable_tolerations(nl_lab: LabCluster) -> None:
    with nl_lab.client() as c:
        (_, created), = c.apply([bare_pod("tolerant", "nl-tol", NODES[0])])
        c.delete("Pod", "tolerant", "nl-tol", grace_period_seconds=0)
    tolerations = created["spec"]["tolerations"]
    assert {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": TOLERATION} in tolerations
    assert {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": TOLERATION} in tolerations
    # Leases, not Node writes, carry the heartbeats: one per node in kube-node-lease.
    with nl_lab.client() as c:
        leases = {item["metadata"]["name"]: item for item in c.list("Lease", "kube-node-lease")[0]}
    assert set(NODES) <= set(leases)
    assert leases[NODES[0]]["spec"]["holderIdentity"] == NODES[0]


def test_a_stopped_agent_makes_its_node_unreachable_and_its_pods_move(nl_lab: LabCluster) -> None:
    from cli import lab as labmod

    lab, ns = nl_lab, "nl-move"
    try:
        with lab.client() as c:
            c.apply([deployment("web", ns, 2)])
        wait_for(lambda: len(running(lab, ns)) == 2, timeout=60, what="2 pods Running")
        victim = running(lab, ns)[0]["spec"]["nodeName"]
        survivor = next(n for n in NODES if n != victim)

        os.kill(lab.agent(victim)["pid"], signal.SIGKILL)  # the lab's own process, by its recorded PID
        stopped = time.monotonic()
        n = wait_for(lambda: (n := node(lab, victim)) and ready_status(n) == "Unknown" and n,
                     timeout=GRACE + 10, what=f"{victim} to be NotReady (Unknown)")
        wait_for(lambda: condition_taints(node(lab, victim)) == {
            ("node.kubernetes.io/unreachable", "NoExecute"), ("node.kubernetes.io/unreachable", "NoSchedule")},
            timeout=10, what="the unreachable taints")
        assert ready_status(n) == "Unknown"
        assert lab.orchctl("get", "nodes") == 0

        # Replaced on the survivor within the grace period + the toleration (+ scheduling and start).
        wait_for(lambda: (r := running(lab, ns)) and len(r) == 2 and all(p["spec"]["nodeName"] == survivor
                                                                          for p in r),
                 timeout=GRACE + TOLERATION + 30, what="both pods Running on the surviving node")
        took = time.monotonic() - stopped
        assert took <= GRACE + TOLERATION + 30
        # The evicted pods cannot be confirmed stopped; after their grace period they are removed.
        wait_for(lambda: all(p["spec"]["nodeName"] == survivor for p in pods(lab, ns)), timeout=30,
                 what="the evicted pods to be removed")
        with lab.client() as c:
            events, _ = c.list("Event", ns)
        assert any(e["reason"] == "TaintManagerEviction" for e in events), events

        # The agent comes back: Ready again, the taints go.
        labmod.restart(lab.dir, victim)
        wait_for(lambda: ready_status(node(lab, victim)) == "True", timeout=30, what=f"{victim} Ready again")
        wait_for(lambda: not condition_taints(node(lab, victim)), timeout=15, what="the taints to go")
    finally:
        cleanup(lab, ns)


def test_cordon_uncordon_and_drain(nl_lab: LabCluster, capsys: pytest.CaptureFixture[str]) -> None:
    lab, ns = nl_lab, "nl-drain"
    target, other = NODES
    for name in NODES:
        wait_for(lambda n=name: ready_status(node(lab, n)) == "True" and not condition_taints(node(lab, n)),
                 timeout=30, what=f"{name} Ready")
    try:
        assert lab.orchctl("cordon", target) == 0
        assert capsys.readouterr().out == f"node/{target} cordoned\n"
        assert node(lab, target)["spec"]["unschedulable"] is True
        assert lab.orchctl("get", "nodes") == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(target))
        assert "Ready,SchedulingDisabled" in row
        assert lab.orchctl("uncordon", target) == 0
        assert capsys.readouterr().out == f"node/{target} uncordoned\n"
        assert not node(lab, target)["spec"].get("unschedulable")

        with lab.client() as c:
            c.apply([deployment("web", ns, 2), bare_pod("bare", ns, target)])
        wait_for(lambda: len(running(lab, ns)) == 3, timeout=60, what="3 pods Running")
        on_target = {p["metadata"]["name"] for p in running(lab, ns) if p["spec"]["nodeName"] == target}
        assert "bare" in on_target

        # A pod that no controller would re-create: refused, nothing deleted (the node stays cordoned).
        capsys.readouterr()
        assert lab.orchctl("drain", target, "--timeout", "60s") == 1
        captured = capsys.readouterr()
        assert "cannot delete Pods that declare no controller (use --force to override)" in captured.err
        assert f"{ns}/bare" in captured.err
        assert len(running(lab, ns)) == 3
        assert node(lab, target)["spec"]["unschedulable"] is True

        assert lab.orchctl("drain", target, "--force", "--timeout", "60s") == 0
        captured = capsys.readouterr()
        lines = captured.out.splitlines()
        assert lines[0] == f"node/{target} already cordoned"
        assert f"evicting pod {ns}/bare" in lines and "pod/bare evicted" in lines
        assert lines[-1] == f"node/{target} drained"
        assert not [p for p in pods(lab, ns) if p["spec"].get("nodeName") == target]
        wait_for(lambda: (r := running(lab, ns)) and len(r) == 2 and all(p["spec"]["nodeName"] == other for p in r),
                 timeout=60, what="the Deployment's pods Running on the other node")
    finally:
        lab.orchctl("uncordon", target)
        cleanup(lab, ns)
