"""A small REST surface under `/api/` (nginx routes it to the gateways)."""

from __future__ import annotations

from fastapi import APIRouter, Header, HTTPException, Request

from services.common.protocol import PROTOCOL_VERSION, HistoryFrame, session_scope
from services.ws_gateway.auth import AuthError, authenticate
from services.ws_gateway.context import NodeContext


def rest_router() -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/info")
    async def info(request: Request) -> dict[str, object]:
        ctx: NodeContext = request.state.ctx
        return {
            "protocol": PROTOCOL_VERSION,
            "node_id": ctx.settings.node_id,
            "connections": ctx.hub.connections,
            "streams_followed": ctx.hub.streams,
        }

    @router.get("/sessions/{session_id}/history")
    async def history(
        request: Request,
        session_id: str,
        limit: int = 50,
        authorization: str = Header(default=""),
        user_id: str | None = None,
    ) -> HistoryFrame:
        """The recent messages of the caller's session `session_id`;
        `Authorization: Bearer TOKEN`."""
        ctx: NodeContext = request.state.ctx
        token = authorization.removeprefix("Bearer ").strip() or None
        try:
            uid = authenticate(
                token, user_id, secret=ctx.settings.jwt_secret, dev_mode=ctx.settings.auth_dev_mode
            )
        except AuthError as exc:
            raise HTTPException(401, str(exc)) from exc
        scope = session_scope(uid, session_id)  # only this user's session of that id
        owner = await ctx.sessions.owner(scope)
        if owner is None:
            raise HTTPException(404, "no such session")
        if owner != uid:  # a keyspace that disagrees with itself
            raise HTTPException(403, "session belongs to another user")
        items = await ctx.store.history(scope, max(1, min(limit, 1000)))
        return HistoryFrame(session_id=session_id, messages=items)

    return router
