"""The Durable Streams HTTP server of a gateway, at `/streams/{path}` (an ASGI app that
`ChatFastPath` hands every `/streams/` request, outside FastAPI's stack: SSE and
long-poll responses live long and want no middleware).

Every request authenticates like the WebSocket (`Authorization: Bearer TOKEN`; in dev
mode `dev-token` and `?user_id=`). Generic streams live in the caller's namespace: the
same path names another stream for another user, so nobody reaches anyone else's.
`answers/{message_id}` is the caller's own chat answer as a read-only JSON stream.

Any gateway serves any stream (the state is in Redis); a live read is woken by the
node relay when an append lands through any node (`Waiter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol
from urllib.parse import parse_qsl

import jwt
from starlette.types import Receive, Scope, Send

from services.common.clock import now_ms
from services.common.errors import StorageError
from services.common.message_store import MessageStore
from services.common.protocol import MessageStatus
from services.common.settings import Settings
from services.common.streams import ChunkEntry, DoneEntry, StreamEntry
from services.durable import protocol as p
from services.durable.http import (
    PREFIX,
    BodyCut,
    BodyTooLarge,
    Headers,
    header_list,
    read_body,
    request_headers,
)
from services.durable.store import DurableStore, Snapshot
from services.durable.subscriptions import Subscriptions
from services.ws_gateway.auth import DEV_TOKEN, AuthError, authenticate
from services.ws_gateway.metrics import DURABLE_REFUSALS, GatewayMetrics
from services.ws_gateway.relay import Relay

log = logging.getLogger(__name__)

ANSWERS = "answers/"
RESERVED = "__ds"
SSE_KEEPALIVE_S = 15.0
TOKEN_CACHE_MAX = 10_000

EXPOSE = (
    "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Stream-TTL, "
    "Stream-Expires-At, Producer-Epoch, Producer-Seq, Producer-Expected-Seq, "
    "Producer-Received-Seq, Stream-SSE-Data-Encoding, ETag, Content-Type, Location, "
    "X-Served-By"
)
ALLOW_HEADERS = (
    "Authorization, Content-Type, If-None-Match, Stream-Seq, Stream-TTL, "
    "Stream-Expires-At, Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, "
    "Stream-Forked-From, Stream-Fork-Offset, Stream-Fork-Sub-Offset"
)
CACHEABLE = "private, max-age=60, stale-while-revalidate=300"


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Source(Protocol):
    """A readable stream: a generic one or an answer."""

    tag: str
    """Its id in ETags."""

    async def read(self, start: int | None, touch: bool) -> Snapshot: ...

    def follow(self, waiter: Waiter, after: int) -> Awaitable[None]:
        """Wake `waiter` on entries past position `after` (the relay starts there when
        this node does not read the stream yet: not from the stream's start)."""
        ...

    def unfollow(self, waiter: Waiter) -> None: ...


class Waiter:
    """A live read as the relay's hub sees it (a `Member`): any entry wakes it, and it
    reads what it needs from Redis itself, so the relay's position does not matter."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.lost = False

    def push_new_message(self, message_id: str) -> None:
        pass

    def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None:
        self.event.set()

    def on_lost(self, message_id: str) -> None:
        self.lost = True
        self.event.set()

    async def wait(self, seconds: float) -> bool:
        """True when woken within `seconds`."""
        try:
            async with asyncio.timeout(seconds):
                await self.event.wait()
        except TimeoutError:
            return False
        self.event.clear()
        return True


class GenericSource:
    def __init__(self, server: DurableStreams, user: str, path: str) -> None:
        self._s = server
        self._user = user
        self._path = path
        self.tag = server.store.stream_id(user, path)

    async def read(self, start: int | None, touch: bool) -> Snapshot:
        found = await self._s.store.read(
            self._user, self._path, now_ms=now_ms(), start=start, touch=touch
        )
        if isinstance(found, str):
            raise _missing(found)
        return found

    def follow(self, waiter: Waiter, after: int) -> Awaitable[None]:
        key = self._s.store.data_key(self.tag)
        return self._s.ds_relay.follow(self.tag, waiter, after, key=key)

    def unfollow(self, waiter: Waiter) -> None:
        self._s.ds_relay.unfollow(self.tag, waiter)


class AnswerSource:
    """A chat answer: JSON messages `{"seq", "delta"}`, closed when the answer is done.
    Offsets are chunk seqs, as in the WebSocket protocol's `resume`."""

    CONTENT_TYPE = "application/json"

    def __init__(self, server: DurableStreams, message_id: str, user: str, max_entries: int):
        self._s = server
        self.tag = message_id
        self._user = user
        self._max = max_entries

    async def read(self, start: int | None, touch: bool) -> Snapshot:
        """Each read checks the reader owns the answer, with the record it reads anyway."""
        meta = await self._s.messages.meta(self.tag)
        if meta is None or meta.user_id != self._user:
            # Another user's answer is as absent as one that never was.
            raise HttpError(404, "no such answer")
        done = meta.status == MessageStatus.DONE
        if start is None:
            return Snapshot(meta.last_seq, done, self.CONTENT_TYPE, [])
        try:
            raw = await self._s.messages.read_entries(self.tag, start, self._max)
        except ValueError as exc:
            raise HttpError(500, f"a stored chunk is malformed: {exc}") from exc
        if not raw and start < meta.last_seq:
            raise HttpError(410, "the answer's chunks expired; its text is in the history")
        entries = [
            p.Entry(
                e.seq, json.dumps({"seq": e.seq, "delta": e.delta}, separators=(",", ":")).encode()
            )
            for e in raw
            if isinstance(e, ChunkEntry)
        ]
        finished = any(isinstance(e, DoneEntry) for e in raw)
        tail = max(meta.last_seq, entries[-1].end if entries else start)
        return Snapshot(tail, done and (finished or tail == start), self.CONTENT_TYPE, entries)

    def follow(self, waiter: Waiter, after: int) -> Awaitable[None]:
        return self._s.relay.follow(self.tag, waiter, after)

    def unfollow(self, waiter: Waiter) -> None:
        self._s.relay.unfollow(self.tag, waiter)


class DurableStreams:
    def __init__(
        self,
        settings: Settings,
        store: DurableStore,
        messages: MessageStore,
        relay: Relay,
        ds_relay: Relay,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.messages = messages
        self.relay = relay
        self.ds_relay = ds_relay
        self.subscriptions = Subscriptions(settings, store, self._caller, self._respond)
        self.draining = False
        self._live: set[Waiter] = set()
        self._tokens: dict[str, tuple[str, float]] = {}
        """Verified bearer tokens -> (user, exp): see `_remember`."""
        metrics.durable_live_reads.set_function(lambda: len(self._live))
        self._base: Headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"cross-origin-resource-policy", b"cross-origin"),
            # Bearer tokens only, never cookies: no ambient credential for a foreign
            # page to ride on, so any origin may call (docs/durable-streams.md).
            (b"access-control-allow-origin", b"*"),
            (b"access-control-expose-headers", EXPOSE.encode()),
            (b"x-served-by", settings.node_id.encode()),
        ]

    def drain(self) -> None:
        """The node is shutting down: live reads end now (an SSE stream after what it
        has, a long-poll with what it has or 204) and their clients resume elsewhere."""
        self.draining = True
        for waiter in list(self._live):
            waiter.on_lost("")

    def _watch(self, waiter: Waiter) -> Waiter:
        if self.draining:
            waiter.lost = True
        self._live.add(waiter)
        return waiter

    # --- the ASGI entry ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        self.metrics.durable_requests.labels(_op(scope)).inc()
        try:
            if method == "OPTIONS":
                await self._respond(send, 204, _preflight())
                return
            path = scope["path"][len(PREFIX) :]
            segments = path.split("/")
            if RESERVED in segments and not path.startswith(ANSWERS):
                # `{root}/__ds/...`, routed before any stream. Authenticated there: a
                # user's token for the subscription itself, a wake's own token for its
                # callback, ack and release, none for the public signing keys.
                p.check_path(path)
                at = segments.index(RESERVED)
                root, rest = "/".join(segments[:at]), segments[at + 1 :]
                refused = await self.subscriptions.handle(scope, receive, send, None, root, rest)
                if refused is not None:
                    raise HttpError(*refused)
                return
            user = self._caller(scope)
            if path.startswith(ANSWERS):
                await self._answer(scope, receive, send, user, path[len(ANSWERS) :])
                return
            p.check_path(path)
            await self._generic(scope, receive, send, user, path)
        except ClientGone:
            return
        except HttpError as exc:
            await self._error(send, exc, head=method == "HEAD")
        except p.BadRequest as exc:
            await self._error(send, HttpError(400, str(exc)), head=method == "HEAD")
        except StorageError as exc:
            log.warning("durable stream storage failed", extra={"detail": str(exc)})
            await self._error(send, HttpError(503, "storage unavailable", {"Retry-After": "1"}))

    def _caller(self, scope: Scope) -> str:
        headers = request_headers(scope)
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if token is not None and token != DEV_TOKEN:
            known = self._tokens.get(token)
            if known is not None and time.time() < known[1]:
                return known[0]
        user_param = dict(parse_qsl(scope.get("query_string", b"").decode())).get("user_id")
        try:
            user = authenticate(
                token,
                user_param,
                secret=self.settings.jwt_secret,
                dev_mode=self.settings.auth_dev_mode,
            )
        except AuthError as exc:
            raise HttpError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from exc
        if token is not None and token != DEV_TOKEN:
            self._remember(token, user)
        return user

    def _remember(self, token: str, user: str) -> None:
        """Keep a verified token until its `exp` (HTTP clients send it with every
        request; verifying an HS256 signature each time costs more than the rest of a
        small append). Bounded: the oldest entries go first."""
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        if not isinstance(exp, int | float):
            return
        if len(self._tokens) >= TOKEN_CACHE_MAX:
            for old in list(itertools.islice(self._tokens, TOKEN_CACHE_MAX // 10)):
                del self._tokens[old]
        self._tokens[token] = (user, float(exp))

    # --- generic streams -----------------------------------------------------------------

    async def _generic(
        self, scope: Scope, receive: Receive, send: Send, user: str, path: str
    ) -> None:
        method = scope["method"]
        headers = request_headers(scope)
        if method == "PUT":
            await self._create(send, user, path, headers, await self._body(scope, receive))
        elif method == "POST":
            await self._append(send, user, path, headers, await self._body(scope, receive))
        elif method == "DELETE":
            status = await self.store.delete(user, path, now_ms=now_ms())
            if status != "deleted":
                raise _missing(status)
            await self._respond(send, 204, [])
        elif method in ("GET", "HEAD"):
            await self._read(scope, receive, send, GenericSource(self, user, path))
        else:
            raise HttpError(405, "method not allowed", {"Allow": _ALLOW_GENERIC})

    async def _create(
        self, send: Send, user: str, path: str, h: dict[str, str], body: bytes
    ) -> None:
        forked = h.get("stream-forked-from")
        content_type = h.get("content-type", "").strip()
        if content_type and not p.valid_content_type(content_type):
            raise HttpError(400, "Content-Type: not a media type")
        if not content_type and forked is None:
            content_type = "application/octet-stream"
        ttl = p.parse_ttl(h.get("stream-ttl"))
        expires_raw = h.get("stream-expires-at")
        expires = p.parse_expires_at(expires_raw)
        if ttl is not None and expires is not None:
            raise HttpError(400, "Stream-TTL and Stream-Expires-At: give one, not both")
        fork_of = fork_offset = None
        fork_sub = 0
        if forked is not None:
            fork_of = p.check_path(_stream_path(forked))
            raw_offset = h.get("stream-fork-offset")
            if raw_offset is not None:
                fork_offset = p.parse_offset(raw_offset)
                if fork_offset is None:
                    raise HttpError(400, "Stream-Fork-Offset: an offset, not now")
            raw_sub = h.get("stream-fork-sub-offset")
            if raw_sub is not None:
                if not raw_sub.isdigit() or len(raw_sub) > 16:
                    raise HttpError(400, "Stream-Fork-Sub-Offset: a non-negative integer")
                fork_sub = int(raw_sub)
        elif h.get("stream-fork-offset") is not None or h.get("stream-fork-sub-offset"):
            raise HttpError(400, "Stream-Fork-Offset needs Stream-Forked-From")
        media = p.media_type(content_type)
        json_mode = p.is_json(media)
        chunks = _chunks(body, json_mode, creating=True)
        created = await self.store.create(
            user,
            path,
            now_ms=now_ms(),
            content_type=content_type,
            media=media,
            json_mode=json_mode,
            ttl=ttl,
            expires_ms=expires,
            expires_raw=expires_raw or "",
            closed=p.closed_header(h.get("stream-closed")),
            chunks=chunks,
            fork_of=fork_of,
            fork_offset=fork_offset,
            fork_sub=fork_sub,
        )
        status = _CREATE_STATUS.get(created.status)
        if status is None:
            raise _create_error(created.status)
        out = {"Stream-Next-Offset": p.format_offset(created.tail)}
        if created.content_type:
            out["Content-Type"] = created.content_type
        if created.closed:
            out["Stream-Closed"] = "true"
        if status == 201:
            out["Location"] = self._url(h, path)
        await self._respond(send, status, header_list(out))
        if status == 201 and created.subscribed:
            before = created.tail - _units(chunks, json_mode)
            await self.subscriptions.on_append(user, path, before, created.tail)

    async def _append(
        self, send: Send, user: str, path: str, h: dict[str, str], body: bytes
    ) -> None:
        closing = p.closed_header(h.get("stream-closed"))
        producer = p.parse_producer(h)
        if not body and not closing:
            raise HttpError(400, "an append needs a body (or Stream-Closed: true)")
        content_type = h.get("content-type", "").strip()
        if body and not content_type:
            raise HttpError(400, "Content-Type: required with a body")
        media = p.media_type(content_type)
        chunks = _chunks(body, p.is_json(media), creating=False)
        stream_seq = h.get("stream-seq")
        if stream_seq is not None and not stream_seq:
            raise HttpError(400, "Stream-Seq: empty")
        result = await self.store.append(
            user,
            path,
            now_ms=now_ms(),
            media=media,
            closing=closing,
            stream_seq=stream_seq,
            producer=producer,
            chunks=chunks,
        )
        out = {"Stream-Next-Offset": p.format_offset(result.tail)}
        if result.closed:
            out["Stream-Closed"] = "true"
        status = result.status
        if status == "ok" and chunks:
            self.metrics.durable_bytes_appended.inc(len(body))
        if status == "ok" and chunks and result.subscribed:
            before = result.tail - _units(chunks, p.is_json(media))
            await self.subscriptions.on_append(user, path, before, result.tail)
        if status == "ok":
            if producer is not None:
                out |= {"Producer-Epoch": str(producer.epoch), "Producer-Seq": result.a}
                await self._respond(send, 200 if chunks else 204, header_list(out))
            else:
                await self._respond(send, 204, header_list(out))
        elif status == "dup":
            if producer is not None:
                out |= {"Producer-Epoch": str(producer.epoch), "Producer-Seq": result.a}
            await self._respond(send, 204, header_list(out))
        elif status == "closed":
            raise HttpError(409, "the stream is closed", out)
        elif status == "stale_epoch":
            raise HttpError(403, "stale producer epoch", {"Producer-Epoch": result.a})
        elif status == "seq_gap":
            raise HttpError(
                409,
                "producer sequence gap",
                {"Producer-Expected-Seq": result.a, "Producer-Received-Seq": result.b},
            )
        elif status == "epoch_seq":
            raise HttpError(400, "a new producer epoch starts at Producer-Seq 0")
        elif status == "type_mismatch":
            raise HttpError(409, "Content-Type differs from the stream's")
        elif status == "stream_seq":
            raise HttpError(409, "Stream-Seq must increase")
        elif status == "quota_bytes":
            raise HttpError(413, "your durable streams hold DS_MAX_BYTES_PER_USER bytes already")
        else:
            raise _missing(status)

    # --- answers ---------------------------------------------------------------------------

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, user: str, message_id: str
    ) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise HttpError(405, "answers are read-only", {"Allow": "GET, HEAD, OPTIONS"})
        if not _valid_message_id(message_id):
            raise HttpError(404, "no such answer")
        source = AnswerSource(self, message_id, user, self.settings.ds_read_max_entries)
        await self._read(scope, receive, send, source)

    # --- reads -----------------------------------------------------------------------------

    async def _read(self, scope: Scope, receive: Receive, send: Send, source: Source) -> None:
        params = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
        if scope["method"] == "HEAD":
            snap = await source.read(None, touch=False)
            out = {
                "Content-Type": snap.content_type,
                "Stream-Next-Offset": p.format_offset(snap.tail),
                "Cache-Control": "no-store",
            }
            if snap.ttl:
                out["Stream-TTL"] = snap.ttl
            if snap.expires_at:
                out["Stream-Expires-At"] = snap.expires_at
            if snap.closed:
                out["Stream-Closed"] = "true"
            await self._respond(send, 200, header_list(out))
            return
        raw_offset = p.single_query(params, "offset")
        live = p.single_query(params, "live")
        client_cursor = p.single_query(params, "cursor")
        if live not in (None, "long-poll", "sse"):
            raise HttpError(400, "live: long-poll or sse")
        if live is not None and raw_offset is None:
            raise HttpError(400, "offset: required for live reads")
        start = p.parse_offset(raw_offset)
        if live == "sse":
            await self._sse(receive, send, source, start, client_cursor)
        elif live == "long-poll":
            await self._long_poll(receive, send, source, start, client_cursor)
        else:
            await self._catch_up(scope, send, source, start)

    async def _catch_up(self, scope: Scope, send: Send, source: Source, start: int | None) -> None:
        snap = await source.read(start, touch=True)
        if start is None:  # offset=now: nothing, and where the tail is
            out = {
                "Content-Type": snap.content_type,
                "Stream-Next-Offset": p.format_offset(snap.tail),
                "Stream-Up-To-Date": "true",
                "Cache-Control": "no-store",
            }
            if snap.closed:
                out["Stream-Closed"] = "true"
            await self._respond(send, 200, header_list(out), _empty_body(snap))
            return
        _check_start(start, snap)
        nxt, body, up_to_date, closed = _page(start, snap)
        tag = p.etag(source.tag, start, nxt, closed)
        out = {
            "Content-Type": snap.content_type,
            "Stream-Next-Offset": p.format_offset(nxt),
            "ETag": tag,
            "Cache-Control": CACHEABLE if snap.entries else "no-store",
        }
        if up_to_date:
            out["Stream-Up-To-Date"] = "true"
        if closed:
            out["Stream-Closed"] = "true"
        if p.etag_matches(request_headers(scope).get("if-none-match"), tag):
            await self._respond(send, 304, header_list(out))
            return
        await self._respond(send, 200, header_list(out), body)

    async def _long_poll(
        self, receive: Receive, send: Send, source: Source, start: int | None, cursor: str | None
    ) -> None:
        waiter = self._watch(Waiter())
        deadline = time.monotonic() + self.settings.ds_long_poll_timeout_s
        if start is None:  # offset=now: wait from the tail
            start = (await source.read(None, touch=True)).tail
        await source.follow(waiter, start)
        try:
            async with _until_disconnect(receive):
                while True:
                    snap = await source.read(start, touch=True)
                    _check_start(start, snap)
                    if snap.entries or snap.closed:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0 or waiter.lost:
                        break
                    await waiter.wait(left)
        finally:
            source.unfollow(waiter)
            self._live.discard(waiter)
        assert start is not None
        nxt, body, up_to_date, closed = _page(start, snap)
        out = {"Stream-Next-Offset": p.format_offset(nxt)}
        if not closed:
            out["Stream-Cursor"] = p.cursor(cursor)
        if up_to_date:
            out["Stream-Up-To-Date"] = "true"
        if closed:
            out["Stream-Closed"] = "true"
        if not snap.entries:
            await self._respond(send, 204, header_list(out))
            return
        out |= {
            "Content-Type": snap.content_type,
            "ETag": p.etag(source.tag, start, nxt, closed),
            "Cache-Control": CACHEABLE,
        }
        await self._respond(send, 200, header_list(out), body)

    async def _sse(
        self,
        receive: Receive,
        send: Send,
        source: Source,
        start: int | None,
        cursor: str | None,
    ) -> None:
        waiter = self._watch(Waiter())
        if start is None:  # offset=now: from the tail
            start = (await source.read(None, touch=True)).tail
        await source.follow(waiter, start)
        try:
            snap = await source.read(start, touch=True)
            _check_start(start, snap)
            text = p.sse_as_text(p.media_type(snap.content_type))
            headers = {
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
            if not text:
                headers["Stream-SSE-Data-Encoding"] = "base64"
            start_message = {"status": 200, "headers": self._with(header_list(headers))}
            await send({"type": "http.response.start", **start_message})
            ends = time.monotonic() + self.settings.ds_sse_max_s
            # Past the client's cursor once (never backwards), then the current interval.
            given = p.cursor(cursor)
            async with _until_disconnect(receive):
                first = True
                while True:
                    if snap.entries or first or snap.closed:
                        nxt, body, up_to_date, closed = _page(start, snap)
                        # A data event and its control event in one write: a client cut
                        # off between them would have data without its offset.
                        chunk = p.sse_data(body, text=text) if snap.entries else b""
                        chunk += p.sse_control(
                            p.format_offset(nxt),
                            cursor_value=max(given, p.cursor(None), key=int),
                            up_to_date=up_to_date,
                            closed=closed,
                        )
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        start = nxt
                        first = False
                        if closed:
                            break
                        if not up_to_date:
                            if not snap.entries:
                                # Below the tail with nothing to read: storage lost data.
                                # End here rather than spin; the client resumes.
                                break
                            snap = await source.read(start, touch=False)  # more to catch up
                            continue
                    left = ends - time.monotonic()
                    if left <= 0 or waiter.lost:
                        break
                    if not await waiter.wait(min(left, SSE_KEEPALIVE_S)):
                        await send(_KEEPALIVE)
                    snap = await source.read(start, touch=True)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            source.unfollow(waiter)
            self._live.discard(waiter)

    # --- plumbing --------------------------------------------------------------------------

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.settings.ds_max_body_bytes
        headers = request_headers(scope)
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise HttpError(400, "Content-Length: not a number")
        try:
            return await read_body(headers, receive, limit)
        except BodyTooLarge:
            raise HttpError(413, f"the body is larger than DS_MAX_BODY_BYTES ({limit})") from None
        except BodyCut:
            raise HttpError(400, "the client went away") from None

    def _url(self, h: dict[str, str], path: str) -> str:
        """The stream's absolute URL, as the client reached it (nginx passes the Host
        and scheme it was asked with)."""
        scheme = h.get("x-forwarded-proto", "http").split(",")[0].strip() or "http"
        host = h.get("x-forwarded-host") or h.get("host") or "localhost"
        return f"{scheme}://{host}{PREFIX}{path}"

    def _with(self, headers: Headers) -> Headers:
        return self._base + headers

    async def _respond(self, send: Send, status: int, headers: Headers, body: bytes = b"") -> None:
        all_headers = self._with(headers)
        if status not in (204, 304):
            all_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send(
            {"type": "http.response.body", "body": body if status not in (204, 304) else b""}
        )

    async def _error(self, send: Send, exc: HttpError, head: bool = False) -> None:
        if str(exc.status) in DURABLE_REFUSALS:
            self.metrics.durable_refused.labels(str(exc.status)).inc()
        body = b"" if head else (exc.message + "\n").encode()
        headers = header_list({"Content-Type": "text/plain; charset=utf-8", **exc.headers})
        try:
            await self._respond(send, exc.status, headers, body)
        except RuntimeError:  # the response had started (an SSE stream): just end it
            pass


# --- helpers ------------------------------------------------------------------------------

_KEEPALIVE = {"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True}
_ALLOW_GENERIC = "GET, HEAD, PUT, POST, DELETE, OPTIONS"
_CREATE_STATUS = {"created": 201, "exists": 200}


def _create_error(status: str) -> HttpError:
    return {
        "conflict": HttpError(409, "a stream exists at this path with another configuration"),
        "gone": HttpError(409, "a deleted stream still holds this path (its forks read it)"),
        "no_source": HttpError(404, "Stream-Forked-From: no such stream"),
        "source_gone": HttpError(409, "Stream-Forked-From: that stream was deleted"),
        "fork_range": HttpError(400, "Stream-Fork-Offset: past the source's tail"),
        "type_mismatch": HttpError(409, "Content-Type differs from the source's"),
        "quota_streams": HttpError(
            403, "you hold DS_MAX_STREAMS_PER_USER durable streams already; delete some"
        ),
        "quota_bytes": HttpError(413, "your durable streams hold DS_MAX_BYTES_PER_USER bytes"),
    }.get(status, HttpError(500, f"unexpected create outcome {status}"))


def _missing(status: str) -> HttpError:
    if status == "gone":
        return HttpError(410, "the stream was deleted")
    return HttpError(404, "no such stream")


def _preflight() -> Headers:
    return header_list(
        {
            "Access-Control-Allow-Methods": _ALLOW_GENERIC,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
        }
    )


def _op(scope: Scope) -> str:
    """The operation a request is, for the request counter."""
    method = scope["method"]
    if method == "GET":
        query = scope.get("query_string", b"")
        if b"live=sse" in query:
            return "sse"
        return "long_poll" if b"live=long-poll" in query else "read"
    return _OPS.get(method, "other")


_OPS = {"PUT": "create", "POST": "append", "HEAD": "head", "DELETE": "delete"}


def _chunks(body: bytes, json_mode: bool, *, creating: bool) -> list[bytes]:
    """A body as the entries it stores: its messages in JSON mode, else itself whole."""
    if not body:
        return []
    return p.json_messages(body, creating=creating) if json_mode else [body]


def _units(chunks: list[bytes], json_mode: bool) -> int:
    """Positions the chunks take: messages in JSON mode, else bytes."""
    return len(chunks) if json_mode else sum(len(c) for c in chunks)


def _stream_path(value: str) -> str:
    """Stream-Forked-From: the source's path, as `/streams/x`, `/x` or `x`."""
    value = value.strip()
    if value.startswith(PREFIX):
        return value[len(PREFIX) :]
    return value.lstrip("/")


def _valid_message_id(message_id: str) -> bool:
    return 4 <= len(message_id) <= 64 and all(c.isalnum() or c == "_" for c in message_id)


def _check_start(start: int, snap: Snapshot) -> None:
    if start > snap.tail:
        raise HttpError(400, "offset: past the stream's tail")


def _empty_body(snap: Snapshot) -> bytes:
    return b"[]" if p.is_json(p.media_type(snap.content_type)) else b""


def _page(start: int, snap: Snapshot) -> tuple[int, bytes, bool, bool]:
    """(next position, body, up to date, closed at the end) of a read's entries."""
    json_mode = p.is_json(p.media_type(snap.content_type))
    nxt = snap.entries[-1].end if snap.entries else start
    if json_mode:
        body = p.json_body(e.data for e in snap.entries)
    else:
        body = b"".join(e.data for e in snap.entries)
    up_to_date = nxt >= snap.tail
    return nxt, body, up_to_date, up_to_date and snap.closed


class ClientGone(Exception):
    """The client of a live read went away: nothing more to send."""


@contextlib.asynccontextmanager
async def _until_disconnect(receive: Receive) -> AsyncIterator[None]:
    """Run the block until the client goes away (then raise ClientGone)."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientGone() from None
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
