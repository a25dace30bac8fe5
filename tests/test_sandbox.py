"""Pod sandboxes on the real kernel: shared network, UTS and IPC namespaces, user namespaces, removal.

Containers run through the ``runtime`` fixture (``conftest_runtime``), whose
finalizer runs ``cleanup_all`` even when a test fails and then checks that no
cgroup, process or mount — the sandboxes' nsfs bind mounts included — is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_runtime import (
    container_output,
    host_mounts_mentioning,
    make_config,
    requires_root,
    run_to_exit,
    runtime_fixture,  # noqa: F401 - the `runtime` fixture
    status_fields,
    wait_for,
)

from agent.runtime import syscalls as sc
from agent.runtime.runtime import ContainerState, ContainerStatus, Runtime
from agent.runtime.sandbox import (
    ID_RANGE_SIZE,
    IdMap,
    IdRanges,
    Sandboxes,
    mounts_under,
)
from apimachinery.errors import RuntimeError_


def _nsfs_mounts(rt: Runtime) -> list[str]:
    return [m for m in host_mounts_mentioning(str(rt.sandboxes.root)) if " nsfs " in m]


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _wait_log(st: ContainerState, text: str) -> str:
    wait_for(lambda: text in container_output(st.log_path), what=f"{text!r} in the log of {st.config.name}")
    return container_output(st.log_path)


# ---------------------------------------------------------------- pure parts


def test_id_ranges_never_collide_and_are_reused_after_release(tmp_path: Path) -> None:
    ranges = IdRanges(tmp_path / "userns")
    got = [ranges.allocate(f"pod-{i}") for i in range(3)]
    assert [m.host_id for m in got] == [ID_RANGE_SIZE, 2 * ID_RANGE_SIZE, 3 * ID_RANGE_SIZE]
    assert (tmp_path / "userns" / "2").read_text() == "pod-1\n"
    ranges.release(got[1])
    assert ranges.allocate("pod-3") == IdMap(2 * ID_RANGE_SIZE)  # the freed range, no overlap with others
    assert ranges.allocate("pod-4") == IdMap(4 * ID_RANGE_SIZE)
    assert IdMap(65536).map_line() == "0 65536 65536\n"
    # A second allocator on the same directory (another agent process) sees the same taken ranges.
    assert IdRanges(tmp_path / "userns").allocate("pod-5") == IdMap(5 * ID_RANGE_SIZE)


def test_bad_pod_uid_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pod uid"):
        Sandboxes(tmp_path).ensure("../etc", "x")


# ---------------------------------------------------------------- real sandboxes


@requires_root
def test_containers_of_a_pod_share_network_uts_and_ipc_but_not_pids(runtime: Runtime) -> None:
    server = textwrap.dedent("""\
        import socket
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 8080))
        s.listen()
        print("listening", flush=True)
        while True:
            conn, _ = s.accept()
            conn.sendall(b"hello from a\\n")
            conn.close()
    """)
    client = textwrap.dedent("""\
        import socket, time
        for _ in range(200):
            try:
                print("got", socket.create_connection(("127.0.0.1", 8080), timeout=2).recv(100).decode().strip())
                break
            except ConnectionRefusedError:
                time.sleep(0.02)
    """)
    a = runtime.start(make_config(["python3", "-c", server], pod_uid="pod1", name="a", hostname="shared-host"))
    _wait_log(a, "listening")
    b_script = (f"echo pid=$$ host=$(hostname); python3 -c '{client}'; "
                "ls /sys/class/net; cat /sys/class/net/lo/flags; echo done; exec sleep 1000")
    b = runtime.start(make_config(["sh", "-c", b_script], pod_uid="pod1", name="b", hostname="shared-host"))
    other = runtime.start(make_config(["sleep", "1000"], pod_uid="pod2", name="c"))
    out = _wait_log(b, "done").splitlines()
    assert a.pid is not None and b.pid is not None and other.pid is not None

    # One pod: the same network, UTS and IPC namespace, and it is the sandbox's.
    netns = runtime.sandbox_netns_path("pod1")
    assert netns is not None and netns.parent.name == "pod1"
    assert _ns(a.pid, "net") == _ns(b.pid, "net") == f"net:[{os.stat(netns).st_ino}]"
    assert _ns(a.pid, "uts") == _ns(b.pid, "uts") and _ns(a.pid, "ipc") == _ns(b.pid, "ipc")
    # ... each container its own PID and mount namespace; and not the host's network.
    assert _ns(a.pid, "pid") != _ns(b.pid, "pid") and _ns(a.pid, "mnt") != _ns(b.pid, "mnt")
    assert _ns(a.pid, "net") != _ns(os.getpid(), "net")
    # Another pod: other namespaces.
    assert _ns(other.pid, "net") != _ns(a.pid, "net") and _ns(other.pid, "uts") != _ns(a.pid, "uts")

    assert "pid=1 host=shared-host" in out
    assert "got hello from a" in out  # b reached a's server on 127.0.0.1
    # Loopback only, and up (IFF_UP|IFF_LOOPBACK = 0x9).
    assert out[out.index("got hello from a") + 1:][:2] == ["lo", "0x9"]

    for st in (a, b, other):
        runtime.remove(st.config.id)
    assert len(_nsfs_mounts(runtime)) == 6  # sandboxes outlive their containers, like pause
    runtime.remove_pod("pod1")
    assert runtime.sandbox_netns_path("pod1") is None
    assert not (runtime.sandboxes.root / "pod1").exists()
    assert [m for m in _nsfs_mounts(runtime) if "/pod1/" in m] == []
    runtime.remove_pod("pod2")
    assert _nsfs_mounts(runtime) == []
    runtime.remove_pod("pod2")  # idempotent


@requires_root
def test_sandbox_is_made_once_under_concurrent_starts_and_adopted_by_a_new_runtime(runtime: Runtime) -> None:
    states: list[ContainerState] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            states.append(runtime.start(make_config(["sleep", "1000"], pod_uid="busy", name=f"c{i}")))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({_ns(st.pid, "net") for st in states if st.pid}) == 1
    assert len(_nsfs_mounts(runtime)) == 3

    fresh = Runtime(runtime.state_dir, runtime.cgroup_root)  # the agent restarted
    assert fresh.sandbox_netns_path("busy") == runtime.sandbox_netns_path("busy")
    late = fresh.start(make_config(["sleep", "1000"], pod_uid="busy", name="late"))
    assert late.pid is not None and _ns(late.pid, "net") == _ns(states[0].pid or 0, "net")


@requires_root
def test_a_sandbox_whose_mounts_vanished_is_made_again(runtime: Runtime) -> None:
    first = runtime.start(make_config(["true"], pod_uid="reboot"))
    path = runtime.sandbox_netns_path("reboot")
    assert path is not None
    for kind in ("net", "uts", "ipc"):  # what a reboot does to them
        sc.umount2(path.parent / kind)
    assert runtime.sandbox_netns_path("reboot") is None
    again = runtime.start(make_config(["sleep", "1000"], pod_uid="reboot", name="again"))
    assert again.status == ContainerStatus.RUNNING and first.config.id != again.config.id
    assert again.pid is not None and _ns(again.pid, "net") == f"net:[{os.stat(path).st_ino}]"


@requires_root
def test_host_users_false_maps_the_pod_to_its_own_host_id_range(runtime: Runtime) -> None:
    script = textwrap.dedent("""\
        echo uid_map=$(cat /proc/self/uid_map) gid_map=$(cat /proc/self/gid_map)
        echo id=$(id -u):$(id -g) root-owner=$(stat -c %u:%g /) etc-owner=$(stat -c %u:%g /etc/passwd)
        echo tmp-owner=$(stat -c %u:%g /tmp) usr-owner=$(stat -c %u /usr)
        touch /etc/x /tmp/x && echo writes=ok
        grep -E '^Cap(Eff|Bnd)' /proc/self/status
        echo ready
        exec sleep 1000
    """)
    a = runtime.start(make_config(["sh", "-c", script], pod_uid="userns1", host_users=False))
    b = runtime.start(make_config(["sh", "-c", "id -u; echo ready; exec sleep 1000"], pod_uid="userns1",
                                  name="b", host_users=False, run_as_user=1000))
    other = runtime.start(make_config(["sleep", "1000"], pod_uid="userns2", host_users=False))
    sandbox = runtime.sandboxes.get("userns1")
    assert sandbox is not None and sandbox.idmap is not None
    base = sandbox.idmap.host_id
    assert base >= ID_RANGE_SIZE and base % ID_RANGE_SIZE == 0

    out = _wait_log(a, "ready").splitlines()
    assert out[0].replace("=", "= ").split() == ["uid_map=", "0", str(base), str(ID_RANGE_SIZE),
                                                 "gid_map=", "0", str(base), str(ID_RANGE_SIZE)]
    # The container's root owns its /, /etc and /tmp; the host's /usr shows as nobody.
    assert out[1] == "id=0:0 root-owner=0:0 etc-owner=0:0"
    assert out[2] == "tmp-owner=0:0 usr-owner=65534"
    assert "writes=ok" in out
    inside = status_fields("\n".join(out))
    assert inside["CapEff"] == inside["CapBnd"] == "00000000a80425fb"  # within its own user namespace

    # The host sees the container's processes under the mapped ids.
    assert a.pid is not None and b.pid is not None and other.pid is not None
    host = status_fields(Path(f"/proc/{a.pid}/status").read_text())
    assert host["Uid"].split() == [str(base)] * 4 and host["Gid"].split() == [str(base)] * 4
    _wait_log(b, "ready")
    assert status_fields(Path(f"/proc/{b.pid}/status").read_text())["Uid"].split()[0] == str(base + 1000)
    assert os.stat(f"/proc/{a.pid}").st_uid == base
    # One user namespace per pod, owning the pod's network namespace; another pod, another range.
    assert _ns(a.pid, "user") == _ns(b.pid, "user") != _ns(os.getpid(), "user")
    other_base = runtime.sandboxes.get("userns2").idmap.host_id  # type: ignore[union-attr]
    assert abs(other_base - base) >= ID_RANGE_SIZE
    assert os.stat(f"/proc/{other.pid}").st_uid == other_base

    # The pod's hostUsers can't change while its sandbox lives.
    with pytest.raises(RuntimeError_, match="hostUsers"):
        runtime.start(make_config(["true"], pod_uid="userns1", name="c", host_users=True))

    for st in (a, b, other):
        runtime.remove(st.config.id)
    runtime.remove_pod("userns1")
    assert not (runtime.state_dir / "userns" / str(base // ID_RANGE_SIZE)).exists()  # range released
    assert [m for m in _nsfs_mounts(runtime) if "/userns1/" in m] == []


@requires_root
def test_cleanup_all_unmounts_every_sandbox_even_half_made_ones(runtime: Runtime) -> None:
    runtime.start(make_config(["sleep", "1000"], pod_uid="p1"))
    runtime.start(make_config(["sleep", "1000"], pod_uid="p2", host_users=False))
    # A sandbox interrupted between its mounts and its record, as after a crash.
    stray = runtime.sandboxes.root / "p3"
    stray.mkdir()
    (stray / "net").touch()
    sc.mount("/proc/self/ns/net", stray / "net", None, sc.MS_BIND)
    assert len(mounts_under(runtime.sandboxes.root)) == 3 + 4 + 1
    runtime.cleanup_all()
    assert mounts_under(runtime.state_dir) == []
    assert not runtime.state_dir.exists()


@requires_root
def test_run_to_exit_in_a_sandbox_sees_only_loopback(runtime: Runtime) -> None:
    probe = "import json, socket; print(json.dumps(socket.if_nameindex()))"
    done, out = run_to_exit(runtime, ["python3", "-c", probe])
    assert done.exit_code == 0, out
    assert json.loads(out.splitlines()[-1]) == [[1, "lo"]]


@requires_root
def test_ensure_sandbox_before_any_container(runtime: Runtime) -> None:
    """The network layer may set a pod's network up before its first container starts."""
    netns = runtime.ensure_sandbox("early", "early-host")
    assert runtime.sandbox_netns_path("early") == netns and runtime.sandbox_pod_uids() == ["early"]
    done, out = run_to_exit(runtime, ["hostname"], pod_uid="early", hostname="ignored-once-the-sandbox-exists")
    assert (done.exit_code, out) == (0, "early-host\n")
    with pytest.raises(RuntimeError_, match="pod uid"):
        runtime.ensure_sandbox("../x", "h")


@requires_root
def test_namespaces_made_in_place_leave_the_calling_thread_where_it_was(tmp_path: Path) -> None:
    from agent.runtime.sandbox import create_namespaces

    def mine() -> dict[str, str]:
        return {k: os.readlink(f"/proc/thread-self/ns/{k}") for k in ("net", "uts", "ipc")}

    before, hostname = mine(), os.uname().nodename
    try:
        create_namespaces(tmp_path, "in-place", None)
        assert mine() == before and os.uname().nodename == hostname
        made = {k: os.stat(tmp_path / k).st_ino for k in ("net", "uts", "ipc")}
        assert all(f"[{made[k]}]" not in before[k] for k in made), "the sandbox reused our namespaces"
        # Inside: its own hostname, and only loopback, up.
        done = subprocess.run(["nsenter", f"--net={tmp_path / 'net'}", f"--uts={tmp_path / 'uts'}",
                               "sh", "-c", "hostname; ip -o link"], capture_output=True, text=True, timeout=30)
        name, *links = done.stdout.splitlines()
        assert name == "in-place" and len(links) == 1 and "lo: <LOOPBACK,UP," in links[0], done.stdout + done.stderr
    finally:
        for p in mounts_under(tmp_path):
            sc.umount2(p, sc.MNT_DETACH)
