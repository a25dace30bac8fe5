"""The etcd store and the informers, against a real etcd.

One etcd serves the module (``tests.etcd_fixture``); each test writes under a key
prefix of its own and deletes it afterwards. There is no pytest-asyncio: each test
runs its coroutine with ``asyncio.run`` under a deadline, so a hung watch fails the
test instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from apimachinery.errors import AlreadyExistsError, ConflictError, ExpiredError, NotFoundError
from apimachinery.meta import NODE, POD, Obj
from apimachinery.validation import validate
from scheduler.informer import Informer, obj_key
from scheduler.store import MAX_OBJECTS_PER_TXN, Store, WatchEvent, Write, etcd_client
from tests.etcd_fixture import EtcdServer, running_etcd

T = TypeVar("T")
DEADLINE = 20.0


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


def run(server: EtcdServer, body: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``body(store)`` on a fresh client and prefix; delete the prefix and close the client after."""

    async def main() -> T:
        store = Store(etcd_client(server.host, server.port), prefix=server.prefix())
        try:
            return await asyncio.wait_for(body(store), DEADLINE)
        finally:
            with contextlib.suppress(Exception):
                await store.client.delete_prefix(f"{store.prefix}/".encode())
            await store.close()

    return asyncio.run(main())


def pod(name: str, namespace: str = "default", **annotations: str) -> Obj:
    obj = validate({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": namespace, "annotations": annotations or None},
                    "spec": {"containers": [{"name": "c", "image": "host", "command": ["sleep", "1"]}]}})
    if not annotations:
        obj["metadata"].pop("annotations", None)
    obj["metadata"].update(uid=f"uid-{name}", creationTimestamp="2024-05-01T10:00:00Z")
    obj["status"] = {"phase": "Pending"}
    return obj


def node(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": f"uid-{name}"}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def rv(obj: Obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


def annotated(obj: Obj, **annotations: str) -> Obj:
    out = json.loads(json.dumps(obj))
    out["metadata"].setdefault("annotations", {}).update(annotations)
    return out


async def contents(store: Store, kind: Any = POD) -> dict[tuple[str, str], Obj]:
    items, _ = await store.list(kind)
    return {obj_key(o): o for o in items}


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


# --- create / get ---------------------------------------------------------------------


def test_create_sets_resource_version_to_the_mod_revision(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        created = await store.create(pod("a"))
        kv = await store.client.get(store.key_of(created))
        assert kv is not None
        assert rv(created) == kv.mod_revision
        raw = json.loads(kv.value)
        assert "resourceVersion" not in raw["metadata"], "the revision is etcd's, never stored"
        got = await store.get(POD, "default", "a")
        assert got == created
        assert await store.revision() == kv.mod_revision
        assert created["metadata"]["uid"] == "uid-a"

    run(etcd, body)


def test_keys_follow_the_documented_layout(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        await store.create(pod("a", "shop"))
        await store.create(node("n1"))
        keys = sorted(kv.key.decode() for kv in await store.client.get_prefix(f"{store.prefix}/".encode()))
        assert keys == [f"{store.prefix}/nodes/n1", f"{store.prefix}/pods/shop/a"]

    run(etcd, body)


def test_get_of_a_missing_object(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        assert await store.get_or_none(POD, "default", "nope") is None
        with pytest.raises(NotFoundError, match='pods "nope" not found'):
            await store.get(POD, "default", "nope")

    run(etcd, body)


def test_create_twice_is_already_exists(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        first = await store.create(pod("a", note="first"))
        with pytest.raises(AlreadyExistsError, match='pods "a" already exists'):
            await store.create(pod("a", note="second"))
        assert await store.get(POD, "default", "a") == first

    run(etcd, body)


def test_same_name_in_another_namespace_is_another_object(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        await store.create(pod("a", "one"))
        await store.create(pod("a", "two"))
        assert sorted(await contents(store)) == [("one", "a"), ("two", "a")]
        items, _ = await store.list(POD, "one")
        assert [o["metadata"]["namespace"] for o in items] == ["one"]

    run(etcd, body)


# --- update ---------------------------------------------------------------------------


def test_update_with_the_current_revision(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        created = await store.create(pod("a"))
        updated = await store.update(annotated(created, step="1"))
        assert rv(updated) > rv(created)
        got = await store.get(POD, "default", "a")
        assert got == updated
        assert got["metadata"]["annotations"] == {"step": "1"}
        again = await store.update(annotated(got, step="2"), rv(got))
        assert rv(again) > rv(updated)

    run(etcd, body)


def test_update_with_a_stale_revision_conflicts_and_changes_nothing(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        created = await store.create(pod("a"))
        current = await store.update(annotated(created, who="first"))
        with pytest.raises(ConflictError, match="has been modified") as e:
            await store.update(annotated(created, who="stale"))
        assert str(rv(created)) in str(e.value) and str(rv(current)) in str(e.value)
        assert await store.get(POD, "default", "a") == current

    run(etcd, body)


def test_update_of_a_deleted_object_conflicts(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        created = await store.create(pod("a"))
        assert await store.delete(created)
        with pytest.raises(ConflictError, match="has been deleted"):
            await store.update(annotated(created, late="yes"))
        assert await store.get_or_none(POD, "default", "a") is None

    run(etcd, body)


def test_two_concurrent_updates_from_one_revision_one_wins(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        created = await store.create(pod("a"))
        results = await asyncio.gather(
            *(store.update(annotated(created, writer=str(i)), rv(created)) for i in range(2)),
            return_exceptions=True)
        winners = [r for r in results if isinstance(r, dict)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1, results
        assert len(losers) == 1 and isinstance(losers[0], ConflictError), results
        assert await store.get(POD, "default", "a") == winners[0]

    run(etcd, body)


def test_many_concurrent_updates_from_one_revision_one_wins(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        created = await store.create(pod("a"))
        results = await asyncio.gather(
            *(store.update(annotated(created, writer=str(i)), rv(created)) for i in range(8)),
            return_exceptions=True)
        winners = [r for r in results if isinstance(r, dict)]
        assert len(winners) == 1, results
        assert all(isinstance(r, ConflictError) for r in results if not isinstance(r, dict)), results
        assert await store.get(POD, "default", "a") == winners[0]

    run(etcd, body)


# --- multi-object writes -------------------------------------------------------------------


def test_a_multi_object_write_is_atomic_and_shares_one_revision(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        existing = await store.create(pod("b"))
        written = await store.write([Write(pod("a"), 0), Write(annotated(existing, v="2"), rv(existing)),
                                     Write(node("n1"), 0)])
        assert len({rv(o) for o in written}) == 1
        assert rv(written[0]) > rv(existing)
        assert await store.get(POD, "default", "a") == written[0]
        assert await store.get(POD, "default", "b") == written[1]
        assert await store.get(NODE, None, "n1") == written[2]

    run(etcd, body)


def test_a_multi_object_write_with_one_conflict_writes_none(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        b = await store.create(pod("b"))
        b_now = await store.update(annotated(b, changed="meanwhile"))
        c = await store.create(pod("c"))
        before = await contents(store)
        with pytest.raises(ConflictError, match='pods "b"'):
            await store.write([Write(pod("a"), 0), Write(annotated(c, v="2"), rv(c)),
                               Write(annotated(b, v="2"), rv(b))])
        assert await contents(store) == before
        assert await store.get_or_none(POD, "default", "a") is None
        assert await store.get(POD, "default", "b") == b_now

    run(etcd, body)


def test_a_multi_object_create_with_one_name_taken_writes_none(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        taken = await store.create(pod("b"))
        with pytest.raises(AlreadyExistsError, match='pods "b" already exists'):
            await store.write([Write(pod("a"), 0), Write(pod("b"), 0), Write(pod("c"), 0)])
        assert await contents(store) == {("default", "b"): taken}

    run(etcd, body)


# --- delete ---------------------------------------------------------------------------------


def test_guarded_delete(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        created = await store.create(pod("a"))
        current = await store.update(annotated(created, v="2"))
        with pytest.raises(ConflictError):
            await store.delete(POD, "default", "a", expected_rv=rv(created))
        assert await store.get(POD, "default", "a") == current
        assert await store.delete(POD, "default", "a", expected_rv=rv(current)) is True
        assert await store.get_or_none(POD, "default", "a") is None
        assert await store.delete(POD, "default", "a") is False

    run(etcd, body)


# --- update_with_retry ------------------------------------------------------------------------


def test_update_with_retry_loses_no_update_under_contention(etcd: EtcdServer) -> None:
    n = 10

    def increment(obj: Obj) -> Obj:
        ann = obj["metadata"].setdefault("annotations", {})
        ann["count"] = str(int(ann.get("count", "0")) + 1)
        return obj

    async def body(store: Store) -> None:
        await store.create(pod("counter", count="0"))
        results = await asyncio.gather(*(store.update_with_retry(POD, "default", "counter", increment)
                                         for _ in range(n)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors
        final = await store.get(POD, "default", "counter")
        assert final["metadata"]["annotations"]["count"] == str(n)
        counts = sorted(int(r["metadata"]["annotations"]["count"]) for r in results if isinstance(r, dict))
        assert counts == list(range(1, n + 1)), "each writer saw its own increment stored"

    run(etcd, body)


def test_update_with_retry_writes_nothing_when_the_mutation_says_so(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        created = await store.create(pod("a"))
        assert await store.update_with_retry(POD, "default", "a", lambda obj: None) is None
        assert await store.get(POD, "default", "a") == created
        with pytest.raises(NotFoundError):
            await store.update_with_retry(POD, "default", "missing", lambda obj: obj)

    run(etcd, body)


# --- list + watch -----------------------------------------------------------------------------


async def take(events: Any, n: int, timeout: float = 10.0) -> list[WatchEvent]:
    """The next ``n`` events of a watch, then stop watching."""
    out: list[WatchEvent] = []

    async def collect() -> None:
        async for ev in events:
            out.append(ev)
            if len(out) == n:
                break

    try:
        await asyncio.wait_for(collect(), timeout)
    finally:
        await events.aclose()
    return out


def test_list_then_watch_from_the_next_revision(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        await store.create(pod("a"))
        b = await store.create(pod("b"))
        items, listed_at = await store.list(POD)
        assert sorted(o["metadata"]["name"] for o in items) == ["a", "b"]
        assert listed_at == rv(b)

        watch = store.watch(POD, None, listed_at + 1)
        first = asyncio.ensure_future(take(watch, 4))
        c = await store.create(pod("c"))
        await store.create(node("n1"))  # another kind: not in this watch
        b2 = await store.update(annotated(b, v="2"))
        a = next(o for o in items if o["metadata"]["name"] == "a")
        await store.delete(POD, "default", "a", expected_rv=rv(a))
        deleted_at = await store.revision()
        c2 = await store.update(annotated(c, v="2"))
        events = await first

        assert [(e.type, e.obj["metadata"]["name"]) for e in events] == [
            ("ADDED", "c"), ("MODIFIED", "b"), ("DELETED", "a"), ("MODIFIED", "c")]
        assert [e.revision for e in events] == [rv(c), rv(b2), deleted_at, rv(c2)]
        assert events[0].obj == c and events[1].obj == b2 and events[3].obj == c2
        # A deletion carries the object as it was last stored, at the deletion's revision.
        assert {k: v for k, v in events[2].obj["metadata"].items() if k != "resourceVersion"} == \
            {k: v for k, v in a["metadata"].items() if k != "resourceVersion"}
        assert rv(events[2].obj) == deleted_at

        # Watching again from the same revision replays the same history.
        replay = await take(store.watch(POD, None, listed_at + 1), 4)
        assert replay == events

    run(etcd, body)


def test_watch_of_one_namespace(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        start = await store.revision()
        await store.create(pod("a", "one"))
        await store.create(pod("b", "two"))
        await store.create(pod("c", "one"))
        events = await take(store.watch(POD, "one", start + 1), 2)
        assert [e.obj["metadata"]["name"] for e in events] == ["a", "c"]

    run(etcd, body)


# --- compaction --------------------------------------------------------------------------------


def test_watch_from_a_compacted_revision_is_expired(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        a = await store.create(pod("a"))
        a2 = await store.update(annotated(a, v="2"))
        await store.update(annotated(a2, v="3"))
        now = await store.revision()
        await store.client.compact(now, physical=True)
        with pytest.raises(ExpiredError, match="too old resource version"):
            await take(store.watch(POD, None, rv(a)), 1, timeout=5)
        # From the compaction revision on, history is still there.
        assert [e.type for e in await take(store.watch(POD, None, now), 1)] == ["MODIFIED"]
        # Compacting below what is already compacted is expired too.
        with pytest.raises(ExpiredError):
            await store.compact(now - 1)

    run(etcd, body)


def test_an_informer_lists_and_follows(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        await store.create(pod("a"))
        informer = Informer(store, POD)
        seen: list[WatchEvent | None] = []
        informer.add_listener(seen.append)
        task = asyncio.create_task(informer.run(), name="informer")
        try:
            await asyncio.wait_for(informer.synced.wait(), 10)
            assert seen == [None]
            assert informer.cache == await contents(store)
            b = await store.create(pod("b"))
            await store.delete(POD, "default", "a")

            async def caught_up() -> bool:
                return informer.cache == await contents(store)

            await poll(caught_up, what="the informer to see b created and a deleted")
            assert informer.revision == await store.revision()
            assert [(e.type, e.obj["metadata"]["name"]) for e in seen[1:] if e] == [("ADDED", "b"), ("DELETED", "a")]
            assert informer.cache[("default", "b")] == b
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(etcd, body)


async def _synced_then_stopped(store: Store, informer: Informer) -> None:
    task = asyncio.create_task(informer.run(), name="informer")
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _change_everything(store: Store) -> None:
    """A deletion, an update and a creation the stopped informer has not seen."""
    a = await store.get(POD, "default", "a")
    b = await store.get(POD, "default", "b")
    await store.delete(a, expected_rv=rv(a))
    await store.update(annotated(b, v="2"))
    await store.create(pod("d"))


def test_an_informer_resumed_after_compaction_relists(etcd: EtcdServer) -> None:
    async def body(store: Store) -> None:
        for name in ("a", "b", "c"):
            await store.create(pod(name))
        informer = Informer(store, POD)
        await _synced_then_stopped(store, informer)
        stale_revision = informer.revision
        await _change_everything(store)
        compacted = await store.revision()
        await store.compact(compacted)

        seen: list[WatchEvent | None] = []
        informer.add_listener(seen.append)
        task = asyncio.create_task(informer.run(resume=True), name="informer")
        try:
            async def healed() -> bool:
                return informer.cache == await contents(store)

            await poll(healed, what="the informer to relist after its revision was compacted")
            assert seen and seen[0] is None, f"expected a relist, got {seen}"
            assert informer.revision >= compacted > stale_revision
            assert sorted(n for _, n in informer.cache) == ["b", "c", "d"]
            assert informer.cache[("default", "b")]["metadata"]["annotations"] == {"v": "2"}
            # After the relist it watches again.
            await store.create(pod("e"))
            await poll(healed, what="the informer to see e after the relist")
            assert ("default", "e") in informer.cache
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(etcd, body)


def test_an_informer_resumed_without_compaction_replays_the_missed_events(etcd: EtcdServer) -> None:
    """The counterpart of the test above: with the history still there, no relist is needed."""
    async def body(store: Store) -> None:
        for name in ("a", "b", "c"):
            await store.create(pod(name))
        informer = Informer(store, POD)
        await _synced_then_stopped(store, informer)
        await _change_everything(store)

        seen: list[WatchEvent | None] = []
        informer.add_listener(seen.append)
        task = asyncio.create_task(informer.run(resume=True), name="informer")
        try:
            async def healed() -> bool:
                return informer.cache == await contents(store)

            await poll(healed, what="the informer to replay the missed events")
            assert [(e.type, e.obj["metadata"]["name"]) if e else None for e in seen] == [
                ("DELETED", "a"), ("MODIFIED", "b"), ("ADDED", "d")]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(etcd, body)


def test_a_list_larger_than_grpcs_default_message_limit(etcd: EtcdServer) -> None:
    # 600 pods of about 8 KiB: one range response of about 5 MB, over gRPC's 4 MiB default.
    async def body(store: Store) -> tuple[int, int]:
        pods = [pod(f"big-{i}", note="x" * 8000) for i in range(600)]
        for start in range(0, len(pods), MAX_OBJECTS_PER_TXN):
            await store.write([Write(p, 0) for p in pods[start:start + MAX_OBJECTS_PER_TXN]])
        items, _ = await store.list(POD)
        return len(items), sum(len(json.dumps(i)) for i in items)

    count, size = run(etcd, body)
    assert count == 600 and size > 4 * 1024 * 1024
