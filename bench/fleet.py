"""A fleet built in bulk for the pages' query-count tests and bench/pages.py: teams of
agents, each with a live version, a history of finished runs and their steps, one run
waiting on a pending approval request, and a few kill switches engaged. Rows go in with
bulk_create (no services, no audit events: what is measured is reading them)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

PROGRAM = "tests.support.agents.counter"


@dataclass
class Fleet:
    teams: list[Any]
    agents: list[Any]
    requests: list[Any] = field(default_factory=list)
    runs: int = 0
    actions: int = 0


def build_fleet(
    *,
    teams: int = 50,
    per_team: int = 20,
    history: int = 2,
    steps: int = 3,
    prefix: str = "fleet",
    switches: bool = True,
) -> Fleet:
    """`teams` teams of `per_team` agents; each agent with `history` finished runs of
    `steps` tool steps (every other one failed, within the last day), and one run waiting
    on a pending approval request (so as many requests as agents). With `switches`, the
    first team is paused and the second team's first agent halted."""
    from django.db import connection, transaction
    from django.utils import timezone

    from agents.models import Action, Agent, AgentVersion, KillSwitch, Run, Team
    from approvals.models import ApprovalRequest

    now = timezone.now()
    with transaction.atomic():
        made_teams = Team.objects.bulk_create(
            [Team(slug=f"{prefix}-t{t:03d}", name=f"Team {t:03d}") for t in range(teams)]
        )
        agents = Agent.objects.bulk_create(
            [
                Agent(slug=f"{prefix}-t{t:03d}-a{i:03d}", name=f"Agent {t:03d}-{i:03d}", team=team)
                for t, team in enumerate(made_teams)
                for i in range(per_team)
            ]
        )
        versions = AgentVersion.objects.bulk_create(
            [
                AgentVersion(
                    agent=agent,
                    number=1,
                    program=PROGRAM,
                    policy={"rules": [{"tool": "test.*", "effect": "approve"}]},
                    config={"model": "scripted"},
                    stage=AgentVersion.Stage.LIVE,
                    published_at=now,
                )
                for agent in agents
            ]
        )
        for agent, version in zip(agents, versions, strict=True):
            agent.live_version = version
        Agent.objects.bulk_update(agents, ["live_version"], batch_size=1000)
        runs: list[Run] = []
        for agent, version in zip(agents, versions, strict=True):
            for h in range(history):
                failed = h % 2 == 1
                runs.append(
                    Run(
                        agent=agent,
                        version=version,
                        input={"n": h},
                        status=Run.Status.FAILED if failed else Run.Status.SUCCEEDED,
                        error="boom" if failed else "",
                        started_at=now - timedelta(hours=h % 20 + 1),
                        finished_at=now - timedelta(hours=h % 20 + 1),
                    )
                )
            runs.append(
                Run(
                    agent=agent,
                    version=version,
                    input={"n": history},
                    status=Run.Status.WAITING,
                    wait_reason=Run.WaitReason.APPROVAL,
                    started_at=now,
                )
            )
        runs = Run.objects.bulk_create(runs, batch_size=5000)
        actions: list[Action] = []
        held: list[Action] = []
        for run in runs:
            waiting = run.status == Run.Status.WAITING
            for s in range(1 if waiting else steps):
                args = {"label": f"r{run.pk}", "n": s}
                action = Action(
                    run=run,
                    seq=s + 1,
                    kind=Action.Kind.TOOL,
                    name="test.count",
                    requested_args=args,
                    args=args,
                    args_hash=hashlib.sha256(repr(args).encode()).hexdigest(),
                    status=Action.Status.HELD if waiting else Action.Status.SUCCEEDED,
                    decision=Action.Decision.APPROVE if waiting else Action.Decision.ALLOW,
                    idempotency_key=f"{run.pk}:{s + 1}",
                    started_at=now,
                )
                actions.append(action)
                if waiting:
                    held.append(action)
        actions = Action.objects.bulk_create(actions, batch_size=5000)
        requests = ApprovalRequest.objects.bulk_create(
            [
                ApprovalRequest(
                    action=action,
                    run=action.run,
                    agent=action.run.agent,
                    version=action.run.version,
                    tool=action.name,
                    args=action.args,
                    args_hash=action.args_hash,
                    risk=("low", "medium", "high", "critical")[action.run_id % 4],
                    rule_index=0,
                    due_at=now + timedelta(hours=8),
                )
                for action in held
            ],
            batch_size=5000,
        )
        # A history happens over time: each finished run and its steps at the run's start
        # (bulk_create stamps them all now, which would put every step of the fleet in
        # the overview's last quarter of an hour).
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE agents_run SET created_at = started_at WHERE started_at IS NOT NULL"
            )
            cursor.execute(
                "UPDATE agents_action a SET created_at = r.started_at FROM agents_run r "
                "WHERE a.run_id = r.id AND r.status <> 'waiting'"
            )
        if switches and teams >= 2:
            KillSwitch.objects.create(
                scope=KillSwitch.Scope.TEAM,
                team=made_teams[0],
                target=f"team:{made_teams[0].pk}",
                mode=KillSwitch.Mode.PAUSE,
                reason="fleet: paused for the benchmark",
            )
            first = agents[per_team]
            KillSwitch.objects.create(
                scope=KillSwitch.Scope.AGENT,
                agent=first,
                target=f"agent:{first.pk}",
                mode=KillSwitch.Mode.HALT,
                reason="fleet: halted for the benchmark",
            )
    return Fleet(made_teams, agents, requests, len(runs), len(actions))
