"""Helpers shared by the cluster tests: polling with a deadline, reading the host's view."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or condition}; last value: {last!r}")


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ns_inode(pid: int | str, ns: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{ns}")


def nspid(pid: int) -> list[int]:
    """The pid of ``pid`` in each PID namespace it belongs to, outermost first (/proc/PID/status NSpid)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no NSpid line for pid {pid}")


def cgroup_dir(pid: int, controller: str) -> Path:
    """The absolute cgroup directory of ``pid`` for a v1 controller (or the v2 unified one)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return Path(f"/sys/fs/cgroup/{controller}{path}")
        if ctrls == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path(f"/sys/fs/cgroup{path}")
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def memory_limit_file(cg: Path) -> Path:
    v1 = cg / "memory.limit_in_bytes"
    return v1 if v1.exists() else cg / "memory.max"


def container_id(pod: dict, index: int = 0) -> str:
    cid = pod["status"]["containerStatuses"][index]["containerID"]
    m = re.fullmatch(r"orch://([0-9a-f]+)", cid)
    assert m, cid
    return m.group(1)
