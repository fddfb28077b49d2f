"""The checker: pure functions over what the clients, the fault injector and a Kafka
consumer recorded during a chaos run. No I/O, so it is easy to trust.

Guarantees checked (docs/protocol.md, section 3):

- every accepted chat ended with `done` (none lost: accepted but no `done`);
- each answer's chunks arrived exactly once and in order (seq 1..last_seq), whatever
  the ending;
- the ending is `stop` (no error frame), or the documented `state_lost` /
  `upstream_unavailable` error right before `done` `finish_reason: "error"`; a `resume`
  answered `not_found` counts as `state_lost` only after a Redis kill (the record went
  with the data);
- for answers that ended with `stop`, `history` holds exactly the text the client
  assembled;
- no client waited for the next frame of an answer longer than
  STREAM_RECOVERY_TIMEOUT + a margin;
- events (README.md, "Kafka down"): after dedupe by `event_id` each message has one
  `message.accepted`, and every accepted chat's `message.accepted` is on the topic,
  except those the broker lost (it is memory-only: events of chats accepted before its
  last kill -9 may be gone) and those Redis lost with the answer (`state_lost`).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

#: A chat accepted within this many seconds before a broker kill may have had its
#: event taken by the old broker (then lost with it) even though the client saw the ack
#: after the kill; later ones can only have gone to the new broker.
BROKER_MARGIN_S = 2.0
#: Redis fsyncs its append-only file every second: a kill -9 may lose the last second of
#: writes (README.md, "Redis keeps its data"); use some slack around it.
REDIS_MARGIN_S = 2.0


@dataclass
class AnswerRecord:
    """One accepted chat as its client saw it."""

    client: int
    session: str
    message_id: str
    accepted_at: float
    """time.monotonic() when the ack arrived."""
    sent_at: float
    """time.monotonic() when the chat was first sent. The server accepted it somewhere
    between the two: an ack can come much later than the accept (the socket broke and
    the chat was sent again, or it was refused for overload and retried)."""
    seqs: list[int] = field(default_factory=list)
    text: str = ""
    done: dict[str, Any] | None = None
    error_codes: list[str] = field(default_factory=list)
    not_found: bool = False
    """A resume was answered `not_found`: the record is gone (no `done` will come)."""
    history_text: str | None = None
    history_checked: bool = False
    longest_silence: float = 0.0
    reconnects: int = 0
    resume_latencies: list[float] = field(default_factory=list)
    failure: str | None = None
    """Why the client gave up on it (a deadline), if it did."""

    @property
    def finish_reason(self) -> str | None:
        return None if self.done is None else str(self.done.get("finish_reason"))


@dataclass
class FaultRecord:
    kind: str
    target: str
    at: float
    recovered_in: float | None = None
    error: str | None = None


@dataclass
class ChaosRecord:
    """Everything one run produced."""

    answers: list[AnswerRecord]
    faults: list[FaultRecord]
    events: list[dict[str, Any]]
    """Every record of the topic, as consumed (duplicates included)."""
    recovery_timeout: float
    silence_margin: float
    client_errors: list[str] = field(default_factory=list)
    stop_report: str = ""
    """What the cluster's stop left behind ("" when clean)."""
    events_consumed: bool = True


@dataclass
class Report:
    rows: list[tuple[str, str]]
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self) -> str:
        width = max(len(k) for k, _ in self.rows)
        lines = [f"  {k:<{width}}  {v}" for k, v in self.rows]
        verdict = "PASS" if self.ok else f"FAIL ({len(self.failures)} problems)"
        lines.append(f"  {'verdict':<{width}}  {verdict}")
        lines += [f"    - {f}" for f in self.failures[:30]]
        if len(self.failures) > 30:
            lines.append(f"    ... and {len(self.failures) - 30} more")
        return "\n".join(lines)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def event_excuse(a: AnswerRecord, faults: list[FaultRecord]) -> str | None:
    """Why the chat's `message.accepted` may be missing from the topic: "broker" (it
    was sent before the broker's last kill -9, or just after it), "redis" (its answer
    ended `state_lost`, or its accept was near a Redis kill -9); None: it must be there."""
    broker_kills = [f.at for f in faults if f.kind == "kafka-kill9"]
    if broker_kills and a.sent_at < max(broker_kills) + BROKER_MARGIN_S:
        return "broker"
    lost_state = a.not_found or (a.error_codes == ["state_lost"])
    # The accept happened between the first send and the ack: an event is excused if
    # that span meets the window in which a kill could lose it.
    near_redis_kill = any(
        a.sent_at <= f.at and a.accepted_at >= f.at - REDIS_MARGIN_S
        for f in faults
        if f.kind == "redis-kill9"
    )
    return "redis" if lost_state or near_redis_kill else None


def required_events(answers: list[AnswerRecord], faults: list[FaultRecord]) -> set[str]:
    """The message ids whose `message.accepted` must be on the topic (see event_excuse):
    what a consumer of the topic waits for before the checker looks."""
    return {a.message_id for a in answers if event_excuse(a, faults) is None}


def check(rec: ChaosRecord) -> Report:
    failures: list[str] = []
    fault_kinds = Counter(f.kind for f in rec.faults)
    redis_kills = sorted(f.at for f in rec.faults if f.kind == "redis-kill9")
    for f in rec.faults:
        if f.error:
            failures.append(f"fault {f.kind} {f.target}: {f.error}")

    completed = state_lost = upstream = lost = duplicated = 0
    silence_limit = rec.recovery_timeout + rec.silence_margin
    for a in rec.answers:
        where = f"client {a.client} message {a.message_id}"
        dups = len(a.seqs) - len(set(a.seqs))
        duplicated += dups
        if a.done is None and not a.not_found:
            lost += 1
            failures.append(f"{where}: accepted but no done ({a.failure or 'unfinished'})")
            continue
        if a.not_found:
            # The record went with Redis' data: the answer is lost, and the client knows.
            state_lost += 1
            if not any(k <= a.accepted_at + 60 for k in redis_kills):
                failures.append(f"{where}: resume got not_found without a Redis kill")
            expected_seqs = list(range(1, len(a.seqs) + 1))
        else:
            assert a.done is not None
            expected_seqs = list(range(1, int(a.done["last_seq"]) + 1))
            reason = a.finish_reason
            if reason == "stop":
                completed += 1
                if a.error_codes:
                    failures.append(f"{where}: stop with errors {a.error_codes}")
                if not a.history_checked:
                    failures.append(f"{where}: history could not be read")
                elif a.history_text != a.text:
                    failures.append(f"{where}: history differs from the assembled text")
            elif reason == "error" and a.error_codes == ["state_lost"]:
                state_lost += 1
            elif reason == "error" and a.error_codes == ["upstream_unavailable"]:
                upstream += 1
            else:
                failures.append(f"{where}: ended {reason} with errors {a.error_codes}")
        if a.seqs != expected_seqs:
            failures.append(
                f"{where}: chunks not exactly once in order ({dups} repeats): "
                f"{a.seqs[:12]}... expected 1..{len(expected_seqs)}"
            )
        if a.longest_silence > silence_limit:
            failures.append(
                f"{where}: silent {a.longest_silence:.1f}s > {silence_limit:.0f}s while waiting"
            )

    # --- events --------------------------------------------------------------------
    ids = [e.get("event_id") for e in rec.events]
    unique: dict[str, dict[str, Any]] = {}
    for e in rec.events:
        unique.setdefault(str(e.get("event_id")), e)
    event_dups = len(ids) - len(unique)
    accepted_by_message: dict[str, set[str]] = defaultdict(set)
    for eid, e in unique.items():
        if e.get("type") == "message.accepted" and e.get("message_id"):
            accepted_by_message[str(e["message_id"])].add(eid)
    for mid, eids in accepted_by_message.items():
        if len(eids) > 1:
            failures.append(f"message {mid}: {len(eids)} distinct message.accepted events")

    expected = delivered = survived = by_broker = by_redis = 0
    for a in rec.answers:
        present = a.message_id in accepted_by_message
        excuse = event_excuse(a, rec.faults)
        if excuse == "broker":
            if present:
                survived += 1
            else:
                by_broker += 1
            continue
        if not present and excuse == "redis":
            by_redis += 1
            continue
        expected += 1
        if present:
            delivered += 1
        elif rec.events_consumed:
            failures.append(f"message {a.message_id}: message.accepted missing from the topic")
    if not rec.events_consumed:
        failures.append("the topic could not be consumed")

    for err in rec.client_errors[:10]:
        failures.append(f"client error: {err}")
    if len(rec.client_errors) > 10:
        failures.append(f"... {len(rec.client_errors) - 10} more client errors")
    if rec.stop_report:
        failures.append(f"cluster stop left behind: {rec.stop_report}")

    silences = [a.longest_silence for a in rec.answers]
    resumes = [r for a in rec.answers for r in a.resume_latencies]
    reconnects = sum(a.reconnects for a in rec.answers)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(fault_kinds.items())) or "none"
    recovered = [f.recovered_in for f in rec.faults if f.recovered_in is not None]
    rows = [
        ("faults injected", f"{len(rec.faults)}: {kinds}"),
        ("node back healthy", f"max {max(recovered, default=0):.1f}s after a fault"),
        ("answers (accepted chats)", str(len(rec.answers))),
        ("completed (stop, = history)", str(completed)),
        ("ended state_lost", f"{state_lost} (error + done, or resume not_found)"),
        ("ended upstream_unavailable", str(upstream)),
        ("lost (accepted, no done)", str(lost)),
        ("duplicated chunks", str(duplicated)),
        ("longest silence", f"{max(silences, default=0):.2f}s (limit {silence_limit:.0f}s)"),
        ("reconnects mid-answer", str(reconnects)),
        (
            "resume -> next frame",
            f"p50 {_pct(resumes, 50) * 1000:.0f} ms, p99 {_pct(resumes, 99) * 1000:.0f} ms "
            f"({len(resumes)} resumes)",
        ),
        (
            "events expected",
            f"{expected} message.accepted (chats accepted after the last broker kill, "
            "not lost with Redis)",
        ),
        (
            "events delivered",
            f"{delivered} of those (+{survived} accepted before the last broker kill)",
        ),
        (
            "events lost by the broker",
            f"{by_broker} (accepted before its last kill -9: Tansu is memory-only)",
        ),
        ("events lost with Redis", f"{by_redis} (state_lost answers / last AOF second)"),
        (
            "event duplicates",
            f"{event_dups} raw copies of {len(unique)} ids on the topic "
            "(at least once; 0 after dedupe)",
        ),
    ]
    return Report(rows, failures)
