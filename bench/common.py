"""Shared set-up for the benchmarks: a database of their own, migrated, and statistics."""

from __future__ import annotations

import os
import statistics
import sys
from urllib.parse import urlparse, urlunparse


def use_bench_database(name: str = "baton_bench") -> str:
    """Point DATABASE_URL at a fresh database beside the configured one, before Django
    starts, so a benchmark never touches the suite's or anyone's data."""
    import psycopg

    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
    parts = urlparse(url)
    admin = psycopg.connect(urlunparse(parts), autocommit=True)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    bench_url = urlunparse(parts._replace(path=f"/{name}"))
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return bench_url


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def report(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for name, figure, note in rows:
        print(f"  {name:<{width}}  {figure:>14}  {note}")
    sys.stdout.flush()


__all__ = ["pct", "ms", "report", "statistics", "use_bench_database"]
