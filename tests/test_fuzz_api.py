"""Fuzzing every Cluster API method through a real gRPC server over a real etcd.

Each target sends requests hypothesis makes up (arbitrary strings, sizes, numbers and
JSON, mixed with names and documents close enough to real ones to get past the first
checks) to the real ``ClusterService`` on 127.0.0.1 (tests/fuzzing.py), and checks:

* every answer is OK or a clean status with a message: INVALID_ARGUMENT, NOT_FOUND,
  ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE (and UNAVAILABLE where
  the scheduler proxies to a node's agent, which here is never reachable); never
  UNKNOWN or INTERNAL (an exception nobody meant), never RESOURCE_EXHAUSTED (a status
  message too long to deliver), never a hang (every call has a deadline);
* **a refused request changes nothing**: etcd's revision (and so every key) is the
  same after it as before. Read-only methods change nothing even when they succeed.

Methods: Apply, Get, List, Delete, Watch, PatchNode, PodLogs, PodExec, ImportImage, Top
(all of proto/cluster.proto's Cluster service; ``test_every_method_is_fuzzed`` fails
when one is added without a target), and raw bytes sent to each of them.

The world fuzzed against is small and put back after every request that changes it:
a Ready node whose agent port is closed, a pod bound to it, a pod on no node.

Sizes: ``HYPOTHESIS_PROFILE=ci`` (default) or ``long``; see tests/fuzzing.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apimachinery.meta import KINDS
from apimachinery.pb import agent_pb2
from apimachinery.pb import cluster_pb2 as pb
from apimachinery.validation import MAX_GRACE_PERIOD_SECONDS
from tests.etcd_fixture import EtcdServer, running_etcd
from tests.fuzzing import ApiServer, Snapshot, closed_port, fuzz_settings

pytestmark = pytest.mark.fuzz

CALL_TIMEOUT = 10.0

#: Clean answers to a hostile request.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE,
}
#: ... and for the calls proxied to an agent, which no test here can reach.
PROXY_REFUSALS = REFUSALS | {grpc.StatusCode.UNAVAILABLE}

NODE = "node-a"
BOUND_POD = "bound"
LOOSE_POD = "loose"


# --- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


class World:
    """The API server and the objects every example may find there."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.api = server.api
        self.agent_port = closed_port()
        self.reset()

    def reset(self) -> None:
        self.server.put_node(NODE, agent_port=self.agent_port)
        self.server.put_pod(BOUND_POD, node=NODE)
        self.server.put_pod(LOOSE_POD)
        self.before = self.server.snapshot()

    def answer(self, method: str, call: Any, *, writes: bool, proxied: bool = False) -> grpc.StatusCode:
        """Run ``call()`` (a request), check its answer and that a refusal changed nothing.

        The keyspace before is the one after the previous request: nothing but the requests
        writes to this etcd, so one read per request is enough (a revision first, the whole
        keyspace only to say what changed)."""
        before = self.before
        try:
            call()
            code = grpc.StatusCode.OK
            details = ""
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
        allowed = PROXY_REFUSALS if proxied else REFUSALS
        assert code == grpc.StatusCode.OK or code in allowed, f"{method} answered {code.name}: {details}"
        assert code == grpc.StatusCode.OK or details, f"{method} answered {code.name} with no message"
        if self.server.revision() == before.revision:
            return code
        after = self.server.snapshot()
        if code != grpc.StatusCode.OK or not writes:
            self.reset()  # for the next example, whatever this one says
            raise AssertionError(f"{method} {code.name} changed etcd: {before.diff(after)}")
        if method == "Delete":
            self.reset()  # put back what was deleted, for the next example
        else:
            self.before = after  # a write went through: what the next example starts from
        return code


@pytest.fixture(scope="module")
def world(etcd: EtcdServer) -> Iterator[World]:
    server = ApiServer(etcd, etcd.prefix())
    try:
        yield World(server)
    finally:
        server.close()


# --- strategies ---------------------------------------------------------------------------------

_KIND_WORDS = sorted({w for k in KINDS.values() for w in (k.kind, k.plural, *k.short_names)})
kinds = st.one_of(st.sampled_from(_KIND_WORDS), st.sampled_from(["", "List", "pods/log", "POD", "x" * 300]),
                  st.text(max_size=40))
names = st.one_of(
    st.sampled_from([NODE, BOUND_POD, LOOSE_POD, "web", "", "a/b", "..", ".", "Web", "a" * 253, "a" * 254,
                     "a\x00b", "\u202e", "\x1b[2J", "a.b", "-a", "\ud7ff"]),
    st.text(max_size=300),
)
namespaces = st.one_of(st.sampled_from(["", "default", "kube-node-lease", "Default", "a/b", "a" * 64, "\x1b"]),
                       st.text(max_size=80))
selectors = st.one_of(
    st.sampled_from(["", f"app={BOUND_POD}", "app in (bound,loose)", "!app", "app!=x", "node", "a=" + "b" * 64,
                     "(", "a in (", "a=b=c", "x" * 20000]),
    st.text(max_size=200),
)
int64s = st.one_of(st.integers(-(2**63), 2**63 - 1),
                   st.sampled_from([0, 1, -1, 2, 2**31 - 1, 2**31, 2**63 - 1, -(2**63), MAX_GRACE_PERIOD_SECONDS + 1]))

#: A request for one of the world's objects (so that it goes all the way to etcd), or anything.
targets = st.one_of(
    st.tuples(st.sampled_from(["Pod", "pods", "po"]), st.sampled_from(["", "default"]),
              st.sampled_from([BOUND_POD, LOOSE_POD])),
    st.tuples(st.sampled_from(["Node", "nodes"]), namespaces, st.just(NODE)),
    st.tuples(kinds, namespaces, names),
)


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
    st.text(max_size=20), st.sampled_from(["", "host", "500m", "64Mi", "Always", "NoExecute", "Exists"]),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.one_of(st.sampled_from(["name", "image", "containers", "labels", "spec", "metadata", "key"]),
                  st.text(max_size=12)), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def plausible_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A Pod, Deployment or PriorityClass, with parts of it replaced by anything."""
    kind = draw(st.sampled_from(["Pod", "Deployment", "PriorityClass", "Node", "Event", "Nope"]))
    name = draw(st.one_of(st.sampled_from([BOUND_POD, LOOSE_POD, "fz-1", "fz-2", NODE]), names))
    container = {"name": "main", "image": draw(st.sampled_from(["host", "busybox:1", ""]))}
    if draw(st.booleans()):
        container["resources"] = {"limits": {"cpu": draw(json_leaves), "memory": draw(json_leaves)}}
    pod_spec: dict[str, Any] = {"containers": [container]}
    for field in draw(st.lists(st.sampled_from(["terminationGracePeriodSeconds", "priority", "nodeName",
                                                "restartPolicy", "tolerations", "activeDeadlineSeconds"]),
                               max_size=2)):
        pod_spec[field] = draw(st.one_of(int64s, json_values))
    metadata: dict[str, Any] = {"name": name}
    if draw(st.booleans()):
        metadata["namespace"] = draw(namespaces)
    if draw(st.booleans()):
        metadata["annotations"] = {"note": draw(st.text(max_size=50))}
    if draw(st.booleans()):
        metadata["resourceVersion"] = draw(st.one_of(st.sampled_from(["1", "0", "99999", "-1", ""]),
                                                     st.text(max_size=5)))
    obj: dict[str, Any] = {"apiVersion": {"Deployment": "apps/v1", "PriorityClass": "scheduling.k8s.io/v1"}.get(
        kind, "v1"), "kind": kind, "metadata": metadata}
    if kind == "Deployment":
        obj["spec"] = {"replicas": draw(int64s), "selector": {"matchLabels": {"app": name}},
                       "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}}
    elif kind == "PriorityClass":
        obj["value"] = draw(int64s)
    else:
        obj["spec"] = pod_spec
    if draw(st.integers(0, 4)) == 0:
        path = draw(st.sampled_from([("metadata",), ("spec",), ("metadata", "labels"), ("spec", "containers")]))
        target = obj
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = draw(json_values)
    return obj


def _nested(depth: int) -> str:
    return '{"apiVersion": "v1", "kind": "Pod", "metadata": ' + "[" * depth + "]" * depth + "}"


#: Hand-made JSON no encoder would write: what a hostile client sends.
_HOSTILE_JSON = [
    '{"a": 1, "a": 2}', '{"apiVersion": "v1", "kind": "Pod", "kind": "Pod"}', "NaN", '{"x": Infinity}',
    '{"x": -Infinity}', '{"x": 1e400}', '{"x": ' + "9" * 5000 + "}", '{"x": -' + "9" * 30 + "}",
    '{"x": 9223372036854775808}', '{"x": "\\ud800"}', '{"\\udfff": 1}', "[" * 100000, _nested(63), _nested(64),
    _nested(2000), "", " ", "null", "[]", '"x"', "{", '{"metadata": {"name": "a\\u0000b"}}',
    '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", '
    '"image": "i", "resources": {"limits": {"cpu": 1e308}}}]}}',
]

documents = st.one_of(
    st.builds(json.dumps, plausible_objects()),
    st.builds(json.dumps, json_values),
    st.sampled_from(_HOSTILE_JSON),
    st.text(max_size=200),
)


def _pod(name: str, *, arg: str = "", spec: dict[str, Any] | None = None) -> str:
    """A Pod; ``arg`` makes it as large as wanted (annotations have a limit of their own)."""
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": spec or {"containers": [{"name": "main", "image": "host", "command": ["echo", arg]}]}}
    return json.dumps(obj, separators=(",", ":"))


#: Requests hostile by their size: more objects than one transaction takes, an object or
#: objects together over etcd's request limit (but under gRPC's 4 MiB), and an object with
#: so many problems that listing them all would not fit in a status message.
large_requests = st.one_of(
    st.integers(55, 70).map(lambda n: [_pod(f"many-{i}") for i in range(n)]),
    st.integers(0, 2_000_000).map(lambda n: [_pod("big", arg="x" * n)]),
    st.integers(1_560_000, 1_575_000).map(lambda n: [_pod("big", arg="x" * n)]),  # around the limit
    st.tuples(st.integers(2, 8), st.integers(100_000, 400_000)).map(
        lambda t: [_pod(f"big-{i}", arg="x" * t[1]) for i in range(t[0])]),
    st.integers(1, 30_000).map(lambda n: [_pod("wrong", spec={f"field{i}": i for i in range(n)})]),
)



# --- the targets --------------------------------------------------------------------------------


def test_every_method_is_fuzzed() -> None:
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["Cluster"].methods}
    fuzzed = {"Apply", "Get", "List", "Delete", "Watch", "PatchNode", "PodLogs", "PodExec", "ImportImage", "Top"}
    assert methods == fuzzed, f"methods without a fuzz target: {methods - fuzzed}"


@fuzz_settings()
@given(objects=st.lists(documents, max_size=4), dry_run=st.booleans())
def test_apply(world: World, objects: list[str], dry_run: bool) -> None:
    request = pb.ApplyRequest(objects_json=objects, dry_run=dry_run)
    world.answer("Apply", lambda: world.api.Apply(request, timeout=CALL_TIMEOUT), writes=not dry_run)


@fuzz_settings(scale=0.04)
@given(objects=large_requests, dry_run=st.booleans())
def test_apply_large(world: World, objects: list[str], dry_run: bool) -> None:
    """Fewer cases: each is megabytes, sent, parsed and validated."""
    request = pb.ApplyRequest(objects_json=objects, dry_run=dry_run)
    world.answer("Apply", lambda: world.api.Apply(request, timeout=CALL_TIMEOUT), writes=not dry_run)


@fuzz_settings(scale=0.5)
@given(target=targets)
def test_get(world: World, target: tuple[str, str, str]) -> None:
    kind, namespace, name = target
    request = pb.GetRequest(kind=kind, namespace=namespace, name=name)
    world.answer("Get", lambda: world.api.Get(request, timeout=CALL_TIMEOUT), writes=False)


@fuzz_settings(scale=0.5)
@given(kind=kinds, namespace=namespaces, selector=selectors)
def test_list(world: World, kind: str, namespace: str, selector: str) -> None:
    request = pb.ListRequest(kind=kind, namespace=namespace, label_selector=selector)
    world.answer("List", lambda: world.api.List(request, timeout=CALL_TIMEOUT), writes=False)


@fuzz_settings(scale=0.5)
@given(target=targets, grace=st.none() | int64s)
def test_delete(world: World, target: tuple[str, str, str], grace: int | None) -> None:
    kind, namespace, name = target
    request = pb.DeleteRequest(kind=kind, namespace=namespace, name=name)
    if grace is not None:
        request.grace_period_seconds = grace
    world.answer("Delete", lambda: world.api.Delete(request, timeout=CALL_TIMEOUT), writes=True)


def _watch(world: World, request: pb.WatchRequest) -> None:
    """Open the watch: a refusal raises; an accepted watch (its headers came, the call goes
    on) is cancelled, after its first event if one is there at once."""
    call = world.api.Watch(request, timeout=CALL_TIMEOUT)
    try:
        call.initial_metadata()
        if call.done():
            if call.code() != grpc.StatusCode.OK:
                raise call  # type: ignore[misc]  # the call is the RpcError
            return
    finally:
        call.cancel()


@fuzz_settings(scale=0.5)
@given(kind=kinds, namespace=namespaces, selector=selectors,
       rv=st.one_of(int64s, st.integers(0, 64)))
def test_watch(world: World, kind: str, namespace: str, selector: str, rv: int) -> None:
    request = pb.WatchRequest(kind=kind, namespace=namespace, label_selector=selector, resource_version=rv)
    world.answer("Watch", lambda: _watch(world, request), writes=False)


patches = st.one_of(
    st.builds(json.dumps, st.fixed_dictionaries({}, optional={
        "unschedulable": json_leaves,
        "taints": st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"key": st.sampled_from(["a", "node.kubernetes.io/x", "", "A/b"]),
             "effect": st.sampled_from(["NoSchedule", "NoExecute", "Bad"])},
            optional={"value": st.text(max_size=10), "timeAdded": st.text(max_size=25)}), max_size=3)),
        "podCIDR": json_values,
    })),
    st.builds(json.dumps, json_values),
    st.sampled_from(_HOSTILE_JSON),
    st.text(max_size=100),
)
#: Patches that make a Node larger than etcd takes, or nearly.
large_patches = st.integers(1, 45_000).map(lambda n: json.dumps(
    {"taints": [{"key": f"k{i}", "effect": "NoSchedule"} for i in range(n)]}, separators=(",", ":")))


@fuzz_settings()
@given(name=st.one_of(st.just(NODE), names), patch=patches)
def test_patch_node(world: World, name: str, patch: str) -> None:
    request = pb.PatchNodeRequest(name=name, spec_patch_json=patch)
    world.answer("PatchNode", lambda: world.api.PatchNode(request, timeout=CALL_TIMEOUT), writes=True)


@fuzz_settings(scale=0.01)
@given(patch=large_patches)
def test_patch_node_large(world: World, patch: str) -> None:
    request = pb.PatchNodeRequest(name=NODE, spec_patch_json=patch)
    world.answer("PatchNode", lambda: world.api.PatchNode(request, timeout=CALL_TIMEOUT), writes=True)
    world.reset()  # a node of thousands of taints would slow every later patch


def _drain(responses: Any) -> None:
    for _ in responses:
        pass


@fuzz_settings(scale=0.25)
@given(namespace=namespaces, pod=names, container=st.one_of(st.sampled_from(["", "main", "nope"]), names),
       follow=st.booleans(), tail=st.none() | int64s, since=st.none() | int64s, previous=st.booleans())
def test_pod_logs(world: World, namespace: str, pod: str, container: str, follow: bool, tail: int | None,
                  since: int | None, previous: bool) -> None:
    request = agent_pb2.LogsRequest(namespace=namespace, pod=pod, container=container, follow=follow,
                                    previous=previous)
    if tail is not None:
        request.tail_lines = tail
    if since is not None:
        request.since_seconds = since
    world.answer("PodLogs", lambda: _drain(world.api.PodLogs(request, timeout=CALL_TIMEOUT)), writes=False,
                 proxied=True)


exec_inputs = st.one_of(
    st.builds(lambda ns, pod, container, command, tty: agent_pb2.ExecInput(start=agent_pb2.ExecStart(
        namespace=ns, pod=pod, container=container, command=command, tty=tty)),
        namespaces, names, st.one_of(st.just(""), names), st.lists(st.text(max_size=20), max_size=3), st.booleans()),
    st.builds(lambda data: agent_pb2.ExecInput(stdin=data), st.binary(max_size=64)),
    st.builds(lambda rows, cols: agent_pb2.ExecInput(resize=agent_pb2.TerminalSize(rows=rows, cols=cols)),
              st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.just(agent_pb2.ExecInput(close_stdin=True)),
    st.just(agent_pb2.ExecInput()),
)


@fuzz_settings(scale=0.25)
@given(inputs=st.lists(exec_inputs, max_size=4))
def test_pod_exec(world: World, inputs: list[agent_pb2.ExecInput]) -> None:
    world.answer("PodExec", lambda: _drain(world.api.PodExec(iter(inputs), timeout=CALL_TIMEOUT)), writes=False,
                 proxied=True)


image_chunks = st.builds(
    lambda data, reference, node: agent_pb2.ImageChunk(data=data, reference=reference, node=node),
    st.binary(max_size=256), st.one_of(st.just(""), st.text(max_size=40)),
    st.one_of(st.sampled_from(["", NODE, "nope"]), names))


@fuzz_settings(scale=0.25)
@given(chunks=st.lists(image_chunks, max_size=3))
def test_import_image(world: World, chunks: list[agent_pb2.ImageChunk]) -> None:
    world.answer("ImportImage", lambda: _drain(world.api.ImportImage(iter(chunks), timeout=CALL_TIMEOUT)),
                 writes=False, proxied=True)


@fuzz_settings(scale=0.25)
@given(kind=kinds.filter(lambda k: k not in ("nodes", "pods")), namespace=namespaces)
def test_top(world: World, kind: str, namespace: str) -> None:
    """Only kinds Top refuses: an accepted one waits a second between two readings of the
    agents (scheduler/proxy.py's TOP_WINDOW); ``test_top_accepts_nodes_and_pods`` has those."""
    request = pb.TopRequest(kind=kind, namespace=namespace)
    world.answer("Top", lambda: world.api.Top(request, timeout=CALL_TIMEOUT), writes=False, proxied=True)


@pytest.mark.parametrize("kind", ["nodes", "pods"])
def test_top_accepts_nodes_and_pods(world: World, kind: str) -> None:
    code = world.answer("Top", lambda: world.api.Top(pb.TopRequest(kind=kind), timeout=CALL_TIMEOUT),
                        writes=False, proxied=True)
    assert code == grpc.StatusCode.OK  # the node's agent does not answer: it is left out


_METHODS = [(m.name, m.client_streaming, m.server_streaming)
            for m in pb.DESCRIPTOR.services_by_name["Cluster"].methods]


@fuzz_settings(scale=0.25)
@given(method=st.sampled_from(_METHODS), data=st.one_of(
    st.binary(max_size=64),
    # A valid tag and length with bytes that are not UTF-8: a string field that does not decode.
    st.builds(lambda field, raw: bytes([field << 3 | 2, len(raw)]) + raw,
              st.integers(1, 4), st.binary(min_size=1, max_size=16).filter(lambda b: not _utf8(b)))))
def test_raw_bytes(world: World, method: tuple[str, bool, bool], data: bytes) -> None:
    """Bytes that need not be a protobuf message at all, to every method."""
    name, client_streaming, server_streaming = method
    path = f"/orch.v1.Cluster/{name}"
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    channel = world.server.channel
    if client_streaming:
        def call() -> None:
            _drain(channel.stream_stream(path, **identity)(iter([data]), timeout=CALL_TIMEOUT))
    elif server_streaming:
        def call() -> None:
            responses = channel.unary_stream(path, **identity)(data, timeout=CALL_TIMEOUT)
            try:
                responses.initial_metadata()
                if responses.done() and responses.code() != grpc.StatusCode.OK:
                    raise responses
            finally:
                responses.cancel()
    else:
        def call() -> None:
            channel.unary_unary(path, **identity)(data, timeout=CALL_TIMEOUT)
    world.answer(name, call, writes=name in ("Apply", "Delete", "PatchNode"), proxied=client_streaming or
                 name == "PodLogs")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_the_world_is_what_the_targets_assume(world: World) -> None:
    """The fuzzed calls reach past the request checks: a bound pod's logs go to its (closed)
    agent, a loose pod has no node, and Snapshot sees a write."""
    before: Snapshot = world.server.snapshot()
    with pytest.raises(grpc.RpcError) as e:
        _drain(world.api.PodLogs(agent_pb2.LogsRequest(pod=BOUND_POD), timeout=CALL_TIMEOUT))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "cannot reach the agent" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        _drain(world.api.PodLogs(agent_pb2.LogsRequest(pod=LOOSE_POD), timeout=CALL_TIMEOUT))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert world.server.snapshot().revision == before.revision
    world.reset()
    assert world.server.snapshot().revision > before.revision
