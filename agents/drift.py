"""Drift: whether what an agent sees, decides and is told by its model has moved, comparing
a current window with a baseline window before it (by default the last 7 days beside the
28 days before; the current window is the KPI page's, the baseline the four windows of
its length before it).

What is compared, per agent:
- inputs: each top-level field of the runs' input; numbers are numeric fields, strings and
  booleans categorical ones (a run without the field, or with null, counts as
  "(missing)" in a categorical field; nested objects and lists are left out);
- decisions: the tool steps' decisions (allowed, held for people, denied, shadowed);
- model outputs: each top-level scalar field of a model step's output (an object), named
  by the call's purpose ("assess claim.amount"), numeric or categorical as above.

Samples: the newest CAP runs created in each window (newest first, ties by id: the same
rows every time), their tool steps' decisions and up to CAP of their model steps. Five
queries, whatever the number of runs; the baseline's sample is kept for the hour
(_baseline_sample), and then three.

Per field, the population stability index, PSI = Σ (now − base) · ln(now / base) over the
shares of each bin, each share floored at EPSILON so an empty bin stays finite. Numeric
bins come from the baseline: with its n values sorted, the edges are the values of rank
⌊k·n/BINS⌋ (from 0) for k = 1 … BINS−1, duplicates dropped, and a value falls in the bin
numbered by how many edges are ≤ it. Categorical bins are the categories: the TOP most
frequent of each window, the rest folded into "(other)"; a field with more distinct
values than half its samples (ids, free text) is listed as not compared. Beside the PSI,
a two-sample test from scipy: Kolmogorov–Smirnov for numeric fields, χ² on the
contingency table of counts for categorical ones.

The indicator is the largest PSI among the fields whose test also rejects "same
distribution" (p below ALPHA divided by the number of fields compared, Bonferroni): a
PSI over a few dozen samples is mostly noise, which the test knows and the PSI does not.
Its level follows the usual PSI bands: stable below 0.1, moderate to 0.25, shifted from
0.25. A field with fewer than MIN_SAMPLES values in either window is reported as
insufficient data, and with no field compared the whole report says so (never stable).

This module reads the KPI windows (agents.kpis) and sits beside it in the layers.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.db.models import Case, Count, Max, QuerySet, TextField, When
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils.html import format_html, format_html_join
from scipy import stats

from agents.kpis import DEFAULT_WINDOW, Window, floor_hour, kept, window_named
from agents.models import Action, Agent, Run

# Runs sampled per window, and model steps. PSI's sampling noise over ten bins is about
# 9 · (1/n + 1/m): 0.01 at 2,000 a window, a tenth of the first band, at a bounded cost.
CAP = 2_000
MIN_SAMPLES = 50  # values a field needs in each window to be compared
BINS = 10  # numeric bins: the baseline's deciles
EPSILON = 1e-4  # the floor of a bin's share
TOP = 10  # categories kept per window; the rest are "(other)"
ALPHA = 0.01  # the two-sample test's level, shared by the fields compared (Bonferroni)
MODERATE_PSI, SHIFTED_PSI = 0.1, 0.25  # the PSI bands
BASELINE_WINDOWS = 4  # the baseline: this many current windows right before it
SHOWN = 5  # fields the panel shows first
LISTED = 50  # and at most this many more, folded

STABLE, MODERATE, SHIFTED, INSUFFICIENT = (
    "stable",
    "moderate",
    "shifted",
    "insufficient",
)
LEVEL_LABELS = {
    STABLE: "stable",
    MODERATE: "moderate drift",
    SHIFTED: "shifted",
    INSUFFICIENT: "insufficient data",
}
INPUT, DECISION, MODEL = "input", "decision", "model output"
NUMERIC, CATEGORICAL = "numeric", "categorical"
OTHER, MISSING = "(other)", "(missing)"
DECISIONS = {
    Action.Decision.ALLOW: "allowed",
    Action.Decision.APPROVE: "held",
    Action.Decision.DENY: "denied",
    Action.Decision.SHADOW: "shadowed",
}
TOO_MANY_VALUES = "more distinct values than half its samples: not compared"


@dataclass(frozen=True)
class Bin:
    label: str
    baseline: float  # share of the baseline's values
    current: float


@dataclass(frozen=True)
class FieldDrift:
    source: str  # INPUT, DECISION or MODEL
    name: str
    kind: str  # NUMERIC or CATEGORICAL
    baseline_n: int
    current_n: int
    psi: float | None = None  # None: insufficient data
    p_value: float | None = None
    test: str = ""
    significant: bool = False
    bins: tuple[Bin, ...] = ()

    @property
    def level(self) -> str:
        if self.psi is None:
            return INSUFFICIENT
        return band(self.psi) if self.significant else STABLE

    @property
    def chart(self) -> str:
        return bars(self)


@dataclass(frozen=True)
class DriftReport:
    agent: Agent
    current: Window
    baseline: Window
    current_runs: int  # sampled
    baseline_runs: int
    fields: tuple[FieldDrift, ...]  # compared ones by PSI, largest first; then the others
    skipped: tuple[tuple[str, str, str], ...] = ()  # (source, name, why)
    score: float | None = None  # None: no field had enough data

    @property
    def level(self) -> str:
        return INSUFFICIENT if self.score is None else band(self.score)

    @property
    def level_label(self) -> str:
        return LEVEL_LABELS[self.level]

    @property
    def compared(self) -> list[FieldDrift]:
        return [f for f in self.fields if f.psi is not None]

    @property
    def top(self) -> list[FieldDrift]:
        """The fields that moved most."""
        return self.compared[:SHOWN]

    @property
    def rest(self) -> list[FieldDrift]:
        """The next LISTED: the fields that moved less, then those without enough data."""
        return list(self.fields[len(self.top) : len(self.top) + LISTED])

    @property
    def others(self) -> int:
        return len(self.fields) - len(self.top) + len(self.skipped)

    @property
    def unlisted(self) -> int:
        return len(self.fields) - len(self.top) - len(self.rest)

    @property
    def min_samples(self) -> int:
        return MIN_SAMPLES


def band(psi: float) -> str:
    if psi >= SHIFTED_PSI:
        return SHIFTED
    return MODERATE if psi >= MODERATE_PSI else STABLE


def baseline_before(current: Window) -> Window:
    """The default baseline: the BASELINE_WINDOWS windows of the current one's length
    before it (28 days before a week), ending at the start of the hour the current
    window starts in — so that a page asked again within the hour compares with the
    same baseline, whose sample it keeps (_baseline_sample)."""
    span = current.length * BASELINE_WINDOWS
    days, rest = divmod(span, timedelta(days=1))
    name = f"{days}d" if not rest else f"{int(span / timedelta(hours=1))}h"
    return Window(name, floor_hour(current.start), span=span)


def drift_score(agent: Agent, now: datetime | None = None) -> float | None:
    """The indicator over the default windows ending `now` (for alert rules on "drift"):
    the largest significant PSI, 0.0 when nothing moved, None without enough data."""
    current = window_named(DEFAULT_WINDOW, now)
    return drift_report(agent, current, baseline_before(current)).score


# --- samples -----------------------------------------------------------------------------------


def _runs(agent: Agent, window: Window) -> QuerySet[Run]:
    """The runs sampled in the window: the newest CAP (a bounded read of the agent's index)."""
    return Run.objects.filter(
        agent=agent, created_at__gte=window.start, created_at__lt=window.end
    ).order_by("-created_at", "-pk")[:CAP]


class _Samples:
    """Per field, its scalar values, and how many records (runs, or model steps of one
    purpose) could have held it: a categorical field's missing values are the difference."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[Any]] = defaultdict(list)
        self.group: dict[tuple[str, str], str] = {}
        self.records: Counter[str] = Counter()

    def add(self, source: str, group: str, record: Any, prefix: str = "") -> None:
        self.records[group] += 1
        if type(record) is not dict:
            return
        values, groups = self.values, self.group
        for key, value in record.items():
            if value is None or type(value) in (dict, list):
                continue
            name = (source, prefix + key)
            values[name].append(value)
            groups[name] = group

    def missing(self, name: tuple[str, str], group: str) -> int:
        return self.records[group] - len(self.values.get(name, ()))


# One decoder for every record: most of a report's time is reading its JSON, and the model
# field's converter builds a decoder per value.
_decode = json.JSONDecoder().decode


def _record(text: str | None) -> Any:
    """A stored JSON value read from its text; one too deep for the parser has no fields."""
    if text is None:
        return None
    try:
        return _decode(text)
    except (RecursionError, ValueError):
        return None


STEP_KINDS = (Action.Kind.TOOL, Action.Kind.MODEL)


# A baseline's sample, kept in the shared cache: for as long as the baseline holds the
# same runs (their number and the newest one's creation: a run written into it later, by
# an import, is seen) and at most this long. Its runs are a whole window old or more:
# what the sample reads of them — the input, the steps' decisions, the model's outputs —
# was written when they ran.
BASELINE_KEPT_SECONDS = 3600
SAMPLE_FORMAT = 1  # counted up when _Samples or what _sample reads changes


def _baseline_sample(agent: Agent, window: Window) -> tuple[int, _Samples, Counter[str]]:
    """_sample of the baseline, kept (BASELINE_KEPT_SECONDS). One query when kept."""
    runs = Run.objects.filter(agent=agent, created_at__gte=window.start, created_at__lt=window.end)
    # Both from the index of the agent's runs by creation alone (no row read).
    held = runs.aggregate(n=Count("*"), newest=Max("created_at"))
    # The agent by its id and its creation (an id alone may name another agent in a
    # database made anew beside a cache that was not).
    who = (agent.pk, agent.created_at)
    said = (SAMPLE_FORMAT, CAP, who, window.start, window.end, held["n"], held["newest"])
    return kept("drift:baseline", said, lambda: _sample(agent, window), BASELINE_KEPT_SECONDS)


def _sample(agent: Agent, window: Window) -> tuple[int, _Samples, Counter[str]]:
    """Two queries: the runs' inputs; their steps — the tool steps' decisions and the
    model steps' outputs in one read of the sampled runs' steps (two reads of them, one a
    kind, were half of a month's drift report)."""
    runs = _runs(agent, window)
    samples = _Samples()
    inputs = list(runs.values_list(Cast("input", TextField()), flat=True))
    for text in inputs:
        samples.add(INPUT, INPUT, _record(text))
    decisions: Counter[str] = Counter()
    steps = (
        Action.objects.filter(run__in=runs.values("pk"), kind__in=STEP_KINDS)
        .order_by("-run_id", "seq")
        .values_list(
            "kind",
            "decision",
            KT("args__purpose"),
            # A tool step's result is not read (only its decision).
            Case(When(kind=Action.Kind.MODEL, then=Cast("result", TextField()))),
        )
    )
    outputs = 0
    for kind, decision, purpose, result in steps:
        if kind == Action.Kind.TOOL:
            decisions[DECISIONS.get(decision, "undecided")] += 1
        elif outputs < CAP:
            outputs += 1
            purpose = purpose or ""
            samples.add(
                MODEL, f"model:{purpose}", _record(result), f"{purpose}." if purpose else ""
            )
    return len(inputs), samples, decisions


# --- the comparison ----------------------------------------------------------------------------


def psi(baseline: list[int], current: list[int]) -> float:
    """PSI over bin counts, each share floored at EPSILON."""
    nb, nc = sum(baseline), sum(current)
    total = 0.0
    for b, c in zip(baseline, current, strict=True):
        pb, pc = max(b / nb, EPSILON), max(c / nc, EPSILON)
        total += (pc - pb) * math.log(pc / pb)
    return total


def numeric_edges(baseline: Iterable[float]) -> list[float]:
    ordered = np.sort(np.asarray(list(baseline), dtype=float))
    n = len(ordered)
    return sorted({float(ordered[k * n // BINS]) for k in range(1, BINS)})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _category(value: Any) -> str:
    if type(value) is str:
        return value
    return ("true" if value else "false") if type(value) is bool else json.dumps(value)


def _shown(value: float) -> str:
    return f"{value:.4g}"


def _numeric(source: str, name: str, base: list[float], cur: list[float]) -> FieldDrift:
    edges = numeric_edges(base)
    nbins = len(edges) + 1
    counts_b = np.bincount(np.searchsorted(edges, base, side="right"), minlength=nbins)
    counts_c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=nbins)
    labels = (
        [f"< {_shown(edges[0])}"]
        + [f"{_shown(lo)} – {_shown(hi)}" for lo, hi in zip(edges, edges[1:], strict=False)]
        + [f"≥ {_shown(edges[-1])}"]
    )
    value = psi(counts_b.tolist(), counts_c.tolist())
    p_value = float(stats.ks_2samp(base, cur).pvalue)
    return FieldDrift(
        source,
        name,
        NUMERIC,
        len(base),
        len(cur),
        value,
        p_value,
        "Kolmogorov–Smirnov",
        bins=_bins(labels, counts_b.tolist(), counts_c.tolist()),
    )


def _bins(labels: list[str], base: list[int], cur: list[int]) -> tuple[Bin, ...]:
    nb, nc = sum(base) or 1, sum(cur) or 1
    return tuple(Bin(lab, b / nb, c / nc) for lab, b, c in zip(labels, base, cur, strict=True))


def categorical(source: str, name: str, base: Counter[str], cur: Counter[str]) -> FieldDrift:
    """A categorical field from its counts per category in each window."""

    def top(counts: Counter[str]) -> list[str]:
        return [k for k, _n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]]

    kept = set(top(base)) | set(top(cur))
    labels = sorted(kept, key=lambda k: (-base[k], -cur[k], k))
    counts_b = [base[k] for k in labels]
    counts_c = [cur[k] for k in labels]
    other_b, other_c = base.total() - sum(counts_b), cur.total() - sum(counts_c)
    if other_b or other_c:
        labels, counts_b, counts_c = labels + [OTHER], counts_b + [other_b], counts_c + [other_c]
    nb, nc = sum(counts_b), sum(counts_c)
    if len(labels) < 2:
        p_value = 1.0  # one category in both windows: nothing could have moved
    else:
        table = np.array([counts_b, counts_c])
        p_value = float(stats.chi2_contingency(table).pvalue)
    return FieldDrift(
        source,
        name,
        CATEGORICAL,
        nb,
        nc,
        psi(counts_b, counts_c),
        p_value,
        "χ²",
        bins=_bins(labels, counts_b, counts_c),
    )


def _too_many(values: Counter[str]) -> bool:
    return len(values) > max(2 * TOP, values.total() / 2)


def drift_report(agent: Agent, current: Window, baseline: Window) -> DriftReport:
    """How the agent's inputs, decisions and model outputs in `current` compare with
    `baseline` (five queries; three when the baseline's sample is kept)."""
    base_runs, base, base_decisions = _baseline_sample(agent, baseline)
    cur_runs, cur, cur_decisions = _sample(agent, current)
    fields: list[FieldDrift] = []
    skipped: list[tuple[str, str, str]] = []
    for key in sorted(set(base.values) | set(cur.values)):
        source, name = key
        b, c = base.values.get(key, []), cur.values.get(key, [])
        group = base.group.get(key) or cur.group[key]
        if all(_number(v) for v in (*b, *c)):
            if min(len(b), len(c)) < MIN_SAMPLES:
                fields.append(FieldDrift(source, name, NUMERIC, len(b), len(c)))
            else:
                fields.append(_numeric(source, name, [float(v) for v in b], [float(v) for v in c]))
            continue
        counts_b, counts_c = Counter(map(_category, b)), Counter(map(_category, c))
        counts_b[MISSING] += base.missing(key, group)
        counts_c[MISSING] += cur.missing(key, group)
        counts_b, counts_c = +counts_b, +counts_c  # drop the zero counts
        if min(counts_b.total(), counts_c.total()) < MIN_SAMPLES:
            fields.append(FieldDrift(source, name, CATEGORICAL, counts_b.total(), counts_c.total()))
        elif _too_many(counts_b) or _too_many(counts_c):
            skipped.append((source, name, TOO_MANY_VALUES))
        else:
            fields.append(categorical(source, name, counts_b, counts_c))
    if min(base_decisions.total(), cur_decisions.total()) < MIN_SAMPLES:
        decided = FieldDrift(
            DECISION, "decision", CATEGORICAL, base_decisions.total(), cur_decisions.total()
        )
    else:
        decided = categorical(DECISION, "decision", base_decisions, cur_decisions)
    fields.append(decided)
    return _report(agent, current, baseline, cur_runs, base_runs, fields, skipped)


def _report(
    agent: Agent,
    current: Window,
    baseline: Window,
    cur_runs: int,
    base_runs: int,
    fields: list[FieldDrift],
    skipped: list[tuple[str, str, str]],
) -> DriftReport:
    compared = [f for f in fields if f.psi is not None]
    # Bonferroni: the chance that any one of the fields looks moved by sampling alone
    # stays below ALPHA however many fields there are.
    level = ALPHA / max(len(compared), 1)
    judged = [replace(f, significant=f.p_value is not None and f.p_value < level) for f in compared]
    judged.sort(key=lambda f: (-(f.psi or 0.0), f.source, f.name))
    waiting = sorted((f for f in fields if f.psi is None), key=lambda f: (f.source, f.name))
    score = max((f.psi or 0.0 for f in judged if f.significant), default=0.0) if judged else None
    return DriftReport(
        agent,
        current,
        baseline,
        cur_runs,
        base_runs,
        tuple(judged + waiting),
        tuple(skipped),
        score,
    )


# --- what the page shows -------------------------------------------------------------------------


def bars(f: FieldDrift) -> str:
    """Each bin's share in the baseline (grey) and now (blue), side by side: an SVG drawn
    here, styled by the stylesheet (no inline style: the CSP forbids it)."""
    height, bar, gap = 28, 5, 3
    peak = max((max(b.baseline, b.current) for b in f.bins), default=0) or 1
    width = max(len(f.bins), 1) * (2 * bar + gap)

    def rects() -> Any:
        for i, b in enumerate(f.bins):
            x = i * (2 * bar + gap)
            hb, hc = round(b.baseline / peak * height, 1), round(b.current / peak * height, 1)
            tip = f"{b.label}: {b.baseline * 100:.1f} % before, {b.current * 100:.1f} % now"
            yield x, height - hb, bar, hb, tip, x + bar, height - hc, bar, hc, tip

    parts = format_html_join(
        "",
        '<rect class="base" x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>'
        '<rect class="now" x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>',
        rects(),
    )
    label = "; ".join(
        f"{b.label}: {b.baseline * 100:.1f} % before, {b.current * 100:.1f} % now" for b in f.bins
    )
    return format_html(
        '<svg class="dist" viewBox="0 0 {} {}" preserveAspectRatio="none" role="img" '
        'aria-label="{}">{}</svg>',
        width,
        height,
        label,
        parts,
    )
