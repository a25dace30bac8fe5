"""Deployments on the shared lab: a rolling update never drops below ``replicas -
maxUnavailable`` ready pods (sampled all along), ``rollout status|history|undo|restart``
and ``scale`` through orchctl's real entry point."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.conftest import LabCluster
from tests.helpers import wait_for

REPLICAS, MAX_UNAVAILABLE = 3, 1


def deployment(ns: str, seconds: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": REPLICAS, "revisionHistoryLimit": 5,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": MAX_UNAVAILABLE}},
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "c", "image": "host", "command": ["/bin/sleep", seconds],
                    "resources": {"limits": {"memory": "32Mi", "cpu": "50m"}},
                    # Ready a second or two after start: the rollout must wait for it. A generous
                    # timeout: on a loaded machine a 1 s exec can time out three times running,
                    # and a pod that flips to not Ready is not what this test is about.
                    "readinessProbe": {"exec": {"command": ["/bin/true"]}, "initialDelaySeconds": 1,
                                       "periodSeconds": 1, "timeoutSeconds": 10},
                }]}},
        },
    }


def ready(p: dict[str, Any]) -> bool:
    return not p["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))


class Sampler(threading.Thread):
    """Counts the ready pods of the namespace every few tens of milliseconds."""

    def __init__(self, lab: LabCluster, ns: str) -> None:
        super().__init__(daemon=True)
        self.lab, self.ns = lab, ns
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with self.lab.client() as c:
            while not self.stop.is_set():
                self.samples.append(sum(1 for p in c.list("Pod", self.ns)[0] if ready(p)))
                time.sleep(0.05)


def commands(lab: LabCluster, ns: str) -> list[str]:
    with lab.client() as c:
        return sorted(p["spec"]["containers"][0]["command"][1] for p in c.list("Pod", ns)[0]
                      if not p["metadata"].get("deletionTimestamp"))


def revision(lab: LabCluster, ns: str) -> str:
    with lab.client() as c:
        return str(c.get("Deployment", "web", ns)["metadata"].get("annotations", {})
                   .get("deployment.kubernetes.io/revision"))


def rolled_out(lab: LabCluster, ns: str, capsys: pytest.CaptureFixture[str]) -> str:
    code = lab.orchctl("-n", ns, "rollout", "status", "deployment/web", "--timeout", "120s")
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[-1] == 'deployment "web" successfully rolled out'
    return out


def test_rolling_update_keeps_enough_ready_pods_and_undo_goes_back(
        lab: LabCluster, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    with lab.client() as c:
        c.apply([deployment(ns, "600")])
    rolled_out(lab, ns, capsys)
    assert commands(lab, ns) == ["600"] * REPLICAS
    assert revision(lab, ns) == "1"

    sampler = Sampler(lab, ns)
    sampler.start()
    try:
        time.sleep(0.5)
        with lab.client() as c:
            c.apply([deployment(ns, "601")])
        out = rolled_out(lab, ns, capsys)
        time.sleep(0.5)
    finally:
        sampler.stop.set()
        sampler.join()
    assert "Waiting for deployment \"web\" rollout to finish" in out  # it did have to wait
    assert len(sampler.samples) > 20
    assert min(sampler.samples) >= REPLICAS - MAX_UNAVAILABLE, sampler.samples
    assert wait_for(lambda: commands(lab, ns) == ["601"] * REPLICAS, timeout=30, what="only new pods")
    assert revision(lab, ns) == "2"
    with lab.client() as c:
        pods, _ = c.list("Pod", ns)
        assert {p["metadata"]["annotations"]["deployment.kubernetes.io/revision"] for p in pods
                if not p["metadata"].get("deletionTimestamp")} == {"2"}
        assert len({p["metadata"]["labels"]["pod-template-hash"] for p in pods
                    if not p["metadata"].get("deletionTimestamp")}) == 1

    assert lab.orchctl("-n", ns, "rollout", "history", "deployment/web") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "deployment.apps/web"
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["REVISION", "1", "2"]

    assert lab.orchctl("-n", ns, "rollout", "undo", "deployment/web") == 0
    assert capsys.readouterr().out == "deployment.apps/web rolled back\n"
    rolled_out(lab, ns, capsys)
    assert wait_for(lambda: commands(lab, ns) == ["600"] * REPLICAS, timeout=30, what="the first template back")
    assert revision(lab, ns) == "3"  # revision 1 came back as revision 3
    assert lab.orchctl("-n", ns, "rollout", "history", "deployment/web") == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["2", "3"]

    assert lab.orchctl("-n", ns, "rollout", "undo", "deployment/web", "--to-revision", "9") == 1
    assert "unable to find specified revision 9 in history" in capsys.readouterr().err


def test_scale_and_restart(lab: LabCluster, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    with lab.client() as c:
        c.apply([deployment(ns, "600")])
    rolled_out(lab, ns, capsys)
    assert lab.orchctl("-n", ns, "scale", "deployment/web", "--replicas", "5") == 0
    assert capsys.readouterr().out == "deployment.apps/web scaled\n"
    rolled_out(lab, ns, capsys)
    assert len(commands(lab, ns)) == 5
    assert lab.orchctl("-n", ns, "scale", "deployment", "web", "--replicas=1") == 0
    capsys.readouterr()
    wait_for(lambda: len(commands(lab, ns)) == 1, timeout=30, what="one pod left")

    with lab.client() as c:
        before = {p["metadata"]["name"] for p in c.list("Pod", ns)[0]}
    assert lab.orchctl("-n", ns, "rollout", "restart", "deployment/web") == 0
    assert capsys.readouterr().out == "deployment.apps/web restarted\n"
    rolled_out(lab, ns, capsys)
    with lab.client() as c:
        dep = c.get("Deployment", "web", ns)
        assert "kubectl.kubernetes.io/restartedAt" in dep["spec"]["template"]["metadata"]["annotations"]

    def replaced() -> bool:
        with lab.client() as c:
            names = {p["metadata"]["name"] for p in c.list("Pod", ns)[0]}
        return len(names) == 1 and not names & before

    wait_for(replaced, timeout=30, what="a new pod")

    assert lab.orchctl("-n", ns, "scale", "pod/x", "--replicas", "1") == 2
    assert lab.orchctl("-n", ns, "rollout", "status", "deployment/nope") == 1
    capsys.readouterr()


def test_a_rollout_that_cannot_progress_exceeds_its_deadline_and_rollout_status_says_so(
        lab: LabCluster, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    dep = deployment(ns, "600")
    dep["spec"]["progressDeadlineSeconds"] = 3
    probe = dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["exec"]["command"] = ["/bin/false"]  # never Ready: the rollout cannot progress
    with lab.client() as c:
        c.apply([dep])

    def condition() -> dict[str, Any] | None:
        with lab.client() as c:
            status = c.get("Deployment", "web", ns).get("status", {})
        cond = {c["type"]: c for c in status.get("conditions", [])}
        progressing = cond.get("Progressing", {})
        return cond if progressing.get("reason") == "ProgressDeadlineExceeded" else None

    cond = wait_for(condition, timeout=60, what="Progressing=False, ProgressDeadlineExceeded")
    assert cond["Progressing"]["status"] == "False"
    assert (cond["Available"]["status"], cond["Available"]["reason"]) == ("False", "MinimumReplicasUnavailable")
    capsys.readouterr()
    assert lab.orchctl("-n", ns, "rollout", "status", "deployment/web", "--timeout", "30s") == 1
    assert 'deployment "web" exceeded its progress deadline' in capsys.readouterr().err
