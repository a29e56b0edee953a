"""Issue, list and revoke remote agents' API keys (the key is printed once, on creation)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from agents.models import Agent, ApiKey
from agents.remote import apikey_create, apikey_revoke
from agents.services import ServiceError


class Command(BaseCommand):
    help = "Manage API keys of remote agents: create, list, revoke."

    def add_arguments(self, parser: Any) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="issue a key; it is shown once")
        create.add_argument("agent", help="the remote agent's slug")
        create.add_argument("--name", required=True, help="what the key is for")
        create.add_argument("--days", type=int, default=90, help="valid for (default 90)")
        listing = sub.add_parser("list", help="keys of an agent")
        listing.add_argument("agent")
        revoke = sub.add_parser("revoke", help="revoke a key by its prefix")
        revoke.add_argument("prefix")
        revoke.add_argument("--reason", required=True)

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        try:
            if action == "create":
                key, text = apikey_create(
                    agent=self._agent(options["agent"]),
                    name=options["name"],
                    user=None,
                    days=options["days"],
                )
                self.stdout.write(f"{text}\n(shown once; expires {key.expires_at:%Y-%m-%d})")
            elif action == "list":
                for key in ApiKey.objects.filter(agent=self._agent(options["agent"])):
                    state = "revoked" if key.revoked_at else f"expires {key.expires_at:%Y-%m-%d}"
                    self.stdout.write(f"bk_{key.prefix}  {key.name}  {state}")
            else:
                found = ApiKey.objects.filter(prefix=options["prefix"].removeprefix("bk_")).first()
                if found is None:
                    raise CommandError(f"no key with prefix {options['prefix']}")
                apikey_revoke(key=found, user=None, reason=options["reason"])
                self.stdout.write(f"revoked bk_{found.prefix}")
        except ServiceError as exc:
            raise CommandError(str(exc)) from exc

    def _agent(self, slug: str) -> Agent:
        agent = Agent.objects.filter(slug=slug).first()
        if agent is None:
            raise CommandError(f"no agent {slug!r}")
        return agent
