"""Informers: a cache of one kind, kept by list + watch from etcd; and ``Loop``, which runs a
controller's pass on every change to its informers and at least every ``resync`` seconds.

The scheduler's controllers read these caches, never etcd directly, and treat
every notification as a hint to re-examine the whole cache (level-triggered).
When the watch's revision has been compacted, or etcd was unreachable, the
informer lists again and carries on: the cache heals, no event is trusted to
have been delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from apimachinery.errors import ExpiredError, OrchError, UnavailableError
from apimachinery.meta import Kind, Obj
from scheduler.store import Store, WatchEvent

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace or "", name)
Listener = Callable[[WatchEvent | None], None]
IndexFunc = Callable[[Obj], str | None]


def obj_key(obj: Obj) -> Key:
    md = obj["metadata"]
    return (md.get("namespace") or "", md["name"])


class Informer:
    """The current objects of one kind, by (namespace, name)."""

    def __init__(self, store: Store, kind: Kind) -> None:
        self.store = store
        self.kind = kind
        self.cache: dict[Key, Obj] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self._listeners: list[Listener] = []
        self._index_funcs: dict[str, IndexFunc] = {}
        self._indices: dict[str, dict[str, dict[Key, Obj]]] = {}

    def add_index(self, name: str, func: IndexFunc) -> None:
        """Keep the objects grouped by ``func(obj)`` (None: left out), as client-go's Indexer:
        a controller that needs the pods of one owner reads that group instead of scanning
        every pod of the cluster on every event."""
        self._index_funcs[name] = func
        index: dict[str, dict[Key, Obj]] = {}
        for key, obj in self.cache.items():
            value = func(obj)
            if value is not None:
                index.setdefault(value, {})[key] = obj
        self._indices[name] = index

    def by_index(self, name: str, value: str) -> list[Obj]:
        return list(self._indices[name].get(value, {}).values())

    def index_values(self, name: str) -> list[str]:
        return list(self._indices[name])

    def _store(self, key: Key, obj: Obj | None) -> None:
        """Put (``obj``) or drop (None) one object, in the cache and in every index."""
        old = self.cache.pop(key, None) if obj is None else self.cache.get(key)
        if obj is not None:
            self.cache[key] = obj
        for name, func in self._index_funcs.items():
            index = self._indices[name]
            before = func(old) if old is not None else None
            after = func(obj) if obj is not None else None
            if before is not None and before != after:
                group = index.get(before)
                if group is not None:
                    group.pop(key, None)
                    if not group:
                        del index[before]
            if after is not None:
                index.setdefault(after, {})[key] = obj  # type: ignore[assignment]  # after is set only with obj

    def add_listener(self, listener: Listener) -> None:
        """``listener(event)`` after every change; ``listener(None)`` after a (re)list."""
        self._listeners.append(listener)

    def _notify(self, event: WatchEvent | None) -> None:
        for listener in self._listeners:
            listener(event)

    def items(self) -> list[Obj]:
        return list(self.cache.values())

    async def run(self, *, resume: bool = False) -> None:
        """List, then watch from the list's revision; list again whenever the watch fails.

        ``resume``: carry on from the cache and revision an earlier, cancelled ``run``
        left behind, watching from ``revision + 1`` without listing first; if that
        revision has been compacted meanwhile, this lists like any expired watch.
        """
        backoff = 0.2
        while True:
            try:
                if not resume:
                    items, rev = await self.store.list(self.kind)
                    self.cache = {obj_key(o): o for o in items}
                    for name, func in self._index_funcs.items():
                        self.add_index(name, func)
                    self.revision = rev
                    self.synced.set()
                    self._notify(None)
                    backoff = 0.2
                resume = False
                async for ev in self.store.watch(self.kind, None, self.revision + 1):
                    self._store(obj_key(ev.obj), None if ev.type == "DELETED" else ev.obj)
                    self.revision = ev.revision
                    self._notify(ev)
                # The watch ended without an error (the client closed it): relist.
            except ExpiredError as e:
                log.info("%s informer: %s; relisting", self.kind.plural, e)
            except UnavailableError as e:
                log.warning("%s informer: %s; retrying in %.1fs", self.kind.plural, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


class Loop:
    """Run ``body`` on every hint from the informers and at least every ``resync`` seconds."""

    def __init__(self, name: str, informers: list[Informer], body: Callable[[], Coroutine[Any, Any, None]],
                 resync: float) -> None:
        self.name = name
        self.informers = informers
        self.body = body
        self.resync = resync
        self._wake = asyncio.Event()
        for inf in informers:
            inf.add_listener(lambda ev: self._wake.set())

    def wake_after(self, delay: float) -> None:
        """Run ``body`` again ``delay`` seconds from now (a deadline no informer event marks)."""
        asyncio.get_running_loop().call_later(max(0.0, delay), self._wake.set)

    async def run(self) -> None:
        for inf in self.informers:
            await inf.synced.wait()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.resync)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.body()
            except OrchError as e:
                log.warning("%s pass failed: %s", self.name, e)
