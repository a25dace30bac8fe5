"""Container logs: the CRI log format the shim writes, rotated by size, and a reader that follows it.

**Writing (in the shim).** The container's stdout and stderr are two pipes; the
shim polls both and writes every line as kubelet's CRI log format::

    2026-11-27T19:48:12.123456789Z stdout F hello

that is ``<timestamp> <stream> <tag> <content>\\n``: the time the shim read the
line (RFC3339, nanoseconds, UTC), ``stdout`` or ``stderr``, ``F`` for a full
line or ``P`` for part of one, and the content without its newline. A line
longer than 16 KiB is cut into ``P`` pieces ending with an ``F`` one (as
containerd does); output that ends without a newline (the stream closed) is
written as ``P``. A reader joins the pieces back together.

**Rotation**, like kubelet's ``containerLogMaxSize``/``containerLogMaxFiles``:
before a write would take ``container.log`` past ``max_size`` bytes, it is
renamed ``container.log.1`` (``.1`` to ``.2`` and so on first; the oldest of
``max_files - 1`` rotated files is deleted) and a new ``container.log`` is
begun. Files always hold whole CRI lines. The limits come from the shim's
environment (``ORCH_CONTAINER_LOG_MAX_SIZE``, ``ORCH_CONTAINER_LOG_MAX_FILES``),
which the agent sets from its flags; the shim inherits it at start.

**Never blocking the container.** One thread polls both pipes and the
container's pidfd, so a quiet stream never holds up a busy one; the pipes are
enlarged to 1 MiB to absorb bursts while the disk is slow. A write that fails
(disk full) drops those lines and is reported to ``shim.log``; the pipes keep
being drained, so the container never blocks on a full pipe because of it.

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
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_SIZE",
    "MAX_LINE",
    "LineSplitter",
    "LogLine",
    "LogPolicy",
    "RotatingLog",
    "StdioPipes",
    "format_entry",
    "format_timestamp",
    "log_files",
    "parse_entry",
    "parse_timestamp",
    "pump",
    "read_logs",
    "supervise",
]

log = logging.getLogger(__name__)

LOG_FILE = "container.log"  # shim.LOG_FILE; repeated here so this module imports nothing of the shim
EXIT_FILE = "exit.json"  # shim.EXIT_FILE: written after the shim's last log write

DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 5
#: Longest content of one CRI entry; longer lines are split (containerd's 16 KiB buffer).
MAX_LINE = 16 * 1024
#: Bytes read from one pipe per poll round: bounds the time spent on one stream.
READ_SIZE = 64 * 1024
#: Pipe capacity asked for (F_SETPIPE_SZ); the default 64 KiB fills within one slow write.
PIPE_SIZE = 1024 * 1024
#: After the container's PID 1 exits, how long to wait for the pipes' EOF. The
#: kernel kills the rest of the PID namespace at once, so EOF normally follows
#: at once; this only bounds a writer that escaped it.
DRAIN_TIMEOUT = 2.0

ENV_MAX_SIZE = "ORCH_CONTAINER_LOG_MAX_SIZE"
ENV_MAX_FILES = "ORCH_CONTAINER_LOG_MAX_FILES"

STDOUT, STDERR = "stdout", "stderr"
FULL, PARTIAL = "F", "P"


# ---------------------------------------------------------------- format


def format_timestamp(ns: int) -> str:
    """RFC3339 with nine fractional digits in UTC, fixed width so that text order is time order."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


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


def format_entry(timestamp: str, stream: str, tag: str, content: bytes) -> bytes:
    return b"%s %s %s %s\n" % (timestamp.encode(), stream.encode(), tag.encode(), content)


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


class LineSplitter:
    """Cuts one stream's bytes into CRI entries: ``(tag, content)`` pairs."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[str, bytes]] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start, start + MAX_LINE + 1)
            if nl != -1:
                out.append((FULL, bytes(buf[start:nl])))
                start = nl + 1
            elif len(buf) - start >= MAX_LINE:
                out.append((PARTIAL, bytes(buf[start:start + MAX_LINE])))
                start += MAX_LINE
            else:
                break
        del buf[:start]
        return out

    def flush(self) -> list[tuple[str, bytes]]:
        """What is left without a newline, as a partial entry (the stream ended)."""
        if not self._buf:
            return []
        out = [(PARTIAL, bytes(self._buf))]
        self._buf.clear()
        return out


class RotatingLog:
    """``container.log`` and its rotated predecessors; written only in whole CRI lines."""

    #: Seconds between two reports of failing writes in shim.log.
    REPORT_EVERY = 30.0

    def __init__(self, path: Path, policy: LogPolicy | None = None) -> None:
        self.path = Path(path)
        self.policy = policy or LogPolicy()
        self.fd = -1
        self.size = 0
        self.dropped = 0
        self._reported_at = float("-inf")
        self._open()

    def _open(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self.size = os.fstat(self.fd).st_size
            return True
        except OSError as e:
            self.fd = -1
            self._failed(f"open {self.path}: {e.strerror}")
            return False

    def rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def rotate(self) -> None:
        """container.log -> .1 -> .2 ...; the oldest beyond ``max_files - 1`` is deleted; a new file is begun."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        keep = self.policy.max_files - 1
        try:
            self.rotated(keep).unlink(missing_ok=True)
            for i in range(keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.rotated(i), self.rotated(i + 1))
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path, self.rotated(1))
        except OSError as e:
            self._failed(f"rotate {self.path}: {e.strerror}")
        self._open()

    def write_lines(self, lines: list[bytes]) -> None:
        """Append whole CRI lines, rotating first where the next line would pass ``max_size``."""
        batch: list[bytes] = []
        batch_size = 0
        for line in lines:
            if batch_size + len(line) + self.size > self.policy.max_size and batch_size + self.size > 0:
                self._write(b"".join(batch))
                batch, batch_size = [], 0
                self.rotate()
            batch.append(line)
            batch_size += len(line)
        if batch:
            self._write(b"".join(batch))

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self.fd < 0 and not self._open():
            self.dropped += len(data)
            return
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                self.size += n
                view = view[n:]
        except OSError as e:
            self.dropped += len(view)
            self._failed(f"write {self.path}: {e.strerror}")

    def _failed(self, what: str) -> None:
        # Never raise: a shim that crashed on a full disk would lose the exit status,
        # and the container would block on its full pipes.
        now = time.monotonic()
        if now - self._reported_at >= self.REPORT_EVERY:
            self._reported_at = now
            log.warning("container log: %s; %d bytes of output dropped so far", what, self.dropped)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.dropped:
            log.warning("container log %s: %d bytes of output were dropped", self.path, self.dropped)


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


def pump(streams: dict[int, str], out: RotatingLog, *, pidfd: int | None = None,
         clock: Callable[[], int] = time.time_ns, drain_timeout: float = DRAIN_TIMEOUT) -> None:
    """Copy the pipes ``streams`` (fd -> stream name) into ``out`` as CRI lines until all are at EOF.

    With ``pidfd``, stop waiting for EOF ``drain_timeout`` seconds after that
    process has exited. Closes the pipe fds. Single-threaded: one poll over
    every pipe, reading each that is ready, so no stream waits on another.
    """
    splitters = {fd: LineSplitter() for fd in streams}
    poller = select.poll()
    for fd in streams:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    open_fds = set(streams)
    exited_at: float | None = None

    def finish(fd: int, lines: list[bytes], ts: str) -> None:
        for tag, content in splitters[fd].flush():
            lines.append(format_entry(ts, streams[fd], tag, content))
        poller.unregister(fd)
        open_fds.discard(fd)
        os.close(fd)

    try:
        while open_fds:
            timeout_ms: float | None = None
            if exited_at is not None:
                left = exited_at + drain_timeout - time.monotonic()
                if left <= 0:
                    break
                timeout_ms = left * 1000
            try:
                events = poller.poll(timeout_ms)
            except InterruptedError:
                continue
            lines: list[bytes] = []
            ts = format_timestamp(clock())
            for fd, _ev in events:
                if fd == pidfd:
                    exited_at = time.monotonic()
                    poller.unregister(pidfd)
                    continue
                if fd not in open_fds:
                    continue
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError as e:
                    log.warning("container %s pipe: read failed: %s", streams[fd], e)
                    data = b""
                if not data:
                    finish(fd, lines, ts)
                    continue
                for tag, content in splitters[fd].feed(data):
                    lines.append(format_entry(ts, streams[fd], tag, content))
            if lines:
                out.write_lines(lines)
    finally:
        lines = []
        ts = format_timestamp(clock())
        for fd in list(open_fds):
            finish(fd, lines, ts)
        if lines:
            out.write_lines(lines)


def supervise(pid: int, pipes: StdioPipes, log_path: Path, policy: LogPolicy | None = None) -> int:
    """In the shim: log the container's output until it has exited and its pipes are drained.

    Returns the wait status of ``pid`` (as ``os.waitpid``). The exit record is
    written by the caller afterwards, so a reader that sees ``exit.json`` knows
    the log is complete.
    """
    try:
        policy = policy or LogPolicy.from_env()
    except ValueError:
        policy = LogPolicy()
    out = RotatingLog(log_path, policy)
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except OSError:
        pidfd = None  # gone already (reaped below) or an old kernel: EOF alone ends the pump
    try:
        pump(pipes.readers(), out, pidfd=pidfd)
    finally:
        out.close()
        if pidfd is not None:
            os.close(pidfd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return status
        except InterruptedError:
            continue


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

