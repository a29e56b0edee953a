"""One rule for who sees which event (DESIGN sections 8, 9): for every kind of person, the
audit pages, the live socket, the catch-up endpoint and the export show the same events;
kill-switch banners follow the same rule on pages and in live frames."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.db import transaction

from agents import roles
from agents.services import killswitch_engage, run_start
from audit.models import AuditEvent
from audit.services import SYSTEM, audit_record
from audit.verbs import Verb
from console.consumers import CLOSE_UNAUTHENTICATED
from tests.console.visibility import Cast, live_seqs, open_socket, surfaces

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture(autouse=True)
async def _close_thread_connections() -> Any:
    yield
    from django.db import connections

    await sync_to_async(connections.close_all, thread_sensitive=True)()


def latest() -> int:
    return AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


def happenings(cast: Cast) -> dict[str, int]:
    """One event of every kind of reach, each named; the global switch last (everyone
    sees it, so every socket can tell it has been sent everything before)."""
    world = cast.world
    seq: dict[str, int] = {}

    def mark(name: str) -> None:
        seq[name] = latest()

    run_start(agent=cast.claims_bot, input={"label": "a"})
    mark("claims-bot run")
    run_start(agent=cast.claims_other, input={"label": "b"})
    mark("claims-other run")
    run_start(agent=cast.helpdesk, input={"label": "c"})
    mark("helpdesk run")
    roles.role_grant(user=world.second_supervisor, role=roles.SUPERVISOR, target=world.support)
    mark("support grant")
    killswitch_engage(
        scope="team", mode="pause", reason="claims-team-reason", team=world.claims, user=None
    )
    mark("claims team switch")
    killswitch_engage(
        scope="agent", mode="pause", reason="helpdesk-reason", agent=cast.helpdesk, user=None
    )
    mark("helpdesk switch")
    with transaction.atomic():
        audit_record(verb=Verb.AUDIT_EXPORTED, actor=SYSTEM, subject_type="export", subject_id="x")
    mark("no team")
    killswitch_engage(scope="global", mode="pause", reason="global-reason", user=None)
    mark("global switch")
    return seq


# Which of the happenings each person sees, by the rule.
SEES = {
    "compliance": {
        "claims-bot run",
        "claims-other run",
        "helpdesk run",
        "support grant",
        "claims team switch",
        "helpdesk switch",
        "no team",
        "global switch",
    },
    "supervisor": {"claims-bot run", "claims-other run", "claims team switch", "global switch"},
    "admin": {"claims-bot run", "claims-other run", "claims team switch", "global switch"},
    "other_supervisor": {"helpdesk run", "support grant", "helpdesk switch", "global switch"},
    "one_agent": {"claims-bot run", "claims team switch", "global switch"},
    "no_role": {"global switch"},
    "deactivated": set(),
}


async def test_every_surface_shows_each_person_the_same_events(world: Any, make_agent: Any) -> None:
    cast = await sync_to_async(Cast)(world, make_agent)
    sockets: dict[str, Any] = {}
    for role in Cast.ROLES:
        socket, connected, code = await open_socket(cast.clients[role])
        if connected:
            await socket.receive_from(timeout=10)  # hello
            sockets[role] = socket
        else:
            assert role == "deactivated" and code == CLOSE_UNAUTHENTICATED
    start = await sync_to_async(latest)()
    seq = await sync_to_async(happenings)(cast)
    end = seq["global switch"]
    for role in Cast.ROLES:
        shown = await surfaces(cast, role, sockets.get(role), start, end)
        expected = {s for s in range(start + 1, end + 1) if _name_of(seq, s, start) in SEES[role]}
        if role == "deactivated":
            assert shown == {"live": "refused", "catch-up": 302, "audit": 302, "export": 302}
            continue
        assert shown["live"] == expected, role
        assert shown["catch-up"] == expected, role
        assert shown["audit"] == expected, role
        if role == "compliance":
            assert shown["export"] == expected
        else:
            assert shown["export"] == 403, role
    for socket in sockets.values():
        await socket.disconnect()


def _name_of(seq: dict[str, int], s: int, start: int) -> str:
    """The happening whose events hold seq s."""
    before = start
    for name, last in seq.items():
        if before < s <= last:
            return name
        before = last
    raise AssertionError(s)


async def test_switch_banners_show_only_the_switches_a_person_may_see(
    world: Any, make_agent: Any
) -> None:
    cast = await sync_to_async(Cast)(world, make_agent)
    sam = cast.clients["supervisor"]
    sam_socket, connected, _ = await open_socket(sam)
    assert connected
    await sam_socket.receive_from(timeout=10)
    cora_socket, connected, _ = await open_socket(cast.clients["compliance"])
    assert connected
    await cora_socket.receive_from(timeout=10)

    def engage() -> int:
        killswitch_engage(
            scope="team",
            mode="pause",
            reason="support-secret",
            team=world.support,
            user=world.support_supervisor,
        )
        killswitch_engage(
            scope="agent",
            mode="pause",
            reason="helpdesk-secret",
            agent=cast.helpdesk,
            user=world.support_supervisor,
        )
        killswitch_engage(scope="global", mode="pause", reason="everyone-knows", user=None)
        return latest()

    end = await sync_to_async(engage)()
    # Pages: the global switch to everyone; the support switches to those who see support.
    for role, sees_support in [
        ("supervisor", False),
        ("one_agent", False),
        ("no_role", False),
        ("other_supervisor", True),
        ("compliance", True),
    ]:
        page = (await sync_to_async(cast.clients[role].get)("/")).content.decode()
        assert "everyone-knows" in page, role
        for secret in ("support-secret", "helpdesk-secret"):
            assert (secret in page) == sees_support, (role, secret)
        banners = page.count('data-testid="switch-banner"')
        assert banners == (3 if sees_support else 1), role
    # Live frames carry the banners too: the same rule.
    _, sam_frames = await live_seqs(sam_socket, end)
    assert "everyone-knows" in sam_frames
    assert "support-secret" not in sam_frames and "helpdesk-secret" not in sam_frames
    _, cora_frames = await live_seqs(cora_socket, end)
    assert "support-secret" in cora_frames and "helpdesk-secret" in cora_frames
    await sam_socket.disconnect()
    await cora_socket.disconnect()
