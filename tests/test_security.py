"""Container security defaults on the real kernel: capabilities, no_new_privs, seccomp, users, masked /proc.

Pure parts (capability arithmetic, the plan for a config, the seccomp rules a
capability set gets) run anywhere. The rest starts real containers through the
``runtime`` fixture (``conftest_runtime``: own state dir and cgroup root,
``cleanup_all`` and a check that no cgroup, process or mount is left, even on
failure) and reads the result twice: from inside, through the container's log,
and from the host, through ``/proc/<pid>``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_runtime import (
    container_output,
    make_config,
    run_to_exit,
    runtime_fixture,  # noqa: F401 - the `runtime` fixture
    status_fields,
    wait_for,
)

from agent.runtime import seccomp
from agent.runtime import syscalls as sc
from agent.runtime.rootfs import MASKED_PATHS, READONLY_PATHS
from agent.runtime.runtime import ContainerConfig, ContainerStatus, Runtime
from agent.runtime.security import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    capability_mask,
    capability_name,
    container_capabilities,
    restrict_current_process,
    security_plan,
)

#: Docker's default capability set as /proc/<pid>/status prints it.
DOCKER_DEFAULT_CAPS = "00000000a80425fb"


def _hex(mask: int) -> str:
    return f"{mask:016x}"


def _host_status(pid: int) -> dict[str, str]:
    return status_fields(Path(f"/proc/{pid}/status").read_text())


# ---------------------------------------------------------------- pure parts


def test_default_capabilities_are_dockers() -> None:
    assert _hex(capability_mask(DEFAULT_CAPABILITIES)) == DOCKER_DEFAULT_CAPS
    assert container_capabilities([], []) == DEFAULT_CAPABILITIES
    assert len(CAPABILITIES) == 41 and CAPABILITIES[21] == "CAP_SYS_ADMIN"


def test_capability_names_with_or_without_prefix_in_any_case() -> None:
    assert capability_name("net_admin") == capability_name("CAP_NET_ADMIN") == "CAP_NET_ADMIN"
    assert capability_name("all") == "ALL"
    with pytest.raises(ValueError, match="NET_FOO"):
        capability_name("NET_FOO")


@pytest.mark.parametrize(("add", "drop", "expected"), [
    (["NET_ADMIN"], ["CHOWN"], DEFAULT_CAPABILITIES - {"CAP_CHOWN"} | {"CAP_NET_ADMIN"}),
    # Kubernetes/containerd: ALL first, then the named ones.
    ([], ["ALL"], frozenset()),
    (["NET_BIND_SERVICE"], ["ALL"], frozenset({"CAP_NET_BIND_SERVICE"})),
    (["ALL"], ["CAP_SYS_ADMIN"], frozenset(CAPABILITIES) - {"CAP_SYS_ADMIN"}),
    (["ALL"], ["ALL"], frozenset()),
    (["CAP_KILL"], [], DEFAULT_CAPABILITIES),  # adding one already there changes nothing
])
def test_add_and_drop_as_kubernetes(add: list[str], drop: list[str], expected: frozenset[str]) -> None:
    assert container_capabilities(add, drop) == expected


def test_security_plan_defaults_and_escalation() -> None:
    plan = security_plan(make_config(["true"]))
    assert (plan.capabilities, plan.no_new_privs, plan.seccomp, plan.uid, plan.gid) == (
        DEFAULT_CAPABILITIES, True, True, 0, 0)
    assert not security_plan(make_config(["true"], allow_privilege_escalation=True)).no_new_privs
    assert security_plan(make_config(["true"], allow_privilege_escalation=False)).no_new_privs
    # As Kubernetes: CAP_SYS_ADMIN implies escalation unless it is explicitly refused.
    assert not security_plan(make_config(["true"], capabilities_add=["SYS_ADMIN"])).no_new_privs
    assert security_plan(make_config(["true"], capabilities_add=["SYS_ADMIN"],
                                     allow_privilege_escalation=False)).no_new_privs
    privileged = security_plan(make_config(["true"], privileged=True))
    assert (privileged.capabilities, privileged.no_new_privs, privileged.seccomp) == (None, False, False)
    assert not security_plan(make_config(["true"], seccomp_unconfined=True)).seccomp
    user = security_plan(make_config(["true"], run_as_user=1000, run_as_group=3000))
    assert (user.uid, user.gid) == (1000, 3000)


def test_seccomp_rules_follow_the_capability_set() -> None:
    def allowed(caps: frozenset[str], arch: str = "amd64", kernel: tuple[int, int] = (6, 1)) -> dict[str, list]:
        out: dict[str, list] = {}
        for name, action, args in seccomp.build_rules(seccomp.DEFAULT_PROFILE, caps, arch, kernel):
            out.setdefault(name, []).append((action, args))
        return out

    plain = allowed(DEFAULT_CAPABILITIES)
    assert {"read", "execve", "capset", "arch_prctl"} <= set(plain)
    assert not {"mount", "unshare", "setns", "keyctl", "reboot", "bpf", "io_uring_setup"} & set(plain)
    # clone only without namespace flags; clone3 refused with ENOSYS so libc falls back.
    assert plain["clone"] == [(seccomp.ACT_ALLOW, (seccomp.ArgCmp(0, seccomp.CMP_MASKED_EQ, 0x7E020000, 0),))]
    assert plain["clone3"] == [(seccomp.act_errno(38), ())]
    assert "chroot" in plain  # CAP_SYS_CHROOT is a default capability
    admin = allowed(DEFAULT_CAPABILITIES | {"CAP_SYS_ADMIN"})
    assert {"mount", "unshare", "setns"} <= set(admin)
    assert admin["clone"] == [(seccomp.ACT_ALLOW, ())]
    assert "ptrace" not in allowed(DEFAULT_CAPABILITIES, kernel=(4, 4))
    assert "arch_prctl" not in allowed(DEFAULT_CAPABILITIES, arch="arm64")


def test_old_config_files_load_with_secure_defaults() -> None:
    cfg = make_config(["true"])
    old = {k: v for k, v in cfg.to_dict().items() if k in {
        "id", "pod_uid", "pod_namespace", "pod_name", "name", "image", "argv", "env", "working_dir", "hostname",
        "memory_limit_bytes", "cpu_limit_millis", "cpu_request_millis", "pids_limit"}}
    loaded = ContainerConfig.from_dict(old)
    assert loaded == cfg
    assert (loaded.privileged, loaded.allow_privilege_escalation, loaded.host_users) == (False, None, True)
    with pytest.raises(ValueError, match="capabilities_drop.*BOGUS"):
        ContainerConfig.from_dict({**cfg.to_dict(), "capabilities_drop": ["BOGUS"]})
    with pytest.raises(ValueError, match="run_as_user"):
        ContainerConfig.from_dict({**cfg.to_dict(), "run_as_user": -1})
    with pytest.raises(ValueError, match="privileged"):
        ContainerConfig.from_dict({**cfg.to_dict(), "privileged": "yes"})


# ---------------------------------------------------------------- real containers

STATUS_THEN_SLEEP = "cat /proc/self/status; echo ready; exec sleep 1000"

#: Run by the container's python3: syscalls Docker's default profile blocks, and how they fail.
SYSCALL_PROBE = textwrap.dedent("""\
    import ctypes, errno, json, platform
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    KEYCTL = {"x86_64": 250, "aarch64": 219}[platform.machine()]
    CLONE3 = 435
    def call(rc):
        return "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]
    print(json.dumps({
        "unshare": call(libc.unshare(0x10000000)),  # CLONE_NEWUSER: needs no capability
        "keyctl": call(libc.syscall(KEYCTL, 0, ctypes.c_long(-3), 0)),  # KEYCTL_GET_KEYRING_ID, session
        "clone3": call(libc.syscall(CLONE3, None, 0)),
    }))
""")


def _running_status(rt: Runtime, **overrides: object) -> tuple[dict[str, str], dict[str, str]]:
    """Start ``cat /proc/self/status`` then sleep; return (status seen inside, status the host sees)."""
    st = rt.start(make_config(["sh", "-c", STATUS_THEN_SLEEP], **overrides))
    assert st.status == ContainerStatus.RUNNING, st
    assert st.pid is not None
    wait_for(lambda: "ready" in container_output(st.log_path), what="the container's status dump")
    inside = status_fields(container_output(st.log_path))
    host = _host_status(st.pid)
    rt.remove(st.config.id)
    return inside, host


def test_default_container_has_dockers_capabilities_and_no_new_privs(runtime: Runtime) -> None:
    inside, host = _running_status(runtime)
    for seen in (inside, host):
        assert seen["CapBnd"] == seen["CapEff"] == seen["CapPrm"] == DOCKER_DEFAULT_CAPS
        assert seen["CapInh"] == seen["CapAmb"] == "0000000000000000"
        assert seen["NoNewPrivs"] == "1"
        assert seen["Seccomp"] == "2"
        assert seen["Uid"].split() == ["0"] * 4


def test_added_and_dropped_capabilities_change_the_set(runtime: Runtime) -> None:
    inside, _ = _running_status(runtime, capabilities_add=["NET_ADMIN", "CAP_SYS_TIME"],
                                capabilities_drop=["chown", "NET_RAW"])
    expected = DEFAULT_CAPABILITIES - {"CAP_CHOWN", "CAP_NET_RAW"} | {"CAP_NET_ADMIN", "CAP_SYS_TIME"}
    assert inside["CapBnd"] == inside["CapEff"] == _hex(capability_mask(expected))
    only, _ = _running_status(runtime, capabilities_drop=["ALL"], capabilities_add=["NET_BIND_SERVICE"])
    assert only["CapBnd"] == only["CapEff"] == _hex(1 << 10)


def test_privileged_gets_every_capability_and_no_filter(runtime: Runtime) -> None:
    ours = _host_status(os.getpid())
    inside, host = _running_status(runtime, privileged=True)
    for seen in (inside, host):
        assert seen["CapBnd"] == seen["CapEff"] == ours["CapBnd"]
        assert seen["NoNewPrivs"] == "0"
        assert seen["Seccomp"] == "0"


def test_allow_privilege_escalation_keeps_the_filter_without_no_new_privs(runtime: Runtime) -> None:
    inside, _ = _running_status(runtime, allow_privilege_escalation=True)
    assert (inside["NoNewPrivs"], inside["Seccomp"], inside["CapEff"]) == ("0", "2", DOCKER_DEFAULT_CAPS)


def test_seccomp_blocks_what_dockers_profile_blocks(runtime: Runtime) -> None:
    done, out = run_to_exit(runtime, ["python3", "-c", SYSCALL_PROBE])
    assert done.exit_code == 0, out
    assert json.loads(out.splitlines()[-1]) == {"unshare": "EPERM", "keyctl": "EPERM", "clone3": "ENOSYS"}
    # Unconfined, the same calls get through to the kernel: it was the filter.
    done, out = run_to_exit(runtime, ["python3", "-c", SYSCALL_PROBE], seccomp_unconfined=True)
    assert done.exit_code == 0, out
    assert json.loads(out.splitlines()[-1]) == {"unshare": "ok", "keyctl": "ok", "clone3": "EINVAL"}


def test_run_as_user_has_no_effective_capabilities(runtime: Runtime) -> None:
    script = "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); " + STATUS_THEN_SLEEP
    st = runtime.start(make_config(["sh", "-c", script], run_as_user=1000, run_as_group=3000))
    assert st.pid is not None
    wait_for(lambda: "ready" in container_output(st.log_path), what="the container's status dump")
    out = container_output(st.log_path)
    assert "uid=1000 gid=3000 groups=3000" in out.splitlines()
    inside, host = status_fields(out), _host_status(st.pid)
    for seen in (inside, host):
        assert seen["CapEff"] == seen["CapPrm"] == "0000000000000000"
        assert seen["CapBnd"] == DOCKER_DEFAULT_CAPS
        assert seen["Uid"].split() == ["1000"] * 4 and seen["Gid"].split() == ["3000"] * 4
        assert seen["NoNewPrivs"] == "1" and seen["Seccomp"] == "2"


def test_host_files_are_out_of_reach(runtime: Runtime) -> None:
    token = secrets.token_hex(4)
    host_hostname = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else None
    script = textwrap.dedent(f"""\
        touch /usr/orch-test-{token} 2>/dev/null && echo usr=written || echo usr=refused
        echo owned > /etc/hostname && echo etc-hostname=written
        echo owned > /etc/orch-test-{token} && echo etc-new=written
        touch /tmp/x && echo tmp=written
    """)
    done, out = run_to_exit(runtime, ["sh", "-c", script])
    assert done.exit_code == 0, out
    lines = out.splitlines()
    # /usr is the host's, read-only; /etc is the container's own generated copy.
    assert {"usr=refused", "etc-hostname=written", "etc-new=written", "tmp=written"} <= set(lines), out
    assert not Path(f"/usr/orch-test-{token}").exists()
    assert not Path(f"/etc/orch-test-{token}").exists()
    assert (Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else None) == host_hostname


def test_read_only_root_filesystem(runtime: Runtime) -> None:
    token = secrets.token_hex(4)
    script = textwrap.dedent(f"""\
        for f in /orch-{token} /etc/orch-{token} /tmp/orch-{token} /var/tmp/orch-{token} /dev/shm/orch-{token}; do
            touch "$f" 2>/dev/null && echo "$f=rw" || echo "$f=ro"
        done
        grep -E '^[0-9]+ [0-9]+ [^ ]+ / / ' /proc/self/mountinfo | cut -d' ' -f6
        echo cwd=$(pwd)
    """)
    done, out = run_to_exit(runtime, ["sh", "-c", script], read_only_root_filesystem=True, working_dir="/work/dir")
    assert done.exit_code == 0, out
    lines = out.splitlines()
    for path in ("/", "/etc/", "/tmp/", "/var/tmp/"):
        assert f"{path.rstrip('/')}/orch-{token}={'ro'}" in lines, out
    assert f"/dev/shm/orch-{token}=rw" in lines  # /dev/shm stays a writable tmpfs
    assert lines[-2].split(",")[0] == "ro"  # the root mount's own options
    assert "cwd=/work/dir" in lines  # made before / turned read-only
    assert not Path(f"/etc/orch-{token}").exists()


def test_proc_paths_are_masked_and_read_only(runtime: Runtime) -> None:
    probe = textwrap.dedent(f"""\
        import json, os, stat
        masked = {{}}
        for p in {list(MASKED_PATHS)!r}:
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue  # this kernel has no such file: nothing to hide
            if stat.S_ISDIR(st.st_mode):
                masked[p] = "empty-dir" if not os.listdir(p) else "visible"
            else:
                masked[p] = "null" if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3) else "visible"
        mounts = {{line.split()[4]: line.split()[5].split(",")[0] for line in open("/proc/self/mountinfo")}}
        try:
            open("/proc/sys/kernel/domainname", "w").write("x")
            sysctl = "written"
        except OSError as e:
            sysctl = os.strerror(e.errno)
        print(json.dumps({{"masked": masked, "mounts": mounts, "sysctl": sysctl,
                          "kcore_readable": os.path.exists("/proc/kcore") and open("/proc/kcore", "rb").read(16) != b""}}))
    """)
    done, out = run_to_exit(runtime, ["python3", "-c", probe])
    assert done.exit_code == 0, out
    seen = json.loads(out.splitlines()[-1])
    host_has = [p for p in MASKED_PATHS if p.startswith("/proc/") and os.path.lexists(p)]
    assert host_has, "the host has none of the masked /proc paths: nothing to test"
    for path in host_has:
        assert seen["masked"].get(path) in ("null", "empty-dir"), (path, seen["masked"])
    assert seen["kcore_readable"] is False
    assert all(v != "visible" for v in seen["masked"].values()), seen["masked"]
    for path in READONLY_PATHS:
        if os.path.lexists(path):
            assert seen["mounts"].get(path) == "ro", (path, seen["mounts"].get(path))
    assert seen["sysctl"] == "Read-only file system"
    assert seen["mounts"]["/sys"] == "ro"
    assert seen["mounts"].get("/sys/firmware") == "ro"
    # A privileged container sees it all.
    done, out = run_to_exit(runtime, ["python3", "-c", probe.replace("domainname", "orch-no-such-sysctl")],
                            privileged=True)
    seen = json.loads(out.splitlines()[-1])
    assert not [p for p in (*MASKED_PATHS, *READONLY_PATHS) if p in seen["mounts"]], seen["mounts"]
    assert seen["mounts"]["/sys"] == "rw"


def test_restrict_current_process_applies_after_joining_a_running_container(runtime: Runtime) -> None:
    """What exec into a container does: join its namespaces and root, restrict, exec."""
    st = runtime.start(make_config(["sleep", "1000"], run_as_user=1000, capabilities_drop=["NET_RAW"]))
    assert st.pid is not None
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        code = 127
        try:
            os.close(r)
            for kind, flag in (("ipc", sc.CLONE_NEWIPC), ("uts", sc.CLONE_NEWUTS), ("net", sc.CLONE_NEWNET),
                               ("pid", sc.CLONE_NEWPID), ("mnt", sc.CLONE_NEWNS)):
                fd = os.open(f"/proc/{st.pid}/ns/{kind}", os.O_RDONLY)
                sc.setns(fd, flag)  # joining the mount namespace also moves / and the cwd into it
                os.close(fd)
            grandchild = os.fork()  # the PID namespace applies to children
            if grandchild == 0:
                os.dup2(w, 1)
                restrict_current_process(st.config)
                os.execv("/bin/cat", ["cat", "/proc/self/status"])
            code = os.waitstatus_to_exitcode(os.waitpid(grandchild, 0)[1])
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        seen = status_fields(f.read())
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
    assert seen["CapBnd"] == _hex(capability_mask(DEFAULT_CAPABILITIES - {"CAP_NET_RAW"}))
    assert seen["CapEff"] == "0000000000000000"
    assert seen["Uid"].split() == ["1000"] * 4
    assert (seen["NoNewPrivs"], seen["Seccomp"]) == ("1", "2")
    assert int(seen["Pid"]) > 1  # a pid of the container's namespace
