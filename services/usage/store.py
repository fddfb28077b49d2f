"""Usage totals in Redis: each event counted once, in one script (record_usage.lua)."""

from __future__ import annotations

from redis.asyncio import Redis

from services.common.errors import storage_op
from services.usage.accounting import UsageDelta, UsageTotals
from services.usage.keys import UsageKeys
from services.usage.scripts import UsageScript


class UsageStore:
    """The usage service's Redis calls; every method raises StorageError when Redis fails."""

    def __init__(self, redis: Redis, keys: UsageKeys, *, seen_ttl_s: int) -> None:
        self._r = redis
        self._keys = keys
        self._seen_ttl_s = seen_ttl_s
        self._script = UsageScript.load("record_usage")
        self._record = redis.register_script(self._script.source)

    @storage_op
    async def record(self, delta: UsageDelta) -> bool:
        """Add `delta` to its user's totals and mark its event counted, in one step,
        unless the event was counted before (within the seen TTL). True if it was
        counted now, False for a duplicate (nothing changed)."""
        keys, args = self._script.call_args(
            keys={
                "totals": self._keys.totals(delta.user_id),
                "seen": self._keys.seen(delta.user_id, delta.event_id),
            },
            args={
                "prompt_tokens": delta.prompt_tokens,
                "completion_tokens": delta.completion_tokens,
                "seen_ttl_s": self._seen_ttl_s,
            },
        )
        return bool(await self._record(keys=keys, args=args))

    @storage_op
    async def totals(self, user_id: str) -> UsageTotals:
        """The user's totals (all zero for a user never counted)."""
        return UsageTotals.from_hash(await self._r.hgetall(self._keys.totals(user_id)))
