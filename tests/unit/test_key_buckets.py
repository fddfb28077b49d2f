"""Key buckets for Redis Cluster: every key a script touches is in one hash slot."""

from __future__ import annotations

import re

import pytest

from services.common.keys import MAX_BUCKETS, Keys, new_message_id
from services.common.protocol import session_scope

pytestmark = pytest.mark.unit


def crc16(data: bytes) -> int:
    """CRC16/XMODEM, as Redis Cluster computes key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot(key: str) -> int:
    """The slot Redis Cluster puts `key` in (its hash tag's, when it has one)."""
    match = re.search(r"\{([^}]+)\}", key)
    return crc16((match.group(1) if match else key).encode()) % 16384


def test_the_slot_function_agrees_with_redis() -> None:
    # Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
    assert crc16(b"123456789") == 0x31C3
    assert slot("foo") == 12182
    assert slot("{user1000}.following") == slot("{user1000}.followers")


def script_key_sets(keys: Keys, user: str) -> list[list[str]]:
    """The keys of each Lua script's calls for one user's session and answer."""
    scope = session_scope(user, "s-1")
    mid = new_message_id(keys.bucket_of_user(user))
    session = [
        keys.session(scope),
        keys.user_sessions(user),
        keys.session_history(scope),
        keys.session_messages(scope),
    ]
    outbox = [
        keys.events_outbox(keys.bucket_of_user(user)),
        keys.events_outbox_dropped(keys.bucket_of_user(user)),
    ]
    message = [
        keys.message_meta(mid),
        keys.message_stream(mid),
        keys.message_lease(mid),
        keys.message_cancel(mid),
    ]
    accept = [
        keys.client_msg(scope, "c1"),
        keys.session_active(scope),
        keys.user_chats(user),
        keys.user_answers(user),
    ]
    return [
        session + outbox,  # session_open
        session + [keys.session_active(scope)],  # session_delete
        accept + session + outbox + [keys.message_meta(mid)],  # accept_chat
        message + [keys.session_active(scope)],  # append_chunk
        message + session + outbox + [keys.session_active(scope), keys.user_answers(user)],
        [keys.message_lease(mid), keys.message_meta(mid)],  # lease_renew
    ]


@pytest.mark.parametrize("user", ["alice", "bob", "u-42", "x@example.org"])
def test_every_script_touches_one_slot(user: str) -> None:
    keys = Keys("p:", buckets=64)
    for key_set in script_key_sets(keys, user):
        assert len({slot(k) for k in key_set}) == 1, key_set


def test_users_spread_over_the_buckets_and_slots() -> None:
    keys = Keys(buckets=64)
    users = [f"user-{i}" for i in range(2000)]
    buckets = {keys.bucket_of_user(u) for u in users}
    assert buckets == set(range(64))
    slots = {slot(keys.session(session_scope(u, "s"))) for u in users}
    assert len(slots) == 64  # one slot per bucket, 64 of them


def test_a_message_id_carries_its_bucket() -> None:
    keys = Keys(buckets=64)
    for bucket in (0, 1, 42, 63):
        mid = new_message_id(bucket)
        assert re.fullmatch(r"m_[0-9a-f]{32}", mid)
        assert keys.bucket_of_message(mid) == bucket
    assert keys.bucket_of_message("m_legacy-id") == 0
    with pytest.raises(ValueError, match="bucket"):
        new_message_id(MAX_BUCKETS)


def test_one_bucket_keeps_the_names_keys_always_had() -> None:
    keys = Keys("p:")
    assert keys.session("u/s") == "p:session:u/s"
    assert keys.events_outbox() == "p:events:outbox"
    assert "{" not in keys.message_stream(new_message_id())


@pytest.mark.parametrize("prefix", ["a{b", "x}"])
def test_a_prefix_with_braces_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="REDIS_KEY_PREFIX"):
        Keys(prefix)
