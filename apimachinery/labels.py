"""Label syntax and label selectors, as Kubernetes defines them.

* ``validate_label_key`` / ``validate_label_value``: Kubernetes' qualified-name and
  label-value rules; the DNS-1123 name checks they build on are here too, since
  object names follow the same rules.
* ``parse_selector``: the string form used by ``orchctl -l`` and the List/Watch
  calls: ``app=web,tier!=db,env in (a,b),env notin (c),release,!legacy``.
* ``selector_from_label_selector``: the object form of a Deployment's
  ``spec.selector`` (``matchLabels`` and ``matchExpressions``).

Both forms give the same ``Selector``: a sorted tuple of requirements, all of which
must hold (an empty selector matches everything). ``str(selector)`` prints the string
form and ``parse_selector(str(s)) == s``.

Matching follows Kubernetes exactly, including the part that surprises people:
``tier!=db`` and ``env notin (a)`` also match objects that have no such label.

``SelectorError`` is a ``ValidationError`` (INVALID_ARGUMENT over gRPC) and a
``ValueError`` (so ``argparse`` reports it as a usage error).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from apimachinery.errors import FieldError, ValidationError

__all__ = [
    "EVERYTHING",
    "Operator",
    "Requirement",
    "Selector",
    "SelectorError",
    "describe_value",
    "did_you_mean",
    "label_selector_errors",
    "parse_selector",
    "selector_from_label_selector",
    "validate_dns1123_label",
    "validate_dns1123_subdomain",
    "validate_label_key",
    "validate_label_value",
]


class SelectorError(ValidationError, ValueError):
    """A label selector that cannot be parsed or built; ``message`` says where and why."""

    def __init__(self, message: str) -> None:
        super().__init__(FieldError("", message))
        self.message = message


# --- wording shared with apimachinery.validation ------------------------------


def _quote(text: str, limit: int = 80) -> str:
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return json.dumps(text, ensure_ascii=False)


def describe_value(value: Any) -> str:
    """What a value is, for "got …" in a message: ``string "3"``, ``integer 3``, ``list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        # str() of a huge int raises in Python 3.11 (the 4300-digit limit).
        return f"integer {value}" if value.bit_length() < 128 else "a very large integer"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {_quote(value)}"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def did_you_mean(word: object, options: list[str] | tuple[str, ...], cutoff: float = 0.6) -> str:
    """``; did you mean "image"?`` when ``word`` is close to one of ``options``, else ``""``."""
    if not isinstance(word, str) or len(word) > 200:  # difflib is quadratic; nobody mistypes 200 characters
        return ""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=cutoff)
    if not close:
        lowered = {o.lower(): o for o in options}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    return f"; did you mean {_quote(close[0])}?" if close else ""


# --- names and labels ----------------------------------------------------------

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_NAME_RULE = (
    "consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)


def validate_dns1123_label(name: object) -> str | None:
    """None if ``name`` is a DNS-1123 label (namespaces, container names), else why not."""
    if not isinstance(name, str):
        return f"must be a string, got {describe_value(name)}"
    if not name:
        return "must not be empty"
    if len(name) > 63:
        return f"{_quote(name)} must be no more than 63 characters"
    if not _DNS1123_LABEL.fullmatch(name):
        return (f"{_quote(name)} must consist of lower case alphanumeric characters or '-', "
                "and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc')")
    return None


def validate_dns1123_subdomain(name: object) -> str | None:
    """None if ``name`` is a DNS-1123 subdomain (object names, label key prefixes), else why not."""
    if not isinstance(name, str):
        return f"must be a string, got {describe_value(name)}"
    if not name:
        return "must not be empty"
    if len(name) > 253:
        return f"{_quote(name)} must be no more than 253 characters"
    if not _DNS1123_SUBDOMAIN.fullmatch(name):
        return (f"{_quote(name)} must consist of lower case alphanumeric characters, '-' or '.', "
                "and must start and end with an alphanumeric character (e.g. 'example.com')")
    return None


def validate_label_key(key: object) -> str | None:
    """None if ``key`` is a valid label (or annotation) key, else a message naming it.

    A key is an optional DNS-1123 subdomain prefix (≤253) and ``/``, then a name of at most
    63 characters: alphanumerics, ``-``, ``_``, ``.``, starting and ending alphanumeric.
    """
    if not isinstance(key, str):
        return f"label keys must be strings, got {describe_value(key)}"
    prefix, slash, name = key.rpartition("/")
    if slash and "/" in prefix:
        return f"invalid label key {_quote(key)}: a key may contain at most one '/'"
    if slash:
        if not prefix:
            return f"invalid label key {_quote(key)}: prefix part must not be empty"
        if len(prefix) > 253:
            return f"invalid label key {_quote(key)}: prefix part must be no more than 253 characters"
        if not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            return (f"invalid label key {_quote(key)}: prefix part must be a DNS-1123 subdomain "
                    "(lower case alphanumeric characters, '-' or '.', starting and ending alphanumeric)")
    if not name:
        return f"invalid label key {_quote(key)}: name part must not be empty"
    if len(name) > 63:
        return f"invalid label key {_quote(key)}: name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.fullmatch(name):
        return f"invalid label key {_quote(key)}: name part must {_LABEL_NAME_RULE}"
    return None


def validate_label_value(value: object) -> str | None:
    """None if ``value`` is a valid label value (≤63, empty allowed), else a message naming it."""
    if not isinstance(value, str):
        return f"label values must be strings, got {describe_value(value)}"
    if len(value) > 63:
        return f"invalid label value {_quote(value)}: must be no more than 63 characters"
    if value and not _QUALIFIED_NAME.fullmatch(value):
        return f"invalid label value {_quote(value)}: must be empty or {_LABEL_NAME_RULE}"
    return None


# --- selectors -------------------------------------------------------------------


class Operator(StrEnum):
    """A requirement's operator; the value is how ``str()`` writes it."""

    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    """One condition on one label. ``values`` is sorted and free of duplicates (a set)."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        match self.operator:
            case Operator.EXISTS:
                return present
            case Operator.DOES_NOT_EXIST:
                return not present
            case Operator.EQUALS | Operator.IN:
                return present and labels[self.key] in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                # Kubernetes: an object without the label satisfies "!=" and "notin".
                return not present or labels[self.key] not in self.values
        raise AssertionError(self.operator)  # pragma: no cover - the match is exhaustive

    def __str__(self) -> str:
        match self.operator:
            case Operator.EXISTS:
                return self.key
            case Operator.DOES_NOT_EXIST:
                return f"!{self.key}"
            case Operator.EQUALS | Operator.NOT_EQUALS:
                return f"{self.key}{self.operator.value}{self.values[0]}"
        # "(,)" rather than "()" for the set holding only the empty value: "()" is a
        # syntax error (an empty set), and "(,)" parses back to {""}.
        inner = ",".join(self.values) if self.values != ("",) else ","
        return f"{self.key} {self.operator.value} ({inner})"


def _requirement(key: str, operator: Operator, values: list[str] | tuple[str, ...] = ()) -> Requirement:
    """A Requirement after checking key, values and their number; raises SelectorError."""
    problem = validate_label_key(key)
    if problem:
        raise SelectorError(problem)
    for v in values:
        problem = validate_label_value(v)
        if problem:
            raise SelectorError(f"{problem} (in the requirement on {_quote(key)})")
    unique = tuple(sorted(set(values)))
    if operator in (Operator.IN, Operator.NOT_IN) and not unique:
        raise SelectorError(f"{_quote(key)}: for 'in' and 'notin', the set of values must not be empty")
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and unique:
        raise SelectorError(f"{_quote(key)}: 'exists' and 'does not exist' take no values")
    if operator in (Operator.EQUALS, Operator.NOT_EQUALS) and len(unique) != 1:
        raise SelectorError(f"{_quote(key)}: '=' and '!=' take exactly one value")
    return Requirement(key, operator, unique)


@dataclass(frozen=True, slots=True)
class Selector:
    """All of ``requirements`` must hold; no requirements matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def of(cls, requirements: list[Requirement] | tuple[Requirement, ...]) -> Selector:
        """The canonical selector for these requirements (sorted, so equal selectors compare equal)."""
        return cls(tuple(sorted(set(requirements))))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


EVERYTHING = Selector()


# The string form. Tokens as in k8s.io/apimachinery/pkg/labels/selector.go: a word is
# anything up to whitespace or one of the symbols; "in" and "notin" are keywords
# except where only a key or a value can stand, so a label may still be called "in".
_SYMBOLS = frozenset(",()=!")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word", ",", "(", ")", "=", "==", "!=", "!", "in", "notin", "end"
    text: str
    pos: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in ",()":
            out.append(_Token(c, c, i))
            i += 1
        elif c in "=!":
            if i + 1 < n and text[i + 1] == "=":
                op = c + "="
                out.append(_Token(op, op, i))
                i += 2
            else:
                out.append(_Token(c, c, i))
                i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in _SYMBOLS:
                i += 1
            word = text[start:i]
            out.append(_Token(word if word in ("in", "notin") else "word", word, start))
    out.append(_Token("end", "", n))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def fail(self, tok: _Token, expected: str) -> SelectorError:
        found = "end of input" if tok.kind == "end" else _quote(tok.text)
        return SelectorError(
            f"invalid label selector {_quote(self.text)}: expected {expected} at position {tok.pos}, found {found}")

    def selector(self) -> Selector:
        if self.peek().kind == "end":
            return EVERYTHING
        requirements = [self.requirement()]
        while True:
            tok = self.take()
            if tok.kind == "end":
                return Selector.of(requirements)
            if tok.kind != ",":
                raise self.fail(tok, "',' or end of input")
            requirements.append(self.requirement())

    def requirement(self) -> Requirement:
        tok = self.take()
        if tok.kind == "!":
            negated = self.take()
            if negated.kind not in ("word", "in", "notin"):
                raise self.fail(negated, "a label key after '!'")
            return _requirement(negated.text, Operator.DOES_NOT_EXIST)
        if tok.kind not in ("word", "in", "notin"):
            raise self.fail(tok, "a label key or '!'")
        key = tok.text
        op = self.peek()
        if op.kind in (",", "end"):
            return _requirement(key, Operator.EXISTS)
        self.take()
        if op.kind in ("=", "=="):
            return _requirement(key, Operator.EQUALS, [self.exact_value()])
        if op.kind == "!=":
            return _requirement(key, Operator.NOT_EQUALS, [self.exact_value()])
        if op.kind in ("in", "notin"):
            return _requirement(key, Operator.IN if op.kind == "in" else Operator.NOT_IN, self.value_set())
        raise self.fail(op, "'=', '==', '!=', 'in', 'notin', ',' or end of input after a key")

    def exact_value(self) -> str:
        tok = self.peek()
        if tok.kind in (",", "end"):
            return ""  # "app=" selects the empty value, as in Kubernetes
        if tok.kind in ("word", "in", "notin"):
            self.take()
            return tok.text
        raise self.fail(tok, "a label value")

    def value_set(self) -> list[str]:
        tok = self.take()
        if tok.kind != "(":
            raise self.fail(tok, "'('")
        if self.peek().kind == ")":
            raise self.fail(self.peek(), "at least one value")
        values: list[str] = []
        current: str | None = None
        while True:
            tok = self.take()
            if tok.kind in ("word", "in", "notin") and current is None:
                current = tok.text
            elif tok.kind == ",":
                # Empty items ("(a,)", "(,)") are the empty value, as Kubernetes reads them.
                values.append(current or "")
                current = None
            elif tok.kind == ")":
                values.append(current or "")
                return values
            else:
                raise self.fail(tok, "',' or ')'" if current is not None else "a label value, ',' or ')'")


def parse_selector(text: str) -> Selector:
    """The Selector for the string form: ``app=web,tier!=db,env in (a,b),!legacy``; ``""`` is everything."""
    if not isinstance(text, str):
        raise SelectorError(f"a label selector must be a string, got {describe_value(text)}")
    try:
        return _Parser(text).selector()
    except SelectorError as e:
        if e.message.startswith("invalid label selector"):
            raise
        # A bad key or value inside an otherwise well-formed selector: say which selector.
        raise SelectorError(f"invalid label selector {_quote(text)}: {e.message}") from None


_SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
_EXPRESSION_FIELDS = ("key", "operator", "values")
_EXPRESSION_OPERATORS = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
}


def label_selector_errors(obj: object) -> list[tuple[str, str]]:
    """Every problem with an object-form selector, as ``(path relative to it, message)``.

    ``apimachinery.validation`` prefixes the paths with where the selector sits
    (``spec.selector.matchExpressions[0].operator``); an empty path is the selector itself.
    """
    errors: list[tuple[str, str]] = []
    if not isinstance(obj, dict):
        return [("", f"must be a mapping, got {describe_value(obj)}")]
    for field in obj:
        if field not in _SELECTOR_FIELDS:
            errors.append((str(field), "unknown field" + did_you_mean(field, _SELECTOR_FIELDS)))
    match_labels = obj.get("matchLabels")
    if match_labels is not None:
        if not isinstance(match_labels, dict):
            errors.append(("matchLabels", f"must be a mapping, got {describe_value(match_labels)}"))
        else:
            for k, v in match_labels.items():
                problem = validate_label_key(k)
                if problem:
                    errors.append(("matchLabels", problem))
                    continue
                problem = validate_label_value(v)
                if problem:
                    errors.append((f"matchLabels[{k}]", problem))
    expressions = obj.get("matchExpressions")
    if expressions is not None:
        if not isinstance(expressions, list):
            errors.append(("matchExpressions", f"must be a list, got {describe_value(expressions)}"))
        else:
            for i, expr in enumerate(expressions):
                errors.extend(_expression_errors(expr, f"matchExpressions[{i}]"))
    return errors


def _expression_errors(expr: object, path: str) -> list[tuple[str, str]]:
    if not isinstance(expr, dict):
        return [(path, f"must be a mapping, got {describe_value(expr)}")]
    errors: list[tuple[str, str]] = []
    for field in expr:
        if field not in _EXPRESSION_FIELDS:
            errors.append((f"{path}.{field}", "unknown field" + did_you_mean(field, _EXPRESSION_FIELDS)))
    key = expr.get("key")
    if key is None:
        errors.append((f"{path}.key", "is required"))
    else:
        problem = validate_label_key(key)
        if problem:
            errors.append((f"{path}.key", problem))
    operator = expr.get("operator")
    if operator is None:
        errors.append((f"{path}.operator", "is required"))
    elif not isinstance(operator, str) or operator not in _EXPRESSION_OPERATORS:
        errors.append((f"{path}.operator",
                       f"must be one of In, NotIn, Exists, DoesNotExist, got {describe_value(operator)}"
                       + did_you_mean(operator, tuple(_EXPRESSION_OPERATORS))))
    values = expr.get("values")
    if values is not None and not isinstance(values, list):
        errors.append((f"{path}.values", f"must be a list, got {describe_value(values)}"))
        values = None
    for j, v in enumerate(values or []):
        problem = validate_label_value(v)
        if problem:
            errors.append((f"{path}.values[{j}]", problem))
    if operator in ("In", "NotIn") and not values:
        errors.append((f"{path}.values", f"must be non-empty when operator is {operator}"))
    if operator in ("Exists", "DoesNotExist") and values:
        errors.append((f"{path}.values", f"must be empty when operator is {operator}"))
    return errors


def selector_from_label_selector(obj: Mapping[str, Any]) -> Selector:
    """The Selector for the object form (``matchLabels``, ``matchExpressions``); ``{}`` is everything.

    Raises SelectorError listing every problem; ``apimachinery.validation`` reports the
    same problems with full field paths before an object is ever stored.
    """
    errors = label_selector_errors(obj)
    if errors:
        raise SelectorError("; ".join(f"{p}: {m}" if p else m for p, m in errors))
    requirements = [
        Requirement(k, Operator.EQUALS, (v,)) for k, v in (obj.get("matchLabels") or {}).items()
    ]
    for expr in obj.get("matchExpressions") or []:
        requirements.append(
            _requirement(expr["key"], _EXPRESSION_OPERATORS[expr["operator"]], expr.get("values") or ()))
    return Selector.of(requirements)
