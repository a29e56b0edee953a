"""The audit trail's filter form (GET). The list page and the export read the same form,
so what a compliance officer sees is exactly what they export."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms

from agents.models import Agent, Team
from audit.selectors import DECISIONS, visible_agents, visible_teams
from audit.verbs import Verb

BAD_TIME = "Write a time as YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)."
UNTIL_BEFORE_SINCE = "The end of the range (until) is before its start (since)."
NO_SUCH_AGENT = "No agent named {slug} that you can see."
NO_SUCH_TEAM = "No team named {slug} that you can see."
BAD_RUN = "A run is a positive whole number, like 42."
BAD_CURSOR = "This page link is broken: start again from the newest events."
UNKNOWN_VERB = "No such verb: pick one from the list."
UNKNOWN_DECISION = "No such decision: pick one from the list."
SEARCH_TOO_LONG = "Search for at most 200 characters."

# (format, how long one value of it spans): "until 2026-11-22" means through that day.
TIME_FORMATS = (
    ("%Y-%m-%dT%H:%M:%S", timedelta(seconds=1)),
    ("%Y-%m-%dT%H:%M", timedelta(minutes=1)),
    ("%Y-%m-%d %H:%M", timedelta(minutes=1)),
    ("%Y-%m-%d", timedelta(days=1)),
)


def parse_time(text: str) -> tuple[datetime, timedelta]:
    """A UTC moment and the span the text names; ValueError if it is not one."""
    for fmt, span in TIME_FORMATS:
        try:
            moment = datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
        # Far-off years are typing slips, and near the ends of the calendar the range
        # arithmetic would overflow.
        if not 1900 <= moment.year <= 9000:
            break
        return moment, span
    raise ValueError(text)


class UtcTimeField(forms.Field):
    """A date or a date and time, always read as UTC: the trail's times are UTC, and a
    filter that shifted with the server's zone would silently miss events. Cleans to
    (moment, span), so `until` can mean through the end of the day or minute it names."""

    def __init__(self) -> None:
        super().__init__(required=False)

    def to_python(self, value: Any) -> tuple[datetime, timedelta] | None:
        text = str(value or "").strip()
        if not text:
            return None
        try:
            return parse_time(text)
        except ValueError:
            raise forms.ValidationError(BAD_TIME, code="invalid") from None


def _positive(message: str, *, maximum: int = 2**63 - 1) -> forms.IntegerField:
    return forms.IntegerField(
        required=False,
        min_value=1,
        max_value=maximum,
        error_messages={"invalid": message, "min_value": message, "max_value": message},
    )


class AuditFilter(forms.Form):
    """Cleaned data: since/until as aware UTC datetimes (until exclusive), agent and team
    as model instances the person may see, the rest as plain values; empty means any."""

    since = UtcTimeField()
    until = UtcTimeField()
    agent = forms.CharField(required=False, max_length=50, strip=True)
    team = forms.CharField(required=False, max_length=50, strip=True)
    actor = forms.CharField(required=False, max_length=150, strip=True)
    verb = forms.ChoiceField(
        required=False,
        choices=[("", "any")] + [(v.value, v.value) for v in sorted(Verb)],
        error_messages={"invalid_choice": UNKNOWN_VERB},
    )
    decision = forms.ChoiceField(
        required=False,
        choices=[("", "any")] + [(d, d) for d in DECISIONS],
        error_messages={"invalid_choice": UNKNOWN_DECISION},
    )
    run = _positive(BAD_RUN)
    q = forms.CharField(
        required=False, max_length=200, strip=True, error_messages={"max_length": SEARCH_TOO_LONG}
    )
    before = _positive(BAD_CURSOR)

    def __init__(self, data: Any = None, *, user: Any) -> None:
        super().__init__(data)
        self.user = user

    def clean_agent(self) -> Agent | None:
        slug = self.cleaned_data["agent"]
        if not slug:
            return None
        agent = visible_agents(self.user).filter(slug=slug).first()
        if agent is None:
            raise forms.ValidationError(NO_SUCH_AGENT.format(slug=slug))
        return agent

    def clean_team(self) -> Team | None:
        slug = self.cleaned_data["team"]
        if not slug:
            return None
        team = visible_teams(self.user).filter(slug=slug).first()
        if team is None:
            raise forms.ValidationError(NO_SUCH_TEAM.format(slug=slug))
        return team

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since is not None and until is not None and until[0] < since[0]:
            self.add_error("until", UNTIL_BEFORE_SINCE)
            return data
        # From here on a bound is a moment: since inclusive, until exclusive at the end of
        # the day or minute it names.
        if since is not None:
            data["since"] = since[0]
        if until is not None:
            data["until"] = until[0] + until[1]
        return data
