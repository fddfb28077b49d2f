"""The Lua scripts: each file's header parses into a signature, Redis compiles the
script, and a call whose key or arg names do not match the header is refused
before anything reaches Redis."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from importlib import resources

import pytest
from redis.asyncio import Redis

from services.common import scripts
from services.common.errors import StorageError
from services.common.keys import Keys
from services.common.scripts import (
    LuaScript,
    ScriptIncludeError,
    ScriptSignatureError,
    Signature,
    expand_includes,
    parse_signature,
)
from tests.integration.redis_helpers import unreachable_redis

pytestmark = pytest.mark.integration

SCRIPT_NAMES = sorted(
    f.name.removesuffix(".lua")
    for f in resources.files("services.common.lua").iterdir()
    if f.name.endswith(".lua")
)


def test_the_lua_directory_has_scripts() -> None:
    assert {"accept_chat", "append_chunk", "finish_message"} <= set(SCRIPT_NAMES)


@pytest.fixture
async def offline() -> AsyncIterator[Redis]:
    """A client that cannot reach any server: a call that touched Redis would fail
    with StorageError, so a ScriptSignatureError proves nothing was sent."""
    client = unreachable_redis()
    yield client
    await client.aclose()


def good_names(script: LuaScript) -> tuple[dict[str, str], dict[str, str], list[str]]:
    sig = script.signature
    keys = {n: f"key-{n}" for n in sig.keys}
    args = {n: f"arg-{n}" for n in sig.args}
    rest = ["f", "v"] if sig.rest else []
    return keys, args, rest


@pytest.mark.parametrize("name", SCRIPT_NAMES)
async def test_every_script_parses_and_redis_compiles_it(name: str, redis: Redis) -> None:
    script = LuaScript(name)

    assert script.signature.keys, f"{name}.lua binds no KEYS"
    # The module has a ready-made instance for it, with the same signature.
    assert getattr(scripts, name.upper()).signature == script.signature
    sha = await redis.script_load(script.source)
    assert sha == hashlib.sha1(script.source.encode()).hexdigest()
    assert await redis.script_exists(sha) == [True]


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_call_args_puts_names_in_slot_order(name: str) -> None:
    script = LuaScript(name)
    keys, args, rest = good_names(script)

    key_list, arg_list = script.call_args(
        dict(reversed(keys.items())), dict(reversed(args.items())), rest
    )

    assert key_list == [f"key-{n}" for n in script.signature.keys]
    assert arg_list == [f"arg-{n}" for n in script.signature.args] + rest


CASES = ["missing-key", "extra-key", "misspelt-key", "missing-arg", "extra-arg", "misspelt-arg"]
#: Each script with each case that applies to it (a script that binds no ARGV, such as
#: ds_sub_get, has no arg to leave out or misspell; an extra one is still refused).
SCRIPT_CASES = [
    (name, case)
    for name in SCRIPT_NAMES
    for case in CASES
    if LuaScript(name).signature.args
    or case in ("missing-key", "extra-key", "misspelt-key")
    or case == "extra-arg"
]


@pytest.mark.parametrize(("name", "case"), SCRIPT_CASES)
async def test_a_name_mismatch_raises_before_touching_redis(
    name: str, case: str, offline: Redis
) -> None:
    script = LuaScript(name)
    keys, args, rest = good_names(script)
    what, _, table = case.partition("-")
    names = keys if table == "key" else args
    first = next(iter(names), "a")
    if what in ("missing", "misspelt"):
        del names[first]
    if what in ("extra", "misspelt"):
        names[first + "x" if what == "misspelt" else "unexpected"] = "v"

    with pytest.raises(ScriptSignatureError, match=f"{name}.lua {table}s"):
        await script.bind(offline)(keys=keys, args=args, rest=rest)


@pytest.mark.parametrize("name", [n for n in SCRIPT_NAMES if LuaScript(n).signature.rest is None])
async def test_extra_args_to_a_script_without_a_rest_table_raise(name: str, offline: Redis) -> None:
    script = LuaScript(name)
    keys, args, _ = good_names(script)

    with pytest.raises(ScriptSignatureError, match="takes no extra args"):
        await script.bind(offline)(keys=keys, args=args, rest=["surplus"])


@pytest.mark.parametrize("name", SCRIPT_NAMES)
async def test_a_matching_call_reaches_redis(name: str, offline: Redis) -> None:
    script = LuaScript(name)
    keys, args, rest = good_names(script)

    with pytest.raises(StorageError, match=name):
        await script.bind(offline)(keys=keys, args=args, rest=rest)


# --- parse_signature (pure) ------------------------------------------------------------


def test_parse_signature_reads_one_or_several_bindings_a_line() -> None:
    source = (
        "-- header comment\n"
        "local lease, stream = KEYS[1], KEYS[2]\n"
        "local meta = KEYS[3]\n"
        "local token, seq = ARGV[1], ARGV[2]\n"
        "local fields = {unpack(ARGV, 3)}\n"
        "\n"
        "return redis.call('GET', lease)\n"
    )

    assert parse_signature("s", source) == Signature(
        keys=("lease", "stream", "meta"), args=("token", "seq"), rest="fields"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("local b = KEYS[2]\nlocal a = KEYS[1]\n", "KEYS bindings are not 1..n"),
        ("local a, b = KEYS[2], KEYS[1]\n", "KEYS bindings are not 1..n"),
        ("local a = KEYS[1]\nlocal c = KEYS[3]\n", "KEYS bindings are not 1..n"),
        ("local a = KEYS[1]\nlocal t = ARGV[2]\n", "ARGV bindings are not 1..n"),
        ("local a = KEYS[1]\nlocal a = ARGV[1]\n", "bound twice"),
        ("local a, b = KEYS[1]\n", "names and slots differ"),
        ("local a = KEYS[1], KEYS[2]\n", "names and slots differ"),
        (
            "local t = ARGV[1]\nlocal rest = {unpack(ARGV, 3)}\n",
            "rest of ARGV must start after the last arg",
        ),
        (
            "local t, u = ARGV[1], ARGV[2]\nlocal rest = {unpack(ARGV, 2)}\n",
            "rest of ARGV must start after the last arg",
        ),
        (
            "local a = KEYS[1]\nreturn redis.call('GET', KEYS[1])\n",
            "KEYS/ARGV used past the bindings",
        ),
    ],
    ids=[
        "keys-out-of-order",
        "keys-out-of-order-one-line",
        "keys-gap",
        "args-not-from-1",
        "bound-twice",
        "more-names-than-slots",
        "more-slots-than-names",
        "rest-after-a-gap",
        "rest-overlaps-args",
        "slot-used-in-the-body",
    ],
)
def test_parse_signature_rejects_a_malformed_header(source: str, message: str) -> None:
    with pytest.raises(ScriptSignatureError, match=message):
        parse_signature("bad", source)


# --- includes ----------------------------------------------------------------------------

LUA = resources.files("services.common.lua")


def test_libraries_are_not_scripts() -> None:
    assert LUA.joinpath("lib").joinpath("outbox.lua").is_file()
    assert "outbox" not in SCRIPT_NAMES


@pytest.mark.parametrize("name", ["accept_chat", "finish_message", "session_open"])
async def test_an_include_is_replaced_by_the_library_after_the_bindings(
    name: str, redis: Redis
) -> None:
    raw = LUA.joinpath(f"{name}.lua").read_text()
    lib = LUA.joinpath("lib").joinpath("outbox.lua").read_text()

    source = LuaScript(name).source

    assert "-- #include outbox\n" in raw
    assert not any(line.startswith("-- #include") for line in source.splitlines())
    assert lib in source
    lines = source.splitlines()
    defined = lines.index("local function add_event(outbox, dropped, max, event_json)")
    last_binding = max(i for i, line in enumerate(lines) if "KEYS[" in line or "ARGV" in line)
    called = next(i for i, line in enumerate(lines) if "add_event(outbox, outbox_dropped" in line)
    assert last_binding < defined < called
    # The header parses as before, and Redis compiles the whole.
    assert parse_signature(name, raw) == parse_signature(name, source)
    sha = await redis.script_load(source)
    assert await redis.script_exists(sha) == [True]


async def test_the_outbox_library_adds_up_to_max_events_then_counts_drops(
    redis: Redis, keys: Keys
) -> None:
    source = expand_includes(
        "outbox_test",
        "local outbox, dropped = KEYS[1], KEYS[2]\n"
        "local max, event_json = ARGV[1], ARGV[2]\n"
        "\n"
        "-- #include outbox\n"
        "\n"
        "add_event(outbox, dropped, max, event_json)\n",
    )
    outbox, dropped = keys.events_outbox(), keys.events_outbox_dropped()

    for event in ("e1", "e2", "e3"):
        await redis.eval(source, 2, outbox, dropped, 2, event)
    await redis.eval(source, 2, outbox, dropped, 0, "off")

    assert [f["event"] for _, f in await redis.xrange(outbox)] == ["e1", "e2"]
    assert await redis.get(dropped) == "1"


LIBS = {"one": "local function one() return 1 end\n", "nested": "-- #include one\n"}


def test_includes_expand_in_place() -> None:
    source = "local a = KEYS[1]\n-- #include one\nreturn one()\n"

    assert expand_includes("s", source, LIBS.get) == (
        "local a = KEYS[1]\nlocal function one() return 1 end\nreturn one()\n"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "local a = KEYS[1]\n-- #include nope\n",
            r"s.lua: unknown include 'nope' \(no lua/lib/nope.lua\)",
        ),
        ("local a = KEYS[1]\n-- #include ../one\n", "unknown include '../one'"),
        ("-- #include one\nlocal a = KEYS[1]\n", "a binding follows the include of 'one'"),
        ("local a = ARGV[1]\n-- #include one\nlocal r = {unpack(ARGV, 2)}\n", "a binding follows"),
        ("local a = KEYS[1]\n-- #include nested\n", "'nested' includes another library"),
    ],
    ids=["unknown", "not-a-name", "before-the-bindings", "before-the-rest", "nested"],
)
def test_a_bad_include_raises(source: str, message: str) -> None:
    with pytest.raises(ScriptIncludeError, match=message):
        expand_includes("s", source, LIBS.get)


def test_an_unknown_library_raises_by_default() -> None:
    with pytest.raises(ScriptIncludeError, match="unknown include 'no_such_lib'"):
        expand_includes("s", "local a = KEYS[1]\n-- #include no_such_lib\n")


def test_a_library_using_keys_or_argv_is_refused_by_the_signature() -> None:
    source = expand_includes(
        "s", "local a = KEYS[1]\n-- #include bad\n", {"bad": "redis.call('GET', KEYS[1])\n"}.get
    )
    with pytest.raises(ScriptSignatureError, match="KEYS/ARGV used past the bindings"):
        parse_signature("s", source)


# --- CoalescedScript ---------------------------------------------------------------------


async def _renew_calls(script: scripts.CoalescedScript, keys: Keys, n: int) -> list[object]:
    """n lease renewals from n tasks at once: each with its own lease and token."""
    return list(
        await asyncio.gather(
            *(
                script(
                    keys={"lease": keys.message_lease(f"m{i}"), "meta": keys.message_meta(f"m{i}")},
                    args={"token": f"t{i}", "ttl_ms": 30_000},
                )
                for i in range(n)
            )
        )
    )


async def test_coalesced_calls_of_one_turn_go_in_one_pipeline_each_with_its_reply(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = scripts.CoalescedScript(scripts.LEASE_RENEW, redis)
    sizes: list[int] = []
    pipeline = script._pipeline

    async def counted(batch: list[tuple[list[str], list[scripts.Scalar], object]]) -> list[object]:
        sizes.append(len(batch))
        return await pipeline(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(script, "_pipeline", counted)
    for i in range(0, 50, 2):  # every other lease is held by its own token
        await redis.set(keys.message_lease(f"m{i}"), f"t{i}", px=1_000)
    for i in range(1, 50, 2):  # the others by somebody else
        await redis.set(keys.message_lease(f"m{i}"), "other", px=1_000)

    replies = await _renew_calls(script, keys, 50)

    assert replies == [1 if i % 2 == 0 else 0 for i in range(50)]
    assert sizes == [50]  # one round trip for all fifty
    assert await redis.pttl(keys.message_lease("m0")) > 1_000  # renewed
    assert await redis.pttl(keys.message_lease("m1")) <= 1_000  # not


async def test_coalesced_calls_load_the_script_again_after_redis_lost_it(
    redis: Redis, keys: Keys
) -> None:
    script = scripts.CoalescedScript(scripts.LEASE_RENEW, redis)
    await redis.set(keys.message_lease("m0"), "t0", px=1_000)
    await redis.script_flush()  # as an emptied or restarted Redis

    assert await _renew_calls(script, keys, 3) == [1, 0, 0]


async def test_coalesced_calls_fail_alone_or_together_as_storage_errors(
    redis: Redis, keys: Keys
) -> None:
    script = scripts.CoalescedScript(scripts.LEASE_RENEW, redis)
    await redis.set(keys.message_lease("m0"), "t0", px=1_000)
    await redis.set(keys.message_lease("bad"), "t0")
    await redis.lpush(keys.message_meta("bad"), "not a hash")  # HGET on a list errors
    await redis.delete(keys.message_lease("bad"))

    good = script(
        keys={"lease": keys.message_lease("m0"), "meta": keys.message_meta("m0")},
        args={"token": "t0", "ttl_ms": 30_000},
    )
    bad = script(
        keys={"lease": keys.message_lease("bad"), "meta": keys.message_meta("bad")},
        args={"token": "t0", "ttl_ms": 30_000},
    )
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], StorageError) and "lease_renew" in str(results[1])

    offline = scripts.CoalescedScript(scripts.LEASE_RENEW, unreachable_redis())
    together = await asyncio.gather(
        *(_renew_calls(offline, keys, 1) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, StorageError) for r in together)
