"""Who generates message X: one lease type for both sides.

A worker holds a message's *generator* lease while it writes chunks; a gateway holds
its *driver* lease while it keeps a `/v1/generate` call open for it. Both are the
same thing: a Redis string `SET NX PX` with a random token, renewed and released
only by the token that holds it (owner-checked Lua), so a holder that paused past
its TTL can never extend or drop a lease somebody else took meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis

from services.common.errors import StorageError, storage_op
from services.common.scripts import LEASE_RELEASE, LEASE_RENEW, CoalescedScript
from services.common.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)


class Lease:
    """A lease this process holds; `lost` turns true once a renewal finds it taken."""

    def __init__(self, leases: Leases, message_id: str, token: str) -> None:
        self._leases = leases
        self.message_id = message_id
        self.token = token
        self.lost = False
        self.released = False

    @property
    def key(self) -> str:
        return self._leases.key(self.message_id)

    async def renew(self) -> bool:
        """Extend the lease by its TTL (taking it back if it lapsed and nobody took it,
        while the answer goes on); False (and `lost`) if another token holds it or the
        answer is over."""
        if self.released or self.lost:
            return False
        ok = await self._leases.renew(self.message_id, self.token)
        if not ok:
            self.lost = True
        return ok

    async def release(self) -> None:
        """Drop the lease if this token still holds it; idempotent."""
        if self.released:
            return
        self.released = True
        await self._leases.release(self.message_id, self.token)

    def forget(self) -> None:
        """The lease ended in Redis without us (a script consumed it): stop renewing."""
        self.released = True

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[Lease]:
        """Renew every third of the TTL while the body runs, release when it ends.

        A renewal that fails on a storage error is retried at the next tick; one that
        finds the lease taken stops renewing and sets `lost`. The release on the way
        out survives the body being cancelled.
        """
        renewer = asyncio.create_task(self._renew_forever(), name=f"lease-{self.message_id}")
        try:
            yield self
        finally:
            await cancel_and_wait(renewer)
            with contextlib.suppress(StorageError):
                await asyncio.shield(self.release())

    async def _renew_forever(self) -> None:
        while not self.released and not self.lost:
            raise_if_cancelling()  # redis-py may end a cancelled call as if it ran
            await asyncio.sleep(self._leases.ttl_ms / 3000)
            try:
                await self.renew()
            except StorageError as exc:
                raise_if_cancelling()
                log.warning("lease renewal failed", extra={"detail": str(exc)})


class Leases:
    """The leases of one kind (generator or driver), keyed by message id."""

    def __init__(
        self,
        redis: Redis,
        key: Callable[[str], str],
        ttl_ms: int,
        meta: Callable[[str], str],
    ) -> None:
        """`key` names a message's lease, `meta` its record (a lapsed lease is taken
        back only while the record says the answer goes on)."""
        self._r = redis
        self.key = key
        self._meta = meta
        self.ttl_ms = ttl_ms
        # Every lease of the node renews each third of its TTL: hundreds a second under
        # load, sent together (one round trip per event-loop turn).
        self._renew = CoalescedScript(LEASE_RENEW, redis)
        self._release = LEASE_RELEASE.bind(redis)

    @storage_op
    async def acquire(self, message_id: str, holder: str) -> Lease | None:
        """Take the lease unless somebody holds it. The token is `holder:random`, so an
        operator can see which node holds it."""
        token = f"{holder}:{uuid.uuid4().hex[:12]}"
        if await self._r.set(self.key(message_id), token, nx=True, px=self.ttl_ms):
            return Lease(self, message_id, token)
        return None

    @storage_op
    async def holder(self, message_id: str) -> str | None:
        """The token holding the lease, or None."""
        value = await self._r.get(self.key(message_id))
        return str(value) if value is not None else None

    async def renew(self, message_id: str, token: str) -> bool:
        reply = await self._renew(
            keys={"lease": self.key(message_id), "meta": self._meta(message_id)},
            args={"token": token, "ttl_ms": self.ttl_ms},
        )
        return bool(reply)

    async def release(self, message_id: str, token: str) -> None:
        await self._release(keys={"lease": self.key(message_id)}, args={"token": token})
