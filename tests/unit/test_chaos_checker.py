"""The chaos checker's accounting of events a broker kill may lose (tests/chaos/checker.py)."""

from __future__ import annotations

import pytest

from tests.chaos.checker import AnswerRecord, ChaosRecord, FaultRecord, check, required_events

pytestmark = pytest.mark.unit

DONE = {"type": "done", "finish_reason": "stop", "last_seq": 1}


def answer(mid: str, sent_at: float, accepted_at: float) -> AnswerRecord:
    rec = AnswerRecord(0, "s", mid, accepted_at, sent_at, seqs=[1], text="x", done=DONE)
    rec.history_text = "x"
    rec.history_checked = True
    return rec


def record(*answers: AnswerRecord) -> ChaosRecord:
    return ChaosRecord(
        answers=list(answers),
        faults=[FaultRecord("kafka-kill9", "kafka", at=100.0, recovered_in=1.0)],
        events=[],
        recovery_timeout=20.0,
        silence_margin=5.0,
    )


def missing_event_failures(rec: ChaosRecord) -> list[str]:
    return [f for f in check(rec).failures if "message.accepted missing" in f]


def test_a_chat_sent_before_the_broker_kill_may_lose_its_event_though_acked_later() -> None:
    # Sent at 99 (accepted then, the ack lost with a broken socket), acked at 105 after
    # a retry: the event may have gone to the killed broker.
    assert missing_event_failures(record(answer("m1", sent_at=99.0, accepted_at=105.0))) == []


def test_a_chat_sent_after_the_broker_came_back_must_have_its_event() -> None:
    failures = missing_event_failures(record(answer("m1", sent_at=104.0, accepted_at=105.0)))
    assert failures == ["message m1: message.accepted missing from the topic"]


def test_the_events_the_run_waits_for_are_the_ones_the_checker_requires() -> None:
    """The chaos run reads the topic until these are there (waiting for an excused one
    would wait out its deadline); each one missing is a failure, the others are not."""
    rec = record(
        answer("before-broker", sent_at=99.0, accepted_at=105.0),
        answer("after", sent_at=110.0, accepted_at=111.0),
        answer("near-redis", sent_at=120.0, accepted_at=121.0),
    )
    rec.faults.append(FaultRecord("redis-kill9", "redis", at=120.5, recovered_in=1.0))
    assert required_events(rec.answers, rec.faults) == {"after"}
    assert missing_event_failures(rec) == ["message after: message.accepted missing from the topic"]
