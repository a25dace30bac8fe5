"""The agent's own gRPC API, ``NodeAgent`` (proto/agent.proto): container logs and exec.

Schedulers dial it to serve ``orchctl logs`` and ``orchctl exec`` (kube-apiserver
proxies to the kubelet the same way). The agent listens on ``--listen`` (by
default a free port on loopback) and reports the address when it registers.

* **Which container.** ``select_container`` (pure) picks the instance from the
  runtime's containers on disk and the pods the agent knows (assignments and
  its own records), with kubelet's rules: the current instance, or with
  ``previous`` the one before it (a container waiting to restart: its last
  exit). A pod re-created under the same name is told apart by its uid.
* **Logs.** ``logs.read_logs`` runs in a thread per stream (it blocks while
  following); its lines are batched into ``LogChunk`` messages. Back-pressure:
  at most ``LOG_QUEUE`` lines wait for a slow caller, then the reader waits.
  A caller that goes away stops the thread.
* **Exec.** Each exec is a helper process (``agent/runtime/exec.py``) that joins
  the container's namespaces and cgroup in a forked child; the agent never
  calls setns itself. Its stdio are pipes, or a pseudo-terminal with ``tty``;
  a status pipe tells an exit code from a failure to run the command. A caller
  that goes away kills the helper, and the command with it.

**Who may call.** With the node's certificate (``NodeConfig.tls``) the API is mutual TLS and
admits the scheduler's identity only (``SchedulerOnly``): PERMISSION_DENIED for anyone else,
another node included.

Errors carry gRPC codes: NOT_FOUND (pod or container unknown here),
FAILED_PRECONDITION (nothing to show or to exec into yet, or any more),
INVALID_ARGUMENT (a malformed request).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import inspect
import json
import logging
import os
import signal
import struct
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from agent.reconcile import instances, wants_restart
from agent.runtime import exec as rexec
from agent.runtime.logs import LogLine, read_logs
from agent.runtime.runtime import ContainerState, ContainerStatus
from apimachinery import pki
from apimachinery.errors import FieldError, NotFoundError, OrchError, PreconditionError, ValidationError
from apimachinery.execstream import exec_start
from apimachinery.meta import Obj
from apimachinery.pb import agent_pb2 as pb
from apimachinery.pb import agent_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from agent.agent import Agent

log = logging.getLogger(__name__)

#: Log lines read ahead of a slow caller.
LOG_QUEUE = 1024
#: Most entries in one LogChunk.
LOG_BATCH = 512
#: After an exec's command has exited, how long its output may still arrive
#: (a background process of it may hold the pipes open).
EXEC_DRAIN = 1.0
READ_SIZE = 64 * 1024


# --- which container ---------------------------------------------------------


def _matches(obj: Obj, namespace: str, name: str) -> bool:
    md = obj.get("metadata") or {}
    return md.get("namespace") == namespace and md.get("name") == name


def select_container(states: Iterable[ContainerState], pods: dict[str, Obj], *, namespace: str, pod: str,
                     container: str, pod_uid: str = "", previous: bool = False) -> ContainerState:
    """The container instance a logs or exec request means; raises NotFound/Precondition/ValidationError.

    ``pods`` maps uid to the pod objects this node knows (assignments first,
    then records); ``states`` are the runtime's containers.
    """
    states = list(states)
    uids_known = [uid for uid, p in pods.items() if _matches(p, namespace, pod)]
    uids_running = {s.config.pod_uid for s in states
                    if s.config.pod_namespace == namespace and s.config.pod_name == pod}
    if pod_uid:
        if pod_uid not in uids_known and pod_uid not in uids_running:
            raise NotFoundError(f'pods "{pod}" not found on this node')
        uid = pod_uid
    else:
        live = [u for u in uids_known if not (pods[u].get("metadata") or {}).get("deletionTimestamp")]
        candidates = live or uids_known or sorted(uids_running)
        if not candidates:
            raise NotFoundError(f'pods "{pod}" not found on this node')
        uid = candidates[0]
    mine = [s for s in states if s.config.pod_uid == uid]
    obj = pods.get(uid)
    if obj is not None:
        names = [str(c.get("name")) for c in (obj.get("spec") or {}).get("containers") or []]
        policy = str((obj.get("spec") or {}).get("restartPolicy") or "Always")
    else:
        names = sorted({s.config.name for s in mine})
        policy = "Always"
    if not container:
        if len(names) != 1:
            raise ValidationError(FieldError("", f"a container name must be specified for pod {pod}, "
                                                 f"choose one of: [{' '.join(names)}]"))
        container = names[0]
    if container not in names:
        raise NotFoundError(f"container {container} is not valid for pod {pod}")
    insts = instances(mine, container)
    current = insts[-1] if insts else None
    if previous:
        if current is not None and current.status is ContainerStatus.EXITED \
                and wants_restart(policy, current.exit_code):
            return current  # waiting to restart: its last exit is the previous instance
        if len(insts) >= 2:
            return insts[-2]
        raise PreconditionError(f'previous terminated container "{container}" in pod "{pod}" not found')
    if current is None:
        raise PreconditionError(f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating')
    return current


# --- the service ----------------------------------------------------------------


_END = object()


#: The largest image archive an agent accepts in one import.
MAX_IMAGE_UPLOAD = 8 * 1024**3


class NodeAgentService(pb_grpc.NodeAgentServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="agent-api")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _select(self, namespace: str, pod: str, container: str, pod_uid: str,
                      previous: bool) -> ContainerState:
        if not namespace or not pod:
            raise ValidationError(FieldError("", "namespace and pod are required"))
        states = await asyncio.get_running_loop().run_in_executor(self._pool, self.agent.runtime.list)
        pods: dict[str, Obj] = {uid: r.pod for uid, r in self.agent.records.items()}
        pods.update(self.agent.desired)
        return select_container(states, pods, namespace=namespace, pod=pod, container=container,
                                pod_uid=pod_uid, previous=previous)

    # --- images -------------------------------------------------------------

    async def ImportImage(self, request_iterator: AsyncIterator[pb.ImageChunk],
                          context: grpc.aio.ServicerContext) -> pb.ImportImageReply:
        """Receive an image archive into a temporary file, then import it (verified, all or nothing)."""
        store = self.agent.images
        tmp_dir = store.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".tar", dir=tmp_dir)
        reference = ""
        try:
            with os.fdopen(fd, "wb") as out:
                size = 0
                async for chunk in request_iterator:
                    reference = reference or chunk.reference
                    size += len(chunk.data)
                    if size > MAX_IMAGE_UPLOAD:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            f"image archive larger than {MAX_IMAGE_UPLOAD} bytes")
                    out.write(chunk.data)
            try:
                refs = await asyncio.get_running_loop().run_in_executor(
                    self._pool, lambda: store.import_archive(name, reference=reference or None))
            except (OrchError, OSError, ValueError) as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"node {self.agent.config.name}: {e}")
            log.info("node %s: imported %s", self.agent.config.name, ", ".join(r.reference for r in refs))
            return pb.ImportImageReply(node=self.agent.config.name, images=[
                pb.ImportedImage(reference=r.reference, digest=r.digest) for r in refs])
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    # --- usage (orchctl top) ---------------------------------------------------

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsReply:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.stats)

    def stats(self) -> pb.StatsReply:
        """Every running container's CPU time and working set, and the node cgroup's, read now
        from the cgroups (blocking: run in the pool)."""
        runtime = self.agent.runtime
        reply = pb.StatsReply(node=self.agent.config.name, timestamp=time.time())
        for st in runtime.list():
            if st.status != ContainerStatus.RUNNING:
                continue
            usage = runtime.driver.stats(st.cgroup)
            if usage.cpu_usage_seconds is None and usage.memory_working_set_bytes is None:
                continue  # its cgroup went away meanwhile
            cfg = st.config
            reply.containers.append(pb.ContainerStats(
                namespace=cfg.pod_namespace, pod=cfg.pod_name, pod_uid=cfg.pod_uid, container=cfg.name,
                cpu_usage_seconds=usage.cpu_usage_seconds or 0.0,
                memory_working_set_bytes=usage.memory_working_set_bytes or 0))
        node = runtime.driver.stats(runtime.cgroup_root)
        reply.node_cpu_usage_seconds = node.cpu_usage_seconds or 0.0
        reply.node_memory_working_set_bytes = node.memory_working_set_bytes or 0
        return reply

    # --- logs ---------------------------------------------------------------

    async def Logs(self, request: pb.LogsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LogChunk]:
        try:
            st = await self._select(request.namespace, request.pod, request.container, request.pod_uid,
                                    request.previous)
        except OrchError as e:
            await context.abort(e.code, str(e))
            raise  # unreachable: abort raises
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[Any] = asyncio.Queue()
        room = threading.Semaphore(LOG_QUEUE)
        stop = threading.Event()
        tail = request.tail_lines if request.HasField("tail_lines") else None
        since = request.since_seconds if request.HasField("since_seconds") else None

        def produce() -> None:
            def put(item: Any) -> bool:
                while not room.acquire(timeout=0.5):
                    if stop.is_set():
                        return False
                try:
                    loop.call_soon_threadsafe(lines.put_nowait, item)
                except RuntimeError:  # the loop is gone: the agent is shutting down
                    return False
                return True

            try:
                for line in read_logs(Path(st.log_path).parent, tail=tail, since_seconds=since,
                                      timestamps=request.timestamps, follow=request.follow, stop=stop):
                    if not put(line):
                        return
            except Exception as e:  # noqa: BLE001 - handed to the RPC, which reports it
                put(e)
                return
            put(_END)

        threading.Thread(target=produce, name=f"logs/{st.config.id[:12]}", daemon=True).start()
        try:
            while True:
                items = [await lines.get()]
                while not lines.empty() and len(items) < LOG_BATCH:
                    items.append(lines.get_nowait())
                for _ in items:
                    room.release()
                entries = [pb.LogEntry(stream=i.stream, timestamp=i.timestamp, content=i.text)
                           for i in items if isinstance(i, LogLine)]
                if entries:
                    yield pb.LogChunk(entries=entries)
                last = items[-1]
                if isinstance(last, Exception):
                    log.error("node %s: reading the log of %s/%s container %s failed: %s", self.agent.config.name,
                              st.config.pod_namespace, st.config.pod_name, st.config.name, last)
                    await context.abort(grpc.StatusCode.INTERNAL, f"reading the log failed: {last}")
                if last is _END:
                    return
        finally:
            stop.set()

    # --- exec ---------------------------------------------------------------

    async def Exec(self, request_iterator: AsyncIterator[pb.ExecInput],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExecOutput]:
        requests = request_iterator.__aiter__()
        start = await exec_start(requests, context)
        if not start.command:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "you must specify at least one command for the container")
        try:
            st = await self._select(start.namespace, start.pod, start.container, start.pod_uid, False)
            if st.status is not ContainerStatus.RUNNING:
                state = "has exited" if st.status is ContainerStatus.EXITED else "has not started yet"
                raise PreconditionError(f'cannot exec into container "{st.config.name}" in pod "{start.pod}": '
                                        f"the container is not running (it {state})")
        except OrchError as e:
            await context.abort(e.code, str(e))
            raise  # unreachable: abort raises
        log.info("node %s: exec in pod %s/%s container %s: %s", self.agent.config.name, start.namespace,
                 start.pod, st.config.name, start.command[0])
        size = (start.terminal_size.rows, start.terminal_size.cols) if start.HasField("terminal_size") else None
        try:
            session = await ExecSession.spawn(Path(st.log_path).parent, list(start.command), stdin=start.stdin,
                                              tty=start.tty, size=size, pool=self._pool)
        except OSError as e:
            log.error("node %s: cannot start an exec helper: %s", self.agent.config.name, e)
            await context.abort(grpc.StatusCode.INTERNAL, f"cannot start the exec: {e}")
        async with contextlib.aclosing(session.run(requests)) as outputs:
            async for out in outputs:
                yield out


# --- exec sessions ---------------------------------------------------------------


async def _readable(fd: int, writable: bool = False) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def fire() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if writable else loop.add_reader)(fd, fire)
    try:
        await ready
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)


async def _read(fd: int) -> bytes:
    """Some bytes from a non-blocking fd; b"" at end of file (EIO: a pty whose other side has closed)."""
    while True:
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            await _readable(fd)
        except OSError as e:
            if e.errno == errno.EIO:
                return b""
            raise


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await _readable(fd, writable=True)


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ExecSession:
    """One exec helper process and the descriptors of its stdio."""

    def __init__(self, proc: subprocess.Popen[bytes], *, stdin_fd: int | None, outputs: list[tuple[int, str]],
                 status_fd: int, tty_fd: int | None) -> None:
        self.proc = proc
        self.stdin_fd = stdin_fd
        self.outputs = outputs
        self.status_fd = status_fd
        self.tty_fd = tty_fd
        self.pidfd = os.pidfd_open(proc.pid)
        for fd in {fd for fd, _ in outputs} | ({stdin_fd} if stdin_fd is not None else set()):
            os.set_blocking(fd, False)

    @classmethod
    async def spawn(cls, container_dir: Path, argv: list[str], *, stdin: bool, tty: bool,
                    size: tuple[int, int] | None, pool: concurrent.futures.Executor) -> ExecSession:
        status_r, status_w = os.pipe()
        master = slave = None
        try:
            if tty:
                master, slave = os.openpty()
                if size and size[0] and size[1]:
                    _set_size(master, *size)
                std: dict[str, Any] = {"stdin": slave, "stdout": slave, "stderr": slave}
            else:
                std = {"stdin": subprocess.PIPE if stdin else subprocess.DEVNULL,
                       "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
            argv_ = rexec.helper_argv(container_dir, argv, tty=tty, status_fd=status_w)

            def popen() -> subprocess.Popen[bytes]:
                # A new session: no signal meant for the agent's process group reaches it.
                return subprocess.Popen(argv_, pass_fds=(status_w,), start_new_session=True, cwd="/",
                                        env=rexec.helper_env(), **std)

            proc = await asyncio.get_running_loop().run_in_executor(pool, popen)
        except BaseException:
            for fd in (status_r, master):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            os.close(status_w)
            if slave is not None:
                os.close(slave)
        if master is not None:
            return cls(proc, stdin_fd=master if stdin else None, outputs=[(master, "stdout")],
                       status_fd=status_r, tty_fd=master)
        assert proc.stdout is not None and proc.stderr is not None
        return cls(proc, stdin_fd=proc.stdin.fileno() if proc.stdin is not None else None,
                   outputs=[(proc.stdout.fileno(), "stdout"), (proc.stderr.fileno(), "stderr")],
                   status_fd=status_r, tty_fd=None)

    def _close_stdin(self) -> None:
        if self.stdin_fd is None:
            return
        if self.tty_fd is not None:
            # On a terminal, end of input is ^D; closing the master would hang it up.
            with contextlib.suppress(OSError):
                os.write(self.tty_fd, b"\x04")
        elif self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.stdin_fd = None

    async def _feed(self, requests: AsyncIterator[pb.ExecInput]) -> None:
        try:
            async for msg in requests:
                kind = msg.WhichOneof("input")
                if kind == "stdin" and self.stdin_fd is not None:
                    try:
                        await _write_all(self.stdin_fd, msg.stdin)
                    except (BrokenPipeError, ConnectionResetError):
                        self.stdin_fd = None  # the command stopped reading; drop the rest
                elif kind == "close_stdin":
                    self._close_stdin()
                elif kind == "resize" and self.tty_fd is not None and msg.resize.rows and msg.resize.cols:
                    with contextlib.suppress(OSError):
                        _set_size(self.tty_fd, msg.resize.rows, msg.resize.cols)
        finally:
            self._close_stdin()

    async def _pump(self, fd: int, kind: str, queue: asyncio.Queue[Any]) -> None:
        try:
            while data := await _read(fd):
                await queue.put(pb.ExecOutput(stdout=data) if kind == "stdout" else pb.ExecOutput(stderr=data))
        finally:
            await queue.put(None)

    async def _wait_exit(self, queue: asyncio.Queue[Any]) -> None:
        await _readable(self.pidfd)
        self.proc.wait()
        await queue.put(_END)

    def _result(self) -> pb.ExecResult:
        data = b""
        with contextlib.suppress(OSError):
            os.set_blocking(self.status_fd, False)
            while chunk := os.read(self.status_fd, 4096):
                data += chunk
        try:
            status = json.loads(data)
            return pb.ExecResult(exit_code=int(status["exitCode"]), error=status.get("error") or "")
        except (ValueError, KeyError, TypeError):
            code = self.proc.returncode
            code = 128 - code if code is not None and code < 0 else (code or 0)
            return pb.ExecResult(exit_code=code, error=f"the exec helper ended without a result (status {code})")

    async def run(self, requests: AsyncIterator[pb.ExecInput]) -> AsyncGenerator[pb.ExecOutput, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        tasks = [loop.create_task(self._pump(fd, kind, queue), name=f"exec/{kind}") for fd, kind in self.outputs]
        tasks.append(loop.create_task(self._feed(requests), name="exec/stdin"))
        tasks.append(loop.create_task(self._wait_exit(queue), name="exec/wait"))
        open_outputs = len(self.outputs)
        exited_at: float | None = None
        try:
            while open_outputs:
                timeout = None if exited_at is None else max(0.0, exited_at + EXEC_DRAIN - loop.time())
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    break  # exited, but something of it still holds the output open
                if item is None:
                    open_outputs -= 1
                elif item is _END:
                    exited_at = loop.time()
                else:
                    yield item
            await tasks[-1]
            yield pb.ExecOutput(result=self._result())
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._close()

    def _close(self) -> None:
        if self.proc.poll() is None:
            # The caller went away: the helper dies, the command with it (PR_SET_PDEATHSIG).
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            threading.Thread(target=self.proc.wait, name="exec-reaper", daemon=True).start()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        for fd in (self.tty_fd, self.status_fd, self.pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


# --- serving ---------------------------------------------------------------------


def advertised_endpoint(listen: str, port: int, address: str) -> str:
    """HOST:PORT for others to dial: the listen host, or the node's address when listening on all."""
    host = listen.rsplit(":", 1)[0].strip("[]") if ":" in listen else listen
    if host in ("", "0.0.0.0", "::"):
        host = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SchedulerOnly(grpc.aio.ServerInterceptor):
    """Admit only the scheduler: every call whose client certificate is not the scheduler's
    (``Identity.is_scheduler``) ends in PERMISSION_DENIED naming who was refused.

    The TLS handshake has already checked that the certificate is the cluster CA's; this
    checks *whose* it is. Logs and exec reach a node through the scheduler, which
    authorizes the user first (kube-apiserver → kubelet); a node's or a user's own
    certificate must never exec into a node's pods directly (a node that could would own
    every other node). gRPC's aio interceptors see no peer, so the check wraps each
    method's handler and runs first in it."""

    def __init__(self, node: str) -> None:
        self.node = node

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: grpc answers UNIMPLEMENTED itself
        method = handler_call_details.method  # type: ignore[attr-defined]
        name = method.decode() if isinstance(method, bytes) else str(method)
        h: Any = handler
        if h.request_streaming and h.response_streaming:
            return h._replace(stream_stream=self._streaming(h.stream_stream, name))
        if h.request_streaming:
            return h._replace(stream_unary=self._unary(h.stream_unary, name))
        if h.response_streaming:
            return h._replace(unary_stream=self._streaming(h.unary_stream, name))
        return h._replace(unary_unary=self._unary(h.unary_unary, name))

    async def _admit(self, context: grpc.aio.ServicerContext, method: str) -> None:
        identity = pki.peer_identity(context)
        if identity is not None and identity.is_scheduler:
            return
        who = (f"user {identity.user!r} (groups {', '.join(identity.groups) or 'none'})" if identity is not None
               else "a client without a certificate")
        log.warning("node %s: refused %s from %s (%s): only the scheduler may call the agent", self.node,
                    method, who, context.peer())
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"{who} may not call {method} on node {self.node}: only the scheduler "
                            f"({pki.SCHEDULER_USER}) may; logs and exec go through the Cluster API")

    def _unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(context, method)
            return await behavior(request, context)

        return handle

    def _streaming(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._admit(context, method)
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async with contextlib.aclosing(result) as responses:
                    async for response in responses:
                        yield response
            else:  # a handler that writes with context.write
                await result

        return handle


async def start_server(agent: Agent, listen: str) -> tuple[grpc.aio.Server, NodeAgentService, str]:
    """Serve ``NodeAgent`` on ``listen`` (port 0: a free one); returns the server and the advertised endpoint.

    With the node's TLS files (``agent.config.tls``): mutual TLS, a client certificate of the
    cluster CA required, the scheduler's only (``SchedulerOnly``); the node's certificate and
    the CA bundle are read again when they change (a rotation needs no restart)."""
    tls = agent.config.tls
    server = grpc.aio.server(interceptors=[SchedulerOnly(agent.config.name)] if tls is not None else None)
    service = NodeAgentService(agent)
    pb_grpc.add_NodeAgentServicer_to_server(service, server)
    try:
        if tls is not None:
            port = server.add_secure_port(listen, pki.reloading_server_credentials(tls))
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as e:  # newer grpcio raises where older ones returned 0
        raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {listen}: {e}") from e
    if port == 0:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {listen}")
    await server.start()
    endpoint = advertised_endpoint(listen, port, agent.config.address)
    log.info("node %s: serving logs and exec on %s over %s", agent.config.name, endpoint,
             "mutual TLS, to the scheduler only" if tls is not None else "PLAINTEXT")
    return server, service, endpoint
