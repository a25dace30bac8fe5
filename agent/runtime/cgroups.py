"""Cgroups for containers: one interface, a cgroup v1 and a cgroup v2 driver.

A cgroup is named by a path relative to the hierarchy root, e.g.
``orch-lab-abc/node-1/pod<uid>/<container-id>``. ``create`` makes every missing
level on the way (parents get no limits) and writes the given ``Limits`` to the
last one, so the same call serves a pod-level and a container-level cgroup.

* ``V1Driver`` works on the per-controller hierarchies (cpu, cpuacct, memory,
  pids), each its own mount or co-mounted (``cpu,cpuacct``); the mounts are read
  from ``/proc/self/mountinfo``.
* ``V2Driver`` works on the unified hierarchy and enables the controllers it
  needs in ``cgroup.subtree_control`` of each parent it walks through. Its root
  is configurable so tests can lay a fake cgroupfs out in a temporary directory.

``detect_driver`` picks v2 when ``/sys/fs/cgroup/cgroup.controllers`` lists
``memory``, else v1. A driver can be described as a small dict
(``spec()``/``driver_from_spec``) so the shim, a separate process, uses exactly
the driver the Runtime was given.

Errors are ``OSError`` with the kernel's errno and the file named, as for
syscalls; callers above translate them into ``RuntimeError_``.

Reading usage (``CgroupDriver.stats`` -> ``CgroupStats``) is read-only and
follows cAdvisor's rules, so the agent's ``/metrics`` means what kubelet's does;
a file that is missing (controller not mounted or not enabled, cgroup removed
meanwhile) leaves its figures ``None`` instead of failing.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "CPU_PERIOD_US",
    "CgroupDriver",
    "CgroupStats",
    "Limits",
    "OomEvidence",
    "V1Driver",
    "V2Driver",
    "cpu_shares",
    "cpu_weight",
    "cpu_weight_to_shares",
    "detect_driver",
    "driver_from_spec",
    "fs_type",
    "v1_mounts",
]

log = logging.getLogger(__name__)

CGROUP_MOUNT = "/sys/fs/cgroup"

#: CFS period used for CPU limits, as Kubernetes does (100 ms).
CPU_PERIOD_US = 100_000
#: The kernel rejects a CFS quota under 1 ms (EINVAL); Kubernetes clamps the same way.
MIN_CPU_QUOTA_US = 1_000
#: v1 cpu.shares bounds (kernel MIN_SHARES/MAX_SHARES).
MIN_SHARES = 2
MAX_SHARES = 262_144

#: Controllers a container needs. cpuacct is v1-only (v2 folds it into cpu).
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
V2_CONTROLLERS = ("cpu", "memory", "pids")

#: v1 reports "no limit" as PAGE_COUNTER_MAX pages, a page-size dependent
#: number near 2**63; anything this large is unlimited.
_V1_UNLIMITED = 1 << 62

#: How long ``remove`` keeps retrying EBUSY while killed tasks drain.
REMOVE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for one cgroup; ``None`` leaves the kernel default (unlimited)."""

    memory_bytes: int | None = None
    cpu_quota_millis: int | None = None
    cpu_request_millis: int | None = None
    pids_max: int | None = None


def cpu_shares(millis: int) -> int:
    """v1 ``cpu.shares`` for a CPU request, as the kubelet computes it."""
    return min(MAX_SHARES, max(MIN_SHARES, millis * 1024 // 1000))


def cpu_weight(millis: int) -> int:
    """v2 ``cpu.weight`` for a CPU request: the kubelet's linear map of shares [2, 262144] onto [1, 10000]."""
    return 1 + ((cpu_shares(millis) - MIN_SHARES) * 9999) // (MAX_SHARES - MIN_SHARES)


def cpu_weight_to_shares(weight: int) -> int:
    """v1-style shares for a v2 ``cpu.weight``: cAdvisor's inverse map of [1, 10000] onto [2, 262144].

    Not an exact inverse of ``cpu_weight`` (integer division both ways): a 1000m
    request gives weight 39, read back as 998 shares, which is what cAdvisor reports too.
    """
    if not 1 <= weight <= 10_000:
        raise ValueError(f"cpu.weight must be within [1, 10000]: {weight}")
    return MIN_SHARES + (weight - 1) * (MAX_SHARES - MIN_SHARES) // 9999


def cpu_quota_us(millis: int, period_us: int = CPU_PERIOD_US) -> int:
    """CFS quota in µs for a CPU limit in millicores over ``period_us``."""
    return max(MIN_CPU_QUOTA_US, millis * period_us // 1000)


# ---------------------------------------------------------------- file helpers


def _write(path: Path, value: str, *, plain: bool = False) -> None:
    """Write one value to a cgroup file in a single write(2), as cgroupfs wants.

    ``plain`` marks a fake hierarchy (an ordinary directory in tests), where
    the file is created; on cgroupfs a missing file is an error worth seeing
    (ENOENT: the controller is not enabled there).
    """
    flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if plain else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise OSError(e.errno, f"open {path} for writing: {e.strerror}") from e
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise OSError(e.errno, f"write {value!r} to {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def fs_type(path: str | os.PathLike[str], mountinfo: str | None = None) -> str | None:
    """The filesystem type of the mount holding ``path`` (longest mount-point prefix)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if not sep or len(fields) < 5 or not rfields:
            continue
        mp = fields[4].replace("\\040", " ")
        inside = target == mp or target.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= len(best):
            best, best_type = mp, rfields[0]
    return best_type


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise OSError(e.errno, f"read {path}: {e.strerror}") from e


def _read_keyed(path: Path) -> dict[str, int]:
    """Parse a flat-keyed file like ``memory.events`` or ``memory.oom_control``."""
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


#: The memory.stat keys ``stats`` uses: v1 (hierarchical ``total_*``, plain on old kernels), v2.
_V1_MEMORY_KEYS = frozenset({b"total_rss", b"rss", b"total_cache", b"cache", b"total_inactive_file",
                             b"inactive_file"})
_V2_MEMORY_KEYS = frozenset({b"anon", b"file", b"inactive_file"})
#: v1 cpuacct.stat counts USER_HZ ticks (sysconf CLK_TCK, 100 on Linux).
_USER_HZ = os.sysconf("SC_CLK_TCK")
#: One read(2) takes a whole stat file (v1 memory.stat is ~1.5 KiB); bigger ones loop.
_STAT_READ_SIZE = 16384
#: A file that vanished with its cgroup, or a controller that is not there: no figure.
_ABSENT_ERRNOS = (errno.ENOENT, errno.ENODEV)


def _read_opt(path: str) -> bytes | None:
    """A cgroup file's bytes, or None if it is not there (see ``_ABSENT_ERRNOS``).

    os.open/os.read rather than a buffered file object: a scrape reads a dozen
    files per cgroup. Gotcha: cgroupfs files are seq_files, which fill the
    caller's buffer as far as they can, so a short read is the end of the file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in _ABSENT_ERRNOS:
            return None
        raise OSError(e.errno, f"open {path}: {e.strerror}") from e
    try:
        data = os.read(fd, _STAT_READ_SIZE)
        if len(data) == _STAT_READ_SIZE:
            chunks = [data]
            while chunk := os.read(fd, _STAT_READ_SIZE):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    except OSError as e:
        if e.errno in _ABSENT_ERRNOS:
            return None
        raise OSError(e.errno, f"read {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def _opt_int(data: bytes | None) -> int | None:
    """A single-number file (``memory.current``, ``cpu.shares``); None if absent or not a number."""
    if data is None:
        return None
    try:
        return int(data)
    except ValueError:
        return None


def _keyed_bytes(data: bytes | None, wanted: frozenset[bytes] | None = None) -> dict[str, int]:
    """``key value`` lines (``cpu.stat``, ``memory.stat``, ``memory.events``) -> {key: value};
    only the ``wanted`` keys if given (memory.stat has dozens, a scrape needs three)."""
    out: dict[str, int] = {}
    if data is None:
        return out
    for line in data.split(b"\n"):
        key, _, value = line.partition(b" ")
        if wanted is not None and key not in wanted:
            continue
        try:
            out[key.decode()] = int(value)
        except ValueError:
            continue
    return out


def _count_ids(data: bytes | None) -> int | None:
    """How many pids (or tids) a ``cgroup.procs``/``tasks``/``cgroup.threads`` file lists."""
    return None if data is None else len(data.split())


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    """cAdvisor's working set: usage minus the inactive page cache (reclaimable first), never below 0."""
    if usage is None:
        return None
    return max(0, usage - (inactive_file or 0))


def _check_relative(path: str) -> str:
    rel = path.strip("/")
    if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"cgroup path must be a non-empty relative path without '.' or '..': {path!r}")
    return rel


def _procs_under(directory: Path) -> set[int]:
    """Pids in ``directory``'s cgroup.procs and in every cgroup below it."""
    found: set[int] = set()
    if not directory.is_dir():
        return found
    for dirpath, _dirnames, _files in os.walk(directory):
        try:
            text = (Path(dirpath) / "cgroup.procs").read_text()
        except FileNotFoundError:
            continue
        found.update(int(tok) for tok in text.split())
    return found


def _rmdir_tree(directory: Path, deadline: float, *, plain: bool = False) -> None:
    """rmdir a cgroup and its children, deepest first, retrying EBUSY until ``deadline``.

    Gotcha: cgroup directories are removed with rmdir even though they look
    full of files; unlink on the interface files fails. rmdir returns EBUSY
    while a task (even a just-SIGKILLed one that has not been reaped) or a
    child cgroup is left, so we retry briefly.
    """
    if not directory.exists():
        return
    for dirpath, _dirnames, _files in os.walk(directory, topdown=False):
        d = Path(dirpath)
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno == errno.ENOTEMPTY and plain:
                    # A fake hierarchy holds real files; cgroupfs never says ENOTEMPTY.
                    for child in d.iterdir():
                        if child.is_file():
                            child.unlink()
                    continue
                if e.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                raise OSError(e.errno, f"rmdir {d}: {e.strerror}") from e


def _kill_pids(pids: set[int]) -> None:
    for pid in pids:
        if pid <= 1:
            continue  # never signal init or a bogus entry
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- interface


@dataclass(frozen=True, slots=True)
class OomEvidence:
    """Where a cgroup's OOM kills show: a keyed file with an ``oom_kill`` counter, and on v1
    ``memory.failcnt`` for kernels whose file lacks that counter."""

    events: Path
    failcnt: Path | None = None


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """What one cgroup uses and is limited to, read at one moment, in cAdvisor's units and rules.

    ``None`` means the figure could not be read here (its controller is not
    mounted or enabled, or the cgroup was removed while being read); the same
    fields mean the same on v1 and v2:

    * CPU time in seconds; ``cfs_*`` are the CFS bandwidth counters
      (periods elapsed, periods throttled, time throttled);
    * ``memory_usage_bytes`` is all charged memory, page cache included;
      ``memory_working_set_bytes`` is that minus the inactive file cache, the
      figure the OOM killer and kubelet's eviction look at;
      ``memory_rss_bytes`` is anonymous memory, ``memory_cache_bytes`` page cache;
    * ``memory_failcnt``: times usage hit the limit (v1 ``memory.failcnt``; v2
      has no such file and cAdvisor reports 0 there, so do we);
    * ``oom_kills``: processes the kernel OOM-killed in this cgroup;
    * ``memory_limit_bytes`` 0 and ``cpu_quota_us`` 0 mean unlimited, as in
      cAdvisor's spec; ``cpu_shares`` is v1 shares (v2 weight mapped back);
    * ``processes``: pids in this very cgroup's ``cgroup.procs`` (not below it,
      as cAdvisor counts); ``threads``: ``pids.current`` (this cgroup and below),
      or, without a pids controller, the tasks listed in this cgroup.
    """

    cpu_usage_seconds: float | None = None
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    cfs_periods: int | None = None
    cfs_throttled_periods: int | None = None
    cfs_throttled_seconds: float | None = None
    memory_usage_bytes: int | None = None
    memory_working_set_bytes: int | None = None
    memory_rss_bytes: int | None = None
    memory_cache_bytes: int | None = None
    memory_failcnt: int | None = None
    oom_kills: int | None = None
    memory_limit_bytes: int | None = None
    cpu_quota_us: int | None = None
    cpu_period_us: int | None = None
    cpu_shares: int | None = None
    processes: int | None = None
    threads: int | None = None

    def found(self) -> bool:
        """Whether anything at all was read (False: the cgroup is not there)."""
        return any(getattr(self, name) is not None for name in _STAT_FIELDS)


_STAT_FIELDS = tuple(f.name for f in fields(CgroupStats))


class CgroupDriver(abc.ABC):
    """What the runtime needs from a cgroup hierarchy, v1 or v2.

    ``plain`` is True when the hierarchy is an ordinary directory standing in
    for cgroupfs (tests): files are then created on write and removed before
    rmdir, which the kernel does by itself on the real thing.
    """

    plain: bool = False

    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """A JSON-able description from which ``driver_from_spec`` rebuilds this driver."""

    @abc.abstractmethod
    def paths(self, path: str) -> dict[str, str]:
        """Controller name -> absolute directory of the cgroup ``path``."""

    @abc.abstractmethod
    def create(self, path: str, limits: Limits | None = None) -> None:
        """Create ``path`` (and missing parents, unlimited) and apply ``limits`` to it."""

    @abc.abstractmethod
    def memory_limit(self, path: str) -> int | None:
        """The memory limit in bytes, or None when unlimited."""

    @abc.abstractmethod
    def oom_evidence(self, path: str) -> OomEvidence:
        """The files that tell whether the kernel OOM-killed a process of this cgroup."""

    @abc.abstractmethod
    def stats(self, path: str) -> CgroupStats:
        """Usage, limits and process counts of ``path`` now; read-only, missing files leave ``None``."""

    @abc.abstractmethod
    def stat_files(self, path: str) -> list[str]:
        """Every file ``stats`` reads for ``path`` (absolute), for comparing its cost with plain reads."""

    def oom_killed(self, path: str, *, sigkilled: bool = True) -> bool:
        """Whether the kernel OOM-killed a process of this cgroup.

        The ``oom_kill`` counter (v2 ``memory.events``; v1 ``memory.oom_control``
        since Linux 4.13). A v1 kernel without it leaves ``memory.failcnt`` > 0
        (the limit was hit at least once) together with a SIGKILLed main
        process (``sigkilled``) as the best available evidence — failcnt alone
        also counts hits that reclaim absorbed. orch-monitor (monitor.c) applies
        the same rule to the same files when a container exits.
        """
        evidence = self.oom_evidence(path)
        counters = _read_keyed(evidence.events)
        if "oom_kill" in counters or evidence.failcnt is None:
            return counters.get("oom_kill", 0) > 0
        return sigkilled and int(_read(evidence.failcnt)) > 0

    def kill_file(self, path: str) -> Path | None:
        """``cgroup.kill`` of ``path`` where the hierarchy has one (v2, Linux 5.14)."""
        return None

    def dirs(self, path: str) -> list[Path]:
        """Every distinct directory of the cgroup ``path`` (one per v1 hierarchy, one on v2)."""
        return self._unique_dirs(path)

    def _unique_dirs(self, path: str) -> list[Path]:
        seen: dict[str, None] = {}
        for d in self.paths(path).values():
            seen.setdefault(d, None)
        return [Path(d) for d in seen]

    def exists(self, path: str) -> bool:
        """Whether the cgroup exists in any of its controllers."""
        return any(d.is_dir() for d in self._unique_dirs(path))

    def add_pid(self, path: str, pid: int) -> None:
        """Move process ``pid`` (0: the caller) into ``path`` in every controller."""
        for d in self._unique_dirs(path):
            _write(d / "cgroup.procs", str(pid), plain=self.plain)

    def add_self(self, path: str) -> None:
        """Move the calling process into ``path``; writing ``0`` means "the writer"."""
        self.add_pid(path, 0)

    def pids(self, path: str) -> list[int]:
        """Every pid in ``path`` and the cgroups below it, across all controllers, sorted."""
        found: set[int] = set()
        for d in self._unique_dirs(path):
            found |= _procs_under(d)
        return sorted(found)

    def kill_all(self, path: str, timeout: float = 5.0) -> None:
        """SIGKILL every process in ``path`` and below, until none is listed.

        Repeats because a process may fork between our read and our kill; the
        pids are our own container processes, listed in our PID namespace.
        """
        deadline = time.monotonic() + timeout
        while True:
            pids = set(self.pids(path))
            pids.discard(os.getpid())
            if not pids:
                return
            _kill_pids(pids)
            if time.monotonic() >= deadline:
                log.warning("cgroup %s: processes %s still listed after SIGKILL", path, sorted(pids))
                return
            time.sleep(0.01)

    def remove(self, path: str, timeout: float = REMOVE_TIMEOUT) -> None:
        """Remove ``path`` and every cgroup under it; missing is fine.

        Raises ``OSError(EBUSY)`` if processes still hold a cgroup after ``timeout``.
        """
        rel = _check_relative(path)
        deadline = time.monotonic() + timeout
        for d in self._unique_dirs(rel):
            _rmdir_tree(d, deadline, plain=self.plain)


# ---------------------------------------------------------------- v1


def v1_mounts(mountinfo: str | None = None) -> dict[str, str]:
    """Controller -> mount point of every cgroup v1 hierarchy, from mountinfo.

    A line looks like ``35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup
    cgroup rw,memory``: the mount point is field 5 and the controllers are in
    the super options after the ``-`` separator. Co-mounted controllers
    (``cpu,cpuacct``) map to the same directory.
    """
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    found: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] != "cgroup":
            continue
        mount_point = fields[4].replace("\\040", " ")
        for opt in rfields[2].split(","):
            if opt in V1_CONTROLLERS:
                found.setdefault(opt, mount_point)
    return found


class V1Driver(CgroupDriver):
    """cgroup v1: one directory per controller hierarchy."""

    def __init__(self, mounts: dict[str, str] | None = None) -> None:
        self.mounts = dict(mounts) if mounts is not None else v1_mounts()
        missing = [c for c in ("cpu", "memory") if c not in self.mounts]
        if missing:
            raise OSError(errno.ENOENT, f"cgroup v1: no hierarchy mounted for {', '.join(missing)}")
        self.plain = fs_type(self.mounts["memory"]) != "cgroup"

    def __repr__(self) -> str:
        return f"V1Driver({self.mounts!r})"

    def spec(self) -> dict[str, Any]:
        return {"version": 1, "mounts": dict(self.mounts)}

    def paths(self, path: str) -> dict[str, str]:
        rel = _check_relative(path)
        return {c: os.path.join(m, rel) for c, m in self.mounts.items()}

    def create(self, path: str, limits: Limits | None = None) -> None:
        rel = _check_relative(path)
        for d in self._unique_dirs(rel):
            # No cpuset here: a new v1 cpuset cgroup starts with empty
            # cpuset.cpus/mems and refuses tasks until they are copied in.
            d.mkdir(parents=True, exist_ok=True)
        if limits is None:
            return
        dirs = self.paths(rel)
        if limits.memory_bytes is not None:
            self._set_memory(Path(dirs["memory"]), limits.memory_bytes)
        if limits.cpu_quota_millis is not None:
            cpu = Path(dirs["cpu"])
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US), plain=self.plain)
            _write(cpu / "cpu.cfs_quota_us", str(cpu_quota_us(limits.cpu_quota_millis)), plain=self.plain)
        if limits.cpu_request_millis is not None:
            _write(Path(dirs["cpu"]) / "cpu.shares", str(cpu_shares(limits.cpu_request_millis)), plain=self.plain)
        if limits.pids_max is not None:
            if "pids" not in dirs:
                raise OSError(errno.ENOENT, "cgroup v1: a pids limit was asked for but no pids hierarchy is mounted")
            _write(Path(dirs["pids"]) / "pids.max", str(limits.pids_max), plain=self.plain)

    def _set_memory(self, d: Path, limit: int) -> None:
        # memory.memsw.limit_in_bytes (memory+swap) must never be below
        # memory.limit_in_bytes: setting it equal forbids swap, like Docker
        # does for --memory without --memory-swap. Lowering: memory first.
        # Raising above the current memsw: the kernel says EINVAL, so then
        # memsw has to go first. The memsw file exists only with swap accounting.
        memsw = d / "memory.memsw.limit_in_bytes"
        try:
            _write(d / "memory.limit_in_bytes", str(limit), plain=self.plain)
        except OSError as e:
            if e.errno != errno.EINVAL or not memsw.exists():
                raise
            _write(memsw, str(limit), plain=self.plain)
            _write(d / "memory.limit_in_bytes", str(limit), plain=self.plain)
        if memsw.exists():
            _write(memsw, str(limit), plain=self.plain)

    def memory_limit(self, path: str) -> int | None:
        value = int(_read(Path(self.paths(path)["memory"]) / "memory.limit_in_bytes"))
        return None if value >= _V1_UNLIMITED else value

    def oom_evidence(self, path: str) -> OomEvidence:
        d = Path(self.paths(path)["memory"])
        return OomEvidence(events=d / "memory.oom_control", failcnt=d / "memory.failcnt")

    #: (controller, file) that ``stats`` reads; ``tasks`` only without a pids hierarchy.
    _STAT_FILES = (
        ("cpuacct", "cpuacct.usage"), ("cpuacct", "cpuacct.stat"), ("cpu", "cpu.stat"),
        ("cpu", "cpu.cfs_quota_us"), ("cpu", "cpu.cfs_period_us"), ("cpu", "cpu.shares"), ("cpu", "cgroup.procs"),
        ("memory", "memory.usage_in_bytes"), ("memory", "memory.stat"), ("memory", "memory.failcnt"),
        ("memory", "memory.oom_control"), ("memory", "memory.limit_in_bytes"), ("pids", "pids.current"),
    )

    def stat_files(self, path: str) -> list[str]:
        dirs = self.paths(path)
        files = [f"{dirs[c]}/{name}" for c, name in self._STAT_FILES if c in dirs]
        if "pids" not in dirs:
            files.append(f"{dirs['cpu']}/tasks")
        return files

    def stats(self, path: str) -> CgroupStats:
        """cAdvisor's v1 sources: cpuacct for CPU time, ``cpu.stat`` for CFS, the
        hierarchical ``total_*`` keys of ``memory.stat`` (plain keys on kernels
        without them), ``oom_kill`` of ``memory.oom_control`` (Linux 4.13+)."""
        dirs = self.paths(path)
        cpu, mem = dirs["cpu"], dirs["memory"]
        acct, pids = dirs.get("cpuacct"), dirs.get("pids")
        usage_ns = _opt_int(_read_opt(f"{acct}/cpuacct.usage")) if acct else None
        ticks = _keyed_bytes(_read_opt(f"{acct}/cpuacct.stat")) if acct else {}
        cfs = _keyed_bytes(_read_opt(f"{cpu}/cpu.stat"))
        quota = _opt_int(_read_opt(f"{cpu}/cpu.cfs_quota_us"))
        usage = _opt_int(_read_opt(f"{mem}/memory.usage_in_bytes"))
        mstat = _keyed_bytes(_read_opt(f"{mem}/memory.stat"), _V1_MEMORY_KEYS)
        limit = _opt_int(_read_opt(f"{mem}/memory.limit_in_bytes"))
        throttled_ns = cfs.get("throttled_time")
        threads = (_opt_int(_read_opt(f"{pids}/pids.current")) if pids
                   else _count_ids(_read_opt(f"{cpu}/tasks")))
        return CgroupStats(
            cpu_usage_seconds=None if usage_ns is None else usage_ns / 1e9,
            cpu_user_seconds=ticks["user"] / _USER_HZ if "user" in ticks else None,
            cpu_system_seconds=ticks["system"] / _USER_HZ if "system" in ticks else None,
            cfs_periods=cfs.get("nr_periods"),
            cfs_throttled_periods=cfs.get("nr_throttled"),
            cfs_throttled_seconds=None if throttled_ns is None else throttled_ns / 1e9,
            memory_usage_bytes=usage,
            memory_working_set_bytes=_working_set(usage, mstat.get("total_inactive_file",
                                                                   mstat.get("inactive_file"))),
            memory_rss_bytes=mstat.get("total_rss", mstat.get("rss")),
            memory_cache_bytes=mstat.get("total_cache", mstat.get("cache")),
            memory_failcnt=_opt_int(_read_opt(f"{mem}/memory.failcnt")),
            oom_kills=_keyed_bytes(_read_opt(f"{mem}/memory.oom_control")).get("oom_kill"),
            memory_limit_bytes=None if limit is None else (0 if limit >= _V1_UNLIMITED else limit),
            cpu_quota_us=None if quota is None else max(quota, 0),  # -1: no quota
            cpu_period_us=_opt_int(_read_opt(f"{cpu}/cpu.cfs_period_us")),
            cpu_shares=_opt_int(_read_opt(f"{cpu}/cpu.shares")),
            processes=_count_ids(_read_opt(f"{cpu}/cgroup.procs")),
            threads=threads,
        )


# ---------------------------------------------------------------- v2


class V2Driver(CgroupDriver):
    """cgroup v2: one unified directory per cgroup."""

    def __init__(self, root: str | os.PathLike[str] = CGROUP_MOUNT) -> None:
        self.root = Path(root)
        self.plain = fs_type(self.root) != "cgroup2"

    def __repr__(self) -> str:
        return f"V2Driver({str(self.root)!r})"

    def spec(self) -> dict[str, Any]:
        return {"version": 2, "root": str(self.root)}

    def paths(self, path: str) -> dict[str, str]:
        d = str(self.root / _check_relative(path))
        return {c: d for c in V2_CONTROLLERS}

    def available_controllers(self) -> set[str]:
        try:
            return set(_read(self.root / "cgroup.controllers").split())
        except FileNotFoundError:
            return set()

    def create(self, path: str, limits: Limits | None = None) -> None:
        rel = _check_relative(path)
        wanted = [c for c in V2_CONTROLLERS if c in self.available_controllers()]
        parent = self.root
        for part in rel.split("/"):
            # Controllers must be enabled in every ancestor's subtree_control
            # before the child gets the interface files. Gotcha: the
            # "no internal processes" rule makes this fail (EBUSY) on a
            # non-root cgroup that has processes of its own, so orch never puts
            # processes in the node or pod levels.
            self._enable(parent, wanted)
            parent = parent / part
            parent.mkdir(exist_ok=True)
        if limits is None:
            return
        d = parent
        if limits.memory_bytes is not None:
            _write(d / "memory.max", str(limits.memory_bytes), plain=self.plain)
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0", plain=self.plain)  # as v1 memsw == limit: no swap
        if limits.cpu_quota_millis is not None:
            _write(d / "cpu.max", f"{cpu_quota_us(limits.cpu_quota_millis)} {CPU_PERIOD_US}", plain=self.plain)
        if limits.cpu_request_millis is not None:
            _write(d / "cpu.weight", str(cpu_weight(limits.cpu_request_millis)), plain=self.plain)
        if limits.pids_max is not None:
            _write(d / "pids.max", str(limits.pids_max), plain=self.plain)

    def _enable(self, d: Path, controllers: list[str]) -> None:
        control = d / "cgroup.subtree_control"
        try:
            enabled = set(control.read_text().split())
        except FileNotFoundError:
            enabled = set()
        missing = [c for c in controllers if c not in enabled]
        if missing:
            _write(control, " ".join(f"+{c}" for c in missing), plain=self.plain)

    def memory_limit(self, path: str) -> int | None:
        value = _read(self.root / _check_relative(path) / "memory.max").strip()
        return None if value == "max" else int(value)

    def oom_evidence(self, path: str) -> OomEvidence:
        return OomEvidence(events=self.root / _check_relative(path) / "memory.events")

    #: The files ``stats`` reads; ``cgroup.threads`` only without pids.current.
    _STAT_FILES = ("cpu.stat", "cpu.max", "cpu.weight", "cgroup.procs", "memory.current", "memory.stat",
                   "memory.events", "memory.max", "pids.current")

    def stat_files(self, path: str) -> list[str]:
        d = f"{self.root}/{_check_relative(path)}"
        files = [f"{d}/{name}" for name in self._STAT_FILES]
        if not os.path.exists(f"{d}/pids.current"):
            files.append(f"{d}/cgroup.threads")
        return files

    def stats(self, path: str) -> CgroupStats:
        """cAdvisor's v2 sources: ``cpu.stat`` (µs), ``memory.current``, ``anon``/``file``/
        ``inactive_file`` of ``memory.stat``, ``oom_kill`` of ``memory.events``, and the
        spec from ``cpu.max`` (``max`` quota: none) and ``cpu.weight`` (mapped back to shares)."""
        d = f"{self.root}/{_check_relative(path)}"
        cpu = _keyed_bytes(_read_opt(f"{d}/cpu.stat"))
        quota, period = self._cpu_max(_read_opt(f"{d}/cpu.max"))
        weight = _opt_int(_read_opt(f"{d}/cpu.weight"))
        usage = _opt_int(_read_opt(f"{d}/memory.current"))
        mstat = _keyed_bytes(_read_opt(f"{d}/memory.stat"), _V2_MEMORY_KEYS)
        limit = _read_opt(f"{d}/memory.max")
        threads = _opt_int(_read_opt(f"{d}/pids.current"))
        if threads is None:
            threads = _count_ids(_read_opt(f"{d}/cgroup.threads"))

        def seconds(key: str) -> float | None:
            return cpu[key] / 1e6 if key in cpu else None

        return CgroupStats(
            cpu_usage_seconds=seconds("usage_usec"),
            cpu_user_seconds=seconds("user_usec"),
            cpu_system_seconds=seconds("system_usec"),
            cfs_periods=cpu.get("nr_periods"),
            cfs_throttled_periods=cpu.get("nr_throttled"),
            cfs_throttled_seconds=seconds("throttled_usec"),
            memory_usage_bytes=usage,
            memory_working_set_bytes=_working_set(usage, mstat.get("inactive_file")),
            memory_rss_bytes=mstat.get("anon"),
            memory_cache_bytes=mstat.get("file"),
            # v2 has no failcnt; cAdvisor (runc's fs2) leaves it 0 (memory.events "max" is the nearest kin).
            memory_failcnt=None if usage is None else 0,
            oom_kills=_keyed_bytes(_read_opt(f"{d}/memory.events")).get("oom_kill"),
            memory_limit_bytes=None if limit is None else (0 if limit.strip() == b"max" else _opt_int(limit)),
            cpu_quota_us=quota,
            cpu_period_us=period,
            cpu_shares=None if weight is None or not 1 <= weight <= 10_000 else cpu_weight_to_shares(weight),
            processes=_count_ids(_read_opt(f"{d}/cgroup.procs")),
            threads=threads,
        )

    @staticmethod
    def _cpu_max(data: bytes | None) -> tuple[int | None, int | None]:
        """``cpu.max`` ("$QUOTA $PERIOD", quota ``max`` = none) -> (quota µs, 0 if none; period µs)."""
        if data is None:
            return None, None
        fields = data.split()
        if len(fields) != 2:
            return None, None
        quota = 0 if fields[0] == b"max" else _opt_int(fields[0])
        return quota, _opt_int(fields[1])

    def kill_file(self, path: str) -> Path | None:
        kill_file = self.root / _check_relative(path) / "cgroup.kill"
        return None if self.plain or not kill_file.exists() else kill_file

    def kill_all(self, path: str, timeout: float = 5.0) -> None:
        # cgroup.kill (Linux 5.14) kills the whole subtree atomically, racing no
        # fork; the pid loop in the base class mops up on older kernels.
        kill_file = self.kill_file(path)
        if kill_file is not None:
            try:
                _write(kill_file, "1")
            except OSError as e:
                if e.errno != errno.ENOENT:  # the cgroup vanished: nothing to kill
                    raise
        super().kill_all(path, timeout)


# ---------------------------------------------------------------- choosing


def detect_driver(root: str | os.PathLike[str] = CGROUP_MOUNT) -> CgroupDriver:
    """v2 when ``root`` is a unified hierarchy offering ``memory``, else v1."""
    controllers = Path(root) / "cgroup.controllers"
    try:
        if "memory" in controllers.read_text().split():
            return V2Driver(root)
    except OSError:
        pass
    return V1Driver()


def driver_from_spec(spec: dict[str, Any] | None) -> CgroupDriver:
    """Rebuild a driver from ``CgroupDriver.spec()``; ``None`` detects one."""
    if spec is None:
        return detect_driver()
    version = spec.get("version")
    if version == 1:
        return V1Driver(spec.get("mounts"))
    if version == 2:
        return V2Driver(spec.get("root", CGROUP_MOUNT))
    raise ValueError(f"unknown cgroup driver spec: {spec!r}")
