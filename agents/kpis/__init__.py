"""KPIs per agent, team and version, read from the journal (runs, their steps, the requests
held for people) and the sandbox tables the tools write: no second source of truth.

A window is the last 24 hours, 7 days or 30 days; every figure comes with the same
figure over the window before it. A run counts in the window it was created in, and so
does everything that belongs to it (its steps, its requests, the money its steps moved):
per-run ratios then divide like with like.

The figures:
- runs, and cycle time p50/p95: created → finished, over the finished ones;
- exception rate: the share of runs that failed (a divergence from the journal is a
  failure, counted apart too), had a tool step denied by policy, or had a held step
  rejected by people;
- shadow: tool steps the shadow version's policy would have decided otherwise (shown
  beside the exceptions, not counted in them: nothing went wrong in the run);
- held share: tool steps held for people (an approval request, by policy or after an
  unknown outcome) over tool steps;
- time to decide p50/p95 (held → approved or rejected by people) and SLA attainment:
  decisions within the agent's `decision_sla_minutes` over the requests that ended
  (approved, rejected, expired: an expiry missed it; pending and cancelled are left out);
- cost: model calls' tokens and cost (Action.meta, as the gateway records them), per run
  and per business transaction (a run that succeeded: a claim paid, an order placed);
- value moved: payments (per currency) and purchase orders the run's steps wrote.

Each figure set is a few aggregate queries grouped by agent, team or version, whatever
the number of agents or runs. The percentiles are Postgres' percentile_cont (linear
interpolation between the closest ranks), computed here with numpy from the durations
the database returns packed a group at a time (on the embedded default's SQLite, one by
one): the same definition on both databases, and no sort of a month's durations in
Postgres.

The pages read the additive figures of a window's whole hours (and whole days) from the
rollup agents.rollup keeps from the journal — derived data, computed by the journal's
queries here grouped by hour, rebuilt from the journal at will — and only the rest
from the journal: the partial hours at the window's edges, the hours not examined yet,
and the hours still open (a run not final, a request pending). The percentiles are
taken from the durations of both parts together, the rolled-up part's read from the
journal. Nothing in a rolled-up hour changes any more, so the page keeps what it read of
that part in the shared cache, under everything it depends on (closed_part), and reads
only the journal's part on every request — by statements compiled once a process and run
with each request's values (statements: the window's bounds, the journal's ranges and the
agents' ids go in as parameters), as building and compiling them took Django longer than
Postgres took to run them.

The package, in the order its modules build on each other: `windows` (windows, the hours
and days, the figure sets), `statements` (querysets compiled once, run with a request's
values), `journal` (the journal's queries), `rolled` (the rollup read,
and its part kept), `grouped` (both parts together, by part and by group up), `pages`
(what the pages show). It sits above the approvals app in the layers (pyproject.toml): it
reads the approval requests.
"""

from agents.kpis.grouped import figures, figures_summed
from agents.kpis.journal import DECIDED, KEYS, Grouping, journal_figures, percentile_cont
from agents.kpis.pages import LINES, agent_page, fleet_figures, fleet_page, show
from agents.kpis.rolled import ROLLED, any_of, closed_part, kept, plan_rollup
from agents.kpis.windows import (
    DAY,
    DAY_HOURS,
    DEFAULT_WINDOW,
    HOUR,
    UNKNOWN_WINDOW,
    WINDOWS,
    Figures,
    Pair,
    Window,
    ceil_hour,
    floor_day,
    floor_hour,
    window_named,
)

__all__ = [
    "DAY",
    "DAY_HOURS",
    "DECIDED",
    "DEFAULT_WINDOW",
    "HOUR",
    "KEYS",
    "LINES",
    "ROLLED",
    "UNKNOWN_WINDOW",
    "WINDOWS",
    "Figures",
    "Grouping",
    "Pair",
    "Window",
    "agent_page",
    "any_of",
    "ceil_hour",
    "closed_part",
    "figures",
    "figures_summed",
    "fleet_figures",
    "fleet_page",
    "floor_day",
    "floor_hour",
    "journal_figures",
    "kept",
    "percentile_cont",
    "plan_rollup",
    "show",
    "window_named",
]
