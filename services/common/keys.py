"""Every Redis key and channel name, built in one place with a configurable prefix.

Call sites never format key strings themselves.

Every key expires. Each builder's docstring says how long its key lives and what
refreshes it; nothing grows forever. A session's keys (its record, history, message
list, dedupe and busy keys) and its owner's session set are written only by scripts
that set the record's TTL in the same step to `SESSION_TTL`, at least as long as any
of the others: the owner record never expires before the data it guards, so a
session id that becomes free again has nothing left to read. A message's keys are
named by its random id and expire on their own (`MESSAGE_META_TTL`,
`STREAM_CACHE_TTL`, leases in milliseconds).

`NO_TTL` is the documented list of keys allowed to live without one;
tests/integration/test_key_ttls.py runs a workload and fails on any other key
without a TTL.

**Buckets (Redis Cluster).** Every key starts with a hash tag naming its *bucket*,
`{b<n>}` after the prefix, so that Redis Cluster puts it in the bucket's slot. A user's
keys, their sessions' keys, their answers' keys and the event outbox their scripts
write all share one bucket (`bucket_of_user`), so every Lua script touches one slot. An
answer's bucket is written into its message id (`new_message_id`), so a node that has
only the id (a worker, a resume) finds its keys. With one bucket (standalone Redis and
Sentinel: `Keys(buckets=1)`) keys have no tag and keep their names; REDIS_MODE=cluster
spreads users over REDIS_BUCKETS buckets (docs/redis-cluster.md).
"""

from __future__ import annotations

import hashlib
import secrets
import zlib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.common.settings import Settings

#: The stream entry id of the final record. Chunks use `0-<seq>`, so `1-0` sorts after
#: every chunk, can be written only once, and blocks any chunk written after it.
DONE_ENTRY_ID = "1-0"


def chunk_entry_id(seq: int) -> str:
    """Stream entry id of chunk `seq`."""
    return f"0-{seq}"


#: Glob patterns (after the prefix) of the keys allowed to have no TTL. Keep it short,
#: and say here why each one is bounded.
NO_TTL: tuple[str, ...] = (
    # A bucket's event outbox: a TTL would drop events that Kafka has not taken yet,
    # which is what the outbox is for. Bounded by KAFKA_BUFFER_MAX (the scripts add
    # nothing past it), and the drainers delete every entry Kafka acknowledged.
    "events:outbox",
    "{b*}:events:outbox",
    # One integer per bucket: how many events its full outbox refused (exported, summed,
    # as kafka_events_dropped). A TTL would reset the count.
    "events:outbox:dropped",
    "{b*}:events:outbox:dropped",
    # Durable streams (docs/durable-streams.md) live until deleted or until their own
    # Stream-TTL / Stream-Expires-At (then they get a key TTL); one without either is
    # kept, as the protocol asks. Bounded per user by DS_MAX_STREAMS_PER_USER and
    # DS_MAX_BYTES_PER_USER, checked by the create and append scripts.
    "ds:*",
    "{b*}:ds:*",
)

#: The most buckets a deployment may have: a message id carries its bucket in two hex
#: digits.
MAX_BUCKETS = 256


def may_lack_ttl(key: str, prefix: str = "") -> bool:
    """Whether `key` (with `prefix`) is on the `NO_TTL` list."""
    return key.startswith(prefix) and any(
        fnmatchcase(key.removeprefix(prefix), pattern) for pattern in NO_TTL
    )


def seq_of_entry_id(entry_id: str) -> int:
    """The seq of a chunk entry id; raises ValueError for anything else."""
    ms, _, seq = entry_id.partition("-")
    if ms != "0" or not seq.isascii() or not seq.isdigit():
        raise ValueError(f"not a chunk entry id: {entry_id!r}")
    return int(seq)


def new_message_id(bucket: int = 0) -> str:
    """A fresh message id, `m_` + the bucket (two hex digits) + 30 random hex digits."""
    if not 0 <= bucket < MAX_BUCKETS:
        raise ValueError(f"bucket must be in 0..{MAX_BUCKETS - 1}, not {bucket}")
    return f"m_{bucket:02x}{secrets.token_hex(15)}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builders; `prefix` isolates deployments and tests sharing one Redis, and
    `buckets` is how many buckets users are spread over (1 unless in Redis Cluster)."""

    prefix: str = ""
    buckets: int = 1

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("REDIS_KEY_PREFIX must not contain { or } (hash tags)")
        if not 1 <= self.buckets <= MAX_BUCKETS:
            raise ValueError(f"REDIS_BUCKETS must be in 1..{MAX_BUCKETS}, not {self.buckets}")

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        """REDIS_KEY_PREFIX, and REDIS_BUCKETS in cluster mode (else one bucket)."""
        return cls(settings.redis_key_prefix, settings.key_buckets)

    # --- buckets --------------------------------------------------------------------
    def bucket_of_user(self, user_id: str) -> int:
        """The bucket of every key of the user's (crc32, stable across processes)."""
        return zlib.crc32(user_id.encode()) % self.buckets

    def bucket_of_scope(self, scope: str) -> int:
        """The bucket of a session (its `session_scope` name, `user/session`)."""
        return self.bucket_of_user(scope.rpartition("/")[0])

    def bucket_of_message(self, message_id: str) -> int:
        """The bucket a message id was made in (bucket 0 for ids without one)."""
        try:
            return int(message_id[2:4], 16) % self.buckets
        except ValueError:
            return 0

    def all_buckets(self) -> range:
        return range(self.buckets)

    def _in(self, bucket: int) -> str:
        """The prefix and hash tag of a bucket's keys (no tag with one bucket: one Redis
        holds every key, under the names it always had)."""
        return f"{self.prefix}{{b{bucket}}}:" if self.buckets > 1 else self.prefix

    def _user(self, user_id: str) -> str:
        return self._in(self.bucket_of_user(user_id))

    def _scope(self, scope: str) -> str:
        return self._in(self.bucket_of_scope(scope))

    def _msg(self, message_id: str) -> str:
        return self._in(self.bucket_of_message(message_id))

    # --- sessions (user_sessions is the seed deployment's registry name) -------------
    # The seed's global `sessions:active` hash (one field per session ever, read by
    # nothing) is gone: the owner is in each session's own record.
    def user_chats(self, user_id: str) -> str:
        """String: chats the user started in the current one-minute window (across all
        connections and nodes); expires with the window."""
        return f"{self._user(user_id)}user:{user_id}:chats"

    def user_answers(self, user_id: str) -> str:
        """Sorted set: the user's answers in progress, scored by when they stop counting
        (removed when they finish); expires with its last member."""
        return f"{self._user(user_id)}user:{user_id}:answers"

    def user_sessions(self, user_id: str) -> str:
        """Set: the session ids of a user. SESSION_TTL, refreshed whenever one of them is
        opened or gets a chat (it may list sessions that expired since)."""
        return f"{self._user(user_id)}sessions:user:{user_id}"

    def session(self, session_id: str) -> str:
        """Hash: the session record (owner, created_at, last_seen, current_message).
        SESSION_TTL, refreshed on open, accept and finish, with the keys below."""
        return f"{self._scope(session_id)}session:{session_id}"

    def session_history(self, session_id: str) -> str:
        """List of JSON history items, capped at HISTORY_MAX. SESSION_TTL, set with the
        record's."""
        return f"{self._scope(session_id)}session:{session_id}:history"

    def session_messages(self, session_id: str) -> str:
        """List of the session's assistant message ids, newest last, capped. SESSION_TTL,
        set with the record's."""
        return f"{self._scope(session_id)}session:{session_id}:messages"

    def session_active(self, session_id: str) -> str:
        """String: the message id of the answer in progress (one at a time). Its own
        short TTL (ACTIVE_TTL_MS), refreshed by each chunk."""
        return f"{self._scope(session_id)}session:{session_id}:active"

    def client_msg(self, session_id: str, client_msg_id: str) -> str:
        """String: the message id a client_msg_id was given (retries get the same).
        Its own TTL (CLIENT_MSG_TTL_S, at most SESSION_TTL), never refreshed."""
        return f"{self._scope(session_id)}session:{session_id}:cmsg:{client_msg_id}"

    def session_channel(self, session_id: str) -> str:
        """Pub/sub channel: lifecycle notices for every node holding the session."""
        return f"{self.prefix}chan:session:{session_id}"

    def session_invalidate_channel(self) -> str:
        """Pub/sub channel: session ids whose record changed (L1 invalidation)."""
        return f"{self.prefix}chan:sessions:invalidate"

    # --- messages ---------------------------------------------------------------------
    def message_meta(self, message_id: str) -> str:
        """Hash: session_id, user_id, prompt, status, last_seq, finish_reason, usage.
        MESSAGE_META_TTL from the accept; never revived once expired."""
        return f"{self._msg(message_id)}msg:{message_id}:meta"

    def message_stream(self, message_id: str) -> str:
        """Stream: the chunk cache, entry ids `0-<seq>`, then the final `1-0`.
        STREAM_CACHE_TTL, refreshed by every write."""
        return f"{self._msg(message_id)}msg:{message_id}:stream"

    def message_lease(self, message_id: str) -> str:
        """String: the token of the worker generating the message (SET NX PX,
        LEASE_TTL_MS, renewed while generating)."""
        return f"{self._msg(message_id)}msg:{message_id}:lease"

    def message_driver(self, message_id: str) -> str:
        """String: the gateway node that drives the message's generation calls (SET NX
        PX, renewed while driving)."""
        return f"{self._msg(message_id)}msg:{message_id}:driver"

    def message_cancel(self, message_id: str) -> str:
        """String: present when the message was cancelled. MESSAGE_META_TTL."""
        return f"{self._msg(message_id)}msg:{message_id}:cancel"

    # --- durable streams (docs/durable-streams.md) -------------------------------------
    def ds_stream_id(self, user_id: str, path: str) -> str:
        """The id of the user's durable stream at `path` (each user has a namespace of
        paths): `d_` + the user's bucket (two hex digits) + 30 hex digits of a hash, so
        `bucket_of_message` finds its bucket and the node relay can follow it."""
        digest = hashlib.sha256(f"{user_id}\0{path}".encode()).hexdigest()[:30]
        return f"d_{self.bucket_of_user(user_id):02x}{digest}"

    def ds_prefix(self, stream_id: str) -> str:
        """What precedes `ds:<id>:<part>` in the stream's bucket: the scripts build a
        fork's source keys from it (`lua/lib/ds.lua`, `ds_key`; same bucket, one slot)."""
        return self._msg(stream_id)

    def ds_meta(self, stream_id: str) -> str:
        """Hash: path, owner, content type, tail position, closed, TTL / expiry, fork
        source and position, fork count, soft-deleted, Stream-Seq, the closing producer
        tuple. Its TTL follows the stream's own (none without one)."""
        return f"{self._msg(stream_id)}ds:{stream_id}:meta"

    def ds_data(self, stream_id: str) -> str:
        """Stream: the durable stream's data, entry id `0-<end position>` (bytes, or
        messages in JSON mode), then `1-0` once closed (as a message stream)."""
        return f"{self._msg(stream_id)}ds:{stream_id}:data"

    def ds_producers(self, stream_id: str) -> str:
        """Hash: idempotent producer id -> "epoch seq" (Producer-Id/-Epoch/-Seq)."""
        return f"{self._msg(stream_id)}ds:{stream_id}:producers"

    def ds_user_streams(self, user_id: str) -> str:
        """Sorted set: the user's live durable stream ids, scored by expiry ms (+inf for
        none): the stream quota counts it, pruning what expired."""
        return f"{self._user(user_id)}ds:user:{user_id}:streams"

    def ds_user_bytes(self, user_id: str) -> str:
        """Hash: stream id -> bytes stored, and `_total`: the byte quota's count."""
        return f"{self._user(user_id)}ds:user:{user_id}:bytes"

    # Subscriptions (PROTOCOL.md sections 6-7, services/durable/subscriptions.py): a
    # user's subscriptions live in the user's bucket beside their streams, so one script
    # sees a subscription, its links and the linked streams' records. Like streams they
    # live until deleted (`ds:*` in NO_TTL): DS_MAX_SUBSCRIPTIONS_PER_USER bounds them, and
    # a subscription's links are bounded by the user's streams (a pattern's link to a
    # stream that is gone is dropped) plus DS_MAX_SUBSCRIPTION_STREAMS explicit ones.
    def ds_sub_id(self, user_id: str, root: str, sub_id: str) -> str:
        """The id of the user's subscription `sub_id` at `{root}/__ds/subscriptions/`:
        `s_` + the user's bucket (two hex digits) + 30 hex digits of a hash, so
        `ds_prefix` finds its bucket."""
        digest = hashlib.sha256(f"{user_id}\0{root}\0{sub_id}".encode()).hexdigest()[:30]
        return f"s_{self.bucket_of_user(user_id):02x}{digest}"

    def ds_sub(self, sub_key: str) -> str:
        """Hash: a subscription's configuration (id, root, owner, type, pattern, webhook
        URL or wake stream, lease, description, config hash, links' base URL) and its
        delivery state (generation, wake id, holder, lease end, delivery schedule). The
        scripts build it from `ds_prefix` as `lua/lib/ds_sub.lua`'s `sub_key` does."""
        return f"{self._msg(sub_key)}ds:sub:{sub_key}"

    def ds_sub_links(self, sub_key: str) -> str:
        """Hash: a subscription's linked streams, root-relative path -> "<flags>
        <acked position> <stream id>" (flags `e` explicit, `g` by the pattern)."""
        return f"{self._msg(sub_key)}ds:sub:{sub_key}:links"

    def ds_user_subs(self, user_id: str) -> str:
        """Hash: the user's subscription ids -> JSON {root, pattern, wake stream}: what an
        append reads to find the subscriptions that may link the stream."""
        return f"{self._user(user_id)}ds:user:{user_id}:subs"

    def ds_subs_due(self, bucket: int = 0) -> str:
        """Sorted set: a bucket's subscription ids, scored by when (ms) a node must look
        at one again: a lease that ends, a delivery (or its retry) that is due, else a
        periodic re-check for pending work. One member per subscription."""
        return f"{self._in(bucket)}ds:subs:due"

    # --- events -----------------------------------------------------------------------
    def events_outbox(self, bucket: int = 0) -> str:
        """Stream: a bucket's chat events not yet in Kafka, one entry per event (field
        `event`, the JSON). The scripts that change state add their event in the same
        step, to the outbox of the bucket they write in, at most KAFKA_BUFFER_MAX entries
        each; every node drains every bucket's (consumer group `kafka`) and deletes what
        Kafka took. No TTL (see NO_TTL)."""
        return f"{self._in(bucket)}events:outbox"

    def events_outbox_dropped(self, bucket: int = 0) -> str:
        """String: the count of events not added because the bucket's outbox was full.
        No TTL."""
        return f"{self._in(bucket)}events:outbox:dropped"

    # --- nodes ------------------------------------------------------------------------
    def node_wake(self, node_id: str, bucket: int = 0) -> str:
        """Stream a gateway's relay reader of the bucket also blocks on, to learn of new
        keys at once. At most ~16 entries; an hour's TTL, refreshed by every wake-up
        (relay.WAKE_TTL_S), so the stream of a node that is gone for good goes too."""
        return f"{self._in(bucket)}node:{node_id}:wake"
