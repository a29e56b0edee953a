from __future__ import annotations

import json
from typing import Any

from django import forms

from approvals import selectors
from approvals.models import ApprovalDecision
from approvals.selectors import RISK_ORDER

REASON_REQUIRED = "Write the reason: it goes back to the agent."
# Worded as the audit page's filters (audit.filters) word them.
NO_SUCH_AGENT = "No agent named {slug} that you can see."
NO_SUCH_TEAM = "No team named {slug} that you can see."
BAD_PAGE = "A page is a positive whole number, like 2."


class QueueFilter(forms.Form):
    tab = forms.ChoiceField(
        choices=[("pending", "pending"), ("history", "history")], required=False
    )
    agent = forms.SlugField(required=False)
    team = forms.SlugField(required=False)
    tool = forms.RegexField(regex=r"^[\w.*-]{1,100}$", required=False)
    risk = forms.ChoiceField(choices=[("", "any")] + [(r, r) for r in RISK_ORDER], required=False)
    sort = forms.ChoiceField(choices=[("risk", "risk"), ("due", "time left")], required=False)
    page = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10**6,
        error_messages={
            "invalid": BAD_PAGE,
            "min_value": BAD_PAGE,
            "max_value": BAD_PAGE,
        },
    )

    def __init__(self, data: Any = None, *, user: Any) -> None:
        super().__init__(data)
        self.user = user

    def clean_agent(self) -> str:
        slug: str = self.cleaned_data["agent"]
        if slug and not selectors.agent_known(self.user, slug):
            raise forms.ValidationError(NO_SUCH_AGENT.format(slug=slug))
        return slug

    def clean_team(self) -> str:
        slug: str = self.cleaned_data["team"]
        if slug and not selectors.team_known(self.user, slug):
            raise forms.ValidationError(NO_SUCH_TEAM.format(slug=slug))
        return slug


class DecisionForm(forms.Form):
    verdict = forms.ChoiceField(choices=ApprovalDecision.Verdict.choices)
    args_hash = forms.RegexField(
        regex=r"^[0-9a-f]{64}$",
        error_messages={"invalid": "This decision is not bound to an action: reload the request."},
    )
    comment = forms.CharField(required=False, max_length=2000, strip=True)
    edit = forms.BooleanField(required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("verdict") == ApprovalDecision.Verdict.REJECT and not data.get("comment"):
            self.add_error("comment", REASON_REQUIRED)
        return data


def edited_arguments(post: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """Arguments from the edit form's `arg:<name>` fields, typed after the tool's schema.
    A value that does not fit its type is passed on as written, so the schema check names
    the field rather than this form guessing."""
    properties = schema.get("properties", {})
    edited: dict[str, Any] = {}
    for name, spec in properties.items():
        key = f"arg:{name}"
        if key not in post:
            continue
        raw = post[key].strip()
        if raw == "" and name not in schema.get("required", []):
            continue
        edited[name] = _typed(raw, spec.get("type"))
    return edited


def _typed(raw: str, kind: Any) -> Any:
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            plain = raw.replace(",", "")
            if plain.lstrip("+-").isdigit():
                # Whole numbers stay exact: 9007199254740993 is not silently made ...992.
                return int(plain)
            return float(plain)
        if kind == "boolean":
            return {"true": True, "false": False}.get(raw.lower(), raw)
        if kind in ("object", "array"):
            return json.loads(raw)
    except (ValueError, RecursionError):  # too deep to parse: the checks name it as text
        return raw
    return raw
