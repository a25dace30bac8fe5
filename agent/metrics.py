"""The agent's ``/metrics``: cAdvisor's container metrics with kubelet's labels, and the agent's own.

People point a Prometheus they already run, and dashboards they already have, at
this endpoint; those only work if names, labels, units and types are kubelet's
``/metrics/cadvisor``. So:

* **Read at scrape time.** ``ContainerCollector.collect`` lists the containers and
  reads their cgroup files (``CgroupDriver.stats``) and network counters while
  Prometheus waits; there is no background poller whose numbers go stale, and
  nothing to keep when no one scrapes.
* **Series per running container** with kubelet's labels ``container`` (its
  name in the pod), ``pod``, ``namespace``, ``image``, ``name`` (cAdvisor's
  container name: the container id) and ``id`` (the cgroup path, from ``/``).
  ``container_cpu_usage_seconds_total`` also has ``cpu="total"``, as kubelet
  serves it with per-CPU usage off.
* **Series per pod cgroup** with ``container=""``, ``image=""``, ``name=""``
  and the pod's ``pod``/``namespace``, as kubelet attributes a pod cgroup to its
  pod. Gotcha for queries: summing ``{pod="x"}`` without ``container!=""``
  counts the pod twice, exactly as on Kubernetes (dashboards filter it).
* **Network per pod**, on the pod-level series with ``interface="eth0"``: a pod
  has one network namespace, so one set of counters; kubelet's containers share
  it too, and attaching it once keeps ``sum by (pod)`` right. By default the
  counters come from ``/proc/<pid>/net/dev`` of one of the pod's processes, as
  cAdvisor reads them; a ``network`` callable (``PodNetwork.counters``) can be
  given instead.
* **cAdvisor's conditions:** CFS counters and ``container_spec_cpu_quota`` only
  for a cgroup with a quota; an unlimited memory limit is ``0``. A figure the
  kernel does not offer here is left out, not reported as 0.
* **Types:** counters end in ``_total``. ``container_memory_failcnt`` is a
  counter in cAdvisor but has no ``_total``; it is served *untyped* under its
  cAdvisor name, so dashboards keep working and ``promtool check metrics``
  (which rejects a counter without ``_total``) passes.
* No timestamps on samples (cAdvisor sets its housekeeping time; ours is the
  scrape's own time, which Prometheus assigns anyway).

The agent's own metrics (``orch_agent_*``) live in ``AgentMetrics``: counters
and histograms the agent increments as things happen, on a registry of its own
(not prometheus_client's global one, so tests and several agents in one
process do not collide). ``serve_metrics`` serves a registry over HTTP.

Wiring (agent/main.py)::

    metrics = AgentMetrics()
    metrics.registry.register(ContainerCollector(
        runtime.list, runtime.driver, runtime.pod_cgroup,
        supervisors=lambda: count_supervisors(runtime.state_dir)))
    server, thread = serve_metrics(metrics.registry, host, port)

``collect`` blocks on file reads (and on netlink with a ``network`` callable): it
runs on the HTTP server's request thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from agent.runtime.cgroups import CgroupDriver, CgroupStats
from agent.runtime.runtime import ContainerState, ContainerStatus
from agent.runtime.shim import proc_start_time

__all__ = [
    "KUBELET_LABELS",
    "AgentMetrics",
    "ContainerCollector",
    "MachineInfo",
    "count_supervisors",
    "proc_net_dev",
    "serve_metrics",
    "stop_metrics",
]

log = logging.getLogger(__name__)

#: kubelet's labels on every container series, in this order.
KUBELET_LABELS = ("container", "pod", "namespace", "image", "name", "id")
#: The pod's interface in its network namespace (agent.network.podnet.POD_IFNAME).
POD_INTERFACE = "eth0"

NetworkCounters = Callable[[str], Mapping[str, int] | None]

# ---------------------------------------------------------------- cAdvisor's container metrics

#: (name, type, HELP as cAdvisor has it, CgroupStats field). Counters' names end in _total.
_CGROUP_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("container_cpu_user_seconds_total", "counter", "Cumulative user cpu time consumed in seconds.",
     "cpu_user_seconds"),
    ("container_cpu_system_seconds_total", "counter", "Cumulative system cpu time consumed in seconds.",
     "cpu_system_seconds"),
    ("container_memory_cache", "gauge", "Number of bytes of page cache memory.", "memory_cache_bytes"),
    ("container_memory_rss", "gauge", "Size of RSS in bytes.", "memory_rss_bytes"),
    ("container_memory_failcnt", "untyped", "Number of memory usage hits limits", "memory_failcnt"),
    ("container_memory_usage_bytes", "gauge",
     "Current memory usage in bytes, including all memory regardless of when it was accessed",
     "memory_usage_bytes"),
    ("container_memory_working_set_bytes", "gauge", "Current working set in bytes.", "memory_working_set_bytes"),
    ("container_oom_events_total", "counter", "Count of out of memory events observed for the container",
     "oom_kills"),
    ("container_processes", "gauge", "Number of processes running inside the container.", "processes"),
    ("container_threads", "gauge", "Number of threads running inside the container", "threads"),
    ("container_spec_cpu_period", "gauge", "CPU period of the container.", "cpu_period_us"),
    ("container_spec_cpu_shares", "gauge", "CPU share of the container.", "cpu_shares"),
    ("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container.", "memory_limit_bytes"),
)
#: Only for a cgroup with a CFS quota, as cAdvisor (its ``condition: Quota != 0``).
_CFS_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("container_cpu_cfs_periods_total", "counter", "Number of elapsed enforcement period intervals.",
     "cfs_periods"),
    ("container_cpu_cfs_throttled_periods_total", "counter", "Number of throttled period intervals.",
     "cfs_throttled_periods"),
    ("container_cpu_cfs_throttled_seconds_total", "counter", "Total time duration the container has been throttled.",
     "cfs_throttled_seconds"),
    ("container_spec_cpu_quota", "gauge", "CPU quota of the container.", "cpu_quota_us"),
)
_CPU_USAGE = ("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.")
_START_TIME = ("container_start_time_seconds", "Start time of the container since unix epoch in seconds.")
_LAST_SEEN = ("container_last_seen", "Last time a container was seen by the exporter")
_SCRAPE_ERROR = ("container_scrape_error", "1 if there was an error while getting container metrics, 0 otherwise")
#: (name, HELP as cAdvisor has it, key of the counters dict: PodNetwork.counters' names).
_NETWORK_METRICS = (
    ("container_network_receive_bytes_total", "Cumulative count of bytes received", "rx_bytes"),
    ("container_network_receive_packets_total", "Cumulative count of packets received", "rx_packets"),
    ("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving",
     "rx_dropped"),
    ("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving",
     "rx_errors"),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", "tx_bytes"),
    ("container_network_transmit_packets_total", "Cumulative count of packets transmitted", "tx_packets"),
    ("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting",
     "tx_dropped"),
    ("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting",
     "tx_errors"),
)
_RUNNING_PODS = ("orch_agent_running_pods", "Pods with at least one running container on this node.")
_RUNNING_CONTAINERS = ("orch_agent_running_containers", "Containers running on this node.")
_SUPERVISORS = ("orch_agent_supervised_processes",
                "Live container supervisors (one orch-monitor per container, and the shim fork server).")


_Family = CounterMetricFamily | GaugeMetricFamily | UnknownMetricFamily


def _family(name: str, kind: str, help_text: str, labels: Iterable[str]) -> _Family:
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=list(labels))
    if kind == "gauge":
        return GaugeMetricFamily(name, help_text, labels=list(labels))
    return UnknownMetricFamily(name, help_text, labels=list(labels))


# ---------------------------------------------------------------- the machine


@dataclass(frozen=True, slots=True)
class MachineInfo:
    """cAdvisor's machine metrics and their labels; fixed while the agent runs."""

    cpu_cores: int
    memory_bytes: int
    machine_id: str = ""
    system_uuid: str = ""
    boot_id: str = ""

    @classmethod
    def of_host(cls) -> MachineInfo:
        """This machine: logical CPUs, ``MemTotal`` of /proc/meminfo, and cAdvisor's three ids.

        The machine, not what a lab node advertises: ``machine_*`` describe hardware.
        """
        memory = 0
        with contextlib.suppress(OSError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
        return cls(cpu_cores=os.cpu_count() or 0, memory_bytes=memory,
                   machine_id=_first_line("/etc/machine-id"),
                   system_uuid=_first_line("/sys/class/dmi/id/product_uuid"),
                   boot_id=_first_line("/proc/sys/kernel/random/boot_id"))


def _first_line(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:  # absent in containers and VMs without DMI; cAdvisor leaves it empty too
        return ""


# ---------------------------------------------------------------- network from /proc


#: /proc/net/dev columns after "iface:", receive then transmit (linux/net/core/net-procfs.c).
_NET_DEV_RX = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped")
_NET_DEV_TX = ("tx_bytes", "tx_packets", "tx_errors", "tx_dropped")


def proc_net_dev(pid: int) -> dict[str, dict[str, int]]:
    """Counters of every interface in ``pid``'s network namespace, from ``/proc/<pid>/net/dev``.

    The same source cAdvisor uses: a file read, where netlink needs a socket in
    the namespace. Keys as ``PodNetwork.counters``. Gotcha: the ``drop`` column
    is rx_dropped + rx_missed_errors (the kernel adds them for this file);
    netlink's ``rx_dropped`` does not. Raises OSError if the process is gone.
    """
    with open(f"/proc/{pid}/net/dev", "rb") as f:
        text = f.read().decode()
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        values = rest.split()
        if not sep or len(values) < 16:
            continue
        counters = dict(zip(_NET_DEV_RX, map(int, values[0:4]), strict=True))
        counters.update(zip(_NET_DEV_TX, map(int, values[8:12]), strict=True))
        out[name.strip()] = counters
    return out


# ---------------------------------------------------------------- supervisors


def count_supervisors(state_dir: str | os.PathLike[str]) -> int:
    """Live supervisors of a Runtime's state dir: every container's orch-monitor (which took its
    shim's pid, recorded as "pid starttime" in ``shim.pid``) and the fork server (``forkserver.json``).

    A pid counts only while the process with the recorded start time lives, so a
    recycled pid is not counted.
    """
    records: list[tuple[int, int | None]] = []
    containers = os.path.join(state_dir, "containers")
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(containers):
            try:
                with open(os.path.join(entry.path, "shim.pid")) as f:
                    fields = f.read().split()
                records.append((int(fields[0]), int(fields[1]) if len(fields) > 1 else None))
            except (OSError, ValueError, IndexError):
                continue  # no shim yet, or it is being removed
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        with open(os.path.join(state_dir, "forkserver.json")) as f:
            record = json.load(f)
        records.append((int(record["pid"]), record.get("startTime")))
    alive = 0
    for pid, start in records:
        now = proc_start_time(pid)
        if now is not None and (start is None or now == start):
            alive += 1
    return alive


# ---------------------------------------------------------------- the collector


@dataclass(slots=True)
class _Pod:
    name: str
    namespace: str
    started: float | None = None
    pids: list[int] = field(default_factory=list)


def _started_epoch(started_at: str | None) -> float | None:
    """RFC 3339 (``2024-05-01T10:00:00Z``, as the monitor writes it) -> seconds since the epoch."""
    if not started_at:
        return None
    try:
        return _dt.datetime.fromisoformat(started_at).timestamp()  # 3.11 reads the "Z"
    except ValueError:
        return None


class _Families:
    """The metric families of one scrape, filled series by series."""

    def __init__(self) -> None:
        labels = KUBELET_LABELS
        self.cpu_usage = CounterMetricFamily(*_CPU_USAGE, labels=[*labels, "cpu"])
        self.cgroup = [(_family(n, k, h, labels), f) for n, k, h, f in _CGROUP_METRICS]
        self.cfs = [(_family(n, k, h, labels), f) for n, k, h, f in _CFS_METRICS]
        self.start_time = GaugeMetricFamily(*_START_TIME, labels=labels)
        self.last_seen = GaugeMetricFamily(*_LAST_SEEN, labels=labels)
        self.network = [(CounterMetricFamily(n, h, labels=[*labels, "interface"]), k) for n, h, k in _NETWORK_METRICS]

    def add_cgroup(self, labels: list[str], stats: CgroupStats, started: float | None, now: float) -> None:
        if stats.cpu_usage_seconds is not None:
            self.cpu_usage.add_metric([*labels, "total"], stats.cpu_usage_seconds)
        for family, attr in self.cgroup:
            value = getattr(stats, attr)
            if value is not None:
                family.add_metric(labels, value)
        if stats.cpu_quota_us:  # None or 0: no quota, no CFS series
            for family, attr in self.cfs:
                value = getattr(stats, attr)
                if value is not None:
                    family.add_metric(labels, value)
        if started is not None:
            self.start_time.add_metric(labels, started)
        self.last_seen.add_metric(labels, now)

    def add_network(self, labels: list[str], interface: str, counters: Mapping[str, int]) -> None:
        for family, key in self.network:
            if key in counters:
                family.add_metric([*labels, interface], counters[key])

    def all(self) -> Iterator[Metric]:
        yield self.cpu_usage
        for family, _ in self.cgroup:
            yield family
        for family, _ in self.cfs:
            yield family
        yield self.start_time
        yield self.last_seen
        for family, _ in self.network:
            yield family


class ContainerCollector(Collector):
    """cAdvisor-compatible container, pod and machine metrics, read when scraped.

    ``containers`` returns the node's containers (``Runtime.list``; only RUNNING
    ones are reported, as a cAdvisor sees only live cgroups); ``driver`` reads
    their cgroups; ``pod_cgroup`` maps a pod uid to its cgroup path
    (``Runtime.pod_cgroup``); ``network`` maps a pod uid to its eth0 counters or
    None (default: ``/proc/<pid>/net/dev`` of one of its processes);
    ``supervisors`` counts live supervisor processes (``count_supervisors``).
    ``clock`` is the wall clock, for ``container_last_seen``.
    """

    def __init__(self, containers: Callable[[], Iterable[ContainerState]], driver: CgroupDriver,
                 pod_cgroup: Callable[[str], str], network: NetworkCounters | None = None, *,
                 supervisors: Callable[[], int] | None = None, machine: MachineInfo | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._containers = containers
        self._driver = driver
        self._pod_cgroup = pod_cgroup
        self._network = network
        self._supervisors = supervisors
        self._machine = machine if machine is not None else MachineInfo.of_host()
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        """The family names, so a registry refuses a second collector of the same names;
        reading cgroups at registration would be wasted."""
        families = _Families()
        yield from families.all()
        yield from self._agent_families(0, 0, None)
        yield from self._machine_families()
        yield GaugeMetricFamily(*_SCRAPE_ERROR)

    def collect(self) -> Iterator[Metric]:
        error = 0
        try:
            running = [c for c in self._containers() if c.status == ContainerStatus.RUNNING]
        except Exception:  # reported as container_scrape_error 1: never a failed scrape
            log.exception("metrics: cannot list the containers")
            running, error = [], 1
        families = _Families()
        now = self._clock()
        pods: dict[str, _Pod] = {}
        for st in running:
            c = st.config
            started = _started_epoch(st.started_at)
            pod = pods.setdefault(c.pod_uid, _Pod(c.pod_name, c.pod_namespace))
            if started is not None and (pod.started is None or started < pod.started):
                pod.started = started
            if st.pid is not None:
                pod.pids.append(st.pid)
            stats = self._stats(st.cgroup)
            if stats is None:
                error = 1
            elif stats.found():  # else the container ended between the listing and the read
                families.add_cgroup([c.name, c.pod_name, c.pod_namespace, c.image, c.id, "/" + st.cgroup],
                                    stats, started, now)
        for uid, pod in pods.items():
            if not self._collect_pod(families, uid, pod, now):
                error = 1
        yield from families.all()
        yield from self._agent_families(len(pods), len(running), self._count_supervisors())
        yield from self._machine_families()
        yield GaugeMetricFamily(*_SCRAPE_ERROR, value=error)

    def _collect_pod(self, families: _Families, uid: str, pod: _Pod, now: float) -> bool:
        """The pod cgroup's series and the pod's network; False if something could not be read."""
        try:
            cgroup = self._pod_cgroup(uid)
        except (ValueError, OSError) as e:
            log.warning("metrics: pod %s/%s (%s): no pod cgroup: %s", pod.namespace, pod.name, uid, e)
            return False
        labels = ["", pod.name, pod.namespace, "", "", "/" + cgroup]
        stats = self._stats(cgroup)
        if stats is not None and stats.found():
            families.add_cgroup(labels, stats, pod.started, now)
        counters = self._pod_network(uid, pod)
        if counters is not None:
            families.add_network(labels, POD_INTERFACE, counters)
        return stats is not None

    def _stats(self, cgroup: str) -> CgroupStats | None:
        try:
            return self._driver.stats(cgroup)
        except (OSError, ValueError) as e:
            log.warning("metrics: cannot read cgroup %s: %s", cgroup, e)
            return None

    def _pod_network(self, uid: str, pod: _Pod) -> Mapping[str, int] | None:
        if self._network is not None:
            try:
                return self._network(uid)
            except (OSError, ValueError) as e:  # the pod is going away, or has no network yet
                log.debug("metrics: pod %s/%s: no network counters: %s", pod.namespace, pod.name, e)
                return None
        for pid in pod.pids:  # any process of the pod sits in its network namespace
            try:
                return proc_net_dev(pid).get(POD_INTERFACE)
            except (OSError, ValueError):
                continue  # that one just exited
        return None

    def _count_supervisors(self) -> int | None:
        if self._supervisors is None:
            return None
        try:
            return self._supervisors()
        except OSError as e:
            log.warning("metrics: cannot count supervisors: %s", e)
            return None

    @staticmethod
    def _agent_families(pods: int, containers: int, supervisors: int | None) -> Iterator[Metric]:
        yield GaugeMetricFamily(*_RUNNING_PODS, value=pods)
        yield GaugeMetricFamily(*_RUNNING_CONTAINERS, value=containers)
        family = GaugeMetricFamily(*_SUPERVISORS)
        if supervisors is not None:
            family.add_metric([], supervisors)
        yield family

    def _machine_families(self) -> Iterator[Metric]:
        m = self._machine
        ids = [m.machine_id, m.system_uuid, m.boot_id]
        for name, help_text, value in (("machine_cpu_cores", "Number of logical CPU cores.", m.cpu_cores),
                                       ("machine_memory_bytes", "Amount of memory installed on the machine.",
                                        m.memory_bytes)):
            family = GaugeMetricFamily(name, help_text, labels=["machine_id", "system_uuid", "boot_id"])
            family.add_metric(ids, value)
            yield family


# ---------------------------------------------------------------- the agent's own


#: Container start: from the agent deciding to start to the runtime reporting it running (ms .. a slow pull).
START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: One reconcile pass over the node's pods.
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class AgentMetrics:
    """The agent's own metrics, which it updates as things happen, on ``registry``.

    * ``container_starts``: ``orch_agent_container_starts_total``, containers the
      runtime reported started;
    * ``container_start_failures``: ``orch_agent_container_start_failures_total{reason}``,
      starts that failed (``reason``: a short fixed word such as ``StartError``,
      ``ImagePullError``, ``RuntimeError`` — never a message, which would make a
      series per error text);
    * ``container_start_duration``: ``orch_agent_container_start_duration_seconds``;
    * ``reconcile_duration``: ``orch_agent_reconcile_duration_seconds``, one pass.

    Running pods and containers and supervisor processes are gauges computed at
    scrape time by ``ContainerCollector``. The registry also carries the agent
    process's own ``process_*`` and ``python_info``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.container_starts = Counter(
            "orch_agent_container_starts_total", "Containers the runtime started.", registry=self.registry)
        self.container_start_failures = Counter(
            "orch_agent_container_start_failures_total", "Containers that failed to start, by reason.",
            ["reason"], registry=self.registry)
        self.container_start_duration = Histogram(
            "orch_agent_container_start_duration_seconds",
            "Time from asking the runtime to start a container to it running.",
            buckets=START_BUCKETS, registry=self.registry)
        self.reconcile_duration = Histogram(
            "orch_agent_reconcile_duration_seconds", "Duration of one reconcile pass over the node's pods.",
            buckets=RECONCILE_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)


# ---------------------------------------------------------------- serving


def _server_class(family: socket.AddressFamily) -> type[ThreadingWSGIServer]:
    """prometheus_client's thread-per-request WSGI server, for ``family`` (HTTPServer assumes IPv4)."""

    class MetricsServer(ThreadingWSGIServer):
        address_family = family

    return MetricsServer


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A scrape every 15 s is not news: no access log."""


def _text_format_only(app: Callable[..., Any]) -> Callable[..., Any]:
    """Answer every scrape in the classic text format (0.0.4), as kubelet's ``/metrics/cadvisor``
    does (client_golang without OpenMetrics), whatever ``Accept`` prefers.

    Prometheus asks for OpenMetrics first; prometheus_client's OpenMetrics encoder is
    the slower one (bench/metrics_scrape.py) and buys nothing for these metrics.
    """

    def app_text(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return app({**environ, "HTTP_ACCEPT": "text/plain; version=0.0.4"}, start_response)

    return app_text


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` at ``http://host:port/metrics`` (any path answers) from a daemon thread.

    prometheus_client's WSGI app (gzip when asked, ``?name[]=`` filters) in the text
    format only (``_text_format_only``). ``port`` 0 picks a free port: read it from
    ``server.server_address[1]``. An IPv6 ``host`` works. Each request is handled in a
    thread of its own, so a slow scrape blocks no other and never the agent's event
    loop. Stop with ``stop_metrics``. Raises OSError when the address cannot be bound.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server: WSGIServer = make_server(host, port, _text_format_only(make_wsgi_app(registry)), _server_class(family),
                                     handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"metrics-http-{server.server_address[1]}",
                              daemon=True)
    thread.start()
    log.info("metrics: serving on http://%s:%d/metrics", host, server.server_address[1])
    return server, thread


def stop_metrics(server: WSGIServer, thread: threading.Thread, timeout: float = 5.0) -> None:
    """Stop a ``serve_metrics`` server: no new requests, the socket closed, the thread joined."""
    server.shutdown()
    server.server_close()
    thread.join(timeout)
