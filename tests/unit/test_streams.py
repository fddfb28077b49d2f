"""Chunk-cache entry ids and record fields (streams, keys), and the Keys builders."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from services.common.keys import DONE_ENTRY_ID, Keys, chunk_entry_id, seq_of_entry_id
from services.common.protocol import ErrorCode, FinishReason, Usage
from services.common.streams import (
    ChunkEntry,
    DoneEntry,
    chunk_fields,
    decode_entry,
    done_fields,
)

pytestmark = pytest.mark.unit


def redis_id_order(entry_id: str) -> tuple[int, int]:
    """How Redis orders stream entry ids: by (ms, seq) as integers."""
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


# --- entry ids -----------------------------------------------------------------------


@pytest.mark.parametrize("seq", [1, 2, 9, 10, 99, 100, 12345, 2**40])
def test_entry_id_round_trip(seq: int) -> None:
    assert chunk_entry_id(seq) == f"0-{seq}"
    assert seq_of_entry_id(chunk_entry_id(seq)) == seq


def test_chunk_entry_ids_sort_in_seq_order_and_before_done() -> None:
    ids = [chunk_entry_id(s) for s in (1, 2, 9, 10, 11, 100, 10**9)]
    assert sorted(ids, key=redis_id_order) == ids
    assert all(redis_id_order(DONE_ENTRY_ID) > redis_id_order(i) for i in ids)


@pytest.mark.parametrize(
    "entry_id",
    ["1-0", DONE_ENTRY_ID, "", "0", "0-", "-", "-5", "5", "abc", "0-abc", "2-5", "1-5", "00-5x"],
)
def test_seq_of_entry_id_rejects_non_chunk_ids(entry_id: str) -> None:
    with pytest.raises(ValueError):
        seq_of_entry_id(entry_id)


@pytest.mark.parametrize(
    "entry_id",
    [
        "0--1",
        "0-+3",
        "0-1_0",
        "0- 7",
    ],
)
def test_seq_of_entry_id_rejects_int_lookalikes(entry_id: str) -> None:
    with pytest.raises(ValueError):
        seq_of_entry_id(entry_id)


# --- record fields -------------------------------------------------------------------


@pytest.mark.parametrize("delta", ["Hello", "", " ", "multi\nline", "émoji 🌍", "0-1"])
def test_chunk_fields_round_trip(delta: str) -> None:
    fields = chunk_fields(delta, written_ms=1_700_000_000_123)
    assert all(isinstance(v, str) for v in fields.values())
    entry = decode_entry(chunk_entry_id(7), fields)
    assert entry == ChunkEntry(seq=7, delta=delta, written_ms=1_700_000_000_123)


def test_chunk_without_written_ms_decodes_as_zero() -> None:
    assert decode_entry("0-3", {"d": "x"}) == ChunkEntry(seq=3, delta="x", written_ms=0)


@pytest.mark.parametrize("reason", list(FinishReason))
def test_done_fields_round_trip(reason: FinishReason) -> None:
    usage = Usage(prompt_tokens=11, completion_tokens=42)
    fields = done_fields(42, reason, usage)
    assert all(isinstance(v, str) for v in fields.values())
    assert "error" not in fields
    entry = decode_entry(DONE_ENTRY_ID, fields)
    assert entry == DoneEntry(last_seq=42, finish_reason=reason, usage=usage, error=None)


@pytest.mark.parametrize("error", list(ErrorCode))
def test_done_fields_round_trip_with_error(error: ErrorCode) -> None:
    usage = Usage(prompt_tokens=1, completion_tokens=0)
    fields = done_fields(0, FinishReason.ERROR, usage, error)
    assert fields["error"] == error.value
    entry = decode_entry(DONE_ENTRY_ID, fields)
    assert isinstance(entry, DoneEntry)
    assert entry.error is error
    assert entry == DoneEntry(
        last_seq=0, finish_reason=FinishReason.ERROR, usage=usage, error=error
    )


def test_done_without_usage_decodes_as_zero_usage() -> None:
    entry = decode_entry(DONE_ENTRY_ID, {"last_seq": "5", "finish_reason": "length"})
    assert entry == DoneEntry(last_seq=5, finish_reason=FinishReason.LENGTH, usage=Usage())


def test_done_with_unknown_finish_reason_is_rejected() -> None:
    with pytest.raises(ValueError):
        decode_entry(DONE_ENTRY_ID, {"last_seq": "1", "finish_reason": "exploded"})


def test_chunk_fields_under_done_id_are_not_a_chunk() -> None:
    """The done id is never decoded as a chunk, whatever its fields."""
    with pytest.raises((ValueError, KeyError)):
        decode_entry(DONE_ENTRY_ID, chunk_fields("x", 1))


@pytest.mark.parametrize(
    ("entry_id", "fields"),
    [("0-1", {}), ("0-1", {"t": "5"}), (DONE_ENTRY_ID, {}), (DONE_ENTRY_ID, {"last_seq": "1"})],
)
def test_entry_of_unknown_shape_raises_value_error(entry_id: str, fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        decode_entry(entry_id, fields)


# --- Keys ----------------------------------------------------------------------------


#: Public members of Keys that are not key builders.
NOT_BUILDERS = {
    "bucket_of_user",
    "bucket_of_scope",
    "bucket_of_message",
    "all_buckets",
    # Ids and a key prefix, not keys: the durable stream and subscription key builders
    # take what these make.
    "ds_stream_id",
    "ds_sub_id",
    "ds_prefix",
}


def builders() -> list[tuple[str, Callable[..., str]]]:
    return [
        (name, fn)
        for name, fn in inspect.getmembers(Keys, inspect.isfunction)
        if not name.startswith("_") and name not in NOT_BUILDERS
    ]


def build_all(keys: Keys, arg: str = "x1") -> dict[str, str]:
    out: dict[str, str] = {}
    for name, fn in builders():
        n_args = len(inspect.signature(fn).parameters) - 1  # minus self
        out[name] = fn(keys, *([arg] * n_args))
    return out


def test_builders_are_discovered() -> None:
    names = {name for name, _ in builders()}
    # A sample that must be there; guards against the discovery silently finding nothing.
    assert {"user_sessions", "session", "message_stream", "client_msg", "node_wake"} <= names
    assert len(names) >= 14


@pytest.mark.parametrize("prefix", ["", "t-abc123:", "deploy/"])
def test_every_builder_applies_the_prefix(prefix: str) -> None:
    bare = build_all(Keys())
    keyed = build_all(Keys(prefix=prefix))
    for name, key in keyed.items():
        assert key.startswith(prefix), name
        assert key == prefix + bare[name], name


def test_no_two_builders_collide() -> None:
    for arg in ("x1", "a", "session"):
        keys = build_all(Keys(prefix="p:"), arg)
        assert len(set(keys.values())) == len(keys), keys


def test_builders_embed_their_argument() -> None:
    takes_none = {name for name, fn in builders() if len(inspect.signature(fn).parameters) == 1}
    assert takes_none == {"session_invalidate_channel"}
    # Their argument is a bucket.
    bucketed = {"events_outbox", "events_outbox_dropped", "ds_subs_due"}
    for name, key in build_all(Keys(), "ARG42").items():
        if name not in takes_none | bucketed:
            assert "ARG42" in key, name


def test_a_durable_stream_id_names_its_users_bucket_and_path() -> None:
    keys = Keys("p:", buckets=64)
    sid = keys.ds_stream_id("alice", "notes/today")
    assert sid == keys.ds_stream_id("alice", "notes/today")  # stable on every node
    assert sid != keys.ds_stream_id("bob", "notes/today")  # each user has a namespace
    assert sid != keys.ds_stream_id("alice", "notes/other")
    assert keys.bucket_of_message(sid) == keys.bucket_of_user("alice")  # the relay's lane
    assert keys.ds_meta(sid).startswith(keys.ds_prefix(sid))
    assert keys.ds_meta(sid).split("}")[0] == keys.ds_user_streams("alice").split("}")[0]


def test_client_msg_uses_both_arguments() -> None:
    keys = Keys()
    assert keys.client_msg("s1", "c1") != keys.client_msg("s1", "c2")
    assert keys.client_msg("s1", "c1") != keys.client_msg("s2", "c1")


def test_different_prefixes_isolate_every_key() -> None:
    a = set(build_all(Keys(prefix="a:")).values())
    b = set(build_all(Keys(prefix="b:")).values())
    assert not a & b


def test_seed_registry_names_are_kept() -> None:
    """The seed deployment's registry name must not change (other readers may use it)."""
    keys = Keys()
    assert keys.user_sessions("u1") == "sessions:user:u1"


def test_no_global_session_registry() -> None:
    """The seed's `sessions:active` hash grew by one field per session, forever, and
    nothing read it: gone (issue 7)."""
    assert not hasattr(Keys, "sessions_active")
