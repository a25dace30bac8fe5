"""Reading manifests for ``apply -f`` and ``delete -f``: files, directories and stdin.

Every document read keeps where it came from (``Document.source`` and its 1-based
position ``Document.index + 1`` in that source), so that an error about the third
object of a request can be reported as ``web.yaml document 2`` — the place the
user has to edit.

Only ``yaml.safe_load_all`` is used: a manifest is data, and a tag such as
``!!python/object`` must be refused rather than executed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"
STDIN_SOURCE = "<stdin>"


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
    for raw in paths:
        if raw == STDIN:
            if used_stdin:
                raise ManifestError('"-" (stdin) can be given only once')
            used_stdin = True
            stream = sys.stdin if stdin is None else stdin
            docs.extend(parse(stream.read(), STDIN_SOURCE))
            continue
        path = Path(raw)
        if path.is_dir():
            for f in _manifest_files(path, recursive):
                docs.extend(_load_file(f))
        elif path.exists():
            # A file named explicitly is read whatever its suffix, as kubectl does.
            docs.extend(_load_file(path))
        else:
            raise ManifestError(f'the path "{raw}" does not exist')
    return docs


def _manifest_files(directory: Path, recursive: bool) -> list[Path]:
    found = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES)


def _load_file(path: Path) -> list[Document]:
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not a text file: {e.reason}") from e
    except OSError as e:
        raise ManifestError(f"{path}: {e.strerror or e}") from e
    return parse(text, str(path), as_json=path.suffix.lower() == ".json")


def parse(text: str, source: str, *, as_json: bool = False) -> list[Document]:
    """The objects in one YAML stream (or one JSON document when ``as_json``)."""
    if as_json:
        try:
            raw_docs: list[Any] = [json.loads(text)] if text.strip() else []
        except json.JSONDecodeError as e:
            raise ManifestError(
                f"{source} document 1: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            ) from e
    else:
        raw_docs = _safe_load_all(text, source)
    docs: list[Document] = []
    for index, raw in enumerate(raw_docs):
        if raw is None:
            continue  # an empty document: a trailing '---', or only comments
        if not isinstance(raw, dict):
            raise ManifestError(
                f"{source} document {index + 1}: expected an object (a mapping with apiVersion, kind, "
                f"metadata), got {_type_name(raw)}"
            )
        if raw.get("kind") == "List" and "items" in raw:
            docs.extend(_list_items(raw, source, index))
        else:
            docs.append(Document(source, index, raw))
    return docs


def _safe_load_all(text: str, source: str) -> list[Any]:
    out: list[Any] = []
    try:
        # safe_load_all is lazy: a syntax error surfaces while iterating, so the
        # number of documents read so far says which document is broken.
        for raw in yaml.safe_load_all(text):
            out.append(raw)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(p for p in (e.context, e.problem) if p) or str(e)
        raise ManifestError(f"{source} document {len(out) + 1}: invalid YAML{at}: {what}") from e
    except yaml.YAMLError as e:
        raise ManifestError(f"{source} document {len(out) + 1}: invalid YAML: {e}") from e
    return out


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
