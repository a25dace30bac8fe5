"""The shim fork server: one small process per node from which every shim is forked.

A shim started as a fresh interpreter spends tens of milliseconds importing its
code before it can set a container up; forked from a parent that has imported
it already (and compiled Docker's seccomp filter), it starts at once. Each
container still has its own supervisor: the shim sets the container up and
then execs ``orch-monitor`` (``monitor.c``), which owns the container's
process, exit status and log. The fork server only makes shims (and reaps
them), and once made a shim depends on it no more: it runs in a session of its
own, and if the fork server dies, init adopts it. The Runtime then starts
another fork server; running containers never notice.

Protocol, on a Unix socket (``<state_dir>/forkserver.sock``), one request per
connection: the client sends a JSON line ``{"dir": "<container state dir>"}``, with
the write end of a pipe attached (SCM_RIGHTS) that the shim holds until the
container has started or failed to; the server forks the shim and answers
``{"pid": <the shim's pid>}``. ``{"sandbox": {"dir",
"hostname", "idmap", "host"}}`` makes a pod's namespaces (sandbox.create_namespaces): they
need a fork too, and the agent, with gRPC's threads running, must not fork. ``{"hello": true}``
answers with the server's pid and the fingerprint of the code it loaded, so a
Runtime replaces a fork server left running by an older version.

    python -m agent.runtime.forkserver <socket path>
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path

from agent.runtime import sandbox as _sandbox
from agent.runtime import seccomp as _seccomp
from agent.runtime import security as _security
from agent.runtime import shim as _shim

RUNTIME_DIR = Path(__file__).resolve().parent


def code_fingerprint() -> str:
    """A hash of the runtime's source files: a fork server with another one is stale."""
    h = hashlib.sha256()
    for path in sorted(RUNTIME_DIR.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


#: Shims forked and not yet reaped (they live as long as their containers).
_shims: set[int] = set()


def _reap_shims(_signum: int = 0, _frame: object = None) -> None:
    """SIGCHLD: reap the shims (monitors by then) whose containers have ended.

    Only our shims: the sandbox code waits for its own children itself.
    """
    for pid in list(_shims):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _shims.discard(pid)


def _spawn_shim(container_dir: Path, notify_fd: int | None) -> int:
    """Fork the shim, in a session of its own; returns its pid.

    ``notify_fd`` (from the client) goes to the shim, which holds it until the
    container has started or failed to (``shim.run``). If this server dies, its
    shims are adopted by init and carry on.
    """
    pid = os.fork()
    if pid == 0:  # the shim
        try:
            os.setsid()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            null = os.open(os.devnull, os.O_RDONLY)
            log = os.open(container_dir / _shim.SHIM_LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            args = [str(container_dir), "--foreground"]
            if notify_fd is not None:
                os.dup2(notify_fd, 3)
                args += ["--notify-fd", "3"]
            os.closerange(4 if notify_fd is not None else 3, 65536)
            os.chdir("/")
            code = _shim.main(args)
        except BaseException:  # noqa: BLE001 - nothing may unwind into the fork server's loop
            traceback.print_exc()
            code = 127
        # os._exit skips Python's shutdown, so flush what the shim wrote to its log.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _shims.add(pid)
    return pid


def _make_sandbox(request: dict[str, object]) -> dict[str, object]:
    """Make a pod's namespaces here, where forking is safe (one thread, no gRPC)."""
    idmap = request.get("idmap")
    host = request.get("host")
    try:
        _sandbox.create_namespaces(
            Path(str(request["dir"])), str(request["hostname"]),
            _sandbox.IdMap(int(idmap["host_id"]), int(idmap["size"])) if isinstance(idmap, dict) else None,
            {str(k): str(v) for k, v in host.items()} if isinstance(host, dict) else None)
    except OSError as e:
        return {"error": str(e), "errno": e.errno or 0}
    return {"ok": True}


def serve(sock_path: Path) -> None:
    fingerprint = code_fingerprint()
    sock_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    os.chmod(sock_path, 0o600)
    listener.listen(64)
    # Docker's default seccomp filter, compiled once here (libseccomp takes ~18 ms) and
    # inherited, ready to install, by every shim and container child.
    _seccomp.compiled(_seccomp.DEFAULT_PROFILE, _security.DEFAULT_CAPABILITIES)
    # Everything imported so far is shared with every shim; keep the collector from
    # writing to those objects (and so copying their pages) in the children.
    gc.freeze()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, _reap_shims)
    while True:
        conn, _ = listener.accept()
        fds: list[int] = []
        with conn:
            try:
                line, fds = _receive(conn)
                request = json.loads(line or b"{}")
                if request.get("hello"):
                    reply = {"pid": os.getpid(), "fingerprint": fingerprint}
                elif "sandbox" in request:
                    reply = _make_sandbox(request["sandbox"])
                else:
                    container_dir = Path(request["dir"])
                    if not (container_dir / _shim.CONFIG_FILE).is_file():
                        reply = {"error": f"no container config in {container_dir}"}
                    else:
                        reply = {"pid": _spawn_shim(container_dir, fds[0] if fds else None)}
            except (OSError, ValueError, KeyError) as e:
                reply = {"error": f"{type(e).__name__}: {e}"}
            finally:
                for fd in fds:
                    os.close(fd)
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass  # the client gave up; the shim (if any) runs regardless


def _receive(conn: socket.socket) -> tuple[bytes, list[int]]:
    """One request line and the descriptors sent with it (SCM_RIGHTS)."""
    data, fds = b"", []
    while not data.endswith(b"\n"):
        chunk, more, _flags, _addr = socket.recv_fds(conn, 65536, 4)
        fds += more
        if not chunk:
            break
        data += chunk
    return data, fds


def request(sock_path: Path, payload: dict[str, object], timeout: float,
            fds: list[int] | None = None) -> dict[str, object]:
    """One request to the fork server at ``sock_path``, with ``fds`` passed along; OSError when
    it is not there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        socket.send_fds(s, [json.dumps(payload).encode() + b"\n"], fds or [])
        line = s.makefile("rb").readline()
    if not line:
        raise ConnectionError(f"fork server at {sock_path} closed the connection")
    reply: dict[str, object] = json.loads(line)
    return reply


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m agent.runtime.forkserver <socket path>", file=sys.stderr)
        return 2
    serve(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
