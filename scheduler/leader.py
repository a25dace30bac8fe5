"""Leader election through an etcd lease, like kube-scheduler's ``--leader-elect``.

Every scheduler replica serves the Cluster API and the node protocol; only the one
that holds the election key runs the leader-only work (the scheduling loop, the
controllers, the compactor). The key is a Lease object, as ``kube-system/kube-scheduler``
is in Kubernetes: ``<prefix>/leases/kube-system/orch-scheduler``, readable with
``orchctl get leases -n kube-system``.

* **campaign**: grant an etcd lease of ``lease_duration`` seconds, then create the key,
  attached to that lease and carrying this candidate's identity, in a transaction
  guarded by ``create_revision == 0``: the first transaction to land wins. The others
  watch the key and try again the moment it goes (or every ``lease_duration``).
* **lead**: renew the lease every ``retry_period``; each renewal also checks that the
  key is still the one this term created (same create revision). The term ends, and
  the leader-only tasks are cancelled at once, when a renewal finds the lease expired,
  the key deleted or re-created, or when no renewal has succeeded for
  ``renew_deadline`` (etcd unreachable). ``renew_deadline`` < ``lease_duration``, so a
  leader cut off from etcd stops before etcd can expire its lease and crown another.
* **fence**: the leader-only tasks write through ``Store.fenced(elector.fence)``: every
  write compares the key's create revision with this term's, so a deposed leader that
  has not noticed yet (a paused process) binds nothing; its transactions fail.
* **resign**: revoke the lease; etcd deletes the key with it and a waiting
  candidate's watch fires at once (a graceful SIGTERM hands over without waiting
  out the TTL).
* **observe**: the current Lease object, for anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aetcd
import aetcd.exceptions

from apimachinery.errors import OrchError
from apimachinery.meta import LEASE, Obj, now_rfc3339
from scheduler.store import Fence, Store

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-system"
LEASE_NAME = "orch-scheduler"
DEFAULT_LEASE_DURATION = 15.0

# What etcd or its connection can throw at a lease or transaction call.
_ETCD_ERRORS = (aetcd.exceptions.ClientError, OSError, TimeoutError)


def new_identity() -> str:
    """``hostname_pid_random``: unique per process, and says which process it is."""
    return f"{socket.gethostname()}_{os.getpid()}_{secrets.token_hex(4)}"


def holder_pid(identity: str) -> int | None:
    """The PID in an identity made by ``new_identity`` (None for any other shape)."""
    parts = identity.rsplit("_", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


@dataclass(slots=True)
class Term:
    """One stretch of leadership: from winning the key to losing or giving it up."""

    lease_id: int
    create_revision: int
    # time.monotonic() when the lease was asked for: etcd counts its TTL from later.
    renewed_at: float
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()


class LeaderElector:
    """Campaign for, hold and give up the election key of ``store``'s cluster."""

    def __init__(self, store: Store, identity: str | None = None, *,
                 lease_duration: float = DEFAULT_LEASE_DURATION, renew_deadline: float | None = None,
                 retry_period: float | None = None, namespace: str = LEASE_NAMESPACE,
                 name: str = LEASE_NAME) -> None:
        lease_duration, renew_deadline, retry_period = self.check_timings(lease_duration, renew_deadline,
                                                                          retry_period)
        self.store = store
        self.client: aetcd.Client = store.client
        self.identity = identity or new_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.namespace = namespace
        self.name = name
        self.key = store.key(LEASE, namespace, name)
        self.term: Term | None = None

    @staticmethod
    def check_timings(lease_duration: float, renew_deadline: float | None = None,
                      retry_period: float | None = None) -> tuple[float, float, float]:
        """The three durations, defaults filled in; ValueError when they cannot work together."""
        # kube-scheduler's defaults are 15 s / 10 s / 2 s; these scale with the duration.
        renew_deadline = lease_duration * 2 / 3 if renew_deadline is None else renew_deadline
        retry_period = lease_duration * 2 / 15 if retry_period is None else retry_period
        if lease_duration < 2:
            raise ValueError(f"the leader election lease duration must be at least 2s (etcd's minimum TTL), "
                             f"got {lease_duration}")
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration, got "
                             f"{retry_period:g}s, {renew_deadline:g}s, {lease_duration:g}s")
        return lease_duration, renew_deadline, retry_period

    # --- for the leader-only tasks ---------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.term is not None and not self.term.ended.is_set()

    def fence(self) -> Fence | None:
        """What a leader-only write must find in etcd; None when not leading (the write fails)."""
        term = self.term
        if term is None or term.ended.is_set():
            return None
        return Fence(self.key, term.create_revision)

    # --- campaign --------------------------------------------------------------------

    def _record(self) -> Obj:
        now = now_rfc3339()
        return {
            "apiVersion": LEASE.api_version, "kind": LEASE.kind,
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": str(uuid.uuid4()),
                         "creationTimestamp": now},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": math.ceil(self.lease_duration),
                     "acquireTime": now},
        }

    async def try_acquire(self) -> tuple[Term | None, int]:
        """One attempt. Returns the new term, or None and the revision the key was seen at."""
        asked_at = time.monotonic()
        lease = await self.client.lease(math.ceil(self.lease_duration))
        tx = self.client.transactions
        try:
            ok, responses = await self.client.transaction(
                compare=[tx.create(self.key) == 0],
                success=[tx.put(self.key, Store._encode(self._record()), lease=lease.id)],
                failure=[tx.get(self.key)])
        except BaseException:
            await self._revoke(lease.id)
            raise
        if ok:
            revision = responses[0].response_put.header.revision
            return Term(lease.id, revision, asked_at), revision
        await self._revoke(lease.id)
        got = responses[0] if responses else []
        revision = got[0][1].header.revision if got else 0
        return None, revision

    async def campaign(self) -> Term:
        """Until this candidate leads; the term it won is also ``self.term``."""
        backoff = self.retry_period
        announced = ""
        while True:
            try:
                term, seen_at = await self.try_acquire()
                backoff = self.retry_period
            except _ETCD_ERRORS as e:
                log.warning("leader election: etcd: %s; trying again in %.1fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.lease_duration)
                continue
            if term is not None:
                self.term = term
                log.info("leader election: %s became the leader (lease %x, key revision %d)",
                         self.identity, term.lease_id, term.create_revision)
                return term
            holder = await self._holder()
            if holder and holder != announced:
                log.info("leader election: %s leads; %s waits", holder, self.identity)
                announced = holder
            await self._wait_for_change(seen_at)

    async def _holder(self) -> str:
        try:
            lease = await self.observe()
        except OrchError:
            return ""
        return str(lease["spec"].get("holderIdentity", "")) if lease else ""

    async def _wait_for_change(self, seen_at: int) -> None:
        """Until the key changes after revision ``seen_at`` (the holder resigned, or its
        lease expired), or ``lease_duration`` passes: a watch, with polling behind it."""
        try:
            watch = await self.client.watch(self.key, start_revision=seen_at + 1)
        except _ETCD_ERRORS:
            await asyncio.sleep(self.retry_period)
            return
        try:
            async with asyncio.timeout(self.lease_duration):
                async for _ in watch:
                    return
        except TimeoutError:
            return
        except _ETCD_ERRORS:
            await asyncio.sleep(self.retry_period)
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()

    # --- leading ---------------------------------------------------------------------

    async def keep(self, term: Term) -> None:
        """Renew ``term``'s lease until the term ends, and end it when leadership is lost."""
        while not term.ended.is_set():
            await asyncio.sleep(self.retry_period)
            started = time.monotonic()
            remaining = term.renewed_at + self.renew_deadline - started
            if remaining <= 0:
                term.end(f"no renewal for {self.renew_deadline:.1f}s (etcd unreachable?)")
                break
            try:
                async with asyncio.timeout(remaining):
                    reply = await self.client.refresh_lease(term.lease_id)
                    if reply is None or reply.TTL <= 0:
                        term.end("its etcd lease expired")
                        break
                    kv = await self.client.get(self.key)
                if kv is None:
                    term.end("the election key was deleted")
                    break
                if kv.create_revision != term.create_revision:
                    term.end("the election key was re-created by another candidate")
                    break
                term.renewed_at = started
            except _ETCD_ERRORS as e:
                log.warning("leader election: renewing the lease failed: %s", e or type(e).__name__)
        if term.ended.is_set() and term.reason:
            log.warning("leader election: %s stopped leading: %s", self.identity, term.reason)

    async def run(self, lead: Callable[[Term], Coroutine[Any, Any, None]]) -> None:
        """Campaign; while leading run ``lead(term)``, cancelling it the moment the term ends;
        then campaign again. ``lead`` must run until cancelled: if it ends or fails, this
        resigns and raises. Cancelling ``run`` resigns."""
        try:
            while True:
                term = await self.campaign()
                keeper = asyncio.get_running_loop().create_task(self.keep(term), name="leader-election/renew")
                leading = asyncio.get_running_loop().create_task(lead(term), name="leader-election/lead")
                try:
                    await asyncio.wait([keeper, leading], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    leading.cancel()
                    # The leader-only tasks are gone before anyone else can lead.
                    await asyncio.gather(leading, return_exceptions=True)
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
                if not leading.cancelled():
                    exc = leading.exception()
                    if exc is not None:
                        raise RuntimeError(f"leader-only work crashed: {exc!r}") from exc
                    raise RuntimeError("leader-only work ended unexpectedly")
                # Lost: drop what is left of this term (the key may still be ours if only
                # renewals failed) and stand again.
                term.end(term.reason or "leadership lost")
                await self._revoke(term.lease_id)
        finally:
            await self.resign()

    async def resign(self) -> None:
        """Give the key up at once (revoke the lease: etcd deletes the key). Safe to repeat."""
        term = self.term
        if term is None:
            return
        self.term = None
        was_leading = not term.ended.is_set()
        term.end("resigned")
        await self._revoke(term.lease_id)
        if was_leading:
            log.info("leader election: %s resigned", self.identity)

    async def _revoke(self, lease_id: int) -> None:
        # Shielded: resign runs while its task is being cancelled (a SIGTERM).
        try:
            async with asyncio.timeout(2):
                await asyncio.shield(self.client.revoke_lease(lease_id))
        except _ETCD_ERRORS as e:
            log.debug("revoking lease %x: %r (it expires by itself)", lease_id, e)

    # --- for everyone ----------------------------------------------------------------

    async def observe(self) -> Obj | None:
        """The current Lease object (``spec.holderIdentity`` leads), or None when nobody leads."""
        return await self.store.get_or_none(LEASE, self.namespace, self.name)
