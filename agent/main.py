"""``orch-agent``: one per node. Registers the node, runs its pods, reports their status.

It speaks mutual TLS both ways with the node's certificate (``--pki-dir`` or
``--tls-cert-file``/``--tls-private-key-file``/``--ca-file``): to the schedulers, and on its
own API, which admits the scheduler only (agent/server.py). Without them it refuses to
start unless ``--insecure`` asks for plaintext, and then says what that exposes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

from agent.agent import NETWORK_MODES, Agent, NodeConfig
from agent.network import node as node_network
from agent.network.podnet import check_bridge_name
from agent.runtime.logs import LogPolicy
from agent.metrics import ContainerCollector, count_supervisors, serve_metrics, stop_metrics
from agent.runtime import syscalls
from agent.runtime.runtime import Runtime
from agent.server import start_server
from apimachinery import pki
from apimachinery.errors import OrchError
from apimachinery.pki import PkiError
from apimachinery.quantity import QuantityError, parse_cpu, parse_memory
from apimachinery.tasks import TaskGroup

log = logging.getLogger("agent")


def machine_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("MemTotal missing from /proc/meminfo")


def enter_netns(path: Path) -> None:
    """Move this process, while it is still one thread, into the network namespace at ``path``."""
    if threading.active_count() != 1:
        raise OSError(errno.EINVAL, "the network namespace must be entered before any thread starts")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(fd, syscalls.CLONE_NEWNET)
    finally:
        os.close(fd)


def parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"label {item!r}: expected key=value")
        labels[key] = value
    return labels


DEFAULT_METRICS_PORT = 10255


def parse_metrics_listen(text: str, address: str) -> tuple[str, int] | None:
    """``--metrics-listen``: ``(host, port)`` to serve /metrics on, None for ``off``. Empty:
    the node's ``address`` on ``DEFAULT_METRICS_PORT``; ``HOST:PORT`` or ``[V6]:PORT`` as given."""
    if text == "off":
        return None
    if not text:
        return address, DEFAULT_METRICS_PORT
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT (port 0 picks a free one) or off")
    return host.strip("[]"), int(port)


def parse_addresses(text: str) -> tuple[str, ...]:
    addresses = tuple(filter(None, (a.strip() for a in text.split(","))))
    if not addresses:
        raise argparse.ArgumentTypeError("expected at least one HOST:PORT")
    for a in addresses:
        host, sep, port = a.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise argparse.ArgumentTypeError(f"{a!r}: expected HOST:PORT")
    return addresses


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="orch-agent", description=__doc__)
    p.add_argument("--node-name", default=socket.gethostname().lower(),
                   help="this node's name (default: the hostname in lower case, as kubelet takes it)")
    p.add_argument("--scheduler", type=parse_addresses, default=("127.0.0.1:6443",), metavar="HOST:PORT[,...]",
                   help="the schedulers' gRPC addresses, comma-separated: the agent uses one and moves to "
                        "the next when it fails (default 127.0.0.1:6443)")
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/orch/agent"),
                   help="where containers' state, logs and pod records live")
    p.add_argument("--cgroup-root", default="orch", help="cgroup path (relative) under which pods are made")
    p.add_argument("--cpu", help="CPU capacity to advertise (default: the machine's cores), e.g. 2 or 1500m")
    p.add_argument("--memory", help="memory capacity to advertise (default: the machine's), e.g. 4Gi")
    p.add_argument("--max-pods", type=int, default=110)
    p.add_argument("--system-reserved", type=parse_labels, default=parse_labels("cpu=100m,memory=256Mi"),
                   help="resources kept back from pods for the system and the agent, like kubelet's "
                        "(default cpu=100m,memory=256Mi); allocatable = capacity - this")
    p.add_argument("--pod-pids-limit", type=int, default=4096, help="pids.max of every container")
    p.add_argument("--labels", type=parse_labels, default={}, help="node labels k=v,k2=v2")
    p.add_argument("--address", default="127.0.0.1", help="the node's InternalIP")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]|CIDR",
                   help="a registry, or a network of registries (CIDR), to pull from over plain HTTP (loopback "
                        "registries always are), as Docker's insecure-registries; repeatable")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="where to serve container logs and exec to schedulers (default: a free port on "
                        "loopback; reported to the scheduler at registration)")
    p.add_argument("--metrics-listen", default="", metavar="HOST:PORT|off",
                   help="where to serve Prometheus /metrics: cAdvisor's container metrics and the agent's own "
                        f"(default: --address, port {DEFAULT_METRICS_PORT}, kubelet's old read-only port; port 0 "
                        "picks a free one; off: not served). Reported to the scheduler for service discovery")
    p.add_argument("--container-log-max-size", default="10Mi", metavar="QUANTITY",
                   help="rotate a container's log when it reaches this size (default 10Mi), like kubelet's")
    p.add_argument("--container-log-max-files", type=int, default=5, metavar="N",
                   help="log files kept per container, the current one included (default 5)")
    p.add_argument("--netns", type=Path, metavar="PATH",
                   help="run in the network namespace at PATH (an nsfs bind mount, as `ip netns add` makes): "
                        "a lab node's own network. Entered before anything else starts, so every thread, "
                        "socket and pod network of the agent is made there")
    p.add_argument("--network", choices=NETWORK_MODES, default="bridge",
                   help="bridge (default): each pod gets an address of the node's pod CIDR (from the "
                        "scheduler) on a veth in --bridge, routes reach other nodes' pods, hostPorts are "
                        "published with nftables; none: pods have only loopback")
    p.add_argument("--bridge", default="orch0", metavar="NAME",
                   help="the pods' bridge in the agent's network namespace (default orch0)")
    p.add_argument("--cleanup", action="store_true",
                   help="do not run: stop every container of this node (--state-dir, --cgroup-root), remove "
                        "their cgroups, sandboxes and state, the cgroup root's parents that are left empty, "
                        "and what the pod network made in the agent's network namespace (pods' veths, the "
                        "bridge, the routes it owns, the hostPort nftables table)")
    g = p.add_argument_group("TLS (docs/security.md)")
    g.add_argument("--tls-cert-file", type=Path, metavar="FILE",
                   help="the node's certificate (CN system:node:<name>): presented to the schedulers, and served "
                        "to them on --listen")
    g.add_argument("--tls-private-key-file", type=Path, metavar="FILE", help="the key of --tls-cert-file")
    g.add_argument("--ca-file", type=Path, metavar="FILE",
                   help="the cluster CA bundle: the schedulers' certificates, and the client certificates of "
                        "callers of --listen, must be signed by one of its CAs")
    g.add_argument("--pki-dir", type=Path, metavar="DIR",
                   help="take whichever of the three above is not given from DIR's standard layout "
                        "(nodes/<node-name>.crt, .key and ca.crt)")
    g.add_argument("--insecure", action="store_true",
                   help="plaintext both ways, no certificates: anyone who reaches --listen can read logs and exec "
                        "into this node's containers, and anyone between the agent and the scheduler can "
                        "impersonate either. For throw-away tests only")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


INSECURE_WARNING = ("node %s: --insecure: PLAINTEXT to the schedulers and on %s, no certificates: anyone who can "
                    "reach that port can exec into this node's containers, and anyone on the path can pose as the "
                    "scheduler. Never do this outside a throw-away test")


def node_tls(args: argparse.Namespace) -> pki.TLSFiles | None:
    """The node's certificate, key and CA bundle; None with ``--insecure``. ValueError names
    the flags when material is missing: without ``--insecure`` the agent never goes plaintext."""
    return pki.tls_files_from_flags(
        args.tls_cert_file, args.tls_private_key_file, args.ca_file, ca_flag="--ca-file", pki_dir=args.pki_dir,
        slot=pki.node_slot(args.node_name), insecure=args.insecure,
        without="lets anyone who reaches the agent exec into its containers")


async def run(config: NodeConfig, metrics_listen: tuple[str, int] | None = None) -> None:
    runtime = Runtime(config.state_dir, config.cgroup_root)
    agent = Agent(config, runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Before the first registration: it reports where this listens.
    server, api, config.endpoint = await start_server(agent, config.listen)
    metrics_server = None
    if metrics_listen is not None:
        host, port = metrics_listen
        agent.metrics.registry.register(ContainerCollector(
            runtime.list, runtime.driver, runtime.pod_cgroup,
            supervisors=lambda: count_supervisors(runtime.state_dir)))
        metrics_server = serve_metrics(agent.metrics.registry, host, port)
        bound = metrics_server[0].server_address[1]
        config.metrics_endpoint = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        log.info("node %s: serving /metrics on %s", config.name, config.metrics_endpoint)
    tasks = TaskGroup()
    tasks.start("connection", agent.connection_loop())
    tasks.start("reconcile", agent.reconcile_loop())
    tasks.start("probes", agent.probe_loop())
    if agent.network is not None:
        tasks.start("network", agent.network_loop())
    try:
        await tasks.wait(stop)
    finally:
        # Containers are left running on purpose: their shims own them, and a
        # restarted agent adopts them.
        log.info("node %s: agent stopping; containers keep running", config.name)
        await tasks.cancel()
        await server.stop(grace=1)
        if metrics_server is not None:
            stop_metrics(*metrics_server)
        api.close()
        agent.pool.shutdown(wait=False, cancel_futures=True)


def cleanup(state_dir: Path, cgroup_root: str) -> int:
    """Everything this node made goes: containers, shims, sandboxes, cgroups, state. For the
    node's last day (``orchctl lab down``); the agent itself must be stopped first."""
    runtime = Runtime(state_dir, cgroup_root)
    rc = 0
    try:
        runtime.cleanup_all()
    except OrchError as e:
        log.error("cleanup of %s: %s", state_dir, e)
        rc = 1
    # After the containers: their sandboxes (and the pods' ends of the veths) are gone
    # already. Only what the agent recorded making is touched.
    failed = node_network.cleanup(state_dir / "network")
    if failed:
        log.error("cleanup of %s: pod network: %s", state_dir, "; ".join(failed))
        rc = 1
    if rc:
        return rc
    # Parents of the root (a lab's orch-lab-<id>) go once no other node uses them: rmdir
    # removes only an empty cgroup.
    parts = cgroup_root.strip("/").split("/")
    for depth in range(len(parts) - 1, 0, -1):
        for directory in runtime.driver.paths("/".join(parts[:depth])).values():
            with contextlib.suppress(OSError):
                os.rmdir(directory)
    shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        log.error("orch-agent creates namespaces and cgroups and must run as root")
        return 1
    if args.netns is not None:
        try:
            enter_netns(args.netns)
        except OSError as e:
            log.error("--netns: %s", e)
            return 1
    if args.cleanup:
        return cleanup(args.state_dir, args.cgroup_root)
    try:
        cpu = parse_cpu(args.cpu) if args.cpu else (os.cpu_count() or 1) * 1000
        memory = parse_memory(args.memory) if args.memory else machine_memory()
        unknown = set(args.system_reserved) - {"cpu", "memory"}
        if unknown:
            raise QuantityError(f"--system-reserved: unknown resource {sorted(unknown)[0]!r}; use cpu and memory")
        reserved_cpu = parse_cpu(args.system_reserved.get("cpu", "0"))
        reserved_memory = parse_memory(args.system_reserved.get("memory", "0"))
    except QuantityError as e:
        log.error("%s", e)
        return 2
    try:
        check_bridge_name(args.bridge)
    except ValueError as e:
        log.error("--bridge: %s", e)
        return 2
    try:
        metrics_listen = parse_metrics_listen(args.metrics_listen, args.address)
    except ValueError as e:
        log.error("--metrics-listen: %s", e)
        return 2
    try:
        tls = node_tls(args)
    except ValueError as e:
        log.error("%s", e)
        return 2
    if tls is None:
        log.warning(INSECURE_WARNING, args.node_name, args.listen)
    else:
        try:
            identity = pki.identity_from_pem(pki.load_tls(tls).certificate_chain)
        except PkiError as e:
            log.error("%s", e)
            return 1
        if identity.node_name != args.node_name:
            # The scheduler would refuse it (NodeRestriction) and the proxy would not trust its API.
            log.error("%s is the certificate of %s, not of node %s (CN system:node:%s, O system:nodes)", tls.cert,
                      identity.user, args.node_name, args.node_name)
            return 1
    config = NodeConfig(name=args.node_name, schedulers=args.scheduler, state_dir=args.state_dir,
                        cgroup_root=args.cgroup_root, cpu_millis=cpu, memory_bytes=memory,
                        max_pods=args.max_pods, labels=args.labels, address=args.address,
                        pod_pids_limit=args.pod_pids_limit, reserved_cpu_millis=reserved_cpu,
                        reserved_memory_bytes=reserved_memory, listen=args.listen,
                        insecure_registries=tuple(args.insecure_registry), network=args.network,
                        bridge=args.bridge, tls=tls)
    try:
        policy = LogPolicy(parse_memory(args.container_log_max_size), args.container_log_max_files)
    except (QuantityError, ValueError) as e:
        log.error("--container-log-max-size/--container-log-max-files: %s", e)
        return 2
    # Shims read the log rotation policy from the environment they inherit (logs.py).
    os.environ.update(policy.to_env())
    try:
        asyncio.run(run(config, metrics_listen))
    except (RuntimeError, OSError, PkiError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
