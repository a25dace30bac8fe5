"""``orchctl logs`` and ``orchctl exec`` on a real 2-node lab: orchctl → scheduler → the pod's agent →
the shim's CRI log, or a helper that joins the container's namespaces and cgroup."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, LabCluster
from tests.helpers import cgroup_dir, container_id, ns_inode, nspid, pid_alive, wait_for

# PID 1 of a namespace ignores SIGTERM without a handler: exit at once on it.
IDLE = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"


def pod(name: str, ns: str, script: str, *, containers: tuple[str, ...] = ("main",), **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
        "spec": {"terminationGracePeriodSeconds": 2, **spec,
                 "containers": [{"name": c, "image": "host", "command": ["/bin/sh", "-c", script],
                                 "resources": {"limits": {"memory": "64Mi"}}} for c in containers]},
    }


def start(lab: LabCluster, *pods: dict[str, Any]) -> list[dict[str, Any]]:
    """Apply the pods and wait until every container of each runs."""
    with lab.client() as c:
        c.apply(list(pods))

        def all_running(p: dict[str, Any]) -> Callable[[], dict[str, Any] | None]:
            def check() -> dict[str, Any] | None:
                got = c.get("Pod", p["metadata"]["name"], p["metadata"]["namespace"])
                statuses = got.get("status", {}).get("containerStatuses") or []
                ok = len(statuses) == len(p["spec"]["containers"]) and all("running" in s["state"] for s in statuses)
                return got if ok else None

            return check

        return [wait_for(all_running(p), timeout=60, what=f"pod {p['metadata']['name']} running") for p in pods]


def orchctl_process(lab: LabCluster, *args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *lab.cli_flags(), *args]


def run(lab: LabCluster, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCHCONFIG": "/nonexistent"}
    return subprocess.run(orchctl_process(lab, *args), text=True, capture_output=True, cwd=REPO, env=env,
                          timeout=kw.pop("timeout", 60), check=False, **kw)


def popen(lab: LabCluster, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ORCHCONFIG": "/nonexistent"}
    return subprocess.Popen(orchctl_process(lab, *args), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, env=env)


def read_lines(proc: subprocess.Popen[str], n: int, timeout: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {lines} within {timeout}s"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            assert line, f"stream ended after {lines}"
            lines.append(line.rstrip("\n"))
    return lines


def logs_of(lab: LabCluster, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = lab.orchctl("logs", *args)
    got = capsys.readouterr()
    return code, got.out, got.err


# --- logs -------------------------------------------------------------------------------


def test_logs_show_both_streams_the_tail_and_timestamps(lab: LabCluster, ns: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    script = f"echo oops >&2; sleep 0.3; for i in 1 2 3 4 5; do echo line $i; done; {IDLE}"
    start(lab, pod("chatty", ns, script))
    wait_for(lambda: "line 5" in logs_of(lab, capsys, "chatty", "-n", ns)[1], timeout=10, what="the lines logged")

    code, out, _ = logs_of(lab, capsys, "chatty", "-n", ns)
    assert code == 0 and out == "oops\nline 1\nline 2\nline 3\nline 4\nline 5\n"
    code, out, _ = logs_of(lab, capsys, "pod/chatty", "-n", ns, "-c", "main", "--tail", "2")
    assert code == 0 and out == "line 4\nline 5\n"
    code, out, _ = logs_of(lab, capsys, "chatty", "-n", ns, "--timestamps", "--tail=3")
    assert code == 0
    assert [re.fullmatch(f"({TIMESTAMP}) (.*)", line).group(2) for line in out.splitlines()] == [  # type: ignore[union-attr]
        "line 3", "line 4", "line 5"]
    code, out, _ = logs_of(lab, capsys, "chatty", "-n", ns, "--since", "1h")
    assert code == 0 and out.count("\n") == 6

    code, _, err = logs_of(lab, capsys, "chatty", "-n", ns, "--previous")
    assert code == 1 and err == 'error: previous terminated container "main" in pod "chatty" not found\n'
    code, _, err = logs_of(lab, capsys, "nope", "-n", ns)
    assert code == 1 and err == 'error: pods "nope" not found\n'


def test_logs_follow_new_lines_across_an_agent_restart_and_end_with_the_container(
        lab: LabCluster, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cli import lab as labmod

    ticker, _ = start(lab, pod("ticker", ns, "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done"),
                          pod("brief", ns, "for i in 1 2 3; do echo n $i; sleep 0.5; done", restartPolicy="Never"))

    follow = popen(lab, "logs", "-f", "ticker", "-n", ns, "--tail", "1")
    try:
        ticks = [int(line.split()[1]) for line in read_lines(follow, 5, timeout=15)]
        assert ticks == list(range(ticks[0], ticks[0] + 5)), ticks
    finally:
        follow.terminate()
        follow.wait(10)

    # Until its exit, then all of it, and the stream ends by itself.
    done = run(lab, "logs", "-f", "brief", "-n", ns, timeout=30)
    assert done.returncode == 0 and done.stdout == "n 1\nn 2\nn 3\n", done.stderr

    # The shim logs on while the agent is down; the new agent (on a new port) serves them.
    node = ticker["spec"]["nodeName"]
    port_before = _agent_port(lab, node)
    labmod.restart(lab.dir, node, signal.SIGKILL)
    wait_for(lambda: _agent_port(lab, node) not in (None, port_before), timeout=30, what="the agent to re-register")
    def served() -> str | None:
        code, out, _ = logs_of(lab, capsys, "ticker", "-n", ns)
        return out if code == 0 else None

    out = wait_for(served, timeout=30, what="logs through the restarted agent")
    ticks = [int(line.split()[1]) for line in out.splitlines()]
    assert ticks == list(range(1, len(ticks) + 1)) and len(ticks) > 10


def _agent_port(lab: LabCluster, node: str) -> int | None:
    with lab.client() as c:
        n = c.get("Node", node)
    return (n["status"].get("daemonEndpoints") or {}).get("kubeletEndpoint", {}).get("Port")


def test_logs_previous_shows_the_instance_before_the_restart(lab: LabCluster, ns: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with lab.client() as c:
        c.apply([pod("crashy", ns, "echo boot $(cat /proc/sys/kernel/random/uuid); sleep 0.3; echo bye; exit 1",
                     restartPolicy="Always")])
        # An exited instance as lastState: what kubectl logs --previous shows.
        wait_for(lambda: (c.get("Pod", "crashy", ns).get("status", {}).get("containerStatuses") or [{}])[0]
                 .get("lastState", {}).get("terminated", {}).get("containerID"), timeout=60, what="a restart")
    code, out, err = logs_of(lab, capsys, "crashy", "-n", ns, "-p")
    assert code == 0, err
    assert re.fullmatch(r"boot [0-9a-f-]{36}\nbye\n", out), out


# --- exec --------------------------------------------------------------------------------


def test_exec_runs_inside_the_containers_namespaces_and_cgroup(lab: LabCluster, ns: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    (target,) = start(lab, pod("target", ns, IDLE))
    cpid = lab.container_pid(target["spec"]["nodeName"], container_id(target))

    capsys.readouterr()
    script = ('echo $$; hostname; cat /etc/hostname; tr "\\0" " " </proc/1/cmdline; echo; '
              "cat /proc/self/cgroup; echo --; cat /proc/1/cgroup")
    assert lab.orchctl("exec", "target", "-n", ns, "--", "sh", "-c", script) == 0
    out = capsys.readouterr().out.splitlines()
    pid, hostname, etc_hostname, cmdline = int(out[0]), out[1], out[2], out[3]
    assert 1 < pid < 1000, "not in the container's PID namespace"
    assert hostname == etc_hostname == "target"
    assert cmdline.strip() == f"/bin/sh -c {IDLE}"
    cut = out.index("--")
    assert out[4:cut] == out[cut + 1:], "another cgroup than the container's PID 1"

    # The host's view of a running exec: same namespaces, same cgroup, same restrictions.
    proc = popen(lab, "exec", "target", "-n", ns, "--", "sh", "-c", "echo ready; exec sleep 30")
    try:
        assert read_lines(proc, 1, timeout=15) == ["ready"]

        def exec_sleep() -> list[int]:
            # "ready" comes before the shell execs sleep: look until it has.
            procs = {int(p) for p in (cgroup_dir(cpid, "memory") / "cgroup.procs").read_text().split()}
            return [p for p in procs if _cmdline(p) == ["sleep", "30"]]

        (epid,) = wait_for(exec_sleep, timeout=15, what="the exec'd sleep in the container's cgroup")
        assert nspid(epid)[0] == epid and 1 < nspid(epid)[-1] < 1000
        for kind in ("pid", "mnt", "uts", "ipc", "net", "cgroup", "user"):
            assert ns_inode(epid, kind) == ns_inode(cpid, kind), kind
        assert Path(f"/proc/{epid}/cgroup").read_text() == Path(f"/proc/{cpid}/cgroup").read_text()
        assert Path(f"/proc/{epid}/root/etc/hostname").read_text() == "target\n"
        assert _status(epid, "CapBnd") == _status(cpid, "CapBnd")
        assert _status(epid, "NoNewPrivs") == _status(cpid, "NoNewPrivs")
        assert _status(epid, "Seccomp") == _status(cpid, "Seccomp")
    finally:
        proc.terminate()  # orchctl goes away: the exec'd command must not outlive it
        proc.wait(10)
    wait_for(lambda: not pid_alive(epid), timeout=10, what="the exec'd command to end with orchctl")
    assert pid_alive(cpid)


def test_exec_into_a_pod_with_its_own_user_namespace(lab: LabCluster, ns: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # The pod's sandbox namespaces belong to its user namespace, the container's cgroup
    # namespace does not: exec must join each while it may (see exec.NAMESPACES).
    spec = pod("userns", ns, IDLE, hostUsers=False)
    spec["spec"]["containers"][0]["securityContext"] = {"runAsUser": 1000}
    (running,) = start(lab, spec)
    cpid = lab.container_pid(running["spec"]["nodeName"], container_id(running))
    capsys.readouterr()
    assert lab.orchctl("exec", "userns", "-n", ns, "--", "sh", "-c", "id -u; readlink /proc/self/ns/user; "
                       "readlink /proc/1/ns/user; readlink /proc/self/ns/cgroup; readlink /proc/1/ns/cgroup") == 0
    uid, user_self, user_1, cgroup_self, cgroup_1 = capsys.readouterr().out.split()
    assert uid == "1000" and user_self == user_1 and cgroup_self == cgroup_1
    assert user_1 == ns_inode(cpid, "user") != ns_inode("self", "user")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def _status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    return ""


def test_exec_passes_exit_codes_and_stdin_and_reports_errors(lab: LabCluster, ns: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Not yet running, two containers: which one is asked before anything else.
    with lab.client() as c:
        c.apply([pod("duo", ns, IDLE, containers=("a", "b"))])
    capsys.readouterr()
    assert lab.orchctl("exec", "duo", "-n", ns, "--", "true") == 1
    assert capsys.readouterr().err == "error: a container name must be specified for pod duo, choose one of: [a b]\n"
    assert lab.orchctl("logs", "duo", "-n", ns) == 1
    assert "choose one of: [a b]" in capsys.readouterr().err
    start(lab, pod("duo", ns, IDLE, containers=("a", "b")))

    capsys.readouterr()
    assert lab.orchctl("exec", "duo", "-n", ns, "-c", "b", "--", "sh", "-c", "echo out; echo err >&2; exit 7") == 7
    got = capsys.readouterr()
    assert got.out == "out\n" and got.err == "err\ncommand terminated with exit code 7\n"

    echoed = run(lab, "exec", "-i", "duo", "-c", "a", "-n", ns, "--", "cat", input="hello\nworld\n")
    assert echoed.returncode == 0 and echoed.stdout == "hello\nworld\n", echoed.stderr
    answered = run(lab, "exec", "duo", "-c", "a", "-n", ns, "-i", "--", "sh", "-c", "read a; echo got $a; exit 3",
                   input="x\n")
    assert answered.returncode == 3 and answered.stdout == "got x\n"
    no_stdin = run(lab, "exec", "duo", "-c", "a", "-n", ns, "--", "cat", input="ignored\n")
    assert no_stdin.returncode == 0 and no_stdin.stdout == ""

    assert lab.orchctl("exec", "nope", "-n", ns, "--", "true") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and 'pods "nope" not found' in err
    assert lab.orchctl("exec", "duo", "-c", "a", "-n", ns, "--", "no-such-command") == 127
    assert "error: exec 'no-such-command': executable file not found in $PATH" in capsys.readouterr().err
    assert lab.orchctl("exec", "duo", "-c", "a", "-n", ns) == 2
    assert "you must specify at least one command" in capsys.readouterr().err


def test_exec_into_a_finished_container_is_refused(lab: LabCluster, ns: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with lab.client() as c:
        c.apply([pod("done", ns, "echo finished", restartPolicy="Never")])
        wait_for(lambda: c.get("Pod", "done", ns).get("status", {}).get("phase") == "Succeeded", timeout=60,
                 what="pod done to finish")
    capsys.readouterr()
    assert lab.orchctl("exec", "done", "-n", ns, "--", "true") == 1
    assert capsys.readouterr().err == ("error: cannot exec into a container in a completed pod; "
                                       "current phase is Succeeded\n")
    code, out, _ = logs_of(lab, capsys, "done", "-n", ns)
    assert code == 0 and out == "finished\n"
