"""Following one answer for one connection, sans I/O: entries in, frames out.

A follower starts by catching up: the caller range-reads the cache after the seq
`Step.read_after` names and feeds each page to `on_page`, until a page comes back
empty; then the follower is live and takes the relay's entries in `on_live`. Live
entries that arrive while catching up are dropped (the pages cover them). A live
batch that starts past the cursor (the reader was ahead of this client) turns the
follower back to catching up from its cursor. A live batch dropped during a page
read may hold entries that read did not see (even the final record, after which the
relay reads nothing more), so an empty page after such a drop reads once more
instead of going live. `StreamCursor` guarantees each seq is
emitted once, in order. The final record emits `done` (after an `error` frame when
the answer ended because no worker could finish it) and ends the follow.

`SeenMessages` remembers which answers a connection already followed, so a late
"started" notice does not replay one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from services.common.protocol import (
    ChunkFrame,
    DoneFrame,
    ErrorCode,
    ErrorFrame,
    FinishReason,
    Usage,
)
from services.common.streams import ChunkEntry, DoneEntry, StreamEntry
from services.ws_gateway.cursor import GapError, StreamCursor

NO_WORKER_MESSAGE = "no AI worker could finish the answer"
STATE_LOST_MESSAGE = (
    "the server lost this answer's stored state; it ends here and the text shown may be "
    "missing from history"
)


@dataclass(frozen=True, slots=True)
class Step:
    """What the shell must do after feeding the follower."""

    frames: list[BaseModel] = field(default_factory=list)
    """Frames to queue for the client, in order."""
    chunks: list[ChunkEntry] = field(default_factory=list)
    """The chunk entries behind those frames (for metrics)."""
    read_after: int | None = None
    """Catching up: range-read the cache after this seq and call `on_page`."""
    finished: bool = False
    """The final record was emitted: stop following."""


class Follower:
    def __init__(self, message_id: str, after_seq: int = 0) -> None:
        self.message_id = message_id
        self.cursor = StreamCursor(last_seq=after_seq)
        self.live = False
        self._missed = False
        """A live batch past the cursor was dropped since the last read was asked for:
        an empty page may predate it, so read once more before going live."""

    def start(self) -> Step:
        """Begin (or restart) catching up from the cursor."""
        self.live = False
        return self._read()

    def _read(self) -> Step:
        self._missed = False
        return Step(read_after=self.cursor.last_seq)

    def on_page(self, entries: list[StreamEntry]) -> Step:
        """A page of the cache after `read_after`. An empty page means caught up: the
        follower goes live in the same step, with no await in between.

        Raises GapError if the cache itself skips a seq (it never should)."""
        if self.live or self.cursor.done:
            return Step()
        if not entries:
            if self._missed:
                return self._read()
            self.live = True
            return Step()
        step = self._emit(entries)
        if step.finished:
            return step
        return Step(step.frames, step.chunks, read_after=self._read().read_after)

    def on_live(self, entries: list[StreamEntry]) -> Step:
        """Entries the relay read; dropped unless live (a dropped batch that reaches past
        the cursor makes the catch-up read again before it goes live)."""
        if self.cursor.done:
            return Step()
        if not self.live:
            if _reaches_past(entries, self.cursor.last_seq):
                self._missed = True
            return Step()
        try:
            return self._emit(entries)
        except GapError:
            return self.start()

    def on_lost(self) -> Step:
        """Storage lost the answer (or part of what this client was shown): end it here
        with `state_lost` and a `done` at the client's own last seq."""
        if self.cursor.done:
            return Step()
        self.cursor.done = True
        mid = self.message_id
        return Step(
            frames=[
                ErrorFrame(code=ErrorCode.STATE_LOST, message=STATE_LOST_MESSAGE, message_id=mid),
                DoneFrame(
                    message_id=mid,
                    last_seq=self.cursor.last_seq,
                    finish_reason=FinishReason.ERROR,
                    usage=Usage(),
                ),
            ],
            finished=True,
        )

    def _emit(self, entries: list[StreamEntry]) -> Step:
        frames: list[BaseModel] = []
        chunks: list[ChunkEntry] = []
        finished = False
        mid = self.message_id
        for entry in self.cursor.accept(entries):
            if isinstance(entry, ChunkEntry):
                # Built without validation: the entry was decoded and checked already.
                frames.append(
                    ChunkFrame.model_construct(message_id=mid, seq=entry.seq, delta=entry.delta)
                )
                chunks.append(entry)
            elif isinstance(entry, DoneEntry):
                if entry.error is not None:
                    message = (
                        STATE_LOST_MESSAGE
                        if entry.error == ErrorCode.STATE_LOST
                        else NO_WORKER_MESSAGE
                    )
                    frames.append(ErrorFrame(code=entry.error, message=message, message_id=mid))
                frames.append(
                    DoneFrame(
                        message_id=mid,
                        last_seq=entry.last_seq,
                        finish_reason=entry.finish_reason,
                        usage=entry.usage,
                    )
                )
                finished = True
        return Step(frames, chunks, finished=finished)


def _reaches_past(entries: list[StreamEntry], last_seq: int) -> bool:
    if not entries:
        return False
    last = entries[-1]
    return isinstance(last, DoneEntry) or last.seq > last_seq


class SeenMessages:
    """The answers a connection followed, most recent `limit` of them."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # A plain dict keeps insertion order, and is smaller than an OrderedDict.
        self._ids: dict[str, None] = {}

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        self._ids.pop(message_id, None)  # re-added last: the most recent
        self._ids[message_id] = None
        while len(self._ids) > self._limit:
            del self._ids[next(iter(self._ids))]
