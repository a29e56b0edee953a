"""What the audit trail can store: one check for every value that ends up in an event.

The trail cannot be edited, so a value that it, Postgres or the canonical form cannot hold
must be refused where it enters Baton (the remote API, run input, edited arguments,
kill-switch reasons), with a clear message and before anything changes. Every boundary
calls `plain_json`; `audit.services` calls it once more on each event's payload as the last
line of defence. The rules:

- JSON values only (objects with text keys, arrays, text, numbers, true/false/null). Other
  Python values become text, as `json.dumps(default=str)` writes them.
- No NUL character in any text (Postgres refuses it in jsonb and text) and no lone
  surrogate (it is not UTF-8).
- Numbers: no NaN or infinities; a float must be finite (1e400 is infinity once parsed);
  an integer must lie within ±(2**53 - 1) or be one a double holds exactly (10**20), what
  every JSON reader holds exactly and what the RFC 8785 canonical form accepts.
- Nesting at most MAX_DEPTH objects or arrays deep (deeper values made pages fail).

`shown` is the other half: what a page shows of a value already stored, bounded.

A leaf: it imports nothing of Baton's.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

MAX_DEPTH = 32
MAX_SAFE_INTEGER = 2**53 - 1

NUL_CHARACTER = "{where}: text may not contain the NUL character (\\u0000)"
LONE_SURROGATE = "{where}: text may not contain a lone surrogate (it is not UTF-8)"
NOT_FINITE = "{where}: numbers must be finite (no NaN, Infinity or numbers beyond ±1.8e308)"
INTEGER_TOO_BIG = (
    "{where}: integers must lie within ±9007199254740991 (2**53 - 1) or be held exactly by a double"
)
TOO_DEEP = "{where}: nested more than {limit} levels deep"
TOO_LONG = "{where}: at most {limit} characters"
KEY_NOT_TEXT = "{where}: object keys must be text"


class Unstorable(ValueError):
    """The value cannot go into the audit trail; the message names where and why."""


def check_text(text: str, where: str, max_length: int | None = None) -> str:
    """Refuse text a column or the trail cannot hold; returns it unchanged."""
    if "\x00" in text:
        raise Unstorable(NUL_CHARACTER.format(where=where))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Unstorable(LONE_SURROGATE.format(where=where)) from None
    if max_length is not None and len(text) > max_length:
        raise Unstorable(TOO_LONG.format(where=where, limit=max_length))
    return text


def scrubbed(text: str) -> str:
    """Text an agent's own code produced (an exception's message), made storable rather
    than refused: a NUL and lone surrogates are written as their escapes."""
    return text.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode()


def plain_json(value: Any, where: str = "value") -> Any:
    """`value` as plain JSON the trail can store (tuples become lists, other values text),
    or Unstorable naming the first problem, such as `input.items[3].price`."""
    return _plain(value, where, 0)


def _plain(value: Any, where: str, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return check_text(str.__str__(value), where)
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER and not _exact_double(value):
            raise Unstorable(INTEGER_TOO_BIG.format(where=where))
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unstorable(NOT_FINITE.format(where=where))
        return float(value)
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_DEPTH:
            raise Unstorable(TOO_DEEP.format(where=where, limit=MAX_DEPTH))
        if isinstance(value, dict):
            plain = {}
            for key, item in value.items():
                name = _key(key, where)
                plain[name] = _plain(item, f"{where}.{name[:40]}", depth + 1)
            return plain
        return [_plain(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    # Decimals, dates, UUIDs…: written as text, as json.dumps(default=str) does.
    return check_text(str(value), where)


def _exact_double(value: int) -> bool:
    # Beyond 2**53 an integer is still one value in every JSON reader when a double holds
    # it exactly (10**20): the RFC 8785 form writes it, and reads it back, unchanged.
    try:
        return int(float(value)) == value
    except OverflowError:
        return False


def _key(key: Any, where: str) -> str:
    # json.dumps turns these keys into text; anything else it refuses.
    if isinstance(key, str):
        return check_text(str.__str__(key), f"{where} (a key)")
    if key is None or isinstance(key, bool):
        return {None: "null", True: "true", False: "false"}[key]
    if isinstance(key, int):
        return str(_plain(key, f"{where} (a key)", 0))
    if isinstance(key, float):
        return repr(_plain(key, f"{where} (a key)", 0))
    raise Unstorable(KEY_NOT_TEXT.format(where=where))


# --- showing stored values -------------------------------------------------------------

SHOW_DEPTH = 6
SHOW_ITEMS = 200
SHOW_VALUES = 2_000
SHOW_TEXT = 500
MORE = "…"


def shown(value: Any) -> Any:
    """What a page shows of a stored value: at most SHOW_DEPTH levels, SHOW_ITEMS items per
    object or array, SHOW_VALUES values in all and SHOW_TEXT characters per text, cuts
    marked with "…". The trail may hold values written before the boundaries refused them;
    pages show those bounded instead of failing on them (the stored bytes stay as they
    are, and verify)."""
    return _shown(value, 0, [SHOW_VALUES])


def _shown(value: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if isinstance(value, str):
        return value if len(value) <= SHOW_TEXT else value[:SHOW_TEXT] + MORE
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        # Python refuses to write integers of more than 4,300 digits as text.
        if value.bit_length() >= 14_000:
            return MORE
        text = str(value)
        return value if len(text) <= 40 else text[:40] + MORE
    if isinstance(value, dict | list | tuple):
        if depth >= SHOW_DEPTH:
            return MORE
        items = value.items() if isinstance(value, dict) else enumerate(value)
        kept = []
        for key, item in islice(items, SHOW_ITEMS):
            if budget[0] <= 0:
                break
            kept.append((key, _shown(item, depth + 1, budget)))
        more = len(value) - len(kept)
        if isinstance(value, dict):
            result = {_shown(str(k), depth, budget): v for k, v in kept}
            if more:
                result[MORE] = f"{more} more"
            return result
        return [v for _, v in kept] + ([f"{MORE} {more} more"] if more else [])
    return _shown(str(value), depth, budget)


class StoredJSONDecoder(json.JSONDecoder):
    """Reads stored JSON however deep the caller's stack already is: Python's parser gives
    up at the recursion limit counted from the caller's frame, so a value written before
    the boundaries refused deep nesting read on one page and failed on another with more
    middleware around it. On that error the value is read again on a fresh thread, whose
    whole budget it gets (deeper still, the error stands and the pages say so)."""

    def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().decode(s, *args, **kwargs)
        except RecursionError:
            with ThreadPoolExecutor(max_workers=1) as fresh:
                return fresh.submit(json.JSONDecoder.decode, self, s).result()
