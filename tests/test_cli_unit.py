"""``orchctl`` without a cluster: printers on realistic objects, manifests, config, arguments.

Everything here runs in-process through the real functions and the real entry
point (``cli.main.main``); nothing needs a scheduler. The end-to-end CLI tests
against a lab live in ``test_e2e.py``.
"""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from apimachinery.errors import ConflictError, ExpiredError
from apimachinery.meta import DEPLOYMENT, NODE, POD
from cli import main as cli_main
from cli import manifests, printers
from cli.config import Config, ConfigError, config_path, load_config, resolve_server, save_config
from cli.main import main

NOW = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)


def ts(seconds_ago: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name: str = "hello", *, phase: str = "Running", statuses: list[dict[str, Any]] | None = None,
        containers: int = 1, age: float = 300, ns: str = "default", **extra_md: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": "u-1", "creationTimestamp": ts(age),
                     "labels": {"app": name}, **extra_md},
        "spec": {"nodeName": "node-1",
                 "containers": [{"name": f"c{i}", "image": "host", "command": ["/bin/sleep", "3600"]}
                                for i in range(containers)]},
        "status": {"phase": phase, "podIP": "10.88.1.5", "hostIP": "192.168.50.2",
                   "startTime": ts(age - 1), "containerStatuses": statuses or []},
    }


def running(name: str = "c0", ready: bool = True, restarts: int = 0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "ready": ready, "restartCount": restarts, "containerID": "orch://abc123",
            "imageID": "", "state": {"running": {"startedAt": ts(200)}}, **extra}


def waiting(reason: str, name: str = "c0", restarts: int = 0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "ready": False, "restartCount": restarts, "state": {"waiting": {"reason": reason}},
            **extra}


def terminated(reason: str | None, exit_code: int, name: str = "c0", **extra: Any) -> dict[str, Any]:
    term: dict[str, Any] = {"exitCode": exit_code, "startedAt": ts(100), "finishedAt": ts(50)}
    if reason:
        term["reason"] = reason
    return {"name": name, "ready": False, "restartCount": 0, "state": {"terminated": term}, **extra}


def deployment(name: str = "web", replicas: int = 3, ready: int = 3, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": ts(7200), "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "main", "image": "nginx:1.25",
                                                       "resources": {"requests": {"cpu": "100m"}}}]}}},
        "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas,
                   "availableReplicas": ready, "unavailableReplicas": replicas - ready, **status},
    }


def node(name: str = "node-1", ready: str | None = "True", unschedulable: bool = False,
         roles: tuple[str, ...] = ()) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name, **{f"node-role.kubernetes.io/{r}": "" for r in roles}}
    conditions = [] if ready is None else [
        {"type": "Ready", "status": ready, "reason": "AgentReady", "message": "orch-agent is posting ready status",
         "lastHeartbeatTime": ts(5), "lastTransitionTime": ts(86400 * 3)}]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "creationTimestamp": ts(86400 * 3), "labels": labels},
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": "192.168.50.2"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kernelVersion": "6.1.0-18-amd64", "kubeletVersion": "orch-agent/0.1.0",
                         "operatingSystem": "linux", "architecture": "amd64", "cgroupDriver": "v2"},
            "conditions": conditions,
        },
    }


def status_of(p: dict[str, Any]) -> str:
    return printers.pod_status(p)[2]


# --- ages -----------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-0.5, "0s"), (0, "0s"), (5, "5s"), (119, "119s"), (120, "2m"), (182, "3m2s"),
    (599, "9m59s"), (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"), (5 * 3600 + 30 * 60, "5h30m"),
    (8 * 3600, "8h"), (47 * 3600, "47h"), (48 * 3600, "2d"), (3 * 86400 + 5 * 3600, "3d5h"),
    (8 * 86400, "8d"), (400 * 86400, "400d"), (800 * 86400, "2y70d"), (3000 * 86400, "8y"),
])
def test_human_duration_matches_kubectl(seconds: float, text: str) -> None:
    assert printers.human_duration(seconds) == text


def test_age_from_creation_timestamp() -> None:
    assert printers.age(ts(5), NOW) == "5s"
    assert printers.age(ts(182), NOW) == "3m2s"
    assert printers.age(ts(3 * 86400), NOW) == "3d"
    assert printers.age("2024-05-01T11:59:58.123456Z", NOW) == "1s"
    assert printers.age(None, NOW) == "<unknown>"
    assert printers.age("yesterday", NOW) == "<unknown>"


# --- pod status ----------------------------------------------------------------------


def test_pod_status_in_each_phase() -> None:
    assert status_of(pod(phase="Pending")) == "Pending"
    assert status_of(pod(phase="Pending", statuses=[waiting("ContainerCreating")])) == "ContainerCreating"
    assert status_of(pod(statuses=[running()])) == "Running"
    assert status_of(pod(phase="Succeeded", statuses=[terminated("Completed", 0)])) == "Completed"
    assert status_of(pod(phase="Failed", statuses=[terminated("Error", 1)])) == "Error"
    assert status_of(pod(phase="Failed", statuses=[terminated("OOMKilled", 137)])) == "OOMKilled"
    assert status_of(pod(phase="Failed", statuses=[terminated(None, 3)])) == "ExitCode:3"
    assert status_of(pod(phase="Running", statuses=[waiting("CrashLoopBackOff", restarts=4)])) == "CrashLoopBackOff"
    assert status_of({"kind": "Pod", "metadata": {"name": "x"}}) == "Unknown"


def test_pod_status_terminating_and_node_lost() -> None:
    assert status_of(pod(statuses=[running()], deletionTimestamp=ts(1))) == "Terminating"
    # A pod that already finished keeps saying so while it is removed, as in kubectl.
    assert status_of(pod(phase="Succeeded", statuses=[terminated("Completed", 0)],
                         deletionTimestamp=ts(1))) == "Completed"
    lost = pod(statuses=[running()], deletionTimestamp=ts(1))
    lost["status"]["reason"] = "NodeLost"
    assert status_of(lost) == "Unknown"


def test_pod_status_first_container_reason_wins_and_completed_sidecar_is_running() -> None:
    two = pod(containers=2, statuses=[waiting("ImagePullBackOff", "c0"), terminated("Error", 1, "c1")])
    assert status_of(two) == "ImagePullBackOff"
    one_done = pod(containers=2, statuses=[terminated("Completed", 0, "c0"), running("c1")])
    one_done["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    assert status_of(one_done) == "NotReady"
    one_done["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert status_of(one_done) == "Running"


def test_pod_status_init_containers() -> None:
    p = pod(phase="Pending")
    p["spec"]["initContainers"] = [{"name": "i0"}, {"name": "i1"}]
    p["status"]["initContainerStatuses"] = [terminated("Completed", 0, "i0"),
                                           {"name": "i1", "state": {"running": {}}, "restartCount": 0}]
    assert status_of(p) == "Init:1/2"
    p["status"]["initContainerStatuses"][1] = terminated("Error", 2, "i1")
    assert status_of(p) == "Init:Error"
    p["status"]["initContainerStatuses"][1] = waiting("CrashLoopBackOff", "i1")
    assert status_of(p) == "Init:CrashLoopBackOff"


def test_pod_ready_counts_ready_running_containers_of_the_spec() -> None:
    p = pod(containers=3, statuses=[running("c0"), running("c1", ready=False), waiting("ContainerCreating", "c2")])
    ready, total, *_ = printers.pod_status(p)
    assert (ready, total) == (1, 3)


# --- get tables -------------------------------------------------------------------------


def test_pod_table_is_aligned_like_kubectl() -> None:
    pods = [pod("hello", statuses=[running()], age=5),
            pod("web-5d4f8b-x2x9z", phase="Pending", statuses=[waiting("ContainerCreating")], age=182)]
    text = printers.table("Pod", pods, printers.TableOptions(now=NOW))
    assert text.splitlines() == [
        "NAME               READY   STATUS              RESTARTS   AGE",
        "hello              1/1     Running             0          5s",
        "web-5d4f8b-x2x9z   0/1     ContainerCreating   0          3m2s",
    ]


def test_pod_table_restarts_show_when_last_restarted() -> None:
    crashing = pod("crash", statuses=[waiting("CrashLoopBackOff", restarts=4,
                                              lastState={"terminated": {"exitCode": 1, "finishedAt": ts(120)}})])
    row = printers.table_row("Pod", crashing, printers.TableOptions(now=NOW))
    assert row[1:4] == ["0/1", "CrashLoopBackOff", "4 (2m ago)"]


def test_pod_table_wide_and_all_namespaces() -> None:
    p = pod("hello", statuses=[running()], age=60, ns="team-a")
    unscheduled = pod("huge", phase="Pending", ns="team-b")
    del unscheduled["spec"]["nodeName"]
    del unscheduled["status"]["podIP"]
    text = printers.table("Pod", [p, unscheduled], printers.TableOptions(wide=True, all_namespaces=True, now=NOW))
    assert text.splitlines() == [
        "NAMESPACE   NAME    READY   STATUS    RESTARTS   AGE   IP          NODE",
        "team-a      hello   1/1     Running   0          60s   10.88.1.5   node-1",
        "team-b      huge    0/1     Pending   0          5m    <none>      <none>",
    ]


def test_pod_table_terminating_completed_oomkilled_rows() -> None:
    opts = printers.TableOptions(now=NOW)
    rows = [printers.table_row("Pod", p, opts)[2] for p in (
        pod(statuses=[running()], deletionTimestamp=ts(1)),
        pod(phase="Succeeded", statuses=[terminated("Completed", 0)]),
        pod(phase="Failed", statuses=[terminated("OOMKilled", 137)]),
    )]
    assert rows == ["Terminating", "Completed", "OOMKilled"]


def test_deployment_table() -> None:
    text = printers.table("Deployment", [deployment("web", 3, 2)], printers.TableOptions(now=NOW))
    assert text.splitlines() == [
        "NAME   READY   UP-TO-DATE   AVAILABLE   AGE",
        "web    2/3     3            2           120m",
    ]
    wide = printers.table("Deployment", [deployment()], printers.TableOptions(wide=True, now=NOW))
    assert wide.splitlines()[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS",
                                            "IMAGES", "SELECTOR"]
    assert wide.splitlines()[1].split()[-3:] == ["main", "nginx:1.25", "app=web"]


def test_deployment_without_status_yet() -> None:
    d = deployment()
    d["status"] = {}
    assert printers.table_row("Deployment", d, printers.TableOptions(now=NOW))[1:4] == ["0/3", "0", "0"]


def test_node_table_ready_notready_unknown_cordoned() -> None:
    nodes = [node("node-1", roles=("control-plane",)), node("node-2", ready="False"),
             node("node-3", ready="Unknown"), node("node-4", ready=None), node("node-5", unschedulable=True)]
    text = printers.table("Node", nodes, printers.TableOptions(now=NOW))
    assert text.splitlines() == [
        "NAME     STATUS                     ROLES           AGE   VERSION",
        "node-1   Ready                      control-plane   3d    orch-agent/0.1.0",
        "node-2   NotReady                   <none>          3d    orch-agent/0.1.0",
        "node-3   NotReady                   <none>          3d    orch-agent/0.1.0",
        "node-4   Unknown                    <none>          3d    orch-agent/0.1.0",
        "node-5   Ready,SchedulingDisabled   <none>          3d    orch-agent/0.1.0",
    ]


def test_node_table_wide() -> None:
    text = printers.table("Node", [node()], printers.TableOptions(wide=True, now=NOW))
    header, row = text.splitlines()
    assert header.split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "KERNEL-VERSION",
                              "CPU", "MEMORY"]
    assert row.split() == ["node-1", "Ready", "<none>", "3d", "orch-agent/0.1.0", "192.168.50.2",
                           "6.1.0-18-amd64", "4", "8Gi"]


def test_table_writer_remembers_widths_for_watch_rows() -> None:
    w = printers.TableWriter()
    first = w.render([["NAME", "STATUS", "AGE"], ["a", "Running", "5s"]])
    later = w.render([["a", "Terminating", "6s"]])
    assert first.splitlines()[1] == "a      Running   5s"
    # The column keeps its place; a longer cell pushes only its own line.
    assert later == "a      Terminating   6s"


def test_names_and_lists() -> None:
    assert printers.object_name(pod("hello")) == "pod/hello"
    assert printers.object_name(deployment("web")) == "deployment.apps/web"
    assert printers.object_name(node("n1")) == "node/n1"
    assert printers.not_found_message(POD, "x") == 'pods "x" not found'
    assert printers.not_found_message(DEPLOYMENT, "web") == 'deployments.apps "web" not found'
    assert printers.not_found_message(NODE, "n") == 'nodes "n" not found'
    assert printers.as_list([pod()]) == {"apiVersion": "v1", "kind": "List", "items": [pod()]}
    assert json.loads(printers.to_json(pod())) == pod()
    assert yaml.safe_load(printers.to_yaml(pod())) == pod()
    assert printers.to_yaml(pod()).startswith("apiVersion: v1\nkind: Pod\n")


def test_selector_string() -> None:
    sel = {"matchLabels": {"tier": "fe", "app": "web"},
           "matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]},
                                {"key": "legacy", "operator": "DoesNotExist"}]}
    assert printers.selector_string(sel) == "app=web,tier=fe,env in (a,b),!legacy"


# --- tabwriter and describe -------------------------------------------------------------


def test_tabwrite_aligns_each_block_of_lines_separately() -> None:
    text = "Name:\thello\nNamespace:\tdefault\nContainers:\n  c:\n    Image:\thost\n    Ready:\tTrue"
    assert printers.tabwrite(text).splitlines() == [
        "Name:       hello",
        "Namespace:  default",
        "Containers:",
        "  c:",
        "    Image:  host",
        "    Ready:  True",
    ]


def test_describe_running_pod() -> None:
    p = pod("web-1", statuses=[running(restarts=1, lastState={"terminated": {
        "reason": "OOMKilled", "exitCode": 137, "startedAt": ts(400), "finishedAt": ts(250)}})],
        ownerReferences=[{"kind": "Deployment", "name": "web", "controller": True, "uid": "d-1"}],
        annotations={"kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "core"})
    c = p["spec"]["containers"][0]
    c["args"] = ["--port", "8080"]
    c["env"] = [{"name": "MODE", "value": "fast"}]
    c["resources"] = {"limits": {"memory": "64Mi", "cpu": "250m"}, "requests": {"cpu": "100m"}}
    c["ports"] = [{"containerPort": 8080, "protocol": "TCP"}]
    c["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5}
    p["spec"]["nodeSelector"] = {"disk": "ssd"}
    p["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]
    text = printers.describe_pod(p)
    lines = text.splitlines()
    # Aligned block by block, as Go's tabwriter aligns kubectl's pages ("IPs:" has no
    # tab, so it ends the first block and "  IP:" lines up with "Controlled By:").
    assert lines[:11] == [
        "Name:         web-1",
        "Namespace:    default",
        "Node:         node-1/192.168.50.2",
        f"Start Time:   {printers.rfc1123z(ts(299))}",
        "Labels:       app=web-1",
        "Annotations:  team: core",
        "Status:       Running",
        "IP:           10.88.1.5",
        "IPs:",
        "  IP:           10.88.1.5",
        "Controlled By:  Deployment/web",
    ]
    assert "last-applied" not in text
    start = lines.index("Containers:")
    assert lines[start:start + 38] == [
        "Containers:",
        "  c0:",
        "    Container ID:  orch://abc123",
        "    Image:         host",
        "    Image ID:      ",
        "    Port:          8080/TCP",
        "    Host Port:     <none>",
        "    Command:",
        "      /bin/sleep",
        "      3600",
        "    Args:",
        "      --port",
        "      8080",
        "    State:          Running",
        f"      Started:      {printers.rfc1123z(ts(200))}",
        "    Last State:     Terminated",
        "      Reason:       OOMKilled",
        "      Exit Code:    137",
        f"      Started:      {printers.rfc1123z(ts(400))}",
        f"      Finished:     {printers.rfc1123z(ts(250))}",
        "    Ready:          True",
        "    Restart Count:  1",
        "    Limits:",
        "      cpu:     250m",
        "      memory:  64Mi",
        "    Requests:",
        "      cpu:     100m",
        "    Liveness:  http-get http://:8080/healthz delay=0s timeout=1s period=5s #success=1 #failure=3",
        "    Environment:",
        "      MODE:  fast",
        "    Mounts:  <none>",
        "Conditions:",
        "  Type           Status",
        "  PodScheduled   True ",
        "  Ready          True ",
        "Volumes:         <none>",
        "QoS Class:       Burstable",
        "Node-Selectors:  disk=ssd",
    ]
    assert lines[-5:] == ["Volumes:         <none>", "QoS Class:       Burstable", "Node-Selectors:  disk=ssd",
                          "Tolerations:     <none>", "Events:          <none>"]


def test_describe_pending_pod_shows_the_scheduling_message() -> None:
    p = pod("huge", phase="Pending")
    del p["spec"]["nodeName"]
    del p["status"]["podIP"]
    p["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                  "message": "0/2 nodes are available: 2 Insufficient memory."}]
    text = printers.describe_pod(p)
    assert "Node:         <none>" in text.splitlines()
    assert "Status:       Pending" in text.splitlines()
    assert "Reason:       Unschedulable" in text.splitlines()
    assert "Message:      0/2 nodes are available: 2 Insufficient memory." in text.splitlines()


def test_describe_terminated_and_terminating_pods() -> None:
    done = printers.describe_pod(pod(phase="Failed", statuses=[terminated("Error", 2)]))
    assert "    State:          Terminated" in done.splitlines()
    assert "      Reason:       Error" in done.splitlines()
    assert "      Exit Code:    2" in done.splitlines()
    going = printers.describe_pod(pod(statuses=[running()], deletionTimestamp=ts(3), deletionGracePeriodSeconds=30))
    assert any(line.startswith("Status:") and "Terminating" in line for line in going.splitlines())
    assert any(line.split() == ["Termination", "Grace", "Period:", "30s"] for line in going.splitlines())


def test_describe_deployment() -> None:
    text = printers.describe_deployment(deployment("web", 3, 2))
    lines = text.splitlines()
    assert lines[0] == "Name:                   web"
    assert "Selector:               app=web" in lines
    assert "Replicas:               3 desired | 3 updated | 3 total | 2 available | 1 unavailable" in lines
    assert "StrategyType:           RollingUpdate" in lines
    assert "Pod Template:" in lines
    assert any(line.split() == ["Labels:", "app=web"] and line.startswith("  Labels:") for line in lines)
    assert "  Containers:" in lines and "   main:" in lines
    assert any(line.split() == ["Image:", "nginx:1.25"] for line in lines)


def test_describe_node_with_its_pods() -> None:
    n = node("node-1", roles=("worker",))
    n["spec"]["taints"] = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    p1 = pod("a", statuses=[running()])
    p1["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"},
                                               "limits": {"cpu": "1", "memory": "2Gi"}}
    finished = pod("done", phase="Succeeded", statuses=[terminated("Completed", 0)])
    text = printers.describe_node(n, [p1, finished], now=NOW)
    lines = text.splitlines()
    assert lines[0] == "Name:               node-1"
    assert "Roles:              worker" in lines
    assert "Taints:             dedicated=gpu:NoSchedule" in lines
    assert "Unschedulable:      false" in lines
    assert any(line.split()[:2] == ["Ready", "True"] and "AgentReady" in line for line in lines)
    assert "  InternalIP:  192.168.50.2" in lines
    assert "Capacity:" in lines and "Allocatable:" in lines
    assert any(line.split() == ["Kernel", "Version:", "6.1.0-18-amd64"] for line in lines)
    assert any(line.split() == ["Cgroup", "Driver:", "v2"] for line in lines)
    assert any(line.split() == ["Non-terminated", "Pods:", "(1", "in", "total)"] for line in lines)
    row = next(line for line in lines if line.split()[:2] == ["default", "a"])
    assert row.split() == ["default", "a", "500m", "(12%)", "1", "(25%)", "1Gi", "(12%)", "2Gi", "(25%)", "5m"]
    assert any(line.split() == ["cpu", "500m", "(12%)", "1", "(25%)"] for line in lines)
    assert "done" not in text


def test_describe_node_without_pods_skips_those_sections() -> None:
    text = printers.describe_node(node(), None)
    assert "Non-terminated Pods" not in text and "Allocated resources" not in text
    assert text.splitlines()[-1].split() == ["Events:", "<none>"]


def test_lab_status_table() -> None:
    status = {"lab_dir": "/var/lib/orch/lab", "server": "127.0.0.1:7443", "etcd": "127.0.0.1:2379",
              "etcd_process": {"pid": 10, "alive": True, "log": "/l/etcd.log"},
              "scheduler": {"pid": 11, "alive": False, "address": "127.0.0.1:7443", "log": "/l/s.log",
                            "metrics": "127.0.0.1:7444"},
              "agents": [{"node": "lab-node-1", "pid": 12, "alive": True, "log": "/l/n1.log",
                          "address": "10.250.3.11", "metrics": "10.250.3.11:10255"}],
              "sd_urls": ["http://127.0.0.1:7444/sd"]}
    lines = printers.lab_status(status, config="/root/.orch/config.yaml").splitlines()
    assert lines[:4] == ["server:   127.0.0.1:7443", "lab dir:  /var/lib/orch/lab",
                         "config:   /root/.orch/config.yaml",
                         "metrics:  Prometheus HTTP SD at http://127.0.0.1:7444/sd"]
    assert lines[5].split() == ["COMPONENT", "PID", "STATE", "ADDRESS", "METRICS", "LOG"]
    assert lines[6].split() == ["etcd", "10", "running", "127.0.0.1:2379", "-", "/l/etcd.log"]
    assert lines[7].split() == ["scheduler", "11", "dead", "127.0.0.1:7443", "127.0.0.1:7444", "/l/s.log"]
    assert lines[8].split() == ["agent/lab-node-1", "12", "running", "10.250.3.11", "10.250.3.11:10255",
                                "/l/n1.log"]


# --- manifests ------------------------------------------------------------------------------


POD_YAML = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers: []\n"


def test_multi_document_file_skips_empty_documents(tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text("---\n" + POD_YAML.format(name="a") + "---\n# only a comment\n---\n" + POD_YAML.format(name="b")
                 + "---\n")
    docs = manifests.load([str(f)])
    assert [d.obj["metadata"]["name"] for d in docs] == ["a", "b"]
    assert [(d.source, d.index) for d in docs] == [(str(f), 0), (str(f), 2)]
    assert docs[1].where == f"{f} document 3"


def test_directory_is_read_sorted_and_not_recursively_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(POD_YAML.format(name="b"))
    (tmp_path / "a.json").write_text(json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}))
    (tmp_path / "c.yaml").write_text(POD_YAML.format(name="c"))
    (tmp_path / "notes.txt").write_text("not a manifest: [")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yaml").write_text(POD_YAML.format(name="d"))
    names = [d.obj["metadata"]["name"] for d in manifests.load([str(tmp_path)])]
    assert names == ["a", "b", "c"]
    names = [d.obj["metadata"]["name"] for d in manifests.load([str(tmp_path)], recursive=True)]
    assert names == ["a", "b", "c", "d"]


def test_stdin_dash() -> None:
    docs = manifests.load(["-"], stdin=io.StringIO(POD_YAML.format(name="x") + "---\n" + POD_YAML.format(name="y")))
    assert [d.obj["metadata"]["name"] for d in docs] == ["x", "y"]
    assert docs[1].where == "<stdin> document 2"
    with pytest.raises(manifests.ManifestError, match="only once"):
        manifests.load(["-", "-"], stdin=io.StringIO(""))


def test_list_kind_is_expanded(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "one"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "two"}},
    ]}))
    docs = manifests.load([str(f)])
    assert [d.obj["kind"] for d in docs] == ["Pod", "Deployment"]
    assert docs[1].where == f"{f} document 1 item 2"


def test_yaml_syntax_error_names_the_file_document_and_line(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    # Lines 1-6 are the first document, 7 is '---', and line 9 of the file is broken.
    f.write_text(POD_YAML.format(name="ok") + "---\napiVersion: v1\nkind: Pod: extra\n")
    with pytest.raises(manifests.ManifestError) as e:
        manifests.load([str(f)])
    assert str(e.value) == f"{f} document 2: invalid YAML at line 9, column 10: mapping values are not allowed here"


def test_python_tags_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.yaml"
    f.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(manifests.ManifestError, match=r"evil\.yaml document 1: invalid YAML"):
        manifests.load([str(f)])
    f.write_text("apiVersion: v1\nkind: Pod\nmetadata: !!python/object:argparse.Namespace {name: x}\n")
    with pytest.raises(manifests.ManifestError, match="python/object"):
        manifests.load([str(f)])
    assert not marker.exists()


def test_non_mapping_documents_and_bad_paths(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text(POD_YAML.format(name="a") + "---\n- just\n- a list\n")
    with pytest.raises(manifests.ManifestError, match=r"list\.yaml document 2: expected an object .*got a list"):
        manifests.load([str(f)])
    with pytest.raises(manifests.ManifestError, match=r'the path ".*nope\.yaml" does not exist'):
        manifests.load([str(tmp_path / "nope.yaml")])
    j = tmp_path / "bad.json"
    j.write_text('{"kind": "Pod",\n  "metadata": }')
    with pytest.raises(manifests.ManifestError, match=r"bad\.json document 1: invalid JSON at line 2"):
        manifests.load([str(j)])


# --- config -------------------------------------------------------------------------------------


def test_config_round_trip_and_precedence(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "config.yaml"
    assert load_config(path) == Config()
    save_config(path, Config(server="127.0.0.1:7443", lab_dir="/var/lib/orch/lab"))
    cfg = load_config(path)
    assert cfg == Config(server="127.0.0.1:7443", lab_dir="/var/lib/orch/lab")
    assert resolve_server(None, cfg, {}) == "127.0.0.1:7443"
    assert resolve_server(None, cfg, {"ORCH_SERVER": "10.0.0.1:1"}) == "10.0.0.1:1"
    assert resolve_server("flag:1", cfg, {"ORCH_SERVER": "10.0.0.1:1"}) == "flag:1"
    with pytest.raises(ConfigError, match='no cluster configured: run "orchctl lab up" or pass --server'):
        resolve_server(None, Config(), {})
    assert config_path(None, {"ORCHCONFIG": str(path)}) == path
    assert config_path(str(tmp_path / "x.yaml"), {"ORCHCONFIG": str(path)}) == tmp_path / "x.yaml"
    path.write_text("server: [not, a, string]\n")
    with pytest.raises(ConfigError):
        load_config(path)


# --- apply helpers ------------------------------------------------------------------------------


def docs_of(*objs: dict[str, Any], source: str = "app.yaml") -> list[manifests.Document]:
    return [manifests.Document(source, i, o) for i, o in enumerate(objs)]


def test_prepare_documents_fills_the_namespace_of_namespaced_kinds_only() -> None:
    docs = docs_of({"kind": "Pod", "metadata": {"name": "a"}},
                   {"kind": "Deployment", "metadata": {"name": "b", "namespace": "team"}},
                   {"kind": "Node", "metadata": {"name": "n"}})
    objs = cli_main.prepare_documents(docs, None)
    assert [o["metadata"].get("namespace") for o in objs] == ["default", "team", None]
    assert "namespace" not in docs[0].obj["metadata"], "the documents themselves are not changed"
    objs = cli_main.prepare_documents(docs[:1], "team")
    assert objs[0]["metadata"]["namespace"] == "team"
    with pytest.raises(cli_main.CliError, match=r'app.yaml document 2: the namespace from the provided object '
                                                r'"team" does not match the namespace "other"'):
        cli_main.prepare_documents(docs, "other")


def test_server_document_numbers_become_file_positions() -> None:
    docs = [manifests.Document("a.yaml", 0, {}), manifests.Document("b.yaml", 2, {})]
    message = ('document 0 (Pod/x): spec.containers[0].image: is required; '
               'document 1 (Pod/y): spec.containers[0].resources.limits.memory: "64MB" is not a quantity; '
               'use 64Mi or 67108864')
    assert cli_main.translate_document_refs(message, docs) == [
        "a.yaml document 1 (Pod/x): spec.containers[0].image: is required",
        'b.yaml document 3 (Pod/y): spec.containers[0].resources.limits.memory: "64MB" is not a quantity; '
        "use 64Mi or 67108864",
    ]
    assert cli_main.translate_document_refs("metadata.name: Pod 'x' is also document 0", docs) == [
        "metadata.name: Pod 'x' is also a.yaml document 1"]
    assert cli_main.translate_document_refs("something else entirely", docs) == ["something else entirely"]


def test_conflict_message_keeps_kubectl_wording_and_server_text() -> None:
    server_said = ConflictError('Operation cannot be fulfilled on pods "x": the object has been modified')
    assert cli_main.conflict_message(server_said) == str(server_said)
    short = ConflictError("resourceVersion 5 != 7")
    assert cli_main.conflict_message(short, POD, "x") == \
        'Operation cannot be fulfilled on pods "x": resourceVersion 5 != 7'
    assert cli_main.conflict_message(ConflictError(""), DEPLOYMENT, "web") == (
        'Operation cannot be fulfilled on deployments.apps "web": the object has been modified; '
        "please apply your changes to the latest version and try again")


def test_pods_progress_counts_pods_and_deployment_replicas() -> None:
    objects = [{"kind": "Pod", "metadata": {"name": "hello", "namespace": "default"}},
               deployment("web", 2, 0)]
    web = [pod(f"web-{i}", statuses=[running()]) for i in range(2)]
    for p in web:
        p["metadata"]["labels"] = {"app": "web"}
    state = cli_main.pods_progress(objects, [pod("hello", phase="Pending"), web[0]])
    assert (state.running, state.expected, state.done) == (1, 3, False)
    state = cli_main.pods_progress(objects, [pod("hello", statuses=[running()]), *web])
    assert (state.running, state.expected, state.done) == (3, 3, True)
    state = cli_main.pods_progress(objects, [pod("hello", phase="Failed", statuses=[terminated("Error", 1)])])
    assert state.failed == ['pod "hello" failed: Error']


class _ScriptedWatchClient:
    """Plays back watch streams; the real server cannot be made to compact on cue."""

    def __init__(self, streams: list[list[tuple[str, dict[str, Any]]] | Exception]) -> None:
        self.streams = streams
        self.watched_from: list[int] = []

    def watch(self, kind: str, namespace: str, selector: str, rv: int, timeout: float | None = None
              ) -> Iterator[tuple[str, dict[str, Any]]]:
        self.watched_from.append(rv)
        stream = self.streams.pop(0) if self.streams else []
        if isinstance(stream, Exception):
            raise stream
        yield from stream

    def list(self, kind: str, namespace: str = "", label_selector: str = "") -> tuple[list[dict[str, Any]], int]:
        return [pod("relisted")], 50


def test_watch_relists_after_an_expired_revision_and_stops_at_its_deadline() -> None:
    p = pod("a")
    p["metadata"]["resourceVersion"] = "12"
    client = _ScriptedWatchClient([[("MODIFIED", p)], ExpiredError("too old resource version")])
    ticks = iter(range(1000))  # a clock that advances one second whenever it is read
    seen: list[tuple[str, str]] = []
    cli_main.watch_changes(client, POD, "default", "", 10, 9.0,  # type: ignore[arg-type]
                           lambda ev, o: seen.append((ev, o["metadata"]["name"])), clock=lambda: float(next(ticks)))
    assert seen == [("MODIFIED", "a"), ("ADDED", "relisted")]
    # Resumed from the last revision seen, then from the relist's revision, then the deadline.
    assert client.watched_from == [10, 12, 50]


# --- the entry point -----------------------------------------------------------------------------


@pytest.fixture
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $ORCH_SERVER and a config path where nothing exists."""
    monkeypatch.delenv("ORCH_SERVER", raising=False)
    cfg = tmp_path / "missing" / "config.yaml"
    monkeypatch.setenv("ORCHCONFIG", str(cfg))
    return cfg


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["get"],
    ["get", "pods", "-o", "xml"],
    ["get", "pods", "hello", "-l", "app=x"],
    ["apply"],
    ["apply", "-f", "x.yaml", "--dry-run=maybe"],
    ["delete", "pod"],
    ["delete", "pod", "x", "--grace-period", "-1"],
    ["delete", "pod", "x", "-f", "x.yaml"],
    ["lab"],
    ["lab", "up", "--nodes", "0"],
    ["get", "pods", "--watch-timeout", "soon"],
    ["logs", "web", "--since", "inf"],
    ["logs", "web", "--since", "nan"],
    ["get", "pods", "--request-timeout", "nan"],
])
def test_usage_errors_exit_2(argv: list[str], no_cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ")
    assert captured.out == ""


def test_unknown_command_is_named(no_cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == 'error: unknown command "frobnicate" for "orchctl"'


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "apply" in capsys.readouterr().out
    assert main(["get", "-h"]) == 0
    assert "--watch" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["get", "pods"], ["describe", "node", "n1"], ["delete", "pod", "x"],
                                  ["get", "deploy", "-A", "-o", "wide"]])
def test_no_cluster_configured(argv: list[str], no_cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err == 'error: no cluster configured: run "orchctl lab up" or pass --server\n'
    assert captured.out == ""


def test_unknown_kind(no_cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", "127.0.0.1:1", "get", "widgets"]) == 1
    assert capsys.readouterr().err == 'error: the server doesn\'t have a resource type "widgets"\n'


def test_bad_manifest_is_reported_before_any_cluster_is_needed(
        no_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("kind: Pod\nmetadata: {name: [x\n")
    assert main(["apply", "-f", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {f} document 1: invalid YAML at line ")
    assert main(["apply", "-f", str(tmp_path / "absent.yaml")]) == 1
    assert capsys.readouterr().err == f'error: the path "{tmp_path / "absent.yaml"}" does not exist\n'
    (tmp_path / "empty").mkdir()
    assert main(["apply", "-f", str(tmp_path / "empty"), "--server", "127.0.0.1:1"]) == 1
    assert capsys.readouterr().err == "error: no objects passed to apply\n"


def test_namespace_mismatch_is_refused_before_sending(
        no_cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: team}\nspec: {}\n")
    assert main(["--server", "127.0.0.1:1", "apply", "-f", str(f), "-n", "other"]) == 1
    assert "does not match the namespace \"other\"" in capsys.readouterr().err


def test_unreachable_server_is_named(no_cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    assert main(["get", "pods", "--server", "127.0.0.1:1", "--request-timeout", "5"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot reach the cluster at 127.0.0.1:1: ")


def test_global_options_go_before_or_after_the_command(no_cluster: Path) -> None:
    parser = cli_main.build_parser()
    before = parser.parse_args(["--server", "h:1", "-n", "team", "-v", "get", "pods"])
    after = parser.parse_args(["get", "pods", "--server", "h:1", "-n", "team", "-v"])
    for args in (before, after):
        assert (args.server, args.namespace, args.verbose, args.targets) == ("h:1", "team", 1, ["pods"])
    plain = parser.parse_args(["get", "pods"])
    assert (plain.server, plain.namespace, plain.verbose) == (None, None, 0)
    dry = parser.parse_args(["apply", "-f", "x", "--dry-run"])
    assert dry.dry_run == "server"  # validates on the server, writes nothing
    assert parser.parse_args(["apply", "--dry-run=server", "-f", "x"]).dry_run == "server"
    assert parser.parse_args(["delete", "pod", "x", "--no-wait"]).wait is False
    assert parser.parse_args(["delete", "pod", "x", "--timeout", "30s"]).timeout == 30.0


def test_server_comes_from_the_config_file(no_cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_config(no_cluster, Config(server="127.0.0.1:1"))
    assert main(["get", "pods", "--request-timeout", "5"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot reach the cluster at 127.0.0.1:1: ")
