"""All settings of every service, read once from the environment and `.env`.

Names match `.env.example`. Build a `Settings()` at the edge (the ASGI entry or a
test) and pass it down; nothing reads the environment at import time.
"""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings shared by the gateway and the worker (each uses its part)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- identity and logging -------------------------------------------------
    node_id: str = Field(default_factory=socket.gethostname, description="NODE_ID")
    log_level: str = "INFO"

    # --- Redis -----------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = ""
    """Prepended to every Redis key and channel; tests use a random one."""
    redis_sentinels: str = ""
    """Comma-separated host:port of Redis Sentinels; when set, the clients find the
    primary of REDIS_SENTINEL_MASTER through them (REDIS_URL gives only password and db)."""
    redis_sentinel_master: str = "mymaster"
    """The name the Sentinels monitor the primary under (`sentinel monitor NAME ...`)."""
    redis_mode: Literal["standalone", "cluster"] = "standalone"
    """`cluster`: REDIS_URL names a node of a Redis Cluster (the client learns the others
    from it), and users are spread over REDIS_BUCKETS key buckets, each in one hash slot
    (keys.py, docs/redis-cluster.md). `standalone`: one Redis, or a primary found through
    REDIS_SENTINELS."""
    redis_cluster_nodes: str = ""
    """Cluster mode: comma-separated host:port of more nodes to learn the cluster from,
    besides REDIS_URL's (a node that starts while that one is down asks these)."""
    redis_buckets: int = Field(default=64, ge=1, le=256)
    """Key buckets in cluster mode (at most this many shards are put to use). Fixed for
    the life of the data: a message id carries its bucket."""

    # --- Kafka -----------------------------------------------------------------
    kafka_enabled: bool = True
    """False: no event is written, not even to the Redis outbox, and nothing drains it."""
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = "chat.events"
    kafka_idempotence: bool = False
    """Tansu's memory storage refuses InitProducerId, so this is off for local runs; a
    real Kafka (compose's) can turn it on."""
    kafka_buffer_max: int = Field(default=10_000, ge=1)
    """Events kept in Redis (the event outbox) while Kafka is down; past it new events are
    not written, but counted (`kafka_events_dropped`) and logged."""

    # --- auth and wire limits ----------------------------------------------------
    jwt_secret: str = ""
    """Required: services refuse to start without a random secret of 32+ characters."""
    auth_dev_mode: bool = False
    allowed_origins: str = "http://localhost:3000,http://127.0.0.1:3000"
    """Comma-separated; `*` allows any Origin. Requests without Origin are allowed."""
    max_frame_bytes: int = 65_536
    max_prompt_chars: int = 8_000
    chat_rate_per_minute: int = 30
    """Chats one connection may start per minute (token bucket)."""
    user_chats_per_minute: int = Field(default=60, gt=0)
    """Chats one user may start per minute, across all connections and nodes."""
    max_active_answers_per_user: int = Field(default=4, gt=0)
    """Answers one user may have in progress at once, across all sessions and nodes."""

    # --- sessions and history -----------------------------------------------------
    cache_l1_max_size: int = 10_000
    cache_l1_expire_write: float = 30.0
    """Seconds a session record stays in the in-process cache after it was loaded."""
    session_ttl: int = Field(
        default=2_592_000, gt=0, validation_alias=AliasChoices("session_ttl", "cache_l2_ttl")
    )
    """Seconds a session lives in Redis after its last activity (open, chat, answer): its
    owner record, history, message list and the user's session set expire together,
    the owner record never first. `CACHE_L2_TTL` is the deprecated old name."""
    history_max: int = 200
    history_context_messages: int = 20
    """Messages of history given to the model as context."""

    # --- streams -------------------------------------------------------------------
    stream_cache_ttl: int = 600
    stream_max_pending_chunks: int = 1_000
    stream_backpressure_delay: float = 0.5
    """Seconds a client whose queue is full gets to drain it before it is closed with 4008."""
    stream_recovery_timeout: float = 20.0
    """Seconds without progress after which an answer ends with `upstream_unavailable`."""
    message_meta_ttl: int = 86_400
    lease_ttl_ms: int = 2_000
    """A worker's lease on a message; renewed every third of it while generating."""
    stall_check_interval: float = 1.0
    """How often a gateway looks for followed streams nobody is generating."""
    relay_batch_ms: float = Field(default=5.0, ge=0, le=50)
    """After a relay read that brought chunks, the gateway waits this long before the
    next: under load each read (which names every followed stream) then brings many
    chunks. Adds at most this much to a chunk's way; 0 reads again at once."""

    # --- admission under overload (services/common/overload.py) -------------------------
    gateway_max_answers: int = Field(default=2_000, gt=0)
    """Answers one gateway drives at once; past it new chats get `busy` + `retry_after`."""
    gateway_max_starting: int = Field(default=100, gt=0)
    """Answers one gateway lets start at once (accepted, no chunk yet); past it new chats
    get `busy` + `retry_after`, so a burst is let in a slice at a time."""
    worker_max_answers: int = Field(default=1_000, gt=0)
    """Answers one worker generates at once; past it the worker refuses new ones (429),
    and a gateway refuses new chats while an answer it accepted waits for a worker (and
    for OVERLOAD_RETRY_AFTER after the last 429)."""
    overload_lag_ms: float = Field(default=250.0, gt=0)
    """A node whose event loop runs this late (smoothed over about a second) takes no new
    answer: its admitted answers keep their pace instead of all slowing down."""
    overload_retry_after: float = Field(default=1.0, gt=0, le=60)
    """Seconds a refused client is told to wait (spread over 0.5-1.5x)."""

    # --- durable streams over HTTP (services/durable, docs/durable-streams.md) -----------
    ds_max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0, le=64 * 1024 * 1024)
    """The largest PUT/POST body a durable stream takes (413 past it); nginx's
    client_max_body_size for /streams/ is rendered from it."""
    ds_max_streams_per_user: int = Field(default=1_000, gt=0)
    """Durable streams one user may hold at once (expired ones do not count)."""
    ds_max_bytes_per_user: int = Field(default=256 * 1024 * 1024, gt=0)
    """Bytes one user's durable streams may hold together (413 past it)."""
    ds_long_poll_timeout_s: float = Field(default=20.0, gt=0, le=120)
    """How long a long-poll read waits for data before answering 204."""
    ds_sse_max_s: float = Field(default=60.0, gt=0, le=3600)
    """An SSE read is closed after this long (the client reconnects from its offset), so
    CDNs can collapse readers and a node's readers rebalance."""
    ds_read_max_entries: int = Field(default=1_000, gt=0, le=100_000)
    """Entries (messages in JSON mode, appends otherwise) one read returns at most."""
    # Subscriptions (`{root}/__ds/subscriptions/`, services/durable/subscriptions.py).
    ds_max_subscriptions_per_user: int = Field(default=100, gt=0, le=10_000)
    """Subscriptions one user may hold at once (403 past it)."""
    ds_max_subscription_streams: int = Field(default=1_000, gt=0, le=100_000)
    """Explicit stream links one subscription may hold (`streams`); a pattern's links are
    bounded by the user's streams."""
    ds_public_url: str = ""
    """The public URL of `/streams/` (e.g. `https://chat.example.com/streams/`) for the
    links a webhook gets (callback_url, jwks_url); empty: the scheme and host each
    request came with (nginx passes them)."""
    ds_webhook_allow_localhost: bool = False
    """Webhooks to `http://localhost` / `127.0.0.x`, for development (also allowed when
    AUTH_DEV_MODE=true); any other local or private address is always refused. Refused at
    start-up on a bind that is not loopback."""
    ds_webhook_signing_key: str = ""
    """The Ed25519 key webhooks are signed with: its 32-byte seed, base64url. Empty: one
    derived from JWT_SECRET (the same on every node, kept across restarts, changed with
    JWT_SECRET). Its public half is at `{root}/__ds/jwks.json`."""
    ds_webhook_timeout_s: float = Field(default=5.0, gt=0, le=30)
    """The longest a webhook call may take (connect 2 s at most); past it the call failed
    and is retried (1 s doubling to 60 s, 20% jitter)."""
    ds_webhook_concurrency: int = Field(default=32, gt=0, le=1_000)
    """Webhook calls (and wake-stream writes) one gateway makes at once."""

    # --- gateway -> worker -------------------------------------------------------------
    worker_url: str = "http://127.0.0.1:8081"
    """The internal nginx listener in front of the `ai_worker` upstream."""
    shutdown_timeout: float = 10.0
    socket_send_buffer_bytes: int = 262_144
    """SO_SNDBUF of accepted sockets (0 = kernel autotuning, up to 4 MiB per socket on
    Linux): bounds the kernel memory a client that stops reading can pin."""

    # --- worker ----------------------------------------------------------------------------
    model_provider: Literal["simulated", "openai"] = "simulated"
    batch_flush_ms: float = 25.0
    batch_max_tokens: int = 16
    batch_max_flush_ms: float = Field(default=250.0, ge=0)
    """Adaptive batching's longest flush interval (see WORKER_MAX_CHUNKS_PER_S)."""
    worker_max_chunks_per_s: float = Field(default=1_500.0, ge=0)
    """A worker with many answers flushes each less often (up to BATCH_MAX_FLUSH_MS), so
    its chunks together stay near this rate: more tokens per chunk, the same tokens per
    second for every client. 0 turns adaptive batching off."""
    sim_tokens_per_second: float = 40.0
    sim_seed: int = 0
    sim_min_tokens: int = 60
    sim_max_tokens: int = 300
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str = ""
    openai_model: str = "gpt-4o-mini"
    openai_timeout: float = 60.0
    worker_drain_timeout: float = 10.0
    """On SIGTERM a worker finishes in-flight answers for this long, then hands them over."""
    finished_watch_s: float = Field(default=30.0, ge=0)
    """A worker keeps what it wrote of each finished answer this long, to write it again
    if Redis loses it (a restart, a failover); 0 turns this off."""
    finished_watch_max: int = Field(default=5_000, ge=0)
    """At most this many finished answers are kept so (the oldest go first)."""

    @property
    def key_buckets(self) -> int:
        """How many key buckets the keys are spread over: 1 unless in cluster mode."""
        return self.redis_buckets if self.redis_mode == "cluster" else 1

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(o.strip() for o in self.allowed_origins.split(",") if o.strip())
