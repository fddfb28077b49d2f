"""The node's registry of who follows what: connections by session, followers by message.

One record per followed message stream (`FollowedStream`: its key, the relay's read
position, its followers, when it last moved), so nothing is kept in parallel dicts.
The relay reads the streams the hub lists and hands what it reads back to the hub,
which hands it to the followers; the notifier tells the hub of answers that start
in a session on another node. Pure bookkeeping: no I/O, the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from services.common.keys import DONE_ENTRY_ID, chunk_entry_id
from services.common.streams import ChunkEntry, StreamEntry


class Member(Protocol):
    """A connection as the hub sees it."""

    def push_new_message(self, message_id: str) -> None:
        """An answer started in the connection's session: follow it from seq 1."""

    def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None:
        """New entries of a stream the connection follows, in order."""

    def on_lost(self, message_id: str) -> None:
        """Storage lost the stream's state: end the answer with `state_lost`."""


@dataclass(eq=False)
class FollowedStream:
    """One message stream this node reads for at least one connection."""

    message_id: str
    key: str
    position: str
    """The last entry id the relay read (XREAD continues after it)."""
    moved_at: float
    """When the stream last had an entry (or was first followed)."""
    position_written_ms: int = 0
    """The write time of the entry at `position` (0 if none): after Redis comes back,
    the entry there must still be the same one, or clients saw state that is gone."""
    followers: set[Member] = field(default_factory=set)

    @property
    def finished(self) -> bool:
        return self.position == DONE_ENTRY_ID


class Hub:
    def __init__(self) -> None:
        self._sessions: dict[str, set[Member]] = {}
        self._streams: dict[str, FollowedStream] = {}
        self._starting: set[str] = set()
        """Streams followed from their start that have had no entry yet."""

    # --- sessions -----------------------------------------------------------------------

    def join(self, session_id: str, member: Member) -> None:
        self._sessions.setdefault(session_id, set()).add(member)

    def leave(self, session_id: str, member: Member) -> None:
        members = self._sessions.get(session_id)
        if members is not None:
            members.discard(member)
            if not members:
                del self._sessions[session_id]

    def message_started(self, session_id: str, message_id: str) -> None:
        for member in list(self._sessions.get(session_id, ())):
            member.push_new_message(message_id)

    @property
    def connections(self) -> int:
        return sum(len(members) for members in self._sessions.values())

    # --- streams ----------------------------------------------------------------------------

    def follow(self, message_id: str, key: str, member: Member, after_seq: int, now: float) -> bool:
        """Add a follower; True when the stream is new to this node (the reader must wake).

        A new stream is read from after `after_seq`; a stream already read continues
        from the reader's position (the follower catches up from the cache).
        """
        stream = self._streams.get(message_id)
        created = stream is None
        if stream is None:
            stream = FollowedStream(message_id, key, chunk_entry_id(after_seq), now)
            self._streams[message_id] = stream
            if after_seq == 0:
                self._starting.add(message_id)
        stream.followers.add(member)
        return created

    def unfollow(self, message_id: str, member: Member) -> None:
        stream = self._streams.get(message_id)
        if stream is None:
            return
        stream.followers.discard(member)
        if not stream.followers:
            del self._streams[message_id]
            self._starting.discard(message_id)

    def to_read(self) -> list[FollowedStream]:
        """The streams the reader should block on (every one not finished)."""
        return [s for s in self._streams.values() if not s.finished]

    def deliver(
        self, stream: FollowedStream, position: str, entries: list[StreamEntry], now: float
    ) -> None:
        """The reader read up to `position`; hand the entries to the stream's followers.

        A stream that was unfollowed (or followed anew) since the read began is skipped.
        """
        if self._streams.get(stream.message_id) is not stream:
            return
        stream.position = position
        stream.moved_at = now
        if not entries:
            return
        self._starting.discard(stream.message_id)
        last = entries[-1]
        stream.position_written_ms = last.written_ms if isinstance(last, ChunkEntry) else 0
        for member in list(stream.followers):
            member.on_entries(stream.message_id, entries)

    def lose(self, message_id: str) -> None:
        """The stream's stored state is gone or went back: end it for every follower."""
        stream = self._streams.pop(message_id, None)
        self._starting.discard(message_id)
        if stream is None:
            return
        for member in list(stream.followers):
            member.on_lost(message_id)

    def get(self, message_id: str) -> FollowedStream | None:
        return self._streams.get(message_id)

    def stalled(self, now: float, after: float) -> list[str]:
        """Unfinished streams with no entry for `after` seconds; each is reported once per
        `after` (its clock restarts), so a check that finds nothing wrong is not repeated
        at once."""
        found = []
        for stream in self._streams.values():
            if not stream.finished and now - stream.moved_at > after:
                stream.moved_at = now
                found.append(stream.message_id)
        return found

    @property
    def streams(self) -> int:
        return len(self._streams)

    @property
    def starting(self) -> int:
        """Streams followed from seq 1 with no entry yet: answers still starting (their
        start is the costly part of an answer: every store and the worker call)."""
        return len(self._starting)
