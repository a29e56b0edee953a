"""`manage.py role USERNAME ROLE [--team SLUG | --agent SLUG] [--create --email ADDRESS]`:
give a person a role (and, with --create, create the person first).

For scripts and for the first people before anyone can sign in; admins do the same on
/people/ (agents.people). Compliance is model-wide; a Supervisor or an Agent admin is
granted one team or agent. The grant is audited like every other (agents.roles.role_grant).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from agents import roles
from agents.models import Agent, Team

NEEDS_TARGET = "A {role} is granted a team or an agent: add --team SLUG or --agent SLUG."


class Command(BaseCommand):
    help = "Give a person a role: Compliance, or Supervisor / Agent admin over a team or agent."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("role", choices=[roles.SUPERVISOR, roles.COMPLIANCE, roles.AGENT_ADMIN])
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--team", help="team slug")
        target.add_argument("--agent", help="agent slug")
        parser.add_argument("--create", action="store_true", help="create the person first")
        parser.add_argument("--email", default="", help="their address, for approval e-mails")

    def handle(
        self,
        *args: Any,
        username: str,
        role: str,
        team: str | None,
        agent: str | None,
        create: bool,
        email: str,
        **_: Any,
    ) -> None:
        # Everything is checked before anything is written: bad input changes nothing.
        target: Team | Agent | None = None
        if role == roles.COMPLIANCE:
            if team or agent:
                raise CommandError("Compliance reads every team and agent: no --team or --agent.")
        elif not (team or agent):
            raise CommandError(NEEDS_TARGET.format(role=role))
        elif team:
            target = Team.objects.filter(slug=team).first()
        else:
            target = Agent.objects.filter(slug=agent).first()
        if role != roles.COMPLIANCE and target is None:
            raise CommandError(f"No {'team' if team else 'agent'} {team or agent!r}.")
        people = get_user_model().objects
        user = people.filter(username=username).first()
        if user is None and not create:
            raise CommandError(f"No person {username!r}: add --create to create them.")

        with transaction.atomic():
            roles.roles_ensure()
            if user is None:
                user = people.create_user(username=username, email=email)  # no password yet
                self.stdout.write(
                    f"Created {username}; set a password: manage.py changepassword {username}"
                )
            if target is None:
                user.groups.add(Group.objects.get(name=role))
                self.stdout.write(f"{username} is {role}.")
            else:
                roles.role_grant(user=user, role=role, target=target)
                self.stdout.write(f"{username} is {role} of {target.slug}.")
