"""The container runtime on the real kernel: namespaces, rootfs, cgroup limits, the shim, stop/remove.

Every test gets a ``Runtime`` with its own state dir and cgroup root
``orch-test-<random>/node-1`` (fixture ``runtime`` in ``conftest_runtime``); its
finalizer runs ``cleanup_all`` even when the test fails, then checks that no
cgroup, process or mount is left. Containers use the host's /bin/sh, sleep and
python3 (``image: host``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_runtime import (
    cgroup_dirs_named,
    container_output,
    host_mounts_mentioning,
    make_config,
    pid_gone,
    processes_mentioning,
    requires_root,
    runtime_fixture,  # noqa: F401 - the `runtime` fixture
    wait_for,
)

from agent.runtime import rootfs
from agent.runtime.runtime import (
    ContainerConfig,
    ContainerState,
    ContainerStatus,
    Runtime,
    _signal_verified,
)
from agent.runtime.shim import proc_start_time
from apimachinery.errors import NotFoundError, RuntimeError_

MiB = 1024 * 1024
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _log(st: ContainerState) -> str:
    return container_output(st.log_path)


def _wait_log(st: ContainerState, text: str, timeout: float = 10) -> str:
    wait_for(lambda: text in _log(st), timeout, what=f"{text!r} in the container log")
    return _log(st)


def _wait_exited(rt: Runtime, cid: str, timeout: float = 15) -> ContainerState:
    wait_for(lambda: rt.state(cid).status == ContainerStatus.EXITED, timeout, what=f"container {cid} to exit")
    return rt.state(cid)


# ---------------------------------------------------------------- pure parts


def test_config_json_round_trip_accepts_tuples() -> None:
    cfg = make_config(("sh", "-c", "true"))  # a tuple, as a caller may pass
    again = ContainerConfig.from_json(cfg.to_json())
    assert again.argv == ["sh", "-c", "true"]
    assert again == ContainerConfig.from_json(again.to_json())
    assert json.loads(cfg.to_json())["argv"] == ["sh", "-c", "true"]
    with pytest.raises(ValueError, match="argv"):
        ContainerConfig.from_dict({**cfg.to_dict(), "argv": []})
    with pytest.raises(ValueError, match="unknown fields"):
        ContainerConfig.from_dict({**cfg.to_dict(), "extra": 1})


def test_exec_env_is_config_env_plus_path_and_hostname() -> None:
    cfg = make_config(["true"], env={"A": "1"}, hostname="h1")
    assert cfg.exec_env() == {"A": "1", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              "HOSTNAME": "h1"}
    assert make_config(["true"], env={"PATH": "/x", "HOSTNAME": "y"}).exec_env() == {"PATH": "/x", "HOSTNAME": "y"}


def test_generated_etc_keeps_only_resolver_lines() -> None:
    host = "# generated\nnameserver 10.0.0.2\nsearch svc.local\noptions ndots:5\nsortlist 1.2.3.4\n"
    files = rootfs.etc_files("web-1", host)
    assert files["resolv.conf"] == "nameserver 10.0.0.2\nsearch svc.local\noptions ndots:5\n"
    assert files["hostname"] == "web-1\n"
    assert "web-1" in files["hosts"] and "localhost" in files["hosts"]
    assert [line.split(":")[0] for line in files["passwd"].splitlines()] == ["root", "nobody"]


def test_signal_verified_refuses_a_recycled_pid() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        start = proc_start_time(proc.pid)
        assert start is not None
        assert not _signal_verified(proc.pid, start + 1, signal.SIGKILL)  # "someone else" with this pid
        assert proc.poll() is None
        assert _signal_verified(proc.pid, start, signal.SIGKILL)
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- real containers


@requires_root
def test_unsupported_image_is_refused_and_changes_nothing(runtime: Runtime) -> None:
    with pytest.raises(RuntimeError_, match="image"):
        runtime.start(make_config(["true"], image="docker.io/library/busybox"))
    assert runtime.list() == []
    with pytest.raises(NotFoundError):
        runtime.state("0123abcd")


@requires_root
def test_container_is_isolated_limited_and_killed_after_grace(runtime: Runtime) -> None:
    script = textwrap.dedent("""\
        echo "pid=$$"
        echo "hostname=$(cat /proc/sys/kernel/hostname)"
        echo "env=$GREETING/$HOSTNAME/$PATH"
        echo "cwd=$(pwd)"
        echo "procs=$(ls /proc | grep '^[0-9]' | tr '\\n' ' ')"
        cat /etc/passwd
        touch /usr/orch-test-write 2>/dev/null && echo usr=rw || echo usr=ro
        touch /tmp/ok && echo tmp=rw
        test -c /dev/null && echo dev=ok
        echo ready
        exec sleep 1000
    """)
    cfg = make_config(["sh", "-c", script], working_dir="/tmp/work", memory_limit_bytes=64 * MiB,
                      cpu_limit_millis=500, cpu_request_millis=250, pids_limit=64)
    started = time.monotonic()
    st = runtime.start(cfg)
    assert time.monotonic() - started < 5
    assert st.status == ContainerStatus.RUNNING, st
    assert st.pid is not None and st.started_at is not None and st.started_at.endswith("Z")
    out = _wait_log(st, "ready")
    lines = out.splitlines()

    # Its own PID namespace: the shell is PID 1 and sees only its namespace.
    assert "pid=1" in lines
    # Its /proc shows its own namespace only: small pids (sh, ls, grep, tr), 1 among them.
    visible = [int(p) for p in next(line for line in lines if line.startswith("procs=")).split("=")[1].split()]
    assert 1 in visible and max(visible) < 20, visible
    for ns in ("pid", "uts", "ipc", "mnt", "cgroup"):
        assert os.readlink(f"/proc/{st.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # Network namespace is not the runtime's job (the agent's network layer does it).
    assert "hostname=web-1" in lines
    assert "env=hello/web-1//usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in lines
    assert "cwd=/tmp/work" in lines
    # The generated /etc, not the host's.
    passwd = [line for line in lines if line.count(":") == 6]
    assert passwd == rootfs.etc_files("web-1", "")["passwd"].splitlines()
    assert Path("/etc/passwd").read_text().splitlines() != passwd
    assert "usr=ro" in lines and "tmp=rw" in lines and "dev=ok" in lines
    assert not Path("/usr/orch-test-write").exists()

    # The cgroup holds the container and carries the configured limits.
    assert st.cgroup == f"{runtime.cgroup_root}/pod{cfg.pod_uid}/{cfg.id}"
    assert runtime.driver.memory_limit(st.cgroup) == 64 * MiB
    paths = runtime.driver.paths(st.cgroup)
    if "memory.limit_in_bytes" in os.listdir(paths["memory"]):
        assert int(Path(paths["memory"], "memory.limit_in_bytes").read_text()) == 64 * MiB
        assert int(Path(paths["cpu"], "cpu.cfs_quota_us").read_text()) == 50_000
        assert int(Path(paths["cpu"], "cpu.shares").read_text()) == 256
    else:
        assert Path(paths["memory"], "memory.max").read_text().strip() == str(64 * MiB)
    assert Path(paths["pids"], "pids.max").read_text().strip() == "64"
    assert runtime.driver.pids(st.cgroup) == [st.pid]

    # No mount of the container is visible on the host; only the pod sandbox's namespace files are.
    host_mounts = host_mounts_mentioning(str(runtime.state_dir))
    assert [m for m in host_mounts if f"{runtime.sandboxes.root}/{cfg.pod_uid}/" not in m or " nsfs " not in m] == []

    # PID 1 without a TERM handler ignores SIGTERM: killed after the grace.
    t0 = time.monotonic()
    done = runtime.stop(cfg.id, grace_seconds=0.5)
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 5, elapsed
    assert done.status == ContainerStatus.EXITED
    assert (done.exit_code, done.reason) == (137, "Error")
    assert done.pid is None and done.finished_at is not None
    assert pid_gone(st.pid)
    assert runtime.stop(cfg.id, 1).status == ContainerStatus.EXITED  # stopping again is a no-op


@requires_root
@pytest.mark.parametrize(("argv", "code", "reason"), [
    (["sh", "-c", "exit 0"], 0, "Completed"),
    (["sh", "-c", "exit 3"], 3, "Error"),
    # Death by signal is 128+signal. Gotcha: `kill -KILL $$` would not do: a
    # PID-namespace init is immune to signals sent from inside its namespace
    # (even SIGKILL), so it takes a real fault, which the kernel forces through.
    (["python3", "-c", "import ctypes; ctypes.string_at(0)"], 128 + signal.SIGSEGV, "Error"),
])
def test_exit_codes(runtime: Runtime, argv: list[str], code: int, reason: str) -> None:
    st = runtime.start(make_config(argv))
    done = _wait_exited(runtime, st.config.id)
    assert (done.exit_code, done.reason) == (code, reason)
    assert done.started_at is not None and done.finished_at is not None


@requires_root
def test_oom_kill_is_reported(runtime: Runtime) -> None:
    cfg = make_config(["python3", "-c", "b = bytearray(200 * 1024 * 1024)"], memory_limit_bytes=32 * MiB)
    runtime.start(cfg)
    done = _wait_exited(runtime, cfg.id, timeout=30)
    assert (done.exit_code, done.reason) == (137, "OOMKilled")
    assert runtime.driver.oom_killed(done.cgroup)


@requires_root
def test_start_error_names_the_missing_binary(runtime: Runtime) -> None:
    st = runtime.start(make_config(["/no/such/binary", "--flag"]))
    assert st.status == ContainerStatus.EXITED
    assert st.reason == "StartError"
    assert st.message is not None and "/no/such/binary" in st.message and "No such file" in st.message
    assert st.exit_code == 127
    assert st.started_at is None
    # Same for a command looked up on PATH.
    st2 = runtime.start(make_config(["no-such-command-orch"]))
    assert st2.reason == "StartError" and "no-such-command-orch" in (st2.message or "")


@requires_root
def test_stop_with_a_term_handler_exits_within_the_grace(runtime: Runtime) -> None:
    script = 'trap "echo got-term; exit 0" TERM; echo ready; while :; do sleep 0.05; done'
    st = runtime.start(make_config(["sh", "-c", script]))
    _wait_log(st, "ready")
    t0 = time.monotonic()
    done = runtime.stop(st.config.id, grace_seconds=10)
    assert time.monotonic() - t0 < 3
    assert (done.exit_code, done.reason) == (0, "Completed")
    assert "got-term" in _log(done)


@requires_root
def test_container_survives_the_death_of_its_starter(runtime: Runtime) -> None:
    """The process that called start() dies (SIGKILL); a new Runtime adopts the container."""
    starter_code = textwrap.dedent(f"""\
        import json, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest_runtime import make_config
        from agent.runtime.runtime import Runtime
        rt = Runtime({str(runtime.state_dir)!r}, {runtime.cgroup_root!r})
        st = rt.start(make_config(["sleep", "1000"]))
        print(json.dumps({{"id": st.config.id, "pid": st.pid, "status": st.status}}), flush=True)
        time.sleep(1000)
    """)
    starter = subprocess.Popen([sys.executable, "-c", starter_code], stdout=subprocess.PIPE, cwd=PROJECT_ROOT)
    try:
        assert starter.stdout is not None
        info = json.loads(starter.stdout.readline())
    finally:
        starter.kill()
        starter.wait()
    assert info["status"] == "running"

    fresh = Runtime(runtime.state_dir, runtime.cgroup_root)
    listed = fresh.list()
    assert [(s.config.id, s.status, s.pid) for s in listed] == [(info["id"], ContainerStatus.RUNNING, info["pid"])]
    assert not pid_gone(info["pid"])
    done = fresh.stop(info["id"], grace_seconds=0)
    assert (done.exit_code, done.reason) == (137, "Error")


@requires_root
def test_shim_death_leaves_the_container_running_and_the_loss_is_reported(runtime: Runtime) -> None:
    st = runtime.start(make_config(["sleep", "1000"]))
    cdir = runtime.containers_dir / st.config.id
    shim_pid = int((cdir / "shim.pid").read_text().split()[0])
    os.kill(shim_pid, signal.SIGKILL)
    wait_for(lambda: pid_gone(shim_pid), what="shim to die")
    assert runtime.state(st.config.id).status == ContainerStatus.RUNNING  # nothing killed the container
    done = runtime.stop(st.config.id, grace_seconds=0)
    assert done.status == ContainerStatus.EXITED
    assert (done.exit_code, done.reason) == (255, "Error")
    assert "shim died" in (done.message or "")
    assert runtime.state(st.config.id) == done  # the verdict is stable


@requires_root
def test_remove_and_remove_pod_leave_nothing(runtime: Runtime) -> None:
    a = runtime.start(make_config(["sleep", "1000"], name="a", pod_uid="p1"))
    b = runtime.start(make_config(["sh", "-c", "exit 0"], name="b", pod_uid="p1"))
    assert a.pid is not None
    cgroup_dir = Path(runtime.driver.paths(a.cgroup)["memory"])
    assert cgroup_dir.is_dir()
    runtime.remove(a.config.id)
    assert pid_gone(a.pid)
    assert not cgroup_dir.exists()
    assert not (runtime.containers_dir / a.config.id).exists()
    with pytest.raises(NotFoundError):
        runtime.state(a.config.id)
    runtime.remove(a.config.id)  # idempotent
    runtime.remove(b.config.id)
    runtime.remove_pod("p1")
    assert not Path(runtime.driver.paths(runtime.pod_cgroup("p1"))["memory"]).exists()
    runtime.remove_pod("p1")  # idempotent
    assert runtime.list() == []
    # The node's fork server stays (it serves the next pod) until cleanup_all; nothing else may.
    forkserver = json.loads((runtime.state_dir / "forkserver.json").read_text())["pid"]
    assert [p for p in processes_mentioning(str(runtime.state_dir)) if p != forkserver] == []


@requires_root
def test_cleanup_all_kills_everything(runtime: Runtime) -> None:
    states = [runtime.start(make_config(["sleep", "1000"], pod_uid=f"p{i % 2}", name=f"c{i}")) for i in range(3)]
    forker = runtime.start(make_config(["sh", "-c", "sleep 1000 & sleep 1000 & echo ready; wait"], pod_uid="p0",
                                       name="forker"))
    _wait_log(forker, "ready")
    all_pids = runtime.driver.pids(runtime.cgroup_root)
    assert len(all_pids) == 3 + 3
    runtime.cleanup_all()
    for pid in all_pids:
        wait_for(lambda pid=pid: pid_gone(pid), timeout=5, what=f"pid {pid} to die")
    assert not runtime.state_dir.exists()
    assert cgroup_dirs_named(runtime.cgroup_root.split("/")[0]) != []  # only the parent we invented is left
    assert all(not p.joinpath("node-1").exists() for p in cgroup_dirs_named(runtime.cgroup_root.split("/")[0]))
    assert runtime.list() == []
    assert all(s.pid is not None and pid_gone(s.pid) for s in states)
