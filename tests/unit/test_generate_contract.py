"""The /v1/generate NDJSON contract, and what the gateway's driver makes of each outcome."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from services.ai_worker import routes
from services.ai_worker.generation import Progress
from services.common.generate import (
    EventKind,
    GenerateEvent,
    GenerateRequest,
    Outcome,
    heartbeat_line,
    outcome_line,
    parse_event,
    progress_line,
)
from services.ws_gateway.driver import Backoff, CallResult, call_result

pytestmark = pytest.mark.unit

DETAIL = 'provider said "no"\nat line 2'
"""A detail that needs escaping: quotes and a newline must stay inside one NDJSON line."""


def is_one_ndjson_line(line: bytes) -> bool:
    return line.endswith(b"\n") and line.count(b"\n") == 1 and json.loads(line) is not None


@pytest.mark.parametrize("last_seq", [0, 1, 17, 10**9])
def test_progress_line_round_trips(last_seq: int) -> None:
    line = progress_line(last_seq)
    assert is_one_ndjson_line(line)
    event = parse_event(line)
    assert event.event == EventKind.PROGRESS
    assert event.last_seq == last_seq
    assert event.outcome is None


def test_heartbeat_line_round_trips() -> None:
    line = heartbeat_line()
    assert is_one_ndjson_line(line)
    event = parse_event(line)
    assert event.event == EventKind.HEARTBEAT
    assert event.outcome is None
    assert (event.last_seq, event.detail) == (0, "")


@pytest.mark.parametrize("outcome", list(Outcome))
def test_outcome_line_round_trips_for_every_outcome(outcome: Outcome) -> None:
    line = outcome_line(outcome, 42, detail=DETAIL)
    assert is_one_ndjson_line(line)
    event = parse_event(line)
    assert event.outcome == outcome
    assert event.event == outcome
    assert event.last_seq == 42
    assert event.detail == DETAIL


@pytest.mark.parametrize("outcome", list(Outcome))
def test_outcome_line_without_detail(outcome: Outcome) -> None:
    event = parse_event(outcome_line(outcome, 0))
    assert (event.outcome, event.last_seq, event.detail) == (outcome, 0, "")


def test_the_draining_body_round_trips() -> None:
    """The 503 body a draining worker answers with (a JSON object, not a line)."""
    body = json.dumps(GenerateEvent(event=EventKind.DRAINING).model_dump(mode="json"))
    event = parse_event(body)
    assert event.event == EventKind.DRAINING
    assert event.outcome is None
    assert parse_event(GenerateEvent(event=EventKind.DRAINING).line()).event == EventKind.DRAINING


def test_parse_event_takes_str_and_bytes_and_ignores_unknown_fields() -> None:
    text = '{"event": "progress", "last_seq": 3, "from_the_future": true}'
    assert parse_event(text) == parse_event(text.encode()) == parse_event(progress_line(3))
    assert parse_event(text + "\n").last_seq == 3


def test_event_kinds_and_outcomes_never_share_a_value() -> None:
    assert not {k.value for k in EventKind} & {o.value for o in Outcome}


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\n",
        b"not json",
        b"{",
        b"[]",
        b"null",
        b'"done"',
        b"{}",
        b'{"last_seq": 3}',
        b'{"event": "bogus"}',
        b'{"event": "DONE"}',
        b'{"event": null}',
        b'{"event": "progress", "last_seq": "many"}',
        b'{"event": "progress", "last_seq": 1.5}',
        b'{"event": "done", "detail": 7}',
        b"\xff\xfe",
    ],
)
def test_parse_event_rejects_garbage_with_value_error(line: bytes) -> None:
    with pytest.raises(ValueError, match="not a generate event"):
        parse_event(line)


def test_parse_event_error_quotes_a_bounded_prefix() -> None:
    with pytest.raises(ValueError) as info:
        parse_event("x" * 10_000)
    assert len(str(info.value)) < 300


def test_generate_request_bounds_the_message_id() -> None:
    assert GenerateRequest(message_id="m_1").message_id == "m_1"
    for bad in ("", "m" * 129):
        with pytest.raises(ValidationError):
            GenerateRequest(message_id=bad)


EXPECTED_RESULT = {
    Outcome.DONE: CallResult.DONE,
    Outcome.NOT_FOUND: CallResult.DONE,
    Outcome.LEASED: CallResult.LEASED,
    Outcome.LOST: CallResult.RETRY,
    Outcome.FAILED: CallResult.RETRY,
    Outcome.HANDED_OVER: CallResult.RETRY,
}


def test_the_expected_results_cover_every_outcome() -> None:
    assert set(EXPECTED_RESULT) == set(Outcome)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_call_result_maps_every_outcome(outcome: Outcome) -> None:
    assert call_result(outcome) == EXPECTED_RESULT[outcome]


@pytest.mark.parametrize("outcome", list(Outcome))
def test_call_result_of_a_parsed_outcome_line(outcome: Outcome) -> None:
    event = parse_event(outcome_line(outcome, 5))
    assert event.outcome is not None
    assert call_result(event.outcome) == EXPECTED_RESULT[outcome]


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=0.5, current=0.1)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1


def test_backoff_defaults_start_at_first() -> None:
    backoff = Backoff()
    assert backoff.next() == backoff.first
    assert backoff.next() == 2 * backoff.first


class _Gen:
    """What `progress_lines` reads of a Generation."""

    def __init__(self) -> None:
        self.progress = Progress()


async def test_progress_lines_report_the_seq_on_a_clock_not_per_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routes, "HEARTBEAT_S", 0.05)
    gen = _Gen()
    lines: list[GenerateEvent] = []

    async def read() -> None:
        async for line in routes.progress_lines(gen):  # type: ignore[arg-type]
            lines.append(parse_event(line))

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)
    for seq in range(1, 201):  # 200 chunks in a burst
        gen.progress.update(last_seq=seq)
    async with asyncio.timeout(2.0):  # until a quiet tick follows the burst
        while not any(  # noqa: ASYNC110 - polls the lines the reader task collects
            e.event == EventKind.HEARTBEAT and any(p.last_seq == 200 for p in lines[:i])
            for i, e in enumerate(lines)
        ):
            await asyncio.sleep(0.01)
    gen.progress.update(last_seq=200, outcome=Outcome.DONE)
    await asyncio.wait_for(reader, 2.0)
    kinds = [e.event for e in lines]
    assert kinds[-1] == Outcome.DONE and lines[-1].last_seq == 200
    progress = [e.last_seq for e in lines if e.event == EventKind.PROGRESS]
    assert 200 in progress  # the burst is reported...
    assert len(progress) <= 3  # ...in a line or two, not 200
    assert EventKind.HEARTBEAT in kinds  # and the quiet tick after it is a heartbeat
