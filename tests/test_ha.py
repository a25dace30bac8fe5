"""High availability on a real lab: two schedulers, one leader; SIGKILL the leader and the
other leads within the lease TTL, schedules a new pod, and the node whose scheduler died
reconnects to the survivor.

The lab is this module's own (1 node, 2 schedulers, a 3 s lease), torn down by PID
afterwards, also when a test fails.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LabCluster, running_lab
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates namespaces and cgroups")

LEASE_TTL = 3.0
NODE = "lab-node-1"


@pytest.fixture(scope="module")
def ha_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    with running_lab(tmp_path_factory.mktemp("orch-ha-lab"), 1, "ha-lab-logs", node_cpu="2", node_memory="2Gi",
                     schedulers=2, scheduler_args=["--leader-elect-lease-duration", str(LEASE_TTL)]) as lab:
        yield lab


def schedulers(lab: LabCluster) -> list[dict[str, Any]]:
    from cli import lab as labmod

    return list(labmod.status(lab.dir)["schedulers"])


def leader(lab: LabCluster) -> dict[str, Any] | None:
    """The one live scheduler the election Lease names, if exactly one does."""
    leading = [s for s in schedulers(lab) if s["leader"]]
    return leading[0] if len(leading) == 1 else None


def found(value: dict[str, Any] | None) -> dict[str, Any]:
    assert value is not None
    return value


def registered_with(lab: LabCluster) -> list[str]:
    """The scheduler addresses the node's agent registered with, in order (from its log)."""
    text = Path(lab.agent(NODE)["log"]).read_text()
    return re.findall(rf"node {NODE}: registered with (\S+)", text)


def pod(name: str, ns: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "main", "image": "host", "command": ["/bin/sleep", "600"],
                                     "resources": {"limits": {"memory": "32Mi", "cpu": "100m"}}}]}}


def running_on_node(lab: LabCluster, ns: str, name: str) -> dict[str, Any] | None:
    with lab.client() as c:
        p = c.get("Pod", name, ns)
    return p if p["spec"].get("nodeName") == NODE and p.get("status", {}).get("phase") == "Running" else None


def test_one_leader_and_killing_it_hands_over_within_the_lease_ttl(
        ha_lab: LabCluster, capsys: pytest.CaptureFixture[str]) -> None:
    from cli import lab as labmod

    lab = ha_lab
    first = found(wait_for(lambda: leader(lab), timeout=LEASE_TTL * 3, what="a leader"))
    with lab.client() as c:
        lease = c.get("Lease", "orch-scheduler", "kube-system")
    holder = lease["spec"]["holderIdentity"]
    # Exactly one scheduler ever said it leads: the one the Lease names.
    said = [s["name"] for s in schedulers(lab) if "became the leader" in Path(s["log"]).read_text()]
    assert said == [first["name"]]
    assert f"{holder} became the leader" in Path(first["log"]).read_text()

    # The leader shows where a user looks: orchctl get leases, orchctl lab status.
    assert lab.orchctl("get", "leases", "-n", "kube-system") == 0
    out = capsys.readouterr().out
    assert out.split("\n")[0].split() == ["NAME", "HOLDER", "AGE"] and holder in out
    from cli.main import main

    assert main(["lab", "status", "--dir", str(lab.dir)]) == 0
    out = capsys.readouterr().out
    assert f"leader:   {holder}" in out
    assert any(line.split()[:3] == [first["name"], str(first["pid"]), "running,leader"] for line in out.splitlines())

    # The node's agent must be on the scheduler that dies: if it is on the other, that one
    # is made the leader first — the leader resigns on SIGTERM, and the other takes over.
    agent_on = wait_for(lambda: registered_with(lab), timeout=10, what="the agent's registration")[-1]
    if first["lab_address"] != agent_on:
        labmod.restart(lab.dir, first["name"], signal.SIGTERM)
        first = found(wait_for(lambda: (lead := leader(lab)) and lead["lab_address"] == agent_on and lead,
                               timeout=LEASE_TTL + 2, what="the agent's scheduler to lead after the resignation"))
    survivor = next(s for s in schedulers(lab) if s["name"] != first["name"])
    connections = len(registered_with(lab))

    os.kill(first["pid"], signal.SIGKILL)  # the lab's own process, by its recorded PID
    killed = time.monotonic()
    dead = dict(first, startTime=labmod.start_time(first["pid"]))
    wait_for(lambda: not labmod.alive(dead), timeout=5, what="the leader to die")
    new = found(wait_for(lambda: (lead := leader(lab)) and lead["name"] != first["name"] and lead,
                         timeout=LEASE_TTL + 3, what="another scheduler to lead"))
    took = time.monotonic() - killed
    assert new["name"] == survivor["name"], new
    assert took <= LEASE_TTL + 3
    # orchctl, given the dead address first, goes on to the survivor, which names the new holder.
    capsys.readouterr()
    assert main(["--server", f"{first['address']},{survivor['address']}", *lab.tls_flags(), "get", "leases", "-n",
                 "kube-system"]) == 0
    out = capsys.readouterr().out
    assert holder not in out and f"_{survivor['pid']}_" in out

    # The node that was served by the dead scheduler is served by the survivor.
    wait_for(lambda: registered_with(lab)[connections:], timeout=10, what="the agent to register again")
    assert registered_with(lab)[-1] == survivor["lab_address"]

    # Scheduling goes on: a new pod is bound by the new leader and run by the node.
    with lab.client() as c:
        c.apply([pod("after-failover", "ha")])
    placed = found(wait_for(lambda: running_on_node(lab, "ha", "after-failover"), timeout=30,
                            what="the new pod to be scheduled and Running"))
    assert placed["spec"]["nodeName"] == NODE
