"""The agent's I/O shell: the node protocol over gRPC, and the actions of ``reconcile.plan``.

Two named loops run side by side:

* the **connection loop** registers the node, heartbeats, and holds the
  ``WatchAssignments`` stream with one of the schedulers it was given; when that one
  is unreachable or dies it goes on to the next in the list, with back-off once it
  has tried them all, and nothing else stops: containers run on without the control
  plane;
* the **reconcile loop** wakes on every assignment and at least every second,
  reads the containers from the runtime (the disk, not memory), plans, and runs
  each action in a worker thread (the kernel calls block), one pod at a time.

Statuses are reported when they change, and all of them again after a reconnect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from agent.images import Image, ImageStore, parse_reference
from agent.images.config import merge_env, resolve_argv, resolve_user, resolve_working_dir, verify_run_as_non_root
from agent.images.errors import ContainerConfigError
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
from apimachinery.errors import OrchError
from apimachinery.meta import Obj, now_rfc3339, parse_rfc3339
from apimachinery.pb import node_pb2 as pb
from apimachinery.pb import node_pb2_grpc as pb_grpc
from apimachinery.quantity import parse_cpu
from apimachinery.validation import container_limits

log = logging.getLogger(__name__)

AGENT_VERSION = "orch-agent/0.1.0"
# Status reports in flight at once; each is a read and a compare-and-swap in etcd.
REPORT_CONCURRENCY = 16


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
            agent_endpoint=c.endpoint,
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
                await self._serve_through(address)
                failed_in_a_row = 0  # it served the node for a while: start the round afresh
                backoff = 0.5
            except grpc.aio.AioRpcError as e:
                log.warning("node %s: registering with %s failed: %s %s", self.config.name, address,
                            e.code().name, e.details())
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

    async def _serve_through(self, address: str) -> None:
        """Register with ``address`` (raising when that fails), then follow its assignments
        until the connection breaks or the scheduler stops answering heartbeats."""
        channel = grpc.aio.insecure_channel(address)
        tasks: list[asyncio.Task[None]] = []
        try:
            stub = pb_grpc.NodeServiceStub(channel)
            reply = await stub.Register(self._registration(), timeout=10)
            log.info("node %s: registered with %s", self.config.name, address)
            self.stub = stub
            self.reported.clear()
            self.removed_reported.clear()

            async def follow() -> None:
                async for msg in stub.WatchAssignments(pb.WatchAssignmentsRequest(node_name=self.config.name)):
                    self._on_assignments(msg)

            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(follow(), name="assignments"),
                     loop.create_task(self._heartbeats(stub, max(1, reply.heartbeat_interval_seconds)),
                                      name="heartbeat")]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = None if task.cancelled() else task.exception()
                if isinstance(exc, grpc.aio.AioRpcError):
                    log.warning("node %s: connection to scheduler %s lost: %s %s", self.config.name, address,
                                exc.code().name, exc.details())
                elif exc is not None:
                    raise exc
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
            try:
                states: list[ContainerState] = await loop.run_in_executor(self.pool, self.runtime.list)
                sandboxes = set(await loop.run_in_executor(self.pool, self.runtime.sandbox_pod_uids))
            except (OrchError, OSError) as e:
                # Level-triggered: the next pass reads the disk again. Say so loudly.
                log.error("node %s: reading the containers failed: %s; retrying", self.config.name, e,
                          exc_info=True)
                continue
            self._states = states
            unhealthy = {cid for cid, p in self.probes.items() if p.restart_reason}
            for action in plan(self.desired, self.records, states, time.time(), self.busy, self.have_assignments,
                               unhealthy, sandboxes):
                if isinstance(action, RemovePod) and action.pod_uid in self.removed_reported:
                    continue  # done; the scheduler has yet to drop it from the assignments
                self.busy.add(action.pod_uid)
                self._tasks.add(loop.create_task(self._execute(action),
                                                 name=f"{type(action).__name__}/{action.pod_uid}"))
            self._tasks = {t for t in self._tasks if not t.done()}
            await self._report(states)

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
                await loop.run_in_executor(self.pool, self.runtime.remove_pod, action.pod_uid)
                self._drop_record(action.pod_uid)
                await self._report_removed(action.pod_uid)
        except (OrchError, OSError) as e:
            log.error("node %s: %s failed: %s", self.config.name, action, e)
        finally:
            self.busy.discard(action.pod_uid)
            self.wake.set()

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
        return ContainerConfig(
            id=secrets.token_hex(32), pod_uid=md["uid"], pod_namespace=md["namespace"], pod_name=md["name"],
            name=container["name"], image=container["image"], argv=argv, env=env,
            working_dir=working_dir, hostname=pod["spec"].get("hostname") or md["name"],
            memory_limit_bytes=mem_limit, cpu_limit_millis=cpu_limit,
            cpu_request_millis=parse_cpu(cpu_request) if cpu_request is not None else None,
            pids_limit=self.config.pod_pids_limit,
            privileged=bool(sc.get("privileged", False)),
            allow_privilege_escalation=sc.get("allowPrivilegeEscalation"),
            capabilities_add=list(caps.get("add", [])), capabilities_drop=list(caps.get("drop", [])),
            run_as_user=run_as_user, run_as_group=run_as_group,
            read_only_root_filesystem=bool(sc.get("readOnlyRootFilesystem", False)),
            host_users=pod["spec"].get("hostUsers", True) is not False,
            layer_dirs=layer_dirs,
        )

    def _ensure_image(self, container: Obj) -> Image | None:
        """The container's image from the node's store, pulled per imagePullPolicy (blocking)."""
        reference = container["image"]
        if reference == HOST_IMAGE:
            return None
        host = parse_reference(reference).api_host
        # Like Docker, a registry on loopback (or one named with --insecure-registry) is spoken to over HTTP.
        insecure = host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]") or host in self.config.insecure_registries
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
            image = await loop.run_in_executor(self.pool, self._ensure_image, spec)
            cfg = self.container_config(pod, spec, image)
            await loop.run_in_executor(self.pool, self.runtime.start, cfg)
            crec.last_error = crec.last_error_at = crec.last_error_reason = None
            crec.start_failures = 0
            log.info("node %s: started container %s of pod %s/%s", self.config.name, spec["name"],
                     pod["metadata"]["namespace"], pod["metadata"]["name"])
        except (OrchError, OSError, ValueError) as e:
            # The container was never created: nothing is left half-built, and the pod says why.
            crec.last_error, crec.last_error_at = str(e), time.time()
            crec.last_error_reason = getattr(e, "reason", None) or "CreateContainerError"
            crec.start_failures += 1
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
