"""The scheduler's Prometheus metrics, under the names existing dashboards know, and the
small HTTP server that serves them (and the service discovery of scheduler/sd.py).

What is exported, and whose names it borrows:

* **kube-scheduler** (``pkg/scheduler/metrics``), same names, labels and buckets:
  ``scheduler_schedule_attempts_total{result,profile}``,
  ``scheduler_scheduling_attempt_duration_seconds{result,profile}`` (the decision and the
  binding), ``scheduler_scheduling_algorithm_duration_seconds``,
  ``scheduler_pod_scheduling_sli_duration_seconds{attempts}`` (first entering the queue →
  bound), ``scheduler_pod_scheduling_attempts``, ``scheduler_pending_pods{queue}``
  (active, backoff, unschedulable, and gated — always 0: orch has no scheduling gates),
  ``scheduler_queue_incoming_pods_total{queue,event}``,
  ``scheduler_framework_extension_point_duration_seconds{extension_point,status,profile}``,
  ``scheduler_plugin_execution_duration_seconds{plugin,extension_point,status}`` (sampled:
  see scheduler/framework.py), ``scheduler_preemption_attempts_total``,
  ``scheduler_preemption_victims``.
* **kube-state-metrics**, the few series the charts (charts/) read, from the informers at
  scrape time: ``kube_node_status_condition{node,condition,status}``,
  ``kube_pod_container_status_restarts_total{namespace,pod,uid,container}`` and
  ``kube_pod_container_status_waiting_reason{namespace,pod,uid,container,reason}``. Every
  replica exports them (aggregate with ``max``).
* **client-go's leader election**: ``leader_election_master_status{name}``, 1 while this
  replica leads (``name``: the election Lease, ``orch-scheduler``). Absent with
  ``--leader-elect=false``, as kube-scheduler's.
* **go-grpc-prometheus**, for the Cluster API and the node protocol:
  ``grpc_server_started_total``, ``grpc_server_handled_total{…,grpc_code}``,
  ``grpc_server_msg_received_total``, ``grpc_server_msg_sent_total`` and
  ``grpc_server_handling_seconds`` (``grpc_type``, ``grpc_service``, ``grpc_method``; the
  codes spelled as Go spells them: ``OK``, ``NotFound``, ``Canceled``…), from a
  ``grpc.aio`` server interceptor. A streaming call's handling time is the whole stream.
* **kube-apiserver's etcd client**: ``etcd_request_duration_seconds{operation,type}`` and
  ``etcd_request_errors_total{operation,type}``; ``operation`` is kube-apiserver's verb
  (``get``, ``list``, ``create``, ``update``, ``delete``; a binding is an ``update`` of
  ``pods``), ``type`` the resource (``pods``, ``nodes``, ``leases``, ``nodeallocations``…).
  Watches are not timed (they last as long as the informer).
* prometheus_client's process and Python collectors (``process_*``, ``python_*``).

Every metric lives in the ``CollectorRegistry`` of one ``SchedulerMetrics``, not in
prometheus_client's global one, so several schedulers in one test process do not collide.

**Cost.** The recording methods cache their labelled children (a dict lookup and one
``inc``/``observe``, about a microsecond). The plugin durations, a few hundred
observations per sampled cycle, go into ``LoopHistogram``: plain lists, no lock
(prometheus_client's ``observe`` takes one per bucket and sum, 1.2 µs), exported by a
collector when scraped — which is why it must be scraped on the event loop, as here.

**Serving.** ``HttpServer`` answers on the scheduler's event loop (``asyncio.start_server``),
not from prometheus_client's ``start_http_server`` thread: the pending-pods gauge, the
leader gauge and the service discovery read the scheduling queue and the informers'
caches, plain dicts that only the loop changes; read from another thread they could
change mid-iteration ("dictionary changed size during iteration") or give an
inconsistent answer, and locks around the scheduler's hot paths would cost more than
the few milliseconds a scrape takes on the loop. One request per connection
(``Connection: close``), GET and HEAD only, gzip when asked for, as prometheus_client's own
server.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gzip
import itertools
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from apimachinery.meta import Obj

log = logging.getLogger(__name__)

#: kube-scheduler's ``pluginMetricsSamplePercent``: the share of cycles whose plugins are timed.
PLUGIN_METRICS_SAMPLE_PERCENT = 10

#: The port kube-scheduler serves its metrics on (its secure port).
DEFAULT_METRICS_PORT = 10259


def exponential_buckets(start: float, factor: float, count: int) -> list[float]:
    """client_golang's ExponentialBuckets: ``count`` upper bounds from ``start``, each ``factor``
    times the previous, multiplied one after the other as Go does, so that the ``le`` labels
    are byte for byte kube-scheduler's (``1.5000000000000002e-05`` included)."""
    bounds = []
    for _ in range(count):
        bounds.append(start)
        start *= factor
    return bounds


# The buckets of the metrics whose names these are.
ATTEMPT_BUCKETS = exponential_buckets(0.001, 2, 15)
SLI_BUCKETS = exponential_buckets(0.01, 2, 20)
EXTENSION_POINT_BUCKETS = exponential_buckets(0.0001, 2, 12)
PLUGIN_BUCKETS = exponential_buckets(0.00001, 1.5, 20)
PREEMPTION_VICTIM_BUCKETS = exponential_buckets(1, 2, 7)
ATTEMPTS_BUCKETS = exponential_buckets(1, 2, 5)
ETCD_BUCKETS = [0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20,
                30, 45, 60]
GRPC_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]  # client_golang's DefBuckets

PENDING_QUEUES = ("active", "backoff", "unschedulable", "gated")


class SchedulerMetrics:
    """Every metric of one scheduler process, on ``registry``.

    The recording methods are called from the scheduling loop's hot paths; each caches
    its labelled children so that a call costs a dict lookup and one ``inc``/``observe``.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 plugin_sample_percent: float = PLUGIN_METRICS_SAMPLE_PERCENT) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.plugin_sample_percent = plugin_sample_percent
        r = self.registry
        self.schedule_attempts = Counter(
            "scheduler_schedule_attempts", "Number of attempts to schedule pods, by the result. 'unschedulable' "
            "means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
            ["result", "profile"], registry=r)
        self.attempt_duration = Histogram(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
            ["result", "profile"], buckets=ATTEMPT_BUCKETS, registry=r)
        self.algorithm_duration = Histogram(
            "scheduler_scheduling_algorithm_duration_seconds", "Scheduling algorithm latency in seconds",
            buckets=ATTEMPT_BUCKETS, registry=r)
        self.sli_duration = Histogram(
            "scheduler_pod_scheduling_sli_duration_seconds",
            "E2e latency for a pod being scheduled, from the time the pod enters the scheduling queue and "
            "might involve multiple scheduling attempts.", ["attempts"], buckets=SLI_BUCKETS, registry=r)
        self.pod_attempts = Histogram(
            "scheduler_pod_scheduling_attempts", "Number of attempts to successfully schedule a pod.",
            buckets=ATTEMPTS_BUCKETS, registry=r)
        self.extension_point_duration = Histogram(
            "scheduler_framework_extension_point_duration_seconds",
            "Latency for running all plugins of a specific extension point.",
            ["extension_point", "status", "profile"], buckets=EXTENSION_POINT_BUCKETS, registry=r)
        self.plugin_duration = LoopHistogram(
            "scheduler_plugin_execution_duration_seconds",
            "Duration for running a plugin at a specific extension point.",
            ("plugin", "extension_point", "status"), PLUGIN_BUCKETS)
        r.register(self.plugin_duration)
        self.preemption_attempts = Counter(
            "scheduler_preemption_attempts", "Total preemption attempts in the cluster till now", registry=r)
        self.preemption_victims = Histogram(
            "scheduler_preemption_victims", "Number of selected preemption victims",
            buckets=PREEMPTION_VICTIM_BUCKETS, registry=r)
        self.queue_incoming = Counter(
            "scheduler_queue_incoming_pods", "Number of pods added to scheduling queues by event and queue type.",
            ["queue", "event"], registry=r)
        self.etcd_duration = Histogram(
            "etcd_request_duration_seconds", "Etcd request latency in seconds for each operation and object type.",
            ["operation", "type"], buckets=ETCD_BUCKETS, registry=r)
        self.etcd_errors = Counter(
            "etcd_request_errors", "Etcd failed request counts for each operation and object type.",
            ["operation", "type"], registry=r)
        self.grpc = GrpcServerMetrics(r)
        self._state = _StateCollector()
        r.register(self._state)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._attempt_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._incoming_children: dict[tuple[str, str], Any] = {}
        self._etcd_children: dict[tuple[str, str], Any] = {}

    # --- what the scheduler reads when scraped ------------------------------------------

    def watch_pending_pods(self, pending: Callable[[], Mapping[str, int]]) -> None:
        """``pending()``: pods per sub-queue, read at each scrape."""
        self._state.pending = pending

    def watch_leader(self, name: str, leading: Callable[[], bool]) -> None:
        """``leading()``: whether this replica holds the election Lease ``name``, read at each scrape."""
        self._state.leaders[name] = leading

    def watch_cluster(self, nodes: Callable[[], Iterable[Obj]], pods: Callable[[], Iterable[Obj]]) -> None:
        """Export the kube-state-metrics series of ``nodes()`` and ``pods()`` (the informers' caches)."""
        self.registry.register(ClusterStateCollector(nodes, pods))

    # --- recording -----------------------------------------------------------------------

    def profile_recorder(self, profile: str) -> ProfileRecorder:
        """The MetricsRecorder (scheduler/framework.py) of one scheduling profile. Its attempt
        counters start at 0 for every result, so that ``rate()`` sees the first attempt too."""
        for result in ("scheduled", "unschedulable", "error"):
            self._attempt(result, profile)
        return ProfileRecorder(self, profile)

    def _attempt(self, result: str, profile: str) -> tuple[Any, Any]:
        children = self._attempt_children.get((result, profile))
        if children is None:
            children = (self.schedule_attempts.labels(result, profile), self.attempt_duration.labels(result, profile))
            self._attempt_children[(result, profile)] = children
        return children

    def schedule_attempt(self, result: str, profile: str, seconds: float) -> None:
        """One scheduling attempt ended: ``scheduled``, ``unschedulable`` or ``error``."""
        counter, duration = self._attempt(result, profile)
        counter.inc()
        duration.observe(seconds)

    def pod_scheduled(self, attempts: int, seconds: float) -> None:
        """A pod was bound ``seconds`` after it first entered the queue, at its ``attempts``-th attempt."""
        self.sli_duration.labels(str(attempts)).observe(seconds)
        self.pod_attempts.observe(attempts)

    def preemption_attempt(self, victims: int) -> None:
        """A PostFilter ran for a pod that fits nowhere; ``victims`` it chose (0: none found)."""
        self.preemption_attempts.inc()
        if victims:
            self.preemption_victims.observe(victims)

    def queue_incoming_pod(self, queue: str, event: str) -> None:
        child = self._incoming_children.get((queue, event))
        if child is None:
            child = self._incoming_children[(queue, event)] = self.queue_incoming.labels(queue, event)
        child.inc()

    def etcd_request(self, operation: str, type_: str, seconds: float, failed: bool) -> None:
        child = self._etcd_children.get((operation, type_))
        if child is None:
            child = self._etcd_children[(operation, type_)] = self.etcd_duration.labels(operation, type_)
        child.observe(seconds)
        if failed:
            self.etcd_errors.labels(operation, type_).inc()

    def exposition(self, accept: str = "", accept_encoding: str = "") -> tuple[bytes, dict[str, str]]:
        """The registry in the format ``accept`` asks for (Prometheus text or OpenMetrics), and its headers."""
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        headers = {"Content-Type": content_type}
        if gzip_accepted(accept_encoding):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return body, headers


class ProfileRecorder:
    """One profile's extension-point and plugin durations (framework.MetricsRecorder)."""

    __slots__ = ("metrics", "profile", "_points", "_random", "_percent", "_observe_plugin")

    def __init__(self, metrics: SchedulerMetrics, profile: str) -> None:
        self.metrics = metrics
        self.profile = profile
        self._points: dict[tuple[str, str], Any] = {}
        self._random = random.random
        self._percent = metrics.plugin_sample_percent
        self._observe_plugin = metrics.plugin_duration.observe

    def sample_plugins(self) -> bool:
        return self._random() * 100 < self._percent

    def observe_extension_point(self, point: str, status: str, seconds: float) -> None:
        child = self._points.get((point, status))
        if child is None:
            child = self.metrics.extension_point_duration.labels(point, status, self.profile)
            self._points[(point, status)] = child
        child.observe(seconds)

    def observe_plugin(self, plugin: str, point: str, status: str, seconds: float) -> None:
        self._observe_plugin((plugin, point, status), seconds)


class LoopHistogram(Collector):
    """A labelled histogram for observations made many times a cycle on the event loop:
    per label set, a list of per-bucket counts and a sum, without locks; cumulated into
    Prometheus buckets only when scraped. Not thread-safe: write and scrape it from one
    thread (the loop's)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], buckets: list[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.bounds = sorted(buckets)
        self.series: dict[tuple[str, ...], list[float]] = {}  # labels → [count per bucket..., +Inf, sum]

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        series[bisect.bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        series[-1] += value

    def sample_count(self, labels: tuple[str, ...]) -> float:
        series = self.series.get(labels)
        return sum(series[:-1]) if series is not None else 0.0

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for labels, series in sorted(self.series.items()):
            family.add_metric(list(labels), list(zip(les, itertools.accumulate(series[:-1]), strict=True)),
                              series[-1])
        yield family


class _StateCollector(Collector):
    """Gauges read from the scheduler's state at scrape time: the pending pods per sub-queue
    and the leader status. (Read when scraped, so they are never stale, and the hot
    paths that change the queue do not pay for them.)"""

    def __init__(self) -> None:
        self.pending: Callable[[], Mapping[str, int]] | None = None
        self.leaders: dict[str, Callable[[], bool]] = {}

    def collect(self) -> Iterable[Metric]:
        if self.pending is not None:
            counts = self.pending()
            family = GaugeMetricFamily(
                "scheduler_pending_pods", "Number of pending pods, by the queue type. 'active' means number of pods "
                "in activeQ; 'backoff' means number of pods in backoffQ; 'unschedulable' means number of pods in "
                "unschedulablePods that the scheduler attempted to schedule and failed; 'gated' is the number of "
                "unschedulable pods that the scheduler never attempted to schedule because they are gated.",
                labels=["queue"])
            for queue in PENDING_QUEUES:
                family.add_metric([queue], counts.get(queue, 0))
            yield family
        if self.leaders:
            family = GaugeMetricFamily(
                "leader_election_master_status", "Gauge of if the reporting system is master of the relevant lease, "
                "0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please "
                "make sure to group by name.", labels=["name"])
            for name, leading in sorted(self.leaders.items()):
                family.add_metric([name], 1 if leading() else 0)
            yield family


CONDITION_STATUSES = ("true", "false", "unknown")


class ClusterStateCollector(Collector):
    """kube-state-metrics' node-condition and container-status series, from the informers
    when scraped (one pass over the nodes and the pods)."""

    def __init__(self, nodes: Callable[[], Iterable[Obj]], pods: Callable[[], Iterable[Obj]]) -> None:
        self.nodes = nodes
        self.pods = pods

    def collect(self) -> Iterable[Metric]:
        conditions = GaugeMetricFamily("kube_node_status_condition", "The condition of a cluster node.",
                                       labels=["node", "condition", "status"])
        for node in self.nodes():
            name = str(node["metadata"]["name"])
            for cond in (node.get("status") or {}).get("conditions") or []:
                actual = str(cond.get("status", "Unknown")).lower()
                for status in CONDITION_STATUSES:
                    conditions.add_metric([name, str(cond.get("type", "")), status], 1.0 if actual == status else 0.0)
        restarts = CounterMetricFamily("kube_pod_container_status_restarts", "The number of container restarts "
                                       "per container.", labels=["namespace", "pod", "uid", "container"])
        waiting = GaugeMetricFamily("kube_pod_container_status_waiting_reason", "Describes the reason the container "
                                    "is currently in waiting state.",
                                    labels=["namespace", "pod", "uid", "container", "reason"])
        for pod in self.pods():
            md = pod["metadata"]
            ids = [str(md.get("namespace", "")), str(md["name"]), str(md.get("uid", ""))]
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                restarts.add_metric([*ids, str(cs.get("name", ""))], float(cs.get("restartCount") or 0))
                reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
                if reason:
                    waiting.add_metric([*ids, str(cs.get("name", "")), str(reason)], 1.0)
        yield conditions
        yield restarts
        yield waiting


# --- gRPC server metrics (go-grpc-prometheus) ---------------------------------------------


def go_code_name(code: grpc.StatusCode) -> str:
    """A status code as Go's ``codes.Code.String()`` spells it: NOT_FOUND → NotFound, CANCELLED → Canceled."""
    if code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(word.capitalize() for word in code.name.split("_"))


GO_CODE_NAMES = {code: go_code_name(code) for code in grpc.StatusCode}


def _final_code(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    """The code the call ends with: what the handler set or aborted with, else ``default``."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return GO_CODE_NAMES[code]
    if isinstance(code, int):  # some grpc versions hand back the raw number
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return GO_CODE_NAMES[candidate]
    return GO_CODE_NAMES[default]


def _code_of_exception(context: grpc.aio.ServicerContext, e: BaseException) -> str:
    if isinstance(e, grpc.aio.AbortError):
        return _final_code(context, grpc.StatusCode.UNKNOWN)
    if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
        # grpc cancels the handler both when the client cancels and when the deadline passes.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return GO_CODE_NAMES[grpc.StatusCode.DEADLINE_EXCEEDED]
        return GO_CODE_NAMES[grpc.StatusCode.CANCELLED]
    return GO_CODE_NAMES[grpc.StatusCode.UNKNOWN]  # what grpc answers for an unhandled exception


class _MethodMetrics:
    """The labelled children of one method, made once per method."""

    __slots__ = ("labels", "started", "received", "sent", "seconds", "handled", "_metrics")

    def __init__(self, metrics: GrpcServerMetrics, grpc_type: str, service: str, method: str) -> None:
        self._metrics = metrics
        self.labels = (grpc_type, service, method)
        self.started = metrics.started.labels(*self.labels)
        self.received = metrics.received.labels(*self.labels)
        self.sent = metrics.sent.labels(*self.labels)
        self.seconds = metrics.seconds.labels(*self.labels)
        self.handled: dict[str, Any] = {}

    def done(self, code: str, start: float) -> None:
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = self._metrics.handled.labels(*self.labels, code)
        child.inc()
        self.seconds.observe(time.perf_counter() - start)


class GrpcServerMetrics(grpc.aio.ServerInterceptor):
    """go-grpc-prometheus' server metrics, as a ``grpc.aio`` server interceptor (pass it in
    ``grpc.aio.server(interceptors=[...])``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started", "Total number of RPCs started on the server.", labels,
                               registry=registry)
        self.handled = Counter("grpc_server_handled", "Total number of RPCs completed on the server, regardless "
                               "of success or failure.", [*labels, "grpc_code"], registry=registry)
        self.received = Counter("grpc_server_msg_received", "Total number of RPC stream messages received on the "
                                "server.", labels, registry=registry)
        self.sent = Counter("grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.",
                            labels, registry=registry)
        self.seconds = Histogram("grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC "
                                 "that had been application-level handled by the server.", labels,
                                 buckets=GRPC_BUCKETS, registry=registry)
        self._methods: dict[tuple[str, str], _MethodMetrics] = {}

    def _method(self, full_method: str, grpc_type: str) -> _MethodMetrics:
        found = self._methods.get((full_method, grpc_type))
        if found is None:
            service, _, method = full_method.lstrip("/").rpartition("/")
            found = self._methods[(full_method, grpc_type)] = _MethodMetrics(self, grpc_type, service, method)
        return found

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: grpc answers UNIMPLEMENTED itself
        name = handler_call_details.method  # type: ignore[attr-defined]
        if isinstance(name, bytes):
            name = name.decode()
        h: Any = handler
        if h.request_streaming and h.response_streaming:
            return h._replace(stream_stream=self._streaming(h.stream_stream, self._method(name, "bidi_stream"), True))
        if h.request_streaming:
            return h._replace(stream_unary=self._unary(h.stream_unary, self._method(name, "client_stream"), True))
        if h.response_streaming:
            return h._replace(unary_stream=self._streaming(h.unary_stream, self._method(name, "server_stream"), False))
        return h._replace(unary_unary=self._unary(h.unary_unary, self._method(name, "unary"), False))

    @staticmethod
    def _unary(behavior: Callable[..., Any], m: _MethodMetrics, request_streaming: bool) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            m.started.inc()
            if request_streaming:
                request = _counting(request, m)
            else:
                m.received.inc()
            try:
                response = await behavior(request, context)
            except BaseException as e:
                m.done(_code_of_exception(context, e), start)
                raise
            m.sent.inc()
            m.done(_final_code(context, grpc.StatusCode.OK), start)
            return response

        return handle

    @staticmethod
    def _streaming(behavior: Callable[..., Any], m: _MethodMetrics, request_streaming: bool) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            m.started.inc()
            if request_streaming:
                request = _counting(request, m)
            else:
                m.received.inc()
            try:
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async with contextlib.aclosing(result) as responses:
                        async for response in responses:
                            m.sent.inc()
                            yield response
                else:  # a handler that writes with context.write
                    await result
            except BaseException as e:
                m.done(_code_of_exception(context, e), start)
                raise
            m.done(_final_code(context, grpc.StatusCode.OK), start)

        return handle


async def _counting(requests: AsyncIterator[Any], m: _MethodMetrics) -> AsyncIterator[Any]:
    async for request in requests:
        m.received.inc()
        yield request


# --- the HTTP server ------------------------------------------------------------------------

#: ``handler(headers)`` → (status, headers, body); ``headers`` lower-cased request headers.
Route = Callable[[Mapping[str, str]], tuple[int, dict[str, str], bytes]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}
MAX_REQUEST_HEAD = 16 * 1024
REQUEST_TIMEOUT = 10.0


def metrics_route(metrics: SchedulerMetrics) -> Route:
    def route(headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        body, out = metrics.exposition(headers.get("accept", ""), headers.get("accept-encoding", ""))
        return 200, out, body

    return route


def split_host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` too) → (host, port); ValueError naming what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 0 to 65535, got {address!r}")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HttpServer:
    """A minimal HTTP/1.1 server on the event loop for a few GET routes (see the module docstring)."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = dict(routes)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; the address actually bound (port 0 picks a free one). OSError when it cannot."""
        self._server = await asyncio.start_server(self._serve, host or None, port, limit=MAX_REQUEST_HEAD)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                status, headers, body, head_only = self._answer(head)
                reason = _REASONS.get(status, "")
                lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items()),
                         f"Content-Length: {len(body)}", "Connection: close", "", ""]
                writer.write("\r\n".join(lines).encode("latin-1") + (b"" if head_only else body))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # the client went away, or sent no complete request: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[int, dict[str, str], bytes, bool]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            return 400, {"Content-Type": "text/plain"}, b"bad request line\n", False
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, {"Allow": "GET, HEAD", "Content-Type": "text/plain"}, b"only GET and HEAD\n", False
        route = self.routes.get(urlsplit(target).path)
        if route is None:
            paths = ", ".join(sorted(self.routes))
            return 404, {"Content-Type": "text/plain"}, f"not found; try {paths}\n".encode(), head_only
        try:
            status, out, body = route(headers)
        except Exception as e:  # noqa: BLE001 - a broken route answers 500 and is logged, the server stays up
            log.exception("metrics server: %s %s failed", method, target)
            return 500, {"Content-Type": "text/plain"}, f"{type(e).__name__}: {e}\n".encode(), head_only
        return status, out, body, head_only
