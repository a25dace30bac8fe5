"""Pod CIDRs: one block of the cluster CIDR for each node, claimed in etcd (node IPAM).

As kube-controller-manager's range allocator (``--cluster-cidr``,
``--node-cidr-mask-size``): a node that registers without ``spec.podCIDR`` gets the
first free block of the cluster CIDR, written to ``spec.podCIDR`` and
``spec.podCIDRs``; a node that has one keeps it, whoever registers it again. The
agent puts the block's first host address (``.1``) on its bridge and hands pods the
rest; every other node routes the block to the node's InternalIP (host-gateway; the
routes travel in ``Assignments``, scheduler/nodes.py).

**Claims.** Kubernetes' allocator keeps a bitmap in the memory of its one leader.
Here any scheduler replica serves Register, so the bitmap is in etcd instead, one key
per block in use::

    <prefix>/podcidrs/<network>_<prefix length>   →   the node's name

A block is claimed in the same transaction that writes the Node with that
``spec.podCIDR``, guarded by the Node's revision *and* the claim: ``create_revision
== 0`` for a free block, the claim's ``mod_revision`` for one taken over. Two
schedulers that pick the same block cannot both commit; the loser tries the next
one. Claims are the ledger, the Nodes the truth (level-triggered, as the node
allocation ledger in scheduler/store.py): a claim whose node no longer exists, or
whose node's ``spec.podCIDR`` is another block, is stale and may be taken over — the
transaction then also compares the holder's Node (absent, or still at the revision
that showed the other block). Deleting a Node through the registry releases its
claim at once (``release_pod_cidrs``); the take-over rule covers every other way a
Node disappears.

A free block is one that overlaps no claim of any size, so changing
``--node-cidr-mask-size`` never hands out an address range a node still holds.
(Replicas of one cluster must agree on both flags: two blocks of different sizes
that overlap have different claim keys, and only the keys are guarded.)

**No block free.** The node registers anyway, without a pod CIDR, with
``NetworkUnavailable=True`` (reason ``NoCIDRAvailable``) and the taint
``node.kubernetes.io/network-unavailable:NoSchedule``, as Kubernetes does, so no
pod is scheduled where it could get no address. Its heartbeats try again
(scheduler/nodes.py); the first one after a block frees up assigns it and lifts both.
With a block the condition is ``NetworkUnavailable=False``, reason ``CIDRAssigned``:
the scheduler knows the block is assigned and that every agent is told the route,
but it never sees a route made, so it does not claim ``RouteCreated``.

**Pods per node.** A node's ``capacity.pods`` and ``allocatable.pods`` are capped at
the addresses its block has for pods: the block minus the network address, the
gateway and the broadcast address (a /24: 253, a /29: 5). Kubernetes leaves this to
the kubelet's ``--max-pods``; deriving it here means NodeResourcesFit ("Too many
pods") stops placing pods on a node before its agent runs out of addresses.

The pure parts (``ClusterCidr``, ``with_pod_network``, ``routes``) are plain
functions over ``ipaddress`` values and Node dicts; ``PodCidrAllocator`` and
``release_pod_cidrs`` do the etcd I/O.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from apimachinery.errors import AlreadyExistsError, ConflictError
from apimachinery.meta import NODE, Obj, now_rfc3339
from apimachinery.validation import validate_node_spec
from scheduler.informer import Informer
from scheduler.store import Store

log = logging.getLogger(__name__)

DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
DEFAULT_NODE_CIDR_MASK_SIZE = 24
#: A /31 or /32 has no room for a gateway and a pod (the agent's IPAM refuses them too).
MAX_NODE_CIDR_MASK_SIZE = 30

NETWORK_UNAVAILABLE = "NetworkUnavailable"
TAINT_NETWORK_UNAVAILABLE = "node.kubernetes.io/network-unavailable"
REASON_ASSIGNED = "CIDRAssigned"
REASON_NONE_FREE = "NoCIDRAvailable"

#: Attempts at claiming blocks in one assignment. Every lost race means another node got
#: that block, so this bounds only a pathological storm.
MAX_CLAIM_ATTEMPTS = 256


# --- the pure part --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterCidr:
    """The cluster's pod address range and the size of each node's block in it."""

    network: IPv4Network
    mask_size: int

    @classmethod
    def parse(cls, cidr: str, mask_size: int) -> ClusterCidr:
        """From the flags' values; a ValueError naming the flag and why when they are unusable."""
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=True)
        except ValueError as e:
            raise ValueError(f"--cluster-cidr {cidr!r}: not an IPv4 network address with a prefix length, "
                             f"such as {DEFAULT_CLUSTER_CIDR} ({e})") from None
        if not isinstance(network, IPv4Network):
            raise ValueError(f"--cluster-cidr {cidr!r}: only IPv4 is supported")
        if mask_size <= network.prefixlen:
            raise ValueError(f"--node-cidr-mask-size {mask_size}: must be larger than the prefix length of "
                             f"--cluster-cidr {network} (/{network.prefixlen}): each node's block is a part of it")
        if mask_size > MAX_NODE_CIDR_MASK_SIZE:
            raise ValueError(f"--node-cidr-mask-size {mask_size}: must be at most {MAX_NODE_CIDR_MASK_SIZE}: a "
                             "smaller block has no address for a pod besides its network, gateway and broadcast "
                             "addresses")
        return cls(network, mask_size)

    @property
    def block_count(self) -> int:
        return 1 << (self.mask_size - self.network.prefixlen)

    def block(self, index: int) -> IPv4Network:
        base = int(self.network.network_address) + (index << (32 - self.mask_size))
        return IPv4Network((base, self.mask_size))

    def is_block(self, net: IPv4Network) -> bool:
        """A block this configuration would hand out (inside the cluster CIDR, of its size)."""
        return net.prefixlen == self.mask_size and net.subnet_of(self.network)

    def _indices(self, net: IPv4Network) -> tuple[int, int] | None:
        """The block indices ``net`` overlaps, first and last; None when it overlaps none."""
        if not net.overlaps(self.network):
            return None
        lo = max(int(net.network_address), int(self.network.network_address))
        hi = min(int(net.broadcast_address), int(self.network.broadcast_address))
        base, shift = int(self.network.network_address), 32 - self.mask_size
        return (lo - base) >> shift, (hi - base) >> shift

    def free_blocks(self, taken: Iterable[IPv4Network]) -> Iterator[IPv4Network]:
        """The blocks that overlap nothing in ``taken``, lowest first. Lazy: the first free
        one costs a sort of ``taken``, not a walk over the whole cluster CIDR."""
        merged: list[list[int]] = []
        for start, end in sorted(s for s in (self._indices(t) for t in taken) if s is not None):
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        index = 0
        for start, end in [*merged, [self.block_count, self.block_count]]:
            while index < start:
                yield self.block(index)
                index += 1
            index = max(index, end + 1)


def usable_pod_addresses(block: IPv4Network) -> int:
    """Addresses a node can give pods: all but the network address, the gateway (``.1``,
    on the node's bridge) and the broadcast address. A /24: 253; a /30: 1."""
    return max(0, block.num_addresses - 3)


def parse_pod_cidr(text: Any) -> IPv4Network | None:
    """A node's ``spec.podCIDR`` as a network; None when it has none or it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None
    return net if isinstance(net, IPv4Network) else None


def internal_ip(node: Obj) -> str | None:
    for a in node.get("status", {}).get("addresses") or ():
        if a.get("type") == "InternalIP" and a.get("address"):
            return str(a["address"])
    return None


def route_entry(node: Obj) -> tuple[str, str]:
    """What other nodes' routes depend on in ``node``: its pod CIDR and its InternalIP."""
    return str(node.get("spec", {}).get("podCIDR") or ""), internal_ip(node) or ""


@dataclass(frozen=True, slots=True)
class Route:
    node_name: str
    pod_cidr: str
    address: str


def routes(nodes: Iterable[Obj], exclude: str) -> list[Route]:
    """The host-gateway routes a node needs: one per other node that has a pod CIDR and an
    InternalIP, sorted by node name."""
    out = []
    for node in nodes:
        name = node["metadata"]["name"]
        cidr, address = parse_pod_cidr(node.get("spec", {}).get("podCIDR")), internal_ip(node)
        if name != exclude and cidr is not None and address:
            out.append(Route(name, str(cidr), address))
    return sorted(out, key=lambda r: r.node_name)


def _cap_pods(resources: dict[str, Any], limit: int) -> None:
    try:
        pods = int(str(resources.get("pods")))
    except ValueError:
        pods = limit
    resources["pods"] = str(min(pods, limit))


def with_pod_network(node: Obj, block: IPv4Network | None, cluster: ClusterCidr) -> Obj:
    """A copy of ``node`` with ``block`` as its pod CIDR (None: it has none) and what follows
    from that: ``spec.podCIDR(s)``, the NetworkUnavailable condition and taint, and the cap
    on pods. The condition keeps its times while its status and reason stay the same, so
    applying this to a node already in that state changes nothing."""
    out = copy.deepcopy(node)
    spec, status = dict(out.get("spec") or {}), out.setdefault("status", {})
    taints = list(spec.get("taints") or ())
    if block is not None:
        spec["podCIDR"], spec["podCIDRs"] = str(block), [str(block)]
        cond = _condition("False", REASON_ASSIGNED, f"pod CIDR {block} is assigned to this node; the other "
                                                    "nodes route it to this node's InternalIP")
        taints = [t for t in taints if t.get("key") != TAINT_NETWORK_UNAVAILABLE]
        limit = usable_pod_addresses(block)
        for field in ("capacity", "allocatable"):
            _cap_pods(status.setdefault(field, {}), limit)
    else:
        spec.pop("podCIDR", None)
        spec.pop("podCIDRs", None)
        cond = _condition("True", REASON_NONE_FREE, f"no free /{cluster.mask_size} block is left in the cluster "
                                                    f"CIDR {cluster.network} for this node's pods")
        if not any(t.get("key") == TAINT_NETWORK_UNAVAILABLE and t.get("effect") == "NoSchedule" for t in taints):
            taints.append({"key": TAINT_NETWORK_UNAVAILABLE, "effect": "NoSchedule"})
    if taints:
        spec["taints"] = taints
    else:
        spec.pop("taints", None)
    out["spec"] = validate_node_spec(spec)
    conds = status.setdefault("conditions", [])
    old = next((c for c in conds if c.get("type") == NETWORK_UNAVAILABLE), None)
    if old is not None and (old.get("status"), old.get("reason"), old.get("message")) == (
            cond["status"], cond["reason"], cond["message"]):
        return out
    if old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime"):
        cond["lastTransitionTime"] = old["lastTransitionTime"]
    status["conditions"] = [c for c in conds if c.get("type") != NETWORK_UNAVAILABLE] + [cond]
    return out


def _condition(status: str, reason: str, message: str) -> Obj:
    now = now_rfc3339()
    return {"type": NETWORK_UNAVAILABLE, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now}


# --- claims in etcd -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    block: IPv4Network
    holder: str  # the node's name
    revision: int  # the key's mod_revision


@dataclass(frozen=True, slots=True)
class _Guard:
    """What a claim transaction compares: the claim at ``claim_revision`` (0: absent) and,
    for a take-over, the holder's Node at ``holder_revision`` (0: absent)."""

    claim_revision: int = 0
    holder: str | None = None
    holder_revision: int = 0


def claims_prefix(store: Store) -> bytes:
    return f"{store.prefix}/podcidrs/".encode()


def claim_key(store: Store, block: IPv4Network) -> bytes:
    return claims_prefix(store) + f"{block.network_address}_{block.prefixlen}".encode()


def _parse_claim_key(key: bytes, prefix: bytes) -> IPv4Network | None:
    address, _, length = key[len(prefix):].decode(errors="replace").partition("_")
    return parse_pod_cidr(f"{address}/{length}")


async def read_claims(store: Store) -> dict[IPv4Network, Claim]:
    prefix = claims_prefix(store)
    rng = await store._run(lambda: store.client.get_prefix(prefix))
    out = {}
    for kv in rng:
        block = _parse_claim_key(kv.key, prefix)
        if block is not None:
            out[block] = Claim(block, kv.value.decode(errors="replace"), int(kv.mod_revision))
    return out


async def release_pod_cidrs(store: Store, node_name: str) -> list[IPv4Network]:
    """Drop the claims of ``node_name``, a Node just deleted: each only if that Node is still
    absent and the claim unchanged, so a node that registered again meanwhile keeps its
    block. Returns the blocks released."""
    tx = store.client.transactions
    node_key = store.key(NODE, None, node_name)
    released = []
    for claim in (await read_claims(store)).values():
        if claim.holder != node_name:
            continue
        key = claim_key(store, claim.block)
        ok, _ = await store._run(lambda: store.client.transaction(
            compare=[tx.version(node_key) == 0, tx.mod(key) == claim.revision],
            success=[tx.delete(key)], failure=[]))
        if ok:
            released.append(claim.block)
            log.info("node %s: pod CIDR %s released", node_name, claim.block)
    return released


class _Lost(Exception):
    """The block's claim (or its holder) changed since it was read: someone else claimed it."""


class PodCidrAllocator:
    """Gives nodes blocks of ``cluster`` and keeps the claims in etcd (see the module docstring).

    ``nodes``: an informer whose cache tells which claims look stale when no block is
    free (every take-over is checked in etcd by its transaction, so a stale cache costs
    a lost attempt, never a duplicate); without one, the Nodes are listed from etcd.
    """

    def __init__(self, store: Store, cluster: ClusterCidr, *, nodes: Informer | None = None) -> None:
        self.store = store
        self.cluster = cluster
        self.nodes = nodes
        # Blocks this process is claiming right now: its concurrent registrations try
        # different blocks instead of racing each other for the first free one.
        self._inflight: set[IPv4Network] = set()

    async def assign(self, node: Obj, expected_rv: int, *, write: bool) -> Obj | None:
        """Write ``node`` with its pod CIDR: the one in its spec when that is still its own,
        else a free (or stale) block, else none (NetworkUnavailable).

        ``expected_rv``: the Node's revision as read (0: create it). ``write``: write the
        Node even when the pod network changes nothing in it (a registration); otherwise
        None is returned when nothing needed writing. Raises ConflictError or
        AlreadyExistsError when the Node changed meanwhile: re-read and call again.
        """
        name = node["metadata"]["name"]
        claims = await read_claims(self.store)
        own = parse_pod_cidr(node.get("spec", {}).get("podCIDR"))
        if own is not None:
            guard = await self._guard_for_own(name, own, claims.get(own))
            if guard is not None:
                try:
                    return await self._commit(node, expected_rv, own, guard, write=write)
                except _Lost:
                    pass
            log.warning("node %s: its pod CIDR %s is held by another node; assigning it another one", name, own)
        attempts = 0
        async for block, guard in self._candidates(name, claims):
            attempts += 1
            if attempts > MAX_CLAIM_ATTEMPTS:
                raise ConflictError(f'nodes "{name}": too many concurrent pod CIDR claims, gave up')
            self._inflight.add(block)
            try:
                stored = await self._commit(node, expected_rv, block, guard, write=True)
            except _Lost:
                continue
            finally:
                self._inflight.discard(block)
            log.info("node %s: pod CIDR %s assigned", name, block)
            return stored
        log.warning("node %s: no free /%d block in the cluster CIDR %s: no pod CIDR, NetworkUnavailable",
                    name, self.cluster.mask_size, self.cluster.network)
        return await self._commit(node, expected_rv, None, None, write=write)

    async def _guard_for_own(self, name: str, block: IPv4Network, claim: Claim | None) -> _Guard | None:
        """How to keep the block the node already has; None when another node holds it."""
        if claim is None:
            return _Guard()  # a node from before claims, or a lost claim: claim it now
        if claim.holder == name:
            return _Guard(claim.revision)
        holder = await self.store.get_or_none(NODE, None, claim.holder)
        return self._take_over(claim, holder)

    @staticmethod
    def _take_over(claim: Claim, holder: Obj | None) -> _Guard | None:
        """The guard to take ``claim`` over when its holder is gone or has another block."""
        if holder is None:
            return _Guard(claim.revision, claim.holder, 0)
        if parse_pod_cidr(holder.get("spec", {}).get("podCIDR")) != claim.block:
            return _Guard(claim.revision, claim.holder, int(holder["metadata"]["resourceVersion"]))
        return None

    async def _candidates(self, name: str, claims: dict[IPv4Network, Claim]
                          ) -> AsyncIterator[tuple[IPv4Network, _Guard]]:
        """Blocks to try, best first: one this node claimed before (a node deleted and
        registered again gets its block back), free blocks, then stale claims."""
        for claim in sorted(claims.values(), key=lambda c: int(c.block.network_address)):
            if claim.holder == name and self.cluster.is_block(claim.block):
                yield claim.block, _Guard(claim.revision)
        taken = list(claims) + list(self._inflight)
        for block in self.cluster.free_blocks(taken):
            if block not in self._inflight:
                yield block, _Guard()
        nodes = await self._nodes()
        for claim in sorted(claims.values(), key=lambda c: int(c.block.network_address)):
            if claim.holder != name and self.cluster.is_block(claim.block) and claim.block not in self._inflight:
                guard = self._take_over(claim, nodes.get(claim.holder))
                if guard is not None:
                    yield claim.block, guard

    async def _nodes(self) -> dict[str, Obj]:
        if self.nodes is not None and self.nodes.synced.is_set():
            return {n["metadata"]["name"]: n for n in self.nodes.items()}
        listed, _ = await self.store.list(NODE)
        return {n["metadata"]["name"]: n for n in listed}

    async def _commit(self, node: Obj, expected_rv: int, block: IPv4Network | None, guard: _Guard | None,
                      *, write: bool) -> Obj | None:
        """One transaction: the Node with ``block`` as its pod CIDR, and the block's claim.
        Raises _Lost when the claim's guard failed, ConflictError/AlreadyExistsError when
        the Node's did."""
        desired = with_pod_network(node, block, self.cluster)
        store, tx, name = self.store, self.store.client.transactions, node["metadata"]["name"]
        node_key = store.key_of(node)
        compares = [tx.create(node_key) == 0] if expected_rv == 0 else [tx.mod(node_key) == expected_rv]
        puts = []
        write = write or expected_rv == 0 or desired != node
        if write:
            puts.append(tx.put(node_key, Store._encode(desired)))
        if block is not None and guard is not None:
            key = claim_key(store, block)
            compares.append(tx.create(key) == 0 if guard.claim_revision == 0 else tx.mod(key) == guard.claim_revision)
            if guard.holder is not None:
                holder_key = store.key(NODE, None, guard.holder)
                compares.append(tx.create(holder_key) == 0 if guard.holder_revision == 0
                                else tx.mod(holder_key) == guard.holder_revision)
            if guard.claim_revision == 0 or guard.holder is not None:
                puts.append(tx.put(key, name.encode()))
        ok, responses = await store._run(lambda: store.client.transaction(
            compare=compares, success=puts, failure=[tx.get(node_key)]))
        if not ok:
            current = responses[0][0][1] if responses and responses[0] else None
            if expected_rv == 0 and current is not None:
                raise AlreadyExistsError(f'nodes "{name}" already exists')
            if expected_rv != 0 and (current is None or int(current.mod_revision) != expected_rv):
                raise ConflictError(f'Operation cannot be fulfilled on nodes "{name}": the object has been '
                                    "modified; please apply your changes to the latest version and try again")
            raise _Lost(str(block))
        if not write:
            return None
        stored: Obj = Store._decode(Store._encode(desired), int(responses[0].response_put.header.revision))
        return stored

