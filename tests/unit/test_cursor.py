"""StreamCursor: every chunk exactly once, in order, whatever the batch overlap."""

from __future__ import annotations

import random

import pytest

from services.common.streams import ChunkEntry, StreamEntry
from services.ws_gateway.cursor import GapError, StreamCursor
from tests.stream_entries import chunk, chunks, done

pytestmark = pytest.mark.unit


def seqs(entries: list[StreamEntry]) -> list[int | str]:
    return [e.seq if isinstance(e, ChunkEntry) else "done" for e in entries]


def test_in_order_delivery() -> None:
    cursor = StreamCursor()
    assert seqs(cursor.accept(chunks(1, 3))) == [1, 2, 3]
    assert seqs(cursor.accept(chunks(4, 5))) == [4, 5]
    assert cursor.last_seq == 5
    assert not cursor.done


def test_empty_batch_changes_nothing() -> None:
    cursor = StreamCursor(last_seq=2)
    assert cursor.accept([]) == []
    assert (cursor.last_seq, cursor.done) == (2, False)


def test_returns_the_entries_themselves() -> None:
    batch = chunks(1, 2)
    out = StreamCursor().accept(batch)
    assert out == batch
    assert all(a is b for a, b in zip(out, batch, strict=True))


def test_exact_duplicate_batch_is_dropped() -> None:
    cursor = StreamCursor()
    cursor.accept(chunks(1, 3))
    assert cursor.accept(chunks(1, 3)) == []
    assert cursor.last_seq == 3


def test_catch_up_and_live_overlap() -> None:
    """Catch-up read returned 1..5 while the live reader already had 4..7."""
    cursor = StreamCursor()
    assert seqs(cursor.accept(chunks(1, 5))) == [1, 2, 3, 4, 5]
    assert seqs(cursor.accept(chunks(4, 7))) == [6, 7]
    assert seqs(cursor.accept(chunks(2, 8) + [done(8)])) == [8, "done"]
    assert cursor.done


def test_duplicates_within_one_batch_are_dropped() -> None:
    cursor = StreamCursor()
    batch = [chunk(1), chunk(1), chunk(2), chunk(1), chunk(2), chunk(3)]
    assert seqs(cursor.accept(batch)) == [1, 2, 3]


def test_gap_raises_and_consumes_nothing() -> None:
    cursor = StreamCursor(last_seq=2)
    with pytest.raises(GapError):
        cursor.accept([chunk(3), chunk(4), chunk(6), chunk(7)])
    # Nothing was consumed: 3 and 4 are still to be sent.
    assert (cursor.last_seq, cursor.done) == (2, False)
    assert seqs(cursor.accept(chunks(3, 7))) == [3, 4, 5, 6, 7]


def test_gap_on_first_entry() -> None:
    cursor = StreamCursor()
    with pytest.raises(GapError):
        cursor.accept([chunk(2)])
    assert cursor.last_seq == 0


def test_done_ends_the_stream() -> None:
    cursor = StreamCursor()
    out = cursor.accept([*chunks(1, 2), done(2)])
    assert seqs(out) == [1, 2, "done"]
    assert out[-1] == done(2)
    assert cursor.done
    assert cursor.last_seq == 2


def test_entries_after_done_in_the_same_batch_are_ignored() -> None:
    cursor = StreamCursor()
    out = cursor.accept([chunk(1), done(1), chunk(2), done(2)])
    assert seqs(out) == [1, "done"]
    assert cursor.last_seq == 1


def test_entries_after_done_in_later_batches_are_ignored() -> None:
    cursor = StreamCursor()
    cursor.accept([chunk(1), done(1)])
    assert cursor.accept([chunk(2)]) == []
    assert cursor.accept([done(1)]) == []
    # Even an entry that would be a gap is not an error once done.
    assert cursor.accept([chunk(9)]) == []
    assert (cursor.last_seq, cursor.done) == (1, True)


def test_done_with_no_chunks() -> None:
    cursor = StreamCursor()
    assert seqs(cursor.accept([done(0)])) == ["done"]
    assert cursor.done


def test_done_beyond_cursor_raises_gap_and_consumes_nothing() -> None:
    cursor = StreamCursor()
    with pytest.raises(GapError):
        cursor.accept([chunk(1), chunk(2), done(4)])
    assert (cursor.last_seq, cursor.done) == (0, False)
    assert seqs(cursor.accept([*chunks(1, 4), done(4)])) == [1, 2, 3, 4, "done"]


def test_starting_after_seq() -> None:
    cursor = StreamCursor(last_seq=5)
    assert seqs(cursor.accept(chunks(1, 8))) == [6, 7, 8]
    assert cursor.last_seq == 8


def test_starting_after_seq_gap_is_detected() -> None:
    cursor = StreamCursor(last_seq=5)
    with pytest.raises(GapError):
        cursor.accept(chunks(7, 8))


def test_starting_after_seq_then_done() -> None:
    cursor = StreamCursor(last_seq=5)
    assert seqs(cursor.accept([done(5)])) == ["done"]


def random_overlapping_batches(rng: random.Random, total: int) -> list[list[StreamEntry]]:
    """Batches as two readers would produce them: each batch is a contiguous range that
    starts at or before the first seq not yet covered (so never a gap), often re-sending
    older seqs, sometimes duplicating entries; the final record may come more than once."""
    stream: list[StreamEntry] = [*chunks(1, total), done(total)]
    batches: list[list[StreamEntry]] = []
    covered = 0  # how many entries of `stream` some batch has contained so far
    while covered < len(stream):
        start = rng.randint(max(0, covered - rng.randint(0, 6)), covered)
        end = rng.randint(covered + 1, min(len(stream), covered + 1 + rng.randint(0, 5)))
        batch = list(stream[start:end])
        if batch and rng.random() < 0.3:
            i = rng.randrange(len(batch))
            batch.insert(i, batch[i])  # an entry seen twice in one batch
        if rng.random() < 0.1:
            batches.append([])
        batches.append(batch)
        covered = max(covered, end)
    for _ in range(rng.randint(0, 2)):  # late stragglers from the other reader
        start = rng.randint(0, len(stream) - 1)
        batches.append(list(stream[start:]))
    return batches


@pytest.mark.parametrize("seed", range(300))
def test_random_overlapping_batches_deliver_every_seq_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    total = rng.randint(0, 40)
    start = rng.randint(0, total)  # resume from after_seq=start
    cursor = StreamCursor(last_seq=start)
    delivered: list[StreamEntry] = []
    for batch in random_overlapping_batches(rng, total):
        delivered.extend(cursor.accept(batch))
    assert seqs(delivered) == [*range(start + 1, total + 1), "done"]
    assert (cursor.last_seq, cursor.done) == (total, True)


@pytest.mark.parametrize("seed", range(100))
def test_random_batches_with_a_hole_raise_gap_then_recover(seed: int) -> None:
    """Dropping one seq from the stream is always caught, and a re-read fills it."""
    rng = random.Random(seed)
    total = rng.randint(2, 30)
    missing = rng.randint(1, total)
    cursor = StreamCursor()
    delivered: list[StreamEntry] = []
    raised = False
    for batch in random_overlapping_batches(rng, total):
        holed = [e for e in batch if not (isinstance(e, ChunkEntry) and e.seq == missing)]
        try:
            delivered.extend(cursor.accept(holed))
        except GapError:
            raised = True
            before = cursor.last_seq
            # The caller range-reads from its cursor, then carries on.
            delivered.extend(cursor.accept(chunks(before + 1, missing)))
            delivered.extend(cursor.accept(holed))
    assert raised
    assert seqs(delivered) == [*range(1, total + 1), "done"]
