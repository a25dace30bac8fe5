"""The agent's /metrics: cgroup stat readers, the cAdvisor-compatible collector, the HTTP endpoint.

* The stat readers of both drivers against directories laid out like cgroupfs
  (v1: one per controller; v2: unified) with known contents: exact values,
  cAdvisor's conversions and conditions, missing files.
* The collector over such a fake v2 tree: kubelet's labels, pod-level series,
  network on the pod, what is left out, scrape errors; the text passes
  ``promtool check metrics``.
* Real containers of a real ``Runtime`` on this machine's hierarchy (fixture
  ``runtime`` of ``conftest_runtime``: everything is removed afterwards, also on
  failure): memory and working set against what the cgroup files say, CPU usage
  rising by the elapsed time, a 500m limit's quota and throttling, process and
  thread counts, the HTTP endpoint, and a pod with a real network namespace and
  ``PodNetwork`` (all links inside namespaces the test makes).
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from conftest_runtime import (
    container_output,
    make_config,
    requires_root,
    runtime_fixture,  # noqa: F401 - the `runtime` fixture
    wait_for,
)

from agent.metrics import (
    KUBELET_LABELS,
    AgentMetrics,
    ContainerCollector,
    MachineInfo,
    count_supervisors,
    proc_net_dev,
    serve_metrics,
    stop_metrics,
)
from agent.runtime.cgroups import (
    CgroupDriver,
    CgroupStats,
    Limits,
    V1Driver,
    V2Driver,
    cpu_weight,
    cpu_weight_to_shares,
)
from agent.runtime.runtime import ContainerState, ContainerStatus, Runtime

MiB = 1024 * 1024
PROMTOOL = shutil.which("promtool")

Labels = frozenset[tuple[str, str]]
Scrape = dict[tuple[str, Labels], float]


def lay_out(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def samples(text: str) -> Scrape:
    """Every sample of a text exposition: (sample name, labels) -> value."""
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(registry: CollectorRegistry) -> tuple[str, Scrape]:
    text = generate_latest(registry).decode()
    return text, samples(text)


def series(got: Scrape, name: str) -> dict[Labels, float]:
    return {labels: v for (n, labels), v in got.items() if n == name}


def kubelet_labels(st: ContainerState) -> dict[str, str]:
    c = st.config
    return {"container": c.name, "pod": c.pod_name, "namespace": c.pod_namespace, "image": c.image,
            "name": c.id, "id": "/" + st.cgroup}


def pod_labels(st: ContainerState, pod_cgroup: str) -> dict[str, str]:
    c = st.config
    return {"container": "", "pod": c.pod_name, "namespace": c.pod_namespace, "image": "", "name": "",
            "id": "/" + pod_cgroup}


def value(got: Scrape, name: str, labels: dict[str, str]) -> float:
    key = (name, frozenset(labels.items()))
    assert key in got, f"no {name}{labels} in the scrape; have {sorted(series(got, name))}"
    return got[key]


def promtool_check(text: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; CI installs it)")
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, f"promtool check metrics: {proc.stdout}{proc.stderr}"


# ---------------------------------------------------------------- stat readers, fake cgroupfs

V1_LIMITED = {
    "cpuacct/pod/c/cpuacct.usage": "2500000000\n",
    "cpuacct/pod/c/cpuacct.stat": "user 150\nsystem 50\n",
    "cpu/pod/c/cpu.stat": "nr_periods 40\nnr_throttled 7\nthrottled_time 350000000\nnr_bursts 0\nburst_time 0\n",
    "cpu/pod/c/cpu.cfs_quota_us": "50000\n",
    "cpu/pod/c/cpu.cfs_period_us": "100000\n",
    "cpu/pod/c/cpu.shares": "512\n",
    "cpu/pod/c/cgroup.procs": "101\n102\n",
    "memory/pod/c/memory.usage_in_bytes": f"{100 * MiB}\n",
    "memory/pod/c/memory.stat": (f"cache 1\nrss 2\ninactive_file 3\nhierarchical_memory_limit 9223372036854771712\n"
                                 f"total_cache {20 * MiB}\ntotal_rss {70 * MiB}\ntotal_inactive_file {10 * MiB}\n"),
    "memory/pod/c/memory.failcnt": "3\n",
    "memory/pod/c/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    "memory/pod/c/memory.limit_in_bytes": f"{256 * MiB}\n",
    "pids/pod/c/pids.current": "9\n",
}


def v1_fake(root: Path, *, pids: bool = True) -> V1Driver:
    for c in ("cpu", "cpuacct", "memory", "pids"):
        (root / c).mkdir(parents=True, exist_ok=True)
    mounts = {c: str(root / c) for c in ("cpu", "cpuacct", "memory", "pids") if pids or c != "pids"}
    driver = V1Driver(mounts)
    assert driver.plain
    return driver


def test_v1_stats_from_a_fake_hierarchy(tmp_path: Path) -> None:
    driver = v1_fake(tmp_path)
    lay_out(tmp_path, V1_LIMITED)
    hz = os.sysconf("SC_CLK_TCK")
    assert driver.stats("pod/c") == CgroupStats(
        cpu_usage_seconds=2.5, cpu_user_seconds=150 / hz, cpu_system_seconds=50 / hz,
        cfs_periods=40, cfs_throttled_periods=7, cfs_throttled_seconds=0.35,
        memory_usage_bytes=100 * MiB, memory_working_set_bytes=90 * MiB,  # usage - total_inactive_file
        memory_rss_bytes=70 * MiB, memory_cache_bytes=20 * MiB,  # the hierarchical total_* keys
        memory_failcnt=3, oom_kills=2, memory_limit_bytes=256 * MiB,
        cpu_quota_us=50_000, cpu_period_us=100_000, cpu_shares=512, processes=2, threads=9)
    # What stats reads is what stat_files lists (the benchmark's plain reads).
    assert sorted(driver.stat_files("pod/c")) == sorted(str(tmp_path / f) for f in V1_LIMITED)


def test_v1_stats_unlimited_old_kernel_and_missing(tmp_path: Path) -> None:
    driver = v1_fake(tmp_path, pids=False)
    lay_out(tmp_path, {
        "cpuacct/p/cpuacct.usage": "7\n",
        "cpu/p/cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
        "cpu/p/cpu.cfs_quota_us": "-1\n",  # no quota
        "cpu/p/cpu.cfs_period_us": "100000\n",
        "cpu/p/cgroup.procs": "",
        "cpu/p/tasks": "11\n12\n13\n",  # threads without a pids hierarchy
        "memory/p/memory.usage_in_bytes": "1000\n",
        "memory/p/memory.stat": "cache 4096\nrss 8192\ninactive_file 4096\n",  # no total_* keys
        "memory/p/memory.failcnt": "0\n",
        "memory/p/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n",  # before Linux 4.13
        "memory/p/memory.limit_in_bytes": "9223372036854771712\n",  # PAGE_COUNTER_MAX: unlimited
    })
    s = driver.stats("p")
    assert (s.cpu_usage_seconds, s.cpu_user_seconds, s.cpu_shares) == (7e-9, None, None)
    assert (s.cpu_quota_us, s.cpu_period_us, s.memory_limit_bytes) == (0, 100_000, 0)  # cAdvisor: 0 = unlimited
    assert (s.memory_rss_bytes, s.memory_cache_bytes) == (8192, 4096)
    assert s.memory_working_set_bytes == 0  # inactive_file above usage: clamped, never negative
    assert (s.oom_kills, s.processes, s.threads) == (None, 0, 3)
    assert driver.stats("p/never-made") == CgroupStats() and not CgroupStats().found()


V2_LIMITED = {
    "pod/c/cpu.stat": ("usage_usec 2500000\nuser_usec 1500000\nsystem_usec 1000000\nnr_periods 40\n"
                       "nr_throttled 7\nthrottled_usec 350000\nnr_bursts 0\nburst_usec 0\n"),
    "pod/c/cpu.max": "50000 100000\n",
    "pod/c/cpu.weight": f"{cpu_weight(1000)}\n",
    "pod/c/memory.current": f"{100 * MiB}\n",
    "pod/c/memory.stat": f"anon {70 * MiB}\nfile {20 * MiB}\ninactive_file {10 * MiB}\nactive_file 0\n",
    "pod/c/memory.events": "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
    "pod/c/memory.max": f"{256 * MiB}\n",
    "pod/c/cgroup.procs": "101\n102\n",
    "pod/c/pids.current": "9\n",
}


def test_v2_stats_from_a_fake_hierarchy(tmp_path: Path) -> None:
    driver = V2Driver(tmp_path)
    lay_out(tmp_path, V2_LIMITED)
    assert driver.stats("pod/c") == CgroupStats(
        cpu_usage_seconds=2.5, cpu_user_seconds=1.5, cpu_system_seconds=1.0,
        cfs_periods=40, cfs_throttled_periods=7, cfs_throttled_seconds=0.35,
        memory_usage_bytes=100 * MiB, memory_working_set_bytes=90 * MiB,
        memory_rss_bytes=70 * MiB, memory_cache_bytes=20 * MiB,
        memory_failcnt=0,  # v2 has no failcnt; cAdvisor reports 0
        oom_kills=1, memory_limit_bytes=256 * MiB,
        cpu_quota_us=50_000, cpu_period_us=100_000, cpu_shares=998,  # weight 39 mapped back as cAdvisor does
        processes=2, threads=9)
    assert sorted(driver.stat_files("pod/c")) == sorted(str(tmp_path / f) for f in V2_LIMITED)


def test_v2_stats_unlimited_and_without_controllers(tmp_path: Path) -> None:
    driver = V2Driver(tmp_path)
    lay_out(tmp_path, {
        "p/cpu.stat": "usage_usec 10\nuser_usec 6\nsystem_usec 4\n",
        "p/cpu.max": "max 100000\n",
        "p/memory.current": "1000\n",
        "p/memory.stat": "anon 0\nfile 4096\ninactive_file 4096\n",
        "p/memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        "p/memory.max": "max\n",
        "p/cgroup.procs": "7\n",
        "p/cgroup.threads": "7\n8\n9\n",  # no pids controller here
        # Controllers not enabled for this one: only cpu.stat's usage lines exist.
        "bare/cpu.stat": "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n",
        "bare/cgroup.procs": "",
        "bare/cgroup.threads": "",
    })
    s = driver.stats("p")
    assert (s.cpu_quota_us, s.cpu_period_us, s.cpu_shares, s.memory_limit_bytes) == (0, 100_000, None, 0)
    assert (s.memory_working_set_bytes, s.memory_failcnt, s.oom_kills, s.processes, s.threads) == (0, 0, 0, 1, 3)
    assert s.cfs_periods is None and s.cpu_usage_seconds == 1e-5
    bare = driver.stats("bare")
    assert (bare.cpu_usage_seconds, bare.cpu_user_seconds, bare.cpu_system_seconds) == (3.0, 2.0, 1.0)
    assert (bare.memory_usage_bytes, bare.memory_working_set_bytes, bare.memory_failcnt, bare.oom_kills,
            bare.memory_limit_bytes, bare.cpu_quota_us, bare.cpu_shares) == (None,) * 7
    assert driver.stats("gone") == CgroupStats()


def test_cpu_weight_maps_back_to_shares_as_cadvisor() -> None:
    assert cpu_weight_to_shares(1) == 2
    assert cpu_weight_to_shares(10_000) == 262_144
    assert cpu_weight_to_shares(100) == 2597  # systemd's default weight
    for bad in (0, 10_001):
        with pytest.raises(ValueError, match="cpu.weight"):
            cpu_weight_to_shares(bad)


# ---------------------------------------------------------------- the collector over a fake cgroupfs

NOW = 1_700_000_000.0
MACHINE = MachineInfo(cpu_cores=2, memory_bytes=8 << 30, machine_id="m-id", system_uuid="", boot_id="b-id")


def fake_state(cfg_overrides: dict[str, object], cgroup: str, status: ContainerStatus = ContainerStatus.RUNNING,
               started_at: str | None = "2023-11-14T22:13:20Z", pid: int | None = None) -> ContainerState:
    cfg = make_config(["sleep", "1"], **cfg_overrides)
    return ContainerState(config=cfg, status=status, pid=pid, started_at=started_at, finished_at=None,
                          exit_code=None, reason=None, message=None, log_path="/nonexistent", cgroup=cgroup)


@pytest.fixture
def fake_node(tmp_path: Path) -> tuple[V2Driver, list[ContainerState]]:
    """Two pods on a fake v2 tree: pod a with a capped and an uncapped container (and an exited
    one, and one whose cgroup is already gone), pod b with one container."""
    a = {"pod_uid": "aaaa", "pod_name": "web-a", "pod_namespace": "ns1"}
    b = {"pod_uid": "bbbb", "pod_name": "db-b", "pod_namespace": "ns2"}
    states = [
        fake_state({**a, "id": "c1", "name": "capped", "image": "img:1"}, "node/podaaaa/c1"),
        fake_state({**a, "id": "c2", "name": "free", "image": "img:2"}, "node/podaaaa/c2",
                   started_at="2023-11-14T22:10:00Z"),
        fake_state({**a, "id": "c3", "name": "done", "image": "img:3"}, "node/podaaaa/c3",
                   status=ContainerStatus.EXITED),
        fake_state({**a, "id": "c4", "name": "gone", "image": "img:4"}, "node/podaaaa/c4"),
        fake_state({**b, "id": "c5", "name": "db", "image": "img:5"}, "node/podbbbb/c5"),
    ]
    files = {}
    for d in ("node/podaaaa", "node/podaaaa/c1", "node/podaaaa/c2", "node/podaaaa/c3", "node/podbbbb",
              "node/podbbbb/c5"):
        files.update({f"{d}/{k.removeprefix('pod/c/')}": v for k, v in V2_LIMITED.items()})
        files[f"{d}/cpu.max"] = "max 100000\n"
    files["node/podaaaa/c1/cpu.max"] = "50000 100000\n"
    files["node/podaaaa/c2/memory.current"] = f"{40 * MiB}\n"
    lay_out(tmp_path, files)
    return V2Driver(tmp_path), states


def fake_collector(driver: CgroupDriver, states: list[ContainerState], **kw: object) -> CollectorRegistry:
    net = {"aaaa": {"rx_bytes": 1000, "tx_bytes": 2000, "rx_packets": 10, "tx_packets": 20, "rx_errors": 1,
                    "tx_errors": 2, "rx_dropped": 3, "tx_dropped": 4}}
    args: dict[str, object] = {"network": net.get, "supervisors": lambda: 4, "machine": MACHINE, "clock": lambda: NOW}
    args.update(kw)
    registry = CollectorRegistry()
    registry.register(ContainerCollector(lambda: states, driver, lambda uid: f"node/pod{uid}", **args))  # type: ignore[arg-type]
    return registry


def test_collector_labels_series_and_conditions(fake_node: tuple[V2Driver, list[ContainerState]]) -> None:
    driver, states = fake_node
    text, got = scrape(fake_collector(driver, states))
    c1, c2, _c3, _c4, c5 = states

    # kubelet's labels; the pod cgroups as container="" with their pod and namespace.
    want = [kubelet_labels(c1), kubelet_labels(c2), kubelet_labels(c5),
            pod_labels(c1, "node/podaaaa"), pod_labels(c5, "node/podbbbb")]
    assert kubelet_labels(c1) == {"container": "capped", "pod": "web-a", "namespace": "ns1", "image": "img:1",
                                  "name": "c1", "id": "/node/podaaaa/c1"}
    assert set(series(got, "container_cpu_usage_seconds_total")) == {
        frozenset({**lab, "cpu": "total"}.items()) for lab in want}
    for name in ("container_memory_working_set_bytes", "container_memory_usage_bytes", "container_memory_rss",
                 "container_memory_cache", "container_memory_failcnt", "container_oom_events_total",
                 "container_spec_memory_limit_bytes", "container_spec_cpu_period", "container_spec_cpu_shares",
                 "container_processes", "container_threads", "container_last_seen",
                 "container_cpu_user_seconds_total", "container_cpu_system_seconds_total",
                 "container_start_time_seconds"):
        assert set(series(got, name)) == {frozenset(lab.items()) for lab in want}, name
        assert all(set(dict(lab)) == set(KUBELET_LABELS) for lab in series(got, name))

    assert value(got, "container_cpu_usage_seconds_total", {**kubelet_labels(c1), "cpu": "total"}) == 2.5
    assert value(got, "container_memory_working_set_bytes", kubelet_labels(c2)) == 30 * MiB  # 40 - 10 inactive
    assert value(got, "container_memory_working_set_bytes", kubelet_labels(c1)) == 90 * MiB
    assert value(got, "container_oom_events_total", kubelet_labels(c5)) == 1
    assert value(got, "container_last_seen", kubelet_labels(c5)) == NOW
    assert value(got, "container_start_time_seconds", kubelet_labels(c1)) == 1_700_000_000
    # A pod's start: its earliest container's.
    assert value(got, "container_start_time_seconds", pod_labels(c1, "node/podaaaa")) == 1_699_999_800

    # CFS series and the quota only where there is a quota (cAdvisor's condition).
    for name, expected in (("container_cpu_cfs_periods_total", 40), ("container_cpu_cfs_throttled_periods_total", 7),
                           ("container_cpu_cfs_throttled_seconds_total", 0.35), ("container_spec_cpu_quota", 50_000)):
        assert series(got, name) == {frozenset(kubelet_labels(c1).items()): expected}, name

    # Network once per pod, on the pod series, with the interface; pod b has none.
    pod_a = pod_labels(c1, "node/podaaaa")
    for name, expected in (("container_network_receive_bytes_total", 1000),
                           ("container_network_transmit_bytes_total", 2000),
                           ("container_network_receive_packets_total", 10),
                           ("container_network_transmit_packets_total", 20),
                           ("container_network_receive_errors_total", 1),
                           ("container_network_transmit_errors_total", 2),
                           ("container_network_receive_packets_dropped_total", 3),
                           ("container_network_transmit_packets_dropped_total", 4)):
        assert series(got, name) == {frozenset({**pod_a, "interface": "eth0"}.items()): expected}, name

    # The agent's gauges, the machine, no error. c4 (cgroup gone) was listed running: counted,
    # but has no series; c3 exited: neither.
    assert value(got, "orch_agent_running_pods", {}) == 2
    assert value(got, "orch_agent_running_containers", {}) == 4
    assert value(got, "orch_agent_supervised_processes", {}) == 4
    machine = {"machine_id": "m-id", "system_uuid": "", "boot_id": "b-id"}
    assert value(got, "machine_cpu_cores", machine) == 2
    assert value(got, "machine_memory_bytes", machine) == 8 << 30
    assert value(got, "container_scrape_error", {}) == 0
    assert "# TYPE container_memory_failcnt untyped" in text  # cAdvisor's name; see the module docstring
    assert "# TYPE container_cpu_usage_seconds_total counter" in text
    promtool_check(text)


def test_collector_survives_failing_sources(fake_node: tuple[V2Driver, list[ContainerState]]) -> None:
    driver, states = fake_node

    def broken_listing() -> list[ContainerState]:
        raise OSError(5, "state dir unreadable")

    def broken_network(uid: str) -> dict[str, int]:
        raise OSError(2, "no such namespace")

    registry = CollectorRegistry()
    registry.register(ContainerCollector(broken_listing, driver, lambda uid: f"node/pod{uid}", machine=MACHINE))
    text, got = scrape(registry)
    assert value(got, "container_scrape_error", {}) == 1
    assert not series(got, "container_cpu_usage_seconds_total")
    assert value(got, "orch_agent_running_containers", {}) == 0
    assert not series(got, "orch_agent_supervised_processes")  # no counter given: no sample
    promtool_check(text)

    _, got = scrape(fake_collector(driver, states, network=broken_network))
    assert value(got, "container_scrape_error", {}) == 0
    assert not series(got, "container_network_receive_bytes_total")
    assert series(got, "container_memory_working_set_bytes")


def test_two_collectors_of_the_same_names_are_refused(fake_node: tuple[V2Driver, list[ContainerState]]) -> None:
    driver, states = fake_node
    registry = fake_collector(driver, states)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(ContainerCollector(lambda: states, driver, lambda uid: uid, machine=MACHINE))


def test_agent_metrics_names_and_exposition() -> None:
    m = AgentMetrics()
    m.container_starts.inc()
    m.container_start_failures.labels(reason="StartError").inc()
    m.container_start_duration.observe(0.2)
    m.reconcile_duration.observe(0.003)
    text, got = scrape(m.registry)
    assert value(got, "orch_agent_container_starts_total", {}) == 1
    assert value(got, "orch_agent_container_start_failures_total", {"reason": "StartError"}) == 1
    assert value(got, "orch_agent_container_start_duration_seconds_bucket", {"le": "0.25"}) == 1
    assert value(got, "orch_agent_container_start_duration_seconds_bucket", {"le": "0.1"}) == 0
    assert value(got, "orch_agent_reconcile_duration_seconds_count", {}) == 1
    assert "process_resident_memory_bytes" in text
    assert AgentMetrics().registry is not m.registry  # no global registry: agents in one process don't collide
    promtool_check(text)


def test_proc_net_dev_of_this_process() -> None:
    counters = proc_net_dev(os.getpid())
    assert "lo" in counters
    assert set(counters["lo"]) == {"rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors",
                                   "rx_dropped", "tx_dropped"}
    with pytest.raises(OSError):
        proc_net_dev(2**22 + 12345)  # above pid_max: never a process


# ---------------------------------------------------------------- real containers

WRITE_50MIB = (
    "b = bytearray(50 * 1024 * 1024)\n"
    "for i in range(0, len(b), 4096):\n"
    "    b[i] = 1\n"  # touch every page: bytearray(n) alone maps untouched zero pages
    "print('ready', flush=True)\n"
    "import time; time.sleep(600)\n"
)
FOUR_THREADS = (
    "import threading, time\n"
    "for _ in range(4):\n"
    "    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)
SPIN = ["python3", "-c", "print('ready', flush=True)\nwhile True: pass"]
SPIN_FOUR = ["python3", "-c", "import os\nprint('ready', flush=True)\nos.fork()\nos.fork()\nwhile True: pass"]


def wait_ready(st: ContainerState) -> None:
    wait_for(lambda: "ready" in container_output(st.log_path), 20, what=f"container {st.config.name} to be ready")


def registry_for(rt: Runtime, **kw: object) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ContainerCollector(rt.list, rt.driver, rt.pod_cgroup, **kw))  # type: ignore[arg-type]
    return registry


def _keyed(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def working_set_from_files(driver: CgroupDriver, cgroup: str) -> int:
    """Working set straight from the cgroup files, parsed here and not by the driver."""
    d = Path(driver.paths(cgroup)["memory"])
    if isinstance(driver, V2Driver):
        return int((d / "memory.current").read_text()) - _keyed(d / "memory.stat")["inactive_file"]
    return int((d / "memory.usage_in_bytes").read_text()) - _keyed(d / "memory.stat")["total_inactive_file"]


@requires_root
def test_memory_processes_and_threads_of_real_containers(runtime: Runtime) -> None:
    hog = runtime.start(make_config(["python3", "-c", WRITE_50MIB], name="hog", memory_limit_bytes=256 * MiB))
    threads = runtime.start(make_config(["python3", "-c", FOUR_THREADS], name="threads"))
    wait_ready(hog)
    wait_ready(threads)
    registry = registry_for(runtime, supervisors=lambda: count_supervisors(runtime.state_dir))
    _, got = scrape(registry)
    on_disk = working_set_from_files(runtime.driver, hog.cgroup)

    labels = kubelet_labels(hog)
    assert labels["id"].startswith(f"/{runtime.cgroup_root}/pod{hog.config.pod_uid}/")
    working_set = value(got, "container_memory_working_set_bytes", labels)
    assert working_set >= 50 * MiB
    assert abs(working_set - on_disk) <= 0.1 * on_disk, (working_set, on_disk)
    assert value(got, "container_memory_rss", labels) >= 50 * MiB
    assert value(got, "container_memory_usage_bytes", labels) >= working_set
    assert value(got, "container_spec_memory_limit_bytes", labels) == 256 * MiB
    assert value(got, "container_oom_events_total", labels) == 0
    assert value(got, "container_memory_failcnt", labels) == 0
    assert value(got, "container_processes", labels) == 1
    # The pod's cgroup holds the container: at least its working set; kubelet's pod labels.
    pod = pod_labels(hog, runtime.pod_cgroup(hog.config.pod_uid))
    assert value(got, "container_memory_working_set_bytes", pod) >= working_set
    assert value(got, "container_spec_memory_limit_bytes", pod) == 0  # no pod-level limit: unlimited

    tl = kubelet_labels(threads)
    assert (value(got, "container_processes", tl), value(got, "container_threads", tl)) == (1, 5)
    assert value(got, "container_spec_memory_limit_bytes", tl) == 0
    started = value(got, "container_start_time_seconds", tl)
    assert time.time() - 120 < started <= time.time()
    assert value(got, "orch_agent_running_containers", {}) == 2
    assert value(got, "orch_agent_running_pods", {}) == 2
    supervisors = value(got, "orch_agent_supervised_processes", {})
    assert 2 <= supervisors <= 3  # one monitor per container, and the fork server if it runs

    # A removed container is no longer reported, nor its supervisor.
    runtime.remove(threads.config.id)
    _, got = scrape(registry)
    assert not [lab for lab in series(got, "container_threads") if ("name", threads.config.id) in lab]
    assert value(got, "orch_agent_running_containers", {}) == 1
    assert value(got, "orch_agent_supervised_processes", {}) == supervisors - 1


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc/<pid>/stat: a source independent of cgroups."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    rest = data[data.rfind(b")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15


@dataclass
class Window:
    first: Scrape
    second: Scrape
    elapsed: float  # from the start of the first scrape to the end of the second
    in_scrapes: float  # of which inside the two scrapes
    by_proc: float  # CPU seconds the process accounted between the scrapes (/proc)


def cpu_window(registry: CollectorRegistry, pid: int, seconds: float) -> Window:
    """Two scrapes ``seconds`` apart, and what /proc says ``pid`` used between them.

    The scrapes read the cgroup somewhere inside themselves, so the cgroup's delta covers
    the /proc delta plus at most the time spent in the scrapes (long on a loaded machine).
    """
    t0 = time.monotonic()
    _, first = scrape(registry)
    t1 = time.monotonic()
    proc0 = proc_cpu_seconds(pid)
    time.sleep(seconds)  # CPU time has to accumulate; nothing to wait on instead
    proc1 = proc_cpu_seconds(pid)
    t2 = time.monotonic()
    _, second = scrape(registry)
    t3 = time.monotonic()
    return Window(first, second, t3 - t0, (t1 - t0) + (t3 - t2), proc1 - proc0)


def delta(w: Window, name: str, labels: dict[str, str]) -> float:
    return value(w.second, name, labels) - value(w.first, name, labels)


@requires_root
def test_cpu_usage_and_throttling_of_real_containers(runtime: Runtime) -> None:
    # This test's own top cgroup gets the highest CPU weight: on a busy shared machine, fair
    # sharing against other load could otherwise keep the capped container below its quota
    # (never throttled) and the spinner far below one CPU. The quota still caps what is used.
    runtime.driver.create(runtime.cgroup_root.split("/")[0], Limits(cpu_request_millis=256_000))
    registry = registry_for(runtime)
    # Four spinning processes under a 500m limit want every CPU and may use half of one: they
    # use their quota up early in each period. Measured alone (a spinner of this test beside
    # them would take their share of this test's cgroup and could keep them under the quota).
    capped = runtime.start(make_config(SPIN_FOUR, name="capped", cpu_limit_millis=500))
    wait_ready(capped)
    assert capped.pid is not None
    w = cpu_window(registry, capped.pid, 0.8)
    elapsed = w.elapsed

    cl = kubelet_labels(capped)
    capped_spun = delta(w, "container_cpu_usage_seconds_total", {**cl, "cpu": "total"})
    assert 0.1 * elapsed <= capped_spun <= 0.5 * elapsed + 0.06, (capped_spun, elapsed)  # the quota, ± a period
    assert value(w.second, "container_spec_cpu_quota", cl) == 50_000
    assert value(w.second, "container_spec_cpu_period", cl) == 100_000
    periods = delta(w, "container_cpu_cfs_periods_total", cl)
    assert 4 <= periods <= 12 * elapsed  # one per 100 ms period while runnable
    assert 1 <= delta(w, "container_cpu_cfs_throttled_periods_total", cl) <= periods
    assert 0 < delta(w, "container_cpu_cfs_throttled_seconds_total", cl)
    runtime.remove(capped.config.id)

    spin = runtime.start(make_config(SPIN, name="spin"))
    wait_ready(spin)
    assert spin.pid is not None
    w = cpu_window(registry, spin.pid, 0.8)
    elapsed = w.elapsed
    # In seconds: what the spinning process itself accounts in /proc, plus at most what it ran
    # while the scrapes were reading (ticks: ±10 ms each end); never more than one CPU.
    sl = kubelet_labels(spin)
    spun = delta(w, "container_cpu_usage_seconds_total", {**sl, "cpu": "total"})
    assert w.by_proc - 0.03 <= spun <= w.by_proc + w.in_scrapes + 0.03, (spun, w)
    # About the elapsed time (loose below: the machine is shared and the spinner may wait for a CPU).
    assert 0.3 * elapsed <= spun <= 1.02 * elapsed, (spun, elapsed)
    user = delta(w, "container_cpu_user_seconds_total", sl)
    system = delta(w, "container_cpu_system_seconds_total", sl)
    assert abs(user + system - spun) <= 0.1 * spun + 0.05, (user, system, spun)  # ticks vs ns
    # No quota, no CFS series (cAdvisor's condition); the period is there all the same.
    assert frozenset(sl.items()) not in series(w.second, "container_spec_cpu_quota")
    assert frozenset(sl.items()) not in series(w.second, "container_cpu_cfs_periods_total")
    assert value(w.second, "container_spec_cpu_period", sl) == 100_000


@requires_root
def test_http_endpoint_serves_the_text_format(runtime: Runtime) -> None:
    st = runtime.start(make_config(["sleep", "600"], name="sleeper", cpu_limit_millis=250,
                                   memory_limit_bytes=32 * MiB))
    metrics = AgentMetrics()
    metrics.registry.register(ContainerCollector(runtime.list, runtime.driver, runtime.pod_cgroup,
                                                 supervisors=lambda: count_supervisors(runtime.state_dir)))
    metrics.container_starts.inc()
    server, thread = serve_metrics(metrics.registry, "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = resp.read().decode()
        got = samples(text)
        assert value(got, "container_spec_cpu_quota", kubelet_labels(st)) == 25_000
        assert value(got, "container_spec_memory_limit_bytes", kubelet_labels(st)) == 32 * MiB
        assert value(got, "orch_agent_container_starts_total", {}) == 1
        # Asked as Prometheus asks (OpenMetrics first, gzip): the text format, as kubelet answers, gzipped.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert resp.headers["Content-Encoding"] == "gzip"
            again = samples(gzip.decompress(resp.read()).decode())
        assert value(again, "container_spec_cpu_quota", kubelet_labels(st)) == 25_000
        promtool_check(text)
    finally:
        stop_metrics(server, thread)
    assert not thread.is_alive()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_serve_metrics_on_ipv6_loopback() -> None:
    try:
        server, thread = serve_metrics(AgentMetrics().registry, "::1", 0)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.server_address[1]}/metrics", timeout=10) as resp:
            assert b"orch_agent_container_starts_total 0.0" in resp.read()
    finally:
        stop_metrics(server, thread)


# ---------------------------------------------------------------- a pod with a real network

UDP_TO_GATEWAY = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(50):\n"
    "    s.sendto(b'x' * 1000, (sys.argv[1], 9))\n"  # discard port on the bridge, in the test's node namespace
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def node_netns(tmp_path: Path) -> Iterator[Path]:
    """A network namespace standing in for the node (the bridge goes there, never into the host's)."""
    from agent.network import netns

    path = netns.create(tmp_path / "ns-node")
    try:
        yield path
    finally:
        netns.remove(path)


@requires_root
def test_network_counters_of_a_real_pod(runtime: Runtime, node_netns: Path, tmp_path: Path) -> None:
    from agent.network import PodNetwork

    pn = PodNetwork("10.251.7.0/24", tmp_path / "pn", bridge="orchm0", node_netns=node_netns)
    cfg = make_config(["python3", "-c", UDP_TO_GATEWAY, "10.251.7.1"], name="sender")
    pod_ns = runtime.ensure_sandbox(cfg.pod_uid, cfg.hostname)
    try:
        pn.ensure_bridge(forwarding=False)
        pn.attach(cfg.pod_uid, pod_ns)
        st = runtime.start(cfg)
        wait_ready(st)

        def netlink_counters(uid: str) -> dict[str, int] | None:
            path = runtime.sandbox_netns_path(uid)
            return None if path is None else pn.counters(uid, path)

        from_netlink = registry_for(runtime, network=netlink_counters)
        _, got = scrape(from_netlink)
        _, got_proc = scrape(registry_for(runtime))  # default: /proc/<pid>/net/dev, as cAdvisor
    finally:
        pn.detach(cfg.pod_uid, pod_ns)
        pn.remove_bridge()
    labels = {**pod_labels(st, runtime.pod_cgroup(cfg.pod_uid)), "interface": "eth0"}
    for source in (got, got_proc):
        assert value(source, "container_network_transmit_packets_total", labels) >= 50
        assert value(source, "container_network_transmit_bytes_total", labels) >= 50 * 1028  # + UDP/IP headers
        assert value(source, "container_network_receive_packets_total", labels) >= 1  # ARP reply at least
        assert value(source, "container_network_transmit_errors_total", labels) == 0
    # Both sources saw the same traffic (nothing else is sent meanwhile but stray IPv6 chatter).
    tx = [value(s, "container_network_transmit_packets_total", labels) for s in (got, got_proc)]
    assert abs(tx[0] - tx[1]) <= 5, tx
    # Only on the pod series: a container's own series carries no network.
    assert not [lab for lab in series(got, "container_network_transmit_bytes_total") if ("container", "sender") in lab]
