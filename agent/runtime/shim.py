"""The per-container supervisor (like conmon), and the on-disk contract it shares with the Runtime.

Forked by the node's fork server (``forkserver.py``) in a session of its own,
or, when that cannot be had, run as ``python -m agent.runtime.shim
<container_state_dir>``, which forks once more so that init adopts it. Either
way killing the agent (even with SIGKILL) never reaches the shim or its
container, and the agent collects no zombie.

The shim

1. writes ``shim.pid``, ignores SIGTERM/SIGINT/SIGHUP (it ends only when its
   container does);
2. ``unshare(CLONE_NEWPID)`` on itself, so its next child is PID 1 of a new
   PID namespace, and forks that child (with ``hostPID`` no new namespace: the
   child is an ordinary process of the node's, and what it leaves behind goes
   with its cgroup);
3. creates the container's cgroup with its limits and moves the child in;
4. the child joins the pod sandbox's network, UTS and IPC namespaces
   (``sandbox.py``; the node's own for hostNetwork and hostIPC), unshares its
   mount namespace and builds the root filesystem (``rootfs.py``), volumes
   bound in, while the shim moves it into the cgroup; then it
   unshares its cgroup namespace, joins the pod's user namespace if it has
   one, points stdout and stderr at two pipes, drops its privileges
   (``security.py``: capabilities, user, no_new_privs, seccomp) and execs the
   command;
5. once the child is in its cgroup, the shim execs ``orch-monitor``
   (``monitor.c``, built by ``monitor.py``) in its own place: same pid, still
   the container's parent, a few pages of memory instead of a Python heap;
6. a CLOEXEC pipe tells the monitor whether the exec happened: EOF means it
   did, and the monitor writes ``started.json``; a line of text is the child's
   error, which becomes ``exit.json`` with ``reason: StartError``. The monitor
   then closes the Runtime's notify pipe, copies the pipes into
   ``container.log`` in the CRI log format (``logs.py``) until the child
   exits, reaps it, writes ``exit.json`` atomically (with the OOM verdict
   from the files ``CgroupDriver.oom_evidence`` names), kills whatever is
   left in the cgroup and exits.

State directory layout (``<state_dir>/containers/<id>/``)::

    config.json     ContainerConfig                       Runtime, before the shim
    runtime.json    cgroup path + cgroup driver spec      Runtime, before the shim
                    + the pod sandbox's namespace files and id map
                    + the orch-monitor binary
                    + the volumes to bind: {source, destination, readOnly}
    rootfs/         empty dir; the container's / is mounted on it in its own mount ns
    shim.pid        pid of the shim                       shim
    shim.log        the shim's own log                    shim (stderr)
    started.json    {"pid", "startedAt", "startTime"}     shim, after exec
    container.log   the container's stdout+stderr, CRI log format, rotated to
                    container.log.1 ... (logs.py)            shim
    exit.json       {"exitCode", "signal", "finishedAt", "reason", "message"}   shim

This module deliberately imports nothing beyond the standard library and the
other kernel layers (no gRPC): it starts once per container and must stay small
and fork-safe. That is also why ``ContainerConfig`` lives here; ``runtime.py``
re-exports it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
import warnings  # noqa: F401 - os.execvpe imports it lazily; after pivot_root no import can succeed
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.runtime import logs as _logs
from agent.runtime import rootfs, security
from agent.runtime import syscalls as sc
from agent.runtime.cgroups import CgroupDriver, Limits, driver_from_spec

__all__ = [
    "DEFAULT_PATH",
    "ContainerConfig",
    "main",
    "proc_start_time",
    "rfc3339",
    "write_json_atomic",
]

log = logging.getLogger("agent.runtime.shim")

# File names in a container's state directory; see the module docstring.
CONFIG_FILE = "config.json"
RUNTIME_FILE = "runtime.json"
ROOTFS_DIR = "rootfs"
SHIM_PID_FILE = "shim.pid"
SHIM_LOG_FILE = "shim.log"
STARTED_FILE = "started.json"
EXIT_FILE = "exit.json"
LOG_FILE = "container.log"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Exit code of a container that never got to exec (as a shell's "command not found").
START_ERROR_EXIT_CODE = 127
#: Signals a container's PID 1 must not inherit as ignored. The shim ignores
#: the first three, and Python itself ignores SIGPIPE and SIGXFSZ; SIG_IGN
#: survives exec(2), so each is reset to SIG_DFL in the child.
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD)


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """Everything needed to run one container; ``config.json`` in its state directory."""

    id: str  # unique container id (hex), also the state-dir name
    pod_uid: str
    pod_namespace: str
    pod_name: str
    name: str  # container name in the pod
    image: str  # "host", or an image from the node's store whose layers are ``layer_dirs``
    argv: list[str]  # command + args already resolved
    env: dict[str, str]
    working_dir: str  # "" means "/"
    hostname: str  # the pod name
    memory_limit_bytes: int | None
    cpu_limit_millis: int | None
    cpu_request_millis: int | None
    pids_limit: int | None
    # Security context (fields with defaults: config.json files written before
    # they existed still load). See security.py for what each one does.
    privileged: bool = False
    allow_privilege_escalation: bool | None = None  # None: no_new_privs (unless CAP_SYS_ADMIN)
    capabilities_add: list[str] = field(default_factory=list)  # "NET_ADMIN", "CAP_NET_ADMIN" or "ALL"
    capabilities_drop: list[str] = field(default_factory=list)
    run_as_user: int | None = None
    run_as_group: int | None = None
    read_only_root_filesystem: bool = False
    seccomp_unconfined: bool = False  # securityContext.seccompProfile.type: Unconfined
    host_users: bool = True  # spec.hostUsers; False: the pod gets its own user namespace
    # The image's unpacked layers, lowest first (empty for "host"); the overlay's lower dirs.
    layer_dirs: list[str] = field(default_factory=list)
    # The node's namespaces the pod shares (spec.hostNetwork, hostPID, hostIPC); with the
    # network namespace also the node's UTS namespace, its hostname, as containerd does.
    host_network: bool = False
    host_pid: bool = False
    host_ipc: bool = False
    node_netns: str = ""  # the node's network namespace file for host_network; "": the runtime's own
    # The container's volumeMounts, each with its volume's source: {"name", "mountPath",
    # "readOnly", and "hostPath": {"path", "type"} or "emptyDir": {"medium", "sizeBytes"}}.
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["argv"] = list(self.argv)
        d["env"] = dict(self.env)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerConfig:
        """Build from a dict; raises ``ValueError`` naming the field on bad input."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        unknown = sorted(set(data) - names)
        missing = sorted(required - set(data))
        if unknown or missing:
            raise ValueError(f"container config: unknown fields {unknown}, missing fields {missing}")
        argv = data["argv"]
        if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("container config: argv must be a non-empty list of strings")
        env = data["env"]
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError("container config: env must map strings to strings")
        for name in ("id", "pod_uid", "pod_namespace", "pod_name", "name", "image", "working_dir", "hostname"):
            if not isinstance(data[name], str):
                raise ValueError(f"container config: {name} must be a string")
        for name in ("memory_limit_bytes", "cpu_limit_millis", "cpu_request_millis", "pids_limit"):
            v = data[name]
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"container config: {name} must be a positive integer or null")
        for name in ("privileged", "read_only_root_filesystem", "seccomp_unconfined", "host_users", "host_network",
                     "host_pid", "host_ipc"):
            if name in data and not isinstance(data[name], bool):
                raise ValueError(f"container config: {name} must be a boolean")
        if data.get("allow_privilege_escalation") not in (None, True, False):
            raise ValueError("container config: allow_privilege_escalation must be a boolean or null")
        for name in ("run_as_user", "run_as_group"):
            v = data.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**32 - 1):
                raise ValueError(f"container config: {name} must be an integer from 0 to 4294967294 or null")
        if not isinstance(data.get("node_netns", ""), str):
            raise ValueError("container config: node_netns must be a string")
        mounts = data.get("volume_mounts", [])
        if not isinstance(mounts, (list, tuple)):
            raise ValueError("container config: volume_mounts must be a list")
        for m in mounts:
            problem = _volume_mount_problem(m)
            if problem:
                raise ValueError(f"container config: volume_mounts: {problem}")
        caps: dict[str, list[str]] = {}
        layers = data.get("layer_dirs", [])
        if not isinstance(layers, (list, tuple)) or not all(isinstance(x, str) and x.startswith("/") for x in layers):
            raise ValueError("container config: layer_dirs must be a list of absolute paths")
        if data["image"] != "host" and not layers:
            raise ValueError(f"container config: image {data['image']!r} has no layer_dirs")
        for name in ("capabilities_add", "capabilities_drop"):
            v = data.get(name, [])
            if not isinstance(v, (list, tuple)) or not all(isinstance(c, str) for c in v):
                raise ValueError(f"container config: {name} must be a list of strings")
            for c in v:
                try:
                    security.capability_name(c)
                except ValueError as e:
                    raise ValueError(f"container config: {name}: {e}") from None
            caps[name] = list(v)
        return cls(**{**data, "argv": list(argv), "env": dict(env), **caps,
                      "volume_mounts": [dict(m) for m in mounts]})

    @classmethod
    def from_json(cls, text: str | bytes) -> ContainerConfig:
        return cls.from_dict(json.loads(text))

    def limits(self) -> Limits:
        return Limits(
            memory_bytes=self.memory_limit_bytes,
            cpu_quota_millis=self.cpu_limit_millis,
            cpu_request_millis=self.cpu_request_millis,
            pids_max=self.pids_limit,
        )

    @property
    def uts_hostname(self) -> str:
        """The hostname the kernel accepts: at most 63 bytes, as the kubelet truncates pod names.

        Gotcha: sethostname(2) refuses more than 64 bytes (EINVAL), and pod
        names may be 253 characters long.
        """
        name = self.hostname[:63].rstrip("-.")
        return name or "localhost"

    def exec_env(self) -> dict[str, str]:
        """The environment the command gets: ``env`` exactly, plus PATH and HOSTNAME when absent."""
        env = dict(self.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOSTNAME", self.uts_hostname)
        return env


def _volume_mount_problem(m: Any) -> str | None:
    """What is wrong with one ``volume_mounts`` entry; None when it is well formed."""
    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        return f"each must be a mapping with a name, got {m!r}"
    where = m.get("mountPath")
    if not isinstance(where, str) or not where.startswith("/") or ".." in where.split("/"):
        return f"{m['name']}: mountPath must be an absolute path without '..', got {where!r}"
    if not isinstance(m.get("readOnly", False), bool):
        return f"{m['name']}: readOnly must be a boolean"
    sources = [k for k in ("hostPath", "emptyDir") if k in m]
    if len(sources) != 1:
        return f"{m['name']}: must have one source, hostPath or emptyDir"
    src = m[sources[0]]
    if sources[0] == "hostPath":
        ok = (isinstance(src, dict) and isinstance(src.get("path"), str) and src["path"].startswith("/")
              and isinstance(src.get("type", ""), str))
        return None if ok else f"{m['name']}: hostPath must have an absolute path and a type"
    size = src.get("sizeBytes") if isinstance(src, dict) else None
    ok = (isinstance(src, dict) and src.get("medium", "") in ("", "Memory")
          and (size is None or (isinstance(size, int) and not isinstance(size, bool) and size > 0)))
    return None if ok else f"{m['name']}: emptyDir must have medium \"\" or \"Memory\" and a positive sizeBytes or none"


# ---------------------------------------------------------------- shared helpers


def rfc3339(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so a reader sees the old file or the whole new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), None if gone.

    Gotcha: field 2 (comm) is in parentheses and may itself contain spaces or
    ')', so split after the *last* ')'.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rfind(b")") + 2:].split()
    # rest[0] is field 3 (state); field 22 is rest[19].
    return int(rest[19])


# ---------------------------------------------------------------- the child


def _child(config: ConfigBundle, error_fd: int, joined_fd: int, stdio: _logs.StdioPipes) -> None:
    """Runs in the forked child (PID 1 of the new PID namespace); never returns.

    The shim moves this process into the container's cgroup while it builds the
    root filesystem (see ``run``); ``joined_fd`` says when that is done.
    """
    step = "start"
    try:
        os.setsid()
        step = "join pod sandbox"
        # Opened now: after pivot_root the sandbox's files are out of sight.
        ns_fds = {kind: os.open(path, os.O_RDONLY | os.O_CLOEXEC) for kind, path in config.namespaces.items()}
        for kind in ("net", "uts", "ipc"):
            if kind in ns_fds:
                sc.setns(ns_fds[kind], _NAMESPACE_FLAGS[kind])
        step = "unshare namespaces"
        own = sc.CLONE_NEWNS
        own |= 0 if "uts" in ns_fds else sc.CLONE_NEWUTS
        own |= 0 if "ipc" in ns_fds else sc.CLONE_NEWIPC
        sc.unshare(own)
        if "uts" not in ns_fds:  # a container started before sandboxes existed
            step = "set hostname"
            sc.sethostname(config.container.uts_hostname)
        step = "open stdin"
        # Opened before pivot_root; stdout and stderr are the shim's log pipes (logs.py).
        null_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        step = "build rootfs"
        c = config.container
        rootfs.enter_rootfs(rootfs.RootfsSpec(
            rootfs=config.dir / ROOTFS_DIR,
            hostname=c.uts_hostname,
            working_dir=c.working_dir or "/",
            privileged=c.privileged,
            read_only=c.read_only_root_filesystem,
            mount_sysfs="net" in ns_fds,
            owner=(config.host_id, config.host_id),
            layers=tuple(c.layer_dirs),
            state_dir=config.dir,
            userns_fd=ns_fds.get("user"),
            mounts=config.mounts,
        ))
        step = "join cgroup"
        if os.read(joined_fd, 1) != b"1":
            os._exit(START_ERROR_EXIT_CODE)  # the shim could not move us; it records why
        os.close(joined_fd)
        # Only now: a cgroup namespace is rooted at the cgroup its creator is in.
        sc.unshare(sc.CLONE_NEWCGROUP)
        if "user" in ns_fds:
            # Last, after everything that needs host root: from here on the
            # process is root only in the pod's user namespace. The mount,
            # PID and cgroup namespaces stay owned by the host's, so even the
            # container's root cannot change its mounts.
            step = "join user namespace"
            sc.setns(ns_fds["user"], sc.CLONE_NEWUSER)
        step = "exec"
        env = config.container.exec_env()
        argv = config.container.argv
        os.dup2(null_fd, 0)
        os.dup2(stdio.stdout_w, 1)
        os.dup2(stdio.stderr_w, 2)
        for sig in _RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        step = "restrict privileges"
        security.restrict_current_process(config.container)
        step = "exec"
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            raise OSError(e.errno, f"exec {argv[0]!r}: {e.strerror}") from None
    except BaseException as e:  # noqa: BLE001 - anything before exec is a start error
        msg = f"{step}: {e}".replace("\n", " ")
        try:
            os.write(error_fd, msg.encode(errors="replace")[:4000] + b"\n")
        finally:
            os._exit(START_ERROR_EXIT_CODE)
    os._exit(START_ERROR_EXIT_CODE)  # unreachable: exec replaced us


# ---------------------------------------------------------------- the shim


_NAMESPACE_FLAGS = {"user": sc.CLONE_NEWUSER, "net": sc.CLONE_NEWNET, "uts": sc.CLONE_NEWUTS,
                    "ipc": sc.CLONE_NEWIPC}


@dataclass(frozen=True, slots=True)
class ConfigBundle:
    dir: Path
    container: ContainerConfig
    cgroup: str
    driver: CgroupDriver
    monitor: str  # the orch-monitor binary (monitor.py)
    namespaces: dict[str, str] = field(default_factory=dict)  # kind -> nsfs file of the pod sandbox
    host_id: int = 0  # host uid/gid of the container's root (0 without a user namespace)
    mounts: tuple[rootfs.BindMount, ...] = ()  # the volumes, as the Runtime resolved them


def _load(state_dir: Path) -> ConfigBundle:
    container = ContainerConfig.from_json((state_dir / CONFIG_FILE).read_text())
    runtime = json.loads((state_dir / RUNTIME_FILE).read_text())
    sandbox = runtime.get("sandbox") or {}
    namespaces = {k: str(v) for k, v in (sandbox.get("namespaces") or {}).items() if k in _NAMESPACE_FLAGS}
    idmap = sandbox.get("idmap")
    return ConfigBundle(
        dir=state_dir,
        container=container,
        cgroup=runtime["cgroup"],
        driver=driver_from_spec(runtime.get("driver")),
        monitor=runtime["monitor"],
        namespaces=namespaces,
        host_id=int(idmap["hostID"]) if idmap else 0,
        mounts=tuple(rootfs.BindMount(str(m["source"]), str(m["destination"]), bool(m.get("readOnly", False)))
                     for m in runtime.get("mounts") or ()),
    )


def _write_start_error(state_dir: Path, message: str) -> None:
    """A start that failed before orch-monitor took over (which records the later ones itself)."""
    write_json_atomic(state_dir / EXIT_FILE, {
        "exitCode": START_ERROR_EXIT_CODE,
        "signal": None,
        "finishedAt": rfc3339(),
        "reason": "StartError",
        "message": message,
    })


def run(state_dir: Path, notify_fd: int | None = None) -> int:
    """The shim proper, after daemonizing. Returns the shim's own exit status.

    ``notify_fd``, the write end of the Runtime's pipe, closes (the Runtime sees
    EOF) once the container has started (``started.json`` written) or failed
    to (``exit.json`` written): the monitor closes it, or this process's exit.
    """
    if notify_fd is not None:
        os.set_inheritable(notify_fd, False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    # The pid, and its kernel start time so a recycled pid is never taken for this shim
    # (a shim forked by the fork server has the fork server's command line, so that can't tell).
    write_text_atomic(state_dir / SHIM_PID_FILE, f"{os.getpid()} {proc_start_time(os.getpid())}\n")
    try:
        bundle = _load(state_dir)
    except Exception as e:  # noqa: BLE001 - a broken state dir is a start error, not a crash
        log.error("container state %s: cannot load: %s", state_dir, e)
        _write_start_error(state_dir, f"load config: {e}")
        return 1
    cid = bundle.container.id
    try:
        # From here the shim must fork exactly once: the first child is the
        # namespace's PID 1, and after it dies no fork in this namespace works.
        # hostPID: the child stays in the node's PID namespace, no PID 1 of its own;
        # what it leaves behind when it exits goes with its cgroup (orch-monitor).
        if not bundle.container.host_pid:
            sc.unshare(sc.CLONE_NEWPID)
    except OSError as e:
        log.error("container %s: setup failed: %s", cid, e)
        _write_start_error(state_dir, f"setup: {e}")
        return 1

    err_r, err_w = os.pipe()  # both ends O_CLOEXEC (PEP 446): exec closes the child's copy
    joined_r, joined_w = os.pipe()
    stdio = _logs.StdioPipes.open()  # the container's stdout and stderr, read by orch-monitor
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        os.close(joined_w)
        _child(bundle, err_w, joined_r, stdio)
    os.close(err_w)
    os.close(joined_r)
    stdio.close_child_ends()
    # The child builds its root filesystem meanwhile, while this process makes the
    # cgroup and moves the child in. Gotcha: a write to cgroup.procs on v1 waits for
    # an RCU grace period (about 10 ms here, cgroup_threadgroup_rwsem), the largest
    # single cost of a start; done here, it overlaps the child's mounts.
    step = "create cgroup"
    try:
        bundle.driver.create(bundle.cgroup, bundle.container.limits())
        step = "join cgroup"
        bundle.driver.add_pid(bundle.cgroup, pid)
        os.write(joined_w, b"1")
    except (OSError, ValueError) as e:
        os.close(joined_w)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        log.error("container %s: start failed: %s: %s", cid, step, e)
        _write_start_error(state_dir, f"{step}: {e}")
        _kill_leftovers(bundle)
        return 0
    os.close(joined_w)

    # From here orch-monitor (monitor.c) takes this process's place, while the child
    # still builds the container: it reads the child's error pipe (EOF: the exec
    # happened, started.json; text: exit.json with reason StartError), closes the
    # notify pipe, copies the output into the CRI log, reaps the container and
    # writes exit.json after the log's last write.
    try:
        _exec_monitor(bundle, pid, stdio, err_r, notify_fd)
    except OSError as e:
        # Nobody would read the container's pipes or its exit: end it now.
        log.error("container %s: cannot exec the monitor %s: %s", cid, bundle.monitor, e)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _write_start_error(state_dir, f"exec monitor {bundle.monitor}: {e.strerror}")
        _kill_leftovers(bundle)
    return 0


def _exec_monitor(bundle: ConfigBundle, pid: int, stdio: _logs.StdioPipes, error_fd: int,
                  notify_fd: int | None) -> None:
    """Become orch-monitor (monitor.c): it sees the container start, logs its output, records its exit."""
    policy = _logs.LogPolicy.from_env()
    oom = bundle.driver.oom_evidence(bundle.cgroup)
    argv = [bundle.monitor, "--pid", str(pid), "--stdout", str(stdio.stdout_r), "--stderr", str(stdio.stderr_r),
            "--log", str(bundle.dir / LOG_FILE), "--log-max-size", str(policy.max_size),
            "--log-max-files", str(policy.max_files), "--exit-file", str(bundle.dir / EXIT_FILE),
            "--error-fd", str(error_fd), "--started-file", str(bundle.dir / STARTED_FILE),
            "--oom-events", str(oom.events)]
    passed = [stdio.stdout_r, stdio.stderr_r, error_fd]
    if notify_fd is not None:
        argv += ["--notify-fd", str(notify_fd)]
        passed.append(notify_fd)
    if oom.failcnt is not None:
        argv += ["--oom-failcnt", str(oom.failcnt)]
    for d in bundle.driver.dirs(bundle.cgroup):
        argv += ["--cgroup", str(d)]
    kill_file = bundle.driver.kill_file(bundle.cgroup)
    if kill_file is not None:
        argv += ["--cgroup-kill", str(kill_file)]
    for fd in passed:
        os.set_inheritable(fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(bundle.monitor, argv)


def _kill_leftovers(bundle: ConfigBundle) -> None:
    # PID 1 exiting already took its namespace down; this catches anything
    # that got into the cgroup some other way.
    try:
        bundle.driver.kill_all(bundle.cgroup)
    except OSError as e:
        log.warning("container %s: killing leftovers in %s: %s", bundle.container.id, bundle.cgroup, e)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-"):
        print("usage: python -m agent.runtime.shim <container_state_dir> [--foreground] [--notify-fd FD]",
              file=sys.stderr)
        return 2
    state_dir = Path(args[0]).resolve()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s shim[%(process)d] {state_dir.name}: %(levelname)s %(message)s")
    # Second fork: the process the Runtime started exits now (the Runtime
    # reaps it), the shim carries on as an orphan adopted by init.
    notify_fd = int(args[args.index("--notify-fd") + 1]) if "--notify-fd" in args else None
    if "--foreground" not in args and os.fork() > 0:
        os._exit(0)
    try:
        return run(state_dir, notify_fd)
    except BaseException:
        log.error("shim crashed:\n%s", traceback.format_exc())
        raise


if __name__ == "__main__":
    sys.exit(main())
