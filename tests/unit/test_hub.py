"""Hub: who follows what, and handing the relay's entries to the right connections."""

from __future__ import annotations

import pytest

from services.common.keys import DONE_ENTRY_ID, chunk_entry_id
from services.common.protocol import FinishReason, Usage
from services.common.streams import ChunkEntry, DoneEntry, StreamEntry
from services.ws_gateway.hub import FollowedStream, Hub

pytestmark = pytest.mark.unit


class FakeMember:
    def __init__(self, name: str) -> None:
        self.name = name
        self.started: list[str] = []
        self.entries: list[tuple[str, list[StreamEntry]]] = []
        self.lost: list[str] = []

    def push_new_message(self, message_id: str) -> None:
        self.started.append(message_id)

    def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None:
        self.entries.append((message_id, entries))

    def on_lost(self, message_id: str) -> None:
        self.lost.append(message_id)

    def __repr__(self) -> str:
        return f"FakeMember({self.name})"


def chunk(seq: int) -> ChunkEntry:
    return ChunkEntry(seq=seq, delta=f"d{seq}", written_ms=0)


DONE = DoneEntry(last_seq=2, finish_reason=FinishReason.STOP, usage=Usage())


def one_follower(now: float = 1.0) -> tuple[Hub, FakeMember, FollowedStream]:
    """A hub where member a follows m1 (key k1) from the start, and that stream."""
    hub = Hub()
    a = FakeMember("a")
    hub.follow("m1", "k1", a, 0, now)
    (stream,) = hub.to_read()
    return hub, a, stream


# --- sessions ------------------------------------------------------------------------------


def test_message_started_reaches_the_members_of_that_session_only() -> None:
    hub = Hub()
    a1, a2, b1 = FakeMember("a1"), FakeMember("a2"), FakeMember("b1")
    hub.join("s-a", a1)
    hub.join("s-a", a2)
    hub.join("s-b", b1)
    assert hub.connections == 3
    hub.message_started("s-a", "m1")
    assert a1.started == ["m1"]
    assert a2.started == ["m1"]
    assert b1.started == []
    hub.message_started("s-b", "m2")
    assert b1.started == ["m2"]
    assert a1.started == ["m1"]


def test_a_member_that_left_hears_nothing_more() -> None:
    hub = Hub()
    a1, a2 = FakeMember("a1"), FakeMember("a2")
    hub.join("s", a1)
    hub.join("s", a2)
    hub.leave("s", a1)
    assert hub.connections == 1
    hub.message_started("s", "m1")
    assert a1.started == []
    assert a2.started == ["m1"]
    hub.leave("s", a2)
    assert hub.connections == 0
    hub.message_started("s", "m2")
    assert a2.started == ["m1"]


def test_joining_twice_counts_once_and_leaving_unknown_is_harmless() -> None:
    hub = Hub()
    a = FakeMember("a")
    hub.join("s", a)
    hub.join("s", a)
    assert hub.connections == 1
    hub.leave("other", a)
    hub.leave("s", FakeMember("stranger"))
    assert hub.connections == 1
    hub.message_started("nobody-here", "m1")
    assert a.started == []


def test_a_member_may_leave_while_being_told() -> None:
    hub = Hub()

    class Leaver(FakeMember):
        def push_new_message(self, message_id: str) -> None:
            super().push_new_message(message_id)
            hub.leave("s", self)

    leaver, stayer = Leaver("leaver"), FakeMember("stayer")
    hub.join("s", leaver)
    hub.join("s", stayer)
    hub.message_started("s", "m1")
    assert leaver.started == ["m1"]
    assert stayer.started == ["m1"]
    assert hub.connections == 1


# --- following streams -----------------------------------------------------------------------


def test_follow_is_true_only_for_a_stream_new_to_the_node() -> None:
    hub = Hub()
    a, b = FakeMember("a"), FakeMember("b")
    assert hub.follow("m1", "k1", a, after_seq=0, now=1.0) is True
    assert hub.follow("m1", "k1", b, after_seq=5, now=2.0) is False
    assert hub.follow("m1", "k1", a, after_seq=0, now=3.0) is False
    assert hub.follow("m2", "k2", a, after_seq=0, now=3.0) is True
    assert hub.streams == 2


def test_a_new_stream_is_read_from_after_seq_and_an_old_one_keeps_its_position() -> None:
    hub = Hub()
    a, b = FakeMember("a"), FakeMember("b")
    hub.follow("m1", "k1", a, after_seq=3, now=1.0)
    (stream,) = hub.to_read()
    assert (stream.message_id, stream.key, stream.position) == ("m1", "k1", chunk_entry_id(3))
    assert stream.followers == {a}
    hub.deliver(stream, chunk_entry_id(7), [chunk(4)], now=2.0)
    hub.follow("m1", "k1", b, after_seq=0, now=3.0)
    (same,) = hub.to_read()
    assert same is stream
    assert same.position == chunk_entry_id(7)
    assert same.followers == {a, b}


def test_unfollow_by_the_last_follower_forgets_the_stream() -> None:
    hub = Hub()
    a, b = FakeMember("a"), FakeMember("b")
    hub.follow("m1", "k1", a, 0, 1.0)
    hub.follow("m1", "k1", b, 0, 1.0)
    hub.unfollow("m1", a)
    assert hub.streams == 1
    hub.unfollow("m1", b)
    assert hub.streams == 0
    assert hub.to_read() == []
    hub.unfollow("m1", b)  # harmless
    assert hub.follow("m1", "k1", a, 0, 2.0) is True


def test_to_read_excludes_finished_streams() -> None:
    hub = Hub()
    a = FakeMember("a")
    hub.follow("m1", "k1", a, 0, 1.0)
    hub.follow("m2", "k2", a, 0, 1.0)
    first = next(s for s in hub.to_read() if s.message_id == "m1")
    assert not first.finished
    hub.deliver(first, DONE_ENTRY_ID, [chunk(1), chunk(2), DONE], now=2.0)
    assert first.finished
    assert [s.message_id for s in hub.to_read()] == ["m2"]
    assert hub.streams == 2  # still followed until its followers leave


def test_deliver_hands_entries_to_every_follower_in_order() -> None:
    hub = Hub()
    a, b, other = FakeMember("a"), FakeMember("b"), FakeMember("other")
    hub.follow("m1", "k1", a, 0, 1.0)
    hub.follow("m1", "k1", b, 0, 1.0)
    hub.follow("m2", "k2", other, 0, 1.0)
    stream = next(s for s in hub.to_read() if s.message_id == "m1")
    batch: list[StreamEntry] = [chunk(1), chunk(2)]
    hub.deliver(stream, chunk_entry_id(2), batch, now=5.0)
    assert a.entries == [("m1", batch)]
    assert b.entries == [("m1", batch)]
    assert other.entries == []
    assert stream.position == chunk_entry_id(2)
    assert stream.moved_at == 5.0


def test_deliver_of_nothing_moves_the_position_but_tells_nobody() -> None:
    hub, a, stream = one_follower()
    hub.deliver(stream, chunk_entry_id(4), [], now=3.0)  # e.g. only malformed entries
    assert a.entries == []
    assert stream.position == chunk_entry_id(4)
    assert stream.moved_at == 3.0


def test_deliver_is_ignored_for_a_stream_unfollowed_since_the_read_began() -> None:
    hub, a, stream = one_follower()  # the relay starts a read of the stream
    hub.unfollow("m1", a)
    hub.deliver(stream, chunk_entry_id(1), [chunk(1)], now=2.0)
    assert a.entries == []
    assert hub.streams == 0


def test_deliver_is_ignored_for_a_stream_followed_anew_since_the_read_began() -> None:
    hub, a, old = one_follower()  # the relay starts a read of the stream
    hub.unfollow("m1", a)
    assert hub.follow("m1", "k1", a, after_seq=5, now=2.0) is True  # a new record
    hub.deliver(old, chunk_entry_id(3), [chunk(1), chunk(2), chunk(3)], now=3.0)
    assert a.entries == []
    (new,) = hub.to_read()
    assert new is not old
    assert new.position == chunk_entry_id(5)
    assert new.moved_at == 2.0
    hub.deliver(new, chunk_entry_id(6), [chunk(6)], now=4.0)
    assert a.entries == [("m1", [chunk(6)])]


def test_a_follower_may_unfollow_while_entries_are_handed_out() -> None:
    hub = Hub()

    class Quitter(FakeMember):
        def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None:
            super().on_entries(message_id, entries)
            hub.unfollow(message_id, self)

    quitter, stayer = Quitter("q"), FakeMember("s")
    hub.follow("m1", "k1", quitter, 0, 1.0)
    hub.follow("m1", "k1", stayer, 0, 1.0)
    (stream,) = hub.to_read()
    hub.deliver(stream, chunk_entry_id(1), [chunk(1)], now=2.0)
    assert quitter.entries == [("m1", [chunk(1)])]
    assert stayer.entries == [("m1", [chunk(1)])]
    assert stream.followers == {stayer}


# --- stalls -------------------------------------------------------------------------------


def test_stalled_reports_a_quiet_stream_once_per_period() -> None:
    hub = Hub()
    a = FakeMember("a")
    hub.follow("m1", "k1", a, 0, now=0.0)
    assert hub.stalled(now=2.0, after=2.0) == []  # exactly `after`: not yet
    assert hub.stalled(now=2.5, after=2.0) == ["m1"]
    assert hub.stalled(now=2.6, after=2.0) == []  # its clock restarted
    assert hub.stalled(now=4.5, after=2.0) == []
    assert hub.stalled(now=4.6, after=2.0) == ["m1"]


def test_a_stream_with_entries_is_not_stalled() -> None:
    hub = Hub()
    a = FakeMember("a")
    hub.follow("m1", "k1", a, 0, now=0.0)
    hub.follow("m2", "k2", a, 0, now=0.0)
    moving = next(s for s in hub.to_read() if s.message_id == "m1")
    hub.deliver(moving, chunk_entry_id(1), [chunk(1)], now=1.5)
    assert hub.stalled(now=3.0, after=2.0) == ["m2"]


def test_a_finished_stream_is_never_stalled() -> None:
    hub, _, stream = one_follower(now=0.0)
    hub.deliver(stream, DONE_ENTRY_ID, [DONE], now=0.5)
    assert hub.stalled(now=100.0, after=2.0) == []


# --- starting answers ---------------------------------------------------------------------


def test_a_stream_followed_from_its_start_is_starting_until_its_first_entry() -> None:
    hub, a, stream = one_follower()
    assert hub.starting == 1
    hub.deliver(stream, chunk_entry_id(0), [], 2.0)  # a read that found nothing
    assert hub.starting == 1
    hub.deliver(stream, chunk_entry_id(1), [chunk(1)], 3.0)
    assert hub.starting == 0
    hub.follow("m1", "k1", FakeMember("b"), 0, 4.0)  # a second follower: not new
    assert hub.starting == 0


def test_a_resumed_stream_is_not_starting() -> None:
    hub = Hub()
    hub.follow("m1", "k1", FakeMember("a"), 5, 1.0)
    assert hub.starting == 0


def test_a_starting_stream_that_is_unfollowed_or_lost_stops_counting() -> None:
    hub = Hub()
    a, b = FakeMember("a"), FakeMember("b")
    hub.follow("m1", "k1", a, 0, 1.0)
    hub.follow("m2", "k2", b, 0, 1.0)
    assert hub.starting == 2
    hub.unfollow("m1", a)
    assert hub.starting == 1
    hub.lose("m2")
    assert hub.starting == 0
    assert b.lost == ["m2"]
