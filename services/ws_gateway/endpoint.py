"""`/ws/chat`: the handshake checks (Origin, session id, token, owner), then the connection."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from services.common.clock import now_iso
from services.common.errors import StorageError
from services.common.logging import session_id_var
from services.common.protocol import (
    CloseCode,
    ErrorCode,
    ErrorFrame,
    WelcomeFrame,
    encode,
    session_scope,
    valid_session_id,
)
from services.durable.http import PREFIX as STREAMS_PREFIX
from services.ws_gateway.auth import AuthError, authenticate, token_from_subprotocols
from services.ws_gateway.connection import Connection
from services.ws_gateway.context import NodeContext
from services.ws_gateway.sessions import Forbidden

log = logging.getLogger(__name__)


CHAT_PATH = "/ws/chat"


class ChatFastPath:
    """The gateway's ASGI app: the chat socket goes straight to `chat`, everything else
    to the FastAPI app (REST, ops, lifespan).

    Through FastAPI a WebSocket would run inside its whole middleware stack (errors,
    exception handlers, exit stacks, routing): a dozen coroutine frames kept for the
    life of every connection, and a dozen calls for every frame sent. The chat socket
    needs none of it (`chat` handles its own errors); its `ws.state` is the lifespan
    state uvicorn hands every connection, as under FastAPI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == CHAT_PATH:
            await chat(WebSocket(scope, receive, send))
            return
        # Durable Streams (services/durable/server.py), also outside FastAPI's stack: its
        # live reads are long and its headers are the protocol's.
        if scope["type"] == "http" and scope["path"].startswith(STREAMS_PREFIX):
            await scope["state"]["durable"](scope, receive, send)
            return
        await self.app(scope, receive, send)


async def chat(ws: WebSocket) -> None:
    """One chat socket: the handshake checks, then the connection until it ends."""
    ctx: NodeContext = ws.state.ctx
    settings = ctx.settings
    origin = ws.headers.get("origin")
    if origin is not None and "*" not in settings.origins and origin not in settings.origins:
        log.info("refused a foreign origin", extra={"detail": origin})
        await ws.close(code=CloseCode.POLICY_VIOLATION)  # before accept: HTTP 403
        return
    subprotocol_token = token_from_subprotocols(ws.scope.get("subprotocols", []))
    await ws.accept(subprotocol="bearer" if subprotocol_token else None)
    session_id = ws.query_params.get("session_id", "")
    if not valid_session_id(session_id):
        await ws.send_text(
            encode(
                ErrorFrame(
                    code=ErrorCode.BAD_REQUEST,
                    message="session_id: 1-64 characters of [A-Za-z0-9_-]",
                )
            )
        )
        await ws.close(code=CloseCode.POLICY_VIOLATION)
        return
    session_id_var.set(session_id)
    try:
        user_id = authenticate(
            subprotocol_token or ws.query_params.get("token"),
            ws.query_params.get("user_id"),
            secret=settings.jwt_secret,
            dev_mode=settings.auth_dev_mode,
        )
    except AuthError as exc:
        log.info("refused a token", extra={"detail": str(exc)})
        await ws.close(code=CloseCode.UNAUTHORIZED, reason=str(exc)[:120])
        return
    # Inside the cluster the session is its user's: another user's same id is
    # another session (see session_scope).
    scope = session_scope(user_id, session_id)
    try:
        _, created = await ctx.sessions.open(scope, user_id)
        if created:
            await ctx.notifier.session_changed(scope)
    except Forbidden:
        # Only a keyspace that disagrees with itself: the record under this user's
        # name names another owner.
        log.error("a session record names another owner", extra={"user_id": user_id})
        await ws.close(code=CloseCode.FORBIDDEN, reason="session belongs to another user")
        return
    except StorageError:
        log.exception("session store unavailable")
        await ws.close(code=CloseCode.TRY_AGAIN_LATER, reason="storage unavailable")
        return
    conn = Connection(ws, ctx, scope, user_id)
    ctx.hub.join(scope, conn)
    ctx.metrics.connections.inc()
    try:
        # Join before listing streams, so an answer starting now is listed or pushed
        # (a push before the welcome is queued waits for it: see Connection.greet).
        try:
            await ctx.notifier.join(scope)
            welcome = WelcomeFrame(
                session_id=session_id,
                user_id=user_id,
                node_id=settings.node_id,
                server_time=now_iso(),
                streams=await ctx.store.session_streams(scope),
            )
        except StorageError:
            log.exception("could not join the session's notices or list its streams")
            await ws.close(code=CloseCode.TRY_AGAIN_LATER, reason="storage unavailable")
            return
        conn.greet(welcome)
        # Not kept for the connection's life (about a KiB per idle socket).
        del welcome
        await conn.run()
    finally:
        ctx.metrics.connections.dec()
        ctx.hub.leave(scope, conn)
        ctx.notifier.leave(scope)
