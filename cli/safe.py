"""Text from the cluster, made safe to print on a terminal.

Names are validated and cannot hold control characters, but messages, annotations,
events, status fields and log lines can hold anything a container or a user put in
them. Printed raw, ``ESC ] 52 ; c ; …`` writes the reader's clipboard, ``ESC [ 2 J``
clears the screen, ``CR`` and ``ESC [ A`` overwrite lines already shown, and a
bidirectional override (U+202E) shows text in another order than it has (the "Trojan
Source" trick). kubectl escapes ESC and CR in tables and ``describe`` since 1.26
(``EscapeTerminal`` in cli-runtime's printers); ``escape_terminal`` goes further:

* C0 controls but tab and newline → ``\\x1b`` (``\\r\\n`` may be kept whole: a line
  end cannot hide anything);
* DEL and the C1 controls (``\\x9b`` is a one-byte CSI) → ``\\u009b``;
* bidirectional controls (U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069) → ``\\u202e``.

Everything at 0x7f and above is written ``\\uXXXX`` because that is an escape JSON
and YAML's double-quoted strings both read back as the same character: ``orchctl -o
json`` can go through the same escaping and stay the same JSON (``json.dumps``
escapes C0 controls itself), and ``to_yaml`` double-quotes every string that needs
escaping, so ``-o yaml`` stays the same YAML.

``LogEscaper`` does the same for a byte stream (``orchctl logs`` on a terminal),
chunk by chunk: a UTF-8 character or a ``\\r\\n`` split across two chunks is still
one, and a byte that is not UTF-8 is written ``\\xNN``.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

import yaml

_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
_UNSAFE_WITH_CRLF = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI}]|\r(?!\n)")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x20 else f"\\u{code:04x}"


def escape_terminal(text: str, *, keep_crlf: bool = False) -> str:
    """``text`` with every control and bidirectional character written as an escape;
    tab and newline are kept (and ``\\r\\n`` with ``keep_crlf``)."""
    pattern = _UNSAFE_WITH_CRLF if keep_crlf else _UNSAFE
    if pattern.search(text) is None:
        return text
    return pattern.sub(_escape, text)


def needs_escape(text: str) -> bool:
    return _UNSAFE.search(text) is not None


class LogEscaper:
    """Escapes a stream of bytes for a terminal, one chunk at a time (``feed``, then ``end``)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._cr = False  # the last chunk ended in "\r": a "\r\n" may be split in two

    def feed(self, data: bytes) -> str:
        text = ("\r" if self._cr else "") + self._decoder.decode(data)
        self._cr = text.endswith("\r")
        if self._cr:
            text = text[:-1]
        return escape_terminal(text, keep_crlf=True)

    def end(self) -> str:
        text = ("\r" if self._cr else "") + self._decoder.decode(b"", final=True)
        self._cr = False
        return escape_terminal(text, keep_crlf=True)


class _QuotingDumper(yaml.SafeDumper):
    """Double-quotes the strings ``escape_terminal`` changes: inside double quotes its
    ``\\uXXXX`` is YAML's own escape for the same character, elsewhere it is not. And
    the strings with a Unicode line break, which plain ``safe_dump`` writes in single
    quotes, where they read back as a space (U+0085 becomes " ")."""


#: Line breaks PyYAML writes raw in single quotes, where a reader folds them into a space.
_YAML_BREAKS = re.compile("[\x85\u2028\u2029]")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> Any:
    style = '"' if needs_escape(value) or _YAML_BREAKS.search(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_QuotingDumper.add_representer(str, _represent_str)


def to_yaml(obj: Any) -> str:
    """``cli.printers.to_yaml``'s YAML (same options), with strings that hold control or
    bidirectional characters double-quoted, so ``escape_terminal`` keeps its meaning."""
    text: str = yaml.dump(obj, Dumper=_QuotingDumper, default_flow_style=False, sort_keys=False, allow_unicode=True)
    return text.rstrip("\n")
