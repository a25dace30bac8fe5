"""Certificate rotation on a running lab: ``orchctl pki rotate all`` needs no restart and
costs no container.

A lab of this module's own (one node), with a pod running. After every leaf is rotated
(scheduler, node, admin, etcd's):

* the agent notices its new certificate and reconnects with it (its log names the serial
  it dials with), while the container runs on: same pid, restartCount 0;
* the scheduler and the agent *serve* the new certificates from the next handshake on,
  without a restart (checked with Python's ssl, as a client of each: the serial presented);
* status keeps flowing over the new connections: a pod created afterwards runs, a pod's
  change of phase is reported, and exec (orchctl → scheduler → agent, both hops on the
  rotated certificates) works;
* orchctl presents the new admin certificate (it reads the files for each client), and the
  old one is still accepted until it expires: rotation revokes nothing.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from apimachinery import pki
from tests.conftest import LabCluster, running_lab
from tests.helpers import container_id, pid_alive, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates namespaces and cgroups")

NODE = "lab-node-1"
NS = "rotation"


@pytest.fixture(scope="module")
def rotation_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    with running_lab(tmp_path_factory.mktemp("orch-rotation-lab"), 1, "rotation-lab-logs", node_cpu="2",
                     node_memory="2Gi") as lab:
        yield lab


def served_serial(host: str, port: int, server_name: str, client: pki.TLSFiles) -> int:
    """The serial of the certificate the server at ``host:port`` presents in a new handshake
    (verified against the CA bundle and for ``server_name``), with ``client``'s certificate."""
    context = ssl.create_default_context(cafile=str(client.ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    context.set_alpn_protocols(["h2"])  # what a gRPC client offers
    with socket.create_connection((host, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def serial(p: pki.PKI, slot: str) -> int:
    return int(pki.read_cert(p.cert_path(slot)).serial_number)


def dialled_serials(lab: LabCluster) -> list[int]:
    """The certificate serials the node's agent dialled the scheduler with, in order (its log)."""
    text = Path(lab.agent(NODE)["log"]).read_text()
    return [int(s, 16) for s in re.findall(rf"node {NODE}: dialling \S+ over mutual TLS with certificate serial "
                                           r"([0-9a-f]+)", text)]


def pod(name: str, command: list[str], restart: str = "Always") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"restartPolicy": restart,
                     "containers": [{"name": "main", "image": "host", "command": command,
                                     "resources": {"limits": {"memory": "32Mi", "cpu": "100m"}}}]}}


def phase(lab: LabCluster, name: str) -> str:
    with lab.client() as c:
        return str(c.get("Pod", name, NS).get("status", {}).get("phase", ""))


def test_rotate_all_needs_no_restart_and_costs_no_container(rotation_lab: LabCluster, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    lab = rotation_lab
    tls = lab.tls
    assert tls is not None
    p = pki.PKI(Path(tls["pkiDir"]))
    admin = pki.TLSFiles.for_slot(p.dir, pki.ADMIN)
    scheduler_files = pki.TLSFiles.for_slot(p.dir, pki.SCHEDULER)
    sched_host, sched_port = lab.server.split(",")[0].rsplit(":", 1)
    node_address = lab.agent(NODE)["address"]
    with lab.client() as c:
        node = c.get("Node", NODE)
    agent_port = int(node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"])

    # A pod running before, and one that waits to be told to finish.
    with lab.client() as c:
        c.apply([pod("steady", ["/bin/sleep", "3600"]),
                 pod("waiter", ["/bin/sh", "-c", "while [ ! -e /tmp/finish ]; do sleep 0.1; done"], "Never")])
    wait_for(lambda: phase(lab, "steady") == "Running" and phase(lab, "waiter") == "Running", timeout=60,
             what="both pods to run")
    with lab.client() as c:
        steady = c.get("Pod", "steady", NS)
    cid = container_id(steady)
    pid = lab.container_pid(NODE, cid)

    before = {slot: serial(p, slot) for slot in (pki.SCHEDULER, pki.node_slot(NODE), pki.ADMIN)}
    assert served_serial(sched_host, int(sched_port), sched_host, admin) == before[pki.SCHEDULER]
    assert served_serial(node_address, agent_port, NODE, scheduler_files) == before[pki.node_slot(NODE)]
    assert dialled_serials(lab)[-1] == before[pki.node_slot(NODE)]
    old_admin = {name: (p.dir / f"admin.{name}").read_bytes() for name in ("crt", "key")}

    assert main(["pki", "rotate", "all", "--dir", str(p.dir)]) == 0
    out = capsys.readouterr().out
    after = {slot: serial(p, slot) for slot in before}
    assert all(after[slot] != before[slot] for slot in before), out

    # The agent reconnects with its new certificate by itself (it watches the files).
    wait_for(lambda: dialled_serials(lab)[-1] == after[pki.node_slot(NODE)], timeout=15,
             what="the agent to dial with its rotated certificate")
    # Both servers present the new certificates from the next handshake on: no restart.
    assert served_serial(sched_host, int(sched_port), sched_host, admin) == after[pki.SCHEDULER]
    assert served_serial(node_address, agent_port, NODE, scheduler_files) == after[pki.node_slot(NODE)]
    # Nothing was restarted: the lab's processes are the ones it started.
    from cli import lab as labmod

    now = labmod.status(lab.dir)
    assert [(a["pid"], a["alive"]) for a in now["agents"]] == [(a["pid"], True) for a in lab.info["agents"]]
    assert [(s["pid"], s["alive"]) for s in now["schedulers"]] == [(s["pid"], True) for s in lab.info["schedulers"]]

    # Status flows over the new connections: a new pod runs; exec reaches the waiter through the
    # scheduler (its rotated client certificate against the agent's rotated serving one), and the
    # waiter's finish is reported.
    with lab.client() as c:
        c.apply([pod("after", ["/bin/sleep", "3600"])])
    wait_for(lambda: phase(lab, "after") == "Running", timeout=60, what="a pod created after the rotation to run")
    assert lab.orchctl("exec", "waiter", "-n", NS, "--", "/bin/touch", "/tmp/finish") == 0
    wait_for(lambda: phase(lab, "waiter") == "Succeeded", timeout=30,
             what="the waiter's finish to be reported after the rotation")

    # The running container was never touched.
    with lab.client() as c:
        steady = c.get("Pod", "steady", NS)
    status = steady["status"]["containerStatuses"][0]
    assert (container_id(steady), status["restartCount"], lab.container_pid(NODE, cid)) == (cid, 0, pid)
    assert pid_alive(pid)

    # The old admin certificate still works until it expires (rotation revokes nothing).
    old = tmp_path / "old-admin"
    old.mkdir()
    for name, data in old_admin.items():
        (old / f"admin.{name}").write_bytes(data)
    (old / "admin.key").chmod(0o600)
    assert main(["--server", lab.server, "--certificate-authority", tls["certificateAuthority"],
                 "--client-certificate", str(old / "admin.crt"), "--client-key", str(old / "admin.key"),
                 "get", "pod", "steady", "-n", NS]) == 0
    assert "steady" in capsys.readouterr().out
