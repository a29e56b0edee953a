"""The live socket: one per open console page (DESIGN section 8).

It joins the groups of the agents and teams its person may see, and on every doorbell
sends, in order, every audit event it may see after the last one it sent — read from
Postgres, rendered from the pages' partials. It re-checks the session and the grants
periodically and closes when the person logs out or is deactivated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.auth import get_user
from channels.db import database_sync_to_async as _db
from channels.generic.websocket import AsyncWebsocketConsumer

from console import frames, live

log = logging.getLogger(__name__)


def _db_parallel(func: Any) -> Any:
    # Not thread-sensitive: every socket's reads would otherwise queue on one shared
    # thread, and a hundred open pages would wait on each other.
    return _db(func, thread_sensitive=False)


RECHECK_SECONDS = 20.0
CLOSE_UNAUTHENTICATED = 4401


class LiveConsumer(AsyncWebsocketConsumer):
    groups_joined: list[str]

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        live.register_web_loop(asyncio.get_running_loop())
        self.user = user
        self.csrf = self.scope.get("cookies", {}).get("csrftoken", "")
        self.groups_joined = []
        self.flushing = asyncio.Lock()
        self.pending = False
        await self._join()
        await self.channel_layer.group_add(live.user_group(user.pk), self.channel_name)
        await self.accept()
        self.after = await _db_parallel(frames.latest_seq)()
        # The first frame says where this socket starts; the page fetches what came
        # between its own render and this point over HTTP.
        await self.send(text_data=frames.hello_frame(self.after))
        self.recheck = asyncio.create_task(self._recheck_forever())

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "recheck"):
            self.recheck.cancel()
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)
        if hasattr(self, "user"):
            await self.channel_layer.group_discard(live.user_group(self.user.pk), self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        pass  # the socket only speaks; actions go through HTTP with CSRF

    async def live_doorbell(self, message: dict[str, Any]) -> None:
        await self._flush()

    async def live_logout(self, message: dict[str, Any]) -> None:
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _join(self) -> None:
        self.scope_ids = await _db_parallel(frames.visible_scope)(self.user)
        agent_ids, team_ids = self.scope_ids
        wanted = (
            [live.agent_group(a) for a in agent_ids]
            + [live.team_group(t) for t in team_ids]
            + [live.EVERYONE]
        )
        for group in set(self.groups_joined) - set(wanted):
            await self.channel_layer.group_discard(group, self.channel_name)
        for group in set(wanted) - set(self.groups_joined):
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = wanted

    async def _flush(self) -> None:
        # Doorbells that ring while a flush runs are folded into one more flush.
        if self.flushing.locked():
            self.pending = True
            return
        async with self.flushing:
            while True:
                self.pending = False
                html, last, more = await _db_parallel(self._render)()
                if html:
                    await self.send(text_data=html)
                    self.after = last
                if not self.pending and not more:
                    break

    def _render(self) -> tuple[str, int, bool]:
        events = frames.visible_events(self.user, self.after, scope=self.scope_ids)
        html, last = frames.render_frames(self.user, events, self.after, self.csrf)
        return html, last, len(events) == frames.BATCH

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            try:
                if not await self._still_allowed():
                    await self.close(code=CLOSE_UNAUTHENTICATED)
                    return
                await self._join()
                await self._flush()  # also the safety net for a lost doorbell
            except Exception:  # a failed check must not kill the socket silently
                log.exception("live socket re-check failed")

    async def _still_allowed(self) -> bool:
        user = await get_user(self.scope)
        return bool(user.is_authenticated and user.is_active and user.pk == self.user.pk)
