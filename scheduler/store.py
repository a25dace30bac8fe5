"""The etcd store: the only durable state of a cluster, and the only code that writes it.

Key layout, one key per object, JSON values::

    <prefix>/pods/<namespace>/<name>
    <prefix>/deployments/<namespace>/<name>
    <prefix>/nodes/<name>

``metadata.resourceVersion`` is never stored: it is the key's etcd ``mod_revision``,
filled in on every read. Every write is a transaction guarded by that revision
(``create_revision == 0`` to create), so a lost race is a ``ConflictError`` and
never a silent overwrite. Several objects can be written in one transaction, which
is how ``apply`` of a multi-document file is all-or-nothing.

**Node allocations** (``<prefix>/nodeallocations/<node>``) make a binding safe
against other schedulers, not just against stale data. Each holds the ledger of
pods the schedulers bound to that node, by uid, with their requests. ``bind`` is
one transaction: the pod's revision *and* the ledger's revision are compared, the
pod (with ``spec.nodeName``) and the ledger (with the pod added) are put. The
scheduler checks the ledger's sum against the node's allocatable before it writes;
two schedulers that both read the same ledger cannot both commit, so the loser
re-reads, re-checks and either fits or gives up. Nothing else writes a ledger:
pods that leave are dropped lazily by the next bind to that node (see
``scheduler.scheduling``), which derives that from the pods themselves, so a ledger
is only ever a cache of the pods: lost or stale, it heals from them.

A *fenced* store (``Store.fenced``) adds one more compare to each of its writes:
the leader's election key must still have the create revision it had when this
process won it (scheduler/leader.py). The leader-only loops write through one, so
a scheduler that was deposed and has not noticed yet cannot bind a pod.

**Request latency.** ``Store.observer``, when set (scheduler/metrics.py), is told the
operation, the resource, the seconds and whether it failed, for every etcd request but
watches: kube-apiserver's ``etcd_request_duration_seconds{operation,type}``, with its
verbs (a binding is an ``update`` of ``pods``). Stores made by ``fenced`` share it.

**TLS.** With ``EtcdTLS`` (the scheduler's ``--etcd-cafile/--etcd-certfile/--etcd-keyfile``)
the client is ``TLSClient``, aetcd's client dialling a ``secure_channel`` and presenting
the scheduler's etcd client certificate, as etcd started with ``--client-cert-auth``
demands (docs/security.md, "Wiring").
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import aetcd.client
import aetcd.exceptions
import aetcd.rtypes
import aetcd.watcher
import grpc
from aetcd import rpc

from apimachinery import pki
from apimachinery.errors import (
    AlreadyExistsError,
    ConflictError,
    ExpiredError,
    NotFoundError,
    OrchError,
    UnavailableError,
)
from apimachinery.meta import KINDS, Kind, Obj

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/orch"
# etcd's default --max-txn-ops is 128; each object costs one compare and one put.
MAX_OBJECTS_PER_TXN = 60
# Keys with a TTL written within this many seconds share one etcd lease (kube-apiserver's
# --lease-reuse-duration-seconds).
LEASE_REUSE_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Write:
    """One object to write in a transaction: create when ``expected_rv`` is 0."""

    obj: Obj
    expected_rv: int


@dataclass(frozen=True, slots=True)
class Fence:
    """Writes go through only while ``key`` exists with this ``create_revision``."""

    key: bytes
    create_revision: int


class FenceError(UnavailableError):
    """A fenced write found the fence gone: this process no longer leads, and wrote nothing."""


@dataclass(frozen=True, slots=True)
class NodeAllocation:
    """The ledger of one node: ``pods`` maps a pod uid to ``{namespace, name, cpu, memory}``
    (millicores, bytes); ``revision`` is the key's mod_revision, 0 when there is none."""

    node: str
    pods: dict[str, dict[str, Any]]
    revision: int


class AllocationConflict(ConflictError):
    """The node's ledger changed since it was read (another binding to that node won); re-read it."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    revision: int


#: gRPC's default cap on a received message is 4 MiB: a list of 10,000 pods (about 10 MB)
#: would fail, and with it every informer's relist. kube-apiserver's etcd client takes
#: responses up to 2 GiB for the same reason.
MAX_RECEIVE_BYTES = 2**31 - 1


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """The scheduler's side of mutual TLS with etcd (kube-apiserver's ``--etcd-cafile``,
    ``--etcd-certfile``, ``--etcd-keyfile``): etcd's CA, and the client certificate etcd
    started with ``--client-cert-auth`` wants (the PKI's ``etcd/scheduler-client``)."""

    cafile: Path
    certfile: Path
    keyfile: Path

    @classmethod
    def from_pki(cls, pki_dir: Path) -> EtcdTLS:
        files = pki.TLSFiles.for_slot(pki_dir, pki.ETCD_SCHEDULER_CLIENT)
        return cls(files.ca, files.cert, files.key)

    def credentials(self) -> grpc.ChannelCredentials:
        """Read now (PkiError naming the file when one is missing or the key is not the certificate's)."""
        return pki.load_tls(pki.TLSFiles(self.certfile, self.keyfile, self.cafile)).channel_credentials()


class TLSClient(aetcd.Client):
    """``aetcd.Client`` over mutual TLS.

    aetcd 1.0 has no TLS: its ``connect`` always dials ``rpc.insecure_channel``, and there
    is no hook for the channel. This override is that ``connect`` line for line (aetcd
    1.0.0's ``aetcd/client.py``), with one change: the channel is a ``secure_channel``
    with ``tls``'s credentials. Everything else aetcd does on connect is kept — the wait
    when another task is connecting, the stubs, the watcher — except user/password
    authentication, which a client certificate replaces (so it is refused here rather
    than half done). The credentials are read on every connect: a client closed and
    connected again presents a rotated certificate.

    Gotcha: a channel keeps its credentials for its whole life (gRPC Python has no
    reloading channel credentials), so a scheduler picks up a rotated etcd client
    certificate when it restarts; etcd accepts the old one until it expires meanwhile.
    """

    def __init__(self, *, tls: EtcdTLS, **kwargs: Any) -> None:
        if kwargs.get("username") or kwargs.get("password"):
            raise ValueError("TLSClient authenticates with its client certificate, not a user and password")
        super().__init__(**kwargs)
        self.tls = tls

    @aetcd.client._handle_errors
    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # type: ignore[has-type]  # aetcd is untyped
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            self.channel = grpc.aio.secure_channel(target, self.tls.credentials(), options=list(self._options.items()))
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout,
                                                  metadata=self.metadata)
            self._connected.set()
        finally:
            self._is_connecting = False


def etcd_client(host: str, port: int, timeout: int = 10, tls: EtcdTLS | None = None) -> aetcd.Client:
    """An aetcd client that takes responses of any size etcd sends; over mutual TLS with ``tls``."""
    options = {"grpc.max_receive_message_length": MAX_RECEIVE_BYTES}
    if tls is not None:
        return TLSClient(host=host, port=port, timeout=timeout, options=options, tls=tls)
    return aetcd.Client(host=host, port=port, timeout=timeout, options=options)


def _translate(e: Exception) -> OrchError:
    if isinstance(e, aetcd.exceptions.RevisionCompactedError):
        return ExpiredError(f"too old resource version: etcd compacted below {e.compacted_revision}")
    if "required revision has been compacted" in str(e):
        return ExpiredError(f"too old resource version: {e}")
    if isinstance(e, (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError)):
        return UnavailableError(f"etcd unavailable: {e}")
    if isinstance(e, OrchError):
        return e
    return UnavailableError(f"etcd error: {type(e).__name__}: {e}")


#: ``observer(operation, type, seconds, failed)``: see the module docstring.
RequestObserver = Callable[[str, str, float, bool], None]


class Store:
    """Typed access to cluster objects in etcd."""

    def __init__(self, client: aetcd.Client, prefix: str = DEFAULT_PREFIX,
                 fence: Callable[[], Fence | None] | None = None, observer: RequestObserver | None = None) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self._fence = fence
        self.observer = observer
        # ttl -> (lease id, loop time until which new keys may join it); see ttl_lease.
        self._leases: dict[int, tuple[int, float]] = {}

    def fenced(self, fence: Callable[[], Fence | None]) -> Store:
        """This store (same client) with every write guarded by ``fence()``; when it
        returns None, writes fail with FenceError without reaching etcd."""
        return Store(self.client, self.prefix, fence, self.observer)

    def _fence_compares(self) -> tuple[Fence | None, builtins.list[Any]]:
        if self._fence is None:
            return None, []
        fence = self._fence()
        if fence is None:
            raise FenceError("not the leader: this scheduler does not hold the election lease")
        return fence, [self.client.transactions.create(fence.key) == fence.create_revision]

    async def _check_fence(self, fence: Fence | None) -> None:
        """After a failed transaction: raise FenceError when the fence is what failed."""
        if fence is None:
            return
        kv = await self._run(lambda: self.client.get(fence.key), "get", "leases")
        if kv is None or kv.create_revision != fence.create_revision:
            raise FenceError("not the leader any more: the election key was lost; nothing was written")

    @classmethod
    def connect(cls, endpoint: str, prefix: str = DEFAULT_PREFIX, timeout: int = 10,
                tls: EtcdTLS | None = None) -> Store:
        """A store on etcd at ``endpoint`` (``HOST:PORT``; an ``http://`` or ``https://`` in front
        is dropped: TLS is ``tls`` being given), over mutual TLS with ``tls``."""
        host, _, port = endpoint.split("://", 1)[-1].rpartition(":")
        return cls(etcd_client(host or "127.0.0.1", int(port), timeout, tls), prefix)

    async def close(self) -> None:
        await self.client.close()

    # --- keys --------------------------------------------------------------

    def kind_prefix(self, kind: Kind, namespace: str | None = None) -> bytes:
        if kind.namespaced and namespace:
            return f"{self.prefix}/{kind.plural}/{namespace}/".encode()
        return f"{self.prefix}/{kind.plural}/".encode()

    def key(self, kind: Kind, namespace: str | None, name: str) -> bytes:
        if kind.namespaced:
            return f"{self.prefix}/{kind.plural}/{namespace}/{name}".encode()
        return f"{self.prefix}/{kind.plural}/{name}".encode()

    def key_of(self, obj: Obj) -> bytes:
        kind = KINDS[obj["kind"]]
        md = obj["metadata"]
        return self.key(kind, md.get("namespace"), md["name"])

    # --- encoding ----------------------------------------------------------

    @staticmethod
    def _decode(value: bytes, mod_revision: int) -> Obj:
        obj: Obj = json.loads(value)
        obj["metadata"]["resourceVersion"] = str(mod_revision)
        return obj

    @staticmethod
    def _encode(obj: Obj) -> bytes:
        md = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
        return json.dumps({**obj, "metadata": md}, sort_keys=True, separators=(",", ":")).encode()

    async def _run(self, coro_fn: Callable[[], Any], operation: str = "txn", type_: str = "other") -> Any:
        """Await one etcd request, its errors translated, its latency told to the observer as
        ``operation`` on ``type_`` (callers outside this module that name neither: txn/other)."""
        start = time.perf_counter()
        failed = True
        try:
            result = await coro_fn()
            failed = False
            return result
        except OrchError:
            raise
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as e:
            raise _translate(e) from e
        finally:
            if self.observer is not None:
                self.observer(operation, type_, time.perf_counter() - start, failed)

    # --- reads -------------------------------------------------------------

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        got = await self.get_or_none(kind, namespace, name)
        if got is None:
            where = f" in namespace {namespace!r}" if kind.namespaced else ""
            raise NotFoundError(f'{kind.plural} "{name}" not found{where}')
        return got

    async def get_or_none(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        kv = await self._run(lambda: self.client.get(self.key(kind, namespace, name)), "get", kind.plural)
        return None if kv is None else self._decode(kv.value, kv.mod_revision)

    async def list(self, kind: Kind, namespace: str | None = None) -> tuple[list[Obj], int]:
        """Every object of ``kind`` (in ``namespace`` when given) and the revision it was read at."""
        rng = await self._run(lambda: self.client.get_prefix(self.kind_prefix(kind, namespace)), "list", kind.plural)
        return [self._decode(kv.value, kv.mod_revision) for kv in rng], rng.header.revision

    async def revision(self) -> int:
        """etcd's current revision (read from the header of an empty range)."""
        rng = await self._run(lambda: self.client.get_prefix(f"{self.prefix}/.none/".encode(), keys_only=True),
                              "get", "revision")
        return int(rng.header.revision)

    async def compact(self, revision: int) -> None:
        """Drop etcd's history before ``revision``; watches from older revisions get ExpiredError."""
        await self._run(lambda: self.client.compact(revision), "compact", "")

    # --- writes ------------------------------------------------------------

    async def create(self, obj: Obj, *, lease: int | None = None) -> Obj:
        return (await self.write([Write(obj, 0)], lease=lease))[0]

    async def update(self, obj: Obj, expected_rv: int | str | None = None, *, lease: int | None = None) -> Obj:
        """Replace ``obj`` if etcd still holds the revision it was read at."""
        rv = int(expected_rv if expected_rv is not None else obj["metadata"]["resourceVersion"])
        return (await self.write([Write(obj, rv)], lease=lease))[0]

    async def ttl_lease(self, ttl: int, reuse: int = LEASE_REUSE_SECONDS) -> int:
        """The id of an etcd lease that expires ``ttl`` seconds (at least) from now, for keys
        that must delete themselves (Events).

        As kube-apiserver's lease manager: one lease serves every such write of a
        ``reuse``-second window (granted ``ttl + reuse`` so the last key of the window
        still lives ``ttl``), instead of one lease per key that etcd would have to track.
        """
        loop_time = asyncio.get_running_loop().time()
        cached = self._leases.get(ttl)
        if cached is not None and loop_time < cached[1]:
            return cached[0]
        lease = await self._run(lambda: self.client.lease(ttl + reuse), "grant", "etcdleases")
        self._leases[ttl] = (int(lease.id), loop_time + reuse)
        return int(lease.id)

    async def write(self, writes: Iterable[Write], *, lease: int | None = None) -> builtins.list[Obj]:
        """Write every object in one transaction: all or nothing.

        Raises ConflictError (an object changed since it was read, or was deleted),
        AlreadyExistsError (a create found the name taken). Returns the objects as
        stored, with their new resourceVersion. With ``lease`` (``ttl_lease``), etcd
        deletes the keys written when the lease expires.
        """
        writes = builtins.list(writes)
        if not writes:
            return []
        if len(writes) > MAX_OBJECTS_PER_TXN:
            raise OrchError(f"at most {MAX_OBJECTS_PER_TXN} objects can be written at once, got {len(writes)}")
        tx = self.client.transactions
        fence, compares = self._fence_compares()
        puts = []
        for w in writes:
            key = self.key_of(w.obj)
            if w.expected_rv == 0:
                compares.append(tx.create(key) == 0)
            else:
                compares.append(tx.mod(key) == w.expected_rv)
            puts.append(tx.put(key, self._encode(w.obj), lease=lease))
        kinds = {KINDS[w.obj["kind"]].plural for w in writes}
        ok, responses = await self._run(lambda: self.client.transaction(compare=compares, success=puts, failure=[]),
                                        "create" if all(w.expected_rv == 0 for w in writes) else "update",
                                        kinds.pop() if len(kinds) == 1 else "mixed")
        if not ok:
            await self._check_fence(fence)
            await self._explain_failed_write(writes)
        revision = responses[0].response_put.header.revision if responses else 0
        out = []
        for w in writes:
            stored = json.loads(self._encode(w.obj))
            stored["metadata"]["resourceVersion"] = str(revision)
            out.append(stored)
        return out

    async def _explain_failed_write(self, writes: builtins.list[Write]) -> None:
        """A guarded transaction failed: find which object lost and say so."""
        for w in writes:
            kind = KINDS[w.obj["kind"]]
            md = w.obj["metadata"]
            current = await self.get_or_none(kind, md.get("namespace"), md["name"])
            if w.expected_rv == 0 and current is not None:
                raise AlreadyExistsError(f'{kind.plural} "{md["name"]}" already exists')
            if w.expected_rv != 0 and current is None:
                raise ConflictError(
                    f'Operation cannot be fulfilled on {kind.plural} "{md["name"]}": the object has been deleted'
                )
            if w.expected_rv != 0 and current is not None and int(current["metadata"]["resourceVersion"]) != w.expected_rv:
                raise ConflictError(
                    f'Operation cannot be fulfilled on {kind.plural} "{md["name"]}": the object has been modified '
                    f"(resourceVersion {current['metadata']['resourceVersion']}, expected {w.expected_rv}); "
                    "please apply your changes to the latest version and try again"
                )
        raise ConflictError("the objects changed while they were being written; try again")

    async def delete(self, obj_or_kind: Obj | Kind, namespace: str | None = None, name: str | None = None,
                     *, expected_rv: int | None = None) -> bool:
        """Delete one object, guarded by ``expected_rv`` when given. False when it was already gone."""
        if isinstance(obj_or_kind, Kind):
            assert name is not None
            key = self.key(obj_or_kind, namespace, name)
            plural = obj_or_kind.plural
            label = f'{plural} "{name}"'
        else:
            key = self.key_of(obj_or_kind)
            plural = KINDS[obj_or_kind["kind"]].plural
            label = f'{plural} "{obj_or_kind["metadata"]["name"]}"'
        tx = self.client.transactions
        fence, compares = self._fence_compares()
        if expected_rv is None and fence is None:
            res = await self._run(lambda: self.client.delete(key), "delete", plural)
            return bool(res and res.deleted)
        if expected_rv is not None:
            compares.append(tx.mod(key) == expected_rv)
        ok, responses = await self._run(lambda: self.client.transaction(
            compare=compares, success=[tx.delete(key)], failure=[]), "delete", plural)
        if ok and expected_rv is None:
            return bool(responses and responses[0].response_delete_range.deleted)
        if not ok:
            await self._check_fence(fence)
            raise ConflictError(f"Operation cannot be fulfilled on {label}: the object has been modified")
        return True

    async def update_with_retry(self, kind: Kind, namespace: str | None, name: str,
                                mutate: Callable[[Obj], Obj | None], attempts: int = 8) -> Obj | None:
        """Read, apply ``mutate`` and write back, re-reading on conflict.

        For writers that own a part of the object (the status from a node, a binding)
        and can recompute their change on the latest copy. ``mutate`` returns None to
        make no change. Returns the stored object, or None when nothing was written.
        """
        for attempt in range(attempts):
            current = await self.get(kind, namespace, name)
            rv = int(current["metadata"]["resourceVersion"])
            changed = mutate(json.loads(json.dumps(current)))
            if changed is None:
                return None
            try:
                return await self.update(changed, rv)
            except ConflictError:
                # Random, growing pauses: writers that lost together and retried in lockstep
                # would collide again, one getting through per round, the rest giving up.
                await asyncio.sleep(random.uniform(0, min(0.01 * 2 ** attempt, 0.5)))
        raise ConflictError(f'{kind.plural} "{name}": too many concurrent writers, gave up')

    # --- bindings ----------------------------------------------------------

    def allocation_key(self, node: str) -> bytes:
        return f"{self.prefix}/nodeallocations/{node}".encode()

    async def get_allocation(self, node: str) -> NodeAllocation:
        kv = await self._run(lambda: self.client.get(self.allocation_key(node)), "get", "nodeallocations")
        if kv is None:
            return NodeAllocation(node, {}, 0)
        return NodeAllocation(node, dict(json.loads(kv.value).get("pods") or {}), int(kv.mod_revision))

    async def list_allocations(self) -> dict[str, NodeAllocation]:
        """Every node's ledger, in one range read (a node without one is absent)."""
        prefix = f"{self.prefix}/nodeallocations/"
        rng = await self._run(lambda: self.client.get_prefix(prefix.encode()), "list", "nodeallocations")
        out = {}
        for kv in rng:
            node = kv.key.decode()[len(prefix):]
            out[node] = NodeAllocation(node, dict(json.loads(kv.value).get("pods") or {}), int(kv.mod_revision))
        return out

    async def bind(self, pod: Obj, expected_rv: int, allocation: NodeAllocation) -> tuple[Obj, NodeAllocation]:
        """Write ``pod`` (already carrying its ``spec.nodeName``) and ``allocation``'s new ledger
        in one transaction, if the pod is still at ``expected_rv`` and the ledger still at
        ``allocation.revision``. Raises ConflictError when the pod changed or went,
        AllocationConflict when only the ledger moved. Returns both as stored."""
        tx = self.client.transactions
        fence, compares = self._fence_compares()
        pod_key, alloc_key = self.key_of(pod), self.allocation_key(allocation.node)
        compares.append(tx.mod(pod_key) == expected_rv)
        if allocation.revision == 0:
            compares.append(tx.create(alloc_key) == 0)
        else:
            compares.append(tx.mod(alloc_key) == allocation.revision)
        ledger = json.dumps({"pods": allocation.pods}, sort_keys=True, separators=(",", ":")).encode()
        value = self._encode(pod)
        puts = [tx.put(pod_key, value), tx.put(alloc_key, ledger)]
        ok, responses = await self._run(lambda: self.client.transaction(compare=compares, success=puts, failure=[]),
                                        "update", "pods")
        if not ok:
            await self._check_fence(fence)
            current = await self.get_or_none(KINDS[pod["kind"]], pod["metadata"].get("namespace"),
                                             pod["metadata"]["name"])
            if current is None or int(current["metadata"]["resourceVersion"]) != expected_rv:
                await self._explain_failed_write([Write(pod, expected_rv)])
            raise AllocationConflict(f'node "{allocation.node}": its allocations changed meanwhile')
        revision = int(responses[0].response_put.header.revision)
        stored = json.loads(value)
        stored["metadata"]["resourceVersion"] = str(revision)
        return stored, NodeAllocation(allocation.node, allocation.pods, revision)

    # --- watch -------------------------------------------------------------

    async def watch(self, kind: Kind, namespace: str | None, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes to objects of ``kind`` from ``start_revision`` (inclusive).

        Raises ExpiredError when the revision was compacted: list again, then watch
        from the list's revision + 1.
        """
        prefix = self.kind_prefix(kind, namespace)
        try:
            watch = await self.client.watch_prefix(prefix, start_revision=start_revision, prev_kv=True)
        except (aetcd.exceptions.ClientError, OSError) as e:
            raise _translate(e) from e
        try:
            async for ev in watch:
                if ev.kind == aetcd.rtypes.EventKind.DELETE or ev.kind == "DELETE":
                    if ev.prev_kv is None:
                        continue
                    obj = self._decode(ev.prev_kv.value, ev.kv.mod_revision)
                    yield WatchEvent("DELETED", obj, ev.kv.mod_revision)
                else:
                    obj = self._decode(ev.kv.value, ev.kv.mod_revision)
                    yield WatchEvent("ADDED" if ev.kv.version == 1 else "MODIFIED", obj, ev.kv.mod_revision)
        except (aetcd.exceptions.ClientError, OSError) as e:
            raise _translate(e) from e
        finally:
            try:
                await watch.cancel()
            except Exception:  # noqa: BLE001 - the stream may already be gone; nothing to release
                pass


async def compact_periodically(store: Store, interval: float = 300.0) -> None:
    """Compact etcd's history as kube-apiserver does: every ``interval`` seconds, up to the
    revision seen one interval earlier, so a watcher has at least ``interval`` to catch up
    and etcd does not keep every heartbeat forever. Watchers further behind get
    ExpiredError and relist."""
    previous: int | None = None
    while True:
        await asyncio.sleep(interval)
        try:
            current = await store.revision()
            if previous is not None and previous > 0:
                await store.compact(previous)
                log.info("compacted etcd history up to revision %d", previous)
            previous = current
        except ExpiredError:
            previous = None  # someone compacted further already
        except UnavailableError as e:
            log.warning("compaction skipped: %s", e)
