"""Wire protocol v1 (`shared/protocol.md`): every frame, error code and close code.

Client frames are parsed once at the edge with `parse_client_frame`; the core only
ever sees these models.
"""

from __future__ import annotations

import json
import re
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1
SESSION_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
"""What a whole `session_id` must match (see `valid_session_id`)."""
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
#: How deep a client frame may nest objects and arrays (the frame itself is level 1).
#: Deeper JSON is refused: echoing it (a ping's `ts`) would exceed the serialiser's
#: own depth limit.
MAX_FRAME_DEPTH = 32
#: The largest `after_seq` (a stream entry id's sequence part must fit Redis's u64).
MAX_SEQ = 2**63 - 1


def valid_session_id(session_id: str) -> bool:
    """Whether the whole value is 1-64 of [A-Za-z0-9_-] (no trailing newline: `$` of
    `re.match` would let one through)."""
    return _SESSION_ID.fullmatch(session_id) is not None


def session_scope(user_id: str, session_id: str) -> str:
    """The name a session goes by inside the cluster (its Redis keys, channels, message
    records): `{user_id}/{session_id}`. A session id names one of its user's sessions,
    so two users who pick the same id have two sessions, and nothing (not even Redis
    losing every key) can hand one user's session id to another. Session ids hold no
    `/`, so the name splits one way (`split_scope`)."""
    return f"{user_id}/{session_id}"


def split_scope(scope: str) -> tuple[str, str]:
    """(user_id, session_id) of a `session_scope` name."""
    user_id, _, session_id = scope.rpartition("/")
    return user_id, session_id


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    """Bad session id after accept, or (before accept) a foreign Origin: HTTP 403."""
    TOO_BIG = 1009
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    TOO_SLOW = 4008
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    STREAM_EXPIRED = "stream_expired"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    STATE_LOST = "state_lost"
    """The server lost this answer's stored state (a storage failure): it ends here, and
    what was streamed may be missing from history."""
    INTERNAL = "internal"


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


class MessageStatus(StrEnum):
    PENDING = "pending"
    STREAMING = "streaming"
    DONE = "done"


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


# --- client -> server ----------------------------------------------------------------


class ChatFrame(_Frame):
    type: Literal["chat"]
    text: str = Field(min_length=1)
    client_msg_id: str | None = Field(default=None, min_length=1, max_length=64)


class ResumeFrame(_Frame):
    type: Literal["resume"]
    message_id: str = Field(min_length=1, max_length=128)
    after_seq: int = Field(default=0, ge=0, le=MAX_SEQ)


class CancelFrame(_Frame):
    type: Literal["cancel"]
    message_id: str = Field(min_length=1, max_length=128)


class HistoryRequestFrame(_Frame):
    type: Literal["history"]
    limit: int = Field(default=50, ge=1, le=1000)


class PingFrame(_Frame):
    type: Literal["ping"]
    ts: Any = None


ClientFrame = Annotated[
    ChatFrame | ResumeFrame | CancelFrame | HistoryRequestFrame | PingFrame,
    Field(discriminator="type"),
]
_client_frame_adapter: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


class FrameError(Exception):
    """A client frame that is not valid protocol; the message is safe to show."""


def parse_client_frame(raw: str | bytes) -> ClientFrame:
    """Parse one text frame into its model.

    Raises FrameError for binary frames, invalid JSON (NaN and Infinity included), a
    frame nested deeper than MAX_FRAME_DEPTH, a string with a lone surrogate escape
    (anywhere in the frame), a missing or unknown `type` and fields of the wrong type.
    What passes can be stored in Redis and echoed back without an error.
    """
    if isinstance(raw, bytes):
        raise FrameError("binary frames are not supported; send JSON text frames")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise FrameError(f"invalid JSON: {exc.msg}") from exc
    except (ValueError, RecursionError) as exc:
        # Absurd nesting or number literals, NaN, Infinity: refused here.
        raise FrameError(
            "invalid JSON: too deeply nested, a number too long, or NaN/Infinity"
        ) from exc
    if not isinstance(data, dict):
        raise FrameError("a frame must be a JSON object")
    _check_values(data)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise FrameError("missing or non-string 'type'")
    if kind not in _CLIENT_TYPES:
        raise FrameError(f"unknown type {kind!r}")
    try:
        return _client_frame_adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "frame"
        raise FrameError(f"{where}: {first['msg']}") from exc


_CLIENT_TYPES = frozenset({"chat", "resume", "cancel", "history", "ping"})


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_values(frame: dict[str, Any]) -> None:
    """Refuse nesting deeper than MAX_FRAME_DEPTH and strings that are not valid Unicode
    (a lone surrogate from a `\\ud800` escape cannot be encoded to UTF-8: not for Redis,
    not for the reply). Iterative, so no input can exhaust the stack."""
    stack: list[tuple[Any, int]] = [(frame, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_FRAME_DEPTH:
                raise FrameError(f"frame nested more than {MAX_FRAME_DEPTH} levels deep")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FrameError(
            "a string holds a lone surrogate (\\ud800-\\udfff); send valid Unicode"
        ) from exc


# --- server -> client ----------------------------------------------------------------


class StreamInfo(BaseModel):
    message_id: str
    last_seq: int
    status: MessageStatus


class WelcomeFrame(BaseModel):
    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    session_id: str
    user_id: str
    node_id: str
    server_time: str
    streams: list[StreamInfo]


class AckFrame(BaseModel):
    type: Literal["ack"] = "ack"
    client_msg_id: str | None
    message_id: str


class ChunkFrame(BaseModel):
    type: Literal["chunk"] = "chunk"
    message_id: str
    seq: int
    delta: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class DoneFrame(BaseModel):
    type: Literal["done"] = "done"
    message_id: str
    last_seq: int
    finish_reason: FinishReason
    usage: Usage


class HistoryItem(BaseModel):
    message_id: str
    role: Literal["user", "assistant"]
    text: str
    created_at: str


class HistoryFrame(BaseModel):
    type: Literal["history"] = "history"
    session_id: str
    messages: list[HistoryItem]


class ErrorFrame(BaseModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    client_msg_id: str | None = None
    message_id: str | None = None
    retry_after: float | None = None


class PongFrame(BaseModel):
    type: Literal["pong"] = "pong"
    ts: Any = None


def encode(frame: BaseModel) -> str:
    """Serialise a server frame, leaving out optional fields that do not apply. A chunk
    (the per-chunk path) is written by hand: the same text, a tenth of the time."""
    if type(frame) is ChunkFrame:
        return encode_chunk(frame.message_id, frame.seq, frame.delta)
    return frame.model_dump_json(exclude_none=isinstance(frame, ErrorFrame))


def encode_chunk(message_id: str, seq: int, delta: str) -> str:
    """`encode(ChunkFrame(...))` without pydantic: compact JSON, UTF-8 kept as it is."""
    return (
        f'{{"type":"chunk","message_id":{_json_str(message_id)},"seq":{int(seq)},'
        f'"delta":{_json_str(delta)}}}'
    )


_json_str = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
