"""`make bench` runs every benchmark: each module of bench/ that runs as a program and
prints figures (a `__main__` block and bench.common's `report`; not bench.mcp_upstream, a
server bench.mcp starts) is a line of the Makefile's bench target, so a new one is not
left out of it (bench.pages, kpis, alerts and metrics were)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench_target() -> str:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, "no bench target in the Makefile"
    return match.group(1)


def test_every_benchmark_is_in_make_bench() -> None:
    programs = {
        f"bench.{path.stem}"
        for path in (ROOT / "bench").glob("*.py")
        if 'if __name__ == "__main__":' in (text := path.read_text()) and "report(" in text
    }
    run = set(re.findall(r"-m (bench\.\w+)", bench_target()))
    assert programs, "no benchmarks found"
    assert programs <= run, f"not in make bench: {sorted(programs - run)}"
