"""``orchctl top``'s pure parts: rates from two Stats readings, and kubectl top's tables."""

from __future__ import annotations

from apimachinery.pb import agent_pb2 as apb
from apimachinery.pb import cluster_pb2 as cpb
from cli import printers
from scheduler.proxy import top_entries


def reading(t: float, node_cpu: float, *containers: tuple[str, str, float, int]) -> apb.StatsReply:
    return apb.StatsReply(node="n1", timestamp=t, node_cpu_usage_seconds=node_cpu,
                          node_memory_working_set_bytes=7 << 20, containers=[apb.ContainerStats(namespace="a", pod=pod, pod_uid=f"uid-{pod}", container=c,
                                                         cpu_usage_seconds=cpu, memory_working_set_bytes=mem)
                                      for pod, c, cpu, mem in containers])


def test_rates_between_two_readings_and_new_or_restarted_containers_left_out() -> None:
    before = reading(100.0, 50.0, ("web", "app", 10.0, 0), ("web", "restarted", 9.0, 0))
    after = reading(102.0, 51.5, ("web", "app", 11.0, 64 << 20), ("web", "restarted", 0.2, 1 << 20),
                    ("new", "app", 0.5, 1 << 20))
    rows = top_entries("pods", "", before, after)
    assert [(r.name, r.container, r.cpu_millis, r.memory_bytes) for r in rows] == [("web", "app", 500, 64 << 20)]
    assert top_entries("pods", "other", before, after) == []
    (node,) = top_entries("nodes", "", before, after)
    assert (node.name, node.cpu_millis, node.memory_bytes) == ("n1", 750, 7 << 20)
    assert top_entries("nodes", "", after, before) == []  # readings out of order: no rate


def test_kubectl_top_tables() -> None:
    entries = [cpb.TopEntry(namespace="a", name="web", container="app", cpu_millis=250, memory_bytes=64 << 20),
               cpb.TopEntry(namespace="a", name="web", container="side", cpu_millis=5, memory_bytes=3 << 20)]
    assert printers.top_pods_table(entries, all_namespaces=False, containers=False).splitlines() == [
        "NAME   CPU(cores)   MEMORY(bytes)", "web    255m         67Mi"]
    lines = printers.top_pods_table(entries, all_namespaces=True, containers=True).splitlines()
    assert lines[0].split() == ["NAMESPACE", "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    assert lines[1].split() == ["a", "web", "app", "250m", "64Mi"]
    node = {"status": {"allocatable": {"cpu": "2", "memory": "4Gi"}}}
    nodes = printers.top_nodes_table([cpb.TopEntry(name="n1", cpu_millis=500, memory_bytes=1 << 30),
                                      cpb.TopEntry(name="n2", cpu_millis=1, memory_bytes=1)], {"n1": node})
    assert [line.split() for line in nodes.splitlines()] == [
        ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"],
        ["n1", "500m", "25%", "1024Mi", "25%"],
        ["n2", "1m", "<unknown>", "0Mi", "<unknown>"]]
