"""Tests for agents.conditions: parsing, canonical forms, validation and evaluation."""

from __future__ import annotations

import dataclasses
import json
import operator
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agents.conditions import (
    COMPARISON_OPERATORS,
    KEYWORDS,
    MAX_DEPTH,
    MAX_SOURCE_LENGTH,
    Condition,
    ConditionError,
    compile_condition,
)

PYTHON_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def compiled(source: str | dict[str, Any]) -> Condition:
    condition = compile_condition(source)
    assert condition is not None
    return condition


def check(source: str | dict[str, Any], args: dict[str, Any]) -> bool:
    return compiled(source).evaluate(args)


def canonical_json(condition: Condition) -> str:
    # Plain dict equality would treat True and 1 as equal; JSON text does not.
    return json.dumps(condition.to_dict(), sort_keys=True)


def literal(number: int | float) -> str:
    """Write a number in the grammar's notation, which has no exponents."""
    return str(number) if isinstance(number, int) else format(Decimal(repr(number)), "f")


def structured_depth(data: Any) -> int:
    if "not" in data:
        return 1 + structured_depth(data["not"])
    for key in ("all", "any"):
        if key in data:
            return 1 + max(structured_depth(child) for child in data[key])
    return 1


# --- empty input ---------------------------------------------------------------------


@pytest.mark.parametrize("source", [None, "", "   \n\t", {}])
def test_empty_source_means_no_condition(source: Any) -> None:
    assert compile_condition(source) is None


# --- precedence ----------------------------------------------------------------------


def test_and_binds_tighter_than_or() -> None:
    condition = compiled("a == 1 or b == 1 and c == 1")
    assert condition.to_dict() == {
        "any": [
            {"arg": "a", "op": "==", "value": 1},
            {"all": [{"arg": "b", "op": "==", "value": 1}, {"arg": "c", "op": "==", "value": 1}]},
        ]
    }
    assert condition.evaluate({"a": 1, "b": 0, "c": 0}) is True
    assert condition.evaluate({"a": 0, "b": 1, "c": 0}) is False


def test_not_binds_tighter_than_and() -> None:
    condition = compiled("not a == 1 and b == 1")
    assert condition.to_dict() == {
        "all": [{"not": {"arg": "a", "op": "==", "value": 1}}, {"arg": "b", "op": "==", "value": 1}]
    }
    assert condition.evaluate({"a": 2, "b": 1}) is True
    assert condition.evaluate({"a": 1, "b": 2}) is False


def test_parentheses_override_precedence() -> None:
    condition = compiled("(a == 1 or b == 1) and c == 1")
    assert condition.evaluate({"a": 1, "b": 0, "c": 0}) is False
    assert condition.evaluate({"a": 1, "b": 0, "c": 1}) is True
    assert str(condition) == "(a == 1 or b == 1) and c == 1"
    assert str(compiled("not (a == 1 and b == 2)")) == "not (a == 1 and b == 2)"


def test_nested_groups_of_the_same_kind_are_flattened() -> None:
    flat = compiled("a == 1 and b == 2 and c == 3")
    assert compiled("a == 1 and (b == 2 and c == 3)") == flat
    assert compiled({"all": [{"all": [{"arg": "a", "op": "==", "value": 1}]}]}).to_dict() == {
        "arg": "a",
        "op": "==",
        "value": 1,
    }
    assert str(compiled("((a == 1))")) == "a == 1"


def test_keywords_are_lowercase_only() -> None:
    with pytest.raises(ConditionError, match="keywords are lowercase: 'true'"):
        compile_condition("flag == True")
    with pytest.raises(ConditionError, match="reserved word"):
        compile_condition("a == 1 AND b == 2")


# --- operators -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "amount", "expected"),
    [
        ("amount == 10", 10, True),
        ("amount == 10", 11, False),
        ("amount != 10", 11, True),
        ("amount != 10", 10, False),
        ("amount < 10", 9, True),
        ("amount < 10", 10, False),
        ("amount <= 10", 10, True),
        ("amount <= 10", 11, False),
        ("amount > 10", 11, True),
        ("amount > 10", 10, False),
        ("amount >= 10", 10, True),
        ("amount >= 10", 9, False),
        ("amount in [1, 10]", 10, True),
        ("amount in [1, 10]", 5, False),
        ("amount not in [1, 10]", 5, True),
        ("amount not in [1, 10]", 1, False),
        ("amount in []", 1, False),
        ("amount not in []", 1, True),
    ],
)
def test_each_operator_compares_numbers(source: str, amount: int, expected: bool) -> None:
    assert check(source, {"amount": amount}) is expected


def test_strings_compare_by_equality_and_code_point_order() -> None:
    assert check('name == "bob"', {"name": "bob"}) is True
    assert check("name < 'bob'", {"name": "alice"}) is True
    assert check("name >= 'bob'", {"name": "Zed"}) is False  # uppercase sorts first


def test_literal_on_the_left_is_mirrored() -> None:
    condition = compiled("1000 >= amount")
    assert condition.to_dict() == {"arg": "amount", "op": "<=", "value": 1000}
    assert str(condition) == "amount <= 1000"
    for source, mirrored in [("5 < x", "x > 5"), ("5 == x", "x == 5"), ("'a' != x", 'x != "a"')]:
        assert str(compiled(source)) == mirrored


def test_literal_on_the_left_of_in_is_rejected() -> None:
    with pytest.raises(ConditionError, match="at position 6"):
        compile_condition('"EUR" in currencies')


def test_bare_path_means_equal_to_true() -> None:
    condition = compiled("urgent")
    assert condition.to_dict() == {"arg": "urgent", "op": "==", "value": True}
    assert condition.evaluate({"urgent": True}) is True
    assert condition.evaluate({"urgent": 1}) is False
    assert condition.evaluate({"urgent": "yes"}) is False


def test_dotted_path_reads_nested_mappings() -> None:
    condition = compiled('payee.address.country == "DE"')
    assert condition.evaluate({"payee": {"address": {"country": "DE"}}}) is True
    assert condition.evaluate({"payee": {"address": {"country": "FR"}}}) is False
    assert condition.evaluate({"payee": {"address": "DE"}}) is False
    assert condition.evaluate({"payee": ["address"]}) is False
    assert condition.evaluate({"payee.address.country": "DE"}) is False


def test_lookup_does_not_create_entries_in_default_dicts() -> None:
    args: defaultdict[str, Any] = defaultdict(dict)
    assert check("payee.country == 'DE'", args) is False
    assert dict(args) == {}


def test_in_and_not_in_test_list_membership() -> None:
    condition = compiled('payee.country in ["DE", "FR"]')
    assert condition.evaluate({"payee": {"country": "FR"}}) is True
    assert condition.evaluate({"payee": {"country": "US"}}) is False
    assert check("code not in ['a', 1, null]", {"code": "b"}) is True
    assert check("code not in ['a', 1, null]", {"code": None}) is False
    assert check("code in [true]", {"code": 1}) is False
    assert check("code in [1.0]", {"code": 1}) is True


def test_list_literal_is_only_allowed_after_in() -> None:
    with pytest.raises(ConditionError, match="only allowed after 'in'.* at position 5"):
        compile_condition("x == [1]")
    with pytest.raises(ConditionError, match=r"unexpected '1' at position 5 \(expected a list"):
        compile_condition("x in 1")
    with pytest.raises(ConditionError, match="only allowed after 'in'"):
        compile_condition("x in [[1]]")


def test_string_escapes_and_canonical_quotes() -> None:
    condition = compiled(r"""note == 'it\'s a \\ "quote"'""")
    assert condition.to_dict()["value"] == 'it\'s a \\ "quote"'
    assert str(condition) == 'note == "it\'s a \\\\ \\"quote\\""'
    assert compiled(str(condition)) == condition


# --- missing arguments and types -----------------------------------------------------


def test_missing_argument_makes_comparison_false() -> None:
    for source in ["x == 1", "x != 1", "x < 1", "x in [1]", "x not in [1]", "x == null", "x"]:
        assert check(source, {}) is False, source
    assert check("not (x == 1)", {}) is True
    assert check("not x == null", {"y": None}) is True


def test_non_mapping_args_behave_like_empty_args() -> None:
    assert compiled("x != 1").evaluate(None) is False  # type: ignore[arg-type]
    assert compiled("not x == 1").evaluate([1, 2]) is True  # type: ignore[arg-type]


def test_bool_is_not_a_number() -> None:
    assert check("flag == 1", {"flag": True}) is False
    assert check("flag != 1", {"flag": True}) is True
    assert check("flag > 0", {"flag": True}) is False
    assert check("count == true", {"count": 1}) is False
    assert check("flag == true", {"flag": True}) is True
    assert check("flag == false", {"flag": False}) is True
    assert check("count == 0", {"count": False}) is False


def test_type_mismatch_is_false_and_inequality_is_true() -> None:
    assert check("amount < 10", {"amount": "5"}) is False
    assert check("amount == 5", {"amount": "5"}) is False
    assert check("amount != 5", {"amount": "5"}) is True
    assert check("name > 'a'", {"name": 3}) is False
    assert check("amount >= 0", {"amount": None}) is False
    assert check("amount <= null", {"amount": None}) is False
    assert check("amount == null", {"amount": None}) is True
    assert check("amount != null", {"amount": 0}) is True
    assert check("amount == 1", {"amount": [1]}) is False
    assert check("amount < 1", {"amount": {"value": 0}}) is False


def test_numbers_compare_by_value_across_int_float_and_decimal() -> None:
    assert check("amount == 1000", {"amount": 1000.0}) is True
    assert check("amount == 12.50", {"amount": Decimal("12.5")}) is True
    assert check("amount <= 1000", {"amount": Decimal("1000.00")}) is True
    assert check("amount == 0.1", {"amount": 0.1}) is True
    assert check("amount == 0.3", {"amount": 0.1 + 0.2}) is False  # compared as written
    assert check("amount > 0.3", {"amount": 0.1 + 0.2}) is True
    assert check("amount < -3", {"amount": -3.5}) is True
    assert check("amount == 12345678901234567890123", {"amount": 12345678901234567890123})


def test_non_finite_numbers_do_not_raise() -> None:
    assert check("amount > 1000", {"amount": float("inf")}) is True
    for value in [float("nan"), Decimal("NaN"), Decimal("sNaN")]:
        assert check("amount == 1", {"amount": value}) is False
        assert check("amount != 1", {"amount": value}) is True
        assert check("amount < 1", {"amount": value}) is False
        assert check("amount in [1]", {"amount": value}) is False


def test_number_literals_are_canonical() -> None:
    assert compiled("x == 2.0").to_dict()["value"] == 2
    assert type(compiled("x == 2.0").to_dict()["value"]) is int
    assert compiled("x == -0.5").to_dict()["value"] == -0.5
    assert str(compiled({"arg": "x", "op": "<", "value": 1e-7})) == "x < 0.0000001"
    assert compiled({"arg": "x", "op": "<", "value": 1e23}).to_dict()["value"] == 10**23


def test_conditions_are_immutable_and_compare_by_canonical_form() -> None:
    condition = compiled("a == 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        condition.op = "!="  # type: ignore[misc]
    assert condition == compiled({"arg": "a", "op": "==", "value": 1})
    assert condition != compiled("a == true")
    assert len({condition, compiled("1 == a"), compiled("a == true")}) == 2
    json.dumps(compiled('a in [1, 2.5, "x", null, false] or not b').to_dict())


# --- syntax errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("amount <= 1000)", "unexpected ')' at position 14"),
        ("(amount <= 1000", "unexpected end of input at position 15"),
        ("amount ==", "unexpected end of input at position 9"),
        ("amount = 5", "unexpected '=' (use '==' for equality) at position 7"),
        ("amount == 1e3", "invalid number (exponents are not supported) at position 10"),
        ("amount == .5", "unexpected character '.' at position 10"),
        ("amount == 5.", "expected digits after '.' at position 12"),
        ("amount == - 5", "unexpected character '-' at position 10"),
        ("x == 0.12345678901234567890", "more digits than supported at position 5"),
        ("a == 1 and", "unexpected end of input at position 10"),
        ("a == 1 b == 2", "unexpected 'b' at position 7"),
        ("a == b", "unexpected 'b' at position 5"),
        ("a == 'open", "unterminated string at position 5"),
        (r"a == 'bad \n'", "invalid escape"),
        ("a.in == 1", "'in' is a reserved word"),
        ("a..b == 1", "invalid argument path 'a..b' at position 0"),
        ("items.0 == 1", "invalid argument path 'items.0' at position 0"),
        ("a == 1 && b == 2", "unexpected character '&' at position 7"),
        ("a == 1 or or b", "unexpected 'or' at position 10"),
        ("true", "unexpected end of input at position 4"),
        ("a ! b", "unexpected '!' at position 2"),
        ("é == 1", "unexpected character 'é' at position 0"),
        ("a in [1, 2,]", "unexpected ']' at position 11"),
    ],
)
def test_syntax_errors_name_the_position(source: str, message: str) -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition(source)
    assert message in str(caught.value)
    assert caught.value.position is not None
    assert f"at position {caught.value.position}" in str(caught.value)


# --- limits --------------------------------------------------------------------------


def test_source_longer_than_the_limit_is_rejected() -> None:
    padded = "a == 1" + " " * (MAX_SOURCE_LENGTH - 6)
    assert compiled(padded) == compiled("a == 1")
    with pytest.raises(ConditionError, match="longer than 2000"):
        compile_condition(padded + " ")


def test_canonical_text_longer_than_the_limit_is_rejected() -> None:
    many = {"any": [{"arg": "a", "op": "==", "value": "x" * 50} for _ in range(40)]}
    with pytest.raises(ConditionError, match="canonical form"):
        compile_condition(many)
    with pytest.raises(ConditionError, match="too large"):
        compile_condition({"arg": "a", "op": "==", "value": 10**3000})


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert compiled("(" * MAX_DEPTH + "a == 1" + ")" * MAX_DEPTH).evaluate({"a": 1}) is True
    nots = compiled("not " * (MAX_DEPTH - 1) + "a == 1")
    assert nots.depth == MAX_DEPTH
    assert compiled(nots.to_dict()) == nots
    assert compiled(str(nots)) == nots


@pytest.mark.parametrize(
    "source",
    [
        "(" * (MAX_DEPTH + 1) + "a == 1" + ")" * (MAX_DEPTH + 1),
        "not " * (MAX_DEPTH + 1) + "a == 1",
        "not " * 498 + "a == 1",
        "(" * 997 + "a",
    ],
)
def test_text_nested_too_deeply_is_rejected(source: str) -> None:
    assert len(source) <= MAX_SOURCE_LENGTH
    with pytest.raises(ConditionError, match="nest deeper than 32"):
        compile_condition(source)


def test_structured_form_nested_too_deeply_is_rejected() -> None:
    data: dict[str, Any] = {"arg": "a", "op": "==", "value": 1}
    for _ in range(MAX_DEPTH - 1):
        data = {"not": data}
    assert compiled(data).depth == MAX_DEPTH
    for _ in range(5000):  # deep enough to overflow the stack if depth were checked late
        data = {"not": data}
    with pytest.raises(ConditionError, match="nest deeper than 32"):
        compile_condition(data)


def test_alternating_groups_count_towards_the_depth_limit() -> None:
    source = "a == 1"
    for level in range(MAX_DEPTH):
        source = f"({source} {'and' if level % 2 else 'or'} a == 1)"
    with pytest.raises(ConditionError, match="nest deeper than 32"):
        compile_condition(source)


# --- structured form -----------------------------------------------------------------


def test_structured_form_compiles_to_the_same_condition_as_text() -> None:
    data = {
        "all": [
            {"arg": "amount", "op": "<=", "value": 1000},
            {"not": {"arg": "payee.country", "op": "in", "value": ["DE", "FR"]}},
        ]
    }
    condition = compiled(data)
    assert condition.to_dict() == data
    assert condition == compiled('amount <= 1000 and not payee.country in ["DE", "FR"]')
    assert condition.evaluate({"amount": 5, "payee": {"country": "US"}}) is True


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"arg": "a", "op": "==", "value": 1, "note": "x"}, "unknown key(s) 'note'"),
        ({"all": [], "any": []}, "exactly one of"),
        ({"arg": "a", "op": "=="}, "exactly one of"),
        ({1: "x"}, "unknown key(s) 1"),
        ({"all": []}, "'all' needs a non-empty list"),
        ({"any": {"arg": "a", "op": "==", "value": 1}}, "'any' needs a non-empty list"),
        ({"not": [{"arg": "a", "op": "==", "value": 1}]}, "not: expected a condition object"),
        ({"all": ["a == 1"]}, "all[0]: expected a condition object, not str"),
        ({"arg": "a", "op": "like", "value": "x"}, "unknown operator 'like'"),
        ({"arg": "a", "op": None, "value": "x"}, "unknown operator None"),
        ({"arg": "a", "op": "=", "value": 1}, "unknown operator '='"),
        ({"arg": 5, "op": "==", "value": 1}, "'arg' must be a string"),
        ({"arg": "", "op": "==", "value": 1}, "invalid argument path ''"),
        ({"arg": "a b", "op": "==", "value": 1}, "invalid argument path"),
        ({"arg": "a.", "op": "==", "value": 1}, "invalid argument path"),
        ({"arg": "null", "op": "==", "value": 1}, "reserved word"),
        ({"arg": "a", "op": "==", "value": [1]}, "a list value needs 'in'"),
        ({"arg": "a", "op": "in", "value": 1}, "'in' needs a list value"),
        ({"arg": "a", "op": "in", "value": ("x",)}, "'in' needs a list value"),
        ({"arg": "a", "op": "in", "value": [[1]]}, "value[0]: unsupported value of type list"),
        ({"arg": "a", "op": "==", "value": float("nan")}, "finite number"),
        ({"arg": "a", "op": "<", "value": float("inf")}, "finite number"),
        ({"arg": "a", "op": "==", "value": Decimal("1")}, "unsupported value of type Decimal"),
        ({"arg": "a", "op": "==", "value": {"x": 1}}, "unsupported value of type dict"),
        ({"arg": "a", "op": "==", "value": b"x"}, "unsupported value of type bytes"),
        (
            {"any": [{"arg": "a", "op": "==", "value": 1}, {"not": {"arg": "a", "op": "~"}}]},
            "any[1].not: a condition needs",
        ),
    ],
)
def test_structured_form_validation_errors(data: dict[Any, Any], message: str) -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition(data)
    assert message in str(caught.value)


@pytest.mark.parametrize("source", [42, b"a == 1", ["a == 1"], 1.5, True, object()])
def test_wrong_source_types_are_rejected(source: Any) -> None:
    with pytest.raises(ConditionError, match="must be text, a mapping or None"):
        compile_condition(source)


# --- property-based ------------------------------------------------------------------

bounded_numbers = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(deadline=None)
@given(a=bounded_numbers, b=bounded_numbers, op=st.sampled_from(COMPARISON_OPERATORS))
def test_numeric_comparison_matches_python(a: int | float, b: int | float, op: str) -> None:
    # Ints are bounded so that no float's shortest repr lands on the other side of an int;
    # beyond 2**53 "compare as written" deliberately differs from Python's exact comparison.
    expected = PYTHON_OPERATORS[op](a, b)
    assert check(f"x {op} {literal(b)}", {"x": a}) is expected
    assert check(f"{literal(b)} {op} x", {"x": a}) is PYTHON_OPERATORS[op](b, a)


@settings(deadline=None)
@given(a=st.integers(), b=st.integers(), op=st.sampled_from(COMPARISON_OPERATORS))
def test_integer_comparison_matches_python_at_any_size(a: int, b: int, op: str) -> None:
    assert check(f"x {op} {b}", {"x": a}) is PYTHON_OPERATORS[op](a, b)
    assert check(f"x {op} {b}", {"x": Decimal(a)}) is PYTHON_OPERATORS[op](a, b)


name_segments = st.one_of(
    st.sampled_from(["a", "b", "amount", "payee", "country", "_x1"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
        lambda name: name.lower() not in KEYWORDS
    ),
)
paths = st.lists(name_segments, min_size=1, max_size=3).map(".".join)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
comparisons = st.one_of(
    st.fixed_dictionaries(
        {"arg": paths, "op": st.sampled_from(COMPARISON_OPERATORS), "value": scalars}
    ),
    st.fixed_dictionaries(
        {
            "arg": paths,
            "op": st.sampled_from(["in", "not in"]),
            "value": st.lists(scalars, max_size=4),
        }
    ),
)
structured_conditions = st.recursive(
    comparisons,
    lambda children: st.one_of(
        st.builds(lambda items: {"all": items}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda items: {"any": items}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda child: {"not": child}, children),
    ),
    max_leaves=8,
)
json_scalars = st.one_of(
    scalars,
    st.integers(),
    st.floats(),
    st.decimals(),
    st.sampled_from(["EUR", "DE", ""]),
)
json_args = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(name_segments, children, max_size=4),
    ),
    max_leaves=12,
)


@settings(deadline=None)
@given(data=structured_conditions)
def test_text_and_structured_forms_round_trip(data: dict[str, Any]) -> None:
    assume(structured_depth(data) <= MAX_DEPTH)
    condition = compiled(data)
    from_text = compiled(str(condition))
    from_dict = compiled(condition.to_dict())
    assert canonical_json(from_text) == canonical_json(condition)
    assert canonical_json(from_dict) == canonical_json(condition)
    assert str(from_text) == str(condition)
    assert json.loads(json.dumps(condition.to_dict())) == condition.to_dict()


token_soup = st.lists(
    st.sampled_from(
        ["a", "b.c", "==", "!=", "<", ">=", "=", "in", "not", "and", "or", "(", ")", "[", "]"]
        + [",", "1", "-2.5", "1e3", '"s"', "'x\\'y'", "true", "null", "True", ".", "-", " "]
    ),
    max_size=15,
)


@settings(max_examples=300, deadline=None)
@given(source=st.one_of(st.text(max_size=60), token_soup.map(" ".join), token_soup.map("".join)))
def test_arbitrary_text_compiles_or_raises_condition_error(source: str) -> None:
    try:
        condition = compile_condition(source)
    except ConditionError:
        return
    if condition is not None:
        assert compiled(str(condition)) == condition
        assert isinstance(condition.evaluate({}), bool)


@settings(deadline=None)
@given(data=structured_conditions, args=st.dictionaries(name_segments, json_args, max_size=5))
def test_evaluate_never_raises_for_json_like_args(
    data: dict[str, Any], args: dict[str, Any]
) -> None:
    assume(structured_depth(data) <= MAX_DEPTH)
    condition = compiled(data)
    result = condition.evaluate(args)
    assert isinstance(result, bool)
    assert compiled(str(condition)).evaluate(args) is result
    assert compiled({"not": condition.to_dict()}).evaluate(args) is (not result)
