"""Fuzzing orchctl's manifest reading (cli/manifests.py) and the validator
(apimachinery/validation.py) with hypothesis.

What any input must give: documents, or one of our clear errors (``ManifestError``,
``ValidationError``, and for the bare JSON reader ``JSONDecodeError``/``DocumentError``),
never another exception and never a hang (``time_limit`` on top of hypothesis' own
deadline, which only judges an example once it returns). And what comes out must be
sendable: every document ``parse`` returns is JSON that ``json.dumps`` writes with
``allow_nan=False`` and that ``document_problem`` finds nothing wrong with.

Inputs: arbitrary text; a "YAML soup" of the tokens that make YAML hostile (anchors,
aliases, tags, flow brackets, merge keys, odd numbers); arbitrary bytes as a file;
JSON-shaped values written as YAML and as JSON, which must read back unchanged; and,
for ``validate``, arbitrary JSON values and objects close to real ones.

Sizes: ``HYPOTHESIS_PROFILE=ci`` (default) or ``long``; see tests/fuzzing.py.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apimachinery.errors import ValidationError
from apimachinery.validation import DocumentError, document_problem, loads_json, validate
from cli import manifests, safe
from cli.main import main
from tests.fuzzing import closed_port, fuzz_settings, time_limit

pytestmark = pytest.mark.fuzz

HANG_SECONDS = 10


def _check_documents(docs: list[manifests.Document]) -> None:
    for doc in docs:
        assert isinstance(doc.obj, dict)
        assert document_problem(doc.obj) is None
        json.dumps(doc.obj, allow_nan=False)  # what the client will do with it


def parse_or_refuse(text: str, *, as_json: bool = False) -> list[manifests.Document] | None:
    """The documents in ``text``, or None when it is refused with a ManifestError."""
    with time_limit(HANG_SECONDS):
        try:
            docs = manifests.parse(text, "fuzz.yaml", as_json=as_json)
        except manifests.ManifestError as e:
            assert str(e).startswith("fuzz.yaml"), f"an error that does not say where: {e}"
            return None
    _check_documents(docs)
    return docs


# --- arbitrary text -------------------------------------------------------------------------


@fuzz_settings()
@given(st.text())
def test_any_text_gives_documents_or_a_manifest_error(text: str) -> None:
    parse_or_refuse(text)


@fuzz_settings(scale=0.5)
@given(st.text())
def test_any_text_as_json_gives_a_document_or_a_manifest_error(text: str) -> None:
    parse_or_refuse(text, as_json=True)


_TOKENS = [
    "&a ", "&b ", "*a", "*b", "<<: *a", "<<: [*a, *b]", "!!python/object/apply:os.system ['true']", "!!binary ",
    "!!set ", "!!omap ", "!!pairs ", "!!timestamp ", "!!str ", "!!int ", "!!float ", "!!map ", "!!seq ", "!foo ",
    "! ", "[", "]", "{", "}", ", ", ": ", "- ", "? ", "---", "...", "|", ">-", "#", "'", '"', "\\e", "\\ud800",
    "\\x9b", "key", "name", "kind: Pod", "apiVersion: v1", "metadata:", "spec:", "on", "yes", "~", "null", "1",
    "-1", "0x1f", "0o17", "0b101", "1:30", "1_000", "9" * 30, "1e400", ".nan", ".inf", "-.inf", "3.14",
    "2024-01-31T12:00:00Z", "2024-01-31", "aGVsbG8=", "%YAML 1.1", "%TAG ! tag:x,2024:", "\t", "\ufeff", "\u202e",
]
_SEPARATORS = ["", " ", "\n", "\n  ", "\n    ", "\n- ", ": ", ", "]

yaml_soup = st.lists(st.tuples(st.sampled_from(_TOKENS), st.sampled_from(_SEPARATORS)), max_size=40).map(
    lambda parts: "".join(token + sep for token, sep in parts))


@fuzz_settings()
@given(yaml_soup)
def test_yaml_soup_gives_documents_or_a_manifest_error(text: str) -> None:
    parse_or_refuse(text)


@fuzz_settings(scale=0.1)
@given(st.sampled_from(["[", "{a: ", "- ", "[a, {b: "]), st.integers(1, 300), st.sampled_from(["", "x", "]", "}"]))
def test_nesting_of_any_depth_is_refused_fast(opener: str, depth: int, tail: str) -> None:
    docs = parse_or_refuse(opener * depth + tail)
    if docs is not None:
        assert depth <= 64


@fuzz_settings(scale=0.1)
@given(st.integers(1, 300))
def test_block_nesting_of_any_depth_is_refused_fast(depth: int) -> None:
    docs = parse_or_refuse("".join("  " * i + "a:\n" for i in range(depth)) + "  " * depth + "x\n")
    if docs is not None:
        assert depth <= 64


@fuzz_settings(scale=0.25)
@given(st.integers(1, 12), st.integers(1, 12))
def test_alias_bombs_of_any_shape_are_refused_fast(levels: int, fanout: int) -> None:
    lines = ['l0: &l0 ["lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, levels + 1)]
    docs = parse_or_refuse("\n".join(lines) + "\n")
    if docs is not None:
        assert fanout ** levels <= 200_000  # what was read expands to no more than the limit allows


# --- arbitrary bytes, as files and on stdin ---------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-manifests")


@fuzz_settings(scale=0.5)
@given(data=st.one_of(st.binary(), yaml_soup.map(lambda t: t.encode("utf-8", "surrogatepass"))),
       suffix=st.sampled_from([".yaml", ".json", ".txt"]))
def test_any_bytes_in_a_file_or_on_stdin(fuzz_dir: Path, data: bytes, suffix: str) -> None:
    path = fuzz_dir / f"m{suffix}"
    path.write_bytes(data)
    for paths, stdin in (([str(path)], None), (["-"], io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))):
        with time_limit(HANG_SECONDS):
            try:
                docs = manifests.load(paths, stdin=stdin)
            except manifests.ManifestError:
                continue
        _check_documents(docs)


# --- JSON-shaped values read back unchanged ------------------------------------------------------

# Strings without lone surrogates (no UTF-8 form) and keys that are not YAML's merge key.
_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | _texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_texts.filter(lambda k: k != "<<"), inner,
                                                                 max_size=4),
    max_leaves=25,
)
json_documents = st.dictionaries(_texts.filter(lambda k: k not in ("<<", "kind")), json_like, max_size=5)


def _same(a: Any, b: Any) -> bool:
    """Equal, with -0.0 == 0.0 and 1.0 == 1 as JSON has them."""
    if isinstance(a, float) and isinstance(b, float) and math.isfinite(a):
        return a == b
    return bool(a == b)


@fuzz_settings(scale=0.25)
@given(json_documents)
def test_json_shaped_documents_read_back_unchanged(doc: dict[str, Any]) -> None:
    docs = parse_or_refuse(safe.to_yaml(doc))  # what orchctl get -o yaml writes
    assert docs is not None and len(docs) == 1 and _same(docs[0].obj, doc), (docs, doc)
    docs = parse_or_refuse(json.dumps(doc, ensure_ascii=False), as_json=True)
    assert docs is not None and len(docs) == 1 and _same(docs[0].obj, doc)


# --- the bare JSON reader and the validator --------------------------------------------------------


@fuzz_settings(scale=0.5)
@given(st.one_of(st.text(), st.builds(json.dumps, json_like), st.sampled_from(
    ['{"a": 1, "a": 2}', "NaN", "[" * 5000, "9" * 5000, '"\\ud800"', '{"a": -Infinity}'])))
def test_loads_json_gives_json_or_a_clear_error(text: str) -> None:
    with time_limit(HANG_SECONDS):
        try:
            value = loads_json(text)
        except (json.JSONDecodeError, DocumentError):
            return
        document_problem(value)


any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner, max_size=4),
    max_leaves=30,
)

_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=12),
                  st.sampled_from(["", "web", "500m", "64Mi", "1e3", "Always", "TCP", "In", "Exists", "NoExecute",
                                   "25%", "-1", "host", "a/b", "app", "0.5"]))
_container = st.fixed_dictionaries({"name": st.sampled_from(["main", "side", "Main", ""]),
                                    "image": st.sampled_from(["host", "busybox:1.36", "", "a b"])},
                                   optional={"resources": st.fixed_dictionaries({}, optional={
                                       "limits": st.dictionaries(st.sampled_from(["cpu", "memory", "gpu"]), _leaf),
                                       "requests": st.dictionaries(st.sampled_from(["cpu", "memory"]), _leaf)}),
                                       "ports": st.lists(st.fixed_dictionaries({"containerPort": _leaf}, optional={
                                           "hostPort": _leaf, "name": _leaf, "protocol": _leaf}), max_size=2),
                                       "command": st.lists(_leaf, max_size=2), "env": any_json,
                                       "livenessProbe": any_json, "securityContext": any_json})
_pod_spec = st.fixed_dictionaries({"containers": st.lists(_container, max_size=2)}, optional={
    "restartPolicy": _leaf, "nodeSelector": st.dictionaries(st.text(max_size=10), _leaf, max_size=2),
    "tolerations": st.lists(st.dictionaries(st.sampled_from(["key", "operator", "value", "effect",
                                                             "tolerationSeconds"]), _leaf), max_size=2),
    "affinity": any_json, "topologySpreadConstraints": any_json, "terminationGracePeriodSeconds": _leaf,
    "priority": _leaf})
plausible = st.one_of(
    st.fixed_dictionaries({"apiVersion": st.sampled_from(["v1", "apps/v1"]), "kind": st.just("Pod"),
                           "metadata": st.fixed_dictionaries({"name": st.sampled_from(["web", "Web", ""])},
                                                             optional={"labels": any_json,
                                                                       "annotations": any_json}),
                           "spec": _pod_spec}),
    st.fixed_dictionaries({"apiVersion": st.just("apps/v1"), "kind": st.just("Deployment"),
                           "metadata": st.just({"name": "web"}),
                           "spec": st.fixed_dictionaries({"selector": st.one_of(st.just({"matchLabels": {"app": "w"}}),
                                                                                 any_json),
                                                          "template": st.fixed_dictionaries({
                                                              "metadata": st.just({"labels": {"app": "w"}}),
                                                              "spec": _pod_spec})},
                                                         optional={"replicas": _leaf, "strategy": any_json})}),
    st.fixed_dictionaries({"apiVersion": st.just("scheduling.k8s.io/v1"), "kind": st.just("PriorityClass"),
                           "metadata": st.just({"name": "high"}), "value": _leaf},
                          optional={"globalDefault": _leaf, "preemptionPolicy": _leaf}),
)


@fuzz_settings(scale=0.5)
@given(st.one_of(any_json, plausible))
def test_validate_gives_an_object_or_a_validation_error(obj: Any) -> None:
    with time_limit(HANG_SECONDS):
        try:
            out = validate(obj)
        except ValidationError as e:
            assert e.errors and all(fe.message for fe in e.errors)
            return
    json.dumps(out, allow_nan=False)
    assert validate(out) == out  # a valid object is its own normal form


# --- the command line end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_server() -> Iterator[str]:
    yield f"127.0.0.1:{closed_port()}"


@fuzz_settings(scale=0.1)
@given(text=st.one_of(yaml_soup, st.text(max_size=200)))
def test_orchctl_apply_answers_any_file_with_an_error_line(fuzz_dir: Path, no_server: str, text: str) -> None:
    """``orchctl apply -f`` exits 1 with one ``error:`` line, never a traceback: the manifest's
    own error, or (for one that reads) that the cluster, here a closed port, cannot be reached."""
    path = fuzz_dir / "apply.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    stdout, stderr = io.StringIO(), io.StringIO()
    with time_limit(HANG_SECONDS), redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(["--server", no_server, "--request-timeout", "5", "apply", "-f", str(path)])
    assert code == 1, (code, stderr.getvalue())
    assert stderr.getvalue().startswith("error: "), stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()
    assert "\x1b" not in stderr.getvalue()
