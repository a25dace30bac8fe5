"""Users and roles end to end: a mutual-TLS lab whose scheduler runs with
``--authorization-config`` and ``--audit-log-path``, ``orchctl`` as a viewer and as a
namespace editor with certificates from ``orchctl pki issue user``, kubectl's exit
codes and messages, and the audit log's record of each attempt. (The decisions
themselves are tabled in tests/test_rbac.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import LabCluster, needs_root, running_lab

pytestmark = needs_root

BINDINGS = """\
bindings:
- name: viewers
  role: view
  namespaces: [team-a]
  users: [vic]
- name: team-a-editors
  role: edit
  namespaces: [team-a]
  groups: [team-a]
"""

POD = """\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  containers:
  - {{name: c, image: host, command: [sleep, "600"]}}
"""


@pytest.fixture(scope="module")
def rbac_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabCluster, Path]]:
    d = tmp_path_factory.mktemp("rbac-lab")
    bindings, audit = d / "bindings.yaml", d / "audit.log"
    bindings.write_text(BINDINGS)
    with running_lab(d / "lab", 1, "rbac-lab-logs", scheduler_args=[
            "--authorization-config", str(bindings), "--audit-log-path", str(audit)]) as lab:
        pki = lab.tls["pkiDir"] if lab.tls else None
        assert pki is not None, "lab up makes a mutual-TLS lab by default"
        assert main(["pki", "issue", "user", "vic", "--dir", pki]) == 0
        assert main(["pki", "issue", "user", "alice", "--group", "team-a", "--dir", pki]) == 0
        yield lab, audit


def as_user(lab: LabCluster, user: str, *args: str) -> int:
    tls = lab.tls
    assert tls is not None
    pki = Path(tls["pkiDir"])
    return main(["--server", lab.server, "--certificate-authority", str(pki / "ca.crt"),
                 "--client-certificate", str(pki / "users" / f"{user}.crt"),
                 "--client-key", str(pki / "users" / f"{user}.key"), *args])


def audit_records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_viewer_reads_but_cannot_apply_or_delete(rbac_lab: tuple[LabCluster, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lab, audit = rbac_lab
    spec = tmp_path / "pod.yaml"
    spec.write_text(POD.format(name="seen", namespace="team-a"))
    assert lab.orchctl("apply", "-f", str(spec)) == 0  # the admin's
    capsys.readouterr()

    assert as_user(lab, "vic", "get", "pods", "-n", "team-a", "-o", "name") == 0
    assert capsys.readouterr().out.split() == ["pod/seen"]

    spec.write_text(POD.format(name="vics", namespace="team-a"))
    assert as_user(lab, "vic", "apply", "-f", str(spec)) == 1
    err = capsys.readouterr().err
    assert 'user "vic"' in err and "cannot create" in err and "pods" in err and '"team-a"' in err, err
    assert as_user(lab, "vic", "delete", "pod", "seen", "-n", "team-a") == 1
    err = capsys.readouterr().err
    assert 'user "vic"' in err and "cannot delete pods" in err, err
    assert as_user(lab, "vic", "get", "pods", "-n", "team-b") == 1  # not bound there at all
    capsys.readouterr()

    with lab.client() as c:
        assert [p["metadata"]["name"] for p in c.list("Pod", "team-a")[0]] == ["seen"]  # nothing changed
    mine = [r for r in audit_records(audit) if r["user"] == "vic"]
    assert [(r["verb"], r["namespace"], r["decision"]) for r in mine] == [
        ("apply", "team-a", "deny"), ("delete", "team-a", "deny"), ("list", "team-b", "deny")], mine
    assert all(r["code"] == "PERMISSION_DENIED" for r in mine)
    lab.empty_namespace("team-a")


def test_an_editor_of_team_a_cannot_touch_team_b(rbac_lab: tuple[LabCluster, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    lab, audit = rbac_lab
    mine = tmp_path / "a.yaml"
    mine.write_text(POD.format(name="alices", namespace="team-a"))
    theirs = tmp_path / "b.yaml"
    theirs.write_text(POD.format(name="bobs", namespace="team-b"))
    assert lab.orchctl("apply", "-f", str(theirs)) == 0  # the admin's, in team-b
    capsys.readouterr()

    assert as_user(lab, "alice", "apply", "-f", str(mine)) == 0
    assert as_user(lab, "alice", "apply", "-f", str(theirs)) == 1
    assert "cannot" in capsys.readouterr().err
    assert as_user(lab, "alice", "delete", "pod", "bobs", "-n", "team-b") == 1
    assert as_user(lab, "alice", "get", "pods", "-A") == 1  # all namespaces: a cluster-wide binding's
    err = capsys.readouterr().err
    assert 'user "alice" (groups: team-a) cannot list pods across all namespaces' in err, err
    assert as_user(lab, "alice", "delete", "pod", "alices", "-n", "team-a", "--grace-period", "0") == 0

    with lab.client() as c:
        assert c.get("Pod", "bobs", "team-b")["metadata"]["name"] == "bobs"  # untouched
    records = [r for r in audit_records(audit) if r["user"] == "alice"]
    assert [(r["method"], r["namespace"], r["decision"]) for r in records] == [
        ("Apply", "team-a", "allow"), ("Apply", "team-b", "deny"), ("Delete", "team-b", "deny"),
        ("List", None, "deny"), ("Delete", "team-a", "allow")], records
    assert {tuple(r["groups"]) for r in records} == {("team-a", "system:authenticated")}
    lab.empty_namespace("team-b")
