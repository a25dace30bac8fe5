"""The Cluster API servicer: checks each request, then translates it into registry and store calls.

Every OrchError becomes its gRPC status (``apimachinery.errors``), so a lost
compare-and-swap reaches ``orchctl`` as ABORTED and a bad spec as INVALID_ARGUMENT
with the field path in the message.

**Hostile input gets a clear error and changes nothing.** Every request is checked
before it reaches the registry or etcd, and a refused one writes nothing:

* The envelope: ``kind`` (required; an unknown one is NOT_FOUND, as kube-apiserver
  says "the server doesn't have a resource type"), ``namespace`` (a DNS-1123 label, or
  empty), ``name`` (a DNS-1123 subdomain: every stored object has one, and it becomes
  an etcd key segment, so ``a/b`` must never pass), ``labelSelector`` (parsed, at most
  ``MAX_SELECTOR_CHARS``), ``resourceVersion`` (not negative, not past etcd's current
  revision), ``gracePeriodSeconds``, ``tailLines``, ``sinceSeconds``. INVALID_ARGUMENT
  names the field.
* Every JSON document (Apply's objects, PatchNode's patch): at most
  ``MAX_OBJECT_BYTES`` (etcd's request limit) before it is parsed, then parsed
  strictly (``strict_json``) and walked by ``validation.document_problem``: no NaN or
  Infinity, integers within int64, no lone surrogates, nesting at most
  ``MAX_DEPTH``, and no duplicate keys. Python's json would keep the last of two equal
  keys without a word; kubectl's strict field validation refuses them, and so do we,
  since a document with two ``image:`` lines does not say what its author meant.
* At most ``MAX_OBJECTS_PER_TXN`` documents in one Apply: they are written in one etcd
  transaction (``--max-txn-ops``). The registry checks the size of that transaction
  before writing it (``scheduler.registry``), since the stored objects are larger than
  the applied ones (defaults, uid, status).
* A message that does not even decode as the request type is INVALID_ARGUMENT when the
  service is registered with ``add_cluster_service`` (gRPC itself would answer
  UNKNOWN with the parser's exception in the message).
* An exception no check foresaw is logged with its traceback and answered INTERNAL,
  without internals in the message: a fuzzer (tests/test_fuzz_api.py) treats either as
  a bug.

**Who may do what** (scheduler/auth.py, docs/rbac.md): every method first
authenticates its caller (``AccessControl.call``), checks its request, then asks for
the permissions it needs as ``Attributes`` (verb, resource, namespace, name) before
it reads or writes anything; a refusal is PERMISSION_DENIED naming the missing
permission, and changes nothing. Apply asks per object for *create* and *update*
(whichever the write turns out to be; a dry run too), and the whole Apply is refused
if any object is.

Status messages are capped (``status_message``): gRPC sends them percent-encoded in a
trailer, and a client refuses metadata over 16 KiB (the stream then fails with
RESOURCE_EXHAUSTED and the real error is lost). A long validation error keeps its
first problems and says how many more there were.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from apimachinery.errors import ExpiredError, FieldError, NotFoundError, OrchError, ValidationError
from apimachinery.labels import SelectorError, parse_selector, validate_dns1123_label, validate_dns1123_subdomain
from apimachinery.meta import KINDS, Kind, Obj, kind_for
from apimachinery.pb import agent_pb2
from apimachinery.pb import cluster_pb2 as pb
from apimachinery.pb import cluster_pb2_grpc as pb_grpc
from apimachinery.validation import (
    INT64_MAX,
    MAX_GRACE_PERIOD_SECONDS,
    MAX_OBJECT_BYTES,
    DocumentError,
    document_problem,
    loads_json,
    validate,
)
from scheduler import auth
from scheduler.auth import APPLY, AccessControl, Attributes, Call, Decision
from scheduler.proxy import AgentProxy, UsageSampler
from scheduler.registry import Registry
from scheduler.store import MAX_OBJECTS_PER_TXN, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME = "orch.v1.Cluster"

#: A label selector longer than this is refused before it is parsed. Kubernetes has no
#: limit of its own, but its selectors travel in a URL, which servers cap at 8-16 KiB.
MAX_SELECTOR_CHARS = 16 * 1024

#: The most a status message may take on the wire, percent-encoded (gRPC escapes every
#: byte outside printable ASCII as %XX). A client's default metadata limit is 8 KiB
#: (soft) to 16 KiB (hard) for all of a response's trailers together.
MAX_STATUS_WIRE_BYTES = 6 * 1024

#: What a refused request is told when the scheduler itself failed: no traceback, no
#: exception text (which can quote internals), just where to look.
INTERNAL_MESSAGE = "internal error in the scheduler: its log has the details"


# --- the answers ---------------------------------------------------------------------------


def _wire_bytes(char: str) -> int:
    return 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode("utf-8"))


def status_message(text: str, limit: int = MAX_STATUS_WIRE_BYTES) -> str:
    """``text`` as a gRPC status message can carry it: encodable (a lone surrogate is
    written as ``\\udxxx``) and at most ``limit`` bytes once percent-encoded."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) * 12 <= limit or sum(_wire_bytes(c) for c in text) <= limit:
        return text
    suffix = " ... (message truncated)"
    budget = limit - len(suffix)
    for i, char in enumerate(text):
        budget -= _wire_bytes(char)
        if budget < 0:
            return text[:i] + suffix
    return text  # unreachable: the whole text is over the limit


def error_message(e: OrchError) -> str:
    """What a client is told about ``e``: a validation error with more problems than a
    status message holds lists the first ones and how many more there are."""
    if not isinstance(e, ValidationError) or len(e.errors) < 2:
        return status_message(str(e))
    budget = MAX_STATUS_WIRE_BYTES // 2  # room for percent-encoding of non-ASCII text
    shown: list[str] = []
    for fe in e.errors:
        text = str(fe)
        if shown and len(text) > budget:
            break
        shown.append(text)
        budget -= len(text) + 2
    more = len(e.errors) - len(shown)
    text = "; ".join(shown) + (f"; and {more} more problem{'s' if more > 1 else ''}" if more else "")
    return status_message(f"{e.context}: {text}" if e.context else text)


async def abort(context: grpc.aio.ServicerContext, e: OrchError) -> None:
    auth.ending(e.code)  # the audit record first: abort sends the status at once
    await context.abort(e.code, error_message(e))


async def _abort_internal(context: grpc.aio.ServicerContext, what: str) -> None:
    log.exception("Cluster API %s failed", what)
    auth.ending(grpc.StatusCode.INTERNAL)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


async def guarded(context: grpc.aio.ServicerContext, call: Awaitable[T], what: str = "call") -> T:
    """``call``'s result; an OrchError aborts the call with its status, anything else with INTERNAL."""
    try:
        return await call
    except grpc.aio.AbortError:
        raise
    except OrchError as e:
        await abort(context, e)
    except Exception:  # noqa: BLE001 - a bug: logged, and the caller gets a clean status
        await _abort_internal(context, what)
    raise AssertionError("unreachable: abort raises")


async def streamed(context: grpc.aio.ServicerContext, items: AsyncGenerator[T, None],
                   what: str) -> AsyncGenerator[T, None]:
    """``items`` passed on; an OrchError ends the stream with its status, anything else with INTERNAL."""
    try:
        async with contextlib.aclosing(items) as it:
            async for item in it:
                yield item
    except grpc.aio.AbortError:
        raise
    except OrchError as e:
        await abort(context, e)
    except Exception:  # noqa: BLE001 - a bug: logged, and the caller gets a clean status
        await _abort_internal(context, what)


# --- request checks ------------------------------------------------------------------------


def _shown(text: str, limit: int = 80) -> str:
    return json.dumps(text if len(text) <= limit else text[: limit - 3] + "...", ensure_ascii=False)


def resolve_kind(word: str) -> Kind:
    if not word:
        raise ValidationError(FieldError("kind", "is required"))
    kind = KINDS.get(word) or kind_for(word)
    if kind is None:
        raise NotFoundError(f"the server doesn't have a resource type {_shown(word)}")
    return kind


def check_name(name: str, field: str = "name") -> str:
    problem = validate_dns1123_subdomain(name)
    if problem:
        raise ValidationError(FieldError(field, problem))
    return name


def _optional_label(value: str, field: str) -> str:
    """``value`` if it is empty or a DNS-1123 label; ValidationError naming ``field`` otherwise."""
    problem = validate_dns1123_label(value) if value else None
    if problem:
        raise ValidationError(FieldError(field, problem))
    return value


def check_namespace(namespace: str, field: str = "namespace") -> str:
    """``namespace`` if it is a DNS-1123 label, or empty (the default, or every namespace)."""
    return _optional_label(namespace, field)


def check_container(name: str, field: str = "container") -> str:
    """A container name, or empty (the pod's only one)."""
    return _optional_label(name, field)


def matcher(selector: str) -> Any:
    if len(selector) > MAX_SELECTOR_CHARS:
        raise ValidationError(FieldError("labelSelector", f"is {len(selector)} characters long; "
                                                          f"the most is {MAX_SELECTOR_CHARS}"))
    try:
        return parse_selector(selector)
    except SelectorError as e:
        raise ValidationError(FieldError("labelSelector", str(e))) from e


def _namespace(kind: Kind, namespace: str) -> str | None:
    check_namespace(namespace)
    if not kind.namespaced:
        return None
    return namespace or None


def _non_negative(value: int, field: str, maximum: int = INT64_MAX) -> int:
    if value < 0:
        raise ValidationError(FieldError(field, f"must be 0 or more, got {value}"))
    if value > maximum:
        raise ValidationError(FieldError(field, f"must be at most {maximum}, got {value}"))
    return value


def strict_json(text: str, field: str) -> Any:
    """The JSON value in ``text``, or a ValidationError on ``field`` saying why not.

    Refused beyond what ``json.loads`` refuses: more than MAX_OBJECT_BYTES, NaN and
    Infinity, integers outside int64 (or too long to convert), duplicate keys, lone
    surrogates and nesting deeper than MAX_DEPTH.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_OBJECT_BYTES:
        raise ValidationError(FieldError(field, f"is {size} bytes of JSON; the most is {MAX_OBJECT_BYTES} "
                                                "(etcd's request limit)"))
    try:
        value = loads_json(text)
    except json.JSONDecodeError as e:
        raise ValidationError(FieldError(field, f"not JSON: {e}")) from None
    except DocumentError as e:
        raise ValidationError(FieldError(field, str(e))) from None
    problem = document_problem(value)
    if problem is not None:
        path, why = problem
        raise ValidationError(FieldError(f"{field}: {path}" if path else field, why))
    return value


def apply_documents(texts: list[str]) -> list[Any]:
    """The parsed documents of an Apply; every document's problem at once, or a ValidationError."""
    if len(texts) > MAX_OBJECTS_PER_TXN:
        raise ValidationError(FieldError(
            "objects", f"{len(texts)} objects in one apply; the most is {MAX_OBJECTS_PER_TXN} (they are written "
                       "in one etcd transaction): apply them in smaller groups"))
    errors: list[FieldError] = []
    raws: list[Any] = []
    for i, text in enumerate(texts):
        try:
            raws.append(strict_json(text, f"document {i}"))
        except ValidationError as e:
            errors.extend(e.errors)
    if errors:
        raise ValidationError(errors)
    return raws


async def checked(context: grpc.aio.ServicerContext, check: Callable[[], object]) -> None:
    """Run a request check; a problem aborts the call with its status."""
    await guarded(context, _call(check), "request check")


async def _call(check: Callable[[], object]) -> object:
    return check()


def _check_logs(request: agent_pb2.LogsRequest) -> None:
    check_namespace(request.namespace)
    check_name(request.pod, "pod")
    check_container(request.container)
    if request.HasField("tail_lines"):
        _non_negative(request.tail_lines, "tailLines")
    if request.HasField("since_seconds"):
        _non_negative(request.since_seconds, "sinceSeconds")


def _check_exec_input(message: agent_pb2.ExecInput) -> None:
    if message.WhichOneof("input") != "start":
        return  # apimachinery.execstream refuses a stream that does not open with its start
    start = message.start
    check_namespace(start.namespace)
    check_name(start.pod, "pod")
    check_container(start.container)


def _check_image_chunk(chunk: agent_pb2.ImageChunk) -> None:
    if chunk.node:
        check_name(chunk.node, "node")


# --- what each request asks (scheduler/auth.py decides) ------------------------------------------


def _target(verb: str, kind: Kind, namespace: str | None, name: str = "") -> Attributes:
    """``verb`` on ``kind``; a namespaced kind with ``namespace`` None means every namespace."""
    return Attributes(verb, kind.plural, namespace if kind.namespaced else None, name, kind.namespaced)


def apply_targets(raws: list[Any]) -> list[tuple[Kind, str | None, str]]:
    """Kind, namespace and name of every applied document that validates: what it would
    write, read from the validated object (defaults applied) so that the permission asked
    for is the one the write needs. A document that does not validate is left out: the
    registry refuses the whole Apply for it, and nothing is written."""
    out = []
    for raw in raws:
        try:
            obj = validate(raw)
        except ValidationError:
            continue
        kind = KINDS.get(obj["kind"])
        if kind is not None:
            md = obj["metadata"]
            out.append((kind, md.get("namespace") if kind.namespaced else None, md["name"]))
    return out


def _top_target(kind: str, namespace: str) -> Attributes:
    if kind == "nodes":
        return Attributes("get", "nodes/metrics", None, namespaced=False)
    if kind == "pods":
        return Attributes("get", "pods/metrics", namespace or None)
    raise ValidationError(FieldError("kind", f'must be "nodes" or "pods", got {kind!r}'))


def _exec_target(message: agent_pb2.ExecInput) -> Attributes:
    if message.WhichOneof("input") != "start":
        # Refused here too (apimachinery.execstream does it), so that no stream goes on unauthorised.
        raise ValidationError(FieldError("", "the first message of an exec must be its start"))
    start = message.start
    return Attributes("create", "pods/exec", start.namespace or "default", start.pod)


IMAGES = Attributes("create", "images", None, namespaced=False)


async def _first_checked(context: grpc.aio.ServicerContext, requests: AsyncIterator[T],
                         check: Callable[[T], None]) -> AsyncIterator[T]:
    """``requests`` with the first one checked before it is passed on."""
    first = True
    async for message in requests:
        if first:
            first = False
            await checked(context, lambda: check(message))
        yield message


# --- the service ---------------------------------------------------------------------------


class ClusterService(pb_grpc.ClusterServicer):
    """The Cluster API. ``access`` says who may do what and where that is recorded; the
    default (``AccessControl()``, for tests and embedding) binds nobody and audits
    nothing: the anonymous caller of a plaintext port is admin, a TLS caller gets what
    system:masters and system:schedulers get. The scheduler passes ``auth.from_args``."""

    def __init__(self, registry: Registry, access: AccessControl | None = None) -> None:
        self.registry = registry
        self.store: Store = registry.store
        self.proxy = AgentProxy(self.store)
        self.usage = UsageSampler(self.proxy)
        self.access = access if access is not None else AccessControl()

    async def Apply(self, request: pb.ApplyRequest, context: grpc.aio.ServicerContext) -> pb.ApplyResponse:
        async with self.access.call(context, "Apply") as call:
            async def apply() -> Any:
                raws = apply_documents(list(request.objects_json))
                targets = await self._authorize_apply(call, raws, request.dry_run)
                results = await self.registry.apply(raws, dry_run=request.dry_run)
                if len(results) == len(targets):  # always, once the registry took every document
                    call.set_targets([replace(t, verb="create" if r.action == "created" else "update")
                                      for t, r in zip(targets, results, strict=True)])
                return results

            results = await guarded(context, apply(), "Apply")
            return pb.ApplyResponse(results=[pb.ApplyResult(object_json=json.dumps(r.obj), action=r.action)
                                             for r in results])

    async def _authorize_apply(self, call: Call, raws: list[Any], dry_run: bool) -> list[Attributes]:
        """Create or update per object, or Forbidden for the whole Apply.

        A caller allowed both (every built-in role pairs them) needs no lookup: which
        one it was, the registry's result says. A caller allowed neither is refused
        "create or update" *without* a lookup: naming the one it would have been would
        tell a caller who may not read the object whether it exists. Only a caller
        allowed exactly one has the object looked up.
        """
        decided: list[tuple[Attributes, Decision]] = []
        for kind, namespace, name in apply_targets(raws):
            either = _target(APPLY, kind, namespace, name)
            may_create = call.check(replace(either, verb="create"))
            may_update = call.check(replace(either, verb="update"))
            if may_create.allowed and may_update.allowed:
                decided.append((either, may_create))
            elif not may_create.allowed and not may_update.allowed:
                decided.append((either, call.refusal(either)))
            elif await self.store.get_or_none(kind, namespace, name) is not None:
                decided.append((replace(either, verb="update"), may_update))
            else:
                decided.append((replace(either, verb="create"), may_create))
        call.grant(decided, dry_run=dry_run)
        return [a for a, _ in decided]

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.ObjectResponse:
        async with self.access.call(context, "Get") as call:
            async def get() -> Obj:
                kind = resolve_kind(request.kind)
                namespace = _namespace(kind, request.namespace) or "default"
                name = check_name(request.name)
                call.authorize(_target("get", kind, namespace, name))
                return await self.store.get(kind, namespace, name)

            return pb.ObjectResponse(object_json=json.dumps(await guarded(context, get(), "Get")))

    async def List(self, request: pb.ListRequest, context: grpc.aio.ServicerContext) -> pb.ListResponse:
        async with self.access.call(context, "List") as call:
            async def list_() -> tuple[list[Obj], int]:
                kind = resolve_kind(request.kind)
                namespace = _namespace(kind, request.namespace)
                sel = matcher(request.label_selector)
                call.authorize(_target("list", kind, namespace))
                items, rev = await self.store.list(kind, namespace)
                return [o for o in items if sel.matches(o["metadata"].get("labels") or {})], rev

            items, rev = await guarded(context, list_(), "List")
            return pb.ListResponse(items_json=[json.dumps(o) for o in items], resource_version=rev)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.ObjectResponse:
        async with self.access.call(context, "Delete") as call:
            async def delete() -> Obj:
                kind = resolve_kind(request.kind)
                namespace = _namespace(kind, request.namespace) or "default"
                name = check_name(request.name)
                grace = request.grace_period_seconds if request.HasField("grace_period_seconds") else None
                if grace is not None:
                    _non_negative(grace, "gracePeriodSeconds", MAX_GRACE_PERIOD_SECONDS)
                call.authorize(_target("delete", kind, namespace, name))
                return await self.registry.delete(kind, namespace, name, grace)

            return pb.ObjectResponse(object_json=json.dumps(await guarded(context, delete(), "Delete")))

    async def Watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchEvent]:
        async with self.access.call(context, "Watch", long_running=True) as call:
            async with contextlib.aclosing(streamed(context, self._watch(request, context, call), "Watch")) as events:
                async for event in events:
                    yield event

    async def _watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext,
                     call: Call) -> AsyncGenerator[pb.WatchEvent, None]:
        kind = resolve_kind(request.kind)
        ns = _namespace(kind, request.namespace)
        sel = matcher(request.label_selector)
        start = _non_negative(request.resource_version, "resourceVersion")
        call.authorize(_target("watch", kind, ns))
        if start > 0:
            current = await self.store.revision()
            if start > current:
                # kube-apiserver's "too large resource version": the client relists, as for a compacted one.
                raise ExpiredError(f"too large resource version: {start}, the current revision is {current}")
        # The watch is accepted: say so at once (kube-apiserver flushes its headers here too), so a
        # client can tell an established watch with nothing to report from one still being checked.
        await context.send_initial_metadata(())
        if start == 0:
            items, rev = await self.store.list(kind, ns)
            for obj in items:
                if sel.matches(obj["metadata"].get("labels") or {}):
                    yield pb.WatchEvent(type="ADDED", object_json=json.dumps(obj))
            start = rev
        async with contextlib.aclosing(self.store.watch(kind, ns, start + 1)) as changes:  # type: ignore[type-var]
            async for ev in changes:
                if sel.matches(ev.obj["metadata"].get("labels") or {}):
                    yield pb.WatchEvent(type=ev.type, object_json=json.dumps(ev.obj))

    async def PatchNode(self, request: pb.PatchNodeRequest, context: grpc.aio.ServicerContext) -> pb.ObjectResponse:
        async with self.access.call(context, "PatchNode") as call:
            async def patch() -> Obj:
                name = check_name(request.name)
                body = strict_json(request.spec_patch_json or "{}", "spec")
                call.authorize(Attributes("patch", "nodes", None, name, namespaced=False))
                return await self.registry.patch_node_spec(name, body)

            return pb.ObjectResponse(object_json=json.dumps(await guarded(context, patch(), "PatchNode")))

    async def Top(self, request: pb.TopRequest, context: grpc.aio.ServicerContext) -> pb.TopReply:
        """``orchctl top``: usage read from the agents' Stats (scheduler/proxy.py's UsageSampler)."""
        async with self.access.call(context, "Top") as call:
            async def top() -> tuple[list[pb.TopEntry], float]:
                namespace = check_namespace(request.namespace) if request.namespace else ""
                call.authorize(_top_target(request.kind, namespace))
                return await self.usage.top(request.kind, namespace)

            entries, window = await guarded(context, top(), "Top")
            return pb.TopReply(entries=entries, window_seconds=window)

    # Logs and exec go to the agent of the pod's node (scheduler/proxy.py).

    async def PodLogs(self, request: agent_pb2.LogsRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.LogChunk]:
        async with self.access.call(context, "PodLogs", long_running=True) as call:
            await checked(context, lambda: _check_logs(request))
            await checked(context, lambda: call.authorize(
                Attributes("get", "pods/log", request.namespace or "default", request.pod)))
            async with contextlib.aclosing(streamed(context, self.proxy.logs(request, context), "PodLogs")) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def ImportImage(self, request_iterator: AsyncIterator[agent_pb2.ImageChunk],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.ImportImageReply]:
        async with self.access.call(context, "ImportImage") as call:
            # Decided before a byte of the image is read: the permission does not depend on it.
            await checked(context, lambda: call.authorize(IMAGES))

            def check(chunk: agent_pb2.ImageChunk) -> None:
                _check_image_chunk(chunk)
                call.name_override = chunk.node or None  # the node, for the record; none: every Ready node

            requests = _first_checked(context, request_iterator, check)
            async with contextlib.aclosing(streamed(context, self.proxy.import_image(requests, context),
                                                    "ImportImage")) as replies:
                async for reply in replies:
                    yield reply

    async def PodExec(self, request_iterator: AsyncIterator[agent_pb2.ExecInput],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.ExecOutput]:
        async with self.access.call(context, "PodExec", long_running=True) as call:
            def check(message: agent_pb2.ExecInput) -> None:
                _check_exec_input(message)
                call.authorize(_exec_target(message))

            requests = _first_checked(context, request_iterator, check)
            async with contextlib.aclosing(streamed(context, self.proxy.exec(requests, context),
                                                    "PodExec")) as outputs:
                async for out in outputs:
                    yield out


# --- registration: requests that do not decode ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What arrived in place of a request message that does not parse as its type."""

    type_name: str
    error: str


def _tolerant_deserializer(cls: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return Undecodable(cls.DESCRIPTOR.full_name, str(e))
    return deserialize


async def _refuse_undecodable(context: grpc.aio.ServicerContext, message: Undecodable) -> None:
    # The parser's text names the message type and what was wrong ("String field had bad UTF-8").
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        status_message(f"the request is not a valid {message.type_name} message: {message.error}"))


async def _decoded(context: grpc.aio.ServicerContext, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for message in requests:
        if isinstance(message, Undecodable):
            await _refuse_undecodable(context, message)
        yield message


def _handler(method: Callable[..., Any], client_streaming: bool, server_streaming: bool) -> Callable[..., Any]:
    """``method`` behind a check that its request (or each streamed one) decoded."""
    if client_streaming and server_streaming:
        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with contextlib.aclosing(method(_decoded(context, requests), context)) as out:
                async for item in out:
                    yield item
        return stream_stream
    if client_streaming:
        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await method(_decoded(context, requests), context)
        return stream_unary
    if server_streaming:
        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse_undecodable(context, request)
            async with contextlib.aclosing(method(request, context)) as out:
                async for item in out:
                    yield item
        return unary_stream

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await _refuse_undecodable(context, request)
        return await method(request, context)
    return unary_unary


_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_cluster_service(server: grpc.aio.Server, service: ClusterService) -> None:
    """Serve ``service`` on ``server``, as ``add_ClusterServicer_to_server`` does, but with a
    request that does not decode answered INVALID_ARGUMENT rather than UNKNOWN (gRPC's
    answer when a deserializer raises, with the exception's text as the message)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["Cluster"].methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        streams = (method.client_streaming, method.server_streaming)
        handlers[method.name] = _HANDLER_FACTORIES[streams](
            _handler(getattr(service, method.name), *streams),
            request_deserializer=_tolerant_deserializer(request_cls),
            response_serializer=response_cls.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
