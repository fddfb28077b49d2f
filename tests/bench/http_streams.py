"""The `http` scenario of `make bench`: the Durable Streams HTTP interface, ours next to
the reference server, driven by the same client.

Targets (both speak the protocol of docs/durable-streams: PUT create, POST append, GET
`offset=...&live=sse`):

- **ours**: the cluster's gateways at `{public_url}/streams/{path}`, through nginx, each
  request with `Authorization: Bearer <JWT>` (HS256, the cluster's secret, sub + exp);
  CPU counted for the gateways, nginx and Redis.
- **reference**: `DurableStreamTestServer` from `@durable-streams/server`, pinned by the
  npm project tests/durable_streams (`npm ci` there), one node process on a free
  loopback port (started by its reference-server.mjs, stopped by pid), streams at its
  root, in memory, or file-backed (LMDB and append-only logs in the run directory) with
  `storage="file"`. It ignores the Authorization header, which is sent anyway: both
  targets get the same requests.

Two measurements, one after the other, each on streams of its own:

- **appends**: `writers` clients, each POSTing small JSON messages (about 70 bytes) to a
  stream of its own, one at a time (the next after the 204), for `append_s` seconds or
  `append_max` messages each. Then every stream is read back from the start (catch-up
  GETs): each acknowledged message must be there once, in order.
- **sse**: `sse_writers` streams, `sse_readers` readers spread over them, each following
  its stream with `offset=-1&live=sse` (connected before the first append). Each writer
  appends `sse_messages` messages as fast as it goes; every reader must receive every
  acknowledged message of its stream exactly once and in order, within DRAIN_TIMEOUT of
  the last append. Delivered messages/s counts every reader's copy.

A message is `{"w": writer, "s": seq, "t": monotonic send time, "x": pad}`: readers
check `s` (lost, duplicated, out of order, and `unacknowledged`: received but never
acknowledged, possible only after an append that failed) and take `t` for the delay from
append to delivery (same process, same clock).

The client is a lean HTTP/1.1 client on asyncio streams (keep-alive, Content-Length and
chunked bodies, an SSE parser), not httpx: on this machine httpx spends about ten times
the CPU per request that the reference server does, and capped the appends at about
1,000/s where this client does over 10,000/s, so it would measure itself. All clients
run in the orchestrator's process (uvloop), each on its own loopback source address
(nginx limits requests per address); `client_cpu_s` shows how busy that process was.
Every request has a deadline; 429 answers are counted (`rate_limited`) and the same
message is sent again after `Retry-After`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import resource
import secrets
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import uvloop

from deploy.spec import free_ports
from tests.bench import procstats
from tests.bench.baselines.procs import CHECKOUT, BaselineError, Processes, environment
from tests.bench.loadgen import Summary, summarize
from tests.bench.targets import DURABLE_STREAMS, Target, source_ip

JSON = "application/json"
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
"""Seconds one request (write, status, headers, body) may take."""
READY_TIMEOUT = 15.0
"""Seconds for every SSE reader to be connected before the writers start."""
DRAIN_TIMEOUT = 15.0
"""Seconds after the last append for every reader to have every message."""
SSE_MAX_S = 120.0
"""Bound on the sse phase's appends (they are counted, not timed, otherwise)."""
RETRY_MAX_S = 2.0
"""Cap on a 429's Retry-After wait, and the backoff after a failed SSE connect."""
ERROR_BACKOFF_S = 0.05
"""A writer's pause after a failed append (no hammering of a server that is down)."""
START_TIMEOUT = 30.0
PAD = "abcdefghij" * 2
WRITER_OCTET = 40
READER_OCTET = 60
"""Source addresses: writer n on source_ip(n, 40), reader n on source_ip(n, 60)."""

DS_DIR = CHECKOUT / "tests" / "durable_streams"
"""The npm project that pins @durable-streams/server; its reference-server.mjs starts
the server (PORT, DATA_DIR for file-backed storage, `ready <url>` once listening)."""

T = TypeVar("T")


class HttpScenarioError(RuntimeError):
    """A target refused the protocol (a create not answered 201/200, a read failing)."""


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes


class ProtocolError(Exception):
    """The server's bytes were not HTTP/1.1 as expected."""


class Connection:
    """One keep-alive HTTP/1.1 connection to `base_url`'s host, one request at a time,
    from `local_ip`. Opened on first use and again after the server closed it
    (`Connection: close`, an error). `headers` go with every request."""

    def __init__(self, base_url: str, local_ip: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"not an http://host:port URL: {base_url}")
        self.host, self.port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.local_ip = local_ip
        fixed = {"Host": f"{self.host}:{self.port}", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.opened = 0

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None:
            if not self._writer.is_closing():
                return self._reader, self._writer
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host, self.port, local_addr=(self.local_ip, 0), limit=2**20
            ),
            CONNECT_TIMEOUT,
        )
        self._reader, self._writer = reader, writer
        self.opened += 1
        return reader, writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    def _head(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        length = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT") else ""
        line = f"{method} {self.prefix}{path} HTTP/1.1\r\n{self._fixed}{extra}{length}\r\n"
        return line.encode() + body

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        """Send one request, read the whole response (REQUEST_TIMEOUT)."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader, writer = await self._open()
                writer.write(self._head(method, path, body, headers or {}))
                status, hdrs = await _read_head(reader)
                bodyless = method == "HEAD" or status in (204, 304) or status < 200
                data = b"" if bodyless else b"".join([c async for c in _read_body(reader, hdrs)])
        except BaseException:
            self.close()
            raise
        if hdrs.get("connection", "").lower() == "close" or (not bodyless and _until_eof(hdrs)):
            self.close()
        return Response(status, hdrs, data)

    async def stream(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[Response, AsyncIterator[bytes]]:
        """GET `path`; the response head (within REQUEST_TIMEOUT) and its body as it
        comes. The connection is the body's until the body ends or close()."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader, writer = await self._open()
                writer.write(self._head("GET", path, b"", headers or {}))
                status, hdrs = await _read_head(reader)
        except BaseException:
            self.close()
            raise
        return Response(status, hdrs, b""), _read_body(reader, hdrs)


def _until_eof(headers: dict[str, str]) -> bool:
    return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The body's bytes as they come: chunked, Content-Length, or up to EOF."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise ProtocolError(f"bad chunk size line {line[:40]!r}") from exc
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 2**16))
            if not data:
                raise ProtocolError("connection closed inside a Content-Length body")
            left -= len(data)
            yield data
    else:
        while data := await reader.read(2**16):
            yield data


class SseParser:
    """Server-Sent Events from bytes as they come: feed() returns the complete events
    (type, data) so far; `data:` lines of one event are joined with newlines."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        buf = (self._buf + data).replace(b"\r\n", b"\n")
        *blocks, self._buf = buf.split(b"\n\n")
        events = []
        for block in blocks:
            kind, lines = "message", []
            for line in block.decode().split("\n"):
                if not line or line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    kind = value
                elif name == "data":
                    lines.append(value)
            if lines:
                events.append((kind, "\n".join(lines)))
        return events


def _retry_after(resp: Response) -> float:
    try:
        return min(RETRY_MAX_S, max(0.05, float(resp.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


# --------------------------------------------------------------------------- checks


def exactly_once(acked: Iterable[int], received: Sequence[int]) -> dict[str, int]:
    """Compare what a writer had acknowledged with what a reader got, in its order:
    lost (acknowledged, never received), duplicated (extra copies), out_of_order
    (received after a higher seq), unacknowledged (received, never acknowledged)."""
    counts = Counter(received)
    acked_set = set(acked)
    highest, out_of_order = -1, 0
    for seq in received:
        if seq < highest:
            out_of_order += 1
        highest = max(highest, seq)
    return {
        "lost": len(acked_set - counts.keys()),
        "duplicated": sum(n - 1 for n in counts.values() if n > 1),
        "out_of_order": out_of_order,
        "unacknowledged": len(counts.keys() - acked_set),
    }


def _add(total: dict[str, int], part: dict[str, int]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


def _ms(s: Summary | None) -> dict[str, float] | None:
    if s is None:
        return None
    return {k: round(v * 1000, 3) for k, v in asdict(s).items() if k != "n"} | {"n": s.n}


# --------------------------------------------------------------------------- writers


@dataclass
class Writer:
    """One stream's writer: what it appended and what the server acknowledged."""

    n: int
    path: str
    conn: Connection
    acked: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    last_at: float | None = None
    done: bool = False
    followers: list[Reader] = field(default_factory=list)

    async def create(self) -> None:
        resp = await self.conn.request("PUT", self.path, headers={"Content-Type": JSON})
        if resp.status not in (200, 201):
            raise HttpScenarioError(
                f"PUT {self.conn.prefix}{self.path} answered {resp.status}: "
                f"{resp.body[:300].decode(errors='replace')}"
            )

    async def append(self, count: int, until: float) -> None:
        """Append messages 0..count-1, one at a time, until `until` (monotonic)."""
        seq = 0
        while seq < count and time.monotonic() < until:
            sent = time.monotonic()
            body = json.dumps({"w": self.n, "s": seq, "t": sent, "x": PAD}).encode()
            try:
                resp = await self.conn.request(
                    "POST", self.path, body, headers={"Content-Type": JSON}
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                # Maybe appended, not acknowledged: a reader may see it (unacknowledged).
                self.errors[type(exc).__name__] += 1
                seq += 1
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            if resp.status == 429:  # refused before the stream: send it again
                self.rate_limited += 1
                await asyncio.sleep(min(_retry_after(resp), max(0.0, until - time.monotonic())))
                continue
            if resp.status not in (200, 204):
                self.errors[f"http {resp.status}"] += 1
                seq += 1
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            self.last_at = time.monotonic()
            self.latencies.append(self.last_at - sent)
            self.acked.append(seq)
            seq += 1
        self.done = True
        for reader in self.followers:
            reader.check()

    async def read_back(self) -> list[int]:
        """Every message of the stream from the start (catch-up reads): their seqs."""
        offset, seqs = "-1", list[int]()
        for _ in range(100_000):
            resp = await self.conn.request("GET", f"{self.path}?offset={quote(offset, safe='')}")
            if resp.status != 200:
                raise HttpScenarioError(f"catch-up read of {self.path} answered {resp.status}")
            seqs.extend(m["s"] for m in _messages(resp.body.decode()))
            following = resp.headers.get("stream-next-offset", offset)
            if resp.headers.get("stream-up-to-date", "").lower() == "true" or following == offset:
                return seqs
            offset = following
        raise HttpScenarioError(f"catch-up read of {self.path} never reached the tail")


def _messages(data: str) -> list[dict[str, Any]]:
    """A JSON stream's messages: a JSON array (one level), or one value."""
    if not data.strip():
        return []
    value = json.loads(data)
    return value if isinstance(value, list) else [value]


# --------------------------------------------------------------------------- readers


@dataclass
class Reader:
    """One SSE follower of a writer's stream."""

    conn: Connection
    writer: Writer
    received: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    last_at: float | None = None
    reconnects: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self) -> None:
        """Complete once the writer is done and every acknowledged message is here."""
        w = self.writer
        if w.done and len(self.seen) >= len(w.acked) and self.seen.issuperset(w.acked):
            self.complete.set()

    async def follow(self) -> None:
        """Follow from the start until cancelled, reconnecting from the last offset a
        control event gave (a reconnect after data but before its control event gets
        that data again: it would count as duplicated)."""
        offset, path = "-1", self.writer.path
        while True:
            try:
                resp, body = await self.conn.stream(
                    f"{path}?offset={quote(offset, safe='')}&live=sse",
                    headers={"Accept": "text/event-stream"},
                )
                if resp.status != 200:
                    self.conn.close()
                    if resp.status == 429:
                        self.rate_limited += 1
                    else:
                        self.errors[f"http {resp.status}"] += 1
                    await asyncio.sleep(RETRY_MAX_S if resp.status != 429 else _retry_after(resp))
                    continue
                self.connected.set()
                parser = SseParser()
                async for chunk in body:
                    for kind, data in parser.feed(chunk):
                        if kind == "data":
                            self._data(data)
                        elif kind == "control":
                            control = json.loads(data)
                            offset = control.get("streamNextOffset", offset)
                            if control.get("streamClosed"):
                                return
                self.conn.close()
                self.reconnects += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                self.conn.close()
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(RETRY_MAX_S)
            except (ValueError, KeyError, TypeError) as exc:  # not the events we appended
                self.conn.close()
                self.errors[f"bad event: {type(exc).__name__}: {exc}"[:200]] += 1
                return

    def _data(self, data: str) -> None:
        now = time.monotonic()
        for message in _messages(data):
            seq = message["s"]
            self.received.append(seq)
            self.seen.add(seq)
            self.delays.append(now - message["t"])
        self.last_at = now
        self.check()


# --------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class HttpSizes:
    writers: int
    """Appends: writers, a stream each."""
    append_s: float
    append_max: int
    """Appends: each writer stops at append_s seconds or append_max messages."""
    sse_writers: int
    sse_readers: int
    """SSE: streams (one writer each), and readers spread over them."""
    sse_messages: int
    """SSE: messages each writer appends."""


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_fields(cpu: dict[str, float], per: int, unit: str) -> dict[str, Any]:
    per_1000 = {k: round(v / per * 1000, 4) for k, v in cpu.items()} if per else {}
    if per_1000:
        per_1000["total"] = round(sum(per_1000.values()), 4)
    return {
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()} | {"total": round(sum(cpu.values()), 3)},
        f"cpu_s_per_1000_{unit}": per_1000,
    }


def _writers(target: Target, run: str, tag: str, count: int) -> list[Writer]:
    headers = _auth(target)
    return [
        Writer(n, f"/{run}-{tag}{n}", Connection(target.url, source_ip(n, WRITER_OCTET), headers))
        for n in range(count)
    ]


def _auth(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.token}"} if target.token else {}


async def _appends(target: Target, run: str, sizes: HttpSizes) -> dict[str, Any]:
    writers = _writers(target, run, "a", sizes.writers)
    try:
        await asyncio.gather(*(w.create() for w in writers))
        before, client = procstats.snapshot(target.pids), _client_cpu()
        start = time.monotonic()
        until = start + sizes.append_s
        await asyncio.gather(*(w.append(sizes.append_max, until) for w in writers))
        end = max([w.last_at for w in writers if w.last_at] or [start])
        cpu = procstats.snapshot(target.pids).cpu_since(before)
        client = _client_cpu() - client
        check: dict[str, int] = {}
        for w in writers:
            _add(check, exactly_once(w.acked, await w.read_back()))
    finally:
        for w in writers:
            w.conn.close()
    appends = sum(len(w.acked) for w in writers)
    errors = sum((w.errors for w in writers), Counter[str]())
    return {
        "writers": sizes.writers,
        "appends": appends,
        "measured_s": round(end - start, 3),
        "appends_per_s": round(appends / (end - start), 1) if end > start else 0.0,
        "latency_ms": _ms(summarize(x for w in writers for x in w.latencies)),
        **check,
        "errors": dict(errors),
        "rate_limited": sum(w.rate_limited for w in writers),
        "connections_opened": sum(w.conn.opened for w in writers),
        **_cpu_fields(cpu, appends, "appends"),
        "client_cpu_s": round(client, 3),
    }


async def _sse(target: Target, run: str, sizes: HttpSizes) -> dict[str, Any]:
    writers = _writers(target, run, "s", sizes.sse_writers)
    headers = _auth(target)
    readers = [
        Reader(
            Connection(target.url, source_ip(n, READER_OCTET), headers),
            writers[n % len(writers)],
        )
        for n in range(sizes.sse_readers)
    ]
    for r in readers:
        r.writer.followers.append(r)
    tasks: list[asyncio.Task[Any]] = []
    try:
        await asyncio.gather(*(w.create() for w in writers))
        tasks = [asyncio.create_task(r.follow()) for r in readers]
        await _bounded(
            asyncio.gather(*(r.connected.wait() for r in readers)),
            READY_TIMEOUT,
            "SSE readers connected",
            readers,
        )
        before, client = procstats.snapshot(target.pids), _client_cpu()
        start = time.monotonic()
        await asyncio.gather(*(w.append(sizes.sse_messages, start + SSE_MAX_S) for w in writers))
        appended = max([w.last_at for w in writers if w.last_at] or [start])
        waits = [asyncio.create_task(r.complete.wait()) for r in readers]
        tasks += waits
        await asyncio.wait(waits, timeout=DRAIN_TIMEOUT)
        cpu = procstats.snapshot(target.pids).cpu_since(before)
        client = _client_cpu() - client
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in [w.conn for w in writers] + [r.conn for r in readers]:
            conn.close()
    end = max([r.last_at for r in readers if r.last_at] or [appended])
    check: dict[str, int] = {}
    for r in readers:
        _add(check, exactly_once(r.writer.acked, r.received))
    delivered = sum(len(r.received) for r in readers)
    appends = sum(len(w.acked) for w in writers)
    clients: list[Writer | Reader] = [*writers, *readers]
    return {
        "writers": sizes.sse_writers,
        "readers": sizes.sse_readers,
        "messages_per_writer": sizes.sse_messages,
        "appends": appends,
        "appends_per_s": round(appends / (appended - start), 1) if appended > start else 0.0,
        "expected": sum(len(r.writer.acked) for r in readers),
        "delivered": delivered,
        "measured_s": round(end - start, 3),
        "delivered_per_s": round(delivered / (end - start), 1) if end > start else 0.0,
        "delivery_ms": _ms(summarize(x for r in readers for x in r.delays)),
        "append_latency_ms": _ms(summarize(x for w in writers for x in w.latencies)),
        **check,
        "readers_incomplete": sum(1 for r in readers if not r.complete.is_set()),
        "reconnects": sum(r.reconnects for r in readers),
        "errors": dict(sum((c.errors for c in clients), Counter[str]())),
        "rate_limited": sum(c.rate_limited for c in clients),
        **_cpu_fields(cpu, delivered, "delivered"),
        "client_cpu_s": round(client, 3),
    }


async def _bounded(
    aw: Coroutine[Any, Any, T] | asyncio.Future[T], timeout: float, what: str, readers: list[Reader]
) -> T:
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        errors = sum((r.errors for r in readers), Counter[str]())
        raise HttpScenarioError(
            f"{what}: not within {timeout:.0f}s ({sum(r.connected.is_set() for r in readers)}"
            f"/{len(readers)}; errors {dict(errors)}, rate limited "
            f"{sum(r.rate_limited for r in readers)})"
        ) from None


async def _run(target: Target, sizes: HttpSizes) -> dict[str, Any]:
    run = f"bench-{secrets.token_hex(4)}"
    return {
        "url": target.url,
        "cpu_of": sorted(target.pids),
        "appends": await _appends(target, run, sizes),
        "sse": await _sse(target, run, sizes),
    }


def http_run(target: Target, sizes: HttpSizes) -> dict[str, Any]:
    """Both measurements on `target` (protocol DURABLE_STREAMS), in this process."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(target, sizes))


# --------------------------------------------------------------------------- reference


def reference_version() -> str:
    """The installed @durable-streams/server's version; BaselineError if it is missing."""
    package = DS_DIR / "node_modules" / "@durable-streams" / "server" / "package.json"
    if not package.is_file() or not (DS_DIR / "reference-server.mjs").is_file():
        raise BaselineError(
            f"the Durable Streams reference server is not installed: {package} or "
            f"{DS_DIR / 'reference-server.mjs'} is missing (run `npm ci` in {DS_DIR})"
        )
    return str(json.loads(package.read_text())["version"])


class Reference:
    """The reference server, running: `target`, `version`, and stop() (or `with`)."""

    def __init__(self, target: Target, processes: Processes, version: str) -> None:
        self.target, self.processes, self.version = target, processes, version

    def stop(self) -> None:
        self.processes.stop()

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_reference(run_dir: Path, storage: str = "memory") -> Reference:
    """`DurableStreamTestServer` on a free loopback port, in memory or file-backed (in
    run_dir/data). pids: {"node": [pid]}. BaselineError if it is not installed or does
    not answer within START_TIMEOUT."""
    version = reference_version()
    node = shutil.which("node")
    if node is None:
        raise BaselineError("node is not on PATH (the reference server needs Node.js 20+)")
    (port,) = free_ports(1)
    env = {"PORT": str(port), "DATA_DIR": ""}
    if storage == "file":
        env["DATA_DIR"] = str(run_dir / "data")
    procs = Processes(run_dir)
    try:
        argv = [node, "reference-server.mjs"]
        child = procs.start("node", "reference", argv, environment(env), DS_DIR)
        procs.wait_ready(
            [child],
            partial(_answers, port),
            f"the reference server on port {port}",
            START_TIMEOUT,
        )
    except BaseException:
        procs.stop()
        raise
    target = Target("reference", DURABLE_STREAMS, f"http://127.0.0.1:{port}", procs.pids())
    return Reference(target, procs, version)


def _answers(port: int) -> bool:
    """True once the server answers HTTP at all (a 404 for a stream that is not there)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("HEAD", "/__bench_probe__")
        return conn.getresponse().status in (200, 404)
    except OSError:
        return False
    finally:
        conn.close()
