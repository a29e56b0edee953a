"""/mcp/: Baton's MCP endpoint (Streamable HTTP), in front of Django in console.asgi.

Every HTTP request is authenticated by the agent's API key (`Authorization: Bearer
bk_…`, agents.remote.apikey_authenticate), so a revoked key stops a session at its next
request; anything else answers 401. The SDK's session manager then serves it, and binds
each session to the key that opened it (another key gets 404 for it). A body is held
to the HTTP API's limit (413 past it).

The manager needs a running task group. The console is served with the ASGI lifespan off
(`manage.py up`, the test server), so it is started by the first request to /mcp/, in a
task that lives as long as the process's event loop.

Sessions are the handshake era's (initialize, then Mcp-Session-Id): a run is a session
(agents.mcp.server). A 2026-era session-less request is refused with 400, and the SDK's
"auto" clients fall back to the handshake.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from channels.db import database_sync_to_async
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from agents import remote
from agents.api import BODY_TOO_LARGE, MAX_BODY_BYTES
from agents.mcp import server as mcp_server
from agents.services import Unauthorized

PATHS = ("/mcp", "/mcp/")
NO_KEY = "send the agent's API key: Authorization: Bearer bk_…"
SESSIONS_ONLY = (
    "Baton's MCP gateway speaks the initialize handshake with sessions "
    "(protocol versions {versions}); initialize first"
)

ASGIApp = Any


async def _json(send: Any, status: int, body: dict[str, Any], headers: list[Any]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


async def _bounded_body(scope: dict[str, Any], receive: Any) -> Any:
    """A `receive` that replays the request's body, read here first and at most
    MAX_BODY_BYTES of it (the HTTP API's limit; the SDK reads a body whole, however big),
    or None when the body is bigger: declared so, or sent so in chunks."""
    try:
        declared = int(_header(scope, b"content-length") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size, message = 0, {"more_body": True}
    while message.get("more_body"):
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY_BYTES:
            return None
    body, replayed = b"".join(chunks), False

    async def replay() -> Any:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class McpEndpoint:
    def __init__(self) -> None:
        self.manager = StreamableHTTPSessionManager(app=mcp_server.server)
        self._running: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def _started(self) -> None:
        if self._running is None:
            # No await between the check and the assignment: one task starts it.
            self._running = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(self._running))
        await asyncio.shield(self._running)

    async def _run(self, running: asyncio.Future[None]) -> None:
        async with self.manager.run():
            running.set_result(None)
            await asyncio.Event().wait()  # until the loop ends

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        auth = _header(scope, b"authorization") or ""
        scheme, _, presented = auth.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return await self._unauthorized(send, NO_KEY)
        try:
            key = await database_sync_to_async(remote.apikey_authenticate)(presented.strip())
        except Unauthorized as exc:
            return await self._unauthorized(send, str(exc))
        version = _header(scope, b"mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            message = SESSIONS_ONLY.format(versions=", ".join(HANDSHAKE_PROTOCOL_VERSIONS))
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
            return await _json(send, 400, body, [])
        if scope["method"] == "POST":
            receive = await _bounded_body(scope, receive)
            if receive is None:
                body = {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": -32600, "message": BODY_TOO_LARGE},
                }
                return await _json(send, 413, body, [])
        token = AccessToken(token=key.prefix, client_id=f"baton-apikey-{key.pk}", scopes=[])
        scope = {**scope, "user": AuthenticatedUser(token), mcp_server.KEY_SCOPE: key}
        await self._started()
        await self.manager.handle_request(scope, receive, send)
        session_id = _header(scope, b"mcp-session-id")
        if scope["method"] == "DELETE" and session_id:
            await database_sync_to_async(mcp_server.session_end)(session_id, key.pk)

    async def _unauthorized(self, send: Any, reason: str) -> None:
        await _json(
            send,
            401,
            {"error": reason, "code": "unauthorized"},
            [(b"www-authenticate", b'Bearer realm="baton"')],
        )


def with_mcp(django: ASGIApp) -> ASGIApp:
    """The console's HTTP app: /mcp/ to the MCP endpoint, everything else to Django."""
    endpoint = McpEndpoint()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in PATHS:
            await endpoint(scope, receive, send)
        else:
            await django(scope, receive, send)

    return app
