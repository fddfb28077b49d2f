"""The pure rules of durable stream subscriptions (services/durable/subscription_logic.py):
patterns, configuration and its hash, webhook URL safety, wake tokens, the webhook
signature and its JWK, retries, start-up checks."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import random
import re
import socket
from typing import cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.common.keys import Keys
from services.common.scripts import DS_SUB_ACK, DS_SUB_APPEND, DS_SUB_PUT
from services.common.settings import Settings
from services.durable import subscription_logic as sl
from services.durable.store import DurableStore
from services.durable.subscriptions import Subscriptions

pytestmark = pytest.mark.unit

SECRET = "s" * 40


def settings(**values: object) -> Settings:
    return Settings(jwt_secret=SECRET, **values)  # type: ignore[arg-type]


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- patterns and paths ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("events/*", "events/a", True),
        ("events/*", "events/a/b", False),
        ("events/*", "events", False),
        ("events/**", "events", True),
        ("events/**", "events/a/b/c", True),
        ("**", "anything/at/all", True),
        ("**/x", "x", True),
        ("**/x", "a/b/x", True),
        ("**/x", "a/b/y", False),
        ("a/**/z", "a/z", True),
        ("a/**/z", "a/b/c/z", True),
        ("a/**/**/z", "a/b/z", True),
        ("*/b", "a/b", True),
        ("*/b", "b", False),
        ("a/%2A", "a/*", True),
        ("a/%2A", "a/b", False),
        ("/events/*/", "events/a", True),
        ("events/a", "events/a", True),
        ("events/a", "events/ab", False),
    ],
)
def test_glob(pattern: str, path: str, matches: bool) -> None:
    assert sl.glob_match(pattern, path) is matches


def test_relative_paths_under_a_root() -> None:
    assert sl.relative_path("v1/stream/events/a", "v1/stream") == "events/a"
    assert sl.relative_path("v1/streamx/a", "v1/stream") is None
    assert sl.relative_path("v1/stream", "v1/stream") is None
    assert sl.relative_path("events/a", "") == "events/a"
    assert sl.relative_path("v1/stream/__ds/x", "v1/stream") is None
    assert sl.full_path("v1/stream", "a/b") == "v1/stream/a/b"
    assert sl.full_path("", "a/b") == "a/b"


@pytest.mark.parametrize("bad", ["", "a//b", "a/../b", "__ds/x", "a b", "/"])
def test_bad_stream_paths(bad: str) -> None:
    with pytest.raises(sl.SubscriptionError) as exc:
        sl.normalize_path(bad)
    assert exc.value.status == 400 and exc.value.code == "INVALID_REQUEST"


def test_paths_lose_their_outer_slashes() -> None:
    assert sl.normalize_path("/events/a/") == "events/a"
    assert sl.normalize_pattern("/events/**/") == "events/**"
    with pytest.raises(sl.SubscriptionError):
        sl.normalize_pattern("a//b")


# --- configuration -------------------------------------------------------------------------


WEBHOOK = {"type": "webhook", "pattern": "events/*", "webhook": {"url": "https://x.example/h"}}


def test_config_defaults_and_normalization() -> None:
    config = sl.parse_config(
        {**WEBHOOK, "streams": ["/b/", "a", "b"], "wake_stream": "ignored"}, max_streams=10
    )
    assert config.type == "webhook"
    assert config.streams == ("a", "b")
    assert config.lease_ttl_ms == sl.DEFAULT_LEASE_MS
    assert config.wake_stream is None  # a webhook's config has no wake stream
    assert config.description is None
    pull = sl.parse_config(
        {"type": "pull-wake", "streams": ["x"], "wake_stream": "/wake/pool", "lease_ttl_ms": 1e3},
        max_streams=10,
    )
    assert pull.wake_stream == "wake/pool" and pull.webhook_url is None
    assert pull.lease_ttl_ms == 1000 and isinstance(pull.lease_ttl_ms, int)


def test_config_hash_is_of_the_normalized_configuration() -> None:
    a = sl.parse_config({**WEBHOOK, "streams": ["b", "a", "a"]}, max_streams=10)
    b = sl.parse_config(
        {**WEBHOOK, "streams": ["/a", "b/"], "pattern": "/events/*"}, max_streams=10
    )
    assert a.hash() == b.hash()
    for change in (
        {"pattern": "events/**"},
        {"streams": ["a"]},
        {"webhook": {"url": "https://x.example/other"}},
        {"lease_ttl_ms": 1000},
        {"description": "d"},
    ):
        other = sl.parse_config({**WEBHOOK, "streams": ["a", "b"], **change}, max_streams=10)
        assert other.hash() != a.hash(), change


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"type": "other", "pattern": "a"},
        {"type": "webhook", "webhook": {"url": "https://x.example/"}},  # no pattern or streams
        {"type": "webhook", "pattern": "a"},  # no url
        {"type": "webhook", "pattern": "a", "webhook": {"url": ""}},
        {"type": "pull-wake", "pattern": "a"},  # no wake stream
        {**WEBHOOK, "lease_ttl_ms": 999},
        {**WEBHOOK, "lease_ttl_ms": 600_001},
        {**WEBHOOK, "lease_ttl_ms": True},
        {**WEBHOOK, "lease_ttl_ms": 1000.5},
        {**WEBHOOK, "lease_ttl_ms": "1000"},
        {**WEBHOOK, "lease_ttl_ms": float("inf")},
        {**WEBHOOK, "streams": "a"},
        {**WEBHOOK, "streams": [1]},
        {**WEBHOOK, "streams": ["a", "b", "c"]},  # more than max_streams
        {**WEBHOOK, "pattern": 3},
        {**WEBHOOK, "description": 3},
        {**WEBHOOK, "description": "x" * 1025},
    ],
)
def test_config_refusals(body: object) -> None:
    with pytest.raises(sl.SubscriptionError) as exc:
        sl.parse_config(body, max_streams=2)
    assert (exc.value.status, exc.value.code) == (400, "INVALID_REQUEST")


def test_stream_lists_and_workers() -> None:
    assert sl.parse_stream_list({"streams": ["/b", "a", "b"]}, max_streams=5) == ["a", "b"]
    for bad in ({}, {"streams": []}, {"streams": [""]}, {"streams": ["a", "b", "c"]}, []):
        with pytest.raises(sl.SubscriptionError):
            sl.parse_stream_list(bad, max_streams=2)
    assert sl.parse_worker({"worker": "w1"}) == "w1"
    for bad_worker in ({}, {"worker": ""}, {"worker": 1}, {"worker": "x" * 257}):
        with pytest.raises(sl.SubscriptionError):
            sl.parse_worker(bad_worker)


# --- callbacks, acks, releases --------------------------------------------------------------


def test_wake_requests() -> None:
    request = sl.parse_wake_request(
        {
            "wake_id": "w_1",
            "generation": 7,
            "acks": [
                {"stream": "/events/a", "offset": "0000000000000000_0000000000000042"},
                {"path": "events/b", "offset": "0000000000000001_0000000000000003"},
            ],
            "done": True,
        }
    )
    assert request == sl.WakeRequest("w_1", 7, (("events/a", 42), ("events/b", 3)), True)
    # Anything but a literal true is not done; a missing wake id or generation never
    # matches a wake (it is fenced, not a 400).
    loose = sl.parse_wake_request({"done": "true", "generation": True})
    assert loose == sl.WakeRequest("", -1, (), False)
    assert sl.parse_wake_request({}).acks == ()


@pytest.mark.parametrize("offset", ["-1", "now", "42", "0000000000000000_42", ""])
def test_ack_offsets_must_be_offsets(offset: str) -> None:
    with pytest.raises(sl.SubscriptionError) as exc:
        sl.parse_wake_request({"acks": [{"stream": "a", "offset": offset}]})
    assert (exc.value.status, exc.value.code) == (409, "INVALID_OFFSET")


@pytest.mark.parametrize(
    "body",
    [[], {"acks": {}}, {"acks": [1]}, {"acks": [{"stream": "a"}]}, {"acks": [{"offset": "x"}]}],
)
def test_malformed_wake_requests(body: object) -> None:
    with pytest.raises(sl.SubscriptionError) as exc:
        sl.parse_wake_request(body)
    assert exc.value.status == 400


# --- webhook URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/a?b=c", "https://8.8.8.8/h", "https://[2001:4860::8888]/h"],
)
def test_public_https_webhooks_pass(url: str) -> None:
    sl.check_webhook_url(url, allow_localhost=False)


@pytest.mark.parametrize(
    "url", ["http://localhost:8080/h", "http://127.0.0.1/h", "http://127.0.0.9:1/h"]
)
def test_localhost_only_in_development(url: str) -> None:
    sl.check_webhook_url(url, allow_localhost=True)
    with pytest.raises(sl.SubscriptionError, match="DS_WEBHOOK_ALLOW_LOCALHOST"):
        sl.check_webhook_url(url, allow_localhost=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",  # the conformance suite's
        "http://example.com/h",  # http, not local
        "http://127.0.1.1/h",  # not 127.0.0.x
        "https://10.1.2.3/h",
        "https://172.16.0.1/h",
        "https://192.168.1.1/h",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/h",
        "https://0.0.0.0/h",
        "https://224.0.0.1/h",
        "https://240.0.0.1/h",
        "https://[::1]/h",
        "https://[fe80::1]/h",
        "https://[fc00::1]/h",
        "https://[::ffff:10.0.0.1]/h",
        "https://[2002:a00:1::]/h",  # 6to4 of 10.0.0.1
        "https://2130706433/h",  # 127.0.0.1 as one number
        "https://0x7f.1/h",
        "https://127.1/h",
        "https://012.1/h",
        "https://localhost/h",  # not the development exception without it
        "https://printer.local/h",
        "https://metadata.google.internal/h",
        "https://a.localhost/h",
        "ftp://example.com/",
        "javascript:alert(1)",
        "https://user:pw@example.com/h",
        "https://example.com:99999/h",
        "https:///h",
        "https://" + "a" * 2050 + ".com/",
    ],
)
def test_unsafe_webhooks_are_refused(url: str) -> None:
    with pytest.raises(sl.SubscriptionError) as exc:
        sl.check_webhook_url(url, allow_localhost=False)
    assert (exc.value.status, exc.value.code) == (400, "WEBHOOK_URL_REJECTED")


def test_numeric_hosts_are_addresses() -> None:
    assert sl.literal_address("2130706433") == ipaddress.IPv4Address("127.0.0.1")
    assert sl.literal_address("0x7f.0.0.1") == ipaddress.IPv4Address("127.0.0.1")
    assert sl.literal_address("[::1]") == ipaddress.IPv6Address("::1")
    assert sl.literal_address("cafe.de") is None
    assert sl.literal_address("example.com") is None


def test_resolved_addresses() -> None:
    ip = ipaddress.ip_address
    assert sl.address_allowed(ip("93.184.216.34"), dev_local=False)
    assert not sl.address_allowed(ip("127.0.0.1"), dev_local=False)
    assert sl.address_allowed(ip("127.0.0.1"), dev_local=True)
    assert sl.address_allowed(ip("::1"), dev_local=True)
    assert not sl.address_allowed(ip("10.0.0.1"), dev_local=True)  # dev allows loopback only
    assert not sl.address_allowed(ip("::ffff:192.168.0.1"), dev_local=False)
    assert not sl.address_allowed(ip("::ffff:127.0.0.1"), dev_local=False)


def test_development_exception_follows_the_settings() -> None:
    assert not sl.allow_localhost(settings())
    assert sl.allow_localhost(settings(auth_dev_mode=True))
    assert sl.allow_localhost(settings(ds_webhook_allow_localhost=True))


# --- links -----------------------------------------------------------------------------------


def test_links_as_the_client_reached_us() -> None:
    headers = {"host": "h:8080"}
    base = sl.request_base(headers, "", "/streams/")
    assert base == "http://h:8080/streams/"
    forwarded = {"host": "in", "x-forwarded-proto": "https", "x-forwarded-host": "pub.example"}
    assert sl.request_base(forwarded, "", "/streams/") == "https://pub.example/streams/"
    assert sl.request_base(headers, "https://p.example/s", "/streams/") == "https://p.example/s/"
    assert sl.control_url(base, "v1/stream", "jwks.json") == (
        "http://h:8080/streams/v1/stream/__ds/jwks.json"
    )
    assert sl.control_url(base, "", "subscriptions", "a b/c", "callback") == (
        "http://h:8080/streams/__ds/subscriptions/a%20b%2Fc/callback"
    )
    info = sl.stream_info("events/a", "ge", 3, 5)
    assert info == {
        "path": "events/a",
        "link_type": "explicit",
        "acked_offset": "0000000000000000_0000000000000003",
        "tail_offset": "0000000000000000_0000000000000005",
        "has_pending": True,
    }
    assert sl.stream_info("x", "g", 5)["link_type"] == "glob"


# --- tokens ----------------------------------------------------------------------------------


def test_tokens_round_trip_and_refuse_tampering() -> None:
    key = sl.derive_key(SECRET, "tokens")
    token = sl.WakeToken(sl.CALLBACK, "alice", "s_00ab", 3, "w_1", 2_000)
    raw = sl.make_token(key, token)
    assert sl.read_token(key, raw, now_s=1_000) == token
    with pytest.raises(sl.SubscriptionError) as exc:
        sl.read_token(key, raw, now_s=2_001)
    assert (exc.value.status, exc.value.code) == (401, "TOKEN_EXPIRED")
    payload, sig = raw.split(".")
    claims = json.loads(_unb64(payload))
    claims["g"] = 4
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for bad in (f"{forged}.{sig}", raw + "x", "x", "", ".", payload):
        with pytest.raises(sl.SubscriptionError) as exc:
            sl.read_token(key, bad, now_s=1_000)
        assert exc.value.code == "TOKEN_INVALID"
    with pytest.raises(sl.SubscriptionError):
        sl.read_token(sl.derive_key(SECRET, "other"), raw, now_s=1_000)


def test_bearer() -> None:
    assert sl.bearer({"authorization": "Bearer abc"}) == "abc"
    assert sl.bearer({"authorization": "bearer  abc "}) == "abc"
    assert sl.bearer({"authorization": "Basic abc"}) is None
    assert sl.bearer({"authorization": "Bearer "}) is None
    assert sl.bearer({}) is None


def test_derived_keys_differ_by_purpose_and_secret() -> None:
    assert sl.derive_key(SECRET, "a") == sl.derive_key(SECRET, "a")
    assert sl.derive_key(SECRET, "a") != sl.derive_key(SECRET, "b")
    assert sl.derive_key(SECRET, "a") != sl.derive_key("t" * 40, "a")
    assert len(sl.derive_key(SECRET, "a")) == 32


# --- webhook signatures ------------------------------------------------------------------------

# RFC 8037 appendix A: an Ed25519 key, and its RFC 7638 thumbprint.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_signing_key_jwk_and_kid() -> None:
    key = sl.SigningKey(_unb64(RFC8037_D))
    assert key.x == RFC8037_X
    assert key.kid == "ds_" + RFC8037_THUMBPRINT
    assert key.jwk() == {
        "kty": "OKP",
        "crv": "Ed25519",
        "kid": key.kid,
        "use": "sig",
        "alg": "EdDSA",
        "x": RFC8037_X,
    }


def test_webhook_signature_verifies_with_the_published_key() -> None:
    key = sl.SigningKey.from_settings(settings())
    body = b'{"subscription_id":"s"}'
    header = key.signature(body, 1_778_324_210)
    m = re.fullmatch(r"t=(\d+),kid=([^,]+),ed25519=([A-Za-z0-9_-]+)", header)
    assert m is not None and m[1] == "1778324210" and m[2] == key.kid
    public = Ed25519PublicKey.from_public_bytes(_unb64(key.jwk()["x"]))
    public.verify(_unb64(m[3]), b"1778324210." + body)  # raises if it does not verify


def test_signing_key_is_the_same_on_every_node() -> None:
    one = sl.SigningKey.from_settings(settings())
    assert sl.SigningKey.from_settings(settings()).kid == one.kid
    assert sl.SigningKey.from_settings(Settings(jwt_secret="t" * 40)).kid != one.kid
    explicit = sl.SigningKey.from_settings(settings(ds_webhook_signing_key=RFC8037_D))
    assert explicit.kid == "ds_" + RFC8037_THUMBPRINT
    for bad in ("not base64!", "YWJj"):
        with pytest.raises(ValueError, match="DS_WEBHOOK_SIGNING_KEY"):
            sl.SigningKey.from_settings(settings(ds_webhook_signing_key=bad))


# --- delivery --------------------------------------------------------------------------------


def test_retry_backoff() -> None:
    rng = random.Random(1)
    for attempts, base in ((1, 1_000), (2, 2_000), (3, 4_000), (6, 32_000), (7, 60_000)):
        for _ in range(50):
            delay = sl.retry_delay_ms(attempts, rng)
            assert base * 0.8 <= delay <= base * 1.2, (attempts, delay)
    assert sl.retry_delay_ms(10_000, rng) <= 72_000


def test_webhook_answers() -> None:
    assert sl.webhook_done(b'{"done": true}')
    for answer in (b"", b"{}", b'{"done": "true"}', b"[true]", b"not json", b'{"done": 1}'):
        assert not sl.webhook_done(answer)


def test_wake_event() -> None:
    event = json.loads(sl.wake_event("sub-1", "events/a", 7, 1778324210000))
    assert event == {
        "type": "wake",
        "subscription_id": "sub-1",
        "stream": "events/a",
        "generation": 7,
        "ts": 1778324210000,
    }


def test_logs_show_no_path_or_query() -> None:
    assert sl.url_for_log("https://h.example/secret/path?token=x") == "https://h.example"


# --- start-up and keys ---------------------------------------------------------------------------


def test_startup_problems() -> None:
    assert sl.startup_problems(settings(), "0.0.0.0", loopback=False) == []
    assert (
        sl.startup_problems(settings(ds_webhook_allow_localhost=True), "127.0.0.1", loopback=True)
        == []
    )
    problems = sl.startup_problems(
        settings(ds_webhook_allow_localhost=True), "0.0.0.0", loopback=False
    )
    assert len(problems) == 1 and "DS_WEBHOOK_ALLOW_LOCALHOST" in problems[0]
    assert (
        "DS_WEBHOOK_SIGNING_KEY"
        in sl.startup_problems(settings(ds_webhook_signing_key="YWJj"), "127.0.0.1", loopback=True)[
            0
        ]
    )
    assert (
        "DS_PUBLIC_URL"
        in sl.startup_problems(settings(ds_public_url="ftp://x"), "127.0.0.1", loopback=True)[0]
    )
    assert (
        "DS_PUBLIC_URL"
        in sl.startup_problems(
            settings(ds_public_url="http://x.example/streams/"), "0.0.0.0", loopback=False
        )[0]
    )


def test_subscription_keys_share_the_users_bucket() -> None:
    keys = Keys("p:", buckets=64)
    sid = keys.ds_sub_id("alice", "v1/stream", "sub-1")
    assert sid != keys.ds_sub_id("bob", "v1/stream", "sub-1")
    assert sid != keys.ds_sub_id("alice", "v2", "sub-1")
    tag = keys.ds_user_streams("alice").split(":", 2)[1]
    bucket = keys.bucket_of_message(sid)
    for key in (
        keys.ds_sub(sid),
        keys.ds_sub_links(sid),
        keys.ds_user_subs("alice"),
        keys.ds_subs_due(bucket),
        keys.ds_meta(keys.ds_stream_id("alice", "v1/stream/x")),
    ):
        assert key.startswith("p:") and key.split(":", 2)[1] == tag, key
    # The scripts build a subscription's keys from the bucket's prefix (lua/lib/ds_sub.lua).
    assert keys.ds_sub(sid) == f"{keys.ds_prefix(sid)}ds:sub:{sid}"
    assert keys.ds_sub_links(sid) == f"{keys.ds_prefix(sid)}ds:sub:{sid}:links"


def test_scripts_load_with_their_libraries() -> None:
    for script in (DS_SUB_PUT, DS_SUB_APPEND, DS_SUB_ACK):
        assert "local function sub_rewake" in script.source
        assert "local function ds_load" in script.source
    assert DS_SUB_APPEND.signature.rest == "subs"


# --- the call's target: resolved, checked, pinned ------------------------------------------------


def _subscriptions(**values: object) -> Subscriptions:
    async def respond(send: object, status: int, headers: object, body: bytes) -> None:
        raise AssertionError("no response in these tests")

    return Subscriptions(
        settings(**values),
        cast(DurableStore, None),
        authenticate=lambda scope: "u",
        respond=respond,
    )


@pytest.fixture
async def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Host name -> the addresses the (faked) resolver gives."""
    table: dict[str, list[str]] = {}

    async def getaddrinfo(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        if host not in table:
            raise socket.gaierror("unknown host")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return table


async def test_a_public_name_is_pinned_to_its_address(resolver: dict[str, list[str]]) -> None:
    resolver["hooks.example.com"] = ["93.184.216.34"]
    target, host, extensions = await _subscriptions()._pin("https://hooks.example.com/a?b=1")
    assert target == "https://93.184.216.34/a?b=1"
    assert host == "hooks.example.com"
    assert extensions == {"sni_hostname": "hooks.example.com"}  # TLS checks the name
    resolver["h.example"] = ["2606:2800:220:1::1"]
    target, host, _ = await _subscriptions()._pin("https://h.example:8443/")
    assert (target, host) == ("https://[2606:2800:220:1::1]:8443/", "h.example:8443")


@pytest.mark.parametrize(
    "addresses",
    [["127.0.0.1"], ["10.0.0.5"], ["93.184.216.34", "192.168.0.1"], ["169.254.169.254"]],
)
async def test_a_name_resolving_to_a_local_address_is_refused(
    resolver: dict[str, list[str]], addresses: list[str]
) -> None:
    resolver["rebind.example.com"] = addresses
    with pytest.raises(sl.SubscriptionError, match="refused address"):
        await _subscriptions()._pin("https://rebind.example.com/h")


async def test_localhost_in_development_only(resolver: dict[str, list[str]]) -> None:
    resolver["localhost"] = ["127.0.0.1"]
    target, host, extensions = await _subscriptions(auth_dev_mode=True)._pin("http://localhost:9/h")
    assert (target, host, extensions) == ("http://127.0.0.1:9/h", "localhost:9", {})
    with pytest.raises(sl.SubscriptionError):
        await _subscriptions()._pin("http://localhost:9/h")
    # The URL is checked again at every call: a setting turned off since refuses it.
    with pytest.raises(sl.SubscriptionError):
        await _subscriptions()._pin("http://127.0.0.1:9/h")
