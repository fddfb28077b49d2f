"""After Redis comes back, check that what clients were shown still exists.

Redis can come back with less than it had: a restart that lost the last second of
its append-only file, a failover to a replica that lagged, an empty instance. An
answer whose stored state went back behind what a client was shown must not go on
silently (the client would miss text, or see text that history never has). So when
the relay's connection failed and came back, every followed stream becomes suspect:
the entry at the reader's position must still be there, written at the same time
(a worker that repairs the gap from memory re-writes it identically). A suspect that
is not confirmed within the grace period, or whose message record is gone, is lost:
the hub ends it for every follower with `state_lost`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from services.common.errors import StorageError
from services.common.keys import seq_of_entry_id
from services.common.message_store import MessageStore
from services.common.streams import ChunkEntry, StreamEntry
from services.common.tasks import raise_if_cancelling
from services.ws_gateway.hub import Hub

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.25


class Verdict(StrEnum):
    KEEP = "keep"
    """The state clients were shown is still there."""
    WAIT = "wait"
    """Not (yet) there: a worker may still repair it."""
    LOSE = "lose"
    """Gone for good: end the answer with `state_lost`."""


def verdict(
    *, meta_exists: bool, expected_ms: int, found: StreamEntry | None, expired: bool
) -> Verdict:
    """Decide one suspect stream. `found` is the entry now at the checked seq;
    `expected_ms` 0 means its write time is unknown (any entry there will do)."""
    if not meta_exists:
        return Verdict.LOSE
    if isinstance(found, ChunkEntry) and expected_ms in (0, found.written_ms):
        return Verdict.KEEP
    return Verdict.LOSE if expired else Verdict.WAIT


@dataclass
class Suspect:
    seq: int
    written_ms: int
    deadline: float


@dataclass(eq=False)
class StateAudit:
    hub: Hub
    store: MessageStore
    grace_s: float
    """How long a suspect may wait for a worker to repair it."""
    clock: Callable[[], float] = time.monotonic
    _suspects: dict[str, Suspect] = field(default_factory=dict, init=False)
    _woken: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @property
    def suspects(self) -> int:
        return len(self._suspects)

    def storage_reconnected(self) -> None:
        """Redis failed and answers again: every followed stream with entries shown is
        suspect until confirmed."""
        deadline = self.clock() + self.grace_s
        for stream in self.hub.to_read():
            if stream.position == "0-0":
                continue  # nothing shown yet; a missing record is caught by the stall check
            seq = seq_of_entry_id(stream.position)
            self._suspects[stream.message_id] = Suspect(seq, stream.position_written_ms, deadline)
        if self._suspects:
            log.warning(
                "storage came back; checking followed answers",
                extra={"detail": len(self._suspects)},
            )
            self._woken.set()

    async def run(self) -> None:
        """Check suspects until none is left; then wait for the next reconnect."""
        while True:
            await self._woken.wait()
            self._woken.clear()
            while self._suspects:
                await self.check_once()
                if self._suspects:
                    await asyncio.sleep(CHECK_EVERY_S)

    async def check_once(self) -> None:
        now = self.clock()
        for message_id, suspect in list(self._suspects.items()):
            if self.hub.get(message_id) is None:
                del self._suspects[message_id]  # nobody follows it any more
                continue
            try:
                meta = await self.store.meta(message_id)
                page = await self.store.read_entries(message_id, suspect.seq - 1, count=1)
            except (StorageError, ValueError) as exc:
                raise_if_cancelling()
                log.warning("audit read failed", extra={"detail": str(exc)})
                continue
            found = page[0] if page and _seq(page[0]) == suspect.seq else None
            decision = verdict(
                meta_exists=meta is not None,
                expected_ms=suspect.written_ms,
                found=found,
                expired=now >= suspect.deadline,
            )
            if decision == Verdict.WAIT:
                continue
            del self._suspects[message_id]
            if decision == Verdict.LOSE:
                log.error("answer state lost in storage", extra={"message_id": message_id})
                self.hub.lose(message_id)


def _seq(entry: StreamEntry) -> int | None:
    return entry.seq if isinstance(entry, ChunkEntry) else None
