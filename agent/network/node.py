"""The agent's side of its node's network: the pod CIDR it was given, the ``PodNetwork``
for it, the routes to other nodes and the hostPort table it last wrote.

The scheduler hands the node its pod CIDR at registration and again in every
``Assignments``; the agent passes each one to ``configure``, which makes the bridge
for it. Until then ``attach`` raises ``NetworkNotReady`` (the pod's containers wait
and are retried). The CIDR is recorded in ``<dir>/node.json`` *before* the bridge is
made, so a restarted agent can detach its pods (and ``cleanup`` can remove everything)
without asking anyone; it is not trusted for new pods until the scheduler confirms it.
The record also names the network namespace it was made in (device and inode of its
nsfs file): ``cleanup`` run from another namespace (a lab node's ``--cleanup`` without
its ``--netns``) must not delete a same-named bridge, routes or table of that one.

Routes and hostPorts are level-triggered: ``sync_routes`` and ``sync_hostports`` take
the whole desired set each time and touch the kernel only when it differs from what
was last applied or when the resync (every ``RESYNC_INTERVAL`` seconds) is due, which
also heals what someone else changed. A failure forgets what was applied, so the next
call tries again.

Every method blocks on netlink, libnftables or the disk: call them from worker threads.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from agent.network import hostports
from agent.network.errors import NetworkError, NetworkNotReady
from agent.network.hostports import HostPort
from agent.network.ipam import parse_cidr
from agent.network.podnet import PodAddress, PodNetwork, check_bridge_name

__all__ = ["RESYNC_INTERVAL", "STATE_FILE", "NodeNetwork", "cleanup", "netns_id", "read_state"]

log = logging.getLogger(__name__)

STATE_FILE = "node.json"
#: Routes, the bridge and the hostPort table are rewritten at least this often (seconds).
RESYNC_INTERVAL = 30.0


def netns_id(path: str | os.PathLike[str] | None) -> str:
    """The identity of the network namespace at ``path`` (None: the calling thread's): ``dev:inode``."""
    st = os.stat(path if path is not None else "/proc/thread-self/ns/net")
    return f"{st.st_dev}:{st.st_ino}"


def read_state(directory: Path) -> dict[str, str] | None:
    """The CIDR, bridge and namespace the agent last configured (``podCIDR``, ``bridge``,
    ``netns``: empty if not recorded), None if never."""
    try:
        data = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("node network: unreadable %s: %s", directory / STATE_FILE, e)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("podCIDR"), str) or not isinstance(data.get("bridge"), str):
        log.warning("node network: %s lacks podCIDR or bridge; ignored", directory / STATE_FILE)
        return None
    return {"podCIDR": data["podCIDR"], "bridge": data["bridge"], "netns": str(data.get("netns") or "")}


def _write_state(directory: Path, cidr: str, bridge: str, netns: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"podCIDR": cidr, "bridge": bridge, "netns": netns}) + "\n")
    os.replace(tmp, directory / STATE_FILE)


class NodeNetwork:
    """One node's pod network as the agent runs it (state under ``directory``)."""

    def __init__(self, directory: str | os.PathLike[str], *, bridge: str = "orch0",
                 node_netns: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(directory)
        self.bridge = bridge
        self.node_netns = node_netns
        check_bridge_name(bridge)  # now, not when the first CIDR arrives
        self._lock = threading.Lock()
        #: The CIDR whose bridge this process has ensured; new pods are attached only then.
        self.cidr: str | None = None
        self.why_not_ready = "no pod CIDR from the scheduler yet"
        #: The pod network of the recorded CIDR until ``configure``: enough to detach pods and read addresses.
        self.pods: PodNetwork | None = None
        recorded = read_state(self.dir)
        if recorded is not None:
            try:
                self.pods = PodNetwork(recorded["podCIDR"], self.dir, bridge=recorded["bridge"], node_netns=node_netns)
            except ValueError as e:
                log.warning("node network: recorded state ignored: %s", e)
        self._routes: dict[str, str] | None = None
        self._routes_at = -math.inf
        self._ports: list[HostPort] | None = None
        self._ports_at = -math.inf
        self._ports_logged: list[HostPort] = []
        self._bridge_at = -math.inf

    def __repr__(self) -> str:
        return f"NodeNetwork({str(self.dir)!r}, bridge={self.bridge!r}, cidr={self.cidr!r})"

    @property
    def ready(self) -> bool:
        return self.cidr is not None

    # ------------------------------------------------------------ the node's CIDR

    def configure(self, cidr: str, now: float = 0.0) -> bool:
        """Take ``cidr`` (from the scheduler; empty: it has none for this node) as the node's
        pod CIDR: record it, ensure the bridge. Returns whether anything changed."""
        with self._lock:
            if not cidr:
                was_ready = self.cidr is not None
                self.cidr = None
                self.why_not_ready = ("the scheduler has no pod CIDR for this node "
                                      "(its cluster CIDR has no free block)")
                if was_ready:
                    log.warning("node network: the scheduler took the pod CIDR away; new pods wait")
                return was_ready
            try:
                network = parse_cidr(cidr)
            except ValueError as e:
                self.cidr = None
                self.why_not_ready = f"the scheduler sent an unusable pod CIDR: {e}"
                raise NetworkError(errno.EINVAL, self.why_not_ready) from None
            if self.cidr == str(network):
                return False
            old = self.pods
            # Before the bridge: cleanup finds it.
            _write_state(self.dir, str(network), self.bridge, netns_id(self.node_netns))
            pods = PodNetwork(network, self.dir, bridge=self.bridge, node_netns=self.node_netns)
            pods.ensure_bridge()
            if old is not None and old.bridge != pods.bridge:
                old.remove_bridge()
                log.info("node network: bridge %s replaced by %s", old.bridge, pods.bridge)
            if old is not None and old.network != pods.network:
                log.warning("node network: pod CIDR changed from %s to %s; pods are re-addressed as they are "
                            "verified", old.network, pods.network)
            self.pods, self.cidr = pods, str(network)
            self._bridge_at = now
            # The own CIDR is part of both: rewrite them on the next sync.
            self._routes = None
            self._ports = None
            log.info("node network: pod CIDR %s on bridge %s", network, self.bridge)
            return True

    def keep_bridge(self, now: float) -> bool:
        """Ensure the bridge again once ``RESYNC_INTERVAL`` has passed (someone may have removed it)."""
        pods = self.pods
        if self.cidr is None or pods is None or now - self._bridge_at < RESYNC_INTERVAL:
            return False
        self._bridge_at = now
        pods.ensure_bridge()
        return True

    # ------------------------------------------------------------ pods

    def attach(self, pod_uid: str, netns_path: str | os.PathLike[str]) -> PodAddress:
        """The pod's veth and address (idempotent); NetworkNotReady before ``configure``."""
        with self._lock:
            pods, ready, why = self.pods, self.cidr is not None, self.why_not_ready
        if not ready or pods is None:
            raise NetworkNotReady(why)
        return pods.attach(pod_uid, netns_path)

    def detach(self, pod_uid: str, netns_path: str | os.PathLike[str] | None = None) -> IPv4Address | None:
        """Remove the pod's veth and release its address (idempotent); None if it had none."""
        pods = self.pods
        return None if pods is None else pods.detach(pod_uid, netns_path)

    def address(self, pod_uid: str) -> PodAddress | None:
        """The pod's recorded address (a file read), None if it holds none."""
        pods = self.pods
        return None if pods is None else pods.address(pod_uid)

    def holders(self) -> set[str]:
        """Uids of the pods that (may) hold an address: a directory listing, cheap enough for every pass.

        The agent removes those it no longer knows like stray sandboxes (an agent that
        died between attaching a pod and recording it leaves one).
        """
        pods = self.pods
        return set() if pods is None else pods.ipam.holders()

    # ------------------------------------------------------------ routes and hostPorts

    def sync_routes(self, desired: Mapping[str, str], now: float) -> bool:
        """Make our routes ``desired`` (other nodes' pod CIDR -> their address) if they changed
        or the resync is due. Returns whether it wrote; RouteSyncError if some did not converge."""
        pods = self.pods
        if pods is None:
            return False
        wanted = dict(desired)
        if self._routes == wanted and now - self._routes_at < RESYNC_INTERVAL:
            return False
        self._routes = None
        pods.routes_to_nodes(_widen(wanted))
        self._routes, self._routes_at = wanted, now
        return True

    def sync_hostports(self, ports: Sequence[HostPort], now: float) -> bool:
        """Rewrite the hostPort table to ``ports`` if they changed or the resync is due."""
        pods = self.pods
        wanted = list(ports)
        if self._ports == wanted and now - self._ports_at < RESYNC_INTERVAL:
            return False
        if pods is None and not wanted:
            return False  # never configured: nothing of ours can be in the kernel
        self._ports = None
        cidr = str(pods.network) if pods is not None else None
        hostports.apply(wanted, self.node_netns, pod_cidr=cidr, bridge=pods.bridge if pods is not None else None)
        if wanted != self._ports_logged:  # not on every resync
            log.info("node network: hostPorts %s", ", ".join(p.describe() for p in wanted) if wanted else "none")
            self._ports_logged = wanted
        self._ports, self._ports_at = wanted, now
        return True


def _widen(routes: dict[str, str]) -> dict[str | IPv4Network, str | IPv4Address]:
    return dict(routes.items())


def cleanup(directory: str | os.PathLike[str], node_netns: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove everything the agent made in its network namespace, as recorded under ``directory``:
    pods' veths and addresses, the routes it owns, its bridge, the hostPort table; then the
    directory. Nothing recorded: nothing touched. Returns what failed (it goes on after a failure)."""
    directory = Path(directory)
    state = read_state(directory)
    errors: list[str] = []
    if state is not None and state["netns"] and state["netns"] != netns_id(node_netns):
        # Made in another namespace: if that one is gone, so is everything in it; if not, the
        # caller must clean up from there. Here a same-named bridge is someone else's.
        log.warning("node network: made in network namespace %s, this is %s: nothing deleted here "
                    "(run the cleanup in the agent's namespace, --netns)", state["netns"], netns_id(node_netns))
        state = None
    if state is not None:
        try:
            pods = PodNetwork(state["podCIDR"], directory, bridge=state["bridge"], node_netns=node_netns)
        except ValueError as e:
            errors.append(f"recorded network state: {e}")
        else:
            _cleanup_kernel(pods, node_netns, errors)
    if directory.exists():
        try:
            shutil.rmtree(directory)
        except OSError as e:
            errors.append(f"{directory}: {e}")
    return errors


def _cleanup_kernel(pods: PodNetwork, node_netns: str | os.PathLike[str] | None, errors: list[str]) -> None:
    steps: list[tuple[str, Callable[[], object]]] = [(f"pod {uid}", functools.partial(pods.detach, uid))
                                    for uid in sorted(set(pods.ipam.allocations().values()))]
    steps += [("routes", lambda: pods.routes_to_nodes({})),
              (f"bridge {pods.bridge}", pods.remove_bridge),
              ("hostPort table", lambda: hostports.remove(node_netns))]
    for what, step in steps:
        try:
            step()
        except (OSError, ValueError) as e:
            errors.append(f"{what}: {e}")
    log.info("node network: cleaned up (bridge %s, pod CIDR %s)%s", pods.bridge, pods.network,
             f"; {len(errors)} step(s) failed" if errors else "")
