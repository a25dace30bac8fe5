"""The Cluster API servicer: translates gRPC requests into registry and store calls.

Every OrchError becomes its gRPC status (``apimachinery.errors``), so a lost
compare-and-swap reaches ``orchctl`` as ABORTED and a bad spec as INVALID_ARGUMENT
with the field path in the message.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc

from apimachinery.errors import FieldError, NotFoundError, OrchError, ValidationError
from apimachinery.labels import SelectorError, parse_selector
from apimachinery.meta import KINDS, Kind, Obj, kind_for
from apimachinery.pb import agent_pb2
from apimachinery.pb import cluster_pb2 as pb
from apimachinery.pb import cluster_pb2_grpc as pb_grpc
from scheduler.proxy import AgentProxy
from scheduler.registry import Registry
from scheduler.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")


def resolve_kind(word: str) -> Kind:
    kind = KINDS.get(word) or kind_for(word)
    if kind is None:
        raise NotFoundError(f'the server doesn\'t have a resource type "{word}"')
    return kind


def matcher(selector: str) -> Any:
    try:
        return parse_selector(selector)
    except SelectorError as e:
        raise ValidationError(FieldError("labelSelector", str(e))) from e


def _namespace(kind: Kind, namespace: str) -> str | None:
    if not kind.namespaced:
        return None
    return namespace or None


async def guarded(context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
    try:
        return await call
    except OrchError as e:
        await context.abort(e.code, str(e))
        raise  # unreachable: abort raises


class ClusterService(pb_grpc.ClusterServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store: Store = registry.store
        self.proxy = AgentProxy(self.store)

    async def Apply(self, request: pb.ApplyRequest, context: grpc.aio.ServicerContext) -> pb.ApplyResponse:
        raws: list[Any] = []
        for i, text in enumerate(request.objects_json):
            try:
                raws.append(json.loads(text))
            except json.JSONDecodeError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"document {i}: not JSON: {e}")
        results = await guarded(context, self.registry.apply(raws, dry_run=request.dry_run))
        return pb.ApplyResponse(results=[pb.ApplyResult(object_json=json.dumps(r.obj), action=r.action)
                                         for r in results])

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.ObjectResponse:
        async def get() -> Obj:
            kind = resolve_kind(request.kind)
            return await self.store.get(kind, _namespace(kind, request.namespace) or "default", request.name)

        return pb.ObjectResponse(object_json=json.dumps(await guarded(context, get())))

    async def List(self, request: pb.ListRequest, context: grpc.aio.ServicerContext) -> pb.ListResponse:
        async def list_() -> tuple[list[Obj], int]:
            kind = resolve_kind(request.kind)
            sel = matcher(request.label_selector)
            items, rev = await self.store.list(kind, _namespace(kind, request.namespace))
            return [o for o in items if sel.matches(o["metadata"].get("labels") or {})], rev

        items, rev = await guarded(context, list_())
        return pb.ListResponse(items_json=[json.dumps(o) for o in items], resource_version=rev)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.ObjectResponse:
        async def delete() -> Obj:
            kind = resolve_kind(request.kind)
            grace = request.grace_period_seconds if request.HasField("grace_period_seconds") else None
            if grace is not None and grace < 0:
                raise ValidationError(FieldError("gracePeriodSeconds", "must be 0 or more"))
            return await self.registry.delete(kind, _namespace(kind, request.namespace) or "default",
                                              request.name, grace)

        return pb.ObjectResponse(object_json=json.dumps(await guarded(context, delete())))

    async def Watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchEvent]:
        try:
            kind = resolve_kind(request.kind)
            sel = matcher(request.label_selector)
            ns = _namespace(kind, request.namespace)
            start = request.resource_version
            if start <= 0:
                items, rev = await self.store.list(kind, ns)
                for obj in items:
                    if sel.matches(obj["metadata"].get("labels") or {}):
                        yield pb.WatchEvent(type="ADDED", object_json=json.dumps(obj))
                start = rev
            async for ev in self.store.watch(kind, ns, start + 1):
                if sel.matches(ev.obj["metadata"].get("labels") or {}):
                    yield pb.WatchEvent(type=ev.type, object_json=json.dumps(ev.obj))
        except OrchError as e:
            await context.abort(e.code, str(e))

    async def PatchNode(self, request: pb.PatchNodeRequest, context: grpc.aio.ServicerContext) -> pb.ObjectResponse:
        async def patch() -> Obj:
            try:
                body = json.loads(request.spec_patch_json or "{}")
            except json.JSONDecodeError as e:
                raise ValidationError(FieldError("spec", f"the patch is not JSON: {e}")) from e
            return await self.registry.patch_node_spec(request.name, body)

        return pb.ObjectResponse(object_json=json.dumps(await guarded(context, patch())))

    # Logs and exec go to the agent of the pod's node (scheduler/proxy.py).

    async def PodLogs(self, request: agent_pb2.LogsRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.LogChunk]:
        async with contextlib.aclosing(self.proxy.logs(request, context)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def ImportImage(self, request_iterator: AsyncIterator[agent_pb2.ImageChunk],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.ImportImageReply]:
        async with contextlib.aclosing(self.proxy.import_image(request_iterator, context)) as replies:
            async for reply in replies:
                yield reply

    async def PodExec(self, request_iterator: AsyncIterator[agent_pb2.ExecInput],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.ExecOutput]:
        async with contextlib.aclosing(self.proxy.exec(request_iterator, context)) as outputs:
            async for out in outputs:
                yield out
