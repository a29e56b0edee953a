"""Windows of time and the figures a window has: a window named 24h, 7d or 30d ending
now (or of another length: drift's baseline), the hours and days the rollup counts in, and
the figure set of a group over a window and the window before it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.utils import timezone

WINDOWS: dict[str, timedelta] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
DEFAULT_WINDOW = "7d"
UNKNOWN_WINDOW = "Choose a window of 24h, 7d or 30d."


@dataclass(frozen=True)
class Window:
    name: str
    end: datetime
    # A window of another length than the named ones: drift's baseline, the four windows
    # before the current one (agents.drift).
    span: timedelta | None = None

    @property
    def length(self) -> timedelta:
        return self.span or WINDOWS[self.name]

    @property
    def start(self) -> datetime:
        return self.end - self.length

    @property
    def previous_start(self) -> datetime:
        return self.start - self.length

    @property
    def hourly(self) -> bool:
        return self.length <= timedelta(days=1)

    @property
    def buckets(self) -> list[datetime]:
        """The starts of the sparkline's bars: hours for a day, days otherwise (UTC)."""
        step = timedelta(hours=1) if self.hourly else timedelta(days=1)
        first = self.start.replace(minute=0, second=0, microsecond=0)
        if not self.hourly:
            first = first.replace(hour=0)
        out = []
        at = first
        while at < self.end:
            out.append(at)
            at += step
        return out


def window_named(name: str, now: datetime | None = None) -> Window:
    """The window called `name` ending now; ValueError(UNKNOWN_WINDOW) for another name."""
    if name not in WINDOWS:
        raise ValueError(UNKNOWN_WINDOW)
    return Window(name, now or timezone.now())


@dataclass
class Figures:
    runs: int = 0
    finished: int = 0
    succeeded: int = 0
    failed: int = 0
    diverged: int = 0
    exceptions: int = 0
    cycle_p50: float | None = None  # seconds
    cycle_p95: float | None = None
    steps: int = 0  # tool steps
    denied: int = 0
    # Tool steps the shadow version's policy would have decided otherwise (recorded beside
    # the step, never executed: agents.rollout).
    shadow_differs: int = 0
    held: int = 0
    rejected: int = 0  # by people
    decided: int = 0  # approved or rejected by people
    expired: int = 0
    within_sla: int = 0
    decide_p50: float | None = None  # seconds
    decide_p95: float | None = None
    model_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_eur: float = 0.0
    paid: dict[str, Decimal] = field(default_factory=dict)  # per currency
    ordered: Decimal = Decimal(0)
    runs_per_bucket: list[int] = field(default_factory=list)
    exceptions_per_bucket: list[int] = field(default_factory=list)

    @property
    def exception_rate(self) -> float | None:
        return self.exceptions / self.runs if self.runs else None

    @property
    def held_share(self) -> float | None:
        return self.held / self.steps if self.steps else None

    @property
    def sla_attainment(self) -> float | None:
        ended = self.decided + self.expired
        return self.within_sla / ended if ended else None

    @property
    def cost_per_run(self) -> float | None:
        return self.cost_eur / self.runs if self.runs else None

    @property
    def cost_per_transaction(self) -> float | None:
        return self.cost_eur / self.succeeded if self.succeeded else None

    @property
    def tokens_per_run(self) -> float | None:
        return (self.tokens_in + self.tokens_out) / self.runs if self.runs else None


@dataclass
class Pair:
    """A figure set over the window, and over the window before it."""

    current: Figures = field(default_factory=Figures)
    previous: Figures = field(default_factory=Figures)


HOUR = timedelta(hours=1)


def floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(at: datetime) -> datetime:
    floor = floor_hour(at)
    return floor if floor == at else floor + HOUR


DAY = timedelta(days=1)
DAY_HOURS = 24  # KpiHour.hours of a day's row


def floor_day(at: datetime) -> datetime:
    return floor_hour(at).replace(hour=0)


def ceil_day(at: datetime) -> datetime:
    floor = floor_day(at)
    return floor if floor == at else floor + DAY


def _fill_buckets(pair: Pair, window: Window) -> None:
    if not pair.current.runs_per_bucket:
        pair.current.runs_per_bucket = [0] * len(window.buckets)
        pair.current.exceptions_per_bucket = [0] * len(window.buckets)
