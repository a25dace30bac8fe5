"""The Cluster API's audit log: who asked for what, whether it was allowed, and how it ended.

One JSON object per line, like kube-apiserver's log backend (``--audit-log-path``),
so ``jq`` and log shippers read it as they are. The fields are listed in
docs/rbac.md; ``scheduler.auth`` decides which calls are recorded (every mutating
call, every refused one, reads only when asked) and builds the records; this module
only writes them.

Writing must not hold up the event loop: ``AuditLog.write`` encodes the record and
puts the line on a queue; a thread of its own appends what is queued with one
``os.write`` on a descriptor opened ``O_APPEND``, so a line is never torn or
interleaved with another writer's (a second scheduler on the same file: the kernel
places each append at the end). A record is never dropped: when the thread falls
``MAX_QUEUED`` records behind (a disk that stalls), ``write`` waits for room — the
same choice as kube's "blocking" mode, which trades latency for a complete log.

Rotation (optional, ``max_bytes``): when the file reaches the size, it is renamed
``<path>.1`` (``.1`` to ``.2`` and so on, keeping ``max_backups``) and a new one is
started. Only one process may rotate a file: give every scheduler its own path.

Gotchas:

* Records reach the file shortly after ``write`` returns, not at once; ``flush``
  waits until everything written so far is in the file (tests and shutdown).
* A failed write (disk full) is logged, counted in ``errors`` and the record is
  lost: refusing every call because the audit disk is full would turn a full disk
  into an outage of the API. kube-apiserver's log backend makes the same choice.
* ``json.dumps`` with its default ``ensure_ascii`` escapes every control character
  and everything outside ASCII: a name or a message from a caller can neither
  break a line nor put terminal escapes into the file.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Records the writer thread may fall behind before ``write`` waits.
MAX_QUEUED = 10_000
#: Records joined into one ``os.write``.
MAX_BATCH = 512
DEFAULT_MAX_BACKUPS = 10
#: ``--audit-log-path -``: the scheduler's standard output.
STDOUT = "-"

_STOP = object()


class AuditLog:
    """Appends JSON lines to ``path`` (``-``: standard output) from a thread of its own."""

    def __init__(self, path: str | Path, *, max_bytes: int = 0, max_backups: int = DEFAULT_MAX_BACKUPS) -> None:
        self.path = str(path)
        self.max_bytes = max_bytes if self.path != STDOUT else 0
        self.max_backups = max(0, max_backups)
        self.errors = 0
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size if self.path != STDOUT else 0
        self._queue: queue.Queue[object] = queue.Queue(MAX_QUEUED)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        self._thread.start()

    def _open(self) -> int:
        """The log's descriptor; OSError (with the path in it) when it cannot be opened.

        0600: the log says who did what to which object, and quotes refused requests.
        """
        if self.path == STDOUT:
            return os.dup(sys.stdout.fileno())
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    # --- the event loop's side: cheap

    def write(self, record: Mapping[str, Any]) -> None:
        """Queue one record (it must be JSON-serialisable); never blocks unless the
        writer is ``MAX_QUEUED`` records behind."""
        if self._closed:
            log.error("audit record after the audit log was closed, not written: %s", record.get("method"))
            return
        line = json.dumps(record, separators=(",", ":")) + "\n"
        self._queue.put(line)

    def flush(self) -> None:
        """Wait until every record written so far is in the file."""
        if not self._closed:
            self._queue.join()

    def close(self) -> None:
        """Write what is queued, stop the thread and close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        os.close(self._fd)

    # --- the writer thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[str] = []
            stop = item is _STOP
            if not stop:
                batch.append(item)  # type: ignore[arg-type]
            taken = 1
            while not stop and len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                taken += 1
                if more is _STOP:
                    stop = True
                else:
                    batch.append(more)  # type: ignore[arg-type]
            if batch:
                self._append("".join(batch).encode("utf-8"))
            for _ in range(taken):
                self._queue.task_done()
            if stop:
                return

    def _append(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._size += len(data)
        except OSError as e:
            self.errors += 1
            log.error("audit log %s: cannot write %d bytes: %s (records lost: %d so far)", self.path, len(data),
                      e.strerror or e, self.errors)
            return
        if self.max_bytes and self._size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        """``path`` becomes ``path.1`` (the older ones shift up; past ``max_backups`` they go)."""
        try:
            if self.max_backups == 0:
                os.truncate(self.path, 0)
            else:
                for n in range(self.max_backups - 1, 0, -1):
                    older = f"{self.path}.{n}"
                    if os.path.exists(older):
                        os.replace(older, f"{self.path}.{n + 1}")
                os.replace(self.path, f"{self.path}.1")
            fd = self._open()
        except OSError as e:
            self.errors += 1
            log.error("audit log %s: cannot rotate: %s; writing on to the same file", self.path, e.strerror or e)
            return
        os.close(self._fd)
        self._fd = fd
        self._size = os.fstat(fd).st_size
