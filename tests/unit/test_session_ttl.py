"""SESSION_TTL (issue 7): its default, the deprecated CACHE_L2_TTL alias, and the
documented list of keys allowed to live without a TTL."""

from __future__ import annotations

import pytest

from services.common import keys as keys_module
from services.common.keys import NO_TTL, Keys, may_lack_ttl
from services.common.message_store import DEFAULT_SESSION_TTL_S
from services.common.settings import Settings

pytestmark = pytest.mark.unit


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in ("SESSION_TTL", "CACHE_L2_TTL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_default_is_30_days_and_matches_the_stores_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings(monkeypatch).session_ttl == 30 * 86_400 == DEFAULT_SESSION_TTL_S


def test_session_ttl_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch, SESSION_TTL="600").session_ttl == 600


def test_cache_l2_ttl_is_a_deprecated_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed deployment's name keeps working (shared/design.md)."""
    assert settings(monkeypatch, CACHE_L2_TTL="900").session_ttl == 900
    assert settings(monkeypatch, CACHE_L2_TTL="900", SESSION_TTL="600").session_ttl == 600


def test_by_keyword_under_either_name() -> None:
    assert Settings(_env_file=None, session_ttl=5).session_ttl == 5
    assert Settings(_env_file=None, cache_l2_ttl=6).session_ttl == 6


@pytest.mark.parametrize("value", ["0", "-1"])
def test_must_be_positive(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ValueError, match="session_ttl|greater than 0"):
        settings(monkeypatch, SESSION_TTL=value)


def test_only_the_event_outbox_and_durable_streams_may_lack_a_ttl() -> None:
    k = Keys("p:", buckets=64)
    assert NO_TTL == (
        "events:outbox",
        "{b*}:events:outbox",
        "events:outbox:dropped",
        "{b*}:events:outbox:dropped",
        "ds:*",
        "{b*}:ds:*",
    )
    # A durable stream lives until deleted or its own expiry (quotas bound them).
    assert may_lack_ttl(k.ds_meta(k.ds_stream_id("u", "a/b")), "p:")
    assert may_lack_ttl(Keys("p:").events_outbox(), "p:")
    for bucket in (0, 7, 63):
        assert may_lack_ttl(k.events_outbox(bucket), "p:")
        assert may_lack_ttl(k.events_outbox_dropped(bucket), "p:")
    for key in (k.session("u/s"), k.session_history("u/s"), k.user_sessions("u"), k.node_wake("n")):
        assert not may_lack_ttl(key, "p:")


def test_may_lack_ttl_matches_the_listed_patterns_under_the_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keys_module, "NO_TTL", ("outbox", "limits:*"))
    assert may_lack_ttl("p:outbox", "p:")
    assert may_lack_ttl("p:limits:u1", "p:")
    assert not may_lack_ttl("p:outbox:x", "p:")
    assert not may_lack_ttl("q:outbox", "p:")
    assert not may_lack_ttl("p:session:s1", "p:")
