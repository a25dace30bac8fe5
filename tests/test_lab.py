"""`orchctl lab up` / `lab down` as a user runs them: a separate lab, then not a trace of it
(the lab's network in detail: test_lab_network.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.helpers import pid_alive, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates namespaces and cgroups")


def orchctl(*args: str, env: dict[str, str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], text=True, capture_output=True, env=env,
                          cwd=REPO, input=input, timeout=180)


def lab_cgroups(ident: str) -> list[str]:
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if ident in d:
                found.append(os.path.join(root, d))
        if root.count("/") > 5:
            dirs[:] = []
    return found


def test_lab_up_then_down_leaves_nothing_behind(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    env = {**os.environ, "ORCHCONFIG": str(tmp_path / "config.yaml")}
    env.pop("ORCH_SERVER", None)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "traces"},
           "spec": {"containers": [{"name": "c", "image": "host", "command": ["/bin/sleep", "600"],
                                    "resources": {"limits": {"memory": "32Mi"}}}]}}
    mounts_before = Path("/proc/self/mountinfo").read_text().count(str(lab_dir))
    up = orchctl("lab", "up", "--nodes", "2", "--dir", str(lab_dir), env=env)
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads((lab_dir / "lab.json").read_text())
        ident = state["id"]
        host_end = state["network"]["hostInterface"]
        assert host_end == f"orch{ident}" and Path("/sys/class/net", host_end).exists()
        for agent in state["agents"]:  # the output says where each node's network is and how to get in
            assert re.search(rf"^{agent['node']}\s+{re.escape(agent['address'])}\s+{re.escape(agent['netns'])}$",
                             up.stdout, re.M), up.stdout
        assert "nsenter --net=" in up.stdout
        assert orchctl("apply", "-f", "-", env=env, input=yaml.safe_dump(pod)).returncode == 0

        def container_pids() -> list[int]:
            pids = []
            for agent in state["agents"]:
                for started in Path(agent["stateDir"], "containers").glob("*/started.json"):
                    pids.append(int(json.loads(started.read_text())["pid"]))
            return pids

        pids = wait_for(container_pids, timeout=60, what="the pod's container to start")
        shims = [int(p.read_text().split()[0])
                 for a in state["agents"] for p in Path(a["stateDir"], "containers").glob("*/shim.pid")]
        procs = [state["etcd"]["pid"], *(s["pid"] for s in state["schedulers"]), *(a["pid"] for a in state["agents"]),
                 *pids, *shims]
        assert all(pid_alive(p) for p in procs)
        assert lab_cgroups(ident), "the lab made no cgroups at all"
    finally:
        down = orchctl("lab", "down", "--dir", str(lab_dir), env=env)
    assert down.returncode == 0, down.stderr
    assert [p for p in procs if pid_alive(p)] == []
    assert lab_cgroups(ident) == []
    assert Path("/proc/self/mountinfo").read_text().count(str(lab_dir)) == mounts_before  # the namespaces too
    assert not Path("/sys/class/net", host_end).exists()
    assert not lab_dir.exists()
