"""The alerts pages: the rules a person may see with their state, last value and history;
the forms to create, edit, disable and enable them, for those who administer the agent
or team. Every request is checked here; bad input is shown by its field with a 400 and
changes nothing."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents import alerts
from agents.models import AlertRule
from agents.permissions import agent_for_user, team_for_user
from console.http import signed_in

NOT_CONFIGURER = "You may change the alert rules only of agents and teams you administer."
NO_TARGET = "Choose an agent or a team you administer."
CLEAR_WRONG_SIDE = (
    "The clear threshold is on the quiet side of the threshold: at or below it for "
    "'above', at or above it for 'below'."
)
CHANGE_NEEDS_FACTOR = "A change is a factor greater than 0 (2 = doubled, 0.5 = halved)."
BAD_EMAIL = "Not an e-mail address: {address}"
BAD_WEBHOOK = "A webhook is an http:// or https:// URL."
INWARD_WEBHOOK = (
    "A webhook goes to a receiver elsewhere: not to this machine, a link-local address "
    "(such as a cloud's metadata service) or another reserved one."
)
MAX_WINDOW = 30 * 24 * 60
# A rule's window is one of these lengths. Every distinct length is a computation of its
# own in each evaluation (agents.alerts.measure_rules shares one per scope and length),
# and a 30-day team window costs about a second on a year of history (bench/README.md):
# free lengths would let one admin's rules outgrow the 30 s evaluation period.
WINDOWS = [
    (5, "5 minutes"),
    (10, "10 minutes"),
    (15, "15 minutes"),
    (30, "30 minutes"),
    (60, "1 hour"),
    (120, "2 hours"),
    (360, "6 hours"),
    (720, "12 hours"),
    (1440, "24 hours"),
    (2 * 1440, "2 days"),
    (7 * 1440, "7 days"),
    (14 * 1440, "14 days"),
    (MAX_WINDOW, "30 days"),
]
STILL_PAUSED = (
    "The pause its circuit breaker engaged stays until a supervisor releases it, "
    "as any kill switch."
)


class RuleForm(forms.Form):
    name = forms.CharField(max_length=100, strip=True)
    metric = forms.ChoiceField(choices=())
    basis = forms.ChoiceField(choices=AlertRule.Basis.choices, initial=AlertRule.Basis.VALUE)
    comparison = forms.ChoiceField(
        choices=AlertRule.Comparison.choices, initial=AlertRule.Comparison.ABOVE
    )
    threshold = forms.FloatField()
    clear_threshold = forms.FloatField(
        required=False, help_text="where it resolves; empty: the threshold itself"
    )
    window_minutes = forms.TypedChoiceField(choices=WINDOWS, coerce=int, initial=60)
    notify_emails = forms.CharField(max_length=1000, required=False, strip=True)
    notify_supervisors = forms.BooleanField(required=False, initial=True)
    webhook_url = forms.URLField(max_length=500, required=False, assume_scheme="https")
    engage_breaker = forms.BooleanField(required=False)
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(
        self,
        *args: Any,
        targets: list[tuple[str, str]] | None = None,
        window: int | None = None,
        **kw: Any,
    ):
        super().__init__(*args, **kw)
        if window is not None and window not in dict(WINDOWS):
            # A rule made before the windows were a fixed set keeps its own when edited.
            field = self.fields["window_minutes"]
            assert isinstance(field, forms.TypedChoiceField)
            field.choices = sorted([*WINDOWS, (window, f"{window} min")])
        metric = self.fields["metric"]
        assert isinstance(metric, forms.ChoiceField)
        metric.choices = alerts.metric_choices()
        if targets is not None:
            self.fields["target"] = forms.ChoiceField(
                choices=targets, error_messages={"invalid_choice": NO_TARGET, "required": NO_TARGET}
            )

    def clean_notify_emails(self) -> str:
        text: str = self.cleaned_data["notify_emails"]
        for address in alerts.split_addresses(text):
            try:
                alerts.validate_addresses(address)
            except ValidationError:
                raise ValidationError(BAD_EMAIL.format(address=address)) from None
        return " ".join(alerts.split_addresses(text))

    def clean_webhook_url(self) -> str:
        url: str = self.cleaned_data["webhook_url"]
        if url and not url.lower().startswith(("http://", "https://")):
            raise ValidationError(BAD_WEBHOOK)
        if url and _inward(urlsplit(url).hostname or ""):
            raise ValidationError(INWARD_WEBHOOK)
        return url

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        threshold, clear = data.get("threshold"), data.get("clear_threshold")
        if threshold is None:
            return data
        if clear is None:
            data["clear_threshold"] = clear = threshold
        above = data.get("comparison") == AlertRule.Comparison.ABOVE
        if (above and clear > threshold) or (not above and clear < threshold):
            self.add_error("clear_threshold", CLEAR_WRONG_SIDE)
        if data.get("basis") == AlertRule.Basis.CHANGE and threshold <= 0:
            self.add_error("threshold", CHANGE_NEEDS_FACTOR)
        return data

    def config(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in alerts.CONFIG_FIELDS}


def _inward(host: str) -> bool:
    """A host the workers must not be sent to by whoever edits a rule: this machine (by
    name or address), link-local addresses (a cloud's metadata service answers on
    169.254.169.254), unspecified, multicast and reserved ones. Private networks stay
    allowed: a company's own receivers live there. (A name that resolves inward is not
    caught here: the workers' egress is the place for that.)"""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def _rule_for_user(request: HttpRequest, rule_id: int) -> AlertRule:
    rule = alerts.rules_for_user(request.user).filter(pk=rule_id).first()
    if rule is None:
        raise Http404("No such alert rule.")
    return rule


def _configurable(request: HttpRequest, rule_id: int) -> AlertRule:
    rule = _rule_for_user(request, rule_id)
    if not alerts.may_configure(request.user, rule):
        raise PermissionDenied(NOT_CONFIGURER)
    return rule


@require_GET
@login_required
def alert_list(request: HttpRequest) -> HttpResponse:
    rules = list(alerts.rules_for_user(request.user).order_by("-state", "name", "pk"))
    for rule in rules:
        rule.value_shown = alerts.show(rule, rule.last_value)  # type: ignore[attr-defined]
        rule.described = alerts.describe(rule)  # type: ignore[attr-defined]
    context = {"rules": rules, "may_create": bool(alerts.targets_for(request.user))}
    return render(request, "agents/alerts.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def alert_create(request: HttpRequest) -> HttpResponse:
    targets = alerts.targets_for(request.user)
    if not targets:
        raise PermissionDenied(NOT_CONFIGURER)
    form = RuleForm(request.POST if request.method == "POST" else None, targets=targets)
    if request.method == "POST":
        if not form.is_valid():
            return render(request, "agents/alert_form.html", {"form": form}, status=400)
        kind, _, slug = form.cleaned_data["target"].partition(":")
        # Checked again on the server: the choice came from the person's own list.
        target: dict[str, Any] = (
            {"agent": agent_for_user(request.user, slug, "administer")}
            if kind == "agent"
            else {"team": team_for_user(request.user, slug, "administer")}
        )
        try:
            rule = alerts.alert_rule_create(user=signed_in(request), **target, **form.config())
        except alerts.RuleNameTaken as exc:
            form.add_error("name", str(exc))
            return render(request, "agents/alert_form.html", {"form": form}, status=400)
        messages.success(request, f"Alert rule {rule.name} created.")
        return redirect("alert", rule_id=rule.pk)
    return render(request, "agents/alert_form.html", {"form": form})


def _detail(request: HttpRequest, rule: AlertRule, form: RuleForm, status: int = 200) -> Any:
    events = alerts.history(rule)
    for event in events:
        event.value_shown = alerts.show(rule, event.value)  # type: ignore[attr-defined]
    context = {
        "rule": rule,
        "described": alerts.describe(rule),
        "value_shown": alerts.show(rule, rule.last_value),
        "clear_shown": alerts.show(rule, rule.clear_threshold),
        "events": events,
        "may_configure": alerts.may_configure(request.user, rule),
        "holding": alerts.breaker_holding(rule),
        "form": form,
    }
    return render(request, "agents/alert.html", context, status=status)


@require_GET
@login_required
def alert_detail(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = _rule_for_user(request, rule_id)
    form = RuleForm(initial=alerts.rule_config(rule), window=rule.window_minutes)
    return _detail(request, rule, form)


@require_POST
@login_required
def alert_edit(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = _configurable(request, rule_id)
    form = RuleForm(request.POST, window=rule.window_minutes)
    if not form.is_valid():
        return _detail(request, rule, form, status=400)
    try:
        alerts.alert_rule_update(rule=rule, user=signed_in(request), **form.config())
    except alerts.RuleNameTaken as exc:
        form.add_error("name", str(exc))
        return _detail(request, rule, form, status=400)
    messages.success(request, "Alert rule saved.")
    return redirect("alert", rule_id=rule.pk)


@require_POST
@login_required
def alert_enabled(request: HttpRequest, rule_id: int, enabled: bool) -> HttpResponse:
    rule = _configurable(request, rule_id)
    alerts.alert_rule_update(rule=rule, user=signed_in(request), enabled=enabled)
    messages.success(request, f"Alert rule {'enabled' if enabled else 'disabled'}.")
    if not enabled and alerts.breaker_holding(rule):
        messages.warning(request, STILL_PAUSED)
    return redirect("alert", rule_id=rule.pk)
