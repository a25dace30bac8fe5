"""Reading manifests for ``apply -f`` and ``delete -f``: files, directories and stdin.

Every document read keeps where it came from (``Document.source`` and its 1-based
position ``Document.index + 1`` in that source), so that an error about the third
object of a request can be reported as ``web.yaml document 2`` — the place the
user has to edit.

**A manifest is data, and may come from anywhere**, so reading one is bounded and
refuses, before anything is sent, with the document and the reason:

* more than ``MAX_MANIFEST_BYTES`` (4 MiB) from one command, counting every file,
  directory and stdin, read with a bound so ``-f /dev/zero`` ends at once. One apply is
  one etcd transaction of at most 1.5 MiB of JSON, so 4 MiB of YAML (comments and
  indentation included) is more than any apply can carry; and it bounds the time the
  pure-Python parser takes: about 2 s for 1 MiB of real manifests, 7.5 s for the worst
  kind (a MiB of one-character list items), so at most half a minute;
* text that is not UTF-8;
* nesting deeper than ``validation.MAX_DEPTH`` (64): counted while composing, so a
  ``[[[[…`` bomb stops at level 65 instead of exhausting Python's recursion;
* aliases that expand a document by more than ``MAX_ALIAS_NODES`` nodes, or more
  than it has itself (the "billion laughs": nine anchors of ten aliases are 10⁹
  nodes), and an alias to a node that contains it (a cycle JSON cannot hold);
* any tag but YAML's core ones: ``!!python/object`` and every other tag that could
  build something are refused, never constructed. ``!!timestamp`` (which also
  applies to an unquoted ``2024-01-31T12:00:00Z``) is kept as the string written,
  as kubectl reads it; ``!!binary`` as its base64 text (what a Secret's ``data``
  wants); ``!!set``, ``!!omap`` and ``!!pairs`` have no JSON form and are refused;
* mapping keys that are not strings (``80:``, or ``on:``, which YAML 1.1 reads as a
  boolean) and a key given twice in one mapping (kubectl's strict validation refuses
  it; a merge key ``<<`` may still be overridden, which is what it is for);
* numbers outside int64, ``.nan`` and ``.inf``, and everything else
  ``validation.document_problem`` checks; JSON files go through the same limits
  (``validation.loads_json``).

Parsing is PyYAML's pure-Python ``SafeLoader`` with a composer and constructor of our
own; libyaml's would be about ten times faster, but words its errors differently.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode

from apimachinery.validation import MAX_DEPTH, DocumentError, document_problem, loads_json

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"
STDIN_SOURCE = "<stdin>"

#: The most orchctl reads for one command, all sources together (see the module docstring).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

#: Aliases may add at most this many nodes to a document (or as many as it has itself,
#: if that is more): generous for anchors that share an env list or a pod template.
MAX_ALIAS_NODES = 100_000


class ManifestError(Exception):
    """A manifest cannot be read or is not a list of objects; the message says where."""


@dataclass(frozen=True, slots=True)
class Document:
    """One object read from a manifest.

    ``index`` is the 0-based position of the YAML document in ``source`` (empty
    documents count, so the number matches what the user sees between ``---``
    lines); ``item`` is the position inside a ``kind: List`` document, if any.
    """

    source: str
    index: int
    obj: dict[str, Any]
    item: int | None = None

    @property
    def where(self) -> str:
        """``web.yaml document 2`` (``… item 3`` for an item of a List)."""
        text = f"{self.source} document {self.index + 1}"
        return text if self.item is None else f"{text} item {self.item + 1}"


def load(paths: list[str], stdin: TextIO | None = None, *, recursive: bool = False) -> list[Document]:
    """Every object in ``paths`` (files, directories, ``-`` for stdin), in order."""
    docs: list[Document] = []
    used_stdin = False
    budget = _Budget()
    for raw in paths:
        if raw == STDIN:
            if used_stdin:
                raise ManifestError('"-" (stdin) can be given only once')
            used_stdin = True
            stream = sys.stdin if stdin is None else stdin
            docs.extend(parse(_read_stream(stream, budget), STDIN_SOURCE))
            continue
        path = Path(raw)
        if path.is_dir():
            for f in _manifest_files(path, recursive):
                docs.extend(_load_file(f, budget))
        elif path.exists():
            # A file named explicitly is read whatever its suffix, as kubectl does.
            docs.extend(_load_file(path, budget))
        else:
            raise ManifestError(f'the path "{raw}" does not exist')
    return docs


class _Budget:
    """What is left of MAX_MANIFEST_BYTES for the sources still to read."""

    def __init__(self) -> None:
        self.left = MAX_MANIFEST_BYTES

    def take(self, source: str, size: int) -> None:
        if size > self.left:
            whole = " together with the manifests before it" if self.left < MAX_MANIFEST_BYTES else ""
            raise ManifestError(f"{source}: more than {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB of manifests{whole}, "
                                "the most orchctl reads for one command (one apply can write at most 1.5 MiB)")
        self.left -= size


def _read_stream(stream: TextIO, budget: _Budget) -> str:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        data: bytes = buffer.read(budget.left + 1)
        budget.take(STDIN_SOURCE, len(data))
        return _decode(data, STDIN_SOURCE)
    text = stream.read(budget.left + 1)  # a text stream (tests): characters, at least as many bytes
    budget.take(STDIN_SOURCE, len(text.encode("utf-8", "surrogatepass")))
    return text


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a byte order mark is no part of the text
    except UnicodeDecodeError as e:
        raise ManifestError(f"{source}: not a text file: {e.reason} at byte {e.start}") from e


def _manifest_files(directory: Path, recursive: bool) -> list[Path]:
    found = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES)


def _load_file(path: Path, budget: _Budget) -> list[Document]:
    try:
        with path.open("rb") as f:
            data = f.read(budget.left + 1)  # bounded: -f /dev/zero must end
    except OSError as e:
        raise ManifestError(f"{path}: {e.strerror or e}") from e
    budget.take(str(path), len(data))
    return parse(_decode(data, str(path)), str(path), as_json=path.suffix.lower() == ".json")


def parse(text: str, source: str, *, as_json: bool = False) -> list[Document]:
    """The objects in one YAML stream (or one JSON document when ``as_json``)."""
    raw_docs = _load_json(text, source) if as_json else _safe_load_all(text, source)
    docs: list[Document] = []
    for index, raw in enumerate(raw_docs):
        if raw is None:
            continue  # an empty document: a trailing '---', or only comments
        if not isinstance(raw, dict):
            raise ManifestError(
                f"{source} document {index + 1}: expected an object (a mapping with apiVersion, kind, "
                f"metadata), got {_type_name(raw)}"
            )
        problem = document_problem(raw)
        if problem is not None:
            path, why = problem
            raise ManifestError(f"{source} document {index + 1}: {path + ': ' if path else ''}{why}")
        if raw.get("kind") == "List" and "items" in raw:
            docs.extend(_list_items(raw, source, index))
        else:
            docs.append(Document(source, index, raw))
    return docs


def _load_json(text: str, source: str) -> list[Any]:
    if not text.strip():
        return []
    try:
        return [loads_json(text)]
    except json.JSONDecodeError as e:
        raise ManifestError(
            f"{source} document 1: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from e
    except DocumentError as e:
        raise ManifestError(f"{source} document 1: invalid JSON: {e}") from e


def _safe_load_all(text: str, source: str) -> list[Any]:
    out: list[Any] = []
    loader: _ManifestLoader | None = None
    try:
        loader = _ManifestLoader(text)  # refuses control characters at once
        # Document by document: the number read so far says which one is broken.
        while loader.check_node():
            out.append(loader.construct_document(loader.get_node()))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(p for p in (e.context, e.problem) if p) or str(e)
        raise ManifestError(f"{source} document {len(out) + 1}: invalid YAML{at}: {what}") from e
    except yaml.YAMLError as e:
        raise ManifestError(f"{source} document {len(out) + 1}: invalid YAML: {e}") from e
    finally:
        if loader is not None:
            loader.dispose()
    return out


# --- the loader -------------------------------------------------------------------------------


_CORE = "tag:yaml.org,2002:"


def _short_tag(tag: str | None) -> str:
    return "!!" + tag[len(_CORE):] if tag and tag.startswith(_CORE) else str(tag)


class _ManifestLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, bounded: see the module docstring for what it refuses."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # collections open around the node being composed
        self._nodes = 0  # nodes of this document as written (an alias counts one)
        self._expanded = 0  # ... and as its aliases expand it
        self._sizes: dict[str, int] = {}  # anchor -> the expanded size of its node

    # --- composing: depth and aliases --------------------------------------------------

    def compose_document(self) -> Node:
        self._nodes = self._expanded = 0
        self._sizes = {}
        node: Any = super().compose_document()
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            return self._compose_alias(parent, index, event)
        collection = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if collection and self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", _mark(event))
        before = self._expanded
        self._depth += collection
        try:
            node: Any = super().compose_node(parent, index)
        finally:
            self._depth -= collection
        self._nodes += 1
        self._expanded += 1
        if event.anchor is not None:
            self._sizes[event.anchor] = self._expanded - before
        return node

    def _compose_alias(self, parent: Node | None, index: Any, event: yaml.AliasEvent) -> Node:
        size = self._sizes.get(event.anchor or "")
        if size is None and event.anchor in self.anchors:
            raise ComposerError(None, None, f"the alias *{event.anchor} is inside the node it refers to: "
                                            "a cycle, which JSON cannot hold", _mark(event))
        node: Any = super().compose_node(parent, index)  # an undefined alias is refused here
        self._nodes += 1
        self._expanded += size or 0
        allowed = max(MAX_ALIAS_NODES, self._nodes)
        if self._expanded - self._nodes > allowed:
            raise ComposerError(None, None, f"YAML aliases expand this document by more than {allowed} nodes "
                                            "(a \"billion laughs\"); write the repeated parts out", _mark(event))
        return node

    # --- constructing: keys, tags and numbers --------------------------------------------

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[str, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _CORE + "merge":
                    continue  # "<<": its keys may be overridden by the mapping's own
                if not isinstance(key_node, ScalarNode) or key_node.tag != _CORE + "str":
                    raise ConstructorError(None, None, f"mapping keys must be strings, found {_key_kind(key_node)}",
                                           key_node.start_mark)
                first = seen.setdefault(key_node.value, key_node)
                if first is not key_node:
                    key = json.dumps(key_node.value[:80], ensure_ascii=False)
                    raise ConstructorError(None, None, f"duplicate key {key} in one mapping (first at line "
                                                       f"{first.start_mark.line + 1})", key_node.start_mark)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_undefined(self, node: Node) -> Any:
        raise ConstructorError(None, None, f"the tag {_short_tag(node.tag)} is not allowed in a manifest: only "
                                           "strings, numbers, booleans, null, lists and mappings can be", node.start_mark)

    def construct_no_json(self, node: Node) -> Any:
        raise ConstructorError(None, None, f"the tag {_short_tag(node.tag)} is not allowed in a manifest: JSON has "
                                           "no such value; write a list or a mapping", node.start_mark)

    def construct_as_written(self, node: Any) -> Any:
        return self.construct_scalar(node)

    def construct_base64(self, node: Any) -> Any:
        text = "".join(str(self.construct_scalar(node)).split())
        try:
            base64.b64decode(text, validate=True)
        except ValueError:
            raise ConstructorError(None, None, "a !!binary value must be base64", node.start_mark) from None
        return text

    # An explicit tag can put any text under a type: "!!int x", "!!float ''", "!!bool maybe".
    # PyYAML's constructors then fail with ValueError, IndexError or KeyError; say what was wrong.

    def construct_checked_int(self, node: Any) -> Any:
        digits = str(node.value).replace("_", "").lstrip("+-")
        if digits.isdigit() and len(digits) > 19:  # also: int() refuses over 4300 digits with a ValueError
            raise ConstructorError(None, None, "integer out of range: numbers must fit in 64 bits", node.start_mark)
        try:
            value = self.construct_yaml_int(node)
        except (ValueError, IndexError):
            value = None
        if value is None:
            raise ConstructorError(None, None, f"{_shown(node.value)} is not an integer", node.start_mark)
        if not -(2**63) <= value < 2**63:
            raise ConstructorError(None, None, "integer out of range: numbers must fit in 64 bits", node.start_mark)
        return value

    def construct_checked_float(self, node: Any) -> Any:
        try:
            value = self.construct_yaml_float(node)
        except (ValueError, IndexError):
            raise ConstructorError(None, None, f"{_shown(node.value)} is not a number", node.start_mark) from None
        if not math.isfinite(value):
            raise ConstructorError(None, None, f"{_shown(node.value)} is not a number JSON can hold; numbers must "
                                               "be finite", node.start_mark)
        return value

    def construct_checked_bool(self, node: Any) -> Any:
        try:
            return self.construct_yaml_bool(node)
        except KeyError:
            raise ConstructorError(None, None, f"{_shown(node.value)} is not a boolean", node.start_mark) from None


def _shown(text: str) -> str:
    return json.dumps(text if len(text) <= 40 else text[:37] + "...", ensure_ascii=False)


def _mark(event: Any) -> Any:
    return event.start_mark


def _key_kind(node: Node) -> str:
    words = {"int": "an integer", "float": "a number", "bool": "a boolean", "null": "null",
             "timestamp": "a timestamp"}
    if not isinstance(node, ScalarNode):
        return "a list or a mapping"
    word = words.get(node.tag[len(_CORE):]) if node.tag.startswith(_CORE) else None
    if word is None:
        return f"a {_short_tag(node.tag)} value"
    return f"{json.dumps(node.value[:80], ensure_ascii=False)}, which YAML reads as {word}; quote it"


_ManifestLoader.add_constructor(None, _ManifestLoader.construct_undefined)
_ManifestLoader.add_constructor(_CORE + "int", _ManifestLoader.construct_checked_int)
_ManifestLoader.add_constructor(_CORE + "float", _ManifestLoader.construct_checked_float)
_ManifestLoader.add_constructor(_CORE + "bool", _ManifestLoader.construct_checked_bool)
_ManifestLoader.add_constructor(_CORE + "timestamp", _ManifestLoader.construct_as_written)
_ManifestLoader.add_constructor(_CORE + "binary", _ManifestLoader.construct_base64)
for _tag in ("set", "omap", "pairs"):
    _ManifestLoader.add_constructor(_CORE + _tag, _ManifestLoader.construct_no_json)


def _list_items(raw: dict[str, Any], source: str, index: int) -> list[Document]:
    items = raw["items"]
    if items is None:
        return []
    if not isinstance(items, list):
        raise ManifestError(f"{source} document {index + 1}: items: expected a list, got {_type_name(items)}")
    docs: list[Document] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ManifestError(
                f"{source} document {index + 1} item {i + 1}: expected an object, got {_type_name(item)}"
            )
        docs.append(Document(source, index, item, item=i))
    return docs


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__
