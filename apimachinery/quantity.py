"""Kubernetes resource quantities: ``500m`` of CPU, ``64Mi`` of memory, and back.

The grammar is Kubernetes' (``k8s.io/apimachinery/pkg/api/resource``)::

    quantity  ::= sign? number suffix?
    number    ::= digits | digits "." digits? | "." digits
    suffix    ::= Ki | Mi | Gi | Ti | Pi | Ei        (powers of 1024)
                | m | k | M | G | T | P | E          (powers of 1000; m is 1/1000)
                | ("e" | "E") sign? digits          (a power of ten)

Values are computed exactly (``decimal.Decimal`` for the text, ``fractions.Fraction``
for the arithmetic) and, as Kubernetes does, rounded *up* to the unit we keep:
``0.0001`` CPU is 1m, ``0.5`` bytes is 1 byte. Nothing is ever rounded down, so a
limit can never shrink below what was written.

Two deliberate departures from Kubernetes, both for memory only, both because the
accepted spelling is a classic mistake rather than an intent:

* ``100m`` of memory (a tenth of a byte in Kubernetes) is an error that suggests
  ``100Mi``;
* ``64MB``, ``1gb``, ``512 Mi`` and friends are errors that spell out the fix:
  ``"64MB" is not a quantity; use 64Mi or 67108864``.

``QuantityError`` is a ``ValidationError`` (so the API maps it to INVALID_ARGUMENT
without a translation) and a ``ValueError`` (so ``argparse`` and ordinary callers
treat it as bad input). Its ``message`` is the text that follows a field path.
"""

from __future__ import annotations

import functools
import json
import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from apimachinery.errors import FieldError, ValidationError

__all__ = [
    "MAX_QUANTITY",
    "QuantityError",
    "format_cpu",
    "format_memory",
    "parse_cpu",
    "parse_memory",
]

# Kubernetes keeps quantities as int64 once they are turned into a number; larger
# ones would overflow every consumer (cgroup files, protobuf int64 fields).
MAX_QUANTITY = 2**63 - 1

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"m": -1, "": 0, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}

# [0-9], not \d: \d also matches Arabic-Indic and other Unicode digits.
_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:[eE](?P<exponent>[+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?)"
)

# What people write when they mean a binary suffix: 64MB, 64mb, 1gb, 1G B, 512 Mi,
# 100m (for memory), 1K. Whitespace around it is tolerated here only to recognise it.
# No E: "1e" is a broken exponent far more often than a misspelled exbibyte.
_MISSPELLED_MEMORY = re.compile(
    r"\s*(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[kKmMgGtTpP])(?P<i>[iI]?)\s*(?P<b>[bB]?)\s*"
)

# A bound on the decimal exponent we compute with; anything outside is certainly
# too large (or, when negative, certainly rounds up to one unit). It keeps
# "1e999999999" from turning into a billion-digit integer.
_EXPONENT_BOUND = 40


class QuantityError(ValidationError, ValueError):
    """A quantity that cannot be parsed; ``message`` follows the field path verbatim."""

    def __init__(self, message: str) -> None:
        super().__init__(FieldError("", message))
        self.message = message


def _display(value: object) -> str:
    """The value as it appears in a message: strings quoted as in JSON, numbers bare."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int) and value.bit_length() >= 256:
        # str() of a many-thousand-digit int raises in Python 3.11; nobody wants to read it anyway.
        return "a number with more than 70 digits"
    return repr(value) if isinstance(value, float) else str(value)


def _describe_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _exact(value: str | int | float, unit: int, what: str, unit_name: str, generic: str) -> int | None:
    """``value`` times ``unit`` rounded up to an integer, or None when it does not parse.

    ``unit`` is 1000 for millicores and 1 for bytes. Raises QuantityError for values that
    parse but are negative or too large, since those need their own message.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QuantityError(f"must be {what} (a string like {generic} or a number), got {_describe_type(value)}")
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        # repr() is the shortest text that round-trips: 0.1 -> "0.1", not 0.1000000000000000055...
        text = repr(value)
    elif isinstance(value, int):
        # str() of a huge int raises in Python 3.11; its size is all that matters here.
        text = str(value) if value.bit_length() < 256 else ("-1e78" if value < 0 else "1e78")
    else:
        text = value
    m = _QUANTITY.fullmatch(text)
    if m is None:
        return None
    suffix = m["suffix"] or ""
    if m["exponent"] is not None:
        # int() of a 5000-digit exponent string would trip Python's int-parsing limit.
        digits = m["exponent"].lstrip("+-").lstrip("0") or "0"
        exp10 = int(m["exponent"]) if len(digits) <= 6 else (10**7 if m["exponent"][0] != "-" else -(10**7))
        exp2 = 0
    elif suffix in _BINARY:
        exp10, exp2 = 0, 10 * _BINARY[suffix]
    else:
        exp10, exp2 = 3 * _DECIMAL[suffix], 0
    try:
        number = Decimal(m["number"])
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        return None
    if number == 0:
        return 0
    if m["sign"] == "-":
        raise QuantityError(f"must not be negative, got {_display(value)}")
    magnitude = number.adjusted() + exp10
    if magnitude > _EXPONENT_BOUND:
        raise QuantityError(f"{_display(value)} is too large; the most is {MAX_QUANTITY} {unit_name}")
    if magnitude < -_EXPONENT_BOUND:
        return 1  # a positive amount smaller than one unit rounds up to one unit
    exact = Fraction(number) * Fraction(10) ** exp10 * 2**exp2 * unit
    result: int = math.ceil(exact)
    if result > MAX_QUANTITY:
        raise QuantityError(f"{_display(value)} is too large; the most is {MAX_QUANTITY} {unit_name}")
    return result


def _parse_cpu(value: str | int | float) -> int:
    """``parse_cpu`` without its cache."""
    result = _exact(value, 1000, "a CPU quantity", "millicores", "500m")
    if result is None:
        raise QuantityError(f"{_display(value)} is not a CPU quantity; use 500m or 0.5")
    return result


def _parse_memory(value: str | int | float) -> int:
    """``parse_memory`` without its cache."""
    m = _QUANTITY.fullmatch(value) if isinstance(value, str) else None
    if m is not None and m["suffix"] == "m" and m["sign"] != "-" and Decimal(m["number"]) != 0:
        # Milli-bytes: legal in Kubernetes, never meant. Let the suggestion say Mi.
        result = None
    else:
        result = _exact(value, 1, "a memory quantity", "bytes", "64Mi")
    if result is None:
        raise QuantityError(_memory_hint(value))
    return result


def _memory_hint(value: object) -> str:
    """The error for memory text that does not parse, with the fix spelled out when we can guess it."""
    shown = _display(value)
    generic = f"{shown} is not a quantity; use a number of bytes or a suffix like 64Mi or 1Gi"
    if not isinstance(value, str):
        return generic
    stripped = value.strip()
    if stripped != value:
        m = _QUANTITY.fullmatch(stripped)
        if m is not None and m["suffix"] != "m" and m["sign"] != "-":
            try:
                exact = _parse_memory(stripped)
            except QuantityError:
                return generic
            return f"{shown} is not a quantity; use {stripped} or {exact}"
    m = _MISSPELLED_MEMORY.fullmatch(value)
    if m is None:
        return generic
    unit = m["unit"].upper()
    binary = f"{unit}i"
    try:
        exact = parse_memory(f"{m['number']}{binary}")
    except QuantityError:
        return generic
    return f"{shown} is not a quantity; use {m['number']}{binary} or {exact}"


def format_memory(n_bytes: int) -> str:
    """Bytes for display: the largest binary suffix that is exact (67108864 → ``64Mi``),
    else the largest exact decimal suffix (129000000 → ``129M``), else the plain number.

    ``parse_memory(format_memory(n)) == n`` for every n ≥ 0.
    """
    if n_bytes < 0:
        return "-" + format_memory(-n_bytes)
    if n_bytes == 0:
        return "0"
    for suffix, power in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
        size = 1024**power
        if n_bytes % size == 0:
            return f"{n_bytes // size}{suffix}"
    for suffix, power in sorted(_DECIMAL.items(), key=lambda kv: -kv[1]):
        if power <= 0:
            break
        size = 1000**power
        if n_bytes % size == 0:
            return f"{n_bytes // size}{suffix}"
    return str(n_bytes)


def format_cpu(millis: int) -> str:
    """Millicores for display: whole cores bare (2000 → ``2``), anything else in m (1500 → ``1500m``).

    ``parse_cpu(format_cpu(n)) == n`` for every n ≥ 0.
    """
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"


# Cached: the scheduler reads the same few request strings for every pod it places, and an
# exact parse (Fractions) costs microseconds. Only plain str, int and float are cached
# (typed: 1 and 1.0 are different inputs; True is not a quantity and is not cached).
_CACHED_TYPES = (str, int, float)
_parse_cpu_cached = functools.lru_cache(maxsize=4096, typed=True)(_parse_cpu)
_parse_memory_cached = functools.lru_cache(maxsize=4096, typed=True)(_parse_memory)


def parse_cpu(value: str | int | float) -> int:
    """CPU in millicores: ``"500m"`` → 500, ``"1"`` → 1000, ``0.5`` → 500, ``2`` → 2000.

    Sub-millicore amounts round up to 1m, as Kubernetes rounds them.
    """
    return _parse_cpu_cached(value) if type(value) in _CACHED_TYPES else _parse_cpu(value)


def parse_memory(value: str | int | float) -> int:
    """Memory (or storage) in bytes: ``"64Mi"``, ``"1Gi"``, ``"129M"``, ``"129e6"``, ``134217728``.

    Fractions of a byte round up. Raises QuantityError with a suggested spelling when the
    text looks like a familiar but wrong unit (``64MB`` → ``64Mi or 67108864``).
    """
    return _parse_memory_cached(value) if type(value) in _CACHED_TYPES else _parse_memory(value)
