"""The Durable Streams wire rules (PROTOCOL.md of durable-streams/durable-streams), as
pure functions: header and offset parsing, JSON mode, entry encoding, cursors, ETags,
SSE framing. No I/O; `server.py` uses them, `tests/unit/test_durable_protocol.py` pins
them.

**Offsets** are positions: bytes since the stream's start, or messages in JSON mode
(and an answer's chunk `seq`), written `0000000000000000_<16 digits>` (the reference
server's shape: its first part, a read sequence, is always 0 here). They sort
lexicographically as numbers do, are the same on every node (Redis holds them), and a
fork shares its source's: its own data continues from the fork position.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

OFFSET_WIDTH = 16
MAX_POSITION = 10**OFFSET_WIDTH - 1
#: The protocol's "start of stream" and "current tail" sentinels.
OFFSET_START = "-1"
OFFSET_NOW = "now"
#: JavaScript's largest safe integer: the bound of Producer-Epoch and Producer-Seq.
MAX_SAFE_INTEGER = 2**53 - 1
CURSOR_EPOCH_S = 1_728_432_000  # 2024-10-09T00:00:00Z, as the protocol's default
CURSOR_INTERVAL_S = 20

_OFFSET = re.compile(r"^0{16}_([0-9]{16})$")
_TTL = re.compile(r"^(0|[1-9][0-9]{0,11})$")
_SAFE_INT = re.compile(r"^(0|[1-9][0-9]{0,15})$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$'()*+,;=:@%-]{1,256}$")
MAX_PATH = 1024
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class BadRequest(ValueError):
    """The request breaks the protocol: answered 400 with this message."""


# --- offsets ----------------------------------------------------------------------------


def format_offset(position: int) -> str:
    return f"{0:0{OFFSET_WIDTH}d}_{position:0{OFFSET_WIDTH}d}"


def parse_offset(raw: str | None) -> int | None:
    """A read's `offset`: its position, 0 for `-1` or none, None for `now`."""
    if raw is None or raw == OFFSET_START:
        return 0
    if raw == OFFSET_NOW:
        return None
    m = _OFFSET.fullmatch(raw)
    if m is None:
        raise BadRequest("offset: an offset this server gave, -1 or now")
    return int(m[1])


def single_query(params: Sequence[tuple[str, str]], name: str) -> str | None:
    """A query parameter given at most once (twice is a 400); None if absent."""
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        raise BadRequest(f"{name}: given more than once")
    if values and values[0] == "" and name == "offset":
        raise BadRequest("offset: empty")
    return values[0] if values else None


# --- headers ----------------------------------------------------------------------------


def closed_header(value: str | None) -> bool:
    """Stream-Closed counts only as exactly `true` (any case); other values are ignored."""
    return value is not None and value.strip().lower() == "true"


def parse_ttl(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _TTL.fullmatch(raw):
        raise BadRequest("Stream-TTL: a whole number of seconds, no sign or leading zero")
    return int(raw)


def parse_expires_at(raw: str | None) -> int | None:
    """Stream-Expires-At (RFC 3339) as epoch ms."""
    if raw is None:
        return None
    if not _RFC3339.fullmatch(raw.strip()):
        raise BadRequest("Stream-Expires-At: an RFC 3339 timestamp")
    text = raw.strip().replace("z", "Z").replace("t", "T")
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError as exc:
        raise BadRequest(f"Stream-Expires-At: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Producer:
    id: str
    epoch: int
    seq: int


def parse_producer(headers: Mapping[str, str]) -> Producer | None:
    """Producer-Id/-Epoch/-Seq: all three or none."""
    pid, epoch, seq = (headers.get(h) for h in ("producer-id", "producer-epoch", "producer-seq"))
    if pid is None and epoch is None and seq is None:
        return None
    if pid is None or epoch is None or seq is None:
        raise BadRequest("Producer-Id, Producer-Epoch and Producer-Seq go together")
    if not pid.strip() or len(pid) > 256 or " " in pid:
        raise BadRequest("Producer-Id: 1-256 characters, no spaces")
    values = []
    for name, raw in (("Producer-Epoch", epoch), ("Producer-Seq", seq)):
        if not _SAFE_INT.fullmatch(raw) or int(raw) > MAX_SAFE_INTEGER:
            raise BadRequest(f"{name}: an integer from 0 to 2^53-1")
        values.append(int(raw))
    return Producer(pid, values[0], values[1])


def media_type(content_type: str | None) -> str:
    """The media type alone, lower case (`application/json; charset=utf-8` → json)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json"


def sse_as_text(media: str) -> bool:
    """SSE carries text/* and JSON as text, anything else as base64."""
    return media.startswith("text/") or is_json(media)


def valid_content_type(content_type: str) -> bool:
    media = media_type(content_type)
    return bool(re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", media))


def check_path(path: str) -> str:
    """A stream's path below /streams/: segments of URL-safe characters, no dot segments."""
    if not path or len(path) > MAX_PATH:
        raise BadRequest(f"stream path: 1-{MAX_PATH} characters")
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _PATH_SEGMENT.fullmatch(segment):
            raise BadRequest("stream path: segments of URL-safe characters, no . or ..")
    return path


# --- bodies and entries -----------------------------------------------------------------


def json_messages(body: bytes, *, creating: bool) -> list[bytes]:
    """A JSON-mode body as messages: an array is flattened one level (an empty one is
    refused on append, creates nothing on create); anything else is one message."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body: not valid JSON ({exc})") from exc
    if isinstance(value, list):
        if not value and not creating:
            raise BadRequest("body: an empty JSON array appends nothing")
        return [_compact(v) for v in value]
    return [_compact(value)]


def _compact(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored entry: its bytes and where it ends (exclusive), as positions."""

    end: int
    data: bytes


def encode_entries(chunks: Iterable[bytes]) -> list[str | int]:
    """Entries as the append scripts take them: (byte length, data, encoding) triples;
    UTF-8 is stored as is, anything else as base64 (`e` = `b64`)."""
    flat: list[str | int] = []
    for chunk in chunks:
        try:
            flat += [len(chunk), chunk.decode("utf-8"), ""]
        except UnicodeDecodeError:
            flat += [len(chunk), base64.b64encode(chunk).decode(), "b64"]
    return flat


def decode_entries(flat: Sequence[str], json_mode: bool) -> list[Entry]:
    """The read script's (end, data, encoding, lo, hi) quintuples as entries, each cut
    to its [lo, hi) window (a read starting inside an entry, a fork's end inside one)."""
    out: list[Entry] = []
    for i in range(0, len(flat) - 4, 5):
        end, data, enc, lo_raw, hi_raw = flat[i : i + 5]
        raw = base64.b64decode(data) if enc == "b64" else data.encode()
        stop = int(end)
        start = stop - (1 if json_mode else len(raw))
        lo = int(lo_raw)
        hi = int(hi_raw) if hi_raw else stop
        if json_mode:
            if start >= lo and stop <= hi:
                out.append(Entry(stop, raw))
            continue
        first, last = max(start, lo), min(stop, hi)
        if last > first:
            out.append(Entry(last, raw[first - start : last - start]))
    return out


def json_body(messages: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(messages) + b"]"


# --- caching ----------------------------------------------------------------------------


def cursor(client: str | None, now_s: float | None = None, rng: random.Random | None = None) -> str:
    """Stream-Cursor: the current 20 s interval since the protocol's epoch; past a
    client's cursor that is not behind, by 1-3600 s of jitter (never backwards)."""
    now_s = time.time() if now_s is None else now_s
    current = int((now_s - CURSOR_EPOCH_S) // CURSOR_INTERVAL_S)
    if client is None or not client.isdigit() or int(client) < current:
        return str(current)
    jitter_s = (rng or random).randint(1, 3600)
    return str(int(client) + max(1, math.ceil(jitter_s / CURSOR_INTERVAL_S)))


def etag(stream_id: str, start: int, end: int, closed: bool) -> str:
    """Changes with the range and with closure (a 304 must not hide an EOF)."""
    return f'"{stream_id}:{start}:{end}{":c" if closed else ""}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    if not if_none_match:
        return False
    return any(t.strip() in (tag, "*", "W/" + tag) for t in if_none_match.split(","))


def expires_header(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).astimezone().isoformat()


# --- SSE --------------------------------------------------------------------------------


def sse_data(payload: bytes, *, text: bool) -> bytes:
    """One `data` event: text line by line, or base64 (split across lines of 76)."""
    if text:
        # Every line break an SSE parser knows (CR LF, CR, LF) starts a new data line, so
        # no payload can end the event and forge one of its own.
        lines = _LINE_BREAK.split(payload.decode("utf-8", errors="replace"))
    else:
        encoded = base64.b64encode(payload).decode()
        lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)] or [""]
    body = "".join(f"data:{line}\n" for line in lines)
    return f"event: data\n{body}\n".encode()


def sse_control(
    next_offset: str, *, cursor_value: str | None, up_to_date: bool, closed: bool
) -> bytes:
    control: dict[str, object] = {"streamNextOffset": next_offset}
    if not closed and cursor_value is not None:
        control["streamCursor"] = cursor_value
    if up_to_date or closed:
        control["upToDate"] = True
    if closed:
        control["streamClosed"] = True
    return f"event: control\ndata:{json.dumps(control, separators=(',', ':'))}\n\n".encode()
