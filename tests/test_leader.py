"""Leader election (scheduler/leader.py) against a real etcd: one of two candidates wins,
resigning hands over at once, an expired lease hands over within its TTL, a deposed
leader's fenced writes fail, and a leader cut off from etcd stops leading.

As in test_store.py, each test runs its coroutine with ``asyncio.run`` under a deadline,
with clients and a key prefix of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import aetcd
import pytest

from apimachinery.errors import ConflictError
from apimachinery.meta import LEASE, POD, Obj
from scheduler.leader import LeaderElector, Term, holder_pid, new_identity
from scheduler.store import FenceError, Store
from tests.etcd_fixture import EtcdServer, running_etcd
from tests.test_store import pod

T = TypeVar("T")
DEADLINE = 30.0


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


@contextlib.asynccontextmanager
async def stores(server: EtcdServer, n: int) -> AsyncIterator[list[Store]]:
    """``n`` stores on one prefix, each with its own etcd client (as separate schedulers have)."""
    prefix = server.prefix()
    made = [Store(aetcd.Client(host=server.host, port=server.port, timeout=5), prefix=prefix) for _ in range(n)]
    try:
        yield made
    finally:
        with contextlib.suppress(Exception):
            await made[0].client.delete_prefix(f"{prefix}/".encode())
        for s in made:
            with contextlib.suppress(Exception):
                await s.close()


def run(body: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(body(), DEADLINE)

    return asyncio.run(main())


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition``; the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def cancel(*tasks: asyncio.Task[object]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_identity_names_the_process() -> None:
    ident = new_identity()
    assert holder_pid(ident) == os.getpid()
    assert holder_pid("host_with_underscores_42_ab12cd34") == 42
    assert holder_pid("not-ours") is None


def test_timings_must_leave_room_to_renew() -> None:
    assert LeaderElector.check_timings(15) == (15, 10, 2)
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        LeaderElector.check_timings(3, renew_deadline=3)
    with pytest.raises(ValueError, match="at least 2s"):
        LeaderElector.check_timings(1)


def test_one_of_two_candidates_leads_and_resigning_hands_over_at_once(etcd: EtcdServer) -> None:
    async def body() -> None:
        async with stores(etcd, 3) as (sa, sb, observer):
            # A long lease: a handover within a second can only be the resignation.
            a = LeaderElector(sa, "host_1_a", lease_duration=20)
            b = LeaderElector(sb, "host_2_b", lease_duration=20)
            ta = asyncio.create_task(a.campaign())
            tb = asyncio.create_task(b.campaign())
            done, pending = await asyncio.wait([ta, tb], timeout=10, return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1, "no candidate won the election"
            winner, loser = (a, b) if ta in done else (b, a)
            waiting = pending.pop()
            lease = await observer.get(LEASE, "kube-system", "orch-scheduler")
            assert lease["spec"]["holderIdentity"] == winner.identity
            assert lease["spec"]["leaseDurationSeconds"] == 20
            assert winner.leading and winner.fence() is not None
            assert not loser.leading and loser.fence() is None and not waiting.done()

            await winner.resign()
            took = await until(waiting.done, 3, "the other candidate to lead after the resignation")
            assert took < 3
            assert loser.leading and not winner.leading
            lease = await observer.get(LEASE, "kube-system", "orch-scheduler")
            assert lease["spec"]["holderIdentity"] == loser.identity
            await loser.resign()
            assert await observer.get_or_none(LEASE, "kube-system", "orch-scheduler") is None

    run(body)


def test_an_expired_lease_hands_over_within_its_ttl(etcd: EtcdServer) -> None:
    async def body() -> None:
        async with stores(etcd, 2) as (sa, sb):
            a = LeaderElector(sa, "host_1_a", lease_duration=2)
            b = LeaderElector(sb, "host_2_b", lease_duration=2)
            await a.campaign()
            # ``a`` dies: nobody renews its lease (keep() never runs).
            started = time.monotonic()
            await asyncio.wait_for(b.campaign(), 2 + 2)
            assert time.monotonic() - started >= 1  # it did wait for the lease to lapse
            assert b.leading
            lease = await sb.get(LEASE, "kube-system", "orch-scheduler")
            assert lease["spec"]["holderIdentity"] == "host_2_b"
            await b.resign()

    run(body)


def test_a_deposed_leader_can_write_nothing_through_its_fenced_store(etcd: EtcdServer) -> None:
    async def body() -> None:
        async with stores(etcd, 2) as (sa, sb):
            a = LeaderElector(sa, "host_1_a", lease_duration=2)
            b = LeaderElector(sb, "host_2_b", lease_duration=2)
            fenced_a, fenced_b = sa.fenced(a.fence), sb.fenced(b.fence)
            with pytest.raises(FenceError):  # not leading: refused without asking etcd
                await fenced_a.create(pod("early"))
            await a.campaign()
            created = await fenced_a.create(pod("p"))
            # ``a`` is paused past its lease (no renewals) and does not know it lost.
            await b.campaign()
            assert a.term is not None and not a.term.ended.is_set()
            moved: Obj = {**created, "spec": {**created["spec"], "nodeName": "node-a"}}
            with pytest.raises(FenceError):
                await fenced_a.update(moved)
            with pytest.raises(FenceError):
                await fenced_a.delete(created, expected_rv=int(created["metadata"]["resourceVersion"]))
            stored = await sb.get(POD, "default", "p")
            assert "nodeName" not in stored["spec"]
            # The new leader writes; a plain conflict is still a conflict, not a fence error.
            await fenced_b.update({**stored, "spec": {**stored["spec"], "nodeName": "node-b"}})
            with pytest.raises(ConflictError) as err:
                await fenced_b.update(moved)
            assert not isinstance(err.value, FenceError)
            await fenced_b.create(pod("q"))
            assert await fenced_b.delete(POD, "default", "q") is True
            assert await fenced_b.delete(POD, "default", "q") is False
            await b.resign()
            with pytest.raises(FenceError):
                await fenced_b.delete(POD, "default", "p")

    run(body)


def test_run_stops_the_leader_work_when_the_key_goes_and_campaigns_again(etcd: EtcdServer) -> None:
    async def body() -> None:
        async with stores(etcd, 2) as (sa, admin):
            a = LeaderElector(sa, "host_1_a", lease_duration=3, retry_period=0.2)
            terms: list[Term] = []
            running = asyncio.Event()
            stopped = asyncio.Event()

            async def lead(term: Term) -> None:
                terms.append(term)
                running.set()
                try:
                    await asyncio.Event().wait()
                finally:
                    running.clear()
                    stopped.set()

            task = asyncio.create_task(a.run(lead))
            try:
                await asyncio.wait_for(running.wait(), 5)
                await admin.delete(LEASE, "kube-system", "orch-scheduler")  # someone deletes the Lease
                await asyncio.wait_for(stopped.wait(), 2)
                assert terms[0].ended.is_set() and "deleted" in terms[0].reason
                await until(lambda: len(terms) == 2 and running.is_set(), 5, "a second term")
                assert terms[1].create_revision > terms[0].create_revision
            finally:
                await cancel(task)
            # Cancelling run() resigns: the key is gone at once.
            assert await admin.get_or_none(LEASE, "kube-system", "orch-scheduler") is None
            assert not a.leading

    run(body)


def test_a_leader_cut_off_from_etcd_stops_within_its_renew_deadline() -> None:
    with running_etcd() as server:  # this test's own etcd: it is killed half-way
        async def body() -> None:
            store = Store(aetcd.Client(host=server.host, port=server.port, timeout=5), prefix=server.prefix())
            try:
                a = LeaderElector(store, "host_1_a", lease_duration=3, renew_deadline=2, retry_period=0.3)
                stopped = asyncio.Event()

                async def lead(term: Term) -> None:
                    try:
                        await asyncio.Event().wait()
                    finally:
                        stopped.set()

                task = asyncio.create_task(a.run(lead))
                try:
                    await until(lambda: a.leading, 5, "leading")
                    os.kill(server.pid, signal.SIGKILL)  # the etcd this test started, by its PID
                    killed = time.monotonic()
                    await asyncio.wait_for(stopped.wait(), 2 + 1)
                    assert time.monotonic() - killed <= 2 + 1
                    assert not a.leading and a.fence() is None
                finally:
                    await cancel(task)
            finally:
                with contextlib.suppress(Exception):
                    await store.close()

        run(body)


def test_a_leader_paused_past_its_lease_stops_at_its_next_renewal(etcd: EtcdServer) -> None:
    async def body() -> None:
        async with stores(etcd, 1) as (sa,):
            a = LeaderElector(sa, "host_1_a", lease_duration=2, renew_deadline=1.9, retry_period=0.1)
            term = await a.campaign()
            await asyncio.sleep(2.5)  # "paused": no renewal while etcd expires the lease
            term.renewed_at = time.monotonic()  # it does not know how long it slept
            await asyncio.wait_for(a.keep(term), 3)
            assert term.ended.is_set() and not a.leading and a.fence() is None
            assert "expired" in term.reason or "deleted" in term.reason, term.reason

    run(body)
