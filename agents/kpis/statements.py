"""The journal's queries of the KPI pages, compiled once a process and run with each
request's values: building and compiling the aggregate querysets of a page took
Django longer than Postgres took to run them (bench/README.md).

A page's queries have the same shape from one request to the next — the grouping, the
kind of window, the number of hour ranges read from the journal — and differ only in
values: the window's bounds, the ranges, the agents. Those are written into a queryset as
`Bound` expressions, which compile to parameters named by `Slot`s; `kept_statement`
builds and compiles a shape's queryset the first time it is asked, and `run_statement` runs the
statement with the request's values in the slots. Constants stay in the statement as
Django compiled them; every value of a request goes in as a parameter, never into the
SQL text. The same path runs a queryset built with plain values (`compiled`, not kept):
the rollup's, and figures() without a page."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import BooleanField, Expression, F, Field, Lookup, QuerySet


@dataclass(frozen=True)
class Slot:
    """A parameter of a kept statement: the request's value named `name`, as the
    database takes it (`adapt`)."""

    name: str
    adapt: Callable[[Any], Any]


class Bound(Expression):
    """A value of the request (a window's start, a range's end) in a queryset to keep: a
    parameter, compiled as the Slot `name`, of the type `output_field`."""

    def __init__(self, name: str, output_field: Field):
        super().__init__(output_field=output_field)
        self.name = name

    def __repr__(self) -> str:
        return f"Bound({self.name!r})"

    def as_sql(self, compiler: Any, conn: Any) -> Any:  # (SQL, params with Slots)
        field = self.output_field
        return "%s", [Slot(self.name, lambda v: field.get_db_prep_value(v, connection))]


class BoundIds(Expression):
    """The ids of the request named `name` (the agents a page covers) as one parameter:
    an array on Postgres, a JSON list on SQLite (AmongIds reads either). One parameter,
    whatever the number: the statement is the same for one agent or a thousand."""

    output_field = BooleanField()  # never selected: only compared against (AmongIds)

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def as_sql(self, compiler: Any, conn: Any) -> Any:  # (SQL, params with Slots)
        if conn.vendor == "postgresql":
            return "%s", [Slot(self.name, lambda ids: [int(i) for i in ids])]
        return "%s", [Slot(self.name, lambda ids: json.dumps([int(i) for i in ids]))]


class AmongIds(Lookup):
    """`column` is one of the ids of a BoundIds: `= ANY(array)` on Postgres, a look-up
    in the JSON list on SQLite."""

    lookup_name = "among_ids"
    prepare_rhs = False

    def __init__(self, column: str, ids: BoundIds):
        super().__init__(F(column), ids)

    def as_sql(self, compiler: Any, conn: Any) -> Any:  # (SQL, params with Slots)
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = compiler.compile(self.rhs)
        if conn.vendor == "postgresql":
            return f"{lhs} = ANY({rhs})", [*lhs_params, *rhs_params]
        # lhs and rhs are compiled SQL (a column, a placeholder): the ids are a parameter.
        sql = f"{lhs} IN (SELECT value FROM json_each({rhs}))"  # noqa: S608
        return sql, [*lhs_params, *rhs_params]


@dataclass(frozen=True)
class Statement:
    """A compiled queryset of values: its SQL, its parameters (constants, and Slots for a
    kept statement), the names of its columns, and Django's converters of them (each
    column's type as the ORM gives it: a truncated hour as an aware datetime on SQLite
    too, a boolean as a bool)."""

    sql: str
    params: tuple[Any, ...]
    names: tuple[str, ...]
    converters: tuple[tuple[int, tuple[list[Any], Any]], ...]


def compiled(queryset: QuerySet[Any]) -> Statement:
    """The statement of a queryset of values (`.values(...)`: its rows are dicts)."""
    query = queryset.query
    compiler = query.get_compiler(using=queryset.db)
    # The columns' names as Django's ValuesIterable reads them.
    if query.selected:
        names: tuple[str, ...] = tuple(query.selected)
    else:
        names = (*query.extra_select, *query.values_select, *query.annotation_select)
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:  # a filter no row can pass (an empty list of ids, of ranges)
        return Statement("", (), names, ())
    columns = [c[0] for c in compiler.select[: compiler.col_count]]
    converters = tuple(compiler.get_converters(columns).items())
    return Statement(sql, tuple(params), names, converters)


# The kept statements, by database and shape. The shapes are few (a page's queries, its
# kinds of window, its numbers of journal ranges); bounded all the same, as a cache.
_KEPT: dict[tuple[Any, ...], Statement] = {}
KEPT_STATEMENTS = 512


def kept_statement(shape: tuple[Any, ...], build: Callable[[], QuerySet[Any]]) -> Statement:
    """The statement of the queryset `build()` makes (with Bound values), compiled the
    first time this process asks for `shape` — everything the queryset's SQL depends on
    besides its Bound values — and kept."""
    said = (connection.alias, connection.vendor, *shape)
    found = _KEPT.get(said)
    if found is None:
        found = compiled(build())
        if len(_KEPT) >= KEPT_STATEMENTS:
            _KEPT.clear()
        _KEPT[said] = found
    return found


def run_statement(
    statement: Statement, values: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """The statement's rows, as dicts of its columns, with `values` in its slots (a slot
    without a value is a KeyError: a statement never runs with a value missing)."""
    params = [
        p.adapt(values[p.name]) if isinstance(p, Slot) and values is not None else p
        for p in statement.params
    ]
    if any(isinstance(p, Slot) for p in params):
        raise KeyError("a kept statement run without its values")
    if not statement.sql:
        return
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, params)
        fetched = cursor.fetchall()
    names, converters = statement.names, statement.converters
    for row in fetched:
        if converters:
            row = list(row)
            for pos, (convs, expression) in converters:
                value = row[pos]
                for convert in convs:
                    value = convert(value, expression, connection)
                row[pos] = value
        yield dict(zip(names, row, strict=True))
