from __future__ import annotations

from django import forms

from agents.models import KillSwitch

REASON_REQUIRED = "Say why: everyone will see it."
PASSWORD_REQUIRED = "Confirm your password to stop or restart everything."  # noqa: S105  (a message, not a password)
PASSWORD_WRONG = "That is not your password."  # noqa: S105  (a message)


class EngageForm(forms.Form):
    scope = forms.ChoiceField(choices=KillSwitch.Scope.choices)
    mode = forms.ChoiceField(choices=KillSwitch.Mode.choices)
    agent = forms.SlugField(required=False)
    team = forms.SlugField(required=False)
    reason = forms.CharField(
        max_length=500, strip=True, error_messages={"required": REASON_REQUIRED}
    )
    password = forms.CharField(required=False, strip=False)


class ReleaseForm(forms.Form):
    reason = forms.CharField(
        max_length=500, strip=True, error_messages={"required": REASON_REQUIRED}
    )
    password = forms.CharField(required=False, strip=False)


BAD_OVERVIEW_PAGE = "This page link is broken: start again from the first page."
OVERVIEW_STATE_CHOICES = [
    ("", "any state"),
    ("attention", "needs attention"),
    ("active", "active"),
    ("paused", "paused"),
    ("halted", "halted"),
    ("waiting", "a run waiting"),
    ("failed", "a run failed (24 h)"),
]


class OverviewFilter(forms.Form):
    """The overview's search: a name, a team, a state, and the page of cards."""

    q = forms.CharField(max_length=100, required=False, strip=True)
    team = forms.SlugField(required=False)
    state = forms.ChoiceField(choices=OVERVIEW_STATE_CHOICES, required=False)
    page = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10**6,
        error_messages={
            "invalid": BAD_OVERVIEW_PAGE,
            "min_value": BAD_OVERVIEW_PAGE,
            "max_value": BAD_OVERVIEW_PAGE,
        },
    )
