"""Reserved subscription APIs (PROTOCOL.md sections 6-7): `{root}/__ds/...`.

A subscription is a durable cursor over some of its owner's streams (a glob `pattern`
over root-relative paths, explicit `streams`, or both) that wakes a worker when any of
them has data past its acked offset: by a signed webhook call (`type: webhook`), or by a
wake event appended to a stream the workers read (`type: pull-wake`), which a worker
then claims. Every wake has a new `generation` and `wake_id`; callbacks, acks and
releases carry a token scoped to that wake and are fenced (409 FENCED) once it is over.

**Multi-node.** Every subscription's state is in Redis, in its owner's bucket beside the
streams (`keys.py`: `ds_sub*`), and every change is one Lua script (`lua/ds_sub_*.lua`,
`lua/lib/ds_sub.lua`), so any gateway serves any request and any gateway may die at any
moment. An append reports itself (`on_append`, one Redis call for a user without
subscriptions); the script that links the stream and creates the wake also marks its
delivery as taken by this node for a while, and the node makes it (a webhook call or a
wake event). Whatever a dead node left undone is picked up by every node's loop
(`run`), which reads each bucket's schedule (`ds_subs_due`): leases that end, deliveries
and retries that are due (1 s doubling to 60 s, 20% jitter, kept in Redis), and a
periodic sweep of each subscription for pending work nobody reported.

**Webhooks** are signed with Ed25519 (`Webhook-Signature: t=..,kid=..,ed25519=..` over
`<t>.<body>`); the key is DS_WEBHOOK_SIGNING_KEY or derived from JWT_SECRET, the same
on every node, and its public half is at `{root}/__ds/jwks.json`. A webhook URL is
checked when the subscription is made (https only; http://localhost or 127.0.0.x only
with DS_WEBHOOK_ALLOW_LOCALHOST or AUTH_DEV_MODE; no private, loopback, link-local or
reserved literal address) and again at every call, where its name is resolved and the
call pinned to an address that passed (no DNS rebinding), with no redirects, no proxy
from the environment, a short timeout and a bounded answer. Logs name a webhook by its
scheme and host only and never hold a token.

**Tokens** (callback and claim) are HMAC-signed with a key derived from JWT_SECRET:
owner, subscription, generation, wake id, expiry. They are not user credentials, so the
callback, ack and release routes authenticate by them alone (and `jwks.json` is
public): the server must not require a user's token there (`user` is None then).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from services.common.clock import now_iso, now_ms
from services.common.errors import StorageError
from services.common.keys import Keys
from services.common.scripts import (
    DS_SUB_ACK,
    DS_SUB_APPEND,
    DS_SUB_CLAIM,
    DS_SUB_DELETE,
    DS_SUB_DELIVERED,
    DS_SUB_GET,
    DS_SUB_LINK,
    DS_SUB_PUT,
    DS_SUB_RELEASE,
    DS_SUB_TICK,
    DS_SUB_UNLINK,
    BoundScript,
)
from services.common.settings import Settings
from services.durable import subscription_logic as sl
from services.durable.http import (
    PREFIX,
    BodyCut,
    BodyTooLarge,
    Headers,
    header_list,
    read_body,
    request_headers,
)
from services.durable.store import DurableStore

log = logging.getLogger(__name__)

Respond = Callable[[Send, int, Headers, bytes], Awaitable[None]]
Authenticate = Callable[[Scope], str]

TICK_S = 0.5
"""How often each node reads the schedule (leases end and retries start within it)."""
TICK_BATCH = 64
"""Due subscriptions one node takes from one bucket per tick."""
SWEEP_MS = 30_000
"""An idle subscription is looked at this often for pending work nobody reported."""
HOLD_EXTRA_MS = 5_000
"""A node taking a delivery holds it for its timeout plus this; then another may."""
MAX_CONTROL_BODY = 1024 * 1024
MAX_WEBHOOK_ANSWER = 64 * 1024
JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}


class Subscriptions:
    def __init__(
        self,
        settings: Settings,
        store: DurableStore,
        authenticate: Authenticate,
        respond: Respond,
    ) -> None:
        """`authenticate` returns the user a request's bearer token proves (or raises
        the server's 401); `respond` sends a whole response with the server's headers.
        Nothing touches Redis until `bind`. Raises ValueError naming a setting that is
        malformed (DS_WEBHOOK_SIGNING_KEY)."""
        self._settings = settings
        self._store = store
        self._authenticate = authenticate
        self._respond = respond
        self._keys = Keys.from_settings(settings)
        self._signing = sl.SigningKey.from_settings(settings)
        self._token_key = sl.derive_key(settings.jwt_secret, "durable-streams wake tokens")
        self._allow_localhost = sl.allow_localhost(settings)
        self._timeout_s = settings.ds_webhook_timeout_s
        self._hold_ms = int(self._timeout_s * 1000) + HOLD_EXTRA_MS
        self._slots = asyncio.Semaphore(settings.ds_webhook_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._redis: Redis | None = None
        self._http: httpx.AsyncClient | None = None
        self._s: dict[str, BoundScript] = {}

    def bind(self, redis: Redis) -> None:
        """Start serving with this Redis client (the gateway's lifespan calls it)."""
        self._redis = redis
        self._s = {
            script.name: script.bind(redis)
            for script in (
                DS_SUB_PUT,
                DS_SUB_GET,
                DS_SUB_DELETE,
                DS_SUB_LINK,
                DS_SUB_UNLINK,
                DS_SUB_APPEND,
                DS_SUB_TICK,
                DS_SUB_DELIVERED,
                DS_SUB_CLAIM,
                DS_SUB_ACK,
                DS_SUB_RELEASE,
            )
        }
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout_s, connect=min(2.0, self._timeout_s)),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the call goes where checked
            limits=httpx.Limits(
                max_connections=self._settings.ds_webhook_concurrency,
                # A connection per call: one kept for an address could carry a call for
                # another host name there, past that name's certificate check.
                max_keepalive_connections=0,
            ),
        )

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.aclose()

    # --- the HTTP routes ---------------------------------------------------------------

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        user: str | None,
        root: str,
        rest: list[str],
    ) -> tuple[int, str] | None:
        """Serve `{root}/__ds/{rest...}`. `user` is who the request's bearer token
        proves, or None when the server left that to us (the callback, ack and release
        routes carry a wake token instead, and `jwks.json` is public). Sends the
        response itself (None), or returns (status, message) for the caller to send."""
        method = scope["method"]
        try:
            if rest == ["jwks.json"]:
                if method not in ("GET", "HEAD"):
                    await self._not_allowed(send, "GET, HEAD, OPTIONS")
                    return None
                body = json.dumps({"keys": [self._signing.jwk()]}).encode()
                headers = {
                    "Content-Type": "application/jwk-set+json",
                    "Cache-Control": "public, max-age=300",
                }
                await self._respond(
                    send, 200, header_list(headers), b"" if method == "HEAD" else body
                )
                return None
            if len(rest) < 2 or rest[0] != "subscriptions":
                raise sl.SubscriptionError(404, "SUBSCRIPTION_NOT_FOUND", "no such control route")
            if self._redis is None:
                return 503, "subscriptions are not ready"
            sub_id = sl.check_sub_id(rest[1])
            action = rest[2:]
            if action in (["callback"], ["ack"], ["release"]):
                if method != "POST":
                    await self._not_allowed(send, "POST, OPTIONS")
                    return None
                await self._wake_call(scope, receive, send, root, sub_id, action[0])
                return None
            who = user if user is not None else self._authenticate(scope)
            if not action:
                await self._base(scope, receive, send, who, root, sub_id)
            elif action == ["streams"]:
                if method != "POST":
                    await self._not_allowed(send, "POST, OPTIONS")
                    return None
                await self._add_streams(scope, receive, send, who, root, sub_id)
            elif action[0] == "streams":
                if method != "DELETE":
                    await self._not_allowed(send, "DELETE, OPTIONS")
                    return None
                path = sl.normalize_path("/".join(action[1:]))
                await self._remove_stream(send, who, root, sub_id, path)
            elif action == ["claim"]:
                if method != "POST":
                    await self._not_allowed(send, "POST, OPTIONS")
                    return None
                await self._claim(scope, receive, send, who, root, sub_id)
            else:
                raise sl.SubscriptionError(404, "SUBSCRIPTION_NOT_FOUND", "no such control route")
        except sl.SubscriptionError as exc:
            await self._json(send, exc.status, exc.body())
        return None

    async def _base(
        self, scope: Scope, receive: Receive, send: Send, user: str, root: str, sub_id: str
    ) -> None:
        method = scope["method"]
        sid = self._keys.ds_sub_id(user, root, sub_id)
        if method == "PUT":
            status = await self._create(scope, receive, user, root, sub_id, sid)
            found = await self._get(sid)
            if found is None:  # deleted at once by another request
                raise sl.SubscriptionError(404, "SUBSCRIPTION_NOT_FOUND", "no such subscription")
            await self._json(send, status, self._serialize(*found, self._base_url(scope)))
        elif method in ("GET", "HEAD"):
            found = await self._get(sid)
            if found is None:
                raise sl.SubscriptionError(404, "SUBSCRIPTION_NOT_FOUND", "no such subscription")
            body = self._serialize(*found, self._base_url(scope))
            await self._json(send, 200, body, head=method == "HEAD")
        elif method == "DELETE":
            await self._call(
                "ds_sub_delete",
                keys={
                    "sub": self._keys.ds_sub(sid),
                    "links": self._keys.ds_sub_links(sid),
                    "user_subs": self._keys.ds_user_subs(user),
                    "due": self._due(sid),
                },
                args={"sid": sid},
            )
            await self._respond(send, 204, [], b"")
        else:
            await self._not_allowed(send, "GET, HEAD, PUT, DELETE, OPTIONS")

    async def _create(
        self, scope: Scope, receive: Receive, user: str, root: str, sub_id: str, sid: str
    ) -> int:
        config = sl.parse_config(
            await self._json_body(scope, receive),
            max_streams=self._settings.ds_max_subscription_streams,
        )
        if config.webhook_url is not None:
            sl.check_webhook_url(config.webhook_url, allow_localhost=self._allow_localhost)
        if config.wake_stream is not None and config.wake_stream in config.streams:
            raise sl.invalid("streams: the wake stream cannot be one of them")
        assert self._redis is not None
        try:
            existing = await self._redis.hget(self._keys.ds_sub(sid), "hash")
        except RedisError as exc:
            raise StorageError(f"subscription lookup: {exc}") from exc
        if existing is not None:  # a re-confirmation needs no backfill (the script decides)
            return self._confirmed(existing == config.hash())
        links: list[str] = []
        for path in config.streams:
            links += [path, self._store.stream_id(user, sl.full_path(root, path)), "e"]
        if config.pattern is not None:
            for path, stream in await self._matching_streams(user, root, config):
                links += [path, stream, "g"]
        record = {
            "id": sub_id,
            "root": root,
            "user": user,
            "type": config.type,
            "lease_ms": str(config.lease_ttl_ms),
            "created": _iso_now(),
            "base": self._base_url(scope),
        }
        if config.pattern is not None:
            record["pattern"] = config.pattern
        if config.webhook_url is not None:
            record["webhook"] = config.webhook_url
        if config.wake_stream is not None:
            record["wake_stream"] = config.wake_stream
        if config.description is not None:
            record["desc"] = config.description
        index = {"r": root, "p": config.pattern or "", "w": config.wake_stream or ""}
        outcome = await self._call(
            "ds_sub_put",
            keys={
                "sub": self._keys.ds_sub(sid),
                "user_subs": self._keys.ds_user_subs(user),
                "due": self._due(sid),
            },
            args={
                "prefix": self._keys.ds_prefix(sid),
                "sid": sid,
                "hash": config.hash(),
                "config": json.dumps(record),
                "index": json.dumps(index),
                "now": now_ms(),
                "max_subs": self._settings.ds_max_subscriptions_per_user,
                "sweep_ms": SWEEP_MS,
            },
            rest=links,
        )
        if outcome in ("exists", "conflict"):
            return self._confirmed(outcome == "exists")
        if outcome == "quota":
            raise sl.SubscriptionError(
                403,
                "QUOTA_EXCEEDED",
                "you hold DS_MAX_SUBSCRIPTIONS_PER_USER subscriptions already; delete some",
            )
        return 201

    @staticmethod
    def _confirmed(same: bool) -> int:
        """A PUT for a subscription that exists: 200 with the same configuration."""
        if not same:
            raise sl.SubscriptionError(
                409,
                "SUBSCRIPTION_ALREADY_EXISTS",
                "a subscription with this id exists with another configuration",
            )
        return 200

    async def _matching_streams(
        self, user: str, root: str, config: sl.Config
    ) -> list[tuple[str, str]]:
        """(root-relative path, stream id) of the user's streams the pattern matches now:
        the backfill (the script links them at their tails, atomically)."""
        assert self._redis is not None and config.pattern is not None
        try:
            ids: list[str] = await self._redis.zrange(self._keys.ds_user_streams(user), 0, -1)
            if not ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream in ids:
                    pipe.hget(self._keys.ds_meta(stream), "path")
                paths: list[str | None] = await pipe.execute()
        except RedisError as exc:
            raise StorageError(f"subscription backfill: {exc}") from exc
        out = []
        for stream, path in zip(ids, paths, strict=True):
            rel = sl.relative_path(path, root) if path else None
            if rel is not None and rel != config.wake_stream and sl.glob_match(config.pattern, rel):
                out.append((rel, stream))
        return out

    async def _get(self, sid: str) -> tuple[dict[str, str], dict[str, str]] | None:
        reply = await self._call(
            "ds_sub_get",
            keys={"sub": self._keys.ds_sub(sid), "links": self._keys.ds_sub_links(sid)},
            args={},
        )
        if not reply:
            return None
        return _pairs(reply[0]), _pairs(reply[1])

    def _serialize(
        self, record: dict[str, str], links: dict[str, str], base: str
    ) -> dict[str, object]:
        streams = []
        for path in sorted(links):
            flags, acked, _ = _link(links[path])
            streams.append(sl.stream_info(path, flags, acked))
        webhook: dict[str, object] | None = None
        if record.get("webhook"):
            jwks = sl.control_url(base, record["root"], "jwks.json")
            webhook = {
                "url": record["webhook"],
                "signing": sl.signing_metadata(self._signing, jwks),
            }
        return {
            "id": record["id"],
            "subscription_id": record["id"],
            "type": record["type"],
            "pattern": record.get("pattern"),
            "streams": streams,
            "webhook": webhook,
            "wake_stream": record.get("wake_stream"),
            "lease_ttl_ms": int(record["lease_ms"]),
            "created_at": record["created"],
            "status": record.get("status", "active"),
            "description": record.get("desc"),
        }

    async def _add_streams(
        self, scope: Scope, receive: Receive, send: Send, user: str, root: str, sub_id: str
    ) -> None:
        limit = self._settings.ds_max_subscription_streams
        paths = sl.parse_stream_list(await self._json_body(scope, receive), max_streams=limit)
        sid = self._keys.ds_sub_id(user, root, sub_id)
        index = await self._index(user, sid)
        if index is not None and index.get("w") in paths:
            raise sl.invalid("streams: the wake stream cannot be one of them")
        adding: list[str] = []
        for path in paths:
            adding += [path, self._store.stream_id(user, sl.full_path(root, path))]
        outcome = await self._call(
            "ds_sub_link",
            keys={"sub": self._keys.ds_sub(sid), "links": self._keys.ds_sub_links(sid)},
            args={"prefix": self._keys.ds_prefix(sid), "now": now_ms(), "max_links": limit},
            rest=adding,
        )
        if outcome == "missing":
            raise sl.SubscriptionError(404, "SUBSCRIPTION_NOT_FOUND", "no such subscription")
        if outcome == "quota":
            raise sl.invalid(f"more than {limit} explicit streams (DS_MAX_SUBSCRIPTION_STREAMS)")
        await self._respond(send, 204, [], b"")

    async def _remove_stream(
        self, send: Send, user: str, root: str, sub_id: str, path: str
    ) -> None:
        sid = self._keys.ds_sub_id(user, root, sub_id)
        index = await self._index(user, sid)
        pattern = index.get("p") if index is not None else None
        keep_glob = bool(pattern) and sl.glob_match(str(pattern), path)
        outcome = await self._call(
            "ds_sub_unlink",
            keys={"sub": self._keys.ds_sub(sid), "links": self._keys.ds_sub_links(sid)},
            args={"path": path, "keep_glob": "1" if keep_glob else ""},
        )
        if outcome == "missing":
            raise sl.SubscriptionError(404, "SUBSCRIPTION_NOT_FOUND", "no such subscription")
        await self._respond(send, 204, [], b"")

    async def _claim(
        self, scope: Scope, receive: Receive, send: Send, user: str, root: str, sub_id: str
    ) -> None:
        worker = sl.parse_worker(await self._json_body(scope, receive))
        sid = self._keys.ds_sub_id(user, root, sub_id)
        reply = await self._call(
            "ds_sub_claim",
            keys={"sub": self._keys.ds_sub(sid), "due": self._due(sid)},
            args={
                "prefix": self._keys.ds_prefix(sid),
                "sid": sid,
                "worker": worker,
                "now": now_ms(),
                "wake_id": _wake_id(),
                "sweep_ms": SWEEP_MS,
            },
        )
        status = reply[0]
        if status == "claimed":
            raise sl.SubscriptionError(
                409,
                "ALREADY_CLAIMED",
                "another worker holds the subscription's lease",
                current_holder=reply[1],
                generation=int(reply[2]),
            )
        if status == "no_pending":
            raise sl.SubscriptionError(409, "NO_PENDING_WORK", "no linked stream has pending work")
        _check_found(status, "pull-wake")
        gen, wake_id, streams, lease_ms = int(reply[1]), reply[2], reply[3], int(reply[4])
        token = self._token(sl.CLAIM, user, sid, gen, wake_id)
        await self._json(
            send,
            200,
            {
                "wake_id": wake_id,
                "generation": gen,
                "token": token,
                "streams": _stream_infos(streams),
                "lease_ttl_ms": lease_ms,
            },
        )

    async def _wake_call(
        self, scope: Scope, receive: Receive, send: Send, root: str, sub_id: str, action: str
    ) -> None:
        """A webhook's callback, or a pull-wake worker's ack or release: authenticated
        by the wake's token alone."""
        raw = sl.bearer(request_headers(scope))
        if raw is None:
            raise sl.SubscriptionError(401, "TOKEN_INVALID", "Authorization: Bearer <token>")
        token = sl.read_token(self._token_key, raw, now_s=time.time())
        kind = sl.CALLBACK if action == "callback" else sl.CLAIM
        sid = self._keys.ds_sub_id(token.user, root, sub_id)
        if token.kind != kind or token.sub != sid:
            raise sl.SubscriptionError(401, "TOKEN_INVALID", "the token is not for this")
        request = sl.parse_wake_request(await self._json_body(scope, receive))
        keys = {"sub": self._keys.ds_sub(sid), "due": self._due(sid)}
        common: dict[str, str | int | float] = {
            "prefix": self._keys.ds_prefix(sid),
            "sid": sid,
            "token_gen": token.generation,
            "gen": request.generation,
            "wake_id": request.wake_id,
            "now": now_ms(),
            "new_wake_id": _wake_id(),
            "hold_ms": self._hold_ms,
            "sweep_ms": SWEEP_MS,
        }
        want = "webhook" if action == "callback" else "pull-wake"
        if action == "release":
            reply = await self._call("ds_sub_release", keys=keys, args=common)
            _check_wake_reply(reply, want)
            self._deliver_json(reply[1])
            await self._respond(send, 204, [], b"")
            return
        acks: list[str | int] = []
        for path, position in request.acks:
            acks += [path, position]
        reply = await self._call(
            "ds_sub_ack",
            keys=keys,
            args={
                **common,
                "kind": "callback" if action == "callback" else "ack",
                "done": "1" if request.done else "",
            },
            rest=acks,
        )
        _check_wake_reply(reply, want)
        self._deliver_json(reply[2])
        await self._json(send, 200, {"ok": True, "next_wake": reply[1] == "1"})

    # --- appends ---------------------------------------------------------------------------

    async def on_append(self, user: str, path: str, before: int, tail: int) -> None:
        """Called after data landed in the user's stream `path` (created, or appended):
        its tail position went from `before` to `tail`. Also called on creation without
        data (before == tail), so a pattern can link a new stream. Never raises: the
        append succeeded whatever happens here (a missed report is caught by the sweep)."""
        if self._redis is None:
            return
        try:
            index: dict[str, str] = await self._redis.hgetall(self._keys.ds_user_subs(user))
            if not index:
                return
            subs: list[str] = []
            for sid, raw in index.items():
                entry = json.loads(raw)
                rel = sl.relative_path(path, entry["r"])
                if rel is None or rel == entry["w"]:
                    continue  # not under its root; its own wake stream never wakes it
                matches = bool(entry["p"]) and sl.glob_match(entry["p"], rel)
                subs += [sid, rel, "1" if matches else "", _wake_id()]
            if not subs:
                return
            reply = await self._call(
                "ds_sub_append",
                keys={"user_subs": self._keys.ds_user_subs(user), "due": self._due(subs[0])},
                args={
                    "prefix": self._keys.ds_prefix(subs[0]),
                    "stream": self._store.stream_id(user, path),
                    "before": before,
                    "now": now_ms(),
                    "hold_ms": self._hold_ms,
                    "sweep_ms": SWEEP_MS,
                },
                rest=subs,
            )
            for delivery in _json_list(reply):
                self._spawn(delivery)
        except (StorageError, RedisError) as exc:
            log.warning("subscriptions: an append was not reported", extra={"detail": str(exc)})
        except Exception:  # noqa: BLE001 - the append itself succeeded; logged
            log.exception("subscriptions: an append was not reported")

    # --- the loop: leases, deliveries and retries, sweeps ---------------------------------------

    async def run(self) -> None:
        """Every node, forever: take what is due in every bucket's schedule."""
        while True:
            try:
                await self.tick()
            except (StorageError, RedisError) as exc:
                log.warning("subscriptions: the schedule is unreadable", extra={"detail": str(exc)})
            await asyncio.sleep(TICK_S * random.uniform(0.8, 1.2))

    async def tick(self) -> None:
        assert self._redis is not None
        now = now_ms()
        buckets = list(self._keys.all_buckets())
        async with self._redis.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.zrangebyscore(self._keys.ds_subs_due(bucket), "-inf", now, 0, TICK_BATCH)
            due: list[list[str]] = await pipe.execute()
        for sids in due:
            for sid in sids:
                await self._tick_one(sid)

    async def _tick_one(self, sid: str) -> None:
        reply = await self._call(
            "ds_sub_tick",
            keys={"sub": self._keys.ds_sub(sid), "due": self._due(sid)},
            args={
                "prefix": self._keys.ds_prefix(sid),
                "sid": sid,
                "now": now_ms(),
                "wake_id": _wake_id(),
                "hold_ms": self._hold_ms,
                "sweep_ms": SWEEP_MS,
            },
        )
        self._deliver_json(reply)

    async def _retry_at(self, sid: str, at_ms: int) -> None:
        """Look at the subscription when its retry is due (sooner than the loop would;
        the loop still does if this node is gone by then)."""
        await asyncio.sleep(max(0, at_ms - now_ms()) / 1000)
        try:
            await self._tick_one(sid)
        except (StorageError, RedisError) as exc:
            log.warning("subscriptions: a retry waits for the loop", extra={"detail": str(exc)})

    # --- delivery --------------------------------------------------------------------------------

    def _deliver_json(self, raw: str) -> None:
        if raw:
            self._spawn(json.loads(raw))

    def _spawn(self, delivery: dict[str, Any]) -> None:
        self._background(self._deliver(delivery))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name="ds-subscription-delivery")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: dict[str, Any] | None) -> None:
        """Make a delivery this node took, record its outcome, and make the next one
        that outcome started (a `done` webhook with more pending work)."""
        while delivery is not None:
            sid = str(delivery["sid"])
            try:
                async with self._slots:
                    if delivery["type"] == sl.WEBHOOK:
                        outcome = await self._call_webhook(delivery)
                    else:
                        outcome = await self._write_wake_event(delivery)
                retry_at = 0
                if outcome == "fail":  # this was attempt `attempts + 1`
                    retry_at = now_ms() + sl.retry_delay_ms(int(delivery["attempts"]) + 1)
                reply = await self._call(
                    "ds_sub_delivered",
                    keys={"sub": self._keys.ds_sub(sid), "due": self._due(sid)},
                    args={
                        "prefix": self._keys.ds_prefix(sid),
                        "sid": sid,
                        "gen": delivery["gen"],
                        "wake_id": delivery["wake_id"],
                        "outcome": outcome,
                        "next_at": retry_at,
                        "now": now_ms(),
                        "new_wake_id": _wake_id(),
                        "hold_ms": self._hold_ms,
                        "sweep_ms": SWEEP_MS,
                    },
                )
            except (StorageError, RedisError) as exc:
                # The delivery stays taken until its hold ends; then any node retries it.
                log.warning(
                    "subscriptions: a delivery's outcome is not recorded",
                    extra={"detail": str(exc)},
                )
                return
            if retry_at:
                self._background(self._retry_at(sid, retry_at))
            delivery = json.loads(reply) if reply else None

    async def _call_webhook(self, d: dict[str, Any]) -> str:
        """POST the wake to the subscription's webhook: 'done', 'ok' or 'fail'."""
        gen = int(d["gen"])
        base = self._settings.ds_public_url or str(d["base"])
        if base and not base.endswith("/"):
            base += "/"
        token = self._token(sl.CALLBACK, str(d["user"]), str(d["sid"]), gen, str(d["wake_id"]))
        payload = {
            "subscription_id": d["id"],
            "wake_id": d["wake_id"],
            "generation": gen,
            "streams": _stream_infos(d.get("streams")),
            "callback_url": sl.control_url(
                base, str(d["root"]), "subscriptions", str(d["id"]), "callback"
            ),
            "callback_token": token,
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        url = str(d["url"])
        shown = sl.url_for_log(url)
        assert self._http is not None
        try:
            async with asyncio.timeout(self._timeout_s):  # resolving included
                target, host_header, extensions = await self._pin(url)
                headers = {
                    "Host": host_header,
                    "Content-Type": "application/json",
                    "Webhook-Signature": self._signing.signature(body, int(time.time())),
                    "User-Agent": "chat-cluster-durable-streams",
                }
                request = self._http.build_request(
                    "POST", target, content=body, headers=headers, extensions=extensions
                )
                response = await self._http.send(request, stream=True)
                try:
                    if not 200 <= response.status_code < 300:
                        log.info(
                            "subscriptions: webhook answered an error",
                            extra={"detail": f"{d['id']}: {shown}: {response.status_code}"},
                        )
                        return "fail"
                    answer = b""
                    async for chunk in response.aiter_bytes():
                        answer += chunk
                        if len(answer) > MAX_WEBHOOK_ANSWER:
                            break
                finally:
                    await response.aclose()
        except sl.SubscriptionError as exc:
            log.warning(
                "subscriptions: webhook refused", extra={"detail": f"{d['id']}: {shown}: {exc}"}
            )
            return "fail"
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            log.info(
                "subscriptions: webhook call failed",
                extra={"detail": f"{d['id']}: {shown}: {type(exc).__name__}"},
            )
            return "fail"
        return "done" if sl.webhook_done(answer[:MAX_WEBHOOK_ANSWER]) else "ok"

    async def _pin(self, url: str) -> tuple[str, str, dict[str, Any]]:
        """Check the URL again (settings may have changed) and resolve its host: every
        address must pass (`address_allowed`); the call then goes to the first, with
        the name kept in Host and TLS's SNI and certificate check. Returns (URL with
        the address, Host header, request extensions)."""
        sl.check_webhook_url(url, allow_localhost=self._allow_localhost)
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        https = parts.scheme.lower() == "https"
        port = parts.port or (443 if https else 80)
        dev_local = self._allow_localhost and sl.is_dev_local_host(host)
        literal = sl.literal_address(host)
        addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
        if literal is not None:
            addresses = [literal]
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses or not all(sl.address_allowed(a, dev_local=dev_local) for a in addresses):
            raise sl.SubscriptionError(
                400, "WEBHOOK_URL_REJECTED", "the host resolves to a refused address"
            )
        address = addresses[0]
        shown = f"[{address}]" if address.version == 6 else str(address)
        netloc = f"{shown}:{parts.port}" if parts.port else shown
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        extensions: dict[str, Any] = {"sni_hostname": host} if https and literal is None else {}
        return target, parts.netloc, extensions

    async def _write_wake_event(self, d: dict[str, Any]) -> str:
        """Append the wake event to a pull-wake subscription's wake stream: 'ok' or
        'fail' (the stream is missing, closed, not JSON...: retried, as the application
        may make it later)."""
        user, root = str(d["user"]), str(d["root"])
        path = sl.full_path(root, str(d["wake_stream"]))
        event = sl.wake_event(str(d["id"]), str(d["trigger"]), int(d["gen"]), now_ms())
        result = await self._store.append(
            user,
            path,
            now_ms=now_ms(),
            media="application/json",
            closing=False,
            stream_seq=None,
            producer=None,
            chunks=[event],
        )
        if result.status != "ok":
            log.warning(
                "subscriptions: the wake stream refused a wake event",
                extra={"detail": f"{d['id']}: {result.status}"},
            )
            return "fail"
        await self.on_append(user, path, result.tail - 1, result.tail)
        return "ok"

    # --- plumbing ----------------------------------------------------------------------------

    def _token(self, kind: str, user: str, sid: str, gen: int, wake_id: str) -> str:
        expires = int(time.time()) + sl.TOKEN_TTL_S
        return sl.make_token(self._token_key, sl.WakeToken(kind, user, sid, gen, wake_id, expires))

    async def _call(
        self,
        name: str,
        *,
        keys: dict[str, str],
        args: dict[str, str | int | float],
        rest: list[str] | list[str | int] | None = None,
    ) -> Any:
        return await self._s[name](keys=keys, args=args, rest=rest or ())

    def _due(self, sid: str) -> str:
        return self._keys.ds_subs_due(self._keys.bucket_of_message(sid))

    async def _index(self, user: str, sid: str) -> dict[str, str] | None:
        assert self._redis is not None
        try:
            raw = await self._redis.hget(self._keys.ds_user_subs(user), sid)
        except RedisError as exc:
            raise StorageError(f"subscription index: {exc}") from exc
        return json.loads(raw) if raw else None

    def _base_url(self, scope: Scope) -> str:
        return sl.request_base(request_headers(scope), self._settings.ds_public_url, PREFIX)

    async def _json_body(self, scope: Scope, receive: Receive) -> object:
        try:
            raw = await read_body(request_headers(scope), receive, MAX_CONTROL_BODY)
        except BodyTooLarge:
            raise sl.SubscriptionError(413, "INVALID_REQUEST", "the body is too large") from None
        except BodyCut:
            raise sl.invalid("the client went away") from None
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise sl.invalid("the body is not valid JSON") from exc

    async def _json(self, send: Send, status: int, value: object, head: bool = False) -> None:
        body = b"" if head else json.dumps(value).encode()
        await self._respond(send, status, header_list(JSON_HEADERS), body)

    async def _not_allowed(self, send: Send, allow: str) -> None:
        body = sl.SubscriptionError(405, "METHOD_NOT_ALLOWED", "method not allowed").body()
        headers = header_list({**JSON_HEADERS, "Allow": allow})
        await self._respond(send, 405, headers, json.dumps(body).encode())


# --- helpers ----------------------------------------------------------------------------------


def _check_found(status: str, want: str) -> None:
    if status == "missing":
        raise sl.SubscriptionError(404, "SUBSCRIPTION_NOT_FOUND", "no such subscription")
    if status == "wrong_type":
        raise sl.SubscriptionError(400, "INVALID_REQUEST", f"the subscription is not {want}")
    if status != "ok":
        raise sl.SubscriptionError(500, "INTERNAL", f"unexpected outcome {status}")


def _check_wake_reply(reply: list[str], want: str) -> None:
    status = reply[0]
    if status == "fenced":
        raise sl.SubscriptionError(
            409,
            "FENCED",
            "the wake is over (stale generation or wake id)",
            generation=int(reply[1]),
        )
    if status == "invalid_offset":
        raise sl.SubscriptionError(409, "INVALID_OFFSET", str(reply[1]))
    _check_found(status, want)


def _link(value: str) -> tuple[str, int, str]:
    flags, acked, stream = value.split(" ", 2)
    return flags, int(acked), stream


def _stream_infos(raw: object) -> list[dict[str, object]]:
    """The scripts' (path, flags, acked, tail) lists (JSON, or already decoded; cjson
    writes an empty list as {}) as the protocol's stream objects."""
    items = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(items, list):
        return []
    return [sl.stream_info(str(p), str(f), int(a), int(t)) for p, f, a, t in items]


def _json_list(raw: str) -> list[dict[str, Any]]:
    value = json.loads(raw) if raw else []
    return value if isinstance(value, list) else []


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _wake_id() -> str:
    return "w_" + secrets.token_hex(12)


def _iso_now() -> str:
    """As the protocol writes times (`…T00:00:00.000Z`)."""
    return now_iso().replace("+00:00", "Z")
