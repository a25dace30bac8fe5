"""Probes on the real lab: readiness gates Ready, a failing liveness probe restarts the
container, a passing one leaves it alone. Checks run inside the pod (exec in its
namespaces; httpGet into its own network namespace)."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import LabCluster
from tests.helpers import wait_for


def pod(name: str, ns: str, command: list[str], **probes: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "host", "command": command,
                                     "ports": [{"name": "http", "containerPort": 8080}],
                                     "resources": {"limits": {"memory": "64Mi"}}, **probes}]}}


def container_status(lab: LabCluster, ns: str, name: str) -> dict[str, Any]:
    with lab.client() as c:
        p = c.get("Pod", name, ns)
    return (p.get("status", {}).get("containerStatuses") or [{}])[0]


def pod_ready(lab: LabCluster, ns: str, name: str) -> bool:
    with lab.client() as c:
        conds = c.get("Pod", name, ns).get("status", {}).get("conditions", [])
    return any(x["type"] == "Ready" and x["status"] == "True" for x in conds)


def test_readiness_gates_ready_and_liveness_restarts(lab: LabCluster, ns: str) -> None:
    serve_later = ["/bin/sh", "-c", "sleep 3; exec python3 -m http.server 8080 --bind 127.0.0.1"]
    healthy_for_a_while = ["/bin/sh", "-c", "touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 600"]
    with lab.client() as c:
        c.apply([
            pod("ready-later", ns, serve_later,
                readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}),
            pod("goes-bad", ns, healthy_for_a_while,
                livenessProbe={"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1,
                               "failureThreshold": 1}),
            pod("stays-good", ns, ["/bin/sleep", "600"],
                livenessProbe={"exec": {"command": ["true"]}, "periodSeconds": 1, "failureThreshold": 1}),
        ])

    # Running but not Ready until the server answers; then Ready.
    wait_for(lambda: "running" in container_status(lab, ns, "ready-later").get("state", {}), timeout=60,
             what="ready-later running")
    assert not container_status(lab, ns, "ready-later")["ready"]
    assert not pod_ready(lab, ns, "ready-later")
    wait_for(lambda: pod_ready(lab, ns, "ready-later"), timeout=30, what="ready-later to become Ready")
    assert container_status(lab, ns, "ready-later")["ready"]

    # The exec liveness probe fails once /tmp/healthy is gone: the container is restarted.
    restarted = wait_for(lambda: (s := container_status(lab, ns, "goes-bad")).get("restartCount", 0) >= 1 and s,
                         timeout=60, what="goes-bad to be restarted by its liveness probe")
    last = restarted.get("lastState", {}).get("terminated", {})
    assert last, restarted

    # A passing exec probe leaves its container alone.
    time.sleep(3)
    good = container_status(lab, ns, "stays-good")
    assert "running" in good["state"] and good["restartCount"] == 0 and good["ready"]
