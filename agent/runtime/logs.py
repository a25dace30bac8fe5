"""Container logs: the CRI log format orch-monitor writes, its rotation policy, and a reader that follows it.

**Writing** is done by ``orch-monitor`` (``monitor.c``), the container's
supervisor while it runs; this docstring is the contract it implements. It
polls the container's stdout and stderr pipes and writes every line as
kubelet's CRI log format::

    2026-11-27T19:48:12.123456789Z stdout F hello

that is ``<timestamp> <stream> <tag> <content>\\n``: the time the line was read
(RFC3339, nanoseconds, UTC), ``stdout`` or ``stderr``, ``F`` for a full line or
``P`` for part of one, and the content without its newline. A line longer than
16 KiB (``MAX_LINE``) is cut into ``P`` pieces ending with an ``F`` one (as
containerd does); output that ends without a newline (the stream closed) is
written as ``P``. A reader joins the pieces back together.

**Rotation**, like kubelet's ``containerLogMaxSize``/``containerLogMaxFiles``
(``LogPolicy``): before a write would take ``container.log`` past ``max_size``
bytes, it is renamed ``container.log.1`` (``.1`` to ``.2`` and so on first; the
oldest of ``max_files - 1`` rotated files is deleted) and a new
``container.log`` is begun. Files always hold whole CRI lines. The limits come
from the shim's environment (``ORCH_CONTAINER_LOG_MAX_SIZE``,
``ORCH_CONTAINER_LOG_MAX_FILES``), which the agent sets from its flags.

**Never blocking the container.** One poll over both pipes and the
container's pidfd, so a quiet stream never holds up a busy one; the pipes are
enlarged to 1 MiB (``StdioPipes``) to absorb bursts while the disk is slow. A
write that fails (disk full) drops those lines and is reported to
``shim.log``; the pipes keep being drained.

**Reading** (``read_logs``): every file oldest first, optionally only the last
``tail`` lines or those of the last ``since_seconds``; with ``follow``, new
lines as they are written, across rotations (a rotated file is finished
before the files written after it), until the container has exited
(``exit.json``, which the shim writes after its last log write) and everything
is read.

Standard library only: the shim imports this module (see ``shim.py``).
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_SIZE",
    "MAX_LINE",
    "LogLine",
    "LogPolicy",
    "StdioPipes",
    "log_files",
    "parse_entry",
    "parse_timestamp",
    "read_logs",
]

log = logging.getLogger(__name__)

LOG_FILE = "container.log"  # shim.LOG_FILE; repeated here so this module imports nothing of the shim
EXIT_FILE = "exit.json"  # shim.EXIT_FILE: written after the shim's last log write

DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 5
#: Longest content of one CRI entry; longer lines are split (containerd's 16 KiB buffer).
#: monitor.c's MAX_LINE.
MAX_LINE = 16 * 1024
#: Pipe capacity asked for (F_SETPIPE_SZ); the default 64 KiB fills within one slow write.
PIPE_SIZE = 1024 * 1024

ENV_MAX_SIZE = "ORCH_CONTAINER_LOG_MAX_SIZE"
ENV_MAX_FILES = "ORCH_CONTAINER_LOG_MAX_FILES"

STDOUT, STDERR = "stdout", "stderr"
FULL, PARTIAL = "F", "P"


# ---------------------------------------------------------------- format


_TS = re.compile(rb"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def parse_timestamp(text: str | bytes) -> int:
    """Nanoseconds since the epoch of an RFC3339(Nano) timestamp; ``ValueError`` when it is not one."""
    raw = text.encode() if isinstance(text, str) else text
    m = _TS.match(raw)
    if m is None:
        raise ValueError(f"not an RFC3339 timestamp: {raw[:40]!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    secs = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = m.group(8)
    if zone != b"Z":
        sign = 1 if zone[:1] == b"+" else -1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    frac = (m.group(7) or b"").ljust(9, b"0")
    return secs * 1_000_000_000 + int(frac or b"0")


class Entry(NamedTuple):
    """One parsed CRI log line."""

    timestamp: str
    stream: str
    tag: str  # F or P
    content: bytes  # without the newline


def parse_entry(line: bytes) -> Entry | None:
    """Parse one CRI log line (with or without its newline); None when it is malformed."""
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return None
    ts, stream, tag = parts[0], parts[1], parts[2]
    if stream not in (b"stdout", b"stderr") or not _TS.match(ts):
        return None
    # Tags may carry more than F/P after a colon in later CRI versions ("F:x"); the first letter counts.
    kind = tag.split(b":", 1)[0]
    if kind not in (b"F", b"P"):
        return None
    return Entry(ts.decode(), stream.decode(), kind.decode(), parts[3] if len(parts) == 4 else b"")


# ---------------------------------------------------------------- writing


@dataclass(frozen=True, slots=True)
class LogPolicy:
    """When to rotate: ``max_size`` bytes per file, ``max_files`` files in all (the current one included)."""

    max_size: int = DEFAULT_MAX_SIZE
    max_files: int = DEFAULT_MAX_FILES

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"container log max size must be at least 1 byte, not {self.max_size}")
        if self.max_files < 2:
            # As kubelet: with one file, rotating would delete the log being read.
            raise ValueError(f"container log max files must be at least 2, not {self.max_files}")

    def to_env(self) -> dict[str, str]:
        return {ENV_MAX_SIZE: str(self.max_size), ENV_MAX_FILES: str(self.max_files)}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LogPolicy:
        """The policy in ``env`` (default ``os.environ``); a bad value falls back to the default, logged."""
        env = os.environ if env is None else env
        values = {"max_size": DEFAULT_MAX_SIZE, "max_files": DEFAULT_MAX_FILES}
        for key, name in ((ENV_MAX_SIZE, "max_size"), (ENV_MAX_FILES, "max_files")):
            text = env.get(key)
            if not text:
                continue
            try:
                values[name] = int(text)
                cls(**values)
            except ValueError as e:
                log.warning("%s=%r: %s; using %d", key, text, e, DEFAULT_MAX_SIZE if name == "max_size"
                            else DEFAULT_MAX_FILES)
                values[name] = DEFAULT_MAX_SIZE if name == "max_size" else DEFAULT_MAX_FILES
        return cls(**values)


@dataclass(frozen=True, slots=True)
class StdioPipes:
    """The container's stdout and stderr pipes; all four ends close-on-exec (the child dup2s its ends)."""

    stdout_r: int
    stdout_w: int
    stderr_r: int
    stderr_w: int

    @classmethod
    def open(cls) -> StdioPipes:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            with contextlib.suppress(OSError):  # EPERM above pipe-max-size for non-root: keep the default
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        return cls(out_r, out_w, err_r, err_w)

    def close_child_ends(self) -> None:
        """In the shim after the fork: only the container may hold the write ends, or EOF never comes."""
        os.close(self.stdout_w)
        os.close(self.stderr_w)

    def readers(self) -> dict[int, str]:
        return {self.stdout_r: STDOUT, self.stderr_r: STDERR}


# ---------------------------------------------------------------- reading


class LogLine(NamedTuple):
    """One entry as a reader hands it out.

    ``text`` is what to print: the content with its newline when the entry ends
    a line (none for a partial piece), prefixed with ``timestamp`` and a space
    at the start of each line when timestamps were asked for (as kubelet does).
    """

    stream: str
    timestamp: str
    text: bytes


def log_files(container_dir: Path) -> list[Path]:
    """The log files of a container, oldest first: ``container.log.N`` ... ``.1``, ``container.log``."""
    d = Path(container_dir)
    rotated: list[tuple[int, Path]] = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(d):
            head, _, suffix = name.rpartition(".")
            if head == LOG_FILE and suffix.isdigit():
                rotated.append((int(suffix), d / name))
    files = [p for _, p in sorted(rotated, reverse=True)]
    if (d / LOG_FILE).exists():
        files.append(d / LOG_FILE)
    return files


class _Cursor:
    """An open log file read forward in whole lines; an unfinished last line waits for its end."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.inode = os.fstat(fd).st_ino
        self._rest = b""

    @classmethod
    def open(cls, path: Path) -> _Cursor | None:
        try:
            return cls(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            return None

    def lines(self) -> list[bytes]:
        chunks = [self._rest]
        while chunk := os.read(self.fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        end = data.rfind(b"\n") + 1
        self._rest = data[end:]
        return data[:end].splitlines(keepends=True)

    def close(self) -> None:
        os.close(self.fd)


def _start_of_last_lines(fd: int, n: int) -> tuple[int, int]:
    """(offset where the last ``n`` complete lines of the file start, how many there are, at most n)."""
    size = os.fstat(fd).st_size
    pos = size
    newlines = 0
    while pos > 0:
        step = min(64 * 1024, pos)
        pos -= step
        chunk = os.pread(fd, step, pos)
        i = len(chunk)
        while (j := chunk.rfind(b"\n", 0, i)) != -1:
            newlines += 1
            # The (n+1)-th newline from the end ends the line before the last n.
            if newlines == n + 1:
                return pos + j + 1, n
            i = j
    return 0, newlines


def _exited(container_dir: Path) -> bool:
    return (container_dir / EXIT_FILE).exists() or not container_dir.exists()


def _rotated_newer_than(container_dir: Path, inode: int) -> list[Path]:
    """Rotated files written after the one with ``inode``, oldest first (all of them if it is gone)."""
    files = [p for p in log_files(container_dir) if p.name != LOG_FILE]
    for i, p in enumerate(files):
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_ino == inode:
                return files[i + 1:]
    return files


def read_logs(container_dir: str | os.PathLike[str], *, tail: int | None = None,
              since_seconds: float | None = None, timestamps: bool = False, follow: bool = False,
              stop: threading.Event | None = None, poll_interval: float = 0.1) -> Iterator[LogLine]:
    """The container's log entries, oldest first; see the module docstring.

    ``tail``: only the last N lines (N entries) of the history. ``since_seconds``:
    only entries written since then. ``follow``: keep going with new entries until
    the container has exited and everything is read, or until ``stop`` is set.
    Blocks while following: call from a thread.
    """
    d = Path(container_dir)
    since_ns = time.time_ns() - int(since_seconds * 1e9) if since_seconds is not None else None
    at_line_start: dict[str, bool] = {}

    def entry(raw: bytes) -> LogLine | None:
        e = parse_entry(raw)
        if e is None:
            return None
        starts = at_line_start.get(e.stream, True)
        at_line_start[e.stream] = e.tag == FULL
        if since_ns is not None and parse_timestamp(e.timestamp) < since_ns:
            return None
        text = e.content + b"\n" if e.tag == FULL else e.content
        if timestamps and starts:
            text = e.timestamp.encode() + b" " + text
        return LogLine(e.stream, e.timestamp, text)

    # Open every file first: a rotation while we read cannot then pull one away.
    opened: list[tuple[Path, int]] = []
    cursor: _Cursor | None = None
    try:
        for p in log_files(d):
            with contextlib.suppress(FileNotFoundError):
                opened.append((p, os.open(p, os.O_RDONLY | os.O_CLOEXEC)))
        start, offset = 0, 0
        if tail is not None:
            need = max(0, tail)
            start = len(opened) - 1 if opened else 0
            for i in range(len(opened) - 1, -1, -1):
                offset, found = _start_of_last_lines(opened[i][1], need)
                start = i
                if found == need:
                    break
                need -= found
        for i, (p, fd) in enumerate(opened):
            if i < start:
                continue
            if i == start:
                os.lseek(fd, offset, os.SEEK_SET)
            c = _Cursor(fd)
            opened[i] = (p, -1)
            if p.name == LOG_FILE:
                cursor = c
            try:
                for raw in c.lines():
                    if (line := entry(raw)) is not None:
                        yield line
            finally:
                if c is not cursor:
                    c.close()
        if not follow:
            return

        path = d / LOG_FILE
        while True:
            exited = _exited(d)  # read first: exit.json is written after the last log write
            progressed = False
            if cursor is None:
                cursor = _Cursor.open(path)
            if cursor is not None:
                for raw in cursor.lines():
                    progressed = True
                    if (line := entry(raw)) is not None:
                        yield line
                try:
                    rotated = os.stat(path).st_ino != cursor.inode
                except FileNotFoundError:
                    rotated = True
                if rotated:
                    # The writer finished this file before renaming it: read its end,
                    # then every file rotated after it, then the new container.log.
                    for raw in cursor.lines():
                        if (line := entry(raw)) is not None:
                            yield line
                    newer = _rotated_newer_than(d, cursor.inode)
                    cursor.close()
                    cursor = None
                    for p in newer:
                        rotated_file = _Cursor.open(p)
                        if rotated_file is None:
                            continue
                        try:
                            for raw in rotated_file.lines():
                                if (line := entry(raw)) is not None:
                                    yield line
                        finally:
                            rotated_file.close()
                    continue
            if progressed:
                continue
            if exited:
                return
            if stop is not None:
                if stop.wait(poll_interval):
                    return
            else:
                time.sleep(poll_interval)
    finally:
        for _, fd in opened:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if cursor is not None:
            cursor.close()

