"""The usage consumer's pure parts (services/usage): event -> delta, offsets to
commit, keys, the script's call, settings; and the consumer loop with a fake Kafka
consumer and a fake ledger (what is committed when, what is retried, what skipped)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from prometheus_client import CollectorRegistry

from services.common.errors import StorageError
from services.common.events import ChatEvent, EventType
from services.common.protocol import FinishReason, Usage
from services.common.scripts import ScriptSignatureError
from services.usage.accounting import (
    BadEvent,
    UsageDelta,
    UsageTotals,
    delta_of,
    next_offsets,
)
from services.usage.consumer import UsageConsumer
from services.usage.keys import UsageKeys
from services.usage.scripts import UsageScript
from services.usage.settings import UsageSettings

pytestmark = pytest.mark.unit

TOPIC = "chat.events"


def completed(
    user_id: str | None = "alice", prompt: int = 12, completion: int = 30, **fields: Any
) -> ChatEvent:
    """A message.completed as finish_message writes it (message_store.py)."""
    return ChatEvent(
        type=EventType.MESSAGE_COMPLETED,
        session_id="s1",
        node_id="worker-1",
        user_id=user_id,
        message_id="m_00abc",
        data={
            "finish_reason": FinishReason.STOP.value,
            "usage": Usage(prompt_tokens=prompt, completion_tokens=completion).model_dump(),
        },
        **fields,
    )


# --- event -> delta -----------------------------------------------------------------


def test_a_completed_message_adds_its_usage_to_its_user() -> None:
    event = completed(prompt=7, completion=40)
    assert delta_of(event.value()) == UsageDelta(event.event_id, "alice", 7, 40)


@pytest.mark.parametrize("type_", [EventType.SESSION_OPENED, EventType.MESSAGE_ACCEPTED])
def test_other_events_add_nothing(type_: EventType) -> None:
    event = ChatEvent(type=type_, session_id="s1", node_id="gw-1", user_id="alice")
    assert delta_of(event.value()) is None


def test_an_event_type_this_code_does_not_know_is_ignored() -> None:
    value = json.dumps({"event_id": "e1", "type": "message.rated", "session_id": "s1"})
    assert delta_of(value.encode()) is None


def test_missing_usage_counts_the_answer_with_no_tokens() -> None:
    event = completed()
    event.data.pop("usage")
    assert delta_of(event.value()) == UsageDelta(event.event_id, "alice", 0, 0)


def test_unknown_fields_are_ignored() -> None:
    raw = json.loads(completed().to_json())
    raw["region"] = "eu"
    raw["data"]["usage"]["cached_tokens"] = 5
    delta = delta_of(json.dumps(raw).encode())
    assert delta is not None and (delta.prompt_tokens, delta.completion_tokens) == (12, 30)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "without a value"),
        (b"not json", "not a chat event"),
        (b'{"type": "message.completed"}', "event_id"),
        (json.dumps({"event_id": "", "type": "x"}).encode(), "event_id"),
        (completed(user_id=None).value(), "names no user"),
        (completed(user_id="").value(), "names no user"),
    ],
)
def test_malformed_records_are_refused(value: bytes | None, reason: str) -> None:
    with pytest.raises(BadEvent, match=reason):
        delta_of(value)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1},
        {"completion_tokens": "5"},
        {"prompt_tokens": True},
        {"prompt_tokens": 1.5},
        "many",
    ],
)
def test_bad_usage_is_refused(usage: object) -> None:
    raw = json.loads(completed().to_json())
    raw["data"]["usage"] = usage
    with pytest.raises(BadEvent, match="bad usage"):
        delta_of(json.dumps(raw).encode())


def test_a_refusal_names_the_field_never_its_value() -> None:
    raw = json.loads(completed().to_json())
    raw["data"]["usage"] = {"prompt_tokens": "s3cr3t-in-the-record"}
    with pytest.raises(BadEvent, match="prompt_tokens") as refused:
        delta_of(json.dumps(raw).encode())
    assert "s3cr3t" not in str(refused.value)
    with pytest.raises(BadEvent) as refused:
        delta_of(b'{"event_id": "s3cr3t", "type": 7}')
    assert "s3cr3t" not in str(refused.value)


def test_totals_from_the_hash() -> None:
    assert UsageTotals.from_hash({}) == UsageTotals(prompt_tokens=0, completion_tokens=0, answers=0)
    totals = UsageTotals.from_hash({"prompt_tokens": "3", "completion_tokens": "4", "answers": "1"})
    assert totals.model_dump() == {"prompt_tokens": 3, "completion_tokens": 4, "answers": 1}
    with pytest.raises(ValueError):
        UsageTotals.from_hash({"answers": "x"})


# --- offsets, keys, script -------------------------------------------------------------


@dataclass(frozen=True)
class Offset:
    offset: int


def test_next_offsets_are_one_past_each_partitions_last_record() -> None:
    p0, p1, p2 = (TopicPartition(TOPIC, i) for i in range(3))
    batch = {p0: [Offset(4), Offset(5)], p1: [Offset(0)], p2: []}
    assert next_offsets(batch) == {p0: 6, p1: 1}
    assert next_offsets({}) == {}


def test_a_users_keys_share_one_hash_tag() -> None:
    keys = UsageKeys("t1:")
    totals, seen = keys.totals("alice"), keys.seen("alice", "e1")
    assert totals.startswith("t1:") and seen.startswith("t1:")
    tag = totals[totals.index("{") : totals.index("}") + 1]
    assert tag == "{u:alice}" and seen[seen.index("{") : seen.index("}") + 1] == tag
    assert keys.totals("bob") != totals
    assert keys.seen("alice", "e2") != seen
    assert len({totals, seen, keys.totals("alice:seen:e1")}) == 3


def test_a_prefix_with_a_hash_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="hash tags"):
        UsageKeys("a{b}:")


def test_record_usage_script_is_called_by_its_names() -> None:
    script = UsageScript.load("record_usage")
    assert script.keys == ("totals", "seen")
    assert script.args == ("prompt_tokens", "completion_tokens", "seen_ttl_s")
    keys, args = script.call_args(
        {"seen": "S", "totals": "T"},
        {"seen_ttl_s": 60, "completion_tokens": 2, "prompt_tokens": 1},
    )
    assert (keys, args) == (["T", "S"], [1, 2, 60])
    with pytest.raises(ScriptSignatureError):
        script.call_args(
            {"totals": "T"}, {"seen_ttl_s": 60, "completion_tokens": 2, "prompt_tokens": 1}
        )
    with pytest.raises(ScriptSignatureError):
        script.call_args({"seen": "S", "totals": "T"}, {"ttl": 60})


def test_settings_keep_the_redis_password_out_of_their_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USAGE_REDIS_URL", "redis://:hunter2-hunter2@redis:6379/0")
    monkeypatch.setenv("USAGE_GROUP_ID", "usage-test")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:1/0")  # not this service's name
    settings = UsageSettings(_env_file=None)  # type: ignore[call-arg]
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    assert settings.group_id == "usage-test"
    assert settings.redis_settings().redis_url == "redis://:hunter2-hunter2@redis:6379/0"
    assert settings.seen_ttl_s == 7 * 24 * 3600


# --- the loop, with fakes ----------------------------------------------------------------


def record(partition: int, offset: int, value: bytes | None) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"s1",
        value=value,
        checksum=None,
        serialized_key_size=2,
        serialized_value_size=len(value or b""),
        headers=(),
    )


@dataclass
class FakeConsumer:
    polls: list[dict[TopicPartition, list[ConsumerRecord[Any, Any]]]]
    ledger: FakeLedger
    commits: list[tuple[dict[TopicPartition, int], int]] = field(default_factory=list)
    """Each commit, with how many deltas the ledger had taken when it came."""
    refuse_commit: bool = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]:
        return self.polls.pop(0) if self.polls else {}

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        assert offsets is not None, "commits name their offsets"
        if self.refuse_commit:
            raise CommitFailedError("rebalanced")
        self.commits.append((dict(offsets), len(self.ledger.deltas)))


@dataclass
class FakeLedger:
    failures: int = 0
    deltas: list[UsageDelta] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    async def record(self, delta: UsageDelta) -> bool:
        if self.failures:
            self.failures -= 1
            raise StorageError("redis down")
        self.deltas.append(delta)
        if delta.event_id in self.seen:
            return False
        self.seen.add(delta.event_id)
        return True


def loop(ledger: FakeLedger, consumer: FakeConsumer) -> UsageConsumer:
    return UsageConsumer(ledger, lambda: consumer, CollectorRegistry(), max_backoff_s=0)


def outcomes(usage: UsageConsumer) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for m in usage.events.collect()
        for s in m.samples
        if s.name == "usage_events_total"
    }


async def test_offsets_are_committed_after_every_record_of_the_poll_is_counted() -> None:
    a, b = completed(), completed(user_id="bob")
    accepted = ChatEvent(type=EventType.MESSAGE_ACCEPTED, session_id="s", node_id="g")
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    ledger = FakeLedger()
    consumer = FakeConsumer(
        [
            {
                p0: [
                    record(0, 0, a.value()),
                    record(0, 1, accepted.value()),
                    record(0, 2, a.value()),
                ],
                p1: [record(1, 7, b"garbage"), record(1, 8, b.value())],
            }
        ],
        ledger,
    )
    usage = loop(ledger, consumer)
    assert await usage.consume_once(consumer) == 5
    assert consumer.commits == [({p0: 3, p1: 9}, 3)]  # after all three deltas
    assert usage.committed == {p0: 3, p1: 9} and usage.handled == 5
    assert [d.user_id for d in ledger.deltas] == ["alice", "alice", "bob"]
    assert outcomes(usage) == {"counted": 2, "duplicate": 1, "ignored": 1, "malformed": 1}


async def test_a_redis_failure_holds_the_record_until_it_is_counted() -> None:
    p0 = TopicPartition(TOPIC, 0)
    ledger = FakeLedger(failures=3)
    consumer = FakeConsumer([{p0: [record(0, 0, completed().value())]}], ledger)
    usage = loop(ledger, consumer)
    assert await usage.consume_once(consumer) == 1
    assert len(ledger.deltas) == 1 and ledger.failures == 0
    assert consumer.commits == [({p0: 1}, 1)]


async def test_a_refused_commit_is_counted_and_not_taken_as_committed() -> None:
    p0 = TopicPartition(TOPIC, 0)
    ledger = FakeLedger()
    consumer = FakeConsumer([{p0: [record(0, 0, completed().value())]}], ledger, refuse_commit=True)
    registry = CollectorRegistry()
    usage = UsageConsumer(ledger, lambda: consumer, registry, max_backoff_s=0)
    assert await usage.consume_once(consumer) == 1
    assert usage.committed == {}
    assert registry.get_sample_value("usage_commit_failures_total") == 1


async def test_an_empty_poll_commits_nothing() -> None:
    ledger = FakeLedger()
    consumer = FakeConsumer([], ledger)
    usage = loop(ledger, consumer)
    assert await usage.consume_once(consumer) == 0
    assert consumer.commits == [] and usage.handled == 0
