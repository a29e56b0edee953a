"""The live socket: one per open console page (DESIGN section 8).

It joins its class — the sockets whose people may see the same events (the audit
trail's one rule, audit.selectors.Scope) — at this process's live renderer
(console.fanout), which reads each new event once, renders it once per class and puts
the frame in the outbox of every socket of the class; the socket's own task sends what
is in its outbox, in order (frames that wait for it one after another go as one
message, console.fanout.Outbox). Every few seconds that task also reloads the person and
their permissions from the database: the socket closes when the session ends or the
person is deactivated (4401), and when what they may see has changed (4403; the page
reloads and opens a socket under the new rule).
"""

from __future__ import annotations

import asyncio
import logging
from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from channels.auth import get_user
from channels.db import database_sync_to_async as _db
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import validate_host

from audit.selectors import Scope
from console import fanout, frames, live
from console.telemetry import LIVE_SOCKETS

log = logging.getLogger(__name__)


def _db_parallel(func: Any) -> Any:
    # Not thread-sensitive: every socket's reads would otherwise queue on one shared
    # thread, and a hundred open pages would wait on each other.
    return _db(func, thread_sensitive=False)


# The scope key under which the socket's own server send is handed to the consumer.
SERVER_SEND = "baton.server_send"
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403  # a foreign Origin, or the person's permissions changed
# The tasks of the sockets open in this process (each sends its socket's frames and
# re-checks its person, and removes itself when it ends), so a socket whose browser went
# away is seen to leave nothing behind.
RECHECKS: set[asyncio.Task[None]] = set()


class LiveConsumer(AsyncWebsocketConsumer):
    groups_joined: list[str]
    recheck: asyncio.Task[None] | None = None
    outbox: fanout.Outbox | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # However the socket ends — a close, a disconnect, a send to a browser that has
        # gone — its re-check task and its groups go with it.
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._leave()

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        live.register_web_loop(asyncio.get_running_loop())
        self.user = user
        self.groups_joined = []
        self.visible: Scope = await _db_parallel(frames.visible_scope)(user)
        # Only the person's own group (to be told to close on logout); the events come
        # from the renderer, which hears the doorbells of every group of the class.
        await self._join([live.user_group(user.pk)])
        await self.accept()
        self.outbox = outbox = fanout.outbox()
        # The first frame (in the outbox) says where this socket starts; the page
        # fetches what came between its own render and this point over HTTP.
        self.after = await fanout.renderer().join(self.visible, outbox)
        self.recheck = asyncio.create_task(self._serve_forever(outbox))
        RECHECKS.add(self.recheck)
        LIVE_SOCKETS.set(len(RECHECKS))
        self.recheck.add_done_callback(_forget)
        log.info("live socket opened (%d open in this process)", len(RECHECKS))

    async def disconnect(self, code: int) -> None:
        await self._leave()

    async def _leave(self) -> None:
        task, self.recheck = self.recheck, None
        if task is not None:
            if task is not asyncio.current_task():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            log.info("live socket closed (%d open in this process)", len(RECHECKS - {task}))
        await self._leave_renderer()
        joined, self.groups_joined = getattr(self, "groups_joined", []), []
        for group in joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _leave_renderer(self) -> None:
        outbox, self.outbox = self.outbox, None
        if outbox is not None:
            await fanout.renderer().leave(self.visible, outbox)

    async def send(  # type: ignore[override]  # the websocket form of AsyncConsumer.send
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except OSError:
            # The browser has gone (uvicorn's ClientDisconnected is an OSError): the end
            # of this socket, not an error.
            raise StopConsumer from None

    async def _send_frame(self, text: str) -> None:
        """A frame straight to the server's send (SameOriginValidator hands it over in the
        scope), past the session middleware's wrapper, which only acts on an accept or an
        HTTP response and otherwise cost a quarter of every frame's send (bench/README.md,
        live view)."""
        send = self.scope.get(SERVER_SEND) or self.base_send
        try:
            await send({"type": "websocket.send", "text": text})
        except OSError:
            raise StopConsumer from None

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        try:
            await super().close(code=code, reason=reason)
        except OSError:
            raise StopConsumer from None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        pass  # the socket only speaks; actions go through HTTP with CSRF

    async def live_logout(self, message: dict[str, Any]) -> None:
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _join(self, wanted: list[str]) -> None:
        for group in wanted:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = wanted

    async def _serve_forever(self, outbox: fanout.Outbox) -> None:
        """Send the frames the renderer puts in the outbox, in order (those waiting
        together as one message); every few seconds re-check the person."""
        loop = asyncio.get_running_loop()
        interval = settings.BATON_LIVE_RECHECK_SECONDS
        check_at = loop.time() + interval
        while True:
            try:
                if loop.time() < check_at:  # (a busy outbox must not put the check off)
                    if outbox.waiting:  # no timer for a frame already there
                        message = await outbox.get()
                    else:
                        try:
                            async with asyncio.timeout_at(check_at):
                                message = await outbox.get()
                        except TimeoutError:
                            continue
                    await self._send_frame(message.text)
                    continue
                check_at = loop.time() + interval
                code = await self._recheck()
                if code is not None:
                    await self.close(code=code)
                    return
            except StopConsumer:
                await self._leave_renderer()  # the browser has gone: nothing more to send
                return
            except asyncio.CancelledError:
                return  # the socket is closing
            except Exception:  # a failed check must not kill the socket silently
                log.exception("live socket re-check failed")

    async def _recheck(self) -> int | None:
        """Reload the person and their permissions from the database: the close code if
        this socket must end, None if it goes on as it is."""
        # The session is read again (the one in the scope is what was loaded at connect),
        # and so is the user row (a fresh object: no cached permissions); an ended session
        # or a deactivated person comes back anonymous.
        session = self.scope.get("session")
        if session is None or session.session_key is None:
            return CLOSE_UNAUTHENTICATED
        fresh = import_module(settings.SESSION_ENGINE).SessionStore(session.session_key)
        user = await get_user({**self.scope, "session": fresh})
        if not (user.is_authenticated and user.is_active and user.pk == self.user.pk):
            return CLOSE_UNAUTHENTICATED
        visible = await _db_parallel(frames.visible_scope)(user)
        if visible != self.visible:
            return CLOSE_FORBIDDEN
        self.user = user
        return None


def _forget(task: asyncio.Task[None]) -> None:
    RECHECKS.discard(task)
    LIVE_SOCKETS.set(len(RECHECKS))


# --- Origin -----------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    try:
        port = parts.port or default
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), port


def origin_allowed(scope: dict[str, Any]) -> bool:
    """A socket may be opened only by a page of this console: its Origin has the scheme,
    host and port the request came to (or is one of CSRF_TRUSTED_ORIGINS), and that host
    is one of ALLOWED_HOSTS."""
    headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope["headers"]}
    origin, host = headers.get("origin", ""), headers.get("host", "")
    if not origin or not host:
        return False
    secure = scope.get("scheme") in ("wss", "https")
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy and headers.get("x-forwarded-proto", "").lower() == proxy[1]:
        secure = True
    own = _origin(f"{'https' if secure else 'http'}://{host}")
    given = _origin(origin)
    trusted = {_origin(o) for o in settings.CSRF_TRUSTED_ORIGINS}
    if given != own and given not in trusted:
        return False
    return validate_host(given[1], settings.ALLOWED_HOSTS)


class SameOriginValidator:
    """ASGI middleware in front of the socket: a foreign Origin is refused with 4403
    before anything else is done (the session is not even read). An allowed socket's
    scope carries the server's own send, for its live frames (LiveConsumer._send_frame)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": CLOSE_FORBIDDEN})
            return None
        if scope["type"] == "websocket":
            scope = {**scope, SERVER_SEND: send}
        return await self.application(scope, receive, send)
