"""Label keys and values, and label selectors in their string and object forms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apimachinery.errors import ValidationError
from apimachinery.labels import (
    EVERYTHING,
    Operator,
    Requirement,
    Selector,
    SelectorError,
    label_selector_errors,
    parse_selector,
    selector_from_label_selector,
    validate_dns1123_label,
    validate_dns1123_subdomain,
    validate_label_key,
    validate_label_value,
)

FAST = settings(max_examples=150, deadline=None)


# --- keys and values -------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["app", "App", "a", "app.kubernetes.io/name", "example.com/x_y.z-1", "k8s.io/a", "1", "a" * 63,
     ("a" * 63 + ".") * 3 + "a" * 61 + "/x"],
)
def test_valid_label_keys(key: str) -> None:
    assert validate_label_key(key) is None


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "name part must not be empty"),
        ("-app", "name part must consist of"),
        ("app-", "name part must consist of"),
        ("a b", "name part must consist of"),
        ("a" * 64, "no more than 63"),
        ("/app", "prefix part must not be empty"),
        ("Example.com/app", "prefix part must be a DNS-1123 subdomain"),
        ("a/b/c", "at most one '/'"),
        ("example.com/", "name part must not be empty"),
        (3, "must be strings"),
    ],
)
def test_invalid_label_keys(key: object, why: str) -> None:
    message = validate_label_key(key)
    assert message is not None and why in message


@pytest.mark.parametrize("value", ["", "web", "Web_1.0-rc", "a" * 63])
def test_valid_label_values(value: str) -> None:
    assert validate_label_value(value) is None


@pytest.mark.parametrize("value", ["-web", "web-", "a b", "a" * 64, "é", 1, None])
def test_invalid_label_values(value: object) -> None:
    assert validate_label_value(value) is not None


def test_dns_names() -> None:
    assert validate_dns1123_label("web-1") is None
    assert validate_dns1123_label("web.1") is not None
    assert validate_dns1123_label("a" * 64) is not None
    assert validate_dns1123_subdomain("web.example-1.com") is None
    assert validate_dns1123_subdomain("Web") is not None
    assert validate_dns1123_subdomain("") == "must not be empty"


# --- the string form ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("   ", ""),
        ("app=web", "app=web"),
        ("app==web", "app=web"),
        ("tier!=db", "tier!=db"),
        ("env in (a,b)", "env in (a,b)"),
        ("env in ( b , a , a )", "env in (a,b)"),
        ("env notin (a)", "env notin (a)"),
        ("key", "key"),
        ("!key", "!key"),
        (" tier != db ,  app = web ", "app=web,tier!=db"),
        ("app=", "app="),
        ("x in (a,)", "x in (,a)"),
        ("x in (,)", "x in (,)"),
        # Requirements print sorted by key, whatever order they were written in.
        ("!legacy,example.com/app=web", "example.com/app=web,!legacy"),
        # "in" is a keyword only where an operator can stand.
        ("in in (in)", "in in (in)"),
        ("x=in", "x=in"),
    ],
)
def test_parse_and_print(text: str, canonical: str) -> None:
    selector = parse_selector(text)
    assert str(selector) == canonical
    assert parse_selector(str(selector)) == selector


def test_parsed_requirements() -> None:
    selector = parse_selector("app=web,tier!=db,env in (b,a),!legacy,release")
    assert selector.requirements == (
        Requirement("app", Operator.EQUALS, ("web",)),
        Requirement("env", Operator.IN, ("a", "b")),
        Requirement("legacy", Operator.DOES_NOT_EXIST),
        Requirement("release", Operator.EXISTS),
        Requirement("tier", Operator.NOT_EQUALS, ("db",)),
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a b", "expected '=', '==', '!=', 'in', 'notin', ',' or end of input after a key at position 2"),
        ("a=b,", "expected a label key or '!' at position 4, found end of input"),
        (",", "expected a label key or '!' at position 0"),
        ("x in ()", "expected at least one value"),
        ("x in (a", "expected ',' or ')' at position 7, found end of input"),
        ("x in a", "expected '('"),
        ("x in (a b)", "expected ',' or ')'"),
        ("a=b=c", "expected ',' or end of input at position 3"),
        ("!", "expected a label key after '!'"),
        ("-x", 'invalid label key "-x"'),
        ("a=-b", 'invalid label value "-b"'),
        ("x > 3", "expected '='"),
    ],
)
def test_parse_errors(text: str, why: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert why in info.value.message
    assert info.value.message.startswith(f'invalid label selector "{text}"')


def test_selector_error_is_a_validation_error_and_a_value_error() -> None:
    with pytest.raises(ValidationError):
        parse_selector("a b")
    with pytest.raises(ValueError):
        parse_selector("a b")


# --- matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {}, True),
        ("", {"a": "b"}, True),
        ("app=web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app=web", {}, False),
        ("app!=web", {"app": "db"}, True),
        # Kubernetes: a missing label satisfies != and notin.
        ("app!=web", {}, True),
        ("env in (a,b)", {"env": "b"}, True),
        ("env in (a,b)", {"env": "c"}, False),
        ("env in (a,b)", {}, False),
        ("env notin (a,b)", {"env": "c"}, True),
        ("env notin (a,b)", {}, True),
        ("env notin (a,b)", {"env": "a"}, False),
        ("key", {"key": ""}, True),
        ("key", {}, False),
        ("!key", {}, True),
        ("!key", {"key": "v"}, False),
        ("app=", {"app": ""}, True),
        ("app=", {}, False),
        ("app=web,tier=fe", {"app": "web", "tier": "fe", "x": "y"}, True),
        ("app=web,tier=fe", {"app": "web"}, False),
    ],
)
def test_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


# --- the object form -----------------------------------------------------------------


def test_object_form() -> None:
    selector = selector_from_label_selector({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "staging"]},
            {"key": "tier", "operator": "NotIn", "values": ["db"]},
            {"key": "release", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist", "values": []},
        ],
    })
    assert str(selector) == "app=web,env in (prod,staging),!legacy,release,tier notin (db)"
    assert selector.matches({"app": "web", "env": "prod", "release": "1"})
    assert not selector.matches({"app": "web", "env": "prod"})
    assert not selector.matches({"app": "web", "env": "prod", "release": "1", "legacy": "y"})
    assert parse_selector(str(selector)) == selector


def test_empty_object_selects_everything() -> None:
    assert selector_from_label_selector({}) == EVERYTHING
    assert selector_from_label_selector({"matchLabels": None, "matchExpressions": []}).empty
    assert EVERYTHING.matches({"any": "thing"})


def test_object_form_errors_name_every_problem() -> None:
    errors = label_selector_errors({
        "matchLabel": {"app": "web"},
        "matchLabels": {"-x": "y", "ok": "bad value"},
        "matchExpressions": [
            {"key": "a", "operator": "in", "values": ["x"]},
            {"key": "b", "operator": "In"},
            {"key": "c", "operator": "Exists", "values": ["x"]},
            {"operator": "Exists", "value": ["x"]},
            "nope",
        ],
    })
    assert errors == [
        ("matchLabel", 'unknown field; did you mean "matchLabels"?'),
        ("matchLabels", 'invalid label key "-x": name part must consist of alphanumeric characters, '
                        "'-', '_' or '.', and must start and end with an alphanumeric character"),
        ("matchLabels[ok]", 'invalid label value "bad value": must be empty or consist of alphanumeric '
                            "characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
        ("matchExpressions[0].operator",
         'must be one of In, NotIn, Exists, DoesNotExist, got string "in"; did you mean "In"?'),
        ("matchExpressions[1].values", "must be non-empty when operator is In"),
        ("matchExpressions[2].values", "must be empty when operator is Exists"),
        ("matchExpressions[3].value", 'unknown field; did you mean "values"?'),
        ("matchExpressions[3].key", "is required"),
        ("matchExpressions[4]", 'must be a mapping, got string "nope"'),
    ]
    with pytest.raises(SelectorError, match="matchLabel: unknown field"):
        selector_from_label_selector({"matchLabel": {}})


# --- properties ----------------------------------------------------------------------------

_name = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?", fullmatch=True)
_prefix = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,5}[a-z0-9])?(\.[a-z0-9]{1,4}){0,2}", fullmatch=True)
label_keys = st.one_of(_name, st.builds(lambda p, n: f"{p}/{n}", _prefix, _name), st.sampled_from(["in", "notin"]))
label_values = st.one_of(st.just(""), _name, st.sampled_from(["in", "notin"]))


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    key = draw(label_keys)
    op = draw(st.sampled_from(list(Operator)))
    if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
        values: tuple[str, ...] = ()
    elif op in (Operator.EQUALS, Operator.NOT_EQUALS):
        values = (draw(label_values),)
    else:
        values = tuple(sorted(draw(st.sets(label_values, min_size=1, max_size=4))))
    return Requirement(key, op, values)


selectors = st.lists(requirements(), max_size=5).map(Selector.of)
label_maps = st.dictionaries(label_keys, label_values, max_size=5)


@FAST
@given(selectors)
def test_string_round_trip(selector: Selector) -> None:
    assert parse_selector(str(selector)) == selector


@FAST
@given(selectors, label_maps)
def test_matching_semantics(selector: Selector, labels: dict[str, str]) -> None:
    # A selector is the conjunction of its requirements, and printing it changes nothing.
    assert selector.matches(labels) == all(Selector((r,)).matches(labels) for r in selector.requirements)
    assert parse_selector(str(selector)).matches(labels) == selector.matches(labels)
    for r in selector.requirements:
        has, value = r.key in labels, labels.get(r.key)
        expected = {
            Operator.EQUALS: has and value in r.values,
            Operator.IN: has and value in r.values,
            Operator.NOT_EQUALS: not (has and value in r.values),
            Operator.NOT_IN: not (has and value in r.values),
            Operator.EXISTS: has,
            Operator.DOES_NOT_EXIST: not has,
        }[r.operator]
        assert r.matches(labels) == expected


@FAST
@given(label_maps)
def test_match_labels_selects_supersets(labels: dict[str, str]) -> None:
    selector = selector_from_label_selector({"matchLabels": labels})
    assert selector.matches(labels)
    assert selector.matches({**labels, "zzz-extra": "1"})
    for key in labels:
        assert not selector.matches({k: v for k, v in labels.items() if k != key})


@FAST
@given(st.one_of(st.text(max_size=40), st.text(alphabet="ab=!(), in notin/.-_", max_size=30)))
def test_parse_raises_only_selector_errors(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError as e:
        assert e.message
    else:
        assert parse_selector(str(selector)) == selector


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=12,
)


@FAST
@given(st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "matchLabels": st.one_of(label_maps, json_values),
    "matchExpressions": st.lists(st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "key": st.one_of(label_keys, json_values),
        "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "in", ""]),
        "values": st.one_of(st.lists(label_values, max_size=3), json_values)})), max_size=3),
})))
def test_object_form_raises_only_selector_errors(obj: object) -> None:
    try:
        selector = selector_from_label_selector(obj)  # type: ignore[arg-type]
    except SelectorError as e:
        assert e.message and label_selector_errors(obj)
    else:
        assert label_selector_errors(obj) == []
        assert parse_selector(str(selector)) == selector
