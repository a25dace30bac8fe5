"""The container runtime API the agent calls: start, inspect, stop and remove containers.

Each container is a state directory (``<state_dir>/containers/<id>/``, layout in
``shim.py``) and a detached shim process that owns the container's PID 1, its
exit status and its log. The ``Runtime`` object holds no state of its own:
every answer is derived from disk and ``/proc`` each time it is asked
(level-triggered), so a new ``Runtime`` after an agent restart sees exactly
what the old one saw, and adopts running containers with ``list()``.

How a container's status is derived (``Runtime.state``):

* ``exit.json`` exists                      -> EXITED with what the shim recorded;
* ``started.json`` and the recorded pid is alive with the recorded start time
                                            -> RUNNING (a zombie is not alive);
* ``started.json`` but the process is gone and no ``exit.json``:
  - the shim is alive: it is writing ``exit.json`` right now; wait briefly for it;
  - the shim is dead (killed, node trouble): the exit status is lost. Reported
    as EXITED, exit code 255, reason ``Error``, with a message saying so —
    like containerd, which reports 255 ("unknown") for a task whose exit it
    could not observe. 137 would claim a SIGKILL nobody saw. The verdict is
    written to ``exit.json`` the first time it is reached, so ``finishedAt``
    and the answer stay stable afterwards;
* no ``started.json``: CREATED while the shim lives (or, for up to a minute,
  while no shim has announced itself yet); if the shim died first, or never
  appeared, EXITED with reason ``StartError`` (also persisted).

PID reuse: a pid is only ever signalled through a pidfd opened *before*
checking that ``/proc/<pid>/stat`` still shows the recorded start time, so a
pid that was recycled between the check and the kill cannot be hit.

Pod sandboxes (``sandbox.py``): before a pod's first container, ``start``
makes the pod's shared network (loopback only), UTS (the pod's hostname) and
IPC namespaces — and with ``hostUsers: false`` its user namespace — held by
bind mounts under ``<state_dir>/sandboxes/<pod uid>/``; every container of
the pod joins them. ``remove_pod`` and ``cleanup_all`` unmount them. A
hostNetwork or hostIPC pod's sandbox holds the node's namespaces instead
(``host_namespaces``); hostPID is the shim's (no PID namespace of its own).

Volumes: ``start`` checks each hostPath as the kubelet does (``rootfs.prepare_host_path``)
and makes each emptyDir in the pod's sandbox, then hands the shim plain binds
(``runtime.json``); the container's child binds them in its root (``rootfs.py``).

Cgroups: ``<cgroup_root>/pod<uid>/<container id>``. The leaf is the container
id, not its name: a restarted container (same name, new id) must never share a
cgroup with its dead predecessor, whose ``remove`` would otherwise kill it —
Kubernetes' cgroupfs layout keys by container id for the same reason.
``ContainerState.cgroup`` always says where a container's cgroup is.

Every method blocks (polling at 10 ms, sleeping while a container stops):
call them from a worker thread, never on the event loop. ``start`` of an id
that already exists raises; after an agent restart use ``list``.

Errors: ``NotFoundError`` for an unknown container, ``RuntimeError_`` for
anything the node could not do (unsupported image, cgroup or process trouble).
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import errno
import fcntl
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtime import forkserver as _forkserver
from agent.runtime import monitor as _monitor
from agent.runtime import shim as _shim
from agent.runtime.cgroups import CgroupDriver, detect_driver
from agent.runtime.rootfs import prepare_host_path
from agent.runtime.sandbox import IdMap, Sandbox, Sandboxes
from agent.runtime.shim import ContainerConfig, proc_start_time, rfc3339
from apimachinery.errors import NotFoundError, RuntimeError_

__all__ = ["ContainerConfig", "ContainerState", "ContainerStatus", "Runtime"]

log = logging.getLogger(__name__)

#: The image with no layers: the host's /usr and /lib* read-only. Any other image comes
#: with its unpacked layers (``ContainerConfig.layer_dirs``) from the node's image store.
HOST_IMAGE = "host"
#: Exit code reported when a container's exit status was lost with its shim.
LOST_EXIT_CODE = 255
#: How long a stop() waits for the shim to record the exit after SIGKILL.
KILL_TIMEOUT = 10.0
#: A container with no shim.pid this long after its config was written was
#: abandoned by an agent that died while starting it: reported as StartError.
START_ABANDONED_AFTER = 60.0
_POLL = 0.01
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ContainerStatus(enum.StrEnum):
    """Where a container is in its one-way life: CREATED -> RUNNING -> EXITED (or CREATED -> EXITED)."""

    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class ContainerState:
    """A container as derived from its state directory and /proc at one moment."""

    config: ContainerConfig
    status: ContainerStatus
    pid: int | None  # host pid of the container's PID 1 while running
    started_at: str | None
    finished_at: str | None
    exit_code: int | None
    reason: str | None  # Completed | Error | OOMKilled | StartError
    message: str | None
    log_path: str
    cgroup: str  # relative cgroup path of the container


# ---------------------------------------------------------------- process helpers


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        # Written atomically by us, so a torn file means outside damage.
        log.warning("unreadable state file %s: %s", path, e)
        return None
    return data if isinstance(data, dict) else None


def _proc_state(pid: int) -> str | None:
    """Field 3 of /proc/<pid>/stat (R, S, D, Z ...), None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rfind(b")") + 2:][:1].decode()


def _alive(pid: int | None, start_time: int | None) -> bool:
    """Whether ``pid`` still is the live process that had ``start_time``.

    A zombie counts as dead: it has exited, and if its shim is gone it may
    wait a long time for whatever init adopted it to reap it.
    """
    return (pid is not None and start_time is not None and proc_start_time(pid) == start_time
            and _proc_state(pid) not in (None, "Z"))


def _signal_verified(pid: int, start_time: int | None, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is still the process with ``start_time``.

    The pidfd pins the process first; if the start time read afterwards
    matches, the pidfd refers to that very process and the signal cannot land
    on a successor that reused the pid.
    """
    if start_time is None or pid <= 1:
        return False
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if proc_start_time(pid) != start_time:
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [os.fsdecode(a) for a in raw.split(b"\0") if a]


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's children list)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return found
    for tid in tasks:
        try:
            found += [int(t) for t in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


# ---------------------------------------------------------------- the runtime


class Runtime:
    """Containers of one node, in ``<state_dir>/containers`` and cgroups under ``cgroup_root``."""

    def __init__(self, state_dir: str | Path, cgroup_root: str, driver: CgroupDriver | None = None) -> None:
        # Absolute and resolved: the shim's command line names this path and
        # is how a live shim is recognised later.
        self.state_dir = Path(state_dir).resolve()
        self.containers_dir = self.state_dir / "containers"
        root = cgroup_root.strip("/")
        if not root or any(p in ("", ".", "..") for p in root.split("/")):
            raise RuntimeError_(f"cgroup root must be a relative path like 'orch/node-1': {cgroup_root!r}")
        self.cgroup_root = root
        try:
            self.driver = driver if driver is not None else detect_driver()
        except OSError as e:
            raise RuntimeError_(f"no usable cgroup hierarchy: {e}") from e
        self.sandboxes = Sandboxes(self.state_dir, create=self._create_namespaces)
        #: Every container's supervisor while it runs (built from monitor.c once per version).
        self.monitor = _monitor.ensure_built()
        self._forkserver_lock = threading.Lock()
        self._fingerprint = _forkserver.code_fingerprint()
        self._forkserver_checked: tuple[Any, Any] = (None, None)  # (pid, start time) whose fingerprint matched

    def __repr__(self) -> str:
        return f"Runtime({str(self.state_dir)!r}, {self.cgroup_root!r}, {self.driver!r})"

    # ------------------------------------------------------------ naming

    def pod_cgroup(self, pod_uid: str) -> str:
        return f"{self.cgroup_root}/pod{pod_uid}"

    def container_cgroup(self, config: ContainerConfig) -> str:
        # Keyed by container id, not name: a restarted container (same name,
        # new id) must not share a cgroup with its dead predecessor, whose
        # removal would otherwise kill it. Kubernetes' cgroupfs layout does the same.
        return f"{self.pod_cgroup(config.pod_uid)}/{config.id}"

    def _dir(self, container_id: str) -> Path:
        if not _SAFE_NAME.match(container_id):
            raise NotFoundError(f"container {container_id!r}: not a valid container id")
        return self.containers_dir / container_id

    # ------------------------------------------------------------ start

    def start(self, config: ContainerConfig, timeout: float = 10) -> ContainerState:
        """Create and start a container; block until it runs or has failed to start.

        A failure to start (missing binary, bad working dir ...) is not an
        exception: the state comes back EXITED with reason ``StartError``. On
        timeout ``RuntimeError_`` is raised and the container is left for
        ``state``/``remove`` to deal with.
        """
        if config.image != HOST_IMAGE and not config.layer_dirs:
            raise RuntimeError_(f"container {config.name} of pod {config.pod_namespace}/{config.pod_name}: "
                                f"image {config.image!r} has no layers (pull or import it into the node first)")
        missing = [d for d in config.layer_dirs if not os.path.isdir(d)]
        if missing:
            raise RuntimeError_(f"container {config.name}: image layer {missing[0]} is missing")
        for what, value in (("container id", config.id), ("pod uid", config.pod_uid)):
            if not _SAFE_NAME.match(value):
                raise RuntimeError_(f"{what} {value!r} is not usable as a file and cgroup name")
        try:
            ContainerConfig.from_dict(config.to_dict())
        except ValueError as e:
            raise RuntimeError_(str(e)) from e

        final = self.containers_dir / config.id
        if final.exists():
            raise RuntimeError_(f"container {config.id} already exists")
        pod = f"{config.pod_namespace}/{config.pod_name}"
        sandbox = self._ensure_sandbox(config.pod_uid, config.uts_hostname, config.host_users, pod,
                                       host_namespaces(config.host_network, config.host_ipc, config.node_netns))
        mounts = self._volume_sources(config, sandbox)
        try:
            self._prepare(config, final, sandbox, mounts)
        except OSError as e:
            raise RuntimeError_(f"container {config.id}: cannot prepare state dir: {e}") from e
        log.info("pod %s/%s: starting container %s (%s)", config.pod_namespace, config.pod_name, config.name, config.id)
        # The shim holds the write end until the container has started or failed to:
        # waiting for EOF answers at once, where polling the state files would lag.
        started_r, started_w = os.pipe()
        try:
            try:
                rc = self._launch(final, timeout, started_w)
            finally:
                os.close(started_w)
            if rc == 0:
                select.select([started_r], [], [], timeout)
        finally:
            os.close(started_r)
        if rc != 0:
            self._persist_exit(final, {"exitCode": _shim.START_ERROR_EXIT_CODE, "signal": None,
                                       "finishedAt": rfc3339(), "reason": "StartError",
                                       "message": f"shim failed to launch (status {rc}); "
                                                  f"see {final / _shim.SHIM_LOG_FILE}"})

        deadline = time.monotonic() + timeout
        while True:
            st = self.state(config.id)
            if st.status != ContainerStatus.CREATED:
                if st.status == ContainerStatus.EXITED and st.reason == "StartError":
                    log.warning("pod %s/%s: container %s failed to start: %s",
                                config.pod_namespace, config.pod_name, config.name, st.message)
                return st
            if time.monotonic() >= deadline:
                raise RuntimeError_(f"container {config.id}: not started within {timeout}s")
            time.sleep(_POLL)

    def _launch(self, final: Path, timeout: float, notify_fd: int) -> int:
        """Start the container's shim: forked from the node's fork server, which has the
        shim's code imported already (a fresh interpreter takes tens of milliseconds more),
        or as a fresh interpreter when the fork server cannot be had. The shim gets
        ``notify_fd`` (see ``shim.run``)."""
        try:
            return self._launch_forked(final, timeout, notify_fd)
        except (OSError, ValueError, RuntimeError_) as e:
            log.warning("fork server unavailable (%s); starting the shim of %s as a new process", e, final.name)
        return self._launch_shim(final, timeout, notify_fd)

    def _create_namespaces(self, directory: Path, hostname: str, idmap: IdMap | None,
                           host: Mapping[str, str]) -> None:
        """A pod sandbox's namespaces, made by the fork server (forking here, in a process with
        gRPC's threads, can leave the child dead on a lock)."""
        payload = {"dir": str(directory), "hostname": hostname,
                   "idmap": None if idmap is None else {"host_id": idmap.host_id, "size": idmap.size},
                   "host": dict(host)}
        try:
            reply = _forkserver.request(self._ensure_forkserver(), {"sandbox": payload}, 30)
        except (OSError, RuntimeError_) as e:
            raise OSError(errno.EIO, f"fork server unavailable for the sandbox: {e}") from e
        if "error" in reply:
            raise OSError(int(reply.get("errno") or errno.EIO), str(reply["error"]))  # type: ignore[call-overload]

    def _launch_forked(self, final: Path, timeout: float, notify_fd: int) -> int:
        reply = _forkserver.request(self._ensure_forkserver(), {"dir": str(final)}, timeout, [notify_fd])
        if "error" in reply:
            raise RuntimeError_(f"fork server: {reply['error']}")
        return 0  # the shim runs; the notify pipe says when the container has started

    @property
    def _forkserver_files(self) -> tuple[Path, Path, Path]:
        return (self.state_dir / "forkserver.sock", self.state_dir / "forkserver.json",
                self.state_dir / "forkserver.log")

    def _forkserver_pid(self) -> int | None:
        """The node's fork server, if alive. Known by its recorded pid and start time only:
        every shim it forked carries its command line too."""
        record = _read_json(self._forkserver_files[1]) or {}
        pid = record.get("pid")
        return pid if isinstance(pid, int) and _alive(pid, record.get("startTime")) else None

    def _kill_forkserver(self) -> None:
        record = _read_json(self._forkserver_files[1]) or {}
        pid, start_time = record.get("pid"), record.get("startTime")
        if isinstance(pid, int) and _signal_verified(pid, start_time, signal.SIGKILL):
            deadline = time.monotonic() + 5
            while _alive(pid, start_time) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)  # ours when this process started it
                time.sleep(_POLL)

    @contextlib.contextmanager
    def _forkserver_locked(self) -> Iterator[None]:
        """Threads *and* processes (a restarted agent, a test's Runtime) on one node take turns."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._forkserver_lock, open(self.state_dir / "forkserver.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _ensure_forkserver(self) -> Path:
        """The socket of a live fork server running this code; starts one when needed."""
        sock, record_file, log_file = self._forkserver_files
        record = _read_json(record_file) or {}
        known = (record.get("pid"), record.get("startTime"))
        if known == self._forkserver_checked and _alive(*known):
            return sock  # the one this Runtime already asked for its fingerprint
        with self._forkserver_locked():
            record = _read_json(record_file) or {}
            if _alive(record.get("pid"), record.get("startTime")):
                try:
                    hello = _forkserver.request(sock, {"hello": True}, 5)
                    if hello.get("fingerprint") == self._fingerprint:
                        self._forkserver_checked = (record.get("pid"), record.get("startTime"))
                        return sock
                except OSError:
                    pass
            # None, another version's, or a wedged one: end it (its shims carry on without it).
            self._kill_forkserver()
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
            with open(log_file, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "agent.runtime.forkserver", str(sock)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, cwd="/", env=env,
                )
            tmp = record_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"pid": proc.pid, "startTime": proc_start_time(proc.pid)}))
            os.replace(tmp, record_file)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError_(f"fork server exited with {proc.returncode}; see {log_file}")
                try:
                    _forkserver.request(sock, {"hello": True}, 1)
                    log.info("fork server started (pid %d)", proc.pid)
                    self._forkserver_checked = (proc.pid, proc_start_time(proc.pid))
                    return sock
                except OSError:
                    time.sleep(0.02)
            raise RuntimeError_(f"fork server did not answer within 10s; see {log_file}")

    def _stop_forkserver(self) -> None:
        with self._forkserver_locked():
            self._kill_forkserver()
            for path in self._forkserver_files:
                path.unlink(missing_ok=True)
        (self.state_dir / "forkserver.lock").unlink(missing_ok=True)

    @staticmethod
    def _launch_shim(final: Path, timeout: float, notify_fd: int) -> int:
        """Start the shim detached; returns the launcher's status (it exits once the shim has forked off).

        The shim gets a new session (no signal for our process group or
        terminal reaches it), /dev/null for stdin and its own log for
        stdout/stderr: it must hold none of the agent's descriptors.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
        try:
            with open(final / _shim.SHIM_LOG_FILE, "ab") as shim_log:
                launcher = subprocess.Popen(
                    [sys.executable, "-m", "agent.runtime.shim", str(final), "--notify-fd", str(notify_fd)],
                    stdin=subprocess.DEVNULL, stdout=shim_log, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, pass_fds=(notify_fd,), cwd="/", env=env,
                )
        except OSError as e:
            raise RuntimeError_(f"container {final.name}: cannot launch shim: {e}") from e
        try:
            return launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            launcher.kill()
            launcher.wait()
            raise RuntimeError_(f"container {final.name}: shim launcher hung for {timeout}s") from e

    def _volume_sources(self, config: ContainerConfig, sandbox: Sandbox) -> builtins.list[dict[str, Any]]:
        """The container's volumes as binds for runtime.json: each hostPath checked (and made,
        for its ...OrCreate types) as the kubelet does, each emptyDir made in the sandbox. A
        failure is the container's start error, naming the volume, before anything runs."""
        out = []
        for m in config.volume_mounts:
            try:
                if "hostPath" in m:
                    source = str(m["hostPath"]["path"])
                    prepare_host_path(source, str(m["hostPath"].get("type", "")))
                else:
                    empty = m["emptyDir"]
                    source = str(self.sandboxes.empty_dir(sandbox, m["name"], memory=empty.get("medium") == "Memory",
                                                          size_bytes=empty.get("sizeBytes")))
            except (OSError, ValueError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror and e.filename is None else str(e)
                raise RuntimeError_(f"container {config.name}: volume {m['name']!r}: {why}") from e
            out.append({"source": source, "destination": m["mountPath"], "readOnly": bool(m.get("readOnly", False))})
        return out

    def _prepare(self, config: ContainerConfig, final: Path, sandbox: Sandbox,
                 mounts: builtins.list[dict[str, Any]]) -> None:
        # Build the directory under a dot-name and rename it into place, so
        # list() never sees a container without its config.
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.containers_dir / f".new-{config.id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        (tmp / _shim.CONFIG_FILE).write_text(config.to_json())
        runtime_info = {
            "cgroup": self.container_cgroup(config),
            "driver": self.driver.spec(),
            "monitor": str(self.monitor),
            "sandbox": {
                "namespaces": sandbox.namespaces(),
                "idmap": None if sandbox.idmap is None else {"hostID": sandbox.idmap.host_id,
                                                              "size": sandbox.idmap.size},
            },
            "mounts": mounts,
        }
        (tmp / _shim.RUNTIME_FILE).write_text(json.dumps(runtime_info, indent=2))
        (tmp / _shim.ROOTFS_DIR).mkdir(mode=0o755)
        try:
            os.rename(tmp, final)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise RuntimeError_(f"container {config.id} already exists") from e
            raise

    # ------------------------------------------------------------ state

    def state(self, container_id: str) -> ContainerState:
        d = self._dir(container_id)
        try:
            config = ContainerConfig.from_json((d / _shim.CONFIG_FILE).read_text())
        except FileNotFoundError:
            raise NotFoundError(f"container {container_id} not found") from None
        except (OSError, ValueError) as e:
            raise RuntimeError_(f"container {container_id}: unreadable config: {e}") from e
        info = _read_json(d / _shim.RUNTIME_FILE) or {}
        cgroup = str(info.get("cgroup") or self.container_cgroup(config))

        def build(status: ContainerStatus, started: dict[str, Any] | None, exited: dict[str, Any] | None,
                  pid: int | None = None) -> ContainerState:
            return ContainerState(
                config=config, status=status, pid=pid,
                started_at=(started or {}).get("startedAt"),
                finished_at=(exited or {}).get("finishedAt"),
                exit_code=(exited or {}).get("exitCode"),
                reason=(exited or {}).get("reason"),
                message=(exited or {}).get("message"),
                log_path=str(d / _shim.LOG_FILE),
                cgroup=cgroup,
            )

        exited = _read_json(d / _shim.EXIT_FILE)
        started = _read_json(d / _shim.STARTED_FILE)
        if exited is not None:
            return build(ContainerStatus.EXITED, started, exited)
        if started is not None:
            pid, start_time = started.get("pid"), started.get("startTime")
            if _alive(pid, start_time):
                return build(ContainerStatus.RUNNING, started, None, pid)
            exited = self._await_exit_record(d)
            if exited is None:
                exited = self._persist_exit(d, {
                    "exitCode": LOST_EXIT_CODE, "signal": None, "finishedAt": rfc3339(), "reason": "Error",
                    "message": "container process is gone and its shim died before recording the exit status",
                })
            return build(ContainerStatus.EXITED, started, exited)
        # Whether the shim had written its pid file, read *before* asking if it is alive:
        # in the other order a shim that writes the file between the two reads looks dead.
        shim_announced = (d / _shim.SHIM_PID_FILE).exists()
        if self._shim_alive(d):
            return build(ContainerStatus.CREATED, None, None)
        if not shim_announced and not self._start_abandoned(d):
            return build(ContainerStatus.CREATED, None, None)  # start() is launching the shim
        # The shim is dead and never reported a start. Look once more: it may
        # have finished between our reads and its exit.
        started, exited = _read_json(d / _shim.STARTED_FILE), _read_json(d / _shim.EXIT_FILE)
        if exited is None and started is None:
            exited = self._persist_exit(d, {
                "exitCode": _shim.START_ERROR_EXIT_CODE, "signal": None, "finishedAt": rfc3339(),
                "reason": "StartError",
                "message": f"shim exited before starting the container; see {d / _shim.SHIM_LOG_FILE}",
            })
        if exited is None:
            return self.state(container_id)
        return build(ContainerStatus.EXITED, started, exited)

    @staticmethod
    def _start_abandoned(d: Path) -> bool:
        """No shim ever announced itself, long after the container was prepared (the agent died mid-start)."""
        try:
            age = time.time() - (d / _shim.CONFIG_FILE).stat().st_mtime
        except FileNotFoundError:
            return True
        return age > START_ABANDONED_AFTER

    def _await_exit_record(self, d: Path, timeout: float = 2.0) -> dict[str, Any] | None:
        """The shim's exit.json, waiting while a live shim is between reaping and writing it."""
        deadline = time.monotonic() + timeout
        while True:
            exited = _read_json(d / _shim.EXIT_FILE)
            if exited is not None or not self._shim_alive(d) or time.monotonic() >= deadline:
                return exited if exited is not None else _read_json(d / _shim.EXIT_FILE)
            time.sleep(_POLL)

    @staticmethod
    def _persist_exit(d: Path, record: dict[str, Any]) -> dict[str, Any]:
        """Write exit.json unless one exists (link(2) is the atomic create-if-absent); return the winner."""
        tmp = d / f".exit-{os.getpid()}-{time.monotonic_ns()}.tmp"
        tmp.write_text(json.dumps(record) + "\n")
        try:
            os.link(tmp, d / _shim.EXIT_FILE)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return _read_json(d / _shim.EXIT_FILE) or record

    def _shim_pid(self, d: Path) -> int | None:
        """The shim's pid if that process is alive and really is this container's shim."""
        try:
            fields = (d / _shim.SHIM_PID_FILE).read_text().split()
            pid = int(fields[0])
        except (OSError, ValueError, IndexError):
            return None
        if len(fields) > 1:
            # "pid starttime": the process must still be the one that wrote it.
            return pid if _alive(pid, int(fields[1])) else None
        # Written by an older shim: its command line names the state dir, so a
        # recycled pid won't match.
        argv = _cmdline(pid)
        if "agent.runtime.shim" in argv and str(d) in argv:
            return pid
        return None

    def _shim_alive(self, d: Path) -> bool:
        pid = self._shim_pid(d)
        return pid is not None and _proc_state(pid) not in (None, "Z")

    def list(self) -> list[ContainerState]:
        """Every container on disk, running or not, sorted by id."""
        out: list[ContainerState] = []
        try:
            names = sorted(os.listdir(self.containers_dir))
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith(".") or not _SAFE_NAME.match(name):
                continue
            try:
                out.append(self.state(name))
            except (NotFoundError, FileNotFoundError):
                continue  # removed while we looked (remove() may run in another thread)
        return out

    # ------------------------------------------------------------ stop / remove

    def stop(self, container_id: str, grace_seconds: float) -> ContainerState:
        """SIGTERM the container's PID 1, SIGKILL it after ``grace_seconds``; block until exited.

        Gotcha: PID 1 of a namespace gets no default signal actions, so one
        without a SIGTERM handler (``sleep``, ``sh``) ignores SIGTERM and is
        only stopped by the SIGKILL after the grace — as with Docker.
        """
        st = self.state(container_id)
        deadline = time.monotonic() + KILL_TIMEOUT
        # A container still starting is let finish (or fail) first; state()
        # turns a dead or missing shim into EXITED, which ends this wait.
        while st.status == ContainerStatus.CREATED and time.monotonic() < deadline:
            time.sleep(_POLL)
            st = self.state(container_id)
        if st.status == ContainerStatus.CREATED:
            # Still starting (or the agent died mid-start): take the shim and
            # its child down; nothing has been recorded yet.
            self._kill_shim(self._dir(container_id))
            return self.state(container_id)
        if st.status != ContainerStatus.RUNNING:
            return st

        started = _read_json(self._dir(container_id) / _shim.STARTED_FILE) or {}
        pid, start_time = int(started["pid"]), started.get("startTime")
        c = st.config
        log.info("pod %s/%s: stopping container %s (pid %d, grace %ss)",
                 c.pod_namespace, c.pod_name, c.name, pid, grace_seconds)
        if grace_seconds > 0:
            _signal_verified(pid, start_time, signal.SIGTERM)
            st = self._wait_exited(container_id, grace_seconds)
        if st.status == ContainerStatus.RUNNING:
            _signal_verified(pid, start_time, signal.SIGKILL)
            st = self._wait_exited(container_id, KILL_TIMEOUT)
        if st.status != ContainerStatus.EXITED:
            raise RuntimeError_(f"container {container_id}: still {st.status} after SIGKILL")
        return st

    def _wait_exited(self, container_id: str, timeout: float) -> ContainerState:
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(container_id)
            if st.status == ContainerStatus.EXITED or time.monotonic() >= deadline:
                return st
            time.sleep(_POLL)

    def _kill_shim(self, d: Path) -> None:
        """SIGKILL a shim and its direct children (a child not yet in the cgroup would escape otherwise)."""
        pid = self._shim_pid(d)
        if pid is None:
            return
        start_time = proc_start_time(pid)
        for child in _children(pid):
            _signal_verified(child, proc_start_time(child), signal.SIGKILL)
        _signal_verified(pid, start_time, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while _alive(pid, start_time) and self._shim_alive(d) and time.monotonic() < deadline:
            time.sleep(_POLL)

    def _settle_shim(self, d: Path, timeout: float = 2.0) -> None:
        """Give an exiting shim time to finish, then make sure it is gone."""
        deadline = time.monotonic() + timeout
        while self._shim_alive(d) and time.monotonic() < deadline:
            time.sleep(_POLL)
        self._kill_shim(d)

    def remove(self, container_id: str) -> None:
        """Stop the container if it runs (no grace), then remove its cgroup and state dir. Idempotent."""
        d = self._dir(container_id)
        if not d.exists():
            return
        info = _read_json(d / _shim.RUNTIME_FILE) or {}
        cgroup: str | None = info.get("cgroup")
        try:
            st = self.state(container_id)
            if st.status != ContainerStatus.EXITED:
                self.stop(container_id, 0)
            cgroup = st.cgroup
        except NotFoundError:
            pass  # no config: a half-prepared directory; remove what there is
        self._settle_shim(d)
        try:
            if cgroup:
                self.driver.kill_all(cgroup)
                self.driver.remove(cgroup)
            _rmtree_racing(d)
        except OSError as e:
            raise RuntimeError_(f"container {container_id}: cannot remove: {e}") from e
        log.info("container %s removed", container_id)

    def remove_pod(self, pod_uid: str) -> None:
        """Remove the pod's sandbox and cgroup (after its containers are removed); missing is fine."""
        if not _SAFE_NAME.match(pod_uid):
            raise RuntimeError_(f"pod uid {pod_uid!r} is not usable as a cgroup name")
        try:
            self.sandboxes.remove(pod_uid)
        except OSError as e:
            raise RuntimeError_(f"pod {pod_uid}: cannot remove its sandbox: {e}") from e
        try:
            self.driver.remove(self.pod_cgroup(pod_uid))
        except OSError as e:
            raise RuntimeError_(f"pod {pod_uid}: cannot remove cgroup: {e}") from e

    def exec_sync(self, container_id: str, argv: builtins.list[str], timeout: float) -> tuple[int, str]:
        """Run ``argv`` in the running container and wait: (exit code, output). For exec probes.

        TimeoutError after ``timeout`` seconds (the command is killed); OSError when it
        could not run at all (no such command, the container is not running).
        """
        from agent.runtime import exec as _exec  # its helper is a process of its own

        return _exec.exec_sync(self._dir(container_id), argv, timeout)

    def ensure_sandbox(self, pod_uid: str, hostname: str, *, host_users: bool = True, host_ipc: bool = False) -> Path:
        """Make the pod's sandbox now (``start`` does it anyway); returns its network namespace file.

        For callers that set the pod's network up before its first container starts (so
        never for a hostNetwork pod: it has no network of its own to set up).
        """
        return self._ensure_sandbox(pod_uid, hostname[:63].rstrip("-.") or "localhost", host_users,
                                    pod_uid, host_namespaces(False, host_ipc, "")).path("net")

    def _ensure_sandbox(self, pod_uid: str, hostname: str, host_users: bool, pod: str,
                        host: dict[str, str]) -> Sandbox:
        try:
            return self.sandboxes.ensure(pod_uid, hostname, host_users=host_users, host=host)
        except (OSError, ValueError) as e:
            raise RuntimeError_(f"pod {pod}: cannot make its sandbox: {e}") from e

    def sandbox_pod_uids(self) -> builtins.list[str]:  # `list` is a method here
        """Pods that have a sandbox on this node (a reconciler removes those no longer wanted)."""
        return self.sandboxes.pod_uids()

    def sandbox_netns_path(self, pod_uid: str) -> Path | None:
        """The nsfs file of the pod's network namespace (for ``setns``), None while it has no sandbox,
        and None for a hostNetwork pod: its namespace is the node's, and what the network layer
        does to a pod's namespace (delete its stray eth0, say) must never reach the node's."""
        try:
            sandbox = self.sandboxes.get(pod_uid)
        except ValueError:
            return None
        return None if sandbox is None or "net" in sandbox.host else sandbox.path("net")

    def cleanup_all(self) -> None:
        """Kill every container and shim of this runtime, remove every cgroup under the root and the state.

        Removes the pod sandboxes (unmounting their namespaces), ``<state_dir>/containers``
        and then ``state_dir`` itself if nothing else is left in it (other node components may keep files there).
        """
        dirs: list[Path] = []
        with contextlib.suppress(FileNotFoundError):
            dirs = [self.containers_dir / n for n in os.listdir(self.containers_dir)]
        errors: list[str] = []
        # Containers first: PID 1's death takes its whole PID namespace along
        # and lets each shim record the exit and leave on its own.
        for d in dirs:
            started = _read_json(d / _shim.STARTED_FILE)
            if started and isinstance(started.get("pid"), int):
                _signal_verified(started["pid"], started.get("startTime"), signal.SIGKILL)
        # One shared wait for the shims to leave by themselves, then force.
        deadline = time.monotonic() + 2.0
        while any(self._shim_alive(d) for d in dirs) and time.monotonic() < deadline:
            time.sleep(_POLL)
        for d in dirs:
            self._kill_shim(d)
        # A container recorded under another root (the runtime was configured
        # differently when it started it) is still ours to clean.
        cgroups = {self.cgroup_root}
        for d in dirs:
            recorded = (_read_json(d / _shim.RUNTIME_FILE) or {}).get("cgroup")
            if isinstance(recorded, str) and recorded and not recorded.startswith(self.cgroup_root + "/"):
                cgroups.add(recorded)
        for cgroup in sorted(cgroups):
            try:
                self.driver.kill_all(cgroup)
                self.driver.remove(cgroup)
            except (OSError, ValueError) as e:
                errors.append(f"cgroup {cgroup}: {e}")
        try:
            self.sandboxes.remove_all()
        except OSError as e:
            errors.append(f"sandboxes: {e}")
        self._stop_forkserver()
        try:
            shutil.rmtree(self.containers_dir, ignore_errors=False)
        except FileNotFoundError:
            pass
        except OSError as e:
            errors.append(f"state dir {self.containers_dir}: {e}")
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()  # fails if missing or someone else's files are still there
        if errors:
            raise RuntimeError_("cleanup incomplete: " + "; ".join(errors))


def host_namespaces(host_network: bool, host_ipc: bool, node_netns: str) -> dict[str, str]:
    """The node's namespaces a pod shares, kind -> nsfs file: the network namespace (``node_netns``,
    else this process's) with the UTS namespace for hostNetwork, as containerd pairs them; the
    IPC namespace for hostIPC. "This process" is the agent: its namespaces are the node's."""
    own = f"/proc/{os.getpid()}/ns"
    host: dict[str, str] = {}
    if host_network:
        host["net"] = node_netns or f"{own}/net"
        host["uts"] = f"{own}/uts"
    if host_ipc:
        host["ipc"] = f"{own}/ipc"
    return host


def _rmtree_racing(d: Path, attempts: int = 5) -> None:
    """rmtree that tolerates a concurrent reader: ``state()`` in another thread may drop a
    temporary file into the directory (ENOTEMPTY) or remove one first (ENOENT)."""
    for attempt in range(attempts):
        try:
            shutil.rmtree(d)
            return
        except FileNotFoundError:
            if not d.exists():
                return
        except OSError as e:
            if e.errno != errno.ENOTEMPTY or attempt == attempts - 1:
                raise
        time.sleep(0.01)
