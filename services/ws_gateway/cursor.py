"""Seq bookkeeping for one (connection, message): every chunk exactly once, in order.

Pure. Entries may arrive from a catch-up range read and from the live reader, in any
overlap; the cursor emits each seq once and never skips one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.streams import ChunkEntry, DoneEntry, StreamEntry


class GapError(Exception):
    """An entry arrived past a missing seq; the caller must range-read the gap first."""


@dataclass
class StreamCursor:
    """Tracks the last seq handed to the client and whether the final record was."""

    last_seq: int = 0
    done: bool = False
    _pending: list[StreamEntry] = field(default_factory=list)

    def accept(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        """The entries to send, in order, dropping ones already sent.

        Raises GapError if an entry skips a seq (nothing is consumed then).
        """
        out: list[StreamEntry] = []
        last = self.last_seq
        done = self.done
        for entry in entries:
            if done:
                break
            if isinstance(entry, ChunkEntry):
                if entry.seq <= last:
                    continue
                if entry.seq != last + 1:
                    raise GapError(f"have {last}, got {entry.seq}")
                last = entry.seq
                out.append(entry)
            elif isinstance(entry, DoneEntry):
                if entry.last_seq > last:
                    raise GapError(f"done at {entry.last_seq}, have {last}")
                done = True
                out.append(entry)
        self.last_seq, self.done = last, done
        return out
