"""Aftercare's pure parts: what to do about a finished answer given its stored record,
and the bounded set of answers finished lately."""

from __future__ import annotations

import pytest

from services.ai_worker.aftercare import FinishedAnswer, RecentlyFinished, Repair, repair_plan
from services.common.protocol import FinishReason, MessageStatus, Usage
from services.common.streams import DoneEntry

pytestmark = pytest.mark.unit


def answer(message_id: str = "m1", last_seq: int = 4, written_from: int = 1) -> FinishedAnswer:
    """An answer finished at `last_seq`, whose chunks from `written_from` on this worker
    wrote (the earlier ones were another worker's, before a takeover)."""
    return FinishedAnswer(
        message_id=message_id,
        session_id="u1/s1",
        text="abcd",
        final=DoneEntry(last_seq, FinishReason.STOP, Usage(completion_tokens=last_seq)),
        written={seq: ("x", 1_000 + seq) for seq in range(written_from, last_seq + 1)},
        event_id="e1",
    )


@pytest.mark.parametrize(
    ("status", "stored", "written_from", "expected", "missing"),
    [
        (MessageStatus.DONE, 4, 1, Repair.NONE, []),
        (MessageStatus.STREAMING, 4, 1, Repair.REWRITE, []),  # only the final record
        (MessageStatus.STREAMING, 2, 1, Repair.REWRITE, [3, 4]),
        (MessageStatus.PENDING, 0, 1, Repair.REWRITE, [1, 2, 3, 4]),
        (MessageStatus.STREAMING, 1, 3, Repair.LOST, [2, 3, 4]),  # seq 2 was not ours
        (MessageStatus.STREAMING, 2, 3, Repair.REWRITE, [3, 4]),  # ours from 3 is enough
        (None, 0, 1, Repair.LOST, [1, 2, 3, 4]),  # the record itself is gone
        (MessageStatus.STREAMING, 6, 1, Repair.LOST, []),  # somebody wrote past our end
    ],
)
def test_repair_plan(
    status: MessageStatus | None,
    stored: int,
    written_from: int,
    expected: Repair,
    missing: list[int],
) -> None:
    plan, seqs = repair_plan(answer(written_from=written_from), status, stored)
    assert (plan, list(seqs)) == (expected, missing)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_recently_finished_drops_answers_older_than_its_age() -> None:
    clock = Clock()
    recent = RecentlyFinished(max_age=30.0, max_count=10, clock=clock)
    recent.add(answer("m1"))
    clock.now += 20
    recent.add(answer("m2"))
    assert [a.message_id for a in recent.current()] == ["m1", "m2"]
    clock.now += 11  # m1 is 31 s old
    assert [a.message_id for a in recent.current()] == ["m2"]
    assert len(recent) == 1
    clock.now += 20
    assert recent.current() == []


def test_recently_finished_keeps_at_most_its_count_newest_first_to_stay() -> None:
    recent = RecentlyFinished(max_age=30.0, max_count=2, clock=Clock())
    for n in range(4):
        recent.add(answer(f"m{n}"))
    assert [a.message_id for a in recent.current()] == ["m2", "m3"]


def test_recently_finished_keeps_one_entry_per_message_and_none_with_count_0() -> None:
    clock = Clock()
    recent = RecentlyFinished(max_age=30.0, max_count=5, clock=clock)
    recent.add(answer("m1", last_seq=2))
    recent.add(answer("m2"))
    clock.now += 1
    recent.add(answer("m1", last_seq=3))  # finished again (rewritten): the newest counts
    assert [(a.message_id, a.final.last_seq) for a in recent.current()] == [
        ("m2", 4),
        ("m1", 3),
    ]
    off = RecentlyFinished(max_age=30.0, max_count=0, clock=clock)
    off.add(answer("m1"))
    assert off.current() == []
