"""What the fuzz tests share: hypothesis profiles, a per-example time limit, and a real
Cluster API server on loopback over a real etcd.

**Profiles.** ``ci`` (the default) runs each fuzz target for ``CI_EXAMPLES`` cases,
``long`` for ``LONG_EXAMPLES``, ``dev`` for ``DEV_EXAMPLES`` (a quick look while
working); choose with ``HYPOTHESIS_PROFILE=long``. They are applied
only to the fuzz tests (``fuzz_settings``), never loaded globally, so the other
property tests keep their own sizes. ``scale`` lets a slow target run a fraction.

**ApiServer** runs the real ``ClusterService`` (registered with
``scheduler.api.add_cluster_service``) in a ``grpc.aio`` server on 127.0.0.1, on an
event loop of its own in a thread, so that a test can speak to it with the blocking
client as ``orchctl`` does, and read etcd's whole keyspace between two requests
(``snapshot``) to prove a refused request changed nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from hypothesis import HealthCheck, settings

from apimachinery.meta import NODE, POD, Obj, now_rfc3339
from apimachinery.pb import cluster_pb2_grpc
from scheduler.api import ClusterService, add_cluster_service
from scheduler.registry import Registry
from scheduler.store import Store
from tests.etcd_fixture import EtcdServer, _free_port

T = TypeVar("T")

CI_EXAMPLES = 2000
LONG_EXAMPLES = 50_000
DEV_EXAMPLES = 200

settings.register_profile(
    "ci", max_examples=CI_EXAMPLES, deadline=timedelta(seconds=5), print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile(
    "long", max_examples=LONG_EXAMPLES, deadline=timedelta(seconds=10), print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile(
    "dev", max_examples=DEV_EXAMPLES, deadline=timedelta(seconds=5), print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

PROFILES = ("ci", "long", "dev")


def profile_name() -> str:
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    return name if name in PROFILES else "ci"


def fuzz_settings(scale: float = 1.0, **overrides: Any) -> settings:
    """The profile's settings for one fuzz target, its example count times ``scale``."""
    base = settings.get_profile(profile_name())
    return settings(base, max_examples=max(1, int(base.max_examples * scale)), **overrides)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail with TimeoutError if the block runs longer than ``seconds``: hypothesis' deadline
    only judges an example after it returns, and a hang never does (main thread only)."""
    def expired(_signum: int, _frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds}s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- a Cluster API server --------------------------------------------------------------------

#: What scheduler/main.py should set on its server too: gRPC's default, written down.
SERVER_OPTIONS = [("grpc.max_receive_message_length", 4 << 20)]


@dataclass(frozen=True)
class Snapshot:
    """etcd's whole keyspace: its revision, and every key with its mod_revision and value."""

    revision: int
    keys: dict[bytes, tuple[int, bytes]]

    def diff(self, other: Snapshot) -> str:
        changed = sorted(k for k in set(self.keys) | set(other.keys) if self.keys.get(k) != other.keys.get(k))
        return f"revision {self.revision} -> {other.revision}; keys changed: {[k.decode() for k in changed]}"


class ApiServer:
    """The real ClusterService on 127.0.0.1, over the etcd given; ``close`` stops all of it."""

    def __init__(self, etcd: EtcdServer, prefix: str) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-api-server", daemon=True)
        self.thread.start()
        self.port = 0
        try:
            self.run(self._start())
        except BaseException:
            self._stop_loop()
            raise
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.api = cluster_pb2_grpc.ClusterStub(self.channel)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.store = Store.connect(self.etcd.endpoint, self.prefix)
        self.service = ClusterService(Registry(self.store))
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        add_cluster_service(self.server, self.service)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    def snapshot(self) -> Snapshot:
        async def read() -> Snapshot:
            rng = await self.store.client.get_all()
            return Snapshot(int(rng.header.revision), {kv.key: (kv.mod_revision, kv.value) for kv in rng})
        return self.run(read())

    def revision(self) -> int:
        """etcd's current revision: any write anywhere in its keyspace moves it."""
        return self.run(self.store.revision())

    def close(self) -> None:
        self.channel.close()
        try:
            self.run(self.server.stop(0))
            self.run(self.service.proxy.close())
            self.run(self.store.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    # --- a small world to fuzz against ----------------------------------------------------

    def put_node(self, name: str, *, agent_port: int | None = None) -> Obj:
        """A Ready Node, written as registration writes one; its agent endpoint, if any, on loopback."""
        status: dict[str, Any] = {
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        }
        if agent_port is not None:
            status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": agent_port, "Address": "127.0.0.1"}}
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"node": name}},
                "spec": {}, "status": status}
        return self._put(node)

    def put_pod(self, name: str, *, node: str | None = None, namespace: str = "default") -> Obj:
        spec: dict[str, Any] = {"containers": [{"name": "main", "image": "host", "command": ["sleep", "1000"]}],
                                "terminationGracePeriodSeconds": 30}
        status: dict[str, Any] = {"phase": "Pending"}
        if node is not None:
            spec["nodeName"] = node
            status = {"phase": "Running"}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}, "uid": f"uid-{name}"},
               "spec": spec, "status": status}
        return self._put(pod)

    def _put(self, obj: Obj) -> Obj:
        async def put() -> Obj:
            kind = NODE if obj["kind"] == "Node" else POD
            md = obj["metadata"]
            await self.store.delete(kind, md.get("namespace"), md["name"])
            return await self.store.create(json.loads(json.dumps(obj)))
        return self.run(put())


def closed_port() -> int:
    """A loopback port nothing listens on (just freed): dialling it is refused at once."""
    return _free_port()
