"""Loss is never silent: the follower's `state_lost` ending, the hub's `lose`, and the
audit's verdict after Redis comes back."""

from __future__ import annotations

import pytest

from services.common.protocol import DoneFrame, ErrorCode, ErrorFrame, FinishReason, Usage
from services.common.streams import ChunkEntry, DoneEntry, StreamEntry
from services.ws_gateway.audit import Verdict, verdict
from services.ws_gateway.follower import Follower
from services.ws_gateway.hub import Hub

pytestmark = pytest.mark.unit


def chunk(seq: int, written_ms: int = 0) -> ChunkEntry:
    return ChunkEntry(seq=seq, delta=f"d{seq}", written_ms=written_ms)


class Recorder:
    def __init__(self) -> None:
        self.lost: list[str] = []
        self.entries: list[list[StreamEntry]] = []

    def push_new_message(self, message_id: str) -> None:
        raise AssertionError("not expected")

    def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None:
        self.entries.append(entries)

    def on_lost(self, message_id: str) -> None:
        self.lost.append(message_id)


def test_lost_ends_the_answer_at_the_clients_own_seq() -> None:
    follower = Follower("m1")
    follower.start()
    follower.on_page([chunk(1), chunk(2), chunk(3)])
    step = follower.on_lost()
    assert step.finished
    error, done = step.frames
    assert isinstance(error, ErrorFrame) and error.code == ErrorCode.STATE_LOST
    assert error.message_id == "m1"
    assert isinstance(done, DoneFrame)
    assert (done.last_seq, done.finish_reason) == (3, FinishReason.ERROR)
    # Nothing follows: no second ending, no more chunks.
    assert follower.on_lost().frames == []
    assert follower.on_live([chunk(4)]).frames == []
    assert follower.on_page([chunk(4)]).frames == []


def test_a_finished_follower_is_not_ended_again() -> None:
    follower = Follower("m1")
    follower.start()
    follower.on_page(
        [chunk(1), DoneEntry(last_seq=1, finish_reason=FinishReason.STOP, usage=Usage())]
    )
    assert follower.on_lost().frames == []


def test_hub_lose_tells_every_follower_once_and_forgets_the_stream() -> None:
    hub = Hub()
    a, b, other = Recorder(), Recorder(), Recorder()
    hub.follow("m1", "k1", a, 0, 1.0)
    hub.follow("m1", "k1", b, 0, 1.0)
    hub.follow("m2", "k2", other, 0, 1.0)
    hub.lose("m1")
    assert (a.lost, b.lost, other.lost) == (["m1"], ["m1"], [])
    assert hub.get("m1") is None and [s.message_id for s in hub.to_read()] == ["m2"]
    hub.lose("m1")  # already gone: nothing happens
    assert a.lost == ["m1"]


def test_hub_remembers_the_write_time_of_the_entry_at_its_position() -> None:
    hub = Hub()
    a = Recorder()
    hub.follow("m1", "k1", a, 0, 1.0)
    stream = hub.get("m1")
    assert stream is not None and stream.position_written_ms == 0
    hub.deliver(stream, "0-2", [chunk(1, 100), chunk(2, 250)], 2.0)
    assert (stream.position, stream.position_written_ms) == ("0-2", 250)


@pytest.mark.parametrize(
    ("meta_exists", "expected_ms", "found", "expired", "want"),
    [
        (False, 5, chunk(3, 5), False, Verdict.LOSE),  # the record is gone
        (True, 5, chunk(3, 5), False, Verdict.KEEP),  # the same entry is there
        (True, 5, chunk(3, 5), True, Verdict.KEEP),
        (True, 0, chunk(3, 9), False, Verdict.KEEP),  # write time unknown: any entry
        (True, 5, chunk(3, 6), False, Verdict.WAIT),  # rewritten differently: maybe...
        (True, 5, chunk(3, 6), True, Verdict.LOSE),  # ...but not in time
        (True, 5, None, False, Verdict.WAIT),  # behind: a worker may repair it
        (True, 5, None, True, Verdict.LOSE),
    ],
)
def test_audit_verdict(
    meta_exists: bool, expected_ms: int, found: ChunkEntry | None, expired: bool, want: Verdict
) -> None:
    assert (
        verdict(meta_exists=meta_exists, expected_ms=expected_ms, found=found, expired=expired)
        == want
    )
