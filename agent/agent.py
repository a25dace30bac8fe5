"""The agent's I/O shell: the node protocol over gRPC, and the actions of ``reconcile.plan``.

Two named loops run side by side:

* the **connection loop** registers the node, heartbeats, and holds the
  ``WatchAssignments`` stream with one of the schedulers it was given; when that one
  is unreachable or dies it goes on to the next in the list, with back-off once it
  has tried them all, and nothing else stops: containers run on without the control
  plane;
* the **reconcile loop** wakes on every assignment and at least every second,
  reads the containers from the runtime (the disk, not memory), plans, and runs
  each action in a worker thread (the kernel calls block), one pod at a time;
* the **network loop** (``--network bridge``) keeps the node's pod network in step
  with the scheduler and the pods: the bridge of the node's pod CIDR, routes to the
  other nodes' CIDRs, the hostPort table.

A pod's network is attached before its first container starts (``_ensure_pod_network``:
sandbox, then veth and address); the address is kept in the pod's record, so a
container restart costs no netlink call and a restarted agent reports the same
``podIP``. Each pod adopted by a restarted agent is attached once more (idempotent: a
check that heals a half-made or missing veth). ``RemovePod`` detaches the pod before
its sandbox goes, releasing the address; a pod that holds an address and is known to
no one (an agent that died mid-way) is removed like a stray sandbox.

Statuses are reported when they change, and all of them again after a reconnect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from agent.images import Image, ImageStore, parse_reference
from agent.images.config import merge_env, resolve_argv, resolve_user, resolve_working_dir, verify_run_as_non_root
from agent.images.errors import ContainerConfigError
from agent.metrics import AgentMetrics
from agent.network import NetworkNotReady
from agent.network.hostports import plan_ports
from agent.network.node import NodeNetwork
from agent.network.podnet import PodAddress
from agent.probes import ContainerProbes, Kind, ProbeTracker, run_check
from agent.reconcile import (
    Action,
    ContainerRecord,
    PodRecord,
    RemoveContainer,
    RemovePod,
    StartContainer,
    StopContainer,
    expand,
    plan,
    pod_status,
    same_status,
    uid_of,
)
from agent.runtime.runtime import HOST_IMAGE, ContainerConfig, ContainerState, ContainerStatus, Runtime
from apimachinery import pki
from apimachinery.errors import OrchError, RuntimeError_
from apimachinery.meta import Obj, now_rfc3339, parse_rfc3339
from apimachinery.pb import node_pb2 as pb
from apimachinery.pb import node_pb2_grpc as pb_grpc
from apimachinery.quantity import parse_cpu, parse_memory
from apimachinery.validation import container_limits

log = logging.getLogger(__name__)

AGENT_VERSION = "orch-agent/0.1.0"
# Status reports in flight at once; each is a read and a compare-and-swap in etcd.
REPORT_CONCURRENCY = 16
# Seconds before a failed attach of an adopted pod is tried again.
VERIFY_RETRY = 10.0
# Seconds between looks at the node's certificate files: a rotated certificate is in use
# within about this long (the agent reconnects with it; see _serve_through).
CERT_POLL_INTERVAL = 1.0
NETWORK_MODES = ("bridge", "none")


class PodSandboxError(RuntimeError_):
    """The pod's sandbox or its network could not be made: its containers wait with this reason."""

    reason = "FailedCreatePodSandBox"


def error_text(e: BaseException) -> str:
    """An error's message without Python's ``[Errno N]`` prefix (shown to users in pod status)."""
    if isinstance(e, OSError) and e.strerror and e.filename is None:
        return e.strerror
    return str(e)


def volume_mounts(spec: Obj, container: Obj) -> list[dict[str, Any]]:
    """The container's volumeMounts, each with its volume's source, as the runtime takes them
    (``ContainerConfig.volume_mounts``): an emptyDir's sizeLimit in bytes."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    out: list[dict[str, Any]] = []
    for m in container.get("volumeMounts") or []:
        volume = volumes[m["name"]]  # validation saw to it that it is there
        entry: dict[str, Any] = {"name": m["name"], "mountPath": m["mountPath"], "readOnly": bool(m.get("readOnly"))}
        if "hostPath" in volume:
            entry["hostPath"] = {"path": volume["hostPath"]["path"], "type": volume["hostPath"].get("type", "")}
        else:
            empty = volume.get("emptyDir") or {}
            limit = empty.get("sizeLimit")
            entry["emptyDir"] = {"medium": empty.get("medium", ""),
                                 "sizeBytes": parse_memory(limit) if limit is not None else None}
        out.append(entry)
    return out


def sandbox_identity(pod: Obj) -> tuple[str, bool]:
    """The pod's hostname and whether it uses the host's user namespace: what its sandbox is made with."""
    return pod["spec"].get("hostname") or pod["metadata"]["name"], pod["spec"].get("hostUsers", True) is not False


@dataclass(slots=True)
class NodeConfig:
    name: str
    # Scheduler replicas (HOST:PORT), tried in turn: any of them serves this node.
    schedulers: tuple[str, ...]
    state_dir: Path
    cgroup_root: str
    cpu_millis: int
    memory_bytes: int
    max_pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    address: str = "127.0.0.1"
    pod_pids_limit: int = 4096
    # Registries (HOST:PORT) spoken to over plain HTTP; loopback ones always are, as in Docker.
    insecure_registries: tuple[str, ...] = ()
    # Kept back for the system and the agent itself, as kubelet's --system-reserved.
    reserved_cpu_millis: int = 0
    reserved_memory_bytes: int = 0
    # Where the NodeAgent API (logs, exec; agent/server.py) listens, and the
    # HOST:PORT reported at registration once it does.
    listen: str = "127.0.0.1:0"
    endpoint: str = ""
    # The node's certificate, key and the cluster CA bundle: the agent dials the schedulers
    # and serves its API over mutual TLS with them (read again when they change). None:
    # plaintext both ways (--insecure; and a NodeConfig made in code, unless it asks).
    tls: pki.TLSFiles | None = None
    # HOST:PORT where /metrics is served (agent/metrics.py), reported at registration for
    # Prometheus' service discovery; "" when not served.
    metrics_endpoint: str = ""
    # "bridge": pods get a veth on ``bridge`` and an address of the node's pod CIDR;
    # "none": only loopback. The CLI's default is bridge; a NodeConfig made in code
    # touches no network unless it asks to.
    network: str = "none"
    bridge: str = "orch0"
    # The node's network namespace when the agent is not in it itself (tests); None: the
    # agent's own (in a lab, main's --netns has moved the whole process there already).
    node_netns: Path | None = None


def insecure_registry(host: str, insecure: Sequence[str]) -> bool:
    """Whether the registry at ``host`` (``HOST[:PORT]``) is spoken to over plain HTTP, as
    Docker decides: on loopback always; else when ``insecure`` (``--insecure-registry``)
    names it as ``HOST:PORT`` or ``HOST``, or holds a CIDR its address falls in."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        address = None
    for entry in insecure:
        if entry in (host, name):
            return True
        if address is not None and "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


def certificate_serial(pem: bytes) -> int:
    return int(x509.load_pem_x509_certificate(pem).serial_number)


def tls_hint(details: str) -> str:
    """gRPC's words for a failed connection, with what a TLS failure means for this node."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return f"the scheduler's certificate is not signed by a CA of our bundle (or not for its address): {details}"
    if any(alert in details for alert in ("ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA", "ALERT_CERTIFICATE_EXPIRED",
                                          "CERTIFICATE_REQUIRED")):
        return f"the scheduler refused our certificate: {details}"
    return details


class Agent:
    def __init__(self, config: NodeConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.pods_dir = config.state_dir / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, PodRecord] = self._load_records()
        self.desired: dict[str, Obj] = {}
        self.have_assignments = False
        self.busy: set[str] = set()
        self.reported: dict[str, Obj] = {}
        self.removed_reported: set[str] = set()
        self.stub: pb_grpc.NodeServiceStub | None = None
        self.wake = asyncio.Event()
        # Running actions; held so they are not garbage-collected mid-flight.
        self._tasks: set[asyncio.Task[None]] = set()
        # Probes of running containers, by container id; and the containers as last read.
        self.probes: dict[str, ContainerProbes] = {}
        self._probing: set[tuple[str, Kind]] = set()
        self._states: list[ContainerState] = []
        # Stops wait out grace periods; many pods may stop at once, so size for that.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="runtime")
        self.images = ImageStore(config.state_dir / "images")
        self.metrics = AgentMetrics()
        # --- the pod network (None: --network none) ---
        if config.network not in NETWORK_MODES:
            raise ValueError(f"network {config.network!r}: expected one of {', '.join(NETWORK_MODES)}")
        self.network: NodeNetwork | None = None
        if config.network == "bridge":
            self.network = NodeNetwork(config.state_dir / "network", bridge=config.bridge,
                                       node_netns=config.node_netns)
        self.net_wake = asyncio.Event()
        # From the scheduler: this node's pod CIDR (None: not heard yet) and the routes to the others.
        self.want_cidr: str | None = None
        self.want_routes: dict[str, str] | None = None
        # Pods attached (or checked) by this process -> the CIDR they were attached in.
        self.net_verified: dict[str, str] = {}
        self._verify_after: dict[str, float] = {}
        self._net_errors: dict[str, str] = {}
        self._port_problems: set[str] = set()
        self._recall_pod_ips()
        self.net_wake.set()  # the first pass rewrites the hostPort table from the records at once

    # --- records -------------------------------------------------------------

    def _load_records(self) -> dict[str, PodRecord]:
        records = {}
        for path in self.pods_dir.glob("*.json"):
            try:
                records[path.stem] = PodRecord.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError) as e:
                log.warning("node %s: unreadable pod record %s: %s", self.config.name, path, e)
        return records

    def _save_record(self, uid: str) -> None:
        path = self.pods_dir / f"{uid}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.records[uid].to_json()))
        os.replace(tmp, path)

    def _drop_record(self, uid: str) -> None:
        self.records.pop(uid, None)
        (self.pods_dir / f"{uid}.json").unlink(missing_ok=True)

    def _recall_pod_ips(self) -> None:
        """Addresses of pods recorded before records kept them, from the node's address book."""
        if self.network is None:
            return
        for uid, record in self.records.items():
            if record.pod_ip is None:
                try:
                    address = self.network.address(uid)
                except (OSError, ValueError) as e:
                    log.warning("node %s: pod %s: reading its address failed: %s", self.config.name, uid, e)
                    continue
                if address is not None:
                    record.pod_ip = str(address.ip)
                    self._save_record(uid)

    # --- connection ----------------------------------------------------------

    def _registration(self) -> pb.RegisterRequest:
        c = self.config
        capacity = pb.Resources(cpu_millis=c.cpu_millis, memory_bytes=c.memory_bytes, pods=c.max_pods)
        allocatable = pb.Resources(cpu_millis=max(0, c.cpu_millis - c.reserved_cpu_millis),
                                   memory_bytes=max(0, c.memory_bytes - c.reserved_memory_bytes), pods=c.max_pods)
        return pb.RegisterRequest(
            node_name=c.name, labels=c.labels, capacity=capacity, allocatable=allocatable,
            addresses=[pb.NodeAddress(type="InternalIP", address=c.address),
                       pb.NodeAddress(type="Hostname", address=c.name)],
            agent_version=AGENT_VERSION, kernel_version=os.uname().release,
            cgroup_driver=type(self.runtime.driver).__name__,
            agent_endpoint=c.endpoint, metrics_endpoint=c.metrics_endpoint,
        )

    async def connection_loop(self) -> None:
        """Serve the node through one scheduler at a time, going round the list when it fails.

        After a failure the next address is tried at once; a pause (growing to 5 s) comes
        only when every address has failed since the last good connection, so a node
        whose scheduler died is back with a surviving one in moments."""
        schedulers = self.config.schedulers
        at = 0
        failed_in_a_row = 0
        backoff = 0.5
        while True:
            address = schedulers[at % len(schedulers)]
            try:
                if await self._serve_through(address):
                    continue  # the node's certificate was rotated: dial the same scheduler again at once
                failed_in_a_row = 0  # it served the node for a while: start the round afresh
                backoff = 0.5
            except grpc.aio.AioRpcError as e:
                log.warning("node %s: registering with %s failed: %s %s", self.config.name, address,
                            e.code().name, tls_hint(e.details() or ""))
            except pki.PkiError as e:  # our own certificate cannot be read: wait for it, as for a scheduler
                log.error("node %s: cannot dial %s: %s", self.config.name, address, e)
            failed_in_a_row += 1
            at += 1
            if failed_in_a_row >= len(schedulers):
                log.warning("node %s: no scheduler answered (%s); retrying in %.1fs", self.config.name,
                            ", ".join(schedulers), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                failed_in_a_row = 0
            else:
                await asyncio.sleep(0.1)

    async def _channel(self, address: str) -> tuple[grpc.aio.Channel, pki.FilesStamp]:
        """A channel to the scheduler at ``address``, and the stamp of the certificate files it
        was made from (see ``_certificate_rotated``). Over mutual TLS the node's certificate is
        read now, so a new connection presents whatever is on disk; the scheduler's is checked
        against the CA bundle and for ``address``'s host."""
        tls = self.config.tls
        if tls is None:
            return grpc.aio.insecure_channel(address), ()
        stamp = pki.files_stamp(tls)
        # In a thread: load_tls reads again (with short sleeps) when it falls between a rotation's writes.
        material = await asyncio.to_thread(pki.load_tls, tls)
        log.info("node %s: dialling %s over mutual TLS with certificate serial %x", self.config.name, address,
                 certificate_serial(material.certificate_chain))
        return grpc.aio.secure_channel(address, material.channel_credentials()), stamp

    async def _certificate_rotated(self, stamp: pki.FilesStamp) -> None:
        """Return once the certificate files differ from ``stamp`` and hold a matching pair
        again: the connection then ends, and the next one presents the new certificate.

        A reconnect costs a registration and a resend of the statuses, nothing else: the
        containers run on untouched (invariant 4). kubelet likewise closes its connections when
        its client certificate is rotated, so the old one stops being used before it expires."""
        tls = self.config.tls
        if tls is None:
            await asyncio.Event().wait()  # plaintext: nothing to watch
            return
        while True:
            await asyncio.sleep(CERT_POLL_INTERVAL)
            now = pki.files_stamp(tls)
            if now == stamp:
                continue
            try:
                await asyncio.to_thread(pki.load_tls, tls, attempts=1)
            except pki.PkiError:
                continue  # mid-rotation (the key is new, its certificate not yet): look again
            log.info("node %s: certificate files changed; reconnecting to present the new certificate",
                     self.config.name)
            return

    async def _serve_through(self, address: str) -> bool:
        """Register with ``address`` (raising when that fails), then follow its assignments
        until the connection breaks, the scheduler stops answering heartbeats or the node's
        certificate is rotated (then True: reconnect, with the new certificate)."""
        channel, stamp = await self._channel(address)
        tasks: list[asyncio.Task[None]] = []
        try:
            stub = pb_grpc.NodeServiceStub(channel)
            reply = await stub.Register(self._registration(), timeout=10)
            log.info("node %s: registered with %s%s", self.config.name, address,
                     f" (pod CIDR {reply.pod_cidr})" if reply.pod_cidr else "")
            self._on_pod_cidr(reply.pod_cidr)
            self.stub = stub
            self.reported.clear()
            self.removed_reported.clear()

            async def follow() -> None:
                async for msg in stub.WatchAssignments(pb.WatchAssignmentsRequest(node_name=self.config.name)):
                    self._on_assignments(msg)

            loop = asyncio.get_running_loop()
            rotated = loop.create_task(self._certificate_rotated(stamp), name="certificate-watch")
            tasks = [loop.create_task(follow(), name="assignments"),
                     loop.create_task(self._heartbeats(stub, max(1, reply.heartbeat_interval_seconds)),
                                      name="heartbeat"),
                     rotated]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = None if task.cancelled() else task.exception()
                if isinstance(exc, grpc.aio.AioRpcError):
                    log.warning("node %s: connection to scheduler %s lost: %s %s", self.config.name, address,
                                exc.code().name, tls_hint(exc.details() or ""))
                elif exc is not None:
                    raise exc
            return rotated in done
        finally:
            self.stub = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await channel.close()

    async def _heartbeats(self, stub: pb_grpc.NodeServiceStub, interval: int, give_up_after: int = 3) -> None:
        """Until the scheduler no longer knows the node, or fails ``give_up_after`` heartbeats
        in a row (it may have lost etcd while the stream lives on): then it is time to move."""
        failures = 0
        while True:
            await asyncio.sleep(interval)
            try:
                reply = await stub.Heartbeat(pb.HeartbeatRequest(node_name=self.config.name), timeout=10)
            except grpc.aio.AioRpcError as e:
                failures += 1
                log.warning("node %s: heartbeat failed: %s", self.config.name, e.code().name)
                if failures >= give_up_after:
                    log.warning("node %s: %d heartbeats failed in a row; trying another scheduler",
                                self.config.name, failures)
                    return
                continue
            failures = 0
            if not reply.known:
                log.warning("node %s: the scheduler no longer knows this node; registering again", self.config.name)
                return

    def _on_assignments(self, msg: pb.Assignments) -> None:
        desired = {}
        for text in msg.pods_json:
            pod = json.loads(text)
            desired[uid_of(pod)] = pod
        self.desired = desired
        self.have_assignments = True
        self._on_pod_cidr(msg.pod_cidr)
        self.want_routes = {r.pod_cidr: r.address for r in msg.routes if r.pod_cidr and r.address}
        self.net_wake.set()
        self.wake.set()

    def _on_pod_cidr(self, cidr: str) -> None:
        """The scheduler's word on this node's pod CIDR (empty: none); the network loop acts on it."""
        if self.network is not None and cidr != self.want_cidr:
            self.want_cidr = cidr
            self.net_wake.set()

    # --- network -------------------------------------------------------------

    async def network_loop(self, interval: float = 5.0) -> None:
        """Keep the node's pod network converged; wakes on every hint and every ``interval``."""
        if self.network is None:
            return
        while True:
            try:
                await asyncio.wait_for(self.net_wake.wait(), interval)
            except TimeoutError:
                pass
            self.net_wake.clear()
            await self.sync_network()

    async def sync_network(self) -> None:
        """One pass: the pod CIDR's bridge, routes, the hostPort table.

        Each step is level-triggered and independent: a failure is logged (once per
        distinct message) and tried again on the next pass; the others still run.
        """
        net = self.network
        if net is None:
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        want = self.want_cidr
        if want is not None:
            changed = await self._net_step("pod CIDR", loop.run_in_executor(self.pool, net.configure, want, now))
            if changed:
                self.wake.set()  # containers waiting with NetworkNotReady may start now
        await self._net_step("bridge", loop.run_in_executor(self.pool, net.keep_bridge, now))
        routes = self.want_routes
        if routes is not None:  # only once the scheduler has said: never delete routes on a guess
            await self._net_step("routes", loop.run_in_executor(self.pool, net.sync_routes, routes, now))
        ports, problems = plan_ports((r.pod, r.pod_ip) for r in list(self.records.values()) if r.pod_ip)
        for problem in sorted(set(problems) - self._port_problems):
            log.warning("node %s: network: %s", self.config.name, problem)
        self._port_problems = set(problems)
        await self._net_step("hostPorts", loop.run_in_executor(self.pool, net.sync_hostports, ports, now))

    async def _net_step(self, step: str, work: asyncio.Future[Any]) -> Any:
        try:
            result = await work
        except (OSError, ValueError) as e:
            self._net_log(step, f"{step}: {error_text(e)}; retrying")
            return None
        if self._net_errors.pop(step, None) is not None:
            log.info("node %s: network: %s converged again", self.config.name, step)
        return result

    def _net_log(self, step: str, message: str) -> None:
        """Log a network problem once while it lasts (a pass runs every few seconds)."""
        if self._net_errors.get(step) != message:
            log.error("node %s: network: %s", self.config.name, message)
        self._net_errors[step] = message

    async def _ensure_pod_network(self, uid: str, pod: Obj, record: PodRecord) -> None:
        """The pod's sandbox and network, before its containers run: a no-op once this process has
        attached it. NetworkNotReady without a pod CIDR; PodSandboxError when attaching fails
        (the attach has undone itself)."""
        net = self.network
        if net is None:
            return
        cidr = net.cidr
        if pod["spec"].get("hostNetwork") is True:
            # The node's network: no veth, no address, no pod CIDR to wait for; its podIP is
            # the node's (reconcile.pod_status). Marked checked, so it is not attached again.
            if cidr is not None:
                self.net_verified[uid] = cidr
            return
        if record.pod_ip and (cidr is None or self.net_verified.get(uid) == cidr):
            # Attached by this process; or the node has lost its CIDR and the pod keeps what it has.
            return
        if cidr is None:
            raise NetworkNotReady(net.why_not_ready)
        hostname, host_users = sandbox_identity(pod)

        def attach() -> PodAddress:
            path = self.runtime.ensure_sandbox(uid, hostname, host_users=host_users,
                                               host_ipc=pod["spec"].get("hostIPC") is True)
            return net.attach(uid, path)

        try:
            address = await asyncio.get_running_loop().run_in_executor(self.pool, attach)
        except NetworkNotReady:
            raise
        except (OrchError, OSError, ValueError) as e:
            raise PodSandboxError(f"Failed to create pod sandbox: {error_text(e)}") from e
        self.net_verified[uid] = str(address.network)
        if record.pod_ip != str(address.ip):
            record.pod_ip = str(address.ip)
            self._save_record(uid)
            self.net_wake.set()  # its hostPorts can be published now

    def _unverified(self, sandboxes: set[str], now: float) -> list[str]:
        """Pods with a sandbox that this process has not attached yet (adopted after a restart,
        or re-addressed after a CIDR change), due for a check."""
        net = self.network
        if net is None or net.cidr is None:
            return []
        return [uid for uid, pod in self.desired.items()
                if uid in sandboxes and uid in self.records and uid not in self.busy
                and not pod["metadata"].get("deletionTimestamp")
                and self.net_verified.get(uid) != net.cidr and self._verify_after.get(uid, 0.0) <= now]

    async def _verify_network(self, uid: str) -> None:
        """Attach an adopted pod once (the pod is busy meanwhile); a failure is retried after VERIFY_RETRY."""
        try:
            record, pod = self.records.get(uid), self.desired.get(uid)
            if record is not None and pod is not None:
                await self._ensure_pod_network(uid, pod, record)
                self._verify_after.pop(uid, None)
        except (OrchError, OSError, ValueError) as e:
            self._verify_after[uid] = time.time() + VERIFY_RETRY
            log.warning("node %s: pod %s: checking its network failed: %s", self.config.name, uid, error_text(e))
        finally:
            self.busy.discard(uid)
            self.wake.set()

    # --- reconcile -----------------------------------------------------------

    async def reconcile_loop(self, interval: float = 1.0) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), interval)
            except TimeoutError:
                pass
            self.wake.clear()
            pass_started = time.monotonic()
            try:
                states: list[ContainerState] = await loop.run_in_executor(self.pool, self.runtime.list)
                sandboxes = set(await loop.run_in_executor(self.pool, self.runtime.sandbox_pod_uids))
                # A pod holding an address counts as present too: one no longer wanted is
                # removed (detached) like a stray sandbox.
                present = sandboxes | (await loop.run_in_executor(self.pool, self.network.holders)
                                       if self.network is not None else set())
            except (OrchError, OSError) as e:
                # Level-triggered: the next pass reads the disk again. Say so loudly.
                log.error("node %s: reading the containers failed: %s; retrying", self.config.name, e,
                          exc_info=True)
                continue
            self._states = states
            unhealthy = {cid for cid, p in self.probes.items() if p.restart_reason}
            for action in plan(self.desired, self.records, states, time.time(), self.busy, self.have_assignments,
                               unhealthy, present):
                if isinstance(action, RemovePod) and action.pod_uid in self.removed_reported:
                    continue  # done; the scheduler has yet to drop it from the assignments
                self.busy.add(action.pod_uid)
                self._tasks.add(loop.create_task(self._execute(action),
                                                 name=f"{type(action).__name__}/{action.pod_uid}"))
            for uid in self._unverified(sandboxes, time.time()):
                self.busy.add(uid)
                self._tasks.add(loop.create_task(self._verify_network(uid), name=f"VerifyNetwork/{uid}"))
            self._tasks = {t for t in self._tasks if not t.done()}
            await self._report(states)
            # The pass itself: reading the node, planning, dispatching and reporting (the
            # actions it started run on and are timed as container starts).
            self.metrics.reconcile_duration.observe(time.monotonic() - pass_started)

    async def _execute(self, action: Action) -> None:
        loop = asyncio.get_running_loop()
        try:
            if isinstance(action, StartContainer):
                await self._start(action)
            elif isinstance(action, StopContainer):
                await loop.run_in_executor(self.pool, self.runtime.stop, action.container_id, action.grace)
            elif isinstance(action, RemoveContainer):
                await loop.run_in_executor(self.pool, self.runtime.remove, action.container_id)
            elif isinstance(action, RemovePod):
                await loop.run_in_executor(self.pool, self._remove_pod, action.pod_uid)
                self._drop_record(action.pod_uid)
                self.net_verified.pop(action.pod_uid, None)
                self._verify_after.pop(action.pod_uid, None)
                self.net_wake.set()  # its hostPorts go
                await self._report_removed(action.pod_uid)
        except (OrchError, OSError) as e:
            log.error("node %s: %s failed: %s", self.config.name, action, e)
        finally:
            self.busy.discard(action.pod_uid)
            self.wake.set()

    def _remove_pod(self, uid: str) -> None:
        """Detach the pod's network (veth gone, address released), then remove its sandbox and cgroup.
        A failed detach leaves the sandbox for the next pass to try again."""
        if self.network is not None:
            self.network.detach(uid, self.runtime.sandbox_netns_path(uid))
        self.runtime.remove_pod(uid)

    def container_config(self, pod: Obj, container: Obj, image: Image | None = None) -> ContainerConfig:
        """The runtime's config for ``container``: Kubernetes' rules for the image's Entrypoint,
        Cmd, Env, WorkingDir and User, and the pod's and container's securityContext."""
        image_config = image.config if image is not None else None
        env: dict[str, str] = dict(merge_env(image_config.env, {})) if image_config else {}
        for item in container.get("env", []):
            env[item["name"]] = expand(str(item.get("value", "")), env)
        # $(VAR) expands in the pod's command and args only, never in the image's.
        command = [expand(a, env) for a in container.get("command", [])]
        args = [expand(a, env) for a in container.get("args", [])]
        if image_config is not None:
            argv = resolve_argv(image_config, command, args)
            working_dir = resolve_working_dir(image_config, container.get("workingDir"))
        else:
            argv, working_dir = [*command, *args], container.get("workingDir", "")
        if not argv:
            raise ContainerConfigError(f'container {container["name"]}: image "{container["image"]}" has no '
                                       "default command; set command")
        pod_sc = pod["spec"].get("securityContext") or {}
        sc = container.get("securityContext") or {}
        run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        run_as_group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        layer_dirs: list[str] = []
        if image is not None and image_config is not None:
            layers = self.images.layer_dirs(image)
            layer_dirs = [str(p) for p in layers]
            verify_run_as_non_root(image_config, run_as_user, run_as_non_root)
            run_as_user, run_as_group = resolve_user(image_config, run_as_user, run_as_group, layers)
        elif run_as_non_root and not run_as_user:
            raise ContainerConfigError(f"container {container['name']}: runAsNonRoot is set, but the host image "
                                       "runs as root; set runAsUser")
        caps = sc.get("capabilities") or {}
        cpu_limit, mem_limit = container_limits(container)
        cpu_request = container.get("resources", {}).get("requests", {}).get("cpu")
        md = pod["metadata"]
        hostname, host_users = sandbox_identity(pod)
        spec = pod["spec"]
        host_network = spec.get("hostNetwork") is True
        if host_network:
            hostname = os.uname().nodename  # the node's UTS namespace comes with its network (runtime.py)
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        return ContainerConfig(
            id=secrets.token_hex(32), pod_uid=md["uid"], pod_namespace=md["namespace"], pod_name=md["name"],
            name=container["name"], image=container["image"], argv=argv, env=env,
            working_dir=working_dir, hostname=hostname,
            memory_limit_bytes=mem_limit, cpu_limit_millis=cpu_limit,
            cpu_request_millis=parse_cpu(cpu_request) if cpu_request is not None else None,
            pids_limit=self.config.pod_pids_limit,
            privileged=bool(sc.get("privileged", False)),
            allow_privilege_escalation=sc.get("allowPrivilegeEscalation"),
            capabilities_add=list(caps.get("add", [])), capabilities_drop=list(caps.get("drop", [])),
            run_as_user=run_as_user, run_as_group=run_as_group,
            read_only_root_filesystem=bool(sc.get("readOnlyRootFilesystem", False)),
            seccomp_unconfined=seccomp == "Unconfined",
            host_users=host_users,
            layer_dirs=layer_dirs,
            host_network=host_network, host_pid=spec.get("hostPID") is True, host_ipc=spec.get("hostIPC") is True,
            node_netns=str(self.config.node_netns) if host_network and self.config.node_netns else "",
            volume_mounts=volume_mounts(spec, container),
        )

    def _ensure_image(self, container: Obj) -> Image | None:
        """The container's image from the node's store, pulled per imagePullPolicy (blocking)."""
        reference = container["image"]
        if reference == HOST_IMAGE:
            return None
        host = parse_reference(reference).api_host
        insecure = insecure_registry(host, self.config.insecure_registries)
        return self.images.ensure(reference, container.get("imagePullPolicy"), insecure_http=insecure)

    async def _start(self, action: StartContainer) -> None:
        pod = self.desired.get(action.pod_uid)
        if pod is None:
            return
        record = self.records.setdefault(action.pod_uid, PodRecord(pod))
        record.pod = pod
        if record.start_time is None:
            record.start_time = now_rfc3339()
        crec = record.containers.setdefault(action.container, ContainerRecord())
        if action.restart:
            crec.restart_count += 1
        self._save_record(action.pod_uid)
        spec = next(c for c in pod["spec"]["containers"] if c["name"] == action.container)
        loop = asyncio.get_running_loop()
        try:
            # As the kubelet: the sandbox and its network first, then the image, then the container.
            await self._ensure_pod_network(action.pod_uid, pod, record)
            image = await loop.run_in_executor(self.pool, self._ensure_image, spec)
            cfg = self.container_config(pod, spec, image)
            started = time.monotonic()
            await loop.run_in_executor(self.pool, self.runtime.start, cfg)
            self.metrics.container_start_duration.observe(time.monotonic() - started)
            self.metrics.container_starts.inc()
            crec.last_error = crec.last_error_at = crec.last_error_reason = None
            crec.start_failures = 0
            log.info("node %s: started container %s of pod %s/%s", self.config.name, spec["name"],
                     pod["metadata"]["namespace"], pod["metadata"]["name"])
        except NetworkNotReady as e:
            # Not a failure of the pod: it waits, with no back-off, and starts once the node has a
            # pod CIDR (the network loop wakes the reconciler then).
            if crec.last_error_reason != e.reason:
                log.info("node %s: pod %s/%s waits: %s", self.config.name, pod["metadata"]["namespace"],
                         pod["metadata"]["name"], error_text(e))
            crec.last_error, crec.last_error_at, crec.last_error_reason = error_text(e), time.time(), e.reason
        except (OrchError, OSError, ValueError) as e:
            # The container was never created: nothing is left half-built, and the pod says why.
            crec.last_error, crec.last_error_at = str(e), time.time()
            crec.last_error_reason = getattr(e, "reason", None) or "CreateContainerError"
            crec.start_failures += 1
            self.metrics.container_start_failures.labels(reason=crec.last_error_reason).inc()
            log.warning("node %s: pod %s/%s container %s failed to start: %s", self.config.name,
                        pod["metadata"]["namespace"], pod["metadata"]["name"], spec["name"], e)
        self._save_record(action.pod_uid)

    # --- probes --------------------------------------------------------------

    async def probe_loop(self, interval: float = 0.5) -> None:
        """Run every due probe of every running container; verdicts wake the reconciler."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            live: set[str] = set()
            for st in self._states:
                pod = self.desired.get(st.config.pod_uid)
                if st.status is not ContainerStatus.RUNNING or pod is None or pod["metadata"].get("deletionTimestamp"):
                    continue
                spec = next((c for c in pod["spec"]["containers"] if c["name"] == st.config.name), None)
                if spec is None:
                    continue
                cid = st.config.id
                live.add(cid)
                probes = self.probes.get(cid)
                if probes is None:
                    started = parse_rfc3339(st.started_at).timestamp() if st.started_at else now
                    probes = self.probes[cid] = ContainerProbes.for_container(spec, started)
                for kind, tracker in probes.due(now):
                    if (cid, kind) not in self._probing:
                        self._probing.add((cid, kind))
                        self._tasks.add(loop.create_task(self._probe(st, spec, probes, kind, tracker),
                                                         name=f"probe/{kind}/{cid[:12]}"))
            for cid in [c for c in self.probes if c not in live]:
                del self.probes[cid]

    async def _probe(self, st: ContainerState, spec: Obj, probes: ContainerProbes, kind: Kind,
                     tracker: ProbeTracker) -> None:
        loop = asyncio.get_running_loop()
        netns = self.runtime.sandbox_netns_path(st.config.pod_uid)

        def bound_exec(argv: list[str], timeout: float) -> tuple[int, str]:
            return self.runtime.exec_sync(st.config.id, argv, timeout)

        try:
            result, message = await loop.run_in_executor(
                self.pool, run_check, tracker.spec, spec, netns, bound_exec, tracker.timeout)
            before = (probes.ready, probes.restart_reason)
            probes.record(kind, result, time.time(), message)
            if (probes.ready, probes.restart_reason) != before:
                log.info("node %s: pod %s container %s: %s probe: %s%s", self.config.name, st.config.pod_name,
                         st.config.name, kind.value, result.value, f" ({message})" if message else "")
                self.wake.set()
        finally:
            self._probing.discard((st.config.id, kind))

    # --- status --------------------------------------------------------------

    async def _report(self, states: list[ContainerState]) -> None:
        """Send the status of every pod whose status changed, concurrently (each is an etcd CAS)."""
        stub = self.stub
        if stub is None:
            return
        now = time.time()
        changed = []
        for uid, pod in list(self.desired.items()):
            if pod["metadata"].get("deletionTimestamp") or uid not in self.records:
                continue
            status = pod_status(pod, self.records[uid], states, now, self.config.address, self.probes)
            if not same_status(self.reported.get(uid), status):
                changed.append((uid, pod, status))
        limit = asyncio.Semaphore(REPORT_CONCURRENCY)

        async def send(uid: str, pod: Obj, status: Obj) -> None:
            md = pod["metadata"]
            async with limit:
                try:
                    await stub.ReportPodStatus(pb.PodStatusReport(
                        node_name=self.config.name, namespace=md["namespace"], name=md["name"], uid=uid,
                        status_json=json.dumps(status)), timeout=10)
                    self.reported[uid] = status
                except grpc.aio.AioRpcError as e:
                    log.warning("node %s: reporting pod %s/%s failed: %s", self.config.name, md["namespace"],
                                md["name"], e.code().name)

        await asyncio.gather(*(send(*c) for c in changed))

    async def _report_removed(self, uid: str) -> None:
        pod = self.desired.get(uid)
        stub = self.stub
        if pod is None or stub is None or uid in self.removed_reported:
            return
        md = pod["metadata"]
        try:
            await stub.ReportPodStatus(pb.PodStatusReport(
                node_name=self.config.name, namespace=md["namespace"], name=md["name"], uid=uid, removed=True),
                timeout=10)
            self.removed_reported.add(uid)
            log.info("node %s: pod %s/%s stopped and removed", self.config.name, md["namespace"], md["name"])
        except grpc.aio.AioRpcError as e:
            log.warning("node %s: reporting removal of %s failed: %s", self.config.name, md["name"], e.code().name)
