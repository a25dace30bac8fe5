"""Events on a real etcd: aggregation of repeats, expiry through an etcd lease, and a
recorder that never fails its caller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aetcd
import pytest

from apimachinery.meta import EVENT
from scheduler.events import EVENT_TTL, EventRecorder
from scheduler.store import Store
from tests.etcd_fixture import EtcdServer, running_etcd

T = TypeVar("T")


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


@contextlib.asynccontextmanager
async def a_store(server: EtcdServer) -> AsyncIterator[Store]:
    store = Store(aetcd.Client(host=server.host, port=server.port, timeout=5), prefix=server.prefix())
    try:
        yield store
    finally:
        with contextlib.suppress(Exception):
            await store.client.delete_prefix(f"{store.prefix}/".encode())
        await store.close()


def run(body: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(body(), 30)

    return asyncio.run(main())


POD: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "7"}}


def test_a_repeated_event_is_counted_not_written_again(etcd: EtcdServer) -> None:
    async def body() -> None:
        async with a_store(etcd) as store:
            rec = EventRecorder(store, "default-scheduler")
            for _ in range(3):
                await rec.record(POD, "Warning", "FailedScheduling", "0/2 nodes are available: 2 Insufficient cpu.")
            await rec.record(POD, "Normal", "Scheduled", "Successfully assigned shop/web to n1")
            events, _ = await store.list(EVENT, "shop")
            by_reason = {e["reason"]: e for e in events}
            assert len(events) == 2
            failed = by_reason["FailedScheduling"]
            assert failed["count"] == 3 and failed["type"] == "Warning"
            assert failed["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "web",
                                                "namespace": "shop", "uid": "u-1", "resourceVersion": "7"}
            assert failed["source"] == {"component": "default-scheduler"}
            assert failed["firstTimestamp"] <= failed["lastTimestamp"]
            assert by_reason["Scheduled"]["count"] == 1

    run(body)


def test_events_recorded_together_are_created_in_one_transaction_and_still_aggregated(etcd: EtcdServer) -> None:
    async def body() -> None:
        async with a_store(etcd) as store:
            rec = EventRecorder(store, "default-scheduler")
            pods = [{**POD, "metadata": {**POD["metadata"], "name": f"web-{i}", "uid": f"u-{i}"}} for i in range(70)]
            await rec.record(pods[0], "Warning", "FailedScheduling", "0/1 nodes are available.")
            _, before = await store.list(EVENT, "shop")
            items = [(p, "Normal", "Scheduled", f"Successfully assigned shop/{p['metadata']['name']} to n1")
                     for p in pods]
            items += [(pods[0], "Warning", "FailedScheduling", "0/1 nodes are available.")] * 2  # cached: bumped
            items += [items[5]]  # a repeat of a fresh one in the same batch: bumped once created
            await rec.record_many(items)
            events, after = await store.list(EVENT, "shop")
            scheduled = [e for e in events if e["reason"] == "Scheduled"]
            assert len(scheduled) == 70
            assert {e["involvedObject"]["uid"] for e in scheduled} == {f"u-{i}" for i in range(70)}
            assert next(e for e in scheduled if e["involvedObject"]["uid"] == "u-5")["count"] == 2
            assert next(e for e in events if e["reason"] == "FailedScheduling")["count"] == 3
            # 70 new Events in two transactions (60 + 10), then 3 bumps: 5 revisions, not 73.
            assert after - before == 5

    run(body)


def test_an_event_changed_by_someone_else_starts_a_new_one(etcd: EtcdServer) -> None:
    async def body() -> None:
        async with a_store(etcd) as store:
            rec = EventRecorder(store, "default-scheduler")
            await rec.record(POD, "Warning", "FailedScheduling", "no")
            (ev,), _ = await store.list(EVENT, "shop")
            await store.delete(ev)
            await rec.record(POD, "Warning", "FailedScheduling", "no")
            events, _ = await store.list(EVENT, "shop")
            assert [e["count"] for e in events] == [1]

    run(body)


def test_events_are_attached_to_an_hour_long_lease_shared_by_a_window(etcd: EtcdServer) -> None:
    async def body() -> None:
        async with a_store(etcd) as store:
            rec = EventRecorder(store, "default-scheduler")
            await rec.record(POD, "Warning", "A", "a")
            await rec.record({**POD, "metadata": {**POD["metadata"], "uid": "u-2"}}, "Normal", "B", "b")
            events, _ = await store.list(EVENT, "shop")
            leases = {(await store.client.get(store.key_of(e))).lease for e in events}
            assert len(leases) == 1 and 0 not in leases
            info = await store.client.get_lease_info(leases.pop(), keys=False)
            assert EVENT_TTL < info.TTL <= EVENT_TTL + 60

    run(body)


def test_recording_never_fails_the_caller(etcd: EtcdServer) -> None:
    async def body() -> None:
        store = Store(aetcd.Client(host="127.0.0.1", port=1, timeout=1), prefix="/nowhere")
        try:
            await EventRecorder(store, "x").record(POD, "Warning", "Nope", "etcd is not there")
        finally:
            with contextlib.suppress(Exception):
                await store.close()

    run(body)
