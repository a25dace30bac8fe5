"""Fixtures: a real 2-node lab cluster (real etcd, scheduler and agents), shared by the
cluster tests of one session, and a fresh Kubernetes namespace for each test."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.registry_fixture import registry  # noqa: F401 - a shared fixture: a real OCI registry

REPO = Path(__file__).resolve().parent.parent

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates namespaces and cgroups")


@dataclass
class LabCluster:
    dir: Path
    info: dict[str, Any]

    @property
    def server(self) -> str:
        return str(self.info["server"])

    @property
    def tls(self) -> dict[str, Any] | None:
        """The lab's TLS files (cli.lab.status's "tls"); None when the lab is plaintext."""
        tls = self.info.get("tls") or {}
        return tls if tls.get("enabled") else None

    def client(self) -> Any:
        """A ClusterClient of the lab's schedulers, with the lab's admin certificate."""
        from cli.client import ClientTLS, ClusterClient

        tls = self.tls
        return ClusterClient(self.server, tls=ClientTLS.from_pki(tls["pkiDir"]) if tls else None)

    def tls_flags(self) -> list[str]:
        """orchctl's flags to connect to the lab as its admin (``--insecure`` for a plaintext lab)."""
        tls = self.tls
        if tls is None:
            return ["--insecure"]
        return ["--certificate-authority", tls["certificateAuthority"], "--client-certificate",
                tls["clientCertificate"], "--client-key", tls["clientKey"]]

    def cli_flags(self) -> list[str]:
        """orchctl's global flags to reach the lab as its admin, ``--server`` included."""
        return ["--server", self.server, *self.tls_flags()]

    def etcd_store(self, prefix: str = "/orch") -> Any:
        """A Store on the lab's etcd, over mutual TLS with the scheduler's etcd client certificate
        (for a test's write no agent or user could make); close it after use."""
        from scheduler.store import EtcdTLS, Store

        tls = self.tls
        etcd = EtcdTLS(Path(tls["etcdCA"]), Path(tls["etcdCert"]), Path(tls["etcdKey"])) if tls else None
        return Store.connect(str(self.info["etcd"]), prefix, tls=etcd)

    def agent(self, node: str) -> dict[str, Any]:
        return next(a for a in self.info["agents"] if a["node"] == node)

    def container_pid(self, node: str, cid: str) -> int:
        started = Path(self.agent(node)["state_dir"]) / "containers" / cid / "started.json"
        return int(json.loads(started.read_text())["pid"])

    def empty_namespace(self, name: str, timeout: float = 60) -> None:
        """Delete every Deployment and Pod of namespace ``name`` at once, and wait until no pod is left."""
        from tests.helpers import wait_for

        with self.client() as c:
            for kind in ("Deployment", "Pod"):
                for obj in c.list(kind, name)[0]:
                    try:
                        c.delete(kind, obj["metadata"]["name"], name, grace_period_seconds=0)
                    except Exception:  # noqa: BLE001 - already going; the wait below is the check
                        pass
            wait_for(lambda: not c.list("Pod", name)[0], timeout=timeout, what=f"pods of namespace {name} to go")

    def orchctl(self, *args: str) -> int:
        from cli.main import main

        return main([*self.cli_flags(), *args])


@contextlib.contextmanager
def running_lab(d: Path, nodes: int, logs_name: str, **options: Any) -> Iterator[LabCluster]:
    """``orchctl lab up`` in ``d`` (``options`` as ``cli.lab.up`` takes them), then ``lab down``
    whatever happens; with ORCH_TEST_LOGS set, the lab's logs are kept there as ``logs_name``."""
    from cli import lab as labmod

    info = labmod.up(d, nodes, **options)
    try:
        yield LabCluster(d, info)
    finally:
        keep = os.environ.get("ORCH_TEST_LOGS")
        if keep:  # the lab's logs outlive it, for a post-mortem
            shutil.copytree(d / "logs", Path(keep) / logs_name, dirs_exist_ok=True)
        labmod.down(d)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the lab creates namespaces and cgroups")
    # Small, equal nodes so that resource tests are predictable on any machine.
    with running_lab(tmp_path_factory.mktemp("orch-lab"), 2, "lab-logs", node_cpu="2", node_memory="4Gi") as lab:
        yield lab


@pytest.fixture
def ns(lab: LabCluster) -> Iterator[str]:
    """A namespace of this test's own; everything in it is deleted afterwards, also on failure."""
    name = f"t-{secrets.token_hex(4)}"
    yield name
    lab.empty_namespace(name)
