"""The load generator's statistics (tests/bench/loadgen.py): percentiles, summaries,
rates, throughput bins, and the aggregate counts of StreamsResult."""

from __future__ import annotations

import pickle

import pytest

from tests.bench.loadgen import (
    AnswerRecord,
    ProcSpan,
    StreamsResult,
    Summary,
    count_within,
    merge_counts,
    percentile,
    rate,
    ratios,
    summarize,
    throughput_bins,
)
from tests.bench.targets import CHAT_V1, FULL_SPEED, ModelShape

pytestmark = pytest.mark.unit


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    # numpy.percentile([1, 2, 3, 4], 95) == 3.85
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.5], 0) == 7.5
    assert percentile([7.5], 99) == 7.5


@pytest.mark.parametrize("q", [-1.0, 100.5])
def test_percentile_refuses_q_outside_0_100(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_sorts_and_describes() -> None:
    summary = summarize([3.0, 1.0, 2.0, 4.0])
    assert summary is not None
    assert (summary.n, summary.mean, summary.min, summary.p50, summary.max) == (
        4,
        2.5,
        1.0,
        2.5,
        4.0,
    )
    assert summary.p95 == pytest.approx(3.85) and summary.p99 == pytest.approx(3.97)
    assert isinstance(summary, Summary)


def test_summarize_of_nothing_is_none() -> None:
    assert summarize([]) is None
    assert summarize(iter(())) is None


def test_rate_is_zero_for_an_empty_or_reversed_window() -> None:
    assert rate(10, 5.0, 7.0) == 5.0
    assert rate(10, 5.0, 5.0) == 0.0
    assert rate(10, 7.0, 5.0) == 0.0


def test_count_within_includes_both_ends() -> None:
    assert count_within([0.5, 1.0, 1.5, 2.0, 2.5], 1.0, 2.0) == 3


def test_throughput_bins_divide_the_last_partial_bin_by_its_width() -> None:
    times = [10.1, 10.2, 10.9, 11.5, 12.2, 9.0, 13.0]
    assert throughput_bins(times, 10.0, 12.5, 1.0) == [
        (0.0, 3.0),
        (1.0, 1.0),
        (2.0, 2.0),  # one event in a 0.5 s bin
    ]


def test_throughput_bins_put_the_window_end_in_the_last_bin() -> None:
    assert throughput_bins([10.0, 12.0], 10.0, 12.0, 1.0) == [(0.0, 1.0), (1.0, 1.0)]


def test_throughput_bins_of_an_empty_window_and_bad_bin() -> None:
    assert throughput_bins([1.0], 5.0, 5.0) == []
    with pytest.raises(ValueError):
        throughput_bins([1.0], 0.0, 1.0, 0.0)


def test_ratios_need_an_ideal() -> None:
    assert ratios([2.0, 3.0], 2.0) == [1.0, 1.5]
    assert ratios([2.0, 3.0], 0.0) == []


def test_merge_counts_sums_per_key() -> None:
    assert merge_counts([{"busy": 1}, {"busy": 2, "rate_limited": 1}, {}]) == {
        "busy": 3,
        "rate_limited": 1,
    }


def _answer(
    stream: int,
    *,
    sent: float,
    done_at: float | None,
    chunks: list[float],
    exactly_once: bool = True,
    error: str | None = None,
) -> AnswerRecord:
    gaps = [b - a for a, b in zip(chunks, chunks[1:], strict=False)]
    return AnswerRecord(
        stream=stream,
        index=0,
        proc=0,
        sent=sent,
        done_at=done_at,
        ttfc=chunks[0] - sent if chunks else None,
        gaps=gaps,
        duration=done_at - sent if done_at is not None else None,
        chunks=len(chunks),
        text_len=4 * len(chunks),
        last_seq=len(chunks) if done_at is not None else None,
        exactly_once=exactly_once,
        finish_reason="stop" if done_at is not None else None,
        error=error,
    )


def _result() -> StreamsResult:
    a = _answer(0, sent=100.0, done_at=102.0, chunks=[100.5, 101.0, 102.0])
    b = _answer(1, sent=100.2, done_at=104.0, chunks=[101.0, 103.0], exactly_once=False)
    c = _answer(2, sent=100.1, done_at=None, chunks=[101.5], error="timeout")
    d = AnswerRecord(stream=3, index=0, proc=1, error="not connected: refused")
    return StreamsResult(
        target="fake",
        protocol=CHAT_V1,
        streams=4,
        answers_per_stream=1,
        answers=[a, b, c, d],
        chunk_times=[100.5, 101.0, 102.0, 101.0, 103.0, 101.5, 105.0],
        procs=[ProcSpan(proc=0, pid=1, clients=2, start=99.0)],
        connected=3,
        connect_failures=1,
        connect_errors={"refused": 1},
    )


def test_streams_result_counts_partition_the_answers() -> None:
    r = _result()
    assert (r.ok, r.not_exactly_once, r.failed) == (1, 1, 2)
    assert r.ok + r.not_exactly_once + r.failed == r.total == 4
    assert r.errors == {"timeout": 1, "not connected: refused": 1}


def test_streams_result_window_runs_from_first_chat_to_last_done() -> None:
    r = _result()
    assert r.window == (100.0, 104.0)
    assert r.measured_s == 4.0
    # 105.0 is after the last done: outside the window.
    assert r.chunks == 7
    assert r.chunks_per_second == 6 / 4.0
    assert r.throughput(2.0) == [(0.0, 2.0), (2.0, 1.0)]


def test_streams_result_latency_summaries() -> None:
    r = _result()
    ttfc = r.ttfc()
    assert ttfc is not None and ttfc.n == 3
    assert ttfc.min == pytest.approx(0.5) and ttfc.max == pytest.approx(1.4)
    gaps = r.gaps()
    assert gaps is not None and sorted([gaps.min, gaps.max]) == [0.5, 2.0] and gaps.n == 3
    durations = r.durations()
    assert durations is not None and (durations.n, durations.min) == (2, 2.0)
    assert durations.max == pytest.approx(3.8)


def test_duration_ratio_against_the_model_pace() -> None:
    r = _result()
    shape = ModelShape(tokens_per_second=10.0, min_tokens=21, max_tokens=21)  # ideal 2 s
    ratio = r.duration_ratio(shape)
    assert ratio is not None and ratio.min == 1.0 and ratio.max == pytest.approx(1.9)
    assert r.duration_ratio(FULL_SPEED) is None


def test_an_empty_result_reports_nothing_rather_than_zeros() -> None:
    r = StreamsResult(target="fake", protocol=CHAT_V1, streams=0, answers_per_stream=1)
    assert r.window is None and r.chunks_per_second == 0.0 and r.throughput() == []
    assert r.ttfc() is None and r.gaps() is None and r.durations() is None


def test_results_survive_pickling() -> None:
    """They cross process boundaries (load processes -> parent -> report)."""
    r = _result()
    back = pickle.loads(pickle.dumps(r))
    assert back == r and back.answers[0].gaps == r.answers[0].gaps
