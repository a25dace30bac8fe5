"""Hostile input gets a clear error and changes nothing: the limits, one test each, and
a regression test for every crash the fuzzers (tests/test_fuzz_*.py) found.

Three parts: orchctl reading manifests (no cluster: a refused manifest must be refused
before anything is sent, so these run against a closed port); the Cluster API on a
real gRPC server over a real etcd (tests/fuzzing.py), where every refusal is checked
to leave etcd's revision where it was; and what orchctl prints, which must carry no
terminal escape sequence from the cluster's data.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from apimachinery.errors import ValidationError
from apimachinery.meta import POD, now_rfc3339
from apimachinery.pb import cluster_pb2 as pb
from apimachinery.pb import cluster_pb2_grpc
from apimachinery.validation import MAX_DEPTH, MAX_GRACE_PERIOD_SECONDS, MAX_OBJECT_BYTES, validate
from cli import manifests, safe
from cli.main import _write_log, main
from scheduler.api import MAX_STATUS_WIRE_BYTES, ClusterService, add_cluster_service, guarded, status_message
from scheduler.events import new_event
from scheduler.store import MAX_OBJECTS_PER_TXN
from tests.etcd_fixture import EtcdServer, running_etcd
from tests.fuzzing import ApiServer, closed_port

REPO = Path(__file__).resolve().parent.parent


def refused(text: str, *, as_json: bool = False) -> str:
    with pytest.raises(manifests.ManifestError) as e:
        manifests.parse(text, "m.yaml", as_json=as_json)
    return str(e.value)


def objects(text: str) -> list[dict[str, Any]]:
    return [d.obj for d in manifests.parse(text, "m.yaml")]


# --- manifests: tags -------------------------------------------------------------------------------


def test_no_tag_constructs_anything(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for tag in ("!!python/object/apply:os.system", "!!python/object/new:os.system", "!!python/name:os.system"):
        message = refused(f"a: {tag} ['touch {marker}']\n")
        assert message.startswith("m.yaml document 1: invalid YAML at line 1, column 4: the tag !!python/")
    assert refused("a: !foo 1\n").endswith("the tag !foo is not allowed in a manifest: only strings, numbers, "
                                           "booleans, null, lists and mappings can be")
    assert not marker.exists()


def test_timestamps_and_binary_become_the_strings_written() -> None:
    """Regression: an unquoted timestamp became a datetime, and orchctl apply crashed in
    json.dumps with a traceback (TypeError: Object of type datetime is not JSON serializable)."""
    text = "t: 2024-01-31T12:00:00Z\nd: 2024-01-31\ne: !!timestamp 2024-01-31 12:00:00\nb: !!binary |\n  aGVs\n  bG8=\n"
    assert objects(text) == [{"t": "2024-01-31T12:00:00Z", "d": "2024-01-31", "e": "2024-01-31 12:00:00",
                              "b": "aGVsbG8="}]
    assert base64.b64decode(objects(text)[0]["b"]) == b"hello"
    assert "a !!binary value must be base64" in refused("b: !!binary not*base64\n")


@pytest.mark.parametrize("text", ["a: !!set {x, y}\n", "a: !!omap [{x: 1}]\n", "a: !!pairs [{x: 1}]\n"])
def test_collections_json_cannot_hold_are_refused(text: str) -> None:
    """Regression: !!set became a Python set (and !!binary bytes): a traceback in json.dumps."""
    assert "is not allowed in a manifest: JSON has no such value" in refused(text)


@pytest.mark.parametrize(("text", "why"), [
    ("a: !!int x\n", '"x" is not an integer'),
    ("a: !!int ''\n", '"" is not an integer'),
    ("a: !!float x\n", '"x" is not a number'),
    ("a: !!bool maybe\n", '"maybe" is not a boolean'),
])
def test_a_tag_on_a_value_it_does_not_fit(text: str, why: str) -> None:
    """Regression (found by the fuzzer, and in PyYAML's own safe_load): ValueError,
    IndexError and KeyError escaped as tracebacks."""
    assert why in refused(text)


# --- manifests: keys and numbers -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "why"), [
    ("1: x\n", "mapping keys must be strings, found \"1\", which YAML reads as an integer; quote it"),
    ("on: x\n", "mapping keys must be strings, found \"on\", which YAML reads as a boolean; quote it"),
    ("~: x\n", "which YAML reads as null"),
    ("? [a]\n: x\n", "mapping keys must be strings, found a list or a mapping"),
    ("a: 1\nb: 2\na: 3\n", 'line 3, column 1: duplicate key "a" in one mapping (first at line 1)'),
])
def test_keys_must_be_strings_and_unique(text: str, why: str) -> None:
    """Regression: ``on:`` became the key "true", ``1:`` the key "1", and of two equal keys
    the last won, all without a word."""
    assert why in refused(text)


def test_a_merge_key_may_be_overridden() -> None:
    assert objects("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n") == [{"base": {"x": 1, "y": 2},
                                                                        "d": {"x": 3, "y": 2}}]


@pytest.mark.parametrize(("value", "why"), [
    ("1" + "0" * 5000, "integer out of range"),  # regression: ValueError (4300-digit limit) escaped
    ("9223372036854775808", "integer out of range"),
    ("0x" + "f" * 5000, "integer out of range"),
    (".nan", '".nan" is not a number JSON can hold'),  # regression: sent as NaN, which is no JSON
    ("-.inf", '"-.inf" is not a number JSON can hold'),
    ("1.0e+400", '"1.0e+400" is not a number JSON can hold'),
])
def test_numbers_must_fit_in_json(value: str, why: str) -> None:
    assert why in refused(f"a: {value}\n")


def test_the_largest_numbers_json_holds_are_kept() -> None:
    assert objects("a: 9223372036854775807\nb: -9223372036854775808\nc: 1.5e+300\n") == [
        {"a": 2**63 - 1, "b": -(2**63), "c": 1.5e300}]


# --- manifests: depth, aliases, size ---------------------------------------------------------------


def test_real_manifests_are_far_from_the_depth_limit() -> None:
    def depth(v: Any) -> int:
        children = list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else None
        return 0 if children is None else 1 + max(map(depth, children), default=0)

    docs = manifests.load([str(REPO / "examples")])
    assert docs and max(depth(d.obj) for d in docs) <= 10 < MAX_DEPTH


@pytest.mark.parametrize("opener,closer", [("[", "]"), ("{a: ", "}"), ("- ", "")])
def test_nesting_is_refused_past_the_limit(opener: str, closer: str) -> None:
    """Regression: 500 levels raised RecursionError out of PyYAML's composer."""
    assert len(objects("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")) == 1
    message = refused(opener * (MAX_DEPTH + 1) + closer * (MAX_DEPTH + 1))
    assert message.endswith(f"nested deeper than {MAX_DEPTH} levels")


def test_a_nesting_bomb_as_big_as_allowed_is_refused_at_once() -> None:
    started = time.monotonic()
    assert refused("[" * (manifests.MAX_MANIFEST_BYTES - 1)).endswith(f"nested deeper than {MAX_DEPTH} levels")
    assert time.monotonic() - started < 5


def test_billion_laughs_is_refused_at_once() -> None:
    """Regression: safe_load shares aliased nodes, and json.dumps then wrote out all 10⁹."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]
    started = time.monotonic()
    message = refused("\n".join(lines) + "\n")
    assert time.monotonic() - started < 1
    assert 'YAML aliases expand this document by more than 100000 nodes (a "billion laughs")' in message


def test_a_cyclic_alias_is_refused() -> None:
    """Regression: ``&a [*a]`` made a list that contains itself: ValueError in json.dumps."""
    assert "the alias *a is inside the node it refers to" in refused("a: &a [1, *a]\n")


def test_anchors_that_share_a_little_are_fine() -> None:
    env = "env: &env [{name: A, value: '1'}, {name: B, value: '2'}]\n"
    docs = objects(env + "c1: {env: *env}\nc2: {env: *env}\n")
    assert docs[0]["c1"]["env"] == docs[0]["c2"]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]


def test_more_than_the_limit_is_refused_from_a_file_stdin_a_directory_and_dev_zero(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * manifests.MAX_MANIFEST_BYTES + b"\n")
    with pytest.raises(manifests.ManifestError, match=r"big\.yaml: more than 4 MiB of manifests, the most"):
        manifests.load([str(big)])
    stdin = io.TextIOWrapper(io.BytesIO(big.read_bytes()), encoding="utf-8")
    with pytest.raises(manifests.ManifestError, match=r"<stdin>: more than 4 MiB"):
        manifests.load(["-"], stdin=stdin)
    d = tmp_path / "dir"
    d.mkdir()
    half = b"# " + b"x" * (manifests.MAX_MANIFEST_BYTES // 2) + b"\n"
    (d / "a.yaml").write_bytes(half)
    (d / "b.yaml").write_bytes(half)
    with pytest.raises(manifests.ManifestError, match=r"b\.yaml: more than 4 MiB of manifests together with"):
        manifests.load([str(d)])
    started = time.monotonic()
    with pytest.raises(manifests.ManifestError, match="more than 4 MiB"):  # regression: read for ever
        manifests.load(["/dev/zero"])
    assert time.monotonic() - started < 5


def test_text_that_is_not_utf8_or_has_control_characters(tmp_path: Path) -> None:
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(manifests.ManifestError, match=r"bin\.yaml: not a text file: invalid start byte at byte 3"):
        manifests.load([str(f)])
    assert "unacceptable character #x001b" in refused("a: b\x1bc\n")
    assert objects('a: "\\e[31m"\n') == [{"a": "\x1b[31m"}]  # escaped in YAML it is data: printed escaped
    assert "lone UTF-16 surrogate" in refused('a: "\\ud800"\n')


@pytest.mark.parametrize(("text", "why"), [
    ('{"a": 1, "a": 2}', 'duplicate key "a" in one JSON object'),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": ' + "9" * 5000 + "}", "out of range"),
    ("[" * 5000 + "]" * 5000, f"nested deeper than {MAX_DEPTH} levels"),
    ('{"a": ' + "[" * 100 + "]" * 100 + "}", f"a{'[0]' * 63}: nested deeper than {MAX_DEPTH} levels"),
])
def test_json_files_have_the_same_limits(text: str, why: str) -> None:
    assert why in refused(text, as_json=True)


def test_orchctl_refuses_a_hostile_manifest_before_sending_anything(tmp_path: Path) -> None:
    """Against a closed port: a manifest refused locally says why; one that reads (an
    unquoted timestamp, which used to crash) gets as far as the connection."""
    server = f"127.0.0.1:{closed_port()}"
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [" + ", ".join(["x"] * 10) + "]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)))
    fine = tmp_path / "fine.yaml"
    fine.write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  creationTimestamp: 2024-01-31T12:00:00Z\n"
                    "spec:\n  containers: [{name: c, image: host}]\n")
    for path, expected in ((bomb, f"error: {bomb} document 1: invalid YAML at line"),
                           (fine, "error: cannot reach the cluster")):
        stderr = io.StringIO()
        with redirect_stderr(stderr), redirect_stdout(io.StringIO()):
            code = main(["--server", server, "--request-timeout", "5", "apply", "-f", str(path)])
        assert code == 1
        assert stderr.getvalue().startswith(expected), stderr.getvalue()


def test_validation_refuses_a_grace_period_no_deadline_can_hold() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "host"}], "terminationGracePeriodSeconds": 2**62}}
    with pytest.raises(ValidationError, match="spec.terminationGracePeriodSeconds: must be between 0 and 2147483647"):
        validate(pod)


# --- the Cluster API --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with running_etcd() as server:
        yield server


@pytest.fixture(scope="module")
def api(etcd: EtcdServer) -> Iterator[ApiServer]:
    server = ApiServer(etcd, etcd.prefix())
    try:
        server.put_node("node-a", agent_port=closed_port())
        server.put_pod("bound", node="node-a")
        yield server
    finally:
        server.close()


def pod_json(name: str, *, command: list[str] | None = None, **spec: Any) -> str:
    container: dict[str, Any] = {"name": "c", "image": "host"}
    if command is not None:
        container["command"] = command
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"containers": [container], **spec}})


def refusal(api: ApiServer, method: str, request: Any, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
            timeout: float = 10) -> str:
    """Call ``method``, expect ``code``, check etcd did not change; the status message."""
    before = api.revision()
    with pytest.raises(grpc.RpcError) as e:
        getattr(api.api, method)(request, timeout=timeout)
    assert e.value.code() == code, e.value.details()
    assert api.revision() == before, "a refused request changed etcd"
    return str(e.value.details())


def test_a_lone_surrogate_is_refused_at_once(api: ApiServer) -> None:
    """Regression (found by the fuzzer): the error quoting it could not be encoded, the call
    never ended, and the client waited for its deadline."""
    started = time.monotonic()
    message = refusal(api, "Apply", pb.ApplyRequest(objects_json=['{"\\udfff": 1}']), timeout=5)
    assert message == "document 0: a key contains a lone UTF-16 surrogate, which is not a Unicode character"
    message = refusal(api, "PatchNode", pb.PatchNodeRequest(name="node-a", spec_patch_json='{"x": "\\ud800"}'),
                      timeout=5)
    assert message == "spec: x: contains a lone UTF-16 surrogate, which is not a Unicode character"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("document", "why"), [
    ('{"x": ' + "9" * 5000 + "}", "out of range"),  # regression: UNKNOWN, ValueError (4300 digits)
    ("[" * 100000 + "]" * 100000, f"nested deeper than {MAX_DEPTH} levels"),  # regression: UNKNOWN, RecursionError
    ('{"x": ' + "[" * 100 + "]" * 100 + "}", f"nested deeper than {MAX_DEPTH} levels"),
    ('{"x": NaN}', "NaN is not a JSON number"),
    ('{"x": 1e400}', "out of range"),
    ('{"kind": "Pod", "kind": "Deployment"}', 'duplicate key "kind" in one JSON object'),
    ("{", "not JSON: Expecting property name"),
])
def test_json_is_parsed_strictly(api: ApiServer, document: str, why: str) -> None:
    message = refusal(api, "Apply", pb.ApplyRequest(objects_json=[pod_json("ok"), document]))
    assert message.startswith("document 1: ") and why in message
    message = refusal(api, "PatchNode", pb.PatchNodeRequest(name="node-a", spec_patch_json=document))
    assert message.startswith("spec: ") and why in message


def test_an_apply_is_checked_whole_before_anything_is_written(api: ApiServer) -> None:
    message = refusal(api, "Apply", pb.ApplyRequest(objects_json=[pod_json("whole-1"), pod_json("whole-2"),
                                                                  pod_json("Whole-3")]))
    assert message.startswith("document 2 (Pod/Whole-3): metadata.name:")


def test_more_objects_than_one_transaction_takes(api: ApiServer) -> None:
    """Regression: UNKNOWN, the store's "at most 60 objects can be written at once"."""
    many = [pod_json(f"many-{i}") for i in range(MAX_OBJECTS_PER_TXN + 1)]
    message = refusal(api, "Apply", pb.ApplyRequest(objects_json=many))
    assert message.startswith(f"objects: {MAX_OBJECTS_PER_TXN + 1} objects in one apply; the most is "
                              f"{MAX_OBJECTS_PER_TXN}")


def test_the_largest_object_etcd_takes_is_accepted_and_one_byte_more_refused(api: ApiServer) -> None:
    """Regression: past etcd's request limit the apply reached etcd, which refused it, and the
    client heard UNAVAILABLE ("etcd error: request is too large") and tried another scheduler.
    The limit is found by dry runs, then written for real: etcd must take what we let through."""
    def dry(n: int) -> bool:
        try:
            api.api.Apply(pb.ApplyRequest(objects_json=[pod_json("huge", command=["x" * n])], dry_run=True),
                          timeout=10)
            return True
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "is too large" in e.details(), e.details()
            return False

    # Fits; does not, as stored (with its defaults, uid and status), though it is under the limit as sent.
    low, high = MAX_OBJECT_BYTES - 8192, MAX_OBJECT_BYTES - 200
    assert dry(low) and not dry(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if dry(mid) else (low, mid)
    message = refusal(api, "Apply", pb.ApplyRequest(objects_json=[pod_json("huge", command=["x" * high])]))
    assert message.startswith("the object is too large: ") and "(etcd's request limit)" in message
    reply = api.api.Apply(pb.ApplyRequest(objects_json=[pod_json("huge", command=["x" * low])]), timeout=10)
    assert reply.results[0].action == "created"
    api.api.Delete(pb.DeleteRequest(kind="Pod", name="huge"), timeout=10)
    # Several that fit one by one, but not together in one transaction.
    several = [pod_json(f"part-{i}", command=["x" * 400_000]) for i in range(4)]
    message = refusal(api, "Apply", pb.ApplyRequest(objects_json=several))
    assert message.startswith("the objects are too large to write together:")


def test_a_node_patched_past_the_limit_is_refused(api: ApiServer) -> None:
    """A patch under the limit that makes the Node (with its status) larger than etcd takes."""
    one = len(json.dumps({"key": "example.com/taint-000000", "effect": "NoSchedule"}, separators=(",", ":")))
    count = (MAX_OBJECT_BYTES - 200) // (one + 1)
    patch = json.dumps({"taints": [{"key": f"example.com/taint-{i:06d}", "effect": "NoSchedule"}
                                   for i in range(count)]}, separators=(",", ":"))
    assert MAX_OBJECT_BYTES - 300 < len(patch) < MAX_OBJECT_BYTES
    message = refusal(api, "PatchNode", pb.PatchNodeRequest(name="node-a", spec_patch_json=patch))
    assert message.startswith("the object is too large")


def test_a_status_message_always_fits_in_the_trailer(api: ApiServer) -> None:
    """Regression: 5000 unknown fields made a 230 KB message; the client refused the trailer
    (RESOURCE_EXHAUSTED, "received metadata size exceeds hard limit") and the error was lost."""
    wrong = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w"},
                        "spec": {f"field{i}": i for i in range(5000)}})
    message = refusal(api, "Apply", pb.ApplyRequest(objects_json=[wrong]))
    assert message.startswith("document 0 (Pod/w): spec.field0: unknown field; ")
    assert message.endswith(" more problems") and len(message.encode()) <= MAX_STATUS_WIRE_BYTES
    message = refusal(api, "Get", pb.GetRequest(kind="\u00e9" * 100_000, name="x"), grpc.StatusCode.NOT_FOUND)
    assert message.startswith('the server doesn\'t have a resource type "éé') and len(message) < 200
    assert status_message("é" * 10_000).endswith(" ... (message truncated)")
    assert status_message("\ud800") == "\\ud800"


@pytest.mark.parametrize(("method", "request_", "why"), [
    ("Get", pb.GetRequest(kind="Pod", name="a/b"), 'name: "a/b" must consist of lower case'),
    ("Get", pb.GetRequest(kind="Pod", name=""), "name: must not be empty"),
    ("Get", pb.GetRequest(kind="Pod", name="x" * 254), "name: \"xxx"),
    ("Get", pb.GetRequest(kind="", name="x"), "kind: is required"),
    ("Get", pb.GetRequest(kind="Pod", namespace="Team-A", name="x"), 'namespace: "Team-A" must consist of'),
    ("List", pb.ListRequest(kind="Pod", label_selector="x" * 20_000), "labelSelector: is 20000 characters long"),
    ("List", pb.ListRequest(kind="Pod", label_selector="a in ("), "labelSelector: invalid label selector"),
    ("Delete", pb.DeleteRequest(kind="Pod", name="bound", grace_period_seconds=-1),
     "gracePeriodSeconds: must be 0 or more"),
    ("PatchNode", pb.PatchNodeRequest(name="../x", spec_patch_json="{}"), 'name: "../x" must consist of'),
])
def test_request_fields_are_checked(api: ApiServer, method: str, request_: Any, why: str) -> None:
    assert why in refusal(api, method, request_)


def test_a_grace_period_past_year_9999_is_refused(api: ApiServer) -> None:
    """Regression: a bound pod deleted with gracePeriodSeconds 2^63-1 crashed the deadline's
    arithmetic (OverflowError) and the client heard UNKNOWN."""
    message = refusal(api, "Delete", pb.DeleteRequest(kind="Pod", name="bound", grace_period_seconds=2**63 - 1))
    assert message == f"gracePeriodSeconds: must be at most {MAX_GRACE_PERIOD_SECONDS}, got {2**63 - 1}"
    deleted = json.loads(api.api.Delete(pb.DeleteRequest(kind="Pod", name="bound",
                                                         grace_period_seconds=MAX_GRACE_PERIOD_SECONDS),
                                        timeout=10).object_json)
    assert deleted["metadata"]["deletionGracePeriodSeconds"] == MAX_GRACE_PERIOD_SECONDS
    api.put_pod("bound", node="node-a")


def test_watch_resource_versions(api: ApiServer) -> None:
    """Regression: a resourceVersion of 2^63-1 overflowed etcd's int64 (start + 1) and the
    watch ended UNKNOWN. Too large is OUT_OF_RANGE now, which clients answer by listing again."""
    def opened(rv: int) -> Any:
        call = api.api.Watch(pb.WatchRequest(kind="Pod", resource_version=rv), timeout=10)
        call.initial_metadata()
        return call

    call = opened(2**63 - 1)
    assert call.code() == grpc.StatusCode.OUT_OF_RANGE and call.details().startswith("too large resource version")
    call = opened(-1)
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT and call.details() == "resourceVersion: must be 0 or more, got -1"
    call = opened(api.revision())  # accepted: its headers came, and it goes on
    try:
        assert not call.done()
        api.put_pod("watched")
        event = next(call)
        assert event.type == "ADDED" and json.loads(event.object_json)["metadata"]["name"] == "watched"
    finally:
        call.cancel()


def test_a_request_that_does_not_decode_is_invalid_argument(api: ApiServer) -> None:
    """Regression (found by the fuzzer): gRPC answered UNKNOWN, with the parser's exception."""
    bad_utf8 = bytes([0x0A, 2, 0xFF, 0xFE])  # field 1 (a string), two bytes that are no UTF-8
    for name in ("Get", "List", "Delete", "Apply", "PatchNode"):
        call = api.channel.unary_unary(f"/orch.v1.Cluster/{name}", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            call(bad_utf8, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith("the request is not a valid orch.v1.")
        assert "String field had bad UTF-8" in e.value.details()
    stream = api.channel.stream_stream("/orch.v1.Cluster/PodExec", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        list(stream(iter([b"\xff"]), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_unforeseen_exception_is_internal_and_tells_no_internals(api: ApiServer) -> None:
    class Broken(ClusterService):
        async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.ObjectResponse:
            async def fail() -> Any:
                raise KeyError("a secret of the implementation")
            return await guarded(context, fail(), "Get")

    async def serve() -> tuple[grpc.aio.Server, int]:  # on the API server's loop, beside it
        server = grpc.aio.server()
        add_cluster_service(server, Broken(api.service.registry))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = api.run(serve())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as e:
                cluster_pb2_grpc.ClusterStub(channel).Get(pb.GetRequest(kind="Pod", name="x"), timeout=10)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert e.value.details() == "internal error in the scheduler: its log has the details"
    finally:
        api.run(server.stop(0))


# --- what orchctl prints ---------------------------------------------------------------------------

HOSTILE = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\rfake\x9b31m\u202eevil\x7f"


def test_escape_terminal() -> None:
    assert safe.escape_terminal("plain\ttext\nand more é ✓") == "plain\ttext\nand more é ✓"
    assert safe.escape_terminal(HOSTILE) == ("\\x1b]52;c;cm0gLXJmIH4=\\x07\\x1b[2J\\x0dfake\\u009b31m\\u202eevil"
                                             "\\u007f")
    assert safe.escape_terminal("a\r\nb\rc", keep_crlf=True) == "a\r\nb\\x0dc"


def test_log_lines_are_escaped_on_a_terminal_and_passed_through_elsewhere() -> None:
    escaper = safe.LogEscaper()
    chunks = [b"caf\xc3", b"\xa9 \x1b[31mred\r", b"\n\xff\x9b", b"end\r"]
    shown = "".join(escaper.feed(c) for c in chunks) + escaper.end()
    assert shown == "café \\x1b[31mred\r\n\\xff\\x9bend\\x0d"
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            _write_log(tty, b"\x1b[2J", safe.LogEscaper())
        assert os.read(master, 100) == b"\\x1b[2J"
    finally:
        os.close(master)
        os.close(slave)
    raw = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    _write_log(raw, b"\x1b[2J\xff", None)
    assert raw.buffer.getvalue() == b"\x1b[2J\xff"  # a pipe or a file gets the bytes as they are


def run(api: ApiServer, *args: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(["--server", api.address, "--insecure", *args])  # ApiServer is plaintext
    err = stderr.getvalue()
    # orchctl's warning about --insecure comes first when it connects; what is tested follows it.
    if err.startswith("warning: --insecure:"):
        err = err.split("\n", 1)[1]
    return code, stdout.getvalue(), err


def no_raw_controls(text: str) -> bool:
    return safe.escape_terminal(text) == text


@pytest.fixture(scope="module")
def hostile_pod(api: ApiServer) -> str:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "hostile", "annotations": {"note": HOSTILE, "nel": "a\x85b\u2028c"}},
           "spec": {"containers": [{"name": "c", "image": "host"}]}}
    api.api.Apply(pb.ApplyRequest(objects_json=[json.dumps(pod)]), timeout=10)

    async def record() -> None:
        involved = await api.store.get(POD, "default", "hostile")
        await api.store.create(new_event(involved, "Warning", "Hostile", HOSTILE, "fuzz", now_rfc3339()))

    api.run(record())
    return "hostile"


def test_tables_and_describe_show_controls_escaped(api: ApiServer, hostile_pod: str) -> None:
    for args in (["describe", "pod", hostile_pod], ["get", "events"], ["get", "pods"]):
        code, out, err = run(api, *args)
        assert code == 0, err
        assert no_raw_controls(out), out
    _, out, _ = run(api, "describe", "pod", hostile_pod)
    assert "\\x1b]52;c;cm0gLXJmIH4=\\x07" in out and "\\u202eevil" in out


def test_json_and_yaml_output_is_escaped_and_reads_back_the_same(api: ApiServer, hostile_pod: str) -> None:
    stored = json.loads(api.api.Get(pb.GetRequest(kind="Pod", name=hostile_pod), timeout=10).object_json)
    _, out, _ = run(api, "get", "pod", hostile_pod, "-o", "json")
    assert no_raw_controls(out) and json.loads(out)["metadata"]["annotations"] == stored["metadata"]["annotations"]
    _, out, _ = run(api, "get", "pod", hostile_pod, "-o", "yaml")
    assert no_raw_controls(out) and yaml.safe_load(out)["metadata"]["annotations"] == stored["metadata"]["annotations"]


def test_error_messages_are_escaped(api: ApiServer) -> None:
    code, _, err = run(api, "get", "pod", "\x1b[2Jx")  # quoted by the server as JSON
    assert code == 1 and err.startswith('error: name: "\\u001b[2Jx" must consist of') and no_raw_controls(err)
    code, _, err = run(api, "get", "\u009b31mpods")  # said raw by orchctl itself
    assert code != 0 and "\\u009b31mpods" in err and no_raw_controls(err)
