"""Resource quantities: Kubernetes' grammar, exact rounding up, helpful errors, round trips."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apimachinery.errors import ValidationError
from apimachinery.quantity import (
    MAX_QUANTITY,
    QuantityError,
    format_cpu,
    format_memory,
    parse_cpu,
    parse_memory,
)

FAST = settings(max_examples=150, deadline=None)


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        ("500m", 500),
        ("1", 1000),
        ("0.5", 500),
        (2, 2000),
        ("1.5", 1500),
        (0.5, 500),
        (0.1, 100),
        ("0", 0),
        ("0m", 0),
        ("100m", 100),
        (".25", 250),
        ("2.", 2000),
        ("+1", 1000),
        ("1e3", 1_000_000),
        ("1E-3", 1),
        ("2k", 2_000_000),
        # Kubernetes rounds sub-millicore amounts up to 1m, never down to 0.
        ("0.0001", 1),
        ("1.0001", 1001),
        ("1e-30", 1),
    ],
)
def test_parse_cpu(value: str | int | float, millis: int) -> None:
    assert parse_cpu(value) == millis


@pytest.mark.parametrize(
    ("value", "n_bytes"),
    [
        ("64Mi", 64 * 2**20),
        ("1Gi", 2**30),
        ("128974848", 128974848),
        ("129e6", 129_000_000),
        ("129M", 129_000_000),
        ("123Ki", 123 * 1024),
        ("1.5Gi", 1536 * 2**20),
        (134217728, 134217728),
        ("1k", 1000),
        ("1Ti", 2**40),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),
        ("0", 0),
        # Fractions of a byte round up.
        ("0.5", 1),
        (1.5, 2),
    ],
)
def test_parse_memory(value: str | int | float, n_bytes: int) -> None:
    assert parse_memory(value) == n_bytes


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("64MB", '"64MB" is not a quantity; use 64Mi or 67108864'),
        ("64mb", '"64mb" is not a quantity; use 64Mi or 67108864'),
        ("64Mb", '"64Mb" is not a quantity; use 64Mi or 67108864'),
        ("1GB", '"1GB" is not a quantity; use 1Gi or 1073741824'),
        ("1gi", '"1gi" is not a quantity; use 1Gi or 1073741824'),
        ("2KB", '"2KB" is not a quantity; use 2Ki or 2048'),
        ("1.5GB", '"1.5GB" is not a quantity; use 1.5Gi or 1610612736'),
        ("512 Mi", '"512 Mi" is not a quantity; use 512Mi or 536870912'),
        (" 64Mi", '" 64Mi" is not a quantity; use 64Mi or 67108864'),
        # Legal in Kubernetes (a tenth of a byte) and never what anyone meant.
        ("100m", '"100m" is not a quantity; use 100Mi or 104857600'),
        ("abc", '"abc" is not a quantity; use a number of bytes or a suffix like 64Mi or 1Gi'),
        ("", '"" is not a quantity; use a number of bytes or a suffix like 64Mi or 1Gi'),
        ("Mi", '"Mi" is not a quantity; use a number of bytes or a suffix like 64Mi or 1Gi'),
        ("1e", '"1e" is not a quantity; use a number of bytes or a suffix like 64Mi or 1Gi'),
        ("-64Mi", 'must not be negative, got "-64Mi"'),
        (-1, "must not be negative, got -1"),
        ("1e19", f'"1e19" is too large; the most is {MAX_QUANTITY} bytes'),
        (True, "must be a memory quantity (a string like 64Mi or a number), got boolean true"),
        ([], "must be a memory quantity (a string like 64Mi or a number), got list"),
        (float("inf"), "inf is not a quantity; use a number of bytes or a suffix like 64Mi or 1Gi"),
    ],
)
def test_memory_errors(value: object, message: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_memory(value)  # type: ignore[arg-type]
    assert info.value.message == message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", '"abc" is not a CPU quantity; use 500m or 0.5'),
        ("500 m", '"500 m" is not a CPU quantity; use 500m or 0.5'),
        ("1 core", '"1 core" is not a CPU quantity; use 500m or 0.5'),
        ("-1", 'must not be negative, got "-1"'),
        (-0.5, "must not be negative, got -0.5"),
        ("1e40", f'"1e40" is too large; the most is {MAX_QUANTITY} millicores'),
        (None, "must be a CPU quantity (a string like 500m or a number), got null"),
    ],
)
def test_cpu_errors(value: object, message: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_cpu(value)  # type: ignore[arg-type]
    assert info.value.message == message


def test_quantity_error_is_a_validation_error_and_a_value_error() -> None:
    with pytest.raises(ValidationError):
        parse_cpu("x")
    with pytest.raises(ValueError):
        parse_memory("x")


def test_huge_exponents_are_too_large_without_computing_them() -> None:
    with pytest.raises(QuantityError, match="too large"):
        parse_memory("1e999999999999999999999")
    assert parse_memory("1e-999999999999999999999") == 1
    with pytest.raises(QuantityError, match="too large"):
        parse_cpu(10**5000)


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [(67108864, "64Mi"), (2**30, "1Gi"), (1536 * 2**20, "1536Mi"), (129_000_000, "129M"), (1000, "1k"),
     (1023, "1023"), (0, "0"), (2**60, "1Ei")],
)
def test_format_memory(n_bytes: int, text: str) -> None:
    assert format_memory(n_bytes) == text


@pytest.mark.parametrize(("millis", "text"), [(1500, "1500m"), (2000, "2"), (500, "500m"), (0, "0"), (1, "1m")])
def test_format_cpu(millis: int, text: str) -> None:
    assert format_cpu(millis) == text


@FAST
@given(st.integers(min_value=0, max_value=MAX_QUANTITY))
def test_memory_round_trip(n: int) -> None:
    assert parse_memory(format_memory(n)) == n


@FAST
@given(st.integers(min_value=0, max_value=MAX_QUANTITY))
def test_cpu_round_trip(n: int) -> None:
    assert parse_cpu(format_cpu(n)) == n


_MULTIPLIERS = {
    "": Fraction(1), "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
}


@FAST
@given(
    whole=st.integers(min_value=0, max_value=10**6),
    fraction=st.one_of(st.none(), st.text(alphabet="0123456789", min_size=1, max_size=6)),
    suffix=st.sampled_from(sorted(_MULTIPLIERS)),
)
def test_memory_is_exact_and_rounds_up(whole: int, fraction: str | None, suffix: str) -> None:
    text = f"{whole}.{fraction}{suffix}" if fraction is not None else f"{whole}{suffix}"
    exact = (Fraction(whole) + (Fraction(int(fraction), 10 ** len(fraction)) if fraction else 0)) * _MULTIPLIERS[suffix]
    assert parse_memory(text) == math.ceil(exact)


@FAST
@given(whole=st.integers(min_value=0, max_value=1000), unit=st.sampled_from("KMGT"),
       spelling=st.sampled_from(["B", "b"]))
def test_misspelled_memory_suggests_the_binary_suffix(whole: int, unit: str, spelling: str) -> None:
    text = f"{whole}{unit}{spelling}"
    with pytest.raises(QuantityError) as info:
        parse_memory(text)
    suggested = f"{whole}{unit}i"
    assert info.value.message == f'"{text}" is not a quantity; use {suggested} or {parse_memory(suggested)}'


@FAST
@given(st.one_of(st.text(max_size=30), st.text(alphabet="0123456789.eE+-kKmMgGiIb ", max_size=12),
                 st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=2)))
def test_parsers_raise_only_quantity_errors(value: object) -> None:
    for parse in (parse_cpu, parse_memory):
        try:
            result = parse(value)  # type: ignore[arg-type]
        except QuantityError as e:
            assert e.message
        else:
            assert isinstance(result, int) and 0 <= result <= MAX_QUANTITY
