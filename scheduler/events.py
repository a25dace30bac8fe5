"""Events: what the cluster's components tell people about objects, as Kubernetes' core/v1 Events.

An Event is a namespaced object of its own (``<prefix>/events/<namespace>/<name>``)
pointing at the object it is about through ``involvedObject`` (kind, namespace,
name, uid). ``orchctl get events`` lists them; ``orchctl describe pod`` shows a
pod's own at the end of its page, which is how a Pending pod explains itself.

Two things keep events cheap, as client-go's recorder and kube-apiserver do:

* **Aggregation.** The same event about the same object (same uid, type, reason,
  message, source) seen again bumps the stored Event's ``count`` and
  ``lastTimestamp`` instead of writing a new one; the recorder remembers the
  Events it wrote in a bounded in-memory cache (client-go's EventCorrelator). The
  update is guarded by the cached resourceVersion: when another writer or the
  expiry got there first, a new Event is created, never a lost update.
* **Expiry.** Every write attaches the key to an etcd lease of ``EVENT_TTL``
  seconds (kube-apiserver's ``--event-ttl``, 1 h), shared by the writes of one
  minute (``Store.ttl_lease``), so etcd deletes old Events by itself and no
  garbage collector is needed. A bumped Event gets the current lease, so it lives
  an hour past its last occurrence.

Recording is best effort: an event is never worth failing what it describes, so
``record`` logs a failure and returns.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence

from apimachinery.errors import ConflictError, NotFoundError, OrchError
from apimachinery.meta import EVENT, KINDS, Obj, now_rfc3339, ref
from scheduler.store import MAX_OBJECTS_PER_TXN, Store, Write

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
EVENT_TYPES = (NORMAL, WARNING)

#: kube-apiserver's default --event-ttl.
EVENT_TTL = 3600
#: client-go's maxLruCacheEntries: how many distinct recent Events a recorder remembers.
MAX_CACHED_EVENTS = 4096

CacheKey = tuple[str, str, str, str, str]


def involved_object(obj: Obj) -> Obj:
    """``involvedObject``: the reference an Event keeps to what it is about."""
    md = obj.get("metadata", {})
    kind = str(obj.get("kind", ""))
    out: Obj = {"kind": kind, "name": md.get("name", ""), "uid": md.get("uid", "")}
    known = KINDS.get(kind)
    out["apiVersion"] = obj.get("apiVersion") or (known.api_version if known else "v1")
    if md.get("namespace"):
        out["namespace"] = md["namespace"]
    if md.get("resourceVersion"):
        out["resourceVersion"] = md["resourceVersion"]
    return out


def new_event(involved: Obj, type_: str, reason: str, message: str, component: str, now: str) -> Obj:
    """A fresh Event object, named like client-go names them: ``<object name>.<hex>``."""
    ref_ = involved_object(involved)
    # An Event lives in its object's namespace; cluster-scoped objects' go to "default".
    namespace = ref_.get("namespace") or "default"
    name = f"{ref_['name']}.{time.time_ns():x}{secrets.token_hex(2)}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace, "uid": secrets.token_hex(16),
                     "creationTimestamp": now},
        "involvedObject": ref_,
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def bumped(event: Obj, now: str) -> Obj:
    """The same Event seen once more (client-go's EventAggregator)."""
    return {**event, "count": int(event.get("count", 1)) + 1, "lastTimestamp": now}


class EventRecorder:
    """Writes Events for one component (``default-scheduler``, ``node-controller`` …)."""

    def __init__(self, store: Store, component: str) -> None:
        self.store = store
        self.component = component
        # Most recently written Event for each (uid, type, reason, message, component), oldest first.
        self._cache: OrderedDict[CacheKey, Obj] = OrderedDict()

    async def record(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        """Record that ``reason``/``message`` happened to ``involved``; never raises."""
        if type_ not in EVENT_TYPES:
            log.error("event %s about %s has type %r, not Normal or Warning; recorded as Warning",
                      reason, ref(involved), type_)
            type_ = WARNING
        try:
            await self._record(involved, type_, reason, message)
        except OrchError as e:
            log.warning("could not record event %s about %s: %s", reason, ref(involved), e)
        except Exception:
            log.exception("could not record event %s about %s", reason, ref(involved))

    async def record_many(self, items: Sequence[tuple[Obj, str, str, str]]) -> None:
        """``record`` each ``(involved, type, reason, message)``; the new Events among them
        are created together, in transactions of up to ``MAX_OBJECTS_PER_TXN`` (a scheduler
        binding hundreds of pods a second writes as many ``Scheduled`` Events: one
        transaction each was a third of its etcd calls). Never raises."""
        fresh: list[tuple[CacheKey, Obj]] = []
        again: list[tuple[Obj, str, str, str]] = []  # repeats of a fresh one: bumps, once it exists
        keys: set[CacheKey] = set()
        for involved, type_, reason, message in items:
            key = self._key(involved, type_, reason, message)
            if key in keys:
                again.append((involved, type_, reason, message))
            elif key in self._cache or type_ not in EVENT_TYPES:
                await self.record(involved, type_, reason, message)  # an update, or the odd one
            else:
                keys.add(key)
                fresh.append((key, new_event(involved, type_, reason, message, self.component, now_rfc3339())))
        for at in range(0, len(fresh), MAX_OBJECTS_PER_TXN):
            chunk = fresh[at:at + MAX_OBJECTS_PER_TXN]
            try:
                lease = await self.store.ttl_lease(EVENT_TTL)
                stored = await self.store.write([Write(event, 0) for _, event in chunk], lease=lease)
            except OrchError as e:
                log.warning("could not record %d event(s) (%s about %s the first): %s", len(chunk),
                            chunk[0][1]["reason"], ref(chunk[0][1]["involvedObject"]), e)
                continue
            except Exception:
                log.exception("could not record %d event(s)", len(chunk))
                continue
            for (key, _), event in zip(chunk, stored, strict=True):
                self._remember(key, event)
        for item in again:
            await self.record(*item)

    def _key(self, involved: Obj, type_: str, reason: str, message: str) -> CacheKey:
        return str(involved.get("metadata", {}).get("uid", "")), type_, reason, message, self.component

    async def _record(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        key = self._key(involved, type_, reason, message)
        now = now_rfc3339()
        lease = await self.store.ttl_lease(EVENT_TTL)
        cached = self._cache.get(key)
        if cached is not None:
            try:
                stored = await self.store.update(bumped(cached, now), cached["metadata"]["resourceVersion"],
                                                 lease=lease)
                self._remember(key, stored)
                return
            except (ConflictError, NotFoundError):
                # Expired, deleted or changed by someone else: start a new one.
                pass
        stored = await self.store.create(new_event(involved, type_, reason, message, self.component, now),
                                         lease=lease)
        self._remember(key, stored)

    def _remember(self, key: CacheKey, event: Obj) -> None:
        self._cache[key] = event
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED_EVENTS:
            self._cache.popitem(last=False)


__all__ = ["EVENT", "EVENT_TTL", "NORMAL", "WARNING", "EventRecorder", "bumped", "involved_object",
           "new_event"]
