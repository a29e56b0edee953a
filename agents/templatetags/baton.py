from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from django import template

register = template.Library()

MONEY_KEYS = {"amount", "total", "unit_price", "cost_eur"}


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@register.filter
def money(value: Any) -> str:
    try:
        return f"{Decimal(str(value)):,.2f}"
    except (InvalidOperation, ValueError):
        return str(value)


@register.filter
def arg_items(value: Any) -> list[tuple[str, str]]:
    """Arguments as (name, readable value) pairs, money shown as money."""
    if not isinstance(value, dict):
        return []
    items = []
    for key, item in value.items():
        if key in MONEY_KEYS and isinstance(item, int | float | str):
            shown = money(item)
        elif isinstance(item, dict | list):
            shown = json.dumps(item, ensure_ascii=False)
        else:
            shown = str(item)
        items.append((key, shown))
    return items


@register.filter
def get_item(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


@register.filter
def max_of(values: Any) -> int:
    return max(values or [0]) or 1


@register.filter
def mul(value: int, factor: int) -> int:
    return int(value) * int(factor)


@register.filter
def bar_h(value: int, peak: int) -> int:
    """Height of a bar in the 24-unit pace chart; any activity shows at least one unit."""
    return 0 if not value else max(1, round(22 * int(value) / int(peak)))


@register.filter
def bar_y(value: int, peak: int) -> int:
    return 24 - bar_h(value, peak)
