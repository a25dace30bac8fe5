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

Errors: a missing pod is NOT_FOUND; a pod with no node yet, or a finished pod
for exec, FAILED_PRECONDITION; an agent that cannot be reached UNAVAILABLE,
naming the node and endpoint. What the agent answers (NOT_FOUND for a
container, FAILED_PRECONDITION for one that does not run, ...) passes through
with its code and message.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import grpc

from apimachinery.errors import OrchError, PreconditionError, UnavailableError
from apimachinery.execstream import exec_start
from apimachinery.meta import NODE, POD, Obj
from apimachinery.pb import agent_pb2 as pb
from apimachinery.pb import agent_pb2_grpc as pb_grpc
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
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    def _stub(self, endpoint: str) -> pb_grpc.NodeAgentStub:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = grpc.aio.insecure_channel(endpoint)
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
            channel = self._channels.pop(endpoint, None)
            if channel is not None:
                await channel.close()
            return e.code(), f'cannot reach the agent of node "{node}" at {endpoint}: {e.details()}'
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
                    reply = await self._stub(endpoint).ImportImage(chunks())
                    yield reply
                except grpc.aio.AioRpcError as e:
                    _, message = await self._translate(e, name, endpoint)
                    yield pb.ImportImageReply(node=name, error=message)

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
        except OrchError as e:
            await context.abort(e.code, str(e))
            raise  # unreachable: abort raises
        forwarded = pb.LogsRequest()
        forwarded.CopyFrom(request)
        forwarded.namespace = namespace
        forwarded.pod_uid = str(pod["metadata"].get("uid", ""))
        call = self._stub(endpoint).Logs(forwarded)
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

        call = self._stub(endpoint).Exec(forward())
        try:
            async for out in call:
                yield out
        except grpc.aio.AioRpcError as e:
            await context.abort(*await self._translate(e, node, endpoint))
        finally:
            call.cancel()

