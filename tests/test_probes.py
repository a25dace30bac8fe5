"""Probes: the verdict logic (pure) and the real checks against loopback servers and a
network namespace this test creates."""

from __future__ import annotations

import contextlib
import ctypes
import http.server
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.probes import ContainerProbes, Kind, ProbeTracker, Result, run_check


def test_thresholds_and_initial_delay() -> None:
    t = ProbeTracker({"initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 3, "successThreshold": 2},
                     started_at=100.0)
    assert not t.due(104.9) and t.due(105.0)
    assert t.record(Result.FAILURE, 105) is None
    assert not t.due(106.9) and t.due(107.0)
    assert t.record(Result.FAILURE, 107) is None
    assert t.record(Result.SUCCESS, 109) is None  # resets the failures; one success of two
    assert t.record(Result.SUCCESS, 111) is True
    for when in (113, 115):
        assert t.record(Result.FAILURE, when) is True  # still passing until the third failure
    assert t.record(Result.FAILURE, 117) is False


def test_kubernetes_defaults() -> None:
    t = ProbeTracker({"exec": {"command": ["true"]}}, started_at=0)
    assert (t.period, t.timeout) == (10.0, 1.0)
    assert t.due(0) and t.record(Result.SUCCESS, 0) is True
    assert not t.due(9.9) and t.due(10)
    assert [t.record(Result.FAILURE, n) for n in (10, 20, 30)] == [True, True, False]


def test_startup_holds_back_liveness_and_readiness_then_failures_restart() -> None:
    spec = {"startupProbe": {"exec": {"command": ["x"]}, "failureThreshold": 2, "periodSeconds": 1},
            "livenessProbe": {"exec": {"command": ["x"]}, "periodSeconds": 1, "failureThreshold": 1},
            "readinessProbe": {"exec": {"command": ["x"]}, "periodSeconds": 1}}
    p = ContainerProbes.for_container(spec, started_at=0)
    assert [k for k, _ in p.due(0)] == [Kind.STARTUP]
    assert not p.started and not p.ready
    p.record(Kind.STARTUP, Result.SUCCESS, 0)
    assert p.started and not p.ready
    assert sorted(k for k, _ in p.due(1)) == [Kind.LIVENESS, Kind.READINESS]
    p.record(Kind.READINESS, Result.SUCCESS, 1)
    assert p.ready
    p.record(Kind.LIVENESS, Result.FAILURE, 2, "command exited with 1")
    assert p.restart_reason == "Liveness probe failed: command exited with 1"
    assert not p.ready and p.due(10) == []

    q = ContainerProbes.for_container(spec, started_at=0)
    q.record(Kind.STARTUP, Result.FAILURE, 0)
    assert q.restart_reason is None
    q.record(Kind.STARTUP, Result.FAILURE, 1)
    assert q.restart_reason is not None and q.restart_reason.startswith("Startup probe failed")


def test_no_probes_means_started_and_ready() -> None:
    p = ContainerProbes.for_container({"name": "c"}, started_at=0)
    assert p.started and p.ready and p.due(0) == []


@contextlib.contextmanager
def http_server(status: int) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_http_and_tcp_checks_on_loopback() -> None:
    with http_server(200) as port:
        container = {"ports": [{"name": "web", "containerPort": port}]}
        assert run_check({"httpGet": {"path": "/healthz", "port": "web"}}, container, None, None, 1)[0] is Result.SUCCESS
        res, msg = run_check({"httpGet": {"path": "/other", "port": port}}, container, None, None, 1)
        assert res is Result.FAILURE and "statuscode: 404" in msg
        assert run_check({"tcpSocket": {"port": port}}, container, None, None, 1)[0] is Result.SUCCESS
    with http_server(500) as port:
        assert run_check({"httpGet": {"path": "/healthz", "port": port}}, {}, None, None, 1)[0] is Result.FAILURE
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    res, msg = run_check({"tcpSocket": {"port": closed_port}}, {}, None, None, 1)
    assert res is Result.FAILURE and "refused" in msg.lower()
    res, msg = run_check({"tcpSocket": {"port": "nope"}}, {}, None, None, 1)
    assert res is Result.FAILURE and "no port named" in msg


def test_exec_check_uses_the_given_runner() -> None:
    assert run_check({"exec": {"command": ["ok"]}}, {}, None, lambda argv, t: (0, ""), 1)[0] is Result.SUCCESS
    res, msg = run_check({"exec": {"command": ["no"]}}, {}, None, lambda argv, t: (2, "boom\n"), 1)
    assert res is Result.FAILURE and msg == "command exited with 2: boom"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a network namespace")
def test_checks_reach_into_a_network_namespace(tmp_path: Path) -> None:
    """A server listening on loopback inside a netns is reached by the probe, and only there."""
    nsfile = tmp_path / "net"
    nsfile.touch()
    libc = ctypes.CDLL(None, use_errno=True)
    # A child makes the namespace, brings lo up and serves; we bind-mount its netns to keep a handle.
    server = subprocess.Popen(
        ["unshare", "--net", "sh", "-c",
         "ip link set lo up && exec python3 -c 'import http.server as h; "
         "h.HTTPServer((\"127.0.0.1\", 18089), h.SimpleHTTPRequestHandler).serve_forever()'"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    mounted = False
    try:
        from tests.helpers import wait_for

        def listening() -> bool:
            return Path(f"/proc/{server.pid}/net/tcp").exists() and ":46A9 " in Path(
                f"/proc/{server.pid}/net/tcp").read_text().upper()

        wait_for(listening, timeout=10, what="the server in the namespace")
        assert libc.mount(f"/proc/{server.pid}/ns/net".encode(), str(nsfile).encode(), None, 4096, None) == 0
        mounted = True
        own = os.readlink("/proc/thread-self/ns/net")
        assert own != os.readlink(f"/proc/{server.pid}/ns/net")
        assert run_check({"tcpSocket": {"port": 18089}}, {}, nsfile, None, 1)[0] is Result.SUCCESS
        assert run_check({"httpGet": {"path": "/", "port": 18089}}, {}, nsfile, None, 1)[0] is Result.SUCCESS
        # The host's loopback has no such server (the probe did not just hit the host).
        assert run_check({"tcpSocket": {"port": 18089}}, {}, None, None, 1)[0] is Result.FAILURE
        # The probing thread (this one) came back to its own namespace.
        assert os.readlink("/proc/thread-self/ns/net") == own
    finally:
        server.kill()
        server.wait()
        if mounted:
            libc.umount2(str(nsfile).encode(), 2)
