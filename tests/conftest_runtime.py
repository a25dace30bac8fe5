"""Shared helpers and fixtures for the container-runtime and cgroup tests.

Imported by ``tests/test_runtime.py`` and ``tests/test_cgroups.py`` (not a
conftest: ``tests/conftest.py`` belongs to the whole suite). Everything a test
creates is named ``orch-test-<random>`` and removed in a finalizer that also
runs when the test fails; the finalizer then checks that no cgroup directory,
no process and no mount of that test is left.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from agent.runtime.runtime import (
    ContainerConfig,
    ContainerState,
    ContainerStatus,
    Runtime,
)

T = TypeVar("T")

CGROUP_MOUNT = Path("/sys/fs/cgroup")

requires_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: creates namespaces, mounts and cgroups (CI runs as root, so this never skips there)",
)


def unique_name() -> str:
    return f"orch-test-{secrets.token_hex(4)}"


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cgroup_dirs_named(name: str) -> list[Path]:
    """Every directory called ``name`` at the top of any cgroup hierarchy on this machine."""
    return sorted(p for p in CGROUP_MOUNT.glob(f"*/{name}") if p.is_dir()) + (
        [CGROUP_MOUNT / name] if (CGROUP_MOUNT / name).is_dir() else []
    )


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (e.g. a test's state dir), ourselves excluded."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found


def host_mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]


def pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2:][:1] == b"Z"  # a zombie is gone for our purposes


_CRI_LINE = re.compile(rb"^\S+ (stdout|stderr) ([FP])(?::\S*)? ?(.*)$", re.DOTALL)


def container_output(log_path: str | os.PathLike[str]) -> str:
    """What the container wrote to stdout and stderr, from its log.

    The shim writes the CRI log format (``<time> stdout F <line>``): the
    prefixes are stripped and partial (``P``) lines joined; a plain log is
    returned as it is.
    """
    try:
        raw = Path(log_path).read_bytes()
    except FileNotFoundError:
        return ""
    out = []
    for line in raw.splitlines():
        m = _CRI_LINE.match(line)
        if m is None:
            out.append(line + b"\n")
        else:
            out.append(m.group(3) + (b"\n" if m.group(2) == b"F" else b""))
    return b"".join(out).decode(errors="replace")


def make_config(argv: list[str] | tuple[str, ...], **overrides: object) -> ContainerConfig:
    fields: dict[str, object] = {
        "id": secrets.token_hex(16),
        "pod_uid": secrets.token_hex(8),
        "pod_namespace": "default",
        "pod_name": "web-1",
        "name": "main",
        "image": "host",
        "argv": argv,
        "env": {"GREETING": "hello"},
        "working_dir": "",
        "hostname": "web-1",
        "memory_limit_bytes": None,
        "cpu_limit_millis": None,
        "cpu_request_millis": None,
        "pids_limit": None,
    }
    fields.update(overrides)
    return ContainerConfig(**fields)  # type: ignore[arg-type]


def run_to_exit(rt: Runtime, argv: list[str], timeout: float = 15, **overrides: object) -> tuple[ContainerState, str]:
    """Start a container, wait until it has exited, return its final state and its output."""
    st = rt.start(make_config(argv, **overrides))
    wait_for(lambda: rt.state(st.config.id).status == ContainerStatus.EXITED, timeout,
             what=f"container {st.config.id} to exit")
    done = rt.state(st.config.id)
    return done, container_output(done.log_path)


def status_fields(text: str) -> dict[str, str]:
    """``Name:\tvalue`` lines (as /proc/<pid>/status) -> {Name: value}."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name and " " not in name:
            out[name] = value.strip()
    return out


@pytest.fixture(name="runtime")
def runtime_fixture(tmp_path: Path) -> Iterator[Runtime]:
    """A Runtime with its own state dir and cgroup root; everything it made is gone afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates namespaces, mounts and cgroups (CI runs as root)")
    name = unique_name()
    state_dir = tmp_path / "state"
    rt = Runtime(state_dir, f"{name}/node-1")
    try:
        yield rt
    finally:
        rt.cleanup_all()
        # cleanup_all owns everything under the root, not the parent we invented.
        rt.driver.remove(name)
        assert not cgroup_dirs_named(name), f"cgroups left behind: {cgroup_dirs_named(name)}"
        assert not processes_mentioning(str(state_dir)), "processes left behind"
        assert not host_mounts_mentioning(str(tmp_path)), "mounts leaked into the host's mount namespace"
        assert not state_dir.exists()
