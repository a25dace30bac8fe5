"""``orch-scheduler``: serves the Cluster API and the node protocol, runs the controllers
and the scheduling loop, and keeps nothing of its own: everything is in etcd."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import grpc

from apimachinery.meta import DEPLOYMENT, NODE, POD
from apimachinery.pb import cluster_pb2_grpc, node_pb2_grpc
from apimachinery.tasks import TaskGroup
from scheduler.api import ClusterService
from scheduler.controllers import DeploymentController, NodeLifecycleController
from scheduler.informer import Informer
from scheduler.nodes import NodeService
from scheduler.plugins import default_framework
from scheduler.registry import Registry
from scheduler.scheduling import SchedulingLoop
from scheduler.store import DEFAULT_PREFIX, Store, compact_periodically

log = logging.getLogger("scheduler")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="orch-scheduler", description=__doc__)
    p.add_argument("--etcd", default="127.0.0.1:2379", help="etcd client endpoint HOST:PORT")
    p.add_argument("--etcd-prefix", default=DEFAULT_PREFIX, help="key prefix of this cluster in etcd")
    p.add_argument("--listen", default="127.0.0.1:6443", help="gRPC address for orchctl and agents")
    p.add_argument("--heartbeat-interval", type=int, default=5, help="seconds between agent heartbeats")
    p.add_argument("--node-monitor-grace-period", type=float, default=40.0,
                   help="seconds without a heartbeat before a node is NotReady")
    p.add_argument("--compaction-interval", type=float, default=300.0,
                   help="seconds between compactions of etcd's history (0: never)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    store = Store.connect(args.etcd, args.etcd_prefix)
    registry = Registry(store)
    pods, deployments, nodes = Informer(store, POD), Informer(store, DEPLOYMENT), Informer(store, NODE)
    scheduling = SchedulingLoop(store, pods, nodes, default_framework())
    deploy_ctl = DeploymentController(registry, deployments, pods)
    node_ctl = NodeLifecycleController(store, nodes, grace=args.node_monitor_grace_period)
    node_service = NodeService(registry, pods, heartbeat_interval=args.heartbeat_interval)

    # No SO_REUSEPORT (gRPC's default): a second process on this port must fail, not share it.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    cluster = ClusterService(registry)
    cluster_pb2_grpc.add_ClusterServicer_to_server(cluster, server)
    node_pb2_grpc.add_NodeServiceServicer_to_server(node_service, server)
    if server.add_insecure_port(args.listen) == 0:
        raise SystemExit(f"cannot listen on {args.listen}")
    await server.start()
    log.info("serving the Cluster API and node protocol on %s (etcd %s)", args.listen, args.etcd)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks = TaskGroup()
    tasks.start("informer/pods", pods.run())
    tasks.start("informer/deployments", deployments.run())
    tasks.start("informer/nodes", nodes.run())
    tasks.start("scheduling-loop", scheduling.run())
    tasks.start("deployment-controller", deploy_ctl.loop.run())
    tasks.start("node-lifecycle-controller", node_ctl.loop.run())
    if args.compaction_interval > 0:
        tasks.start("etcd-compactor", compact_periodically(store, args.compaction_interval))
    try:
        await tasks.wait(stop)
    finally:
        log.info("shutting down")
        await server.stop(grace=2)
        await cluster.proxy.close()
        await tasks.cancel()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except RuntimeError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
