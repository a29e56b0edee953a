"""Demo people, teams and agents, and the workload that keeps runs coming."""

from __future__ import annotations

import random
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Count, Q

from agents import roles
from agents.models import Agent, Run, Team
from agents.services import ServiceError, agent_create, run_start, version_create, version_publish

CLAIMS_POLICY = {
    "rules": [
        {
            "tool": "payments.pay",
            "when": "amount <= 1000",
            "effect": "allow",
            "reason": "small payouts are paid automatically",
        },
        {
            "tool": "payments.pay",
            "when": "amount <= 10000",
            "effect": "approve",
            "approvals": 1,
            "timeout": "4h",
            "reason": "payouts above 1,000 EUR need a supervisor",
        },
        {
            "tool": "payments.pay",
            "effect": "approve",
            "approvals": 2,
            "timeout": "8h",
            "reason": "payouts above 10,000 EUR need two supervisors",
        },
        {"tool": "claims.flag", "effect": "allow"},
    ]
}
REORDER_POLICY = {
    "rules": [
        {"tool": "inventory.*", "effect": "allow"},
        {"tool": "purchasing.create_po", "when": "total <= 5000", "effect": "allow"},
        {
            "tool": "purchasing.create_po",
            "effect": "approve",
            "timeout": "2h",
            "reason": "purchase orders above 5,000 EUR need a supervisor",
        },
    ],
    "rate_limits": [{"tool": "purchasing.*", "limit": 5, "per": 60}],
}
EMAIL_POLICY_V1 = {"rules": [{"tool": "email.send", "effect": "allow"}]}
EMAIL_POLICY_V2 = {
    "rules": [
        {
            "tool": "email.send",
            "effect": "shadow",
            "reason": "v2 drafts are recorded, not sent, until it is promoted",
        }
    ]
}

PEOPLE = [
    # username, full name, role, teams granted
    ("sam", "Sam Supervisor", roles.SUPERVISOR, ["claims", "operations", "support"]),
    ("sol", "Sol Second", roles.SUPERVISOR, ["claims"]),
    ("sue", "Sue Support", roles.SUPERVISOR, ["support"]),
    ("cora", "Cora Compliance", roles.COMPLIANCE, []),
    ("ada", "Ada Admin", roles.AGENT_ADMIN, ["claims", "operations", "support"]),
]


def demo_seed() -> list[tuple[str, str, str]]:
    """Create (once) the demo world; give every demo person a fresh generated password.
    Returns (username, password, role) for printing."""
    roles.roles_ensure()
    user_model = get_user_model()
    teams = {
        slug: Team.objects.get_or_create(slug=slug, defaults={"name": name})[0]
        for slug, name in [
            ("claims", "Claims"),
            ("operations", "Operations"),
            ("support", "Customer support"),
        ]
    }
    credentials = []
    people: dict[str, Any] = {}
    for username, full_name, role, team_slugs in PEOPLE:
        first, last = full_name.split(" ", 1)
        user, _ = user_model.objects.get_or_create(
            username=username,
            defaults={"first_name": first, "last_name": last, "email": f"{username}@baton.example"},
        )
        password = secrets.token_urlsafe(9)
        user.set_password(password)
        user.save()
        user.groups.add(Group.objects.get(name=role))
        for slug in team_slugs:
            roles.role_grant(user=user, role=role, target=teams[slug])
        credentials.append((username, password, role))
        people[username] = user
    admin = people["ada"]
    specs: list[tuple[str, str, str, str, list[dict[str, Any]], str]] = [
        (
            "claims-payer",
            "Claim payout",
            "claims",
            "agents.demo.programs.claim_payout",
            [CLAIMS_POLICY],
            "Pays insurance claims; big payouts wait for people.",
        ),
        (
            "stock-reorderer",
            "Inventory reorder",
            "operations",
            "agents.demo.programs.inventory_reorder",
            [REORDER_POLICY],
            "Places purchase orders when stock runs low.",
        ),
        (
            "customer-mailer",
            "Customer e-mail",
            "support",
            "agents.demo.programs.customer_email",
            [EMAIL_POLICY_V1, EMAIL_POLICY_V2],
            "Answers tickets; v2 runs in shadow.",
        ),
    ]
    for slug, name, team, program, policies, description in specs:
        if Agent.objects.filter(slug=slug).exists():
            continue
        agent = agent_create(
            slug=slug, name=name, team=teams[team], description=description, owner=admin, user=admin
        )
        for policy in policies:
            version = version_create(
                agent=agent,
                program=program,
                policy=policy,
                config={"model": "scripted"},
                user=admin,
            )
            # Seeding is the system publishing, not a person: no password to give again.
            version_publish(version=version, user=None, reason="demo set-up")
    return credentials


PAYEES = ["Jana Novak", "Luis Ortega", "Mei Chen", "Tom Becker", "Aisha Khan", "Olga Petrova"]
INCIDENTS = [
    "burst pipe in the kitchen",
    "hail damage to the car roof",
    "stolen bicycle",
    "water damage after a storm",
    "broken shop window",
    "partial fire damage",
]
TOPICS = [
    "a late delivery",
    "a double charge on my card",
    "changing my address",
    "a damaged parcel",
    "cancelling my subscription",
]
SKUS = ["BRK-1042", "FLT-2210", "VLV-0381", "PMP-7770", "GSK-5521", "BLT-9004"]


def _claim(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    amount = (
        rng.randint(80, 990)
        if roll < 0.7
        else rng.randint(1200, 9000)
        if roll < 0.92
        else rng.randint(11000, 40000)
    )
    incident = rng.choice(INCIDENTS)
    if rng.random() < 0.08:
        incident += " (possible duplicate of an earlier claim)"
    name = rng.choice(PAYEES)
    return {
        "claim_id": f"CLM-{rng.randint(10000, 99999)}",
        "policyholder": name,
        "description": incident,
        "amount": amount,
    }


def _order(rng: random.Random) -> dict[str, Any]:
    return {"sku": rng.choice(SKUS)}


def _ticket(rng: random.Random) -> dict[str, Any]:
    name = rng.choice(PAYEES)
    return {
        "ticket_id": f"T-{rng.randint(1000, 9999)}",
        "customer": name,
        "email": f"{name.split()[0].lower()}@customer.example",
        "topic": rng.choice(TOPICS),
    }


INPUTS = {"claims-payer": _claim, "stock-reorderer": _order, "customer-mailer": _ticket}
BACKLOG = 3


def demo_workload_tick(rng: random.Random | None = None) -> int:
    """Start one run for each demo agent that is not already busy. Returns runs started."""
    rng = rng or random.Random()  # noqa: S311  (demo inputs, not secrets)
    busy = Count("runs", filter=Q(runs__status__in=Run.ACTIVE))
    started = 0
    for agent in Agent.objects.filter(slug__in=INPUTS).annotate(busy=busy):
        if agent.busy >= BACKLOG:
            continue
        try:
            run_start(agent=agent, input=INPUTS[agent.slug](rng))
            started += 1
        except ServiceError:
            continue  # halted or not published: the demo waits like any other caller
    return started
