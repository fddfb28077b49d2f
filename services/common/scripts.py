"""Lua scripts as files in `lua/`, called with named keys and args.

Every script starts by binding each KEYS/ARGV slot it uses to a named local, in
order (several to a line), and may take the rest of ARGV as one table:

    local lease, stream = KEYS[1], KEYS[2]
    local token = ARGV[1]
    local fields = {unpack(ARGV, 2)}

`LuaScript` reads those names from the file, and a call passes keys and args by the
same names: a missing, extra or misspelt name raises before anything reaches Redis,
so a call site and its script cannot drift apart silently.

Scripts cannot call each other, so code they share lives in `lua/lib/` and a script
takes it in with a line of its own after its bindings:

    -- #include outbox

which is replaced, when the script is loaded, by the text of `lua/lib/outbox.lua`
(a library defines local functions and uses no KEYS/ARGV: its callers pass them).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from services.common.errors import StorageError

_BINDING = re.compile(r"^local ([\w, ]+) = ((?:KEYS|ARGV)\[\d+\](?:, (?:KEYS|ARGV)\[\d+\])*)\s*$")
_SLOT = re.compile(r"(KEYS|ARGV)\[(\d+)\]")
_REST = re.compile(r"^local (\w+) = \{unpack\(ARGV, (\d+)\)\}\s*$")
_INCLUDE = re.compile(r"^--\s*#include\s+(\S+)\s*$")
_LUA = resources.files("services.common.lua")

Scalar = str | int | float


class ScriptSignatureError(ValueError):
    """A script's header is malformed, or a call's names do not match it."""


class ScriptIncludeError(ValueError):
    """A script includes a library that does not exist, or includes one out of place."""


def read_lib(lib: str) -> str | None:
    """The text of `lua/lib/<lib>.lua`, or None if there is no such library."""
    path = _LUA.joinpath("lib").joinpath(f"{lib}.lua")
    return path.read_text() if re.fullmatch(r"\w+", lib) and path.is_file() else None


def expand_includes(name: str, source: str, read: Callable[[str], str | None] = read_lib) -> str:
    """Replace each `-- #include <lib>` line by the library's text (`read(lib)`).

    An include must follow every KEYS/ARGV binding, and a library includes no other."""
    lines: list[str] = []
    included: str | None = None
    for line in source.splitlines(keepends=True):
        if m := _INCLUDE.match(line):
            included = m[1]
            text = read(included)
            if text is None:
                raise ScriptIncludeError(
                    f"{name}.lua: unknown include {included!r} (no lua/lib/{included}.lua)"
                )
            if any(_INCLUDE.match(t) for t in text.splitlines()):
                raise ScriptIncludeError(f"{name}.lua: {included!r} includes another library")
            lines.append(text if text.endswith("\n") else text + "\n")
        elif included is not None and (_BINDING.match(line) or _REST.match(line)):
            raise ScriptIncludeError(
                f"{name}.lua: a binding follows the include of {included!r}: {line.strip()}"
            )
        else:
            lines.append(line)
    return "".join(lines)


@dataclass(frozen=True, slots=True)
class Signature:
    """The named KEYS and ARGV slots of a script, in slot order."""

    keys: tuple[str, ...]
    args: tuple[str, ...]
    rest: str | None
    """The name of the table that takes ARGV past the named args, if any."""


def parse_signature(name: str, source: str) -> Signature:
    """Read the bindings at the top of a script; slots must be numbered 1, 2, 3…"""
    slots: dict[str, list[tuple[int, str]]] = {"KEYS": [], "ARGV": []}
    rest: tuple[str, int] | None = None
    for line in source.splitlines():
        if m := _BINDING.match(line):
            names = [n.strip() for n in m[1].split(",")]
            refs = _SLOT.findall(m[2])
            if len(names) != len(refs):
                raise ScriptSignatureError(f"{name}.lua: names and slots differ in: {line}")
            for var, (table, index) in zip(names, refs, strict=True):
                slots[table].append((int(index), var))
        elif m := _REST.match(line):
            rest = (m[1], int(m[2]))
        elif "KEYS" in line or "ARGV" in line:
            raise ScriptSignatureError(f"{name}.lua: KEYS/ARGV used past the bindings: {line}")
    for table, bound in slots.items():
        if [i for i, _ in bound] != list(range(1, len(bound) + 1)):
            raise ScriptSignatureError(f"{name}.lua: {table} bindings are not 1..n in order")
    names = [n for bound in slots.values() for _, n in bound]
    if len(set(names)) != len(names):
        raise ScriptSignatureError(f"{name}.lua: a name is bound twice")
    if rest is not None and rest[1] != len(slots["ARGV"]) + 1:
        raise ScriptSignatureError(f"{name}.lua: the rest of ARGV must start after the last arg")
    return Signature(
        keys=tuple(n for _, n in slots["KEYS"]),
        args=tuple(n for _, n in slots["ARGV"]),
        rest=rest[0] if rest else None,
    )


class LuaScript:
    """One script of `services/common/lua`, loaded with importlib.resources, its
    includes expanded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = expand_includes(name, _LUA.joinpath(f"{name}.lua").read_text())
        self.signature = parse_signature(name, self.source)
        self._key_names = frozenset(self.signature.keys)
        self._arg_names = frozenset(self.signature.args)

    def bind(self, redis: Redis) -> BoundScript:
        return BoundScript(self, redis)

    def call_args(
        self, keys: Mapping[str, str], args: Mapping[str, Scalar], rest: Sequence[Scalar] = ()
    ) -> tuple[list[str], list[Scalar]]:
        """KEYS and ARGV in slot order; raises ScriptSignatureError on any name mismatch."""
        sig = self.signature
        # Compared as key views (no set built per call: this runs for every chunk).
        if keys.keys() != self._key_names:
            raise _mismatch(self.name, "keys", self._key_names, keys)
        if args.keys() != self._arg_names:
            raise _mismatch(self.name, "args", self._arg_names, args)
        if rest and sig.rest is None:
            raise ScriptSignatureError(f"{self.name}.lua takes no extra args")
        return [keys[n] for n in sig.keys], [args[n] for n in sig.args] + list(rest)


class BoundScript:
    """A script registered on a client; redis-py's errors leave it as StorageError."""

    def __init__(self, script: LuaScript, redis: Redis) -> None:
        self.script = script
        self._registered = redis.register_script(script.source)

    async def __call__(
        self,
        *,
        keys: Mapping[str, str],
        args: Mapping[str, Scalar],
        rest: Sequence[Scalar] = (),
    ) -> Any:
        key_list, arg_list = self.script.call_args(keys, args, rest)
        try:
            return await self._registered(keys=key_list, args=arg_list)
        except RedisError as exc:
            raise StorageError(f"{self.script.name}: {exc}") from exc


class CoalescedScript:
    """A script whose calls from many tasks go to Redis together: every call made in
    one turn of the event loop joins one pipeline (one write, one read), so a worker
    generating hundreds of answers sends their chunks in a few round trips, not one
    each. Each caller still gets its own reply, or its own StorageError.

    Calls are EVALSHA; a reply of NOSCRIPT (Redis restarted empty) loads the script
    and sends those calls again. A caller cancelled while its call waits does not take
    it back: the call may still run, as a cancel that lands after a command is sent."""

    def __init__(self, script: LuaScript, redis: Redis, max_batch: int = 512) -> None:
        self.script = script
        self._r = redis
        self._sha = hashlib.sha1(script.source.encode()).hexdigest()
        self._max_batch = max_batch
        self._queue: list[tuple[list[str], list[Scalar], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(
        self,
        *,
        keys: Mapping[str, str],
        args: Mapping[str, Scalar],
        rest: Sequence[Scalar] = (),
    ) -> Any:
        key_list, arg_list = self.script.call_args(keys, args, rest)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((key_list, arg_list, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"{self.script.name}-batch")
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # the other calls of this turn join the batch
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            try:
                replies = await self._send(batch)
            except Exception as exc:  # noqa: BLE001 - every waiting caller must hear
                # Not only redis-py's own errors: with a node killed mid-call the client
                # can raise others (uvloop's "unable to perform operation on TCPTransport
                # closed", a RuntimeError), and a caller left waiting would hang forever.
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(StorageError(f"{self.script.name}: {exc}"))
                continue
            for (*_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(StorageError(f"{self.script.name}: {reply}"))
                else:
                    future.set_result(reply)

    async def _send(self, batch: list[tuple[list[str], list[Scalar], Any]]) -> list[Any]:
        replies = await self._pipeline(batch)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self._r.script_load(self.script.source)
            again = await self._pipeline([batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, batch: list[tuple[list[str], list[Scalar], Any]]) -> list[Any]:
        # As a raw command: a Redis Cluster client refuses `pipe.evalsha` but routes a
        # raw EVALSHA by its keys (each call's keys are in one slot), a pipeline per node.
        async with self._r.pipeline(transaction=False) as pipe:
            for key_list, arg_list, _ in batch:
                pipe.execute_command("EVALSHA", self._sha, len(key_list), *key_list, *arg_list)
            return list(await pipe.execute(raise_on_error=False))


def _mismatch(
    script: str, what: str, expected: frozenset[str], got: Mapping[str, Any]
) -> ScriptSignatureError:
    missing = sorted(expected - set(got))
    extra = sorted(set(got) - expected)
    return ScriptSignatureError(f"{script}.lua {what}: missing {missing}, unexpected {extra}")


ACCEPT_CHAT = LuaScript("accept_chat")
APPEND_CHUNK = LuaScript("append_chunk")
FINISH_MESSAGE = LuaScript("finish_message")
LEASE_RENEW = LuaScript("lease_renew")
LEASE_RELEASE = LuaScript("lease_release")
SESSION_OPEN = LuaScript("session_open")
SESSION_RENAME = LuaScript("session_rename")
SESSION_DELETE = LuaScript("session_delete")
DS_CREATE = LuaScript("ds_create")
DS_APPEND = LuaScript("ds_append")
DS_READ = LuaScript("ds_read")
DS_DELETE = LuaScript("ds_delete")
# Subscriptions of durable streams (services/durable/subscriptions.py, lua/lib/ds_sub.lua).
DS_SUB_PUT = LuaScript("ds_sub_put")
DS_SUB_GET = LuaScript("ds_sub_get")
DS_SUB_DELETE = LuaScript("ds_sub_delete")
DS_SUB_LINK = LuaScript("ds_sub_link")
DS_SUB_UNLINK = LuaScript("ds_sub_unlink")
DS_SUB_APPEND = LuaScript("ds_sub_append")
DS_SUB_TICK = LuaScript("ds_sub_tick")
DS_SUB_DELIVERED = LuaScript("ds_sub_delivered")
DS_SUB_CLAIM = LuaScript("ds_sub_claim")
DS_SUB_ACK = LuaScript("ds_sub_ack")
DS_SUB_RELEASE = LuaScript("ds_sub_release")
