"""Safe conditions over the arguments of a tool call.

A policy rule may carry a condition such as ``amount <= 1000 and currency == "EUR"``.
Conditions are parsed by the hand-written tokenizer and recursive-descent parser below;
nothing here ever hands text to ``eval``, ``exec``, ``compile`` or any Python parser.

Expression grammar (keywords are lowercase; ``True``, ``AND`` etc. are rejected)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := path [OP scalar | ("in" | "not" "in") list] | scalar OP path
    OP         := "==" | "!=" | "<" | "<=" | ">" | ">="
    path       := name ("." name)*          name := [A-Za-z_][A-Za-z0-9_]*
    scalar     := number | string | "true" | "false" | "null"
    list       := "[" [scalar ("," scalar)*] "]"

- A bare path ``urgent`` means ``urgent == true``.  ``1000 >= amount`` is normalised to
  ``amount <= 1000``; a literal on the left is not allowed with ``in``/``not in``.
- Numbers: ``12``, ``-3``, ``12.50``.  Exponents (``1e3``), ``.5``, ``5.`` and a space after
  the minus sign are rejected.  Integral values become ints (``2.0`` is ``2``); other decimals
  must survive a round trip through a float (at most ~17 significant digits), otherwise
  the condition is rejected rather than silently rounded.
- Strings use single or double quotes; the only escapes are ``\\\\``, ``\\'`` and ``\\"``.
- Path segments may not be keywords in any letter case; list indexing is not supported.
- Limits: the source and the canonical text are at most 2000 characters; parentheses plus
  ``not`` nest at most 32 deep in text, and all/any/not nodes at most 32 deep in the tree.

Structured form (what ``to_dict`` returns; ``compile_condition`` accepts it too)::

    {"all": [cond, ...]}   {"any": [cond, ...]}   {"not": cond}
    {"arg": "payee.country", "op": "in", "value": ["DE", "FR"]}

``all``/``any`` need non-empty lists; values are JSON scalars (finite numbers only), or a
list of JSON scalars exactly when ``op`` is ``in``/``not in``.  Both forms are canonicalised:
nested ``all`` inside ``all`` (and ``any`` inside ``any``) are flattened and one-element
groups collapse to their element, so ``str()`` and ``to_dict()`` round-trip exactly.
``compile_condition(None)``, ``""``, whitespace-only text and ``{}`` mean "no condition";
anything invalid raises ``ConditionError`` (a ValueError), whose ``position`` is the 0-based
offset of a syntax error in text and None otherwise.

Evaluation semantics (``evaluate`` never raises for JSON-like args):

- A path reads nested mappings.  If any step is missing or is not a mapping, the
  comparison is False whatever the operator, so ``x != 1`` is False but ``not (x == 1)``
  is True when ``x`` is missing.  Non-mapping ``args`` behave as an empty mapping.
- Equality is defined across all types: values of different types are simply unequal,
  so ``!=`` is True for a present value of another type (``x != "EUR"`` with ``x = 5``).
- Ordering (``< <= > >=``) holds only between two numbers or two strings (code-point
  order); any other pairing, including null and booleans, is False.
- bool is not a number: ``flag == 1`` is False when ``flag`` is True.
- Numbers compare by value across int, float and Decimal; floats are read as
  ``Decimal(repr(x))`` so they compare as written (``0.30000000000000004 != 0.3``).
  NaN equals nothing and orders with nothing.
- ``in``/``not in`` test list membership with the same equality rules.
"""

from __future__ import annotations

import json
import math
import operator
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

__all__ = [
    "COMPARISON_OPERATORS",
    "KEYWORDS",
    "MAX_DEPTH",
    "MAX_SOURCE_LENGTH",
    "OPERATORS",
    "Condition",
    "ConditionError",
    "compile_condition",
]

MAX_SOURCE_LENGTH = 2000
MAX_DEPTH = 32
KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
COMPARISON_OPERATORS = ("==", "!=", "<", "<=", ">", ">=")
OPERATORS = frozenset((*COMPARISON_OPERATORS, "in", "not in"))
_MIRRORED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_LITERALS: dict[str, Scalar] = {"true": True, "false": False, "null": None}
_SHAPES = ({"all"}, {"any"}, {"not"}, {"arg", "op", "value"})
_KNOWN_KEYS = frozenset().union(*_SHAPES)
_NAME_START = frozenset(string.ascii_letters + "_")
_NAME_CHARS = _NAME_START | frozenset(string.digits)
_DIGITS = frozenset(string.digits)
_MAX_INT_BITS = 6700  # about 2000 decimal digits
_MISSING = object()

Scalar = None | bool | int | float | str
Value = Scalar | tuple[Scalar, ...]


class ConditionError(ValueError):
    """An invalid condition; ``position`` is the 0-based offset of a syntax error."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


def _as_number(value: object) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        number = Decimal(repr(value))
    elif isinstance(value, Decimal):
        number = value
    else:
        return None
    # NaN (and signalling NaN, which raises on ==) is kept out of every comparison.
    return None if number.is_nan() else number


def _equal(left: object, right: object) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    left_number, right_number = _as_number(left), _as_number(right)
    if left_number is not None or right_number is not None:
        return left_number is not None and right_number is not None and left_number == right_number
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    return left is None and right is None


def _orderable(left: object, right: object) -> tuple[Any, Any] | None:
    left_number, right_number = _as_number(left), _as_number(right)
    if left_number is not None and right_number is not None:
        return left_number, right_number
    if isinstance(left, str) and isinstance(right, str):
        return left, right
    return None


def _resolve(args: object, path: str) -> object:
    current = args
    for segment in path.split("."):
        # Membership before indexing so a defaultdict in the args is never mutated.
        if not isinstance(current, Mapping) or segment not in current:
            return _MISSING
        current = current[segment]
    return current


def _format_value(value: Value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_format_value(item) for item in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")  # the grammar has no exponent notation
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, eq=False, repr=False)
class Condition:
    """A compiled, immutable condition; build one with :func:`compile_condition`.

    ``kind`` is ``"all"`` or ``"any"`` (two or more children), ``"not"`` (one child) or
    ``"compare"`` (``arg``, ``op`` and ``value``, a tuple for ``in``/``not in``).
    """

    kind: str
    children: tuple[Condition, ...] = ()
    arg: str = ""
    op: str = ""
    value: Value = None

    def evaluate(self, args: Mapping[str, Any]) -> bool:
        if self.kind == "all":
            return all(child.evaluate(args) for child in self.children)
        if self.kind == "any":
            return any(child.evaluate(args) for child in self.children)
        if self.kind == "not":
            return not self.children[0].evaluate(args)
        actual = _resolve(args, self.arg)
        if actual is _MISSING:
            return False
        if self.op in ("==", "!="):
            return _equal(actual, self.value) == (self.op == "==")
        if isinstance(self.value, tuple):
            return any(_equal(actual, item) for item in self.value) == (self.op == "in")
        pair = _orderable(actual, self.value)
        return pair is not None and _ORDERINGS[self.op](*pair)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "not":
            return {"not": self.children[0].to_dict()}
        if self.kind != "compare":
            return {self.kind: [child.to_dict() for child in self.children]}
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"arg": self.arg, "op": self.op, "value": value}

    def __str__(self) -> str:
        if self.kind == "compare":
            return f"{self.arg} {self.op} {_format_value(self.value)}"
        # Only and/or groups need brackets: flattening left none directly inside its own kind.
        parts = [f"({c})" if c.kind in ("all", "any") else str(c) for c in self.children]
        if self.kind == "not":
            return f"not {parts[0]}"
        return (" and " if self.kind == "all" else " or ").join(parts)

    @property
    def depth(self) -> int:
        """Nesting depth: 1 for a comparison, plus one per enclosing all/any/not."""
        return 1 + max((child.depth for child in self.children), default=0)

    def _key(self) -> str:
        # JSON text tells true from 1, which dict or tuple equality would not.
        return json.dumps(self.to_dict(), sort_keys=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Condition):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"<Condition {str(self)!r}>"


def _group(kind: str, children: list[Condition]) -> Condition:
    flat: list[Condition] = []
    for child in children:
        flat.extend(child.children if child.kind == kind else (child,))
    return flat[0] if len(flat) == 1 else Condition(kind, tuple(flat))


def _compare(arg: str, op: str, value: Value) -> Condition:
    return Condition("compare", arg=arg, op=op, value=value)


def _not(child: Condition) -> Condition:
    return Condition("not", (child,))


def _path_problem(path: str) -> str | None:
    for segment in path.split("."):
        if not segment or segment[0] not in _NAME_START or not set(segment) <= _NAME_CHARS:
            return f"invalid argument path {path!r}"
        if segment.lower() in KEYWORDS:
            lower = "" if segment.islower() else f" (keywords are lowercase: {segment.lower()!r})"
            return f"{segment!r} is a reserved word, not an argument name{lower}"
    return None


def _canonical_number(number: Decimal) -> int | float | None:
    """An int if integral, else a float that holds ``number`` exactly; None if neither fits."""
    integral = int(number)
    if Decimal(integral) == number:
        # Anything this large breaks the length limit anyway, and str(int) has its own cap.
        return integral if integral.bit_length() <= _MAX_INT_BITS else None
    as_float = float(number)
    exact = math.isfinite(as_float) and Decimal(repr(as_float)) == number
    return as_float if exact else None


def _error_at(message: str, position: int, suffix: str = "") -> ConditionError:
    return ConditionError(f"{message} at position {position}{suffix}", position)


class _Token(NamedTuple):
    kind: str  # "path", "keyword", "value", "op", "end" or one of ( ) [ ] ,
    text: str
    value: Any
    position: int


def _read_string(source: str, start: int) -> tuple[str, int]:
    quote, i = source[start], start + 1
    chars: list[str] = []
    while i < len(source):
        char = source[i]
        if char == quote:
            return "".join(chars), i + 1
        if char == "\\":
            if source[i + 1 : i + 2] not in ("\\", "'", '"'):
                raise _error_at("invalid escape (only \\\\, \\' and \\\" are allowed)", i)
            i += 1
            char = source[i]
        chars.append(char)
        i += 1
    raise _error_at("unterminated string", start)


def _read_number(source: str, start: int) -> tuple[int | float, int]:
    end = start + 1
    while end < len(source) and (source[end] in _DIGITS or source[end] == "."):
        end += 1
    text = source[start:end]
    _, dot, fraction = text.partition(".")
    if dot and not fraction:
        raise _error_at("expected digits after '.'", end)
    if "." in fraction or (end < len(source) and source[end] in _NAME_CHARS):
        exponent = end < len(source) and source[end] in "eE"
        raise _error_at("invalid number" + (" (exponents are not supported)" * exponent), start)
    value = _canonical_number(Decimal(text))
    if value is None:
        raise _error_at(f"number {text} has more digits than supported", start)
    return value, end


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(source):
        char, start = source[i], i
        value: Any = None
        if char in " \t\r\n":
            i += 1
            continue
        if char in "()[],":
            kind, i = char, i + 1
        elif char in "=!<>":
            value = source[i : i + 2] if source[i : i + 2] in _MIRRORED else char
            if value not in _MIRRORED:
                hint = " (use '==' for equality)" if char == "=" else ""
                raise _error_at(f"unexpected {char!r}{hint}", i)
            kind, i = "op", i + len(value)
        elif char in "'\"":
            kind, (value, i) = "value", _read_string(source, i)
        elif char in _DIGITS or (char == "-" and source[i + 1 : i + 2] in _DIGITS):
            kind, (value, i) = "value", _read_number(source, i)
        elif char in _NAME_START:
            while i < len(source) and (source[i] in _NAME_CHARS or source[i] == "."):
                i += 1
            kind, value = "path", source[start:i]
            if value in _LITERALS:
                kind, value = "value", _LITERALS[value]
            elif value in KEYWORDS:
                kind = "keyword"
            elif problem := _path_problem(value):
                raise _error_at(problem, start)
        else:
            raise _error_at(f"unexpected character {char!r}", i)
        tokens.append(_Token(kind, source[start:i], value, start))
    tokens.append(_Token("end", "", None, len(source)))
    return tokens


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokenize(source)
        self.index = 0
        self.depth = 0

    def peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.peek()
        self.index += 1
        return token

    def at_keyword(self, word: str, offset: int = 0) -> bool:
        token = self.peek(offset)
        return token.kind == "keyword" and token.value == word

    def unexpected(self, expected: str) -> ConditionError:
        token = self.peek()
        found = "end of input" if token.kind == "end" else repr(token.text[:30])
        return _error_at(f"unexpected {found}", token.position, f" (expected {expected})")

    def expect(self, kind: str, expected: str) -> _Token:
        if self.peek().kind != kind:
            raise self.unexpected(expected)
        return self.advance()

    def parse(self) -> Condition:
        condition = self.parse_or()
        self.expect("end", "'and', 'or' or end of input")
        return condition

    def parse_or(self) -> Condition:
        children = [self.parse_and()]
        while self.at_keyword("or"):
            self.advance()
            children.append(self.parse_and())
        return _group("any", children)

    def parse_and(self) -> Condition:
        children = [self.parse_not()]
        while self.at_keyword("and"):
            self.advance()
            children.append(self.parse_not())
        return _group("all", children)

    def parse_not(self) -> Condition:
        kind = self.peek().kind
        if kind == "path":
            return self.parse_comparison()
        if kind == "value":
            return self.parse_literal_left()
        if not (kind == "(" or self.at_keyword("not")):
            raise self.unexpected("a condition")
        # Bounding nesting here is what keeps the recursive descent off Python's stack limit.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error_at(f"conditions nest deeper than {MAX_DEPTH} levels", self.peek().position)
        self.advance()
        if kind == "(":
            condition = self.parse_or()
            self.expect(")", "')'")
        else:
            condition = _not(self.parse_not())
        self.depth -= 1
        return condition

    def parse_comparison(self) -> Condition:
        path = self.advance().value
        if self.peek().kind == "op":
            op = self.advance().value
            return _compare(path, op, self.parse_scalar())
        if self.at_keyword("in") or (self.at_keyword("not") and self.at_keyword("in", 1)):
            op = "in" if self.advance().value == "in" else "not in"
            if op == "not in":
                self.advance()
            return _compare(path, op, self.parse_list(op))
        return _compare(path, "==", True)

    def parse_literal_left(self) -> Condition:
        value = self.advance().value
        if self.at_keyword("in") or self.at_keyword("not"):
            raise _error_at("'in' needs the argument name on its left", self.peek().position)
        op = self.expect("op", "a comparison operator").value
        path = self.expect("path", "an argument name").value
        return _compare(path, _MIRRORED[op], value)

    def parse_scalar(self) -> Scalar:
        if self.peek().kind == "[":
            raise _error_at("a list is only allowed after 'in' or 'not in'", self.peek().position)
        value: Scalar = self.expect("value", "a value").value
        return value

    def parse_list(self, op: str) -> tuple[Scalar, ...]:
        self.expect("[", f"a list after {op!r}")
        items: list[Scalar] = []
        if self.peek().kind != "]":
            items.append(self.parse_scalar())
            while self.peek().kind == ",":
                self.advance()
                items.append(self.parse_scalar())
        self.expect("]", "',' or ']'")
        return tuple(items)


def _scalar(value: object, where: str) -> Scalar:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # a plain str, whatever subclass came in
    if isinstance(value, float) and not math.isfinite(value):
        raise ConditionError(f"{where}value must be a finite number, not {value!r}")
    if isinstance(value, int | float):
        number = _canonical_number(Decimal(repr(value) if isinstance(value, float) else value))
        if number is None:  # every finite float fits, so only a huge int gets here
            raise ConditionError(f"{where}number is too large")
        return number
    raise ConditionError(f"{where}unsupported value of type {type(value).__name__}")


def _from_mapping(data: object, where: str, depth: int) -> Condition:
    prefix = f"{where}: " if where else ""
    if depth > MAX_DEPTH:
        raise ConditionError(f"{prefix}conditions nest deeper than {MAX_DEPTH} levels")
    if not isinstance(data, Mapping):
        raise ConditionError(f"{prefix}expected a condition object, not {type(data).__name__}")
    keys = set(data)
    if keys not in _SHAPES:
        unknown = sorted(repr(key) for key in keys if key not in _KNOWN_KEYS)
        if unknown:
            raise ConditionError(f"{prefix}unknown key(s) {', '.join(unknown)}")
        raise ConditionError(
            f"{prefix}a condition needs exactly one of 'all', 'any' or 'not', "
            f"or all of 'arg', 'op' and 'value'; got {sorted(keys)}"
        )
    if keys == {"not"}:
        return _not(_from_mapping(data["not"], f"{where}.not".lstrip("."), depth + 1))
    if keys != {"arg", "op", "value"}:
        (key,) = keys
        children = data[key]
        if not isinstance(children, list) or not children:
            raise ConditionError(f"{prefix}{key!r} needs a non-empty list of conditions")
        path = f"{where}.{key}".lstrip(".")
        nodes = [_from_mapping(c, f"{path}[{i}]", depth + 1) for i, c in enumerate(children)]
        return _group(key, nodes)
    arg, op, value = data["arg"], data["op"], data["value"]
    if not isinstance(arg, str):
        raise ConditionError(f"{prefix}'arg' must be a string")
    if problem := _path_problem(arg):
        raise ConditionError(f"{prefix}{problem}")
    if not isinstance(op, str) or op not in OPERATORS:
        raise ConditionError(f"{prefix}unknown operator {op!r}")
    if op in ("in", "not in"):
        if not isinstance(value, list):
            raise ConditionError(f"{prefix}{op!r} needs a list value")
        items = tuple(_scalar(item, f"{prefix}value[{i}]: ") for i, item in enumerate(value))
        return _compare(str(arg), op, items)
    if isinstance(value, list):
        raise ConditionError(f"{prefix}a list value needs 'in' or 'not in', not {op!r}")
    return _compare(str(arg), op, _scalar(value, prefix))


def compile_condition(source: str | Mapping[str, Any] | None) -> Condition | None:
    """Compile expression text or the structured form; ``None`` means no condition."""
    if source is None:
        return None
    if isinstance(source, str):
        if len(source) > MAX_SOURCE_LENGTH:
            raise ConditionError(f"condition is longer than {MAX_SOURCE_LENGTH} characters")
        if not source.strip(" \t\r\n"):
            return None
        condition = _Parser(source).parse()
    elif isinstance(source, Mapping):
        if not source:
            return None
        condition = _from_mapping(source, "", 1)
    else:
        kind = type(source).__name__
        raise ConditionError(f"a condition must be text, a mapping or None, not {kind}")
    # Checked on the result too so that every condition's str() and to_dict() recompile.
    if condition.depth > MAX_DEPTH:
        raise ConditionError(f"conditions nest deeper than {MAX_DEPTH} levels")
    if (length := len(str(condition))) > MAX_SOURCE_LENGTH:
        limit = MAX_SOURCE_LENGTH
        raise ConditionError(f"condition is {length} characters in canonical form (limit {limit})")
    return condition
