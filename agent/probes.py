"""Liveness, readiness and startup probes, with Kubernetes' fields, defaults and semantics.

``ProbeTracker`` is the pure part: it turns a stream of check results into a probe's
verdict (``successThreshold`` consecutive successes to pass, ``failureThreshold``
consecutive failures to fail, nothing before ``initialDelaySeconds``) and says when
the next check is due. ``Prober`` runs the checks: ``exec`` inside the container,
``tcpSocket`` and ``httpGet`` against the pod's own network namespace (a socket is
created inside it, so the check reaches the pod's loopback, where its ports are).

What the verdicts mean, as in the kubelet:
* a startup probe holds the other two back until it passes, and restarts the
  container when it fails;
* a failed liveness probe restarts the container (its restartPolicy decides);
* readiness gates the container's ``ready`` flag and so the pod's Ready condition;
  a container with no readiness probe is ready once it runs (and has started).
"""

from __future__ import annotations

import contextlib
import enum
import http.client
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apimachinery.meta import Obj

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000


class Result(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"


class Kind(enum.StrEnum):
    STARTUP = "startup"
    LIVENESS = "liveness"
    READINESS = "readiness"


@dataclass(slots=True)
class ProbeTracker:
    """One probe of one container instance: consecutive results → a verdict."""

    spec: Obj
    started_at: float  # when the container started (monotonic or wall; one clock throughout)
    passing: bool | None = None  # None: no verdict yet
    successes: int = 0
    failures: int = 0
    last_run: float | None = None
    last_message: str = ""

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    def due(self, now: float) -> bool:
        if now < self.started_at + float(self.spec.get("initialDelaySeconds", 0)):
            return False
        return self.last_run is None or now >= self.last_run + self.period

    def record(self, result: Result, now: float, message: str = "") -> bool | None:
        """Add a check's result; return the verdict (True pass, False fail, None undecided)."""
        self.last_run = now
        self.last_message = message
        if result is Result.SUCCESS:
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.passing = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.passing = False
        return self.passing


@dataclass(slots=True)
class ContainerProbes:
    """The probes of one running container instance, and what they concluded."""

    startup: ProbeTracker | None = None
    liveness: ProbeTracker | None = None
    readiness: ProbeTracker | None = None
    restart_reason: str | None = None  # set when a startup or liveness probe failed
    events: list[str] = field(default_factory=list)

    @classmethod
    def for_container(cls, container: Obj, started_at: float) -> ContainerProbes:
        def make(key: str) -> ProbeTracker | None:
            spec = container.get(key)
            return ProbeTracker(spec, started_at) if spec else None

        return cls(make("startupProbe"), make("livenessProbe"), make("readinessProbe"))

    @property
    def started(self) -> bool:
        return self.startup is None or self.startup.passing is True

    @property
    def ready(self) -> bool:
        if not self.started or self.restart_reason:
            return False
        return self.readiness is None or self.readiness.passing is True

    def due(self, now: float) -> list[tuple[Kind, ProbeTracker]]:
        """The checks to run now, startup first; liveness and readiness only once started."""
        if self.restart_reason:
            return []
        out: list[tuple[Kind, ProbeTracker]] = []
        if self.startup is not None and self.startup.passing is not True:
            if self.startup.due(now):
                out.append((Kind.STARTUP, self.startup))
            return out
        for kind, tracker in ((Kind.LIVENESS, self.liveness), (Kind.READINESS, self.readiness)):
            if tracker is not None and tracker.due(now):
                out.append((kind, tracker))
        return out

    def record(self, kind: Kind, result: Result, now: float, message: str = "") -> None:
        tracker = {Kind.STARTUP: self.startup, Kind.LIVENESS: self.liveness, Kind.READINESS: self.readiness}[kind]
        assert tracker is not None
        verdict = tracker.record(result, now, message)
        if verdict is False and kind in (Kind.STARTUP, Kind.LIVENESS) and not self.restart_reason:
            self.restart_reason = f"{kind.value.capitalize()} probe failed: {message}".rstrip(": ")
            self.events.append(self.restart_reason)


# --- running the checks ------------------------------------------------------------


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def _in_netns(netns: Path | None) -> Iterator[None]:
    """Switch this thread (only this one: setns on a network namespace is per thread) into
    ``netns`` and back. Sockets made inside stay in that namespace after we return."""
    if netns is None:
        yield
        return
    import ctypes

    libc = _libc()
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                # The thread is stranded in a pod's namespace; anything it ran next would
                # talk to the wrong network. There is no safe way on: stop the agent.
                log.critical("cannot return a probe thread to the agent's network namespace")
                os.abort()
    finally:
        os.close(target)
        os.close(own)


def _socket_in(netns: Path | None, family: int = socket.AF_INET) -> socket.socket:
    with _in_netns(netns):
        return socket.socket(family, socket.SOCK_STREAM)


def _port(value: Any, container: Obj) -> int:
    if isinstance(value, int):
        return value
    for p in container.get("ports", []):
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ValueError(f"no port named {value!r} in the container")


def check_tcp(spec: Obj, container: Obj, netns: Path | None, timeout: float) -> tuple[Result, str]:
    host = spec.get("host") or "127.0.0.1"
    port = _port(spec["port"], container)
    sock = _socket_in(netns)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        return Result.SUCCESS, ""
    except OSError as e:
        return Result.FAILURE, f"dial tcp {host}:{port}: {e.strerror or e}"
    finally:
        sock.close()


class _NetnsHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, timeout: float, netns: Path | None) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        sock = _socket_in(self._netns)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def check_http(spec: Obj, container: Obj, netns: Path | None, timeout: float) -> tuple[Result, str]:
    host = spec.get("host") or "127.0.0.1"
    port = _port(spec["port"], container)
    path = spec.get("path", "/")
    if spec.get("scheme", "HTTP") != "HTTP":
        return Result.FAILURE, "HTTPS probes are not supported yet"
    conn = _NetnsHTTPConnection(host, port, timeout, netns)
    try:
        headers = {h["name"]: h["value"] for h in spec.get("httpHeaders", [])}
        headers.setdefault("User-Agent", "orch-probe/0.1")
        conn.request("GET", path, headers=headers)
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        return Result.FAILURE, f'Get "http://{host}:{port}{path}": {e}'
    finally:
        conn.close()
    # Kubernetes: any code from 200 to 399 is a success.
    if 200 <= status < 400:
        return Result.SUCCESS, ""
    return Result.FAILURE, f"HTTP probe failed with statuscode: {status}"


ExecFn = Callable[[list[str], float], tuple[int, str]]


def check_exec(spec: Obj, exec_fn: ExecFn | None, timeout: float) -> tuple[Result, str]:
    if exec_fn is None:
        return Result.FAILURE, "exec probes need a running container"
    try:
        code, output = exec_fn(list(spec["command"]), timeout)
    except TimeoutError:
        return Result.FAILURE, f"command timed out after {timeout:g}s"
    except OSError as e:
        return Result.FAILURE, str(e)
    if code == 0:
        return Result.SUCCESS, ""
    return Result.FAILURE, f"command exited with {code}: {output.strip()[:200]}"


def run_check(spec: Obj, container: Obj, netns: Path | None, exec_fn: ExecFn | None,
              timeout: float) -> tuple[Result, str]:
    """One check of ``spec`` (a probe's exec/httpGet/tcpSocket); blocking, run it in a thread."""
    try:
        if "exec" in spec:
            return check_exec(spec["exec"], exec_fn, timeout)
        if "httpGet" in spec:
            return check_http(spec["httpGet"], container, netns, timeout)
        if "tcpSocket" in spec:
            return check_tcp(spec["tcpSocket"], container, netns, timeout)
    except (OSError, ValueError) as e:
        return Result.FAILURE, str(e)
    return Result.FAILURE, "the probe has no handler"
