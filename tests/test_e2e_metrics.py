"""Issue 6 end to end: a real Prometheus (Debian's ``prometheus``, started here on loopback)
configured with nothing but a lab scheduler's HTTP service-discovery URL finds every agent
and scheduler, scrapes them, and its query API answers with cAdvisor's and
kube-scheduler's metrics: a pod's working set as its cgroup has it, CPU near one core
for a pod that spins and near its limit for one capped at 500m, unschedulable attempts
that rise; a node that goes away leaves its targets, and comes back without anyone
touching Prometheus' configuration.

Prometheus scrapes the agents on the lab network (the host reaches the nodes' addresses
through the lab's veth) and the schedulers on loopback; it is stopped by its pid and its
data dir removed when the module ends, also on failure.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LabCluster, needs_root, running_lab
from tests.helpers import wait_for

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

pytestmark = [needs_root, pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                                             reason="needs Debian's prometheus package (dev.sh installs it)")]

SPIN = ["python3", "-c", "while True: pass"]
# Touches every page of 96 MiB, then sleeps: a working set that stays put.
HOG = ["python3", "-c", "import time\nb = bytearray(96 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
                        "time.sleep(3600)"]
SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"{self.url}{path}{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query", query=expr)["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/targets", state="active")["activeTargets"])


@pytest.fixture(scope="module")
def mlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    with running_lab(tmp_path_factory.mktemp("orch-mlab"), 3, "mlab-logs", node_cpu="4", node_memory="8Gi") as lab:
        yield lab


@pytest.fixture(scope="module")
def prometheus(mlab: LabCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    assert PROMETHEUS is not None
    d = tmp_path_factory.mktemp("prometheus")
    sd_url = mlab.info["sd_urls"][0]
    (d / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "orch", "http_sd_configs": [{"url": sd_url, "refresh_interval": "1s"}]}],
    }))
    port = free_port()
    log = open(d / "prometheus.log", "wb")  # noqa: SIM115 - closed in the finally
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}",
                             f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(d / 'prometheus.log').read_text()[-2000:]}")
            try:
                prom.get("/api/v1/status/buildinfo")
                return True
            except OSError:
                return False

        wait_for(ready, timeout=30, what="prometheus to answer")
        yield prom
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ns(mlab: LabCluster) -> Iterator[str]:
    name = f"m-{secrets.token_hex(4)}"
    yield name
    mlab.empty_namespace(name)


def pod(name: str, ns: str, command: list[str], node: str = "lab-node-1", **resources: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "host", "command": command}
    if resources:
        container["resources"] = resources
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [container]}}


def running(lab: LabCluster, ns: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        with lab.client() as c:
            p = c.get("Pod", name, ns)
        return p if p.get("status", {}).get("phase") == "Running" else None

    return wait_for(check, timeout=60, what=f"{ns}/{name} Running")


def agent_targets(prom: Prometheus, health: str = "up") -> set[str]:
    return {t["labels"].get("node", "") for t in prom.targets()
            if t["labels"].get("role") == "agent" and t["health"] == health}


def test_prometheus_finds_every_agent_and_scheduler_through_the_schedulers_sd(
        mlab: LabCluster, prometheus: Prometheus) -> None:
    nodes = {a["node"] for a in mlab.info["agents"]}
    wait_for(lambda: agent_targets(prometheus) == nodes, timeout=60, what="every agent scraped and up")
    schedulers = [t for t in prometheus.targets() if t["labels"].get("role") == "scheduler"]
    assert len(schedulers) == len(mlab.info["schedulers"])
    wait_for(lambda: all(t["health"] == "up" for t in prometheus.targets() if t["labels"].get("role") == "scheduler"),
             timeout=30, what="the scheduler scraped")
    # Each agent target is the node's own address on the lab network.
    by_node = {t["labels"]["node"]: t["scrapeUrl"] for t in prometheus.targets() if t["labels"].get("role") == "agent"}
    for a in mlab.info["agents"]:
        assert by_node[a["node"]] == f"http://{a['metrics']}/metrics"


def test_every_metrics_endpoint_passes_promtool(mlab: LabCluster) -> None:
    assert PROMTOOL is not None
    endpoints = [a["metrics"] for a in mlab.info["agents"]] + [s["metrics"] for s in mlab.info["schedulers"]]
    for endpoint in endpoints:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://{endpoint}/metrics", timeout=10) as resp:
            text = resp.read()
        done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert done.returncode == 0, (endpoint, done.stdout.decode()[-2000:], done.stderr.decode()[-2000:])


def cgroup_working_set(pid: int) -> int:
    """What the container's memory cgroup says, by cAdvisor's rule: usage - inactive_file."""
    line = next(ln for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                if re.match(r"^\d+:(memory|):", ln))
    path = line.split(":", 2)[2]
    v1 = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    if v1.is_dir():
        usage = int((v1 / "memory.usage_in_bytes").read_text())
        stat = dict(ln.split() for ln in (v1 / "memory.stat").read_text().splitlines())
        return max(0, usage - int(stat["total_inactive_file"]))
    v2 = Path("/sys/fs/cgroup") / path.lstrip("/")
    usage = int((v2 / "memory.current").read_text())
    stat = dict(ln.split() for ln in (v2 / "memory.stat").read_text().splitlines())
    return max(0, usage - int(stat["inactive_file"]))


def test_working_set_is_what_the_cgroup_says(mlab: LabCluster, prometheus: Prometheus, ns: str) -> None:
    with mlab.client() as c:
        c.apply([pod("hog", ns, HOG, limits={"memory": "256Mi"})])
    p = running(mlab, ns, "hog")
    cid = p["status"]["containerStatuses"][0]["containerID"].split("://")[-1]
    pid = mlab.container_pid("lab-node-1", cid)
    expr = f'container_memory_working_set_bytes{{namespace="{ns}",pod="hog",container="main"}}'

    def settled() -> float | None:
        seen = prometheus.value(expr)
        return seen if seen is not None and seen > 90 * 2**20 else None  # the 96 MiB are touched

    wait_for(settled, timeout=60, interval=0.5, what="the hog's working set in Prometheus")
    time.sleep(2)  # a scrape or two after the allocation: the figure is steady
    seen, actual = prometheus.value(expr), cgroup_working_set(pid)
    assert seen is not None
    assert abs(seen - actual) <= 0.10 * actual, (seen, actual)
    limit = prometheus.value(f'container_spec_memory_limit_bytes{{namespace="{ns}",pod="hog",container="main"}}')
    assert limit == 256 * 2**20


def test_cpu_rate_is_one_core_for_a_spinning_pod_and_its_limit_for_a_capped_one(
        mlab: LabCluster, prometheus: Prometheus, ns: str) -> None:
    with mlab.client() as c:
        c.apply([pod("spin", ns, SPIN, node="lab-node-2"),
                 pod("capped", ns, SPIN, node="lab-node-3", limits={"cpu": "500m"})])
    running(mlab, ns, "spin")
    running(mlab, ns, "capped")

    def rate(name: str) -> float | None:
        return prometheus.value(
            f'rate(container_cpu_usage_seconds_total{{namespace="{ns}",pod="{name}",container="main"}}[10s])')

    def both_measured() -> tuple[float, float] | None:
        spin, capped = rate("spin"), rate("capped")
        return (spin, capped) if spin is not None and capped is not None else None

    wait_for(both_measured, timeout=60, interval=1, what="CPU rates of both pods")
    time.sleep(10)  # a whole rate window of the pods spinning
    spin, capped = both_measured() or (0.0, 0.0)
    # One busy thread: at most one core, and most of one on a 2-core machine that runs the
    # test suite beside it. The capped one: its quota, 0.5 core, and not much less.
    assert 0.6 <= spin <= 1.1, spin
    assert 0.3 <= capped <= 0.55, capped
    throttled = prometheus.value(
        f'rate(container_cpu_cfs_throttled_periods_total{{namespace="{ns}",pod="capped",container="main"}}[10s])')
    assert throttled is not None and throttled > 0  # the quota is what holds it back


def test_unschedulable_attempts_rise_for_a_pod_that_fits_nowhere(
        mlab: LabCluster, prometheus: Prometheus, ns: str) -> None:
    expr = 'sum(scheduler_schedule_attempts_total{result="unschedulable",profile="default-scheduler"})'
    before = prometheus.value(expr) or 0.0
    with mlab.client() as c:
        c.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge", "namespace": ns},
                  "spec": {"containers": [{"name": "main", "image": "host", "command": SLEEP,
                                           "resources": {"requests": {"memory": "1000Gi"}}}]}}])
    wait_for(lambda: (prometheus.value(expr) or 0.0) > before, timeout=60, interval=1,
             what="unschedulable attempts to rise in Prometheus")


def test_a_node_that_goes_leaves_the_targets_and_comes_back_without_touching_prometheus(
        mlab: LabCluster, prometheus: Prometheus) -> None:
    from cli import lab as labmod

    nodes = {a["node"] for a in mlab.info["agents"]}
    wait_for(lambda: agent_targets(prometheus) == nodes, timeout=60, what="every agent up")
    gone = "lab-node-3"
    agent = next(a for a in labmod.load_state(mlab.dir)["agents"] if a["node"] == gone)  # type: ignore[index]
    labmod.stop(agent)
    with mlab.client() as c:
        c.delete("Node", gone)
    wait_for(lambda: gone not in {t["labels"].get("node") for t in prometheus.targets()}, timeout=60,
             interval=0.5, what=f"{gone} to leave Prometheus' targets")
    labmod.restart(mlab.dir, gone)  # its agent starts again and registers the node anew
    wait_for(lambda: agent_targets(prometheus) == nodes, timeout=90, interval=0.5,
             what=f"{gone} back in Prometheus' targets")


def test_orchctl_top_shows_pods_and_nodes_from_the_agents_numbers(
        mlab: LabCluster, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    with mlab.client() as c:
        c.apply([pod("spin", ns, SPIN, node="lab-node-2"), pod("hog", ns, HOG, node="lab-node-1")])
    running(mlab, ns, "spin")
    running(mlab, ns, "hog")

    def rows() -> dict[str, list[str]] | None:
        capsys.readouterr()
        assert mlab.orchctl("-n", ns, "top", "pods") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["NAME", "CPU(cores)", "MEMORY(bytes)"]
        table = {line.split()[0]: line.split()[1:] for line in lines[1:]}
        if set(table) != {"spin", "hog"} or int(table["hog"][1].removesuffix("Mi")) < 90:
            return None  # the hog still allocating, or a pod without a first reading yet
        return table

    table = wait_for(rows, timeout=60, interval=1, what="both pods in orchctl top")
    assert 600 <= int(table["spin"][0].removesuffix("m")) <= 1100, table  # one busy thread
    assert int(table["hog"][0].removesuffix("m")) < 300, table

    assert mlab.orchctl("top", "nodes") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
    nodes = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(nodes) == {a["node"] for a in mlab.info["agents"]}
    assert int(nodes["lab-node-2"][0].removesuffix("m")) >= 500  # the spinning pod's node
    assert int(nodes["lab-node-1"][2].removesuffix("Mi")) >= 90  # the hog's node
