"""The scheduler's ``/metrics`` and Prometheus HTTP service discovery (``/sd``), on a real etcd
with real ``orch-scheduler`` processes, and the pieces behind them in-process.

One scheduler (leader election on, ``--metrics-listen`` on a free loopback port) serves
the whole module; each test uses names of its own and reads the counters before and
after what it does, so the tests do not depend on each other's order. Nodes register
through the real NodeService, as an agent would, with ``metrics_endpoint`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apimachinery.meta import LEASE, NODE, Obj, now_rfc3339
from apimachinery.pb import cluster_pb2, cluster_pb2_grpc, node_pb2, node_pb2_grpc
from scheduler.config import default_profiles
from scheduler.framework import TIMED_NODES_PER_CYCLE, NodeInfo
from scheduler.metrics import SchedulerMetrics, exponential_buckets, go_code_name
from scheduler.queue import SchedulingQueue
from scheduler.sd import (
    ANNOUNCE_NAMESPACE,
    METRICS_ADDRESS_ANNOTATION,
    announcement_name,
    sanitize_label_name,
    target_groups,
)
from scheduler.store import Store
from tests.etcd_fixture import EtcdServer, _free_port, running_etcd
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parent.parent
PROFILE = "default-scheduler"
GIB = 1024 ** 3


# --- a scheduler process -----------------------------------------------------------------------


@dataclass
class Scheduler:
    proc: subprocess.Popen[bytes]
    grpc_address: str
    metrics_port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"


@contextlib.contextmanager
def scheduler_process(etcd: EtcdServer, prefix: str, logs: Path, name: str) -> Iterator[Scheduler]:
    """An ``orch-scheduler`` serving gRPC and metrics on free loopback ports; stopped (SIGTERM,
    then SIGKILL) by its PID on the way out."""
    grpc_port, metrics_port = _free_port(), _free_port()
    log = logs / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler.main", "--etcd", etcd.endpoint, "--etcd-prefix", prefix,
             "--listen", f"127.0.0.1:{grpc_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
             "--compaction-interval", "0", "--node-monitor-grace-period", "600",
             # Plaintext: this test registers made-up nodes itself, which NodeRestriction
             # refuses to anyone but each node (tests/test_mtls.py covers TLS).
             "--insecure"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 20
        for port in (grpc_port, metrics_port):
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                assert time.monotonic() < deadline, f"{name} did not listen on {port}: {log.read_text()[-3000:]}"
                time.sleep(0.05)
        yield Scheduler(proc, f"127.0.0.1:{grpc_port}", metrics_port, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


@dataclass
class Cluster:
    etcd: EtcdServer
    prefix: str
    scheduler: Scheduler
    channel: grpc.Channel
    api: cluster_pb2_grpc.ClusterStub
    nodes: node_pb2_grpc.NodeServiceStub


@pytest.fixture(scope="module")
def cluster(etcd: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    prefix = etcd.prefix()
    with scheduler_process(etcd, prefix, tmp_path_factory.mktemp("scheduler-metrics"), "scheduler") as sched:
        channel = grpc.insecure_channel(sched.grpc_address)
        try:
            yield Cluster(etcd, prefix, sched, channel, cluster_pb2_grpc.ClusterStub(channel),
                          node_pb2_grpc.NodeServiceStub(channel))
        finally:
            channel.close()


# --- reading /metrics and /sd -----------------------------------------------------------------


def http_get(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read(), resp.headers.get("Content-Type", "")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(sched: Scheduler) -> Samples:
    body, _ = http_get(f"{sched.base}/metrics")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, metric: str, **labels: str) -> float:
    """The sample ``metric{labels}``; 0 when the series does not exist yet (a counter never touched)."""
    return samples.get((metric, frozenset(labels.items())), 0.0)


def scrape_until(sched: Scheduler, ok: Callable[[Samples], bool], what: str, timeout: float = 20) -> Samples:
    """Scrape until ``ok`` holds for the samples; those samples."""
    def attempt() -> Samples | None:
        samples = scrape(sched)
        return samples if ok(samples) else None

    found = wait_for(attempt, timeout, what=what)
    assert found is not None
    return found


def sd_groups(sched: Scheduler) -> list[dict[str, Any]]:
    body, content_type = http_get(f"{sched.base}/sd")
    assert content_type == "application/json"
    groups = json.loads(body)
    assert isinstance(groups, list)
    return groups


def agent_groups(sched: Scheduler) -> dict[str, dict[str, Any]]:
    return {g["labels"]["node"]: g for g in sd_groups(sched) if g["labels"].get("role") == "agent"}


def agent_group_until(sched: Scheduler, node: str) -> dict[str, Any]:
    group = wait_for(lambda: agent_groups(sched).get(node), 20, what=f"node {node} in /sd")
    assert group is not None
    return group


# --- objects -----------------------------------------------------------------------------------


def unique(stem: str) -> str:
    return f"{stem}-{secrets.token_hex(3)}"


def register(c: Cluster, name: str, metrics_endpoint: str = "", labels: dict[str, str] | None = None,
             cpu_millis: int = 4000) -> None:
    resources = node_pb2.Resources(cpu_millis=cpu_millis, memory_bytes=8 * GIB, pods=110)
    c.nodes.Register(node_pb2.RegisterRequest(
        node_name=name, labels=labels or {}, capacity=resources, allocatable=resources,
        addresses=[node_pb2.NodeAddress(type="InternalIP", address="127.0.0.1")], agent_version="test",
        kernel_version="test", cgroup_driver="systemd", metrics_endpoint=metrics_endpoint), timeout=10)


def pod_doc(name: str, cpu: str, node_selector: dict[str, str] | None = None) -> Obj:
    spec: Obj = {"containers": [{"name": "main", "image": "host", "command": ["sleep", "1d"],
                                 "resources": {"requests": {"cpu": cpu, "memory": "16Mi"}}}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "metrics"}, "spec": spec}


def apply(c: Cluster, obj: Obj) -> None:
    c.api.Apply(cluster_pb2.ApplyRequest(objects_json=[json.dumps(obj)]), timeout=10)


def get_pod(c: Cluster, name: str) -> Obj:
    return json.loads(c.api.Get(cluster_pb2.GetRequest(kind="pod", namespace="metrics", name=name),
                                timeout=10).object_json)


def delete(c: Cluster, kind: str, name: str, namespace: str = "") -> None:
    c.api.Delete(cluster_pb2.DeleteRequest(kind=kind, namespace=namespace, name=name, grace_period_seconds=0),
                 timeout=10)


def with_store(c: Cluster, body: Any) -> Any:
    """Run ``body(store)`` on a Store of the cluster's prefix (a write no agent could make)."""
    async def main() -> Any:
        store = Store(aetcd.Client(host=c.etcd.host, port=c.etcd.port, timeout=10), prefix=c.prefix)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def set_ready(c: Cluster, node: str, status: str) -> None:
    def mutate(obj: Obj) -> Obj:
        for cond in obj["status"]["conditions"]:
            if cond["type"] == "Ready":
                cond.update(status=status, reason="Test", lastTransitionTime=now_rfc3339())
        return obj

    with_store(c, lambda store: store.update_with_retry(NODE, None, node, mutate))


# --- /metrics ------------------------------------------------------------------------------------


def test_metrics_pass_promtool(cluster: Cluster) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: install Debian's prometheus package (apt-get install prometheus)")
    # Touch every kind of series first: a bound pod, a refused call.
    name = unique("lint-node")
    register(cluster, name, "127.0.0.1:19100")
    apply(cluster, pod_doc(unique("lint"), "10m", {"kubernetes.io/hostname": name}))
    with pytest.raises(grpc.RpcError):
        get_pod(cluster, "no-such-pod")
    wait_for(lambda: value(scrape(cluster.scheduler), "scheduler_schedule_attempts_total",
                           result="scheduled", profile=PROFILE) > 0, 20, what="a pod scheduled")
    body, content_type = http_get(f"{cluster.scheduler.base}/metrics")
    assert content_type.startswith("text/plain")
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()
    text = body.decode()
    for family in ("scheduler_pending_pods", "scheduler_schedule_attempts_total",
                   "scheduler_scheduling_attempt_duration_seconds", "scheduler_pod_scheduling_sli_duration_seconds",
                   "scheduler_framework_extension_point_duration_seconds",
                   "scheduler_plugin_execution_duration_seconds", "scheduler_preemption_attempts_total",
                   "scheduler_preemption_victims", "scheduler_queue_incoming_pods_total",
                   "grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds",
                   "etcd_request_duration_seconds", "leader_election_master_status", "kube_node_status_condition",
                   "kube_pod_container_status_restarts_total"):
        assert f"# TYPE {family} " in text, f"{family} missing"
    assert "_created" not in text  # kube-scheduler exports no such series


def test_a_pod_that_fits_nowhere_counts_as_unschedulable_and_waits_in_the_unschedulable_queue(
        cluster: Cluster) -> None:
    before = scrape(cluster.scheduler)
    name = unique("huge")
    apply(cluster, pod_doc(name, "1000"))  # a thousand cores: no node has them
    after = scrape_until(cluster.scheduler, lambda s: value(
        s, "scheduler_schedule_attempts_total", result="unschedulable", profile=PROFILE) > value(
        before, "scheduler_schedule_attempts_total", result="unschedulable", profile=PROFILE),
        "an unschedulable attempt counted")
    assert value(after, "scheduler_scheduling_attempt_duration_seconds_count", result="unschedulable",
                 profile=PROFILE) > value(before, "scheduler_scheduling_attempt_duration_seconds_count",
                                          result="unschedulable", profile=PROFILE)
    assert value(after, "scheduler_queue_incoming_pods_total", queue="active", event="PodAdd") > value(
        before, "scheduler_queue_incoming_pods_total", queue="active", event="PodAdd")
    assert value(after, "scheduler_preemption_attempts_total") > value(before, "scheduler_preemption_attempts_total")
    # Parked until a cluster event (or backing off, if one came during its attempt).
    waiting = scrape_until(cluster.scheduler, lambda s: value(s, "scheduler_pending_pods", queue="unschedulable")
                           + value(s, "scheduler_pending_pods", queue="backoff") >= 1, "the pod pending in a sub-queue")
    assert value(waiting, "scheduler_pending_pods", queue="gated") == 0
    assert get_pod(cluster, name)["status"]["conditions"][0]["reason"] == "Unschedulable"
    delete(cluster, "pod", name, "metrics")
    wait_for(lambda: sum(value(scrape(cluster.scheduler), "scheduler_pending_pods", queue=q)
                         for q in ("active", "backoff", "unschedulable")) == 0, 20, what="the queue emptied")


def test_a_schedulable_pod_counts_as_scheduled_with_its_durations(cluster: Cluster) -> None:
    node = unique("fit-node")
    register(cluster, node)
    before = scrape(cluster.scheduler)
    name = unique("fits")
    apply(cluster, pod_doc(name, "100m", {"kubernetes.io/hostname": node}))
    wait_for(lambda: get_pod(cluster, name)["spec"].get("nodeName") == node, 20, what="the pod bound")
    after = scrape_until(cluster.scheduler, lambda s: value(
        s, "scheduler_schedule_attempts_total", result="scheduled", profile=PROFILE) > value(
        before, "scheduler_schedule_attempts_total", result="scheduled", profile=PROFILE),
        "a scheduled attempt counted")

    def rose(metric: str, **labels: str) -> bool:
        return value(after, metric, **labels) > value(before, metric, **labels)

    assert rose("scheduler_scheduling_attempt_duration_seconds_count", result="scheduled", profile=PROFILE)
    assert rose("scheduler_scheduling_algorithm_duration_seconds_count")
    assert rose("scheduler_pod_scheduling_sli_duration_seconds_count", attempts="1")
    assert rose("scheduler_pod_scheduling_attempts_count")
    for point in ("PreFilter", "Filter", "Reserve", "Bind"):
        assert rose("scheduler_framework_extension_point_duration_seconds_count", extension_point=point,
                    status="Success", profile=PROFILE), point
    # The +Inf bucket holds every observation; the first bucket is kube-scheduler's 1 ms.
    assert value(after, "scheduler_scheduling_attempt_duration_seconds_bucket", result="scheduled", profile=PROFILE,
                 le="+Inf") == value(after, "scheduler_scheduling_attempt_duration_seconds_count",
                                     result="scheduled", profile=PROFILE)
    assert ("scheduler_scheduling_attempt_duration_seconds_bucket",
            frozenset({"result": "scheduled", "profile": PROFILE, "le": "0.001"}.items())) in after
    assert rose("etcd_request_duration_seconds_count", operation="update", type="pods")  # the binding


def test_grpc_calls_are_counted_by_method_and_code(cluster: Cluster) -> None:
    labels = {"grpc_type": "unary", "grpc_service": "orch.v1.Cluster", "grpc_method": "Get"}
    before = scrape(cluster.scheduler)
    with pytest.raises(grpc.RpcError) as missing:
        get_pod(cluster, "no-such-pod")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    cluster.api.List(cluster_pb2.ListRequest(kind="pods", namespace="metrics"), timeout=10)
    # A server stream, cancelled by the client once the server has started it.
    watch_labels = {"grpc_type": "server_stream", "grpc_service": "orch.v1.Cluster", "grpc_method": "Watch"}
    stream = cluster.api.Watch(cluster_pb2.WatchRequest(kind="pods", namespace="metrics"), timeout=30)
    wait_for(lambda: value(scrape(cluster.scheduler), "grpc_server_started_total", **watch_labels) > value(
        before, "grpc_server_started_total", **watch_labels), 20, what="the Watch started")
    stream.cancel()
    list_labels = {**labels, "grpc_method": "List"}
    after = scrape_until(cluster.scheduler, lambda s: value(
        s, "grpc_server_handled_total", **watch_labels, grpc_code="Canceled") > value(
        before, "grpc_server_handled_total", **watch_labels, grpc_code="Canceled"), "the cancelled Watch counted")

    def rose(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert rose("grpc_server_handled_total", **labels, grpc_code="NotFound") == 1
    assert rose("grpc_server_handled_total", **list_labels, grpc_code="OK") == 1
    assert rose("grpc_server_started_total", **labels) == 1
    assert rose("grpc_server_handling_seconds_count", **labels) == 1
    assert rose("grpc_server_msg_received_total", **labels) == 1
    assert rose("grpc_server_msg_sent_total", **labels) == 0  # NOT_FOUND sends no message
    assert rose("grpc_server_started_total", **watch_labels) == 1
    assert rose("etcd_request_duration_seconds_count", operation="get", type="pods") >= 1


def test_the_leader_reports_itself_leading(cluster: Cluster) -> None:
    wait_for(lambda: value(scrape(cluster.scheduler), "leader_election_master_status", name="orch-scheduler") == 1,
             20, what="the leader gauge at 1")


# --- /sd -----------------------------------------------------------------------------------------


def test_sd_lists_a_ready_node_with_its_labels_and_drops_it_when_deleted(cluster: Cluster) -> None:
    name = unique("sd-a")
    register(cluster, name, "127.0.0.1:19101", {"topology.kubernetes.io/zone": "z1", "disk": "ssd"})
    group = agent_group_until(cluster.scheduler, name)
    assert group["targets"] == ["127.0.0.1:19101"]
    labels = group["labels"]
    assert labels["role"] == "agent" and labels["node"] == name
    assert labels["__meta_orch_node_label_topology_kubernetes_io_zone"] == "z1"
    assert labels["__meta_orch_node_label_disk"] == "ssd"
    assert labels["__meta_orch_node_labelpresent_disk"] == "true"
    assert labels["__meta_orch_node_label_kubernetes_io_hostname"] == name
    assert labels["__meta_orch_node_address_InternalIP"] == "127.0.0.1"
    delete(cluster, "node", name)
    wait_for(lambda: name not in agent_groups(cluster.scheduler), 20, what="the deleted node gone from /sd")


def test_sd_drops_a_node_that_is_not_ready_and_lists_it_again_when_it_registers(cluster: Cluster) -> None:
    name = unique("sd-b")
    register(cluster, name, "127.0.0.1:19102")
    wait_for(lambda: name in agent_groups(cluster.scheduler), 20, what="the node in /sd")
    ready = {"node": name, "condition": "Ready"}
    assert value(scrape(cluster.scheduler), "kube_node_status_condition", **ready, status="true") == 1
    set_ready(cluster, name, "False")
    wait_for(lambda: name not in agent_groups(cluster.scheduler), 20, what="the NotReady node gone from /sd")
    samples = scrape(cluster.scheduler)
    assert value(samples, "kube_node_status_condition", **ready, status="false") == 1
    assert value(samples, "kube_node_status_condition", **ready, status="true") == 0
    register(cluster, name, "127.0.0.1:19103")  # the agent is back, at another port
    group = agent_group_until(cluster.scheduler, name)
    assert group["targets"] == ["127.0.0.1:19103"]


def test_sd_leaves_out_a_node_without_metrics_and_refuses_a_bad_address(cluster: Cluster) -> None:
    quiet = unique("sd-quiet")
    register(cluster, quiet)  # an agent that serves no metrics
    wait_for(lambda: with_store(cluster, lambda s: s.get_or_none(NODE, None, quiet)), 20, what="the node stored")
    assert quiet not in agent_groups(cluster.scheduler)
    bad = unique("sd-bad")
    with pytest.raises(grpc.RpcError) as refused:
        register(cluster, bad, "no-port-here")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metrics_endpoint" in (refused.value.details() or "")
    assert with_store(cluster, lambda s: s.get_or_none(NODE, None, bad)) is None  # nothing written


def test_sd_lists_every_live_scheduler_and_drops_one_that_stops(cluster: Cluster, tmp_path: Path) -> None:
    me = f"127.0.0.1:{cluster.scheduler.metrics_port}"

    def schedulers() -> dict[str, dict[str, str]]:
        return {g["targets"][0]: g["labels"] for g in sd_groups(cluster.scheduler)
                if g["labels"].get("role") == "scheduler"}

    wait_for(lambda: me in schedulers(), 20, what="the scheduler in its own /sd")
    assert schedulers()[me]["role"] == "scheduler"
    with scheduler_process(cluster.etcd, cluster.prefix, tmp_path, "second") as second:
        other = f"127.0.0.1:{second.metrics_port}"
        wait_for(lambda: other in schedulers(), 20, what="the second scheduler in /sd")
        found = schedulers()
        assert found[me]["__meta_orch_scheduler_leader"] == "true"
        assert found[other]["__meta_orch_scheduler_leader"] == "false"
        assert value(scrape(second), "leader_election_master_status", name="orch-scheduler") == 0
        # Either one's SD finds the whole cluster.
        wait_for(lambda: {g["targets"][0] for g in sd_groups(second) if g["labels"]["role"] == "scheduler"}
                 == {me, other}, 20, what="both schedulers in the second's /sd")
    # A graceful stop withdraws at once, without waiting for the TTL.
    wait_for(lambda: other not in schedulers(), 5, what="the stopped scheduler gone from /sd")


def test_sd_leaves_out_an_announcement_that_is_not_renewed(cluster: Cluster) -> None:
    name = announcement_name(unique("ghost"))
    lease = {"apiVersion": LEASE.api_version, "kind": LEASE.kind,
             "metadata": {"name": name, "namespace": ANNOUNCE_NAMESPACE, "uid": name,
                          "annotations": {METRICS_ADDRESS_ANNOTATION: "127.0.0.1:19999"}},
             "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 1, "renewTime": "2020-01-01T00:00:00.000000Z"}}
    with_store(cluster, lambda s: s.create(lease))  # no etcd lease: only its renewTime can age it

    def listed() -> bool:
        return any(g["targets"] == ["127.0.0.1:19999"] for g in sd_groups(cluster.scheduler))

    wait_for(listed, 20, what="the announcement seen")
    wait_for(lambda: not listed(), 10, what="the unrenewed announcement left out")


# --- in-process: the framework's timings, the queue's counts, the SD answer --------------------


def node_info(name: str, cpu: str = "4") -> NodeInfo:
    return NodeInfo({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": {},
                     "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                                "conditions": [{"type": "Ready", "status": "True"}]}})


def plain_pod(name: str, cpu: str = "100m") -> Obj:
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": "c", "image": "host",
                                     "resources": {"requests": {"cpu": cpu, "memory": "16Mi"}}}]}}


def test_a_sampled_cycle_times_each_plugin_on_a_few_nodes_and_an_unsampled_one_not_at_all() -> None:
    sampled = SchedulerMetrics(plugin_sample_percent=100)
    framework = default_profiles()[PROFILE]
    framework.recorder = sampled.profile_recorder(PROFILE)
    nodes = [node_info(f"n{i}") for i in range(40)]
    decision = framework.schedule(plain_pod("a"), nodes)
    assert decision.node is not None
    get = sampled.registry.get_sample_value
    for point in ("PreFilter", "Filter", "PreScore", "Score"):
        assert get("scheduler_framework_extension_point_duration_seconds_count",
                   {"extension_point": point, "status": "Success", "profile": PROFILE}) == 1, point
    timed = get("scheduler_plugin_execution_duration_seconds_count",
                {"plugin": "NodeResourcesFit", "extension_point": "Filter", "status": "Success"})
    assert timed == TIMED_NODES_PER_CYCLE  # 40 nodes filtered, the first 16 timed
    assert get("scheduler_plugin_execution_duration_seconds_count",
               {"plugin": "NodeResourcesFit", "extension_point": "Score", "status": "Success"}) == TIMED_NODES_PER_CYCLE
    assert get("scheduler_plugin_execution_duration_seconds_count",
               {"plugin": "NodeResourcesFit", "extension_point": "PreFilter", "status": "Success"}) == 1

    unsampled = SchedulerMetrics(plugin_sample_percent=0)
    framework = default_profiles()[PROFILE]
    framework.recorder = unsampled.profile_recorder(PROFILE)
    framework.schedule(plain_pod("b"), nodes)
    assert unsampled.registry.get_sample_value(
        "scheduler_framework_extension_point_duration_seconds_count",
        {"extension_point": "Filter", "status": "Success", "profile": PROFILE}) == 1
    assert not [s for m in unsampled.registry.collect() if m.name == "scheduler_plugin_execution_duration_seconds"
                for s in m.samples]


def test_a_pod_that_fits_nowhere_times_filter_and_postfilter_as_unschedulable() -> None:
    metrics = SchedulerMetrics()
    framework = default_profiles()[PROFILE]
    framework.recorder = metrics.profile_recorder(PROFILE)
    decision = framework.schedule(plain_pod("big", "64"), [node_info("n0"), node_info("n1")])
    assert decision.node is None
    for point in ("Filter", "PostFilter"):
        assert metrics.registry.get_sample_value(
            "scheduler_framework_extension_point_duration_seconds_count",
            {"extension_point": point, "status": "Unschedulable", "profile": PROFILE}) == 1, point


def test_the_queue_counts_incoming_pods_with_kube_schedulers_event_names() -> None:
    metrics = SchedulerMetrics()
    now = [0.0]
    queue = SchedulingQueue(clock=lambda: now[0], on_incoming=metrics.queue_incoming_pod)
    queue.add(plain_pod("a"))
    queue.add(plain_pod("b"))
    a, b = queue.pop_all()
    queue.failed(a, unschedulable=True)
    queue.failed(b, unschedulable=False)
    queue.move_all("NodeAdd")
    now[0] = 30.0
    queue.flush()
    get = metrics.registry.get_sample_value
    assert get("scheduler_queue_incoming_pods_total", {"queue": "active", "event": "PodAdd"}) == 2
    assert get("scheduler_queue_incoming_pods_total", {"queue": "unschedulable",
                                                       "event": "ScheduleAttemptFailure"}) == 1
    assert get("scheduler_queue_incoming_pods_total", {"queue": "backoff", "event": "ScheduleAttemptFailure"}) == 1
    assert get("scheduler_queue_incoming_pods_total", {"queue": "backoff", "event": "NodeAdd"}) == 1
    assert get("scheduler_queue_incoming_pods_total", {"queue": "active", "event": "BackoffComplete"}) == 2
    entry = queue.done(queue.pop_all()[0])
    assert entry is not None and entry.attempts == 1 and entry.arrived == 0.0


def test_names_and_buckets_are_kube_schedulers() -> None:
    assert go_code_name(grpc.StatusCode.NOT_FOUND) == "NotFound"
    assert go_code_name(grpc.StatusCode.CANCELLED) == "Canceled"
    assert go_code_name(grpc.StatusCode.OK) == "OK"
    assert go_code_name(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
    assert exponential_buckets(0.001, 2, 15)[-1] == 16.384
    # As client_golang multiplies them: kube-scheduler's le="1.5000000000000002e-05".
    assert [repr(b) for b in exponential_buckets(0.00001, 1.5, 3)] == ["1e-05", "1.5000000000000002e-05",
                                                                        "2.2500000000000005e-05"]
    assert sanitize_label_name("topology.kubernetes.io/zone") == "topology_kubernetes_io_zone"
    assert announcement_name("Host.Example_1234_ab12") == "scheduler-host.example-1234-ab12"


def test_kube_state_metrics_series_come_from_the_pods_statuses() -> None:
    metrics = SchedulerMetrics()
    pod = {"metadata": {"name": "p", "namespace": "a", "uid": "u1"},
           "status": {"containerStatuses": [
               {"name": "c", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
               {"name": "d", "restartCount": 0, "state": {"running": {}}}]}}
    metrics.watch_cluster(lambda: [], lambda: [pod])
    get = metrics.registry.get_sample_value
    ids = {"namespace": "a", "pod": "p", "uid": "u1"}
    assert get("kube_pod_container_status_restarts_total", {**ids, "container": "c"}) == 4
    assert get("kube_pod_container_status_restarts_total", {**ids, "container": "d"}) == 0
    assert get("kube_pod_container_status_waiting_reason", {**ids, "container": "c", "reason": "CrashLoopBackOff"}) == 1
    assert get("kube_pod_container_status_waiting_reason", {**ids, "container": "d", "reason": "CrashLoopBackOff"}) is None


def test_target_groups_list_ready_nodes_with_metrics_only() -> None:
    def node(name: str, ready: str, endpoint: dict[str, Any] | None) -> Obj:
        status: Obj = {"conditions": [{"type": "Ready", "status": ready}]}
        if endpoint is not None:
            status["daemonEndpoints"] = {"metricsEndpoint": endpoint}
        return {"metadata": {"name": name, "labels": {"a.b/c-d": "x"}}, "status": status}

    groups = target_groups([node("b", "True", {"Address": "fd00::2", "Port": 9100}),
                            node("a", "True", {"Address": "10.0.0.1", "Port": 9100}),
                            node("c", "Unknown", {"Address": "10.0.0.3", "Port": 9100}),
                            node("d", "True", None)], [], None)
    assert [g["targets"] for g in groups] == [["10.0.0.1:9100"], ["[fd00::2]:9100"]]
    assert groups[0]["labels"]["__meta_orch_node_label_a_b_c_d"] == "x"
