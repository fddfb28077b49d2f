"""Follower: catch-up pages, then live entries; every chunk once, in order, then done."""

from __future__ import annotations

import itertools
import random

import pytest
from pydantic import BaseModel

from services.common.protocol import ChunkFrame, DoneFrame, ErrorCode, ErrorFrame
from services.common.streams import StreamEntry
from services.ws_gateway.cursor import GapError
from services.ws_gateway.follower import NO_WORKER_MESSAGE, Follower, SeenMessages, Step
from tests.stream_entries import chunk, chunks, done

pytestmark = pytest.mark.unit

MID = "m_1"


def kinds(frames: list[BaseModel]) -> list[int | str]:
    """Chunk frames as their seq, others by type."""
    return [f.seq if isinstance(f, ChunkFrame) else f.type for f in frames]  # type: ignore[attr-defined]


def live_follower(after_seq: int = 0) -> Follower:
    """A follower that caught up (empty first page) and is live."""
    follower = Follower(MID, after_seq=after_seq)
    assert follower.start() == Step(read_after=after_seq)
    assert follower.on_page([]) == Step()
    assert follower.live
    return follower


# --- catching up ---------------------------------------------------------------------


def test_start_asks_for_a_read_from_the_cursor() -> None:
    follower = Follower(MID)
    step = follower.start()
    assert step == Step(read_after=0)
    assert not follower.live
    assert not step.finished


def test_catch_up_pages_then_live_on_the_empty_page() -> None:
    follower = Follower(MID)
    follower.start()
    step = follower.on_page(chunks(1, 3))
    assert kinds(step.frames) == [1, 2, 3]
    assert [c.seq for c in step.chunks] == [1, 2, 3]
    assert step.read_after == 3  # read the next page after the last seq sent
    assert not follower.live

    step = follower.on_page(chunks(4, 5))
    assert kinds(step.frames) == [4, 5]
    assert step.read_after == 5
    assert not follower.live

    assert follower.on_page([]) == Step()
    assert follower.live
    step = follower.on_live(chunks(6, 7))
    assert kinds(step.frames) == [6, 7]
    assert step.read_after is None
    assert not step.finished


def test_chunk_frames_carry_the_message_id_and_delta() -> None:
    follower = Follower(MID)
    follower.start()
    step = follower.on_page([chunk(1, "Hel"), chunk(2, "lo")])
    assert step.frames == [
        ChunkFrame(message_id=MID, seq=1, delta="Hel"),
        ChunkFrame(message_id=MID, seq=2, delta="lo"),
    ]
    assert step.chunks == [chunk(1, "Hel"), chunk(2, "lo")]


def test_overlapping_pages_emit_each_seq_once() -> None:
    follower = Follower(MID)
    follower.start()
    assert kinds(follower.on_page(chunks(1, 3)).frames) == [1, 2, 3]
    step = follower.on_page(chunks(2, 5))
    assert kinds(step.frames) == [4, 5]
    assert step.read_after == 5


def test_live_entries_are_dropped_while_catching_up() -> None:
    follower = Follower(MID)
    follower.start()
    assert follower.on_live(chunks(1, 4)) == Step()
    assert follower.cursor.last_seq == 0
    # The pages cover what was dropped.
    assert kinds(follower.on_page(chunks(1, 4)).frames) == [1, 2, 3, 4]
    assert follower.on_live(chunks(5, 6)) == Step()  # still catching up
    assert kinds(follower.on_page(chunks(5, 6)).frames) == [5, 6]
    assert follower.on_page([]) == Step()
    assert kinds(follower.on_live(chunks(5, 8)).frames) == [7, 8]


def test_a_page_after_going_live_is_ignored() -> None:
    follower = live_follower()
    assert follower.on_page(chunks(1, 2)) == Step()
    assert follower.cursor.last_seq == 0
    assert follower.live


def test_a_page_that_skips_a_seq_raises() -> None:
    follower = Follower(MID)
    follower.start()
    with pytest.raises(GapError):
        follower.on_page([chunk(2)])
    assert follower.cursor.last_seq == 0


# --- live --------------------------------------------------------------------------------


def test_live_duplicates_and_old_entries_are_dropped() -> None:
    follower = live_follower()
    assert kinds(follower.on_live(chunks(1, 3)).frames) == [1, 2, 3]
    assert follower.on_live(chunks(1, 3)) == Step()
    assert kinds(follower.on_live(chunks(2, 4)).frames) == [4]


def test_live_gap_turns_back_to_catching_up_from_the_cursor() -> None:
    follower = live_follower()
    follower.on_live(chunks(1, 2))
    step = follower.on_live(chunks(5, 6))  # the relay was ahead of this client
    assert step == Step(read_after=2)
    assert step.read_after == follower.cursor.last_seq
    assert not follower.live
    assert follower.cursor.last_seq == 2  # nothing of the gapped batch was consumed
    # Catching up again: live entries are dropped until the empty page.
    assert follower.on_live(chunks(3, 6)) == Step()
    step = follower.on_page(chunks(3, 6))
    assert kinds(step.frames) == [3, 4, 5, 6]
    assert step.read_after == 6
    assert follower.on_page([]) == Step()
    assert follower.live
    assert kinds(follower.on_live(chunks(6, 7)).frames) == [7]


def test_live_done_beyond_the_cursor_turns_back_to_catching_up() -> None:
    follower = live_follower()
    follower.on_live(chunks(1, 2))
    step = follower.on_live([done(4)])
    assert step == Step(read_after=2)
    assert not step.finished
    assert not follower.cursor.done


# --- the final record ------------------------------------------------------------------


def test_done_from_a_page_emits_done_and_finishes() -> None:
    follower = Follower(MID)
    follower.start()
    final = done(2)
    step = follower.on_page([*chunks(1, 2), final])
    assert kinds(step.frames) == [1, 2, "done"]
    assert step.frames[-1] == DoneFrame(
        message_id=MID, last_seq=2, finish_reason=final.finish_reason, usage=final.usage
    )
    assert [c.seq for c in step.chunks] == [1, 2]
    assert step.finished
    assert step.read_after is None  # no further page to read


def test_done_from_live_emits_done_and_finishes() -> None:
    follower = live_follower()
    step = follower.on_live([*chunks(1, 3), done(3)])
    assert kinds(step.frames) == [1, 2, 3, "done"]
    assert step.finished


def test_done_with_an_error_sends_the_error_frame_first() -> None:
    follower = live_follower()
    follower.on_live(chunks(1, 1))
    step = follower.on_live([done(1, error=ErrorCode.UPSTREAM_UNAVAILABLE)])
    assert kinds(step.frames) == ["error", "done"]
    assert step.frames[0] == ErrorFrame(
        code=ErrorCode.UPSTREAM_UNAVAILABLE, message=NO_WORKER_MESSAGE, message_id=MID
    )
    assert isinstance(step.frames[1], DoneFrame)
    assert step.chunks == []
    assert step.finished


def test_done_without_an_error_sends_no_error_frame() -> None:
    step = live_follower().on_live([done(0)])
    assert not any(isinstance(f, ErrorFrame) for f in step.frames)
    assert kinds(step.frames) == ["done"]


def test_nothing_after_finished() -> None:
    follower = Follower(MID)
    follower.start()
    assert follower.on_page([*chunks(1, 2), done(2)]).finished
    assert follower.on_page([]) == Step()
    assert follower.on_page([*chunks(1, 4), done(4)]) == Step()
    assert follower.on_live([*chunks(1, 4), done(4)]) == Step()
    assert follower.on_live([chunk(9)]) == Step()  # not even a gap re-read
    assert not follower.live


def test_nothing_after_finished_live() -> None:
    follower = live_follower()
    assert follower.on_live([chunk(1), done(1)]).finished
    assert follower.on_live([chunk(2), done(2)]) == Step()
    assert follower.on_live([chunk(7)]) == Step()


# --- resume ------------------------------------------------------------------------------


def test_resume_emits_only_seqs_after_after_seq() -> None:
    follower = Follower(MID, after_seq=3)
    assert follower.start() == Step(read_after=3)
    # A cache read from the start, or a page that overlaps, still starts at 4.
    step = follower.on_page(chunks(1, 5))
    assert kinds(step.frames) == [4, 5]
    assert step.read_after == 5
    follower.on_page([])
    step = follower.on_live([*chunks(2, 6), done(6)])
    assert kinds(step.frames) == [6, "done"]
    assert step.finished


def test_resume_at_the_last_seq_of_a_finished_answer_sends_only_done() -> None:
    follower = Follower(MID, after_seq=4)
    follower.start()
    step = follower.on_page([done(4)])
    assert kinds(step.frames) == ["done"]
    assert step.finished


def test_resume_gap_is_read_from_the_resume_point() -> None:
    follower = live_follower(after_seq=3)
    assert follower.on_live(chunks(6, 7)) == Step(read_after=3)


# --- property: a shell interleaving live batches with page reads ------------------------


def simulate(
    rng: random.Random, stream: list[StreamEntry], after_seq: int, *, final_while_reading: bool
) -> list[BaseModel]:
    """Drive a follower as the connection and the node's relay would, in random order.

    - The worker writes the cache: `written` entries of `stream` exist (entry i is seq
      i + 1; the final record is last).
    - A catch-up page read is issued (a snapshot of what is written after `read_after`,
      random page size) and completes later: the relay may deliver in between.
    - The relay reads forward from its position (which may start behind or ahead of the
      follower's cursor: another connection had the node read the stream already) and
      delivers contiguous slices, sometimes re-sending a few entries before its position
      (overlap), sometimes delivering an old slice again (out of date).

    `final_while_reading=False` keeps the worker from writing the final record while a
    page read is in flight (see `test_final_record_delivered_during_the_last_page_read`).
    Returns every frame emitted; fails if the follower is stuck before the final record.
    """
    follower = Follower(MID, after_seq=after_seq)
    frames: list[BaseModel] = []
    total = len(stream)
    written = rng.randint(0, total // 3) if rng.random() < 0.8 else total
    relay = rng.randint(0, written)  # entries the relay has read
    read_after = follower.start().read_after
    in_flight: list[StreamEntry] | None = None  # a page read issued, not yet answered
    finished = False
    for steps in itertools.count():
        if finished:
            break
        assert steps < 100_000, "the follower never finished"
        roll = rng.random()
        if roll < 0.25 and written < total:
            cap = total if final_while_reading or in_flight is None else total - 1
            written = min(cap, written + rng.randint(1, 2))
            continue
        if roll < 0.5 and read_after is not None:
            if in_flight is None:
                in_flight = stream[read_after:written][: rng.randint(1, 6)]
                continue
            if rng.random() < 0.6:
                continue  # the answer is still on its way
            step = follower.on_page(in_flight)
            in_flight, read_after = None, step.read_after
        else:
            if roll < 0.9 and relay < written:
                end = rng.randint(relay + 1, written)
                start = max(0, relay - rng.randint(1, 4)) if rng.random() < 0.3 else relay
                relay = end
            elif relay > 0:
                start = rng.randrange(relay)
                end = rng.randint(start + 1, relay)
            else:
                continue
            step = follower.on_live(stream[start:end])
            if step.read_after is not None:
                # A live batch past the cursor (only ever while live): catch up again.
                assert (read_after, in_flight) == (None, None)
                assert step.read_after == follower.cursor.last_seq
                assert not follower.live
                read_after = step.read_after
        chunk_frames = [f for f in step.frames if isinstance(f, ChunkFrame)]
        assert [c.seq for c in step.chunks] == [f.seq for f in chunk_frames]
        frames.extend(step.frames)
        finished = step.finished
        idle = written == total and relay == total and read_after is None
        assert finished or not idle, (
            f"stuck: live at seq {follower.cursor.last_seq} of {total - 1}, "
            "and nothing more will arrive"
        )
    # Nothing more once finished, whatever arrives.
    assert follower.on_live(stream) == Step()
    assert follower.on_page(stream) == Step()
    return frames


def random_answer(rng: random.Random) -> tuple[list[StreamEntry], list[str], int]:
    """(the stream with its final record, the deltas, a resume point)."""
    n = rng.randint(0, 30)
    deltas = [rng.choice(["a", "bc", " d", "ef ", "g.", "\n", "é"]) for _ in range(n)]
    stream: list[StreamEntry] = [chunk(i + 1, d) for i, d in enumerate(deltas)]
    stream.append(done(n))
    after_seq = rng.randint(0, n) if rng.random() < 0.3 else 0
    return stream, deltas, after_seq


def check_frames(frames: list[BaseModel], deltas: list[str], after_seq: int) -> None:
    n = len(deltas)
    chunk_frames = [f for f in frames if isinstance(f, ChunkFrame)]
    assert [f.seq for f in chunk_frames] == list(range(after_seq + 1, n + 1))
    assert all(f.message_id == MID for f in chunk_frames)
    assert kinds(frames) == [*range(after_seq + 1, n + 1), "done"]
    last = frames[-1]
    assert isinstance(last, DoneFrame)
    assert last.last_seq == n
    assert "".join(f.delta for f in chunk_frames) == "".join(deltas[after_seq:])


@pytest.mark.parametrize("seed", range(300))
def test_random_interleaving_delivers_every_seq_once_then_done(seed: int) -> None:
    rng = random.Random(seed)
    stream, deltas, after_seq = random_answer(rng)
    frames = simulate(rng, stream, after_seq, final_while_reading=False)
    check_frames(frames, deltas, after_seq)


# --- the race of the last page read with the relay ------------------------------------
# A live batch dropped while catching up may hold entries the page read in flight did
# not see; if they include the final record, the relay reads nothing more afterwards.


def test_final_record_delivered_during_the_last_page_read() -> None:
    follower = Follower(MID)
    follower.start()
    assert follower.on_page(chunks(1, 2)).read_after == 2
    # The page read after seq 2 is answered empty; before the answer is handled, the
    # worker writes seq 3 and the final record and the relay delivers them (dropped:
    # the follower is still catching up). The relay has now read the whole stream and
    # will deliver nothing more (Hub.to_read skips finished streams).
    assert follower.on_live([chunk(3), done(3)]) == Step()
    step = follower.on_page([])
    # It must read again (seq 3 and the final record are in the cache now), not go live.
    assert step.read_after == 2


def test_random_interleaving_with_the_final_record_written_during_a_page_read() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        stream, deltas, after_seq = random_answer(rng)
        frames = simulate(rng, stream, after_seq, final_while_reading=True)
        check_frames(frames, deltas, after_seq)


# --- SeenMessages ----------------------------------------------------------------------


def test_seen_messages_remembers_what_was_added() -> None:
    seen = SeenMessages(limit=3)
    assert "m1" not in seen
    assert len(seen) == 0
    seen.add("m1")
    seen.add("m1")
    assert "m1" in seen
    assert len(seen) == 1
    assert 42 not in seen


def test_seen_messages_forgets_the_oldest_past_the_limit() -> None:
    seen = SeenMessages(limit=3)
    for mid in ("m1", "m2", "m3", "m4"):
        seen.add(mid)
    assert len(seen) == 3
    assert "m1" not in seen
    assert all(mid in seen for mid in ("m2", "m3", "m4"))


def test_seen_messages_adding_again_makes_it_most_recent() -> None:
    seen = SeenMessages(limit=3)
    for mid in ("m1", "m2", "m3"):
        seen.add(mid)
    seen.add("m1")  # now the most recent: m2 is the oldest
    seen.add("m4")
    assert "m1" in seen
    assert "m2" not in seen
    assert {m for m in ("m1", "m2", "m3", "m4") if m in seen} == {"m1", "m3", "m4"}
    assert len(seen) == 3


@pytest.mark.parametrize("seed", range(20))
def test_seen_messages_matches_a_reference_lru(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.randint(1, 5)
    seen = SeenMessages(limit=limit)
    reference: list[str] = []  # oldest first
    for _ in range(60):
        mid = f"m{rng.randint(0, 8)}"
        seen.add(mid)
        if mid in reference:
            reference.remove(mid)
        reference.append(mid)
        del reference[:-limit]
        assert len(seen) == len(reference)
        assert all((f"m{i}" in seen) == (f"m{i}" in reference) for i in range(9))
