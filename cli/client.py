"""A blocking client for the Cluster API: JSON objects in, dicts out, OrchErrors raised.

Blocking on purpose: ``orchctl`` does one thing and exits, and tests call it from
plain functions. The scheduler and agents use ``grpc.aio`` instead.

``server`` may name several scheduler replicas, comma-separated; any of them serves
the API. A call that finds its scheduler unreachable (UNAVAILABLE) is made again on
the next one, and the client stays with the one that answered. Streams fail over
only before their first message (a stream half read cannot be resumed elsewhere),
and those that send a stream of their own (exec, image import) not at all.

Mutual TLS (``ClientTLS``): the CA bundle the scheduler's certificate must chain to and
the client certificate presented, whose subject is who we are to the server. A failed
handshake becomes a ``TLSError`` saying which side refused whom (``tls_failure``), not
gRPC's words. A bearer ``token`` goes with every call as ``authorization`` metadata.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from apimachinery.errors import OrchError, from_rpc_error
from apimachinery.meta import Obj
from apimachinery.pb import agent_pb2
from apimachinery.pb import cluster_pb2 as pb
from apimachinery.pb import cluster_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT = 30.0


class TLSError(OrchError):
    """A TLS handshake with the scheduler failed, or our own TLS files cannot be read; the
    message says which side refused whom, and why when it can tell."""


def split_servers(server: str) -> list[str]:
    """``a:1, b:2`` → ``["a:1", "b:2"]``."""
    return [s.strip() for s in server.split(",") if s.strip()]


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """What orchctl trusts and presents over mutual TLS: kubeconfig's certificate-authority,
    client-certificate and client-key, as paths. They are read when a channel is made, so a
    rotated certificate is used from the next client on.

    ``certificate_authority`` None: the system's trusted roots (gRPC's default), which no
    cluster CA is among, so only a scheduler with a public certificate would verify.
    No client certificate: the scheduler refuses the handshake (it requires one).
    """

    certificate_authority: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None

    @classmethod
    def from_pki(cls, pki_dir: Path | str, slot: str = "admin") -> ClientTLS:
        """``<pki_dir>/ca.crt`` and ``<slot>.crt``/``.key`` (the layout of docs/security.md)."""
        d = Path(pki_dir)
        return cls(d / "ca.crt", d / f"{slot}.crt", d / f"{slot}.key")

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.client_certificate is None) != (self.client_key is None):
            raise TLSError("a client certificate needs its key, and a key its certificate: give both "
                           "(--client-certificate and --client-key, or clientCertificate and clientKey)")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.certificate_authority, "certificate authority"),
            private_key=_read(self.client_key, "client key"),
            certificate_chain=_read(self.client_certificate, "client certificate"))


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSError(f"cannot read the {what} {path}: {e.strerror or e}") from e


class ClusterClient:
    """A connection to the Cluster API of one scheduler of ``server`` (HOST:PORT[,HOST:PORT...]).

    ``tls``: mutual TLS with that material; None: plaintext (a scheduler started with
    ``--insecure``; orchctl asks for that with its own ``--insecure``). ``token``: sent with
    every call as ``authorization: Bearer <token>`` (the server decides what it is worth)."""

    def __init__(self, server: str, *, timeout: float = DEFAULT_TIMEOUT, tls: ClientTLS | None = None,
                 token: str | None = None) -> None:
        self.servers = split_servers(server) or [server]
        self.timeout = timeout
        self.tls = tls
        self._credentials = tls.credentials() if tls is not None else None
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._at = 0
        self._connect()

    @property
    def server(self) -> str:
        """The scheduler in use now."""
        return self.servers[self._at]

    def _connect(self) -> None:
        if self._credentials is None:
            self._channel = grpc.insecure_channel(self.server)
        else:
            self._channel = grpc.secure_channel(self.server, self._credentials)
        self._stub = pb_grpc.ClusterStub(self._channel)

    def _error(self, e: grpc.RpcError) -> OrchError:
        """The OrchError for a failed call: a TLS failure explained (``tls_failure``), else its code's."""
        return tls_failure(e, self.server, self.tls) or from_rpc_error(e)

    def _next_server(self) -> None:
        self._channel.close()
        self._at = (self._at + 1) % len(self.servers)
        self._connect()

    def _failover(self, e: grpc.RpcError, tried: int) -> bool:
        """After ``e`` on the ``tried``-th server: move to the next one if that may help."""
        if tried >= len(self.servers) or not hasattr(e, "code") or e.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        self._next_server()
        return True

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        tried = 0
        while True:
            tried += 1
            try:
                return getattr(self._stub, method)(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if not self._failover(e, tried):
                    raise self._error(e) from e

    def _stream(self, method: str, request: Any, timeout: float | None) -> Iterator[Any]:
        """A server stream's messages; moves to the next server only before the first one."""
        tried = 0
        while True:
            tried += 1
            call = getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
            started = False
            try:
                for item in call:
                    started = True
                    yield item
                return
            except grpc.RpcError as e:
                if started or not self._failover(e, tried):
                    raise
            finally:
                call.cancel()

    def apply(self, objects: list[Obj], *, dry_run: bool = False) -> list[tuple[str, Obj]]:
        """Apply every object (all validated before any is written); ``(action, object)`` each."""
        reply = self._call(
            "Apply", pb.ApplyRequest(objects_json=[json.dumps(o) for o in objects], dry_run=dry_run)
        )
        return [(r.action, json.loads(r.object_json)) for r in reply.results]

    def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        reply = self._call("Get", pb.GetRequest(kind=kind, namespace=namespace, name=name))
        return json.loads(reply.object_json)

    def list(self, kind: str, namespace: str = "", label_selector: str = "") -> tuple[list[Obj], int]:
        """Objects of ``kind`` (every namespace when ``namespace`` is empty) and the revision read at."""
        reply = self._call("List", pb.ListRequest(kind=kind, namespace=namespace, label_selector=label_selector))
        return [json.loads(i) for i in reply.items_json], reply.resource_version

    def delete(self, kind: str, name: str, namespace: str = "", grace_period_seconds: int | None = None) -> Obj:
        req = pb.DeleteRequest(kind=kind, namespace=namespace, name=name)
        if grace_period_seconds is not None:
            req.grace_period_seconds = grace_period_seconds
        return json.loads(self._call("Delete", req).object_json)

    def patch_node(self, name: str, spec_patch: Obj) -> Obj:
        """Merge ``spec_patch`` into the Node's spec on the server (cordon, uncordon, taints)."""
        reply = self._call("PatchNode", pb.PatchNodeRequest(name=name, spec_patch_json=json.dumps(spec_patch)))
        return json.loads(reply.object_json)

    def top(self, kind: str, namespace: str = "") -> pb.TopReply:
        """What ``kind`` ("nodes" or "pods") use now, from the agents (the server reads them twice
        when it has no recent reading, so this may take a second)."""
        return self._call("Top", pb.TopRequest(kind=kind, namespace=namespace))

    def watch(
        self, kind: str, namespace: str = "", label_selector: str = "", resource_version: int = 0,
        timeout: float | None = None,
    ) -> Iterator[tuple[str, Obj]]:
        """``(type, object)`` for each change; ADDED for every current object when resource_version is 0."""
        req = pb.WatchRequest(kind=kind, namespace=namespace, label_selector=label_selector,
                              resource_version=resource_version)
        try:
            for ev in self._stream("Watch", req, timeout):
                yield ev.type, json.loads(ev.object_json)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            raise self._error(e) from e

    # --- logs and exec: streamed through the scheduler to the pod's node ---------

    def logs(self, namespace: str, pod: str, container: str = "", *, follow: bool = False,
             tail: int | None = None, previous: bool = False, timestamps: bool = False,
             since_seconds: int | None = None) -> Iterator[agent_pb2.LogEntry]:
        """The container's log entries; with ``follow``, until the container exits (no deadline)."""
        req = agent_pb2.LogsRequest(namespace=namespace, pod=pod, container=container, follow=follow,
                                    previous=previous, timestamps=timestamps)
        if tail is not None:
            req.tail_lines = tail
        if since_seconds is not None:
            req.since_seconds = since_seconds
        try:
            for chunk in self._stream("PodLogs", req, None):
                yield from chunk.entries
        except grpc.RpcError as e:
            raise tls_failure(e, self.server, self.tls) or _stream_error(e) from e

    def import_image(self, path: str, *, node: str = "", reference: str = "",
                     chunk_size: int = 1024 * 1024) -> builtins.list[agent_pb2.ImportImageReply]:
        """Stream an image archive to the cluster; one reply a node (its images, or its error)."""

        def chunks() -> Iterator[agent_pb2.ImageChunk]:
            yield agent_pb2.ImageChunk(node=node, reference=reference)
            with open(path, "rb") as f:
                while data := f.read(chunk_size):
                    yield agent_pb2.ImageChunk(data=data)

        try:
            # Large archives take a while to reach every node: no short deadline.
            return builtins.list(self._stub.ImportImage(chunks(), metadata=self._metadata))
        except grpc.RpcError as e:
            raise self._error(e) from e

    def exec(self, namespace: str, pod: str, container: str, command: Sequence[str], *,
             stdin: Iterable[bytes | tuple[int, int]] | None = None, tty: bool = False,
             terminal_size: tuple[int, int] | None = None) -> Iterator[agent_pb2.ExecOutput]:
        """Run ``command`` in the container: its outputs, the last one carrying the ``result``.

        ``stdin`` yields bytes to send, or ``(rows, cols)`` when the terminal is
        resized; when it ends, the command's stdin is closed. Without it the
        command reads nothing.
        """
        start = agent_pb2.ExecStart(namespace=namespace, pod=pod, container=container, command=command,
                                    stdin=stdin is not None, tty=tty)
        if terminal_size is not None:
            start.terminal_size.rows, start.terminal_size.cols = terminal_size

        def requests() -> Iterator[agent_pb2.ExecInput]:
            yield agent_pb2.ExecInput(start=start)
            for item in stdin or ():
                if isinstance(item, tuple):
                    yield agent_pb2.ExecInput(resize=agent_pb2.TerminalSize(rows=item[0], cols=item[1]))
                elif item:
                    yield agent_pb2.ExecInput(stdin=item)
            yield agent_pb2.ExecInput(close_stdin=True)

        call = self._stub.PodExec(requests(), metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as e:
            raise tls_failure(e, self.server, self.tls) or _stream_error(e) from e
        finally:
            call.cancel()


def _stream_error(e: grpc.RpcError) -> OrchError:
    """The OrchError for a failed logs or exec stream; FAILED_PRECONDITION keeps the server's words."""
    if hasattr(e, "code") and e.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return OrchError(e.details())
    return from_rpc_error(e)


# --- TLS failures, in words ---------------------------------------------------------------

#: What gRPC says (its details) when the handshake failed on our side, and what that means.
_OUR_CHECK_FAILED = {
    "CERTIFICATE_VERIFY_FAILED": "the server's certificate is not signed by the CA in {ca}",
    "Hostname Verification Check failed": "the server's certificate is not issued for {host} (its SANs "
                                          "do not name it)",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS (a scheduler started with --insecure? then pass "
                            "--insecure too)",
}


def tls_failure(e: grpc.RpcError, server: str, tls: ClientTLS | None) -> TLSError | None:
    """A TLSError saying what went wrong when ``e`` is a failed handshake with ``server`` (or
    plaintext refused by a TLS server: ``tls`` None); else None.

    Gotcha: when the *server* refuses our certificate, TLS 1.3 has already finished on our
    side, and gRPC reports only that the socket closed — the same words as for any server
    that hangs up. So a "Socket closed" while connecting over TLS is diagnosed from our own
    certificate: none, expired, or (failing those) not signed by a CA the server trusts."""
    if not hasattr(e, "code") or e.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    details = e.details() or ""
    closed = "Socket closed" in details and "failed to connect" in details
    if tls is None:
        if not closed:
            return None
        return TLSError(f"{server} closed the plaintext connection at once: it most likely requires TLS; connect with "
                        "--certificate-authority, --client-certificate and --client-key (or the config's "
                        "certificateAuthority, clientCertificate and clientKey) instead of --insecure")
    ca = (str(tls.certificate_authority) if tls.certificate_authority
          else "the system's trusted roots (no certificate authority is configured: --certificate-authority, or "
               "certificateAuthority in the config)")
    for marker, meaning in _OUR_CHECK_FAILED.items():
        if marker in details:
            host = server.rsplit(":", 1)[0]
            return TLSError(f"TLS handshake with {server} failed: {meaning.format(ca=ca, host=host)}")
    if closed:
        return TLSError(f"TLS handshake with {server} failed: the server refused our certificate: "
                        f"{_own_certificate_problem(tls)}")
    return None


def _own_certificate_problem(tls: ClientTLS) -> str:
    """Why a server may have refused our certificate, as far as we can tell from here."""
    if tls.client_certificate is None:
        return ("we presented none, and the scheduler requires one (--client-certificate and --client-key, or "
                "clientCertificate and clientKey in the config)")
    from apimachinery import pki  # cryptography: only on this error path

    try:
        cert = pki.read_cert(tls.client_certificate)
    except pki.PkiError as e:
        return str(e)
    left = pki.seconds_left(cert)
    if left <= 0:
        return f"{tls.client_certificate} expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    if tls.certificate_authority is not None:
        try:
            if pki.issuer_in(cert, pki.read_certs(tls.certificate_authority)) is None:
                return (f"{tls.client_certificate} is not signed by a CA in {tls.certificate_authority}, "
                        "so not by the cluster's CA either")
        except pki.PkiError:
            pass
    return (f"{tls.client_certificate} is not signed by a CA the server trusts (or the server closed the "
            "connection for another reason)")
