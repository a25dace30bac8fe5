"""Logs and exec for the Cluster API: proxied to the agent of the pod's node.

``orchctl logs`` and ``orchctl exec`` speak to a scheduler like every other
command; the scheduler finds the pod (in etcd), its node, and the node's agent
endpoint, and streams the call through to the agent's ``NodeAgent`` API both
ways, as kube-apiserver proxies the ``pods/log`` and ``pods/exec`` subresources
to the kubelet. Any scheduler replica does this; the leader plays no part.

The endpoint comes from the Node: ``status.daemonEndpoints.kubeletEndpoint``
(``Port`` as in Kubernetes, and the ``Address`` the agent listens on; without
it, the node's InternalIP). One channel per endpoint is kept and reused; a new
endpoint (a restarted agent on another port) gets a new one.

**TLS** (``use_tls``): the scheduler dials agents with its own certificate (agents admit
the scheduler's identity only) and checks the agent's against the cluster CA *and* the
node's name, so a node that reports another node's address cannot answer for it.

Errors: a missing pod is NOT_FOUND; a pod with no node yet, or a finished pod
for exec, FAILED_PRECONDITION; an agent that cannot be reached UNAVAILABLE,
naming the node and endpoint. What the agent answers (NOT_FOUND for a
container, FAILED_PRECONDITION for one that does not run, ...) passes through
with its code and message.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import grpc

from apimachinery import pki
from apimachinery.errors import FieldError, OrchError, PreconditionError, UnavailableError, ValidationError
from apimachinery.execstream import exec_start
from apimachinery.meta import NODE, POD, Obj
from apimachinery.pb import agent_pb2 as pb
from apimachinery.pb import agent_pb2_grpc as pb_grpc
from apimachinery.pb import cluster_pb2 as cpb
from scheduler.store import Store

__all__ = ["AgentProxy", "PreconditionError", "agent_endpoint"]

log = logging.getLogger(__name__)


def agent_endpoint(node: Obj) -> str | None:
    """HOST:PORT of the node's agent API, from its status; None when the node reports none."""
    status = node.get("status") or {}
    ep = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint")) or {}
    port = ep.get("Port")
    if not isinstance(port, int) or port <= 0:
        return None
    host = ep.get("Address") or next((a.get("address") for a in status.get("addresses") or []
                                      if a.get("type") == "InternalIP"), None)
    if not host:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: Bytes a message when the scheduler streams an image archive on to an agent.
IMPORT_CHUNK = 1024 * 1024


class AgentProxy:
    """Streams PodLogs and PodExec through to the agent of the pod's node."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # One channel per (endpoint, node): the node is the name its certificate must bear.
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._tls: pki.TLSFiles | None = None
        self._credentials: grpc.ChannelCredentials | None = None
        self._stamp: pki.FilesStamp = ()
        # Channels made with a certificate since rotated: they finish their calls, and close with the proxy.
        self._retired: list[grpc.aio.Channel] = []

    def use_tls(self, files: pki.TLSFiles | None) -> None:
        """Dial agents over mutual TLS: present ``files``' certificate (the scheduler's; agents
        admit only the scheduler) and accept an agent only with a certificate of the CA bundle
        issued to the node dialled (its name is a DNS SAN of the node's certificate, and the
        channel checks the certificate for that name, not for the endpoint's address, which a
        node reports itself). None: plaintext (a scheduler started with ``--insecure``)."""
        self._tls = files
        self._credentials = None

    async def close(self) -> None:
        channels, self._channels = [*self._channels.values(), *self._retired], {}
        self._retired = []
        for channel in channels:
            await channel.close()

    def _current_credentials(self) -> grpc.ChannelCredentials | None:
        """The channel credentials from the files as they are now: a rotated scheduler
        certificate is used from the next channel on (channels made before keep theirs)."""
        if self._tls is None:
            return None
        stamp = pki.files_stamp(self._tls)
        if self._credentials is None or stamp != self._stamp:
            try:
                material = pki.load_tls(self._tls, attempts=1)
            except pki.PkiError:
                if self._credentials is None:
                    raise
                return self._credentials  # caught mid-rotation: the last good pair until the next call
            self._credentials, self._stamp = material.channel_credentials(), stamp
            self._retired += self._channels.values()
            self._channels = {}
        return self._credentials

    def _stub(self, endpoint: str, node: str) -> pb_grpc.NodeAgentStub:
        credentials = self._current_credentials()
        channel = self._channels.get((endpoint, node))
        if channel is None:
            if credentials is None:
                channel = grpc.aio.insecure_channel(endpoint)
            else:
                channel = grpc.aio.secure_channel(endpoint, credentials,
                                                  options=[("grpc.ssl_target_name_override", node)])
            self._channels[(endpoint, node)] = channel
        return pb_grpc.NodeAgentStub(channel)

    async def _locate(self, namespace: str, name: str) -> tuple[Obj, str, str]:
        """The pod, its node's name and its agent's endpoint."""
        pod = await self.store.get(POD, namespace, name)
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name:
            raise PreconditionError(f"pod {name} does not have a host assigned")
        node = await self.store.get_or_none(NODE, None, node_name)
        if node is None:
            raise UnavailableError(f'node "{node_name}" of pod {name} does not exist any more')
        endpoint = agent_endpoint(node)
        if endpoint is None:
            raise UnavailableError(f'node "{node_name}" reports no agent endpoint (its agent predates logs '
                                   "and exec, or has not registered yet)")
        return pod, node_name, endpoint

    async def _translate(self, e: grpc.aio.AioRpcError, node: str, endpoint: str) -> tuple[grpc.StatusCode, str]:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            # Likely an agent that restarted elsewhere: don't keep a channel to where it was.
            channel = self._channels.pop((endpoint, node), None)
            if channel is not None:
                await channel.close()
            details = e.details() or ""
            if "handshake" in details.lower():
                return e.code(), (f'TLS handshake with the agent of node "{node}" at {endpoint} failed (its '
                                  f"certificate must be signed by the cluster CA and issued to {node}): {details}")
            return e.code(), f'cannot reach the agent of node "{node}" at {endpoint}: {details}'
        return e.code(), e.details() or e.code().name

    async def import_image(self, request_iterator: AsyncIterator[pb.ImageChunk],
                           context: grpc.aio.ServicerContext) -> AsyncGenerator[pb.ImportImageReply, None]:
        """Buffer the archive once, then stream it to each target node's agent; a reply per node."""
        with tempfile.TemporaryFile() as archive:
            node_name = reference = ""
            first = True
            async for chunk in request_iterator:
                if first:
                    node_name, reference, first = chunk.node, chunk.reference, False
                archive.write(chunk.data)
            try:
                targets = await self._import_targets(node_name)
            except OrchError as e:
                await context.abort(e.code, str(e))
                raise  # unreachable: abort raises
            for name, endpoint in targets:
                if endpoint is None:
                    yield pb.ImportImageReply(node=name, error=f'node "{name}" reports no agent endpoint')
                    continue

                def chunks() -> Iterator[pb.ImageChunk]:
                    archive.seek(0)
                    yield pb.ImageChunk(reference=reference)
                    while data := archive.read(IMPORT_CHUNK):
                        yield pb.ImageChunk(data=data)

                try:
                    reply = await self._stub(endpoint, name).ImportImage(chunks())
                    yield reply
                except grpc.aio.AioRpcError as e:
                    _, message = await self._translate(e, name, endpoint)
                    yield pb.ImportImageReply(node=name, error=message)
                except OrchError as e:  # our own certificate cannot be read
                    yield pb.ImportImageReply(node=name, error=str(e))

    async def _import_targets(self, node_name: str) -> list[tuple[str, str | None]]:
        if node_name:
            node = await self.store.get(NODE, None, node_name)
            return [(node_name, agent_endpoint(node))]
        nodes, _ = await self.store.list(NODE)
        ready = [n for n in nodes if any(c.get("type") == "Ready" and c.get("status") == "True"
                                         for c in n.get("status", {}).get("conditions", []))]
        if not ready:
            raise UnavailableError("no Ready node to import the image into")
        return [(n["metadata"]["name"], agent_endpoint(n)) for n in sorted(ready, key=lambda n: n["metadata"]["name"])]

    async def logs(self, request: pb.LogsRequest,
                   context: grpc.aio.ServicerContext) -> AsyncGenerator[pb.LogChunk, None]:
        namespace = request.namespace or "default"
        try:
            pod, node, endpoint = await self._locate(namespace, request.pod)
            stub = self._stub(endpoint, node)
        except OrchError as e:
            await context.abort(e.code, str(e))
            raise  # unreachable: abort raises
        forwarded = pb.LogsRequest()
        forwarded.CopyFrom(request)
        forwarded.namespace = namespace
        forwarded.pod_uid = str(pod["metadata"].get("uid", ""))
        call = stub.Logs(forwarded)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as e:
            await context.abort(*await self._translate(e, node, endpoint))
        finally:
            call.cancel()

    async def exec(self, request_iterator: AsyncIterator[pb.ExecInput],
                   context: grpc.aio.ServicerContext) -> AsyncGenerator[pb.ExecOutput, None]:
        requests = request_iterator.__aiter__()
        start = await exec_start(requests, context)
        namespace = start.namespace or "default"
        try:
            pod, node, endpoint = await self._locate(namespace, start.pod)
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                raise PreconditionError(f"cannot exec into a container in a completed pod; current phase is {phase}")
            stub = self._stub(endpoint, node)
        except OrchError as e:
            await context.abort(e.code, str(e))
            raise  # unreachable: abort raises
        start.namespace = namespace
        start.pod_uid = str(pod["metadata"].get("uid", ""))
        log.info("exec in pod %s/%s on node %s (%s)", namespace, start.pod, node, endpoint)

        async def forward() -> AsyncIterator[pb.ExecInput]:
            yield pb.ExecInput(start=start)
            async for msg in requests:
                yield msg

        call = stub.Exec(forward())
        try:
            async for out in call:
                yield out
        except grpc.aio.AioRpcError as e:
            await context.abort(*await self._translate(e, node, endpoint))
        finally:
            call.cancel()



# --- orchctl top ---------------------------------------------------------------------------

#: A reading older than this is not used as the first of two: top takes a fresh pair.
TOP_MAX_AGE = 60.0
#: Seconds between two fresh readings when there is no recent one.
TOP_WINDOW = 1.0
#: How long one agent may take to answer Stats.
TOP_TIMEOUT = 5.0


def top_entries(kind: str, namespace: str, before: pb.StatsReply, after: pb.StatsReply) -> list[cpb.TopEntry]:
    """``orchctl top`` rows for one node from two of its readings: CPU as the rate between
    them (millicores), memory as the later working set. Containers that were not running
    at the first reading have no rate yet and are left out, as metrics-server leaves them."""
    dt = after.timestamp - before.timestamp
    if dt <= 0:
        return []
    if kind == "nodes":
        cpu = max(0.0, after.node_cpu_usage_seconds - before.node_cpu_usage_seconds) / dt
        return [cpb.TopEntry(name=after.node, node=after.node, cpu_millis=round(cpu * 1000),
                             memory_bytes=after.node_memory_working_set_bytes)]
    earlier = {(c.pod_uid, c.container): c.cpu_usage_seconds for c in before.containers}
    rows = []
    for c in after.containers:
        if namespace and c.namespace != namespace:
            continue
        first = earlier.get((c.pod_uid, c.container))
        if first is None or c.cpu_usage_seconds < first:
            continue  # new, or restarted since: no rate yet
        rows.append(cpb.TopEntry(namespace=c.namespace, name=c.pod, container=c.container, node=after.node,
                                 cpu_millis=round((c.cpu_usage_seconds - first) / dt * 1000),
                                 memory_bytes=c.memory_working_set_bytes))
    return rows


class UsageSampler:
    """The agents' Stats readings that ``orchctl top`` computes rates from: the last reading of
    each node is kept, so a ``top`` within ``TOP_MAX_AGE`` of the previous one answers at once;
    otherwise it reads every node twice, ``TOP_WINDOW`` apart."""

    def __init__(self, proxy: AgentProxy) -> None:
        self.proxy = proxy
        self._last: dict[str, tuple[float, pb.StatsReply]] = {}

    async def _read(self, name: str, endpoint: str) -> pb.StatsReply | None:
        try:
            return await self.proxy._stub(endpoint, name).Stats(pb.StatsRequest(), timeout=TOP_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            await self.proxy._translate(e, name, endpoint)
            log.info("top: node %s (%s) did not answer: %s", name, endpoint, e.details())
            return None
        except OrchError as e:
            log.warning("top: cannot dial node %s (%s): %s", name, endpoint, e)
            return None

    async def top(self, kind: str, namespace: str) -> tuple[list[cpb.TopEntry], float]:
        if kind not in ("nodes", "pods"):
            raise ValidationError(FieldError("kind", f'must be "nodes" or "pods", got {kind!r}'))
        nodes, _ = await self.proxy.store.list(NODE)
        targets = {n["metadata"]["name"]: ep for n in nodes if (ep := agent_endpoint(n)) is not None}
        if not targets:
            return [], 0.0
        now = time.monotonic()
        fresh = {name: (at, reply) for name, (at, reply) in self._last.items()
                 if name in targets and now - at <= TOP_MAX_AGE}
        first: dict[str, pb.StatsReply] = {name: reply for name, (_, reply) in fresh.items()}
        missing = [name for name in targets if name not in fresh]
        if missing:
            readings = await asyncio.gather(*(self._read(name, targets[name]) for name in missing))
            first.update({name: r for name, r in zip(missing, readings, strict=True) if r is not None})
            await asyncio.sleep(TOP_WINDOW)
        else:
            # A rate over a few milliseconds (two tops in a row) is noise: at least TOP_WINDOW.
            youngest = max((at for at, _ in fresh.values()), default=now)
            await asyncio.sleep(max(0.0, TOP_WINDOW - (now - youngest)))
        names = sorted(first)
        seconds = await asyncio.gather(*(self._read(name, targets[name]) for name in names))
        entries: list[cpb.TopEntry] = []
        windows = []
        for name, second in zip(names, seconds, strict=True):
            if second is None:
                continue
            self._last[name] = (time.monotonic(), second)
            entries += top_entries(kind, namespace, first[name], second)
            windows.append(second.timestamp - first[name].timestamp)
        for gone in set(self._last) - set(targets):
            del self._last[gone]
        return entries, max(windows, default=0.0)
