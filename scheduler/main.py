"""``orch-scheduler``: serves the Cluster API and the node protocol, runs the controllers
and the scheduling loop, and keeps nothing of its own: everything is in etcd.

Several can run against one etcd: every one serves the API and the agents connected
to it; only the leader, elected through an etcd lease (scheduler/leader.py), runs the
scheduling loop, the controllers and the compactor.

Every replica also serves HTTP on ``--metrics-listen`` (kube-scheduler's port, 10259, on
loopback by default): ``/metrics`` (scheduler/metrics.py), ``/sd``, the Prometheus HTTP
service discovery of every Ready node's agent and every live scheduler (scheduler/sd.py),
and ``/healthz``.

**TLS** (docs/security.md, "Wiring"). The gRPC ports are mutual TLS: the scheduler serves
``--tls-cert-file`` and admits only clients whose certificate a CA of ``--client-ca-file``
signed (their subject is who they are: ``apimachinery.pki.peer_identity``). Without that
material it refuses to start unless ``--insecure`` asks for plaintext, which it then
warns about in its log. etcd is spoken to over mutual TLS with ``--etcd https://…`` and the
``--etcd-*file`` flags. The HTTP port (/metrics, /sd, /healthz) stays plaintext.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
import prometheus_client

from apimachinery import pki
from apimachinery.meta import CONTROLLER_REVISION, DEPLOYMENT, LEASE, NODE, POD
from apimachinery.pb import node_pb2_grpc
from apimachinery.pki import PkiError
from apimachinery.tasks import TaskGroup
from scheduler import auth
from scheduler.api import ClusterService, add_cluster_service
from scheduler.config import config_file_argument, default_profiles
from scheduler.controllers import DeploymentController, NodeLifecycleController
from scheduler.events import EventRecorder
from scheduler.informer import Informer
from scheduler.leader import DEFAULT_LEASE_DURATION, LeaderElector, Term, new_identity
from scheduler.metrics import (
    DEFAULT_METRICS_PORT,
    HttpServer,
    SchedulerMetrics,
    join_host_port,
    metrics_route,
    split_host_port,
)
from scheduler.nodes import NodeService
from scheduler.podcidr import DEFAULT_CLUSTER_CIDR, DEFAULT_NODE_CIDR_MASK_SIZE, ClusterCidr
from scheduler.registry import Registry
from scheduler.queue import MAX_UNSCHEDULABLE_SECONDS
from scheduler.scheduling import SchedulingLoop
from scheduler.sd import SD_PATH, SchedulerAnnouncer, ServiceDiscovery
from scheduler.store import DEFAULT_PREFIX, EtcdTLS, Store, compact_periodically

log = logging.getLogger("scheduler")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="orch-scheduler", description=__doc__)
    p.add_argument("--etcd", default="127.0.0.1:2379", metavar="[https://]HOST:PORT",
                   help="etcd's client endpoint; https:// (or an --etcd-*file flag): mutual TLS")
    p.add_argument("--etcd-prefix", default=DEFAULT_PREFIX, help="key prefix of this cluster in etcd")
    p.add_argument("--listen", default="127.0.0.1:6443", metavar="HOST:PORT[,...]",
                   help="gRPC address(es) for orchctl and agents, comma-separated (a lab listens on loopback "
                        "and on its network)")
    p.add_argument("--heartbeat-interval", type=int, default=5, help="seconds between agent heartbeats")
    p.add_argument("--node-monitor-grace-period", type=float, default=40.0,
                   help="seconds without a heartbeat before a node is NotReady")
    p.add_argument("--default-not-ready-toleration-seconds", type=int, default=300, metavar="SECONDS",
                   help="the tolerationSeconds of the node.kubernetes.io/not-ready:NoExecute toleration given to "
                        "every pod that has none: how long its pods stay on a NotReady node (default 300)")
    p.add_argument("--default-unreachable-toleration-seconds", type=int, default=300, metavar="SECONDS",
                   help="the same for node.kubernetes.io/unreachable: how long pods stay on a node whose "
                        "agent stopped heartbeating before they are evicted and replaced (default 300)")
    p.add_argument("--compaction-interval", type=float, default=300.0,
                   help="seconds between compactions of etcd's history (0: never)")
    p.add_argument("--config", type=config_file_argument, metavar="FILE",
                   help="scheduling profiles, a KubeSchedulerConfiguration YAML (docs/scheduling-plugins.md)")
    p.add_argument("--leader-elect", type=boolean_flag, nargs="?", const=True, default=True, metavar="true|false",
                   help="run the scheduling loop and controllers only while leading, elected through an etcd "
                        "lease among the schedulers of this etcd (default true); false: always, as if alone")
    p.add_argument("--leader-elect-lease-duration", type=float, default=DEFAULT_LEASE_DURATION, metavar="SECONDS",
                   help="how long the leader's lease outlives its last renewal: the longest a dead leader "
                        f"holds up scheduling (default {DEFAULT_LEASE_DURATION:.0f})")
    p.add_argument("--leader-elect-renew-deadline", type=float, metavar="SECONDS",
                   help="a leader that could not renew for this long stops leading (default 2/3 of the duration)")
    p.add_argument("--leader-elect-retry-period", type=float, metavar="SECONDS",
                   help="between renewals, and between a candidate's attempts (default 2/15 of the duration)")
    p.add_argument("--pod-max-in-unschedulable-pods-duration", type=float, default=MAX_UNSCHEDULABLE_SECONDS,
                   metavar="SECONDS", help="the longest an unschedulable pod waits for a cluster event before it is "
                                           f"tried again (default {MAX_UNSCHEDULABLE_SECONDS:.0f})")
    p.add_argument("--cluster-cidr", default=DEFAULT_CLUSTER_CIDR, metavar="CIDR",
                   help="the IPv4 range of pod addresses; each node gets a block of it as its pod CIDR "
                        f"(default {DEFAULT_CLUSTER_CIDR}); every scheduler of a cluster must be given the same")
    p.add_argument("--node-cidr-mask-size", type=int, default=DEFAULT_NODE_CIDR_MASK_SIZE, metavar="BITS",
                   help="the prefix length of each node's block: a /24 holds 253 pods, and a node's pods "
                        f"capacity is capped at what its block holds (default {DEFAULT_NODE_CIDR_MASK_SIZE}; "
                        "larger than the cluster CIDR's, at most 30)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help=f"where to serve /metrics, {SD_PATH} (Prometheus HTTP service discovery) and /healthz over "
                        f"HTTP; '' or 'off': nowhere (default 127.0.0.1:{DEFAULT_METRICS_PORT}, kube-scheduler's "
                        "port; when that default is taken, by a second scheduler on this host, this one runs without "
                        "and says so; an address given here must be free)")
    add_tls_arguments(p)
    auth.add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.metrics_listen is not None and args.metrics_listen.strip().lower() not in ("", "off"):
        try:
            split_host_port(args.metrics_listen.strip())
        except ValueError as e:
            p.error(f"--metrics-listen: {e}")
    try:
        args.cluster_cidr = ClusterCidr.parse(args.cluster_cidr, args.node_cidr_mask_size)
    except ValueError as e:
        p.error(str(e))
    try:
        LeaderElector.check_timings(args.leader_elect_lease_duration, args.leader_elect_renew_deadline,
                                    args.leader_elect_retry_period)
    except ValueError as e:
        p.error(str(e))
    return args


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """kube-apiserver's names for the serving certificate, the client CA and etcd's TLS."""
    g = p.add_argument_group("TLS (docs/security.md)")
    g.add_argument("--tls-cert-file", type=Path, metavar="FILE",
                   help="the scheduler's certificate: served to orchctl and agents, and presented to agents "
                        "when it dials them for logs and exec")
    g.add_argument("--tls-private-key-file", type=Path, metavar="FILE", help="the key of --tls-cert-file")
    g.add_argument("--client-ca-file", type=Path, metavar="FILE",
                   help="the cluster CA bundle: every client must present a certificate signed by one of its CAs, "
                        "and agents' serving certificates are checked against it")
    g.add_argument("--pki-dir", type=Path, metavar="DIR",
                   help="take whichever of the three above is not given from DIR's standard layout "
                        "(scheduler.crt, scheduler.key, ca.crt), and the etcd ones (etcd/ca.crt, "
                        "etcd/scheduler-client.crt/.key) for an https:// --etcd")
    g.add_argument("--insecure", action="store_true",
                   help="serve plaintext, with no client certificates: anyone who can reach the port owns the "
                        "cluster. For throw-away tests only")
    g.add_argument("--etcd-cafile", type=Path, metavar="FILE", help="etcd's CA: speak TLS to etcd and verify it")
    g.add_argument("--etcd-certfile", type=Path, metavar="FILE",
                   help="the client certificate etcd (started with --client-cert-auth) wants from the scheduler")
    g.add_argument("--etcd-keyfile", type=Path, metavar="FILE", help="the key of --etcd-certfile")


class TLSConfigError(ValueError):
    """TLS flags that are missing or do not fit together; the message names the flags."""


INSECURE_WARNING = ("--insecure: the Cluster API and the node protocol are served in PLAINTEXT on %s, with no "
                    "client certificates: anyone who can reach these ports owns the cluster (runs any container, "
                    "as root, on every node). Never do this outside a throw-away test")


def serving_tls(args: argparse.Namespace) -> pki.TLSFiles | None:
    """The certificate, key and client CA to serve with; None with ``--insecure``.

    Refuses (TLSConfigError) to run without TLS material unless ``--insecure`` says so:
    a scheduler that serves plaintext by accident hands the cluster to its network."""
    try:
        return pki.tls_files_from_flags(
            args.tls_cert_file, args.tls_private_key_file, args.client_ca_file, ca_flag="--client-ca-file",
            pki_dir=args.pki_dir, slot=pki.SCHEDULER, insecure=args.insecure,
            without="lets anyone who can reach the port own the cluster")
    except ValueError as e:
        raise TLSConfigError(str(e)) from None


def etcd_tls(args: argparse.Namespace) -> EtcdTLS | None:
    """How to speak to etcd: mutual TLS when ``--etcd`` is ``https://`` or an ``--etcd-*file`` is given."""
    scheme = args.etcd.split("://", 1)[0].lower() if "://" in args.etcd else ""
    if scheme not in ("", "http", "https"):
        raise TLSConfigError(f"--etcd {args.etcd}: expected HOST:PORT, http://HOST:PORT or https://HOST:PORT")
    given = {"--etcd-cafile": args.etcd_cafile, "--etcd-certfile": args.etcd_certfile,
             "--etcd-keyfile": args.etcd_keyfile}
    named = [flag for flag, value in given.items() if value is not None]
    if scheme == "http" and named:
        raise TLSConfigError(f"--etcd {args.etcd} is plaintext; it cannot be given with {', '.join(named)}")
    if scheme != "https" and not named:
        return None
    if args.pki_dir is not None:
        layout = EtcdTLS.from_pki(args.pki_dir)
        return EtcdTLS(args.etcd_cafile or layout.cafile, args.etcd_certfile or layout.certfile,
                       args.etcd_keyfile or layout.keyfile)
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        raise TLSConfigError(f"etcd over TLS needs --etcd-cafile, --etcd-certfile and --etcd-keyfile (or --pki-dir "
                             f"DIR); missing: {', '.join(missing)}")
    return EtcdTLS(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)


def boolean_flag(text: str) -> bool:
    """A true|false command-line value (also 1/0, yes/no)."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


async def run_leader_tasks(start: Callable[[TaskGroup], None]) -> None:
    """The leader-only tasks of one term, until cancelled (the term ended); raises when one crashes."""
    group = TaskGroup()
    start(group)
    try:
        await group.wait(asyncio.Event())
    finally:
        await group.cancel()


def metrics_address(args: argparse.Namespace) -> tuple[str | None, bool]:
    """Where to serve metrics (None: nowhere), and whether that address was asked for
    (else it is the default, which may be taken by another scheduler on this host)."""
    if args.metrics_listen is None:
        return f"127.0.0.1:{DEFAULT_METRICS_PORT}", False
    text = args.metrics_listen.strip()
    return (None, True) if text.lower() in ("", "off") else (text, True)


def advertised(host: str, port: int) -> str:
    """The address Prometheus should scrape: a wildcard listen address becomes the host's name."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return join_host_port(host, port)


async def start_http(routes: Mapping[str, Callable[..., tuple[int, dict[str, str], bytes]]], address: str,
                     required: bool) -> tuple[HttpServer, str] | None:
    """Serve ``routes`` on ``address``; the server and the address bound, or None when the
    default address is taken. SystemExit when an address asked for cannot be served."""
    http = HttpServer(routes)
    host, port = split_host_port(address)
    try:
        bound_host, bound_port = await http.start(host, port)
    except OSError as e:
        if required:
            raise SystemExit(f"cannot serve metrics on {address}: {e}") from e
        log.warning("metrics: the default address %s is taken (%s): this scheduler serves no /metrics and no %s; "
                    "give it one with --metrics-listen", address, e.strerror or e, SD_PATH)
        return None
    log.info("serving /metrics, %s and /healthz on http://%s", SD_PATH, join_host_port(bound_host, bound_port))
    return http, advertised(bound_host, bound_port)


def listen_on(server: grpc.aio.Server, listen: str, tls: pki.TLSFiles | None) -> None:
    """Add every address of ``listen``: mutual TLS (a client certificate from the CA bundle
    required) with ``tls``, else plaintext.

    The credentials reload: before each new handshake gRPC asks whether the certificate,
    key or CA bundle changed on disk, so a rotated certificate (``orchctl pki rotate
    scheduler``) or a CA rotation's bundle is served without a restart; connections
    already open keep the certificate they began with."""
    for address in filter(None, (a.strip() for a in listen.split(","))):
        try:
            # Credentials of their own for each port. Gotcha: gRPC asks the fetcher of dynamic
            # credentials for each port's first configuration, and ours answers "no change"
            # after the first: a shared one fails the second port.
            port = (server.add_secure_port(address, pki.reloading_server_credentials(tls)) if tls is not None
                    else server.add_insecure_port(address))
        except RuntimeError as e:  # newer grpcio raises where older ones returned 0
            raise SystemExit(f"cannot listen on {address}: {e}") from e
        if port == 0:
            raise SystemExit(f"cannot listen on {address}")


def healthz(headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "text/plain"}, b"ok\n"


async def serve(args: argparse.Namespace, tls: pki.TLSFiles | None, etcd: EtcdTLS | None) -> None:
    metrics_at, metrics_required = metrics_address(args)
    metrics = SchedulerMetrics() if metrics_at is not None else None
    store = Store.connect(args.etcd, args.etcd_prefix, tls=etcd)
    if metrics is not None:
        store.observer = metrics.etcd_request
    elector = LeaderElector(store, lease_duration=args.leader_elect_lease_duration,
                            renew_deadline=args.leader_elect_renew_deadline,
                            retry_period=args.leader_elect_retry_period) if args.leader_elect else None
    # The leader-only loops write through a fenced store: once this process is deposed,
    # their writes (a binding included) fail in etcd, even before it notices.
    leader_store = store.fenced(elector.fence) if elector is not None else store
    admission = {"not_ready_toleration_seconds": args.default_not_ready_toleration_seconds,
                 "unreachable_toleration_seconds": args.default_unreachable_toleration_seconds}
    registry = Registry(store, **admission)
    pods, deployments, nodes = Informer(store, POD), Informer(store, DEPLOYMENT), Informer(store, NODE)
    leases, revisions = Informer(store, LEASE), Informer(store, CONTROLLER_REVISION)
    scheduling = SchedulingLoop(leader_store, pods, nodes, args.config or default_profiles(),
                                max_unschedulable_seconds=args.pod_max_in_unschedulable_pods_duration,
                                metrics=metrics)
    if metrics is not None:
        # Lambdas: an informer replaces its cache dict when it relists.
        metrics.watch_cluster(lambda: nodes.cache.values(), lambda: pods.cache.values())
        if elector is not None:
            metrics.watch_leader(elector.name, lambda: elector.leading)
    deploy_ctl = DeploymentController(Registry(leader_store, **admission), deployments, pods, revisions,
                                      events=EventRecorder(leader_store, "deployment-controller"))
    node_ctl = NodeLifecycleController(leader_store, nodes, grace=args.node_monitor_grace_period, leases=leases,
                                       pods=pods, registry=Registry(leader_store, **admission),
                                       events=EventRecorder(leader_store, "node-controller"))
    node_service = NodeService(registry, pods, heartbeat_interval=args.heartbeat_interval, nodes=nodes,
                               lease_duration=args.node_monitor_grace_period, cluster_cidr=args.cluster_cidr)

    # Metrics first: a --metrics-listen address that cannot be served stops the start here.
    http: HttpServer | None = None
    announcer: SchedulerAnnouncer | None = None
    if metrics is not None and metrics_at is not None:
        sd = ServiceDiscovery(nodes, leases)
        served = await start_http({"/metrics": metrics_route(metrics), SD_PATH: sd.route(), "/healthz": healthz},
                                  metrics_at, metrics_required)
        if served is not None:
            http, advertise = served
            announcer = SchedulerAnnouncer(store, elector.identity if elector is not None else new_identity(),
                                           advertise)

    # No SO_REUSEPORT (gRPC's default): a second process on this port must fail, not share it.
    # 4 MiB requests at most: an object is at most 1.5 MiB (etcd's limit), an Apply 60 of them.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 << 20)],
                             interceptors=[metrics.grpc] if metrics is not None else None)
    access = auth.from_args(args)  # opens the audit log: an unwritable path stops the start here
    cluster = ClusterService(registry, access)
    cluster.proxy.use_tls(tls)  # dials agents with the scheduler's certificate, checks theirs
    add_cluster_service(server, cluster)  # refuses undecodable requests cleanly (scheduler/api.py)
    node_pb2_grpc.add_NodeServiceServicer_to_server(node_service, server)
    listen_on(server, args.listen, tls)
    await server.start()
    log.info("serving the Cluster API and node protocol on %s over %s (etcd %s over %s; pod CIDRs: /%d blocks "
             "of %s)", args.listen, "mutual TLS" if tls is not None else "PLAINTEXT", args.etcd,
             "mutual TLS" if etcd is not None else "plaintext", args.cluster_cidr.mask_size,
             args.cluster_cidr.network)
    if tls is None:
        log.warning(INSECURE_WARNING, args.listen)
    elif etcd is None:
        log.warning("etcd at %s is spoken to in plaintext: give --etcd https://HOST:PORT with --etcd-cafile, "
                    "--etcd-certfile and --etcd-keyfile (or --pki-dir) to protect the cluster's state", args.etcd)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks = TaskGroup()
    if announcer is not None:
        tasks.start("scheduler-announcer", announcer.run())
    tasks.start("informer/pods", pods.run())
    tasks.start("informer/deployments", deployments.run())
    tasks.start("informer/nodes", nodes.run())
    tasks.start("informer/leases", leases.run())
    tasks.start("informer/controllerrevisions", revisions.run())

    def start_leader_tasks(group: TaskGroup) -> None:
        group.start("scheduling-loop", scheduling.run())
        group.start("deployment-controller", deploy_ctl.loop.run())
        group.start("node-lifecycle-controller", node_ctl.loop.run())
        if args.compaction_interval > 0:
            group.start("etcd-compactor", compact_periodically(store, args.compaction_interval))

    election: asyncio.Task[None] | None = None
    if elector is None:
        start_leader_tasks(tasks)
    else:
        log.info("leader election: %s campaigns for %s/%s (lease %.1fs)", elector.identity, elector.namespace,
                 elector.name, elector.lease_duration)

        async def lead(term: Term) -> None:
            await run_leader_tasks(start_leader_tasks)

        election = tasks.start("leader-election", elector.run(lead))
    try:
        await tasks.wait(stop)
    finally:
        log.info("shutting down")
        if election is not None:
            # Resign first, so that another scheduler leads at once, not after the lease's TTL.
            election.cancel()
            await asyncio.gather(election, return_exceptions=True)
        await server.stop(grace=2)
        if http is not None:
            await http.close()
        await cluster.proxy.close()
        access.close()  # writes out the audit records still queued
        await tasks.cancel()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # No ``<name>_created`` series beside every counter and histogram (a prometheus_client
    # addition kube-scheduler does not make): process-wide, and this process is the scheduler.
    prometheus_client.disable_created_metrics()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        tls, etcd = serving_tls(args), etcd_tls(args)
    except TLSConfigError as e:
        sys.stderr.write(f"orch-scheduler: error: {e}\n")
        return 2
    try:
        if tls is not None:
            pki.load_tls(tls)  # every file there and the key the certificate's, before anything starts
        if etcd is not None:
            etcd.credentials()
    except PkiError as e:
        log.error("%s", e)
        return 1
    try:
        asyncio.run(serve(args, tls, etcd))
    except (RuntimeError, PkiError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
