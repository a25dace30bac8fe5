"""Builds ``orch-monitor`` (``monitor.c``), the small C process that supervises a running container.

Why C: the supervising process lives as long as its container, one per
container. Even forked copy-on-write from the fork server, a Python shim costs
about 3 MiB of proportional set size (its heap pages get written); a
100-container node would spend 300 MiB on supervisors alone, and a Python
process started to record an exit would add a hundred milliseconds to every
exit. The Python shim still does the setup (namespaces, rootfs, security) —
the part worth reading and testing in Python — and then execs the monitor in
its own place (same pid, still the container's parent), as conmon does for
CRI-O. What the monitor does is in ``monitor.c``'s opening comment.

The binary is compiled from the source next to this file with the system's C
compiler, once per version of the source: its name carries the source's hash,
so a changed ``monitor.c`` is rebuilt and monitors already running keep their
binary. ``python -m agent.runtime.monitor`` builds it ahead of time (``dev.sh``
does) and prints its path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from apimachinery.errors import RuntimeError_

__all__ = ["SOURCE", "binary_path", "ensure_built"]

SOURCE = Path(__file__).resolve().with_name("monitor.c")
#: Where the binaries go: beside the source, like a compiled extension module.
BUILD_DIR = SOURCE.parent / "bin"
CFLAGS = ("-O2", "-Wall", "-std=gnu11")

_lock = threading.Lock()


def binary_path() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    return BUILD_DIR / f"orch-monitor-{digest}"


def ensure_built() -> Path:
    """The monitor binary for the current source, compiled first if needed."""
    path = binary_path()
    if path.is_file():
        return path
    with _lock:
        if path.is_file():
            return path
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            raise RuntimeError_("the container monitor (agent/runtime/monitor.c) needs a C compiler to build: "
                                "install one (Debian: apt-get install gcc), or set CC")
        BUILD_DIR.mkdir(exist_ok=True)
        # Compiled under a temporary name and renamed: a concurrent builder (another
        # agent on this machine) or a reader never sees half a binary.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            done = subprocess.run([compiler, *CFLAGS, "-o", str(tmp), str(SOURCE)],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError_(f"building the container monitor with {compiler} failed:\n{done.stderr.strip()}")
            os.replace(tmp, path)
        except OSError as e:
            raise RuntimeError_(f"building the container monitor with {compiler}: {e}") from e
        finally:
            tmp.unlink(missing_ok=True)
    return path


def main() -> int:
    try:
        print(ensure_built())
    except RuntimeError_ as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
