"""The cgroup drivers against real hierarchies (v1 here; v2 where the kernel offers it) and a fake cgroupfs.

v1 runs on this machine's per-controller hierarchies. v2 runs for real on any
mounted cgroup2 hierarchy (with or without controllers: joining, listing,
cgroup.kill and rmdir need none), and its file-writing parts also run against
a temporary directory laid out like cgroupfs, so they are covered even where
the unified hierarchy offers no memory/cpu/pids controllers.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_runtime import cgroup_dirs_named, requires_root, unique_name, wait_for

from agent.runtime.cgroups import (
    CgroupDriver,
    Limits,
    V1Driver,
    V2Driver,
    cpu_shares,
    cpu_weight,
    detect_driver,
    driver_from_spec,
    fs_type,
    v1_mounts,
)

MiB = 1024 * 1024
ALLOCATE_200MIB = "b = bytearray(200 * 1024 * 1024)"


def _v1_available() -> bool:
    return {"cpu", "memory"} <= set(v1_mounts())


def _unified_mount() -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            return left.split()[4]
    return None


needs_v1 = pytest.mark.skipif(not _v1_available(), reason="no cgroup v1 cpu+memory hierarchies on this machine")


def _spawn_in(driver: CgroupDriver, path: str, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a process that joins ``path`` itself (writes 0 to cgroup.procs) before exec."""
    return subprocess.Popen(argv, preexec_fn=lambda: driver.add_self(path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture
def v1() -> Iterator[tuple[V1Driver, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups (CI runs as root)")
    if not _v1_available():
        pytest.skip("no cgroup v1 hierarchies here")
    driver = V1Driver()
    name = unique_name()
    try:
        yield driver, name
    finally:
        driver.kill_all(name)
        driver.remove(name)
        assert not cgroup_dirs_named(name)


@pytest.fixture
def v2_real() -> Iterator[tuple[V2Driver, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups (CI runs as root)")
    mount = _unified_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    driver = V2Driver(mount)
    name = unique_name()
    try:
        yield driver, name
    finally:
        driver.kill_all(name)
        driver.remove(name)
        assert not (Path(mount) / name).exists()


@pytest.fixture
def fake_v2(tmp_path: Path) -> V2Driver:
    """A directory laid out like the root of a cgroup2 mount."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (root / "cgroup.subtree_control").write_text("\n")
    (root / "cgroup.procs").write_text("")
    return V2Driver(root)


# ---------------------------------------------------------------- pure


def test_cpu_conversions_match_kubernetes() -> None:
    assert cpu_shares(1000) == 1024
    assert cpu_shares(100) == 102
    assert cpu_shares(1) == 2  # kernel minimum
    assert cpu_weight(100) == 4
    assert cpu_weight(1000) == 39
    assert cpu_weight(1) == 1
    assert cpu_weight(256_000) == 10_000


def test_v1_mounts_from_mountinfo_including_comounted() -> None:
    text = (
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    mounts = v1_mounts(text)
    assert mounts == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "memory": "/sys/fs/cgroup/memory",
        "pids": "/sys/fs/cgroup/pids",
    }
    driver = V1Driver(mounts)
    # Co-mounted controllers share one directory, which is created and joined once.
    assert driver.paths("a/b")["cpu"] == driver.paths("a/b")["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct/a/b"
    assert len(driver._unique_dirs("a/b")) == 3


@pytest.mark.parametrize("bad", ["", "/", "a/../b", "./a", "a//b"])
def test_cgroup_paths_must_be_relative_and_plain(bad: str) -> None:
    with pytest.raises(ValueError):
        V2Driver("/nonexistent").paths(bad)


def test_detect_driver_prefers_v2_only_with_memory(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    driver = detect_driver(tmp_path)
    assert isinstance(driver, V2Driver) and driver.root == tmp_path
    if _v1_available():
        (tmp_path / "cgroup.controllers").write_text("hugetlb\n")
        assert isinstance(detect_driver(tmp_path), V1Driver)


def test_spec_round_trip(tmp_path: Path) -> None:
    v2 = V2Driver(tmp_path)
    again = driver_from_spec(v2.spec())
    assert isinstance(again, V2Driver) and again.root == tmp_path
    v1 = V1Driver({"cpu": "/c", "memory": "/m"})
    again1 = driver_from_spec(v1.spec())
    assert isinstance(again1, V1Driver) and again1.mounts == {"cpu": "/c", "memory": "/m"}


# ---------------------------------------------------------------- v1, real kernel


@requires_root
@needs_v1
def test_v1_create_with_limits_and_read_back(v1: tuple[V1Driver, str]) -> None:
    driver, name = v1
    path = f"{name}/node-1/pod123/c1"
    driver.create(path, Limits(memory_bytes=64 * MiB, cpu_quota_millis=250, cpu_request_millis=100, pids_max=50))
    dirs = driver.paths(path)
    assert int(Path(dirs["memory"], "memory.limit_in_bytes").read_text()) == 64 * MiB
    memsw = Path(dirs["memory"], "memory.memsw.limit_in_bytes")
    if memsw.exists():
        assert int(memsw.read_text()) == 64 * MiB
    assert int(Path(dirs["cpu"], "cpu.cfs_period_us").read_text()) == 100_000
    assert int(Path(dirs["cpu"], "cpu.cfs_quota_us").read_text()) == 25_000
    assert int(Path(dirs["cpu"], "cpu.shares").read_text()) == 102
    if "pids" in dirs:
        assert Path(dirs["pids"], "pids.max").read_text().strip() == "50"
    assert driver.memory_limit(path) == 64 * MiB
    # Parents were created on the way, unlimited.
    assert driver.memory_limit(f"{name}/node-1/pod123") is None
    assert int(Path(driver.paths(f"{name}/node-1")["cpu"], "cpu.cfs_quota_us").read_text()) == -1
    # A pod level can carry limits too, and raising a limit above the current
    # memsw limit works (the kernel wants memsw raised first).
    driver.create(f"{name}/node-1/pod123", Limits(memory_bytes=256 * MiB))
    driver.create(path, Limits(memory_bytes=128 * MiB))
    assert driver.memory_limit(path) == 128 * MiB
    assert driver.memory_limit(f"{name}/node-1/pod123") == 256 * MiB
    # A tiny CPU limit is clamped to the kernel's 1 ms minimum quota instead of EINVAL.
    driver.create(path, Limits(cpu_quota_millis=1))
    assert int(Path(dirs["cpu"], "cpu.cfs_quota_us").read_text()) == 1000


@requires_root
@needs_v1
def test_v1_join_list_kill_remove(v1: tuple[V1Driver, str]) -> None:
    driver, name = v1
    path = f"{name}/pod1/c1"
    driver.create(path, Limits(memory_bytes=128 * MiB))
    joined_itself = _spawn_in(driver, path, ["sleep", "60"])
    moved = subprocess.Popen(["sleep", "60"])
    try:
        driver.add_pid(path, moved.pid)
        assert driver.pids(path) == sorted([joined_itself.pid, moved.pid])
        # Listing a parent includes its descendants.
        assert driver.pids(name) == sorted([joined_itself.pid, moved.pid])
        cgroup_lines = Path(f"/proc/{joined_itself.pid}/cgroup").read_text()
        for controller in ("memory", "cpu", "cpuacct", "pids"):
            if controller in driver.mounts:
                assert any(line.endswith(f"/{path}") and controller in line.split(":")[1].split(",")
                           for line in cgroup_lines.splitlines()), (controller, cgroup_lines)
        # rmdir refuses while tasks remain; remove says so after its retries.
        with pytest.raises(OSError) as busy:
            driver.remove(path, timeout=0.1)
        assert busy.value.errno == errno.EBUSY
        driver.kill_all(path)
        assert joined_itself.wait(5) == -signal.SIGKILL
        assert moved.wait(5) == -signal.SIGKILL
        assert driver.pids(path) == []
    finally:
        _reap(joined_itself)
        _reap(moved)
    driver.remove(name)
    assert not cgroup_dirs_named(name)
    driver.remove(name)  # idempotent
    driver.remove(f"{name}/never/existed")


@requires_root
@needs_v1
def test_v1_oom_kill_is_detected(v1: tuple[V1Driver, str]) -> None:
    driver, name = v1
    hog, calm = f"{name}/hog", f"{name}/calm"
    driver.create(hog, Limits(memory_bytes=32 * MiB))
    driver.create(calm, Limits(memory_bytes=32 * MiB))
    proc = _spawn_in(driver, hog, [sys.executable, "-c", ALLOCATE_200MIB])
    assert proc.wait(30) == -signal.SIGKILL
    assert driver.oom_killed(hog)
    ok = _spawn_in(driver, calm, [sys.executable, "-c", "pass"])
    assert ok.wait(30) == 0
    assert not driver.oom_killed(calm)


# ---------------------------------------------------------------- v2, real kernel


@requires_root
def test_v2_real_hierarchy_join_kill_remove(v2_real: tuple[V2Driver, str]) -> None:
    """Runs on any mounted cgroup2: joining, listing, cgroup.kill and rmdir need no controllers;
    limits and OOM detection are checked too where the hierarchy offers memory."""
    driver, name = v2_real
    assert not driver.plain
    path = f"{name}/node-1/pod1/c1"
    has_memory = "memory" in driver.available_controllers()
    limits = Limits(memory_bytes=64 * MiB, cpu_quota_millis=500, pids_max=20) if has_memory else None
    driver.create(path, limits)
    if has_memory:
        assert driver.memory_limit(path) == 64 * MiB
        assert Path(driver.paths(path)["cpu"], "cpu.max").read_text().split() == ["50000", "100000"]
    proc = _spawn_in(driver, path, ["sleep", "60"])
    try:
        wait_for(lambda: driver.pids(path) == [proc.pid], what="child to join the cgroup")
        assert f"0::/{path}" in Path(f"/proc/{proc.pid}/cgroup").read_text()
        driver.kill_all(name)  # cgroup.kill on the ancestor takes the whole subtree
        assert proc.wait(5) == -signal.SIGKILL
        assert driver.pids(name) == []
    finally:
        _reap(proc)
    if has_memory:  # a v2 host: OOM detection for real too
        driver.create(f"{name}/hog", Limits(memory_bytes=32 * MiB))
        hog = _spawn_in(driver, f"{name}/hog", [sys.executable, "-c", ALLOCATE_200MIB])
        assert hog.wait(30) == -signal.SIGKILL
        assert driver.oom_killed(f"{name}/hog")
    driver.remove(name)
    assert not (driver.root / name).exists()


# ---------------------------------------------------------------- v2, fake cgroupfs


def test_v2_fake_create_enables_controllers_and_writes_limits(fake_v2: V2Driver) -> None:
    driver, root = fake_v2, fake_v2.root
    assert driver.plain
    (root / "n1/pod1/c1").mkdir(parents=True)
    (root / "n1/pod1/c1/memory.swap.max").write_text("max\n")  # as if swap accounting were on
    driver.create("n1/pod1/c1",
                  Limits(memory_bytes=64 * MiB, cpu_quota_millis=250, cpu_request_millis=100, pids_max=50))
    # Every ancestor, the root included, delegates cpu, memory and pids (and nothing else).
    for d in (root, root / "n1", root / "n1/pod1"):
        assert set((d / "cgroup.subtree_control").read_text().split()) == {"+cpu", "+memory", "+pids"}, d
    c1 = root / "n1/pod1/c1"
    assert (c1 / "memory.max").read_text() == str(64 * MiB)
    assert (c1 / "memory.swap.max").read_text() == "0"
    assert (c1 / "cpu.max").read_text() == "25000 100000"
    assert (c1 / "cpu.weight").read_text() == "4"
    assert (c1 / "pids.max").read_text() == "50"
    assert driver.memory_limit("n1/pod1/c1") == 64 * MiB
    assert not (root / "n1/pod1/memory.max").exists()  # parents get no limits
    # Already-enabled controllers are not written again.
    (root / "cgroup.subtree_control").write_text("cpu memory pids\n")
    driver.create("n1/pod2")
    assert (root / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert driver.paths("n1/pod2") == {c: str(root / "n1/pod2") for c in ("cpu", "memory", "pids")}


def test_v2_fake_limits_memory_oom_pids_remove(fake_v2: V2Driver) -> None:
    driver, root = fake_v2, fake_v2.root
    driver.create("n/p/c")
    c = root / "n/p/c"
    (c / "memory.max").write_text("max\n")
    assert driver.memory_limit("n/p/c") is None
    (c / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n")
    assert not driver.oom_killed("n/p/c")
    (c / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert driver.oom_killed("n/p/c")
    (c / "cgroup.procs").write_text("101\n102\n")
    (root / "n/p/cgroup.procs").write_text("")
    assert driver.pids("n") == [101, 102]
    driver.add_pid("n/p/c", 0)
    assert (c / "cgroup.procs").read_text() == "0"  # one write of "0": the writer joins
    driver.remove("n")
    assert not (root / "n").exists()
    assert (root / "cgroup.controllers").exists()
    driver.remove("n")  # idempotent


def test_fs_type_finds_the_cgroup_mounts() -> None:
    mountinfo = (
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    assert fs_type("/sys/fs/cgroup/memory/a/b", mountinfo) == "cgroup"
    assert fs_type("/sys/fs/cgroup/unified", mountinfo) == "cgroup2"
    assert fs_type("/sys/fs/cgroup/memoryx", mountinfo) == "tmpfs"
