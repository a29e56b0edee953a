from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from django import template

from audit.jsonsafe import shown

register = template.Library()

MONEY_KEYS = {"amount", "total", "unit_price", "cost_eur"}
# A key that names its currency; other amounts take the `currency` beside them.
KEY_CURRENCY = {"cost_eur": "EUR"}
# Amounts with no currency beside them (a claim's amount, a price) are in the console's.
DEFAULT_CURRENCY = "EUR"
# Amounts with more digits before the point than this are shown in scientific notation:
# `1e5000000` is five million digits written out.
MONEY_DIGITS = 15
MONEY_DECIMALS = 8


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(shown(value), indent=2, ensure_ascii=False, default=str)


def _amount(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    if isinstance(value, int | Decimal):
        return Decimal(value)
    text = str(value).strip().replace(",", "")
    if not text or len(text) > 100:
        return None
    try:
        return Decimal(text)
    except (InvalidOperation, ValueError):
        return None


def money_number(value: Any, grouping: bool = True) -> str | None:
    """An amount as text of bounded size, at least two decimals (`1354.00`, not `1354.0`),
    or None if it is not a number."""
    amount = _amount(value)
    if amount is None:
        return None
    if not amount.is_finite():
        return str(amount)
    if amount.adjusted() >= MONEY_DIGITS:
        return f"{amount:.3E}"
    cents = amount.quantize(Decimal("0.01"))
    exact = amount.quantize(Decimal(1).scaleb(-MONEY_DECIMALS))
    if cents != amount and exact not in (0, cents):  # a model call's 0.00042 EUR
        return f"{exact.normalize():,f}" if grouping else f"{exact.normalize():f}"
    return f"{cents:,.2f}" if grouping else f"{cents:.2f}"


def currency_of(args: Any, key: str) -> str:
    """The currency of the amount at `key`: named by the key, the `currency` beside it,
    or the console's."""
    if key in KEY_CURRENCY:
        return KEY_CURRENCY[key]
    beside = args.get("currency") if isinstance(args, dict) else None
    if isinstance(beside, str) and beside.isalpha() and len(beside) <= 5:
        return beside.upper()
    return DEFAULT_CURRENCY


@register.filter
def money(value: Any, currency: str = "") -> str:
    """An amount with its currency, in bounded size: `1,354.00 EUR`. The one way money is
    shown (arg_items and edit_value use it too)."""
    number = money_number(value)
    if number is None:
        return str(shown(str(value)))
    return f"{number} {currency or DEFAULT_CURRENCY}"


@register.filter
def arg_items(value: Any) -> list[tuple[str, str]]:
    """Arguments as (name, readable value) pairs, money shown as money, every value
    bounded (audit.jsonsafe.shown)."""
    if not isinstance(value, dict):
        return []
    items = []
    for key, item in shown(value).items():
        if key in MONEY_KEYS and isinstance(item, int | float | str):
            text = money(value.get(key, item), currency_of(value, key))
        elif isinstance(item, dict | list):
            text = json.dumps(item, ensure_ascii=False)
        else:
            text = str(item)
        items.append((key, text))
    return items


@register.filter
def edit_value(args: Any, key: str) -> str:
    """The value an edit field starts with: an amount as `1354.00` (its currency is
    shown beside the field), anything else as stored, bounded."""
    value = args.get(key) if isinstance(args, dict) else None
    if value is None:
        return ""
    if key in MONEY_KEYS:
        number = money_number(value, grouping=False)
        if number is not None:
            return number
    if isinstance(value, dict | list):
        return json.dumps(shown(value), ensure_ascii=False)
    return str(shown(value))


@register.filter
def money_currency(args: Any, key: str) -> str:
    """The currency shown beside an edit field for an amount; empty for other fields."""
    return currency_of(args, key) if key in MONEY_KEYS else ""


@register.filter
def get_item(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _peak(values: Any) -> int:
    return max(values or [0]) or 1


def _bar_height(value: int, peak: int) -> int:
    """Height of a bar in the 24-unit pace chart; any activity shows at least one unit."""
    return 0 if not value else max(1, round(22 * int(value) / int(peak)))


@register.filter
def pace_path(values: Any) -> str:
    """The bars of the 24-unit pace chart as one SVG path, a bar every 10 units: the same
    bars as one rect each, drawn in one filter call where a page holds dozens of cards."""
    peak = _peak(values)
    bars = []
    for i, n in enumerate(values or []):
        h = _bar_height(n, peak)
        if h:
            bars.append(f"M{i * 10} {24 - h}h8v{h}h-8z")
    return "".join(bars)
