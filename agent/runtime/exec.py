"""Exec: run a command inside a running container, as ``runc exec`` does.

Run as a short-lived helper process, never in the agent itself (setns on a
multi-threaded process fails for the user and mount namespaces and would move
one agent thread into the container)::

    python -m agent.runtime.exec <container_state_dir> [--tty] [--status-fd N] -- CMD [ARG...]

Its stdin, stdout and stderr become the command's. Step by step:

1. read the container from its state directory (``started.json``: PID 1's pid
   and start time; ``runtime.json``: the cgroup and its driver;
   ``config.json``: env, working dir, security settings) and refuse unless it
   runs (no ``exit.json``, the pid alive with the recorded start time);
2. open ``/proc/<pid>/ns/*`` of every namespace in which the container differs
   from us, ``/proc/<pid>/root``, and ``cgroup.procs`` of the container's
   cgroup in every controller, then check the start time again: the open
   descriptors pin that very process's namespaces, so a recycled pid cannot
   slip in between;
3. ``setns`` into the PID namespace (it only applies to children) and fork:
   the child is a process of the container's PID namespace, not its PID 1;
4. the child joins the container's cgroup (writes ``0`` to each
   ``cgroup.procs``, before any namespace hides the host's cgroupfs and before
   the cgroup namespace would forbid the move), then ``setns`` into ipc, uts,
   net, cgroup and mnt, and into the user namespace last when the container
   has one (see ``NAMESPACES``). After ``setns(mnt)`` the root is the
   container's; ``fchdir`` to PID 1's root and ``chroot(".")`` make it exactly
   that process's root; then ``chdir`` into the working directory;
5. the child applies the container's restrictions
   (``security.restrict_current_process``: capabilities, user, no_new_privs,
   seccomp), sets the container's environment, and execs. It dies with the
   helper (``PR_SET_PDEATHSIG``), so killing the helper ends the exec;
6. the helper waits and exits with the command's code (128+N for signal N).
   With ``--status-fd`` it also writes one JSON line there: ``{"exitCode": N}``,
   plus ``"error"`` when the command never ran (127: not found, 126: anything
   else), so the caller can tell a failed exec from a command that failed.

The helper itself stays in the host's namespaces and cgroup: only the forked
child is charged to the container.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import traceback
import warnings  # noqa: F401 - os.execvpe imports it lazily; inside the container no import can succeed
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtime import syscalls as sc
from agent.runtime.cgroups import driver_from_spec
from agent.runtime.shim import (
    CONFIG_FILE,
    EXIT_FILE,
    RUNTIME_FILE,
    STARTED_FILE,
    ContainerConfig,
    proc_start_time,
)

__all__ = [
    "EXIT_CANNOT_EXEC",
    "EXIT_NOT_FOUND",
    "ExecError",
    "ExecTarget",
    "exec_sync",
    "helper_argv",
    "load_target",
    "main",
]

#: Exit codes of a command that never ran, as a shell reports them.
EXIT_NOT_FOUND = 127
EXIT_CANNOT_EXEC = 126

#: Namespaces joined, in order. The user namespace comes last, unlike runc's
#: (unprivileged) order: a container's namespaces may be owned by different user
#: namespaces (the pod sandbox's are made inside the pod's user namespace, the
#: shim's cgroup namespace outside it), and setns needs CAP_SYS_ADMIN over each
#: one's owner. Host root has that over every user namespace, the container's
#: root only over its own; so everything is joined while we are host root.
NAMESPACES = (
    ("ipc", sc.CLONE_NEWIPC),
    ("uts", sc.CLONE_NEWUTS),
    ("net", sc.CLONE_NEWNET),
    ("cgroup", sc.CLONE_NEWCGROUP),
    ("mnt", sc.CLONE_NEWNS),
    ("user", sc.CLONE_NEWUSER),
)
PR_SET_PDEATHSIG = 1
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ExecError(Exception):
    """The command cannot be run in the container; ``exit_code`` is what to report (126 or 127)."""

    def __init__(self, message: str, exit_code: int = EXIT_CANNOT_EXEC) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class ExecTarget:
    """A running container, as exec needs it."""

    dir: Path
    config: ContainerConfig
    pid: int
    start_time: int
    cgroup: str
    driver_spec: dict[str, Any] | None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ExecError(f"unreadable {path.name}: {e}") from e
    return data if isinstance(data, dict) else None


def load_target(container_dir: Path) -> ExecTarget:
    """The container in ``container_dir`` if it runs; ``ExecError`` saying why not otherwise."""
    d = Path(container_dir)
    try:
        config = ContainerConfig.from_json((d / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise ExecError(f"container {d.name} not found") from None
    except (OSError, ValueError) as e:
        raise ExecError(f"container {d.name}: unreadable config: {e}") from e
    started = _read_json(d / STARTED_FILE)
    if started is None:
        raise ExecError(f"container {config.name} has not started")
    if (d / EXIT_FILE).exists():
        raise ExecError(f"container {config.name} is not running")
    pid, start_time = started.get("pid"), started.get("startTime")
    if not isinstance(pid, int) or not isinstance(start_time, int) or proc_start_time(pid) != start_time:
        raise ExecError(f"container {config.name} is not running")
    info = _read_json(d / RUNTIME_FILE) or {}
    cgroup = info.get("cgroup")
    if not isinstance(cgroup, str) or not cgroup:
        raise ExecError(f"container {config.name}: no cgroup recorded in {RUNTIME_FILE}")
    return ExecTarget(d, config, pid, start_time, cgroup, info.get("driver"))


# ---------------------------------------------------------------- restrictions


def _restrictor() -> Callable[[ContainerConfig], None]:
    """``security.restrict_current_process``, imported now, while the host's Python is in view.

    Without that module, at least ``no_new_privs``: no setuid binary in the
    container can then raise the command's privileges.
    """
    try:
        from agent.runtime.security import restrict_current_process
    except ImportError:
        def restrict_current_process(config: ContainerConfig) -> None:
            sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    return restrict_current_process


# ---------------------------------------------------------------- the helper


@dataclass(slots=True)
class _Joined:
    """Descriptors opened in the host's view, used after the fork."""

    namespaces: list[tuple[str, int, int]]  # (name, CLONE_* flag, fd), in join order
    pid_ns: int | None
    root: int
    cgroup_procs: list[int]

    def close(self) -> None:
        for fd in [f for _, _, f in self.namespaces] + [self.root, *self.cgroup_procs] + (
                [self.pid_ns] if self.pid_ns is not None else []):
            with contextlib.suppress(OSError):
                os.close(fd)


def _same_namespace(pid: int, name: str) -> bool:
    a, b = os.stat(f"/proc/{pid}/ns/{name}"), os.stat(f"/proc/self/ns/{name}")
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _open_target(target: ExecTarget) -> _Joined:
    flags = os.O_RDONLY | os.O_CLOEXEC
    namespaces: list[tuple[str, int, int]] = []
    opened: list[int] = []
    try:
        for name, flag in NAMESPACES:
            if os.path.exists(f"/proc/{target.pid}/ns/{name}") and not _same_namespace(target.pid, name):
                fd = os.open(f"/proc/{target.pid}/ns/{name}", flags)
                opened.append(fd)
                namespaces.append((name, flag, fd))
        pid_ns = None
        if not _same_namespace(target.pid, "pid"):
            pid_ns = os.open(f"/proc/{target.pid}/ns/pid", flags)
            opened.append(pid_ns)
        root = os.open(f"/proc/{target.pid}/root", flags | os.O_DIRECTORY)
        opened.append(root)
        driver = driver_from_spec(target.driver_spec)
        procs = []
        for d in dict.fromkeys(driver.paths(target.cgroup).values()):
            fd = os.open(Path(d) / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
            opened.append(fd)
            procs.append(fd)
    except OSError as e:
        for fd in opened:
            os.close(fd)
        if proc_start_time(target.pid) != target.start_time:
            raise ExecError(f"container {target.config.name} is not running") from e
        raise ExecError(f"open the container's namespaces and cgroup: {e}") from e
    joined = _Joined(namespaces, pid_ns, root, procs)
    # The descriptors now pin what they refer to; if PID 1 is still the same
    # process, they are the container's.
    if proc_start_time(target.pid) != target.start_time:
        joined.close()
        raise ExecError(f"container {target.config.name} is not running")
    return joined


def _child(target: ExecTarget, joined: _Joined, argv: list[str], tty: bool, error_fd: int,
           restrict: Callable[[ContainerConfig], None], helper: int) -> None:
    """The forked child, a process of the container's PID namespace; execs or exits 126/127."""
    step = "start"
    try:
        # Die with the helper: a caller that gives up kills the helper, and with it the command.
        sc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() not in (0, helper):
            # getppid() is 0 while the helper (outside our PID namespace) lives;
            # anything else: it died before the prctl, and we were re-parented.
            os._exit(EXIT_CANNOT_EXEC)
        step = "join cgroup"
        for fd in joined.cgroup_procs:
            os.write(fd, b"0")
        joined_user = False
        for name, flag, fd in joined.namespaces:
            step = f"join {name} namespace"
            sc.setns(fd, flag)
            joined_user = joined_user or name == "user"
        step = "enter root"
        os.fchdir(joined.root)
        os.chroot(".")
        step = "enter working directory"
        os.chdir(target.config.working_dir or "/")
        if tty:
            step = "set controlling terminal"
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        step = "apply restrictions"
        if joined_user:
            # A new user namespace's root: as the container's own root, not the
            # overflow uid our host root maps to (restrict() may switch again).
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        restrict(target.config)
        step = "exec"
        env = target.config.exec_env()
        if tty:
            env.setdefault("TERM", "xterm")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ,
                    signal.SIGCHLD, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            code = EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_CANNOT_EXEC
            what = "executable file not found in $PATH" if code == EXIT_NOT_FOUND and "/" not in argv[0] \
                else e.strerror
            os.write(error_fd, f"{code} exec {argv[0]!r}: {what}".encode()[:4000])
            os._exit(code)
    except BaseException as e:  # noqa: BLE001 - anything before exec is a failure to exec
        try:
            os.write(error_fd, f"{EXIT_CANNOT_EXEC} {step}: {e}".replace("\n", " ").encode()[:4000])
        finally:
            os._exit(EXIT_CANNOT_EXEC)
    os._exit(EXIT_CANNOT_EXEC)  # unreachable


def run(container_dir: Path, argv: list[str], *, tty: bool = False) -> tuple[int, str | None]:
    """Run ``argv`` in the container; (exit code, error when the command never ran)."""
    if not argv:
        return EXIT_CANNOT_EXEC, "no command given"
    try:
        target = load_target(container_dir)
        restrict = _restrictor()
        joined = _open_target(target)
    except ExecError as e:
        return e.exit_code, str(e)
    try:
        if joined.pid_ns is not None:
            sc.setns(joined.pid_ns, sc.CLONE_NEWPID)  # for our children only
    except OSError as e:
        joined.close()
        return EXIT_CANNOT_EXEC, f"join pid namespace: {e}"
    err_r, err_w = os.pipe()  # O_CLOEXEC: exec closes the child's end, EOF says it happened
    helper = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        _child(target, joined, argv, tty, err_w, restrict, helper)
    os.close(err_w)
    joined.close()
    # Forward the polite signals; SIGKILL of the helper reaches the child through PDEATHSIG.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: _forward(pid, s))
    chunks = []
    while chunk := os.read(err_r, 4096):
        chunks.append(chunk)
    os.close(err_r)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    error = b"".join(chunks).decode(errors="replace")
    if error:
        code_text, _, message = error.partition(" ")
        return int(code_text) if code_text.isdigit() else EXIT_CANNOT_EXEC, message
    code = os.waitstatus_to_exitcode(status)
    return (128 - code if code < 0 else code), None


def _forward(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    usage = "usage: python -m agent.runtime.exec <container_state_dir> [--tty] [--status-fd N] -- CMD [ARG...]"
    if "--" not in args or not args or args[0].startswith("-"):
        print(usage, file=sys.stderr)
        return 2
    sep = args.index("--")
    opts, argv = args[1:sep], args[sep + 1:]
    tty = "--tty" in opts
    status_fd: int | None = None
    if "--status-fd" in opts:
        try:
            status_fd = int(opts[opts.index("--status-fd") + 1])
            # The command must not inherit it: a reader waiting for its EOF would
            # wait for every background process the command leaves behind.
            os.set_inheritable(status_fd, False)
        except (IndexError, ValueError, OSError):
            print(usage, file=sys.stderr)
            return 2
    try:
        code, error = run(Path(args[0]), argv, tty=tty)
    except Exception as e:  # noqa: BLE001 - say what broke; the caller only sees the status
        code, error = EXIT_CANNOT_EXEC, f"exec helper crashed: {e}"
        traceback.print_exc()
    if status_fd is not None:
        with contextlib.suppress(OSError):
            os.write(status_fd, (json.dumps({"exitCode": code, "error": error}) + "\n").encode())
    elif error:
        print(f"error: {error}", file=sys.stderr)
    return code


# ---------------------------------------------------------------- for callers


def helper_argv(container_dir: Path, argv: list[str], *, tty: bool = False,
                status_fd: int | None = None) -> list[str]:
    """The command line of the helper process."""
    opts = ["--tty"] if tty else []
    if status_fd is not None:
        opts += ["--status-fd", str(status_fd)]
    return [sys.executable, "-m", "agent.runtime.exec", str(container_dir), *opts, "--", *argv]


def helper_env() -> dict[str, str]:
    """The helper's environment: ours, with the project importable (as the Runtime does for shims)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def exec_sync(container_dir: Path, argv: list[str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` in the container and wait: (exit code, stdout and stderr together), for exec probes.

    Raises ``TimeoutError`` after ``timeout`` seconds (the command is killed)
    and ``OSError`` when the command could not be run at all.
    """
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(helper_argv(container_dir, argv, status_fd=w), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(w,),
                                start_new_session=True, cwd="/", env=helper_env())
    finally:
        os.close(w)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # the command follows through PR_SET_PDEATHSIG
        proc.communicate()
        os.close(r)
        raise TimeoutError(f"command timed out after {timeout:g}s") from None
    with os.fdopen(r, "rb") as f:
        status = f.read()
    try:
        result = json.loads(status)
    except ValueError:
        raise OSError(errno.EIO, f"exec helper ended without a result (status {proc.returncode})") from None
    if result.get("error"):
        raise OSError(errno.ENOENT if result["exitCode"] == EXIT_NOT_FOUND else errno.EPERM, result["error"])
    return int(result["exitCode"]), output.decode(errors="replace")


if __name__ == "__main__":
    sys.exit(main())
