"""The usage service's settings, read once from USAGE_* variables (and `.env`)."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.events import Topic
from services.common.settings import Settings

#: How long an event id is remembered as counted: longer than any outage may last
#: (a redelivery after it would count twice).
SEEN_TTL_S = 7 * 24 * 3600


class UsageSettings(BaseSettings):
    """Settings of `python -m services.usage`; every name has the prefix USAGE_."""

    model_config = SettingsConfigDict(
        env_prefix="USAGE_", env_file=".env", extra="ignore", case_sensitive=False
    )

    node_id: str = Field(default_factory=socket.gethostname)
    """The Kafka client id and the `node_id` of the log lines."""
    log_level: str = "INFO"

    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    """May hold the password: a SecretStr, so it never shows in a repr or a log line."""
    redis_sentinels: str = ""
    """Comma-separated host:port of Redis Sentinels (as REDIS_SENTINELS)."""
    redis_sentinel_master: str = "mymaster"
    redis_mode: Literal["standalone", "cluster"] = "standalone"
    """`cluster`: USAGE_REDIS_URL names a node of a Redis Cluster (as REDIS_MODE)."""
    redis_key_prefix: str = ""
    """Prepended to every key of the service's (keys.py); tests use a random one."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port of the brokers (list them all)."""
    kafka_topic: str = Topic.CHAT_EVENTS.value
    group_id: str = "usage"
    """The consumer group: run more replicas to share the topic's partitions."""
    batch_max: int = Field(default=500, ge=1)
    """Records per poll; their offsets are committed once all of them are counted."""
    seen_ttl_s: int = Field(default=SEEN_TTL_S, gt=0)
    """How long a counted event id is remembered (a duplicate within it changes nothing)."""

    def redis_settings(self) -> Settings:
        """The shared settings `redis_from_settings` reads, from this service's."""
        return Settings(
            redis_url=self.redis_url.get_secret_value(),
            redis_sentinels=self.redis_sentinels,
            redis_sentinel_master=self.redis_sentinel_master,
            redis_mode=self.redis_mode,
        )
