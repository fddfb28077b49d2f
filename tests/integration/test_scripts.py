"""The Lua scripts: each file's header parses into a signature, Redis compiles the
script, and a call whose key or arg names do not match the header is refused
before anything reaches Redis."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from importlib import resources

import pytest
from redis.asyncio import Redis

from services.common import scripts
from services.common.errors import StorageError
from services.common.scripts import LuaScript, ScriptSignatureError, Signature, parse_signature
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
    assert script.signature.args, f"{name}.lua binds no ARGV"
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


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", SCRIPT_NAMES)
async def test_a_name_mismatch_raises_before_touching_redis(
    name: str, case: str, offline: Redis
) -> None:
    script = LuaScript(name)
    keys, args, rest = good_names(script)
    what, _, table = case.partition("-")
    names = keys if table == "key" else args
    first = next(iter(names))
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
