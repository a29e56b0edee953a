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
