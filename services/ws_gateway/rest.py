"""A small REST surface under `/api/` (nginx routes it to the gateways): node info, and
the caller's sessions (list, create, rename, delete, history) for the browser app.

Every session route authenticates like the WebSocket: `Authorization: Bearer TOKEN`
(in dev mode `Bearer dev-token` plus `?user_id=`), and names only the caller's own
sessions (`session_scope`), so there is nothing of another user's to reach.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from services.common.protocol import (
    PROTOCOL_VERSION,
    HistoryFrame,
    session_scope,
    valid_session_id,
)
from services.ws_gateway.auth import AuthError, authenticate
from services.ws_gateway.context import NodeContext
from services.ws_gateway.sessions import Outcome, SessionSummary, clean_title

#: How many sessions `GET /api/sessions` returns at most (newest activity first).
SESSION_LIST_MAX = 200


class SessionOut(BaseModel):
    session_id: str
    title: str
    created_at: str
    last_seen: str
    answering: bool

    @classmethod
    def of(cls, summary: SessionSummary) -> SessionOut:
        return cls(
            session_id=summary.session_id,
            title=summary.title,
            created_at=summary.created_at,
            last_seen=summary.last_seen,
            answering=summary.answering,
        )


class SessionList(BaseModel):
    sessions: list[SessionOut]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(default=None, max_length=1000)


class SessionRename(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=1000)


def _ctx(request: Request) -> NodeContext:
    ctx: NodeContext = request.state.ctx
    return ctx


def _caller(
    request: Request,
    authorization: Annotated[str, Header()] = "",
    user_id: Annotated[str | None, Query()] = None,
) -> str:
    """The user the request's token proves (401 otherwise)."""
    ctx = _ctx(request)
    token = authorization.removeprefix("Bearer ").strip() or None
    try:
        return authenticate(
            token, user_id, secret=ctx.settings.jwt_secret, dev_mode=ctx.settings.auth_dev_mode
        )
    except AuthError as exc:
        raise HTTPException(401, str(exc)) from exc


Caller = Annotated[str, Depends(_caller)]


def _title(raw: str) -> str:
    try:
        return clean_title(raw)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc


async def _one(ctx: NodeContext, uid: str, session_id: str) -> SessionOut:
    summary = await ctx.sessions.summary(uid, session_id)
    if summary is None:
        raise HTTPException(404, "no such session")
    return SessionOut.of(summary)


def rest_router() -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/info")
    async def info(request: Request) -> dict[str, object]:
        ctx = _ctx(request)
        return {
            "protocol": PROTOCOL_VERSION,
            "node_id": ctx.settings.node_id,
            "connections": ctx.hub.connections,
            "streams_followed": ctx.hub.streams,
            # The browser app shows a user picker in dev mode, a token field otherwise.
            "auth_dev_mode": ctx.settings.auth_dev_mode,
        }

    @router.get("/sessions")
    async def list_sessions(request: Request, uid: Caller) -> SessionList:
        """The caller's sessions, most recently active first."""
        found = await _ctx(request).sessions.summaries(uid, SESSION_LIST_MAX)
        return SessionList(sessions=[SessionOut.of(s) for s in found])

    @router.post("/sessions", status_code=201)
    async def create_session(
        request: Request, uid: Caller, body: SessionCreate | None = None
    ) -> SessionOut:
        ctx = _ctx(request)
        title = _title(body.title) if body is not None and body.title is not None else None
        session_id = await ctx.sessions.create(uid, title)
        return await _one(ctx, uid, session_id)

    @router.patch("/sessions/{session_id}")
    async def rename_session(
        request: Request, uid: Caller, session_id: str, body: SessionRename
    ) -> SessionOut:
        ctx = _ctx(request)
        _check_id(session_id)
        title = _title(body.title)
        _refuse(await ctx.sessions.rename(uid, session_id, title))
        return await _one(ctx, uid, session_id)

    @router.delete("/sessions/{session_id}", status_code=204)
    async def delete_session(request: Request, uid: Caller, session_id: str) -> Response:
        ctx = _ctx(request)
        _check_id(session_id)
        _refuse(await ctx.sessions.delete(uid, session_id))
        # Every node drops its cached record of the session.
        await ctx.notifier.session_changed(session_scope(uid, session_id))
        return Response(status_code=204)

    @router.get("/sessions/{session_id}/history")
    async def history(
        request: Request, uid: Caller, session_id: str, limit: int = 50
    ) -> HistoryFrame:
        """The recent messages of the caller's session `session_id`, oldest first."""
        ctx = _ctx(request)
        _check_id(session_id)
        scope = session_scope(uid, session_id)  # only this user's session of that id
        owner = await ctx.sessions.owner(scope)
        if owner is None:
            raise HTTPException(404, "no such session")
        if owner != uid:  # a keyspace that disagrees with itself
            raise HTTPException(403, "session belongs to another user")
        items = await ctx.store.history(scope, max(1, min(limit, 1000)))
        return HistoryFrame(session_id=session_id, messages=items)

    return router


def _check_id(session_id: str) -> None:
    if not valid_session_id(session_id):
        raise HTTPException(400, "session_id must be 1-64 characters of A-Z a-z 0-9 _ -")


def _refuse(outcome: Outcome) -> None:
    """Raise the HTTP error a rename's or delete's outcome stands for."""
    if outcome is Outcome.MISSING:
        raise HTTPException(404, "no such session")
    if outcome is Outcome.FORBIDDEN:
        raise HTTPException(403, "session belongs to another user")
    if outcome is Outcome.BUSY:
        raise HTTPException(409, "an answer is in progress; stop it first")
