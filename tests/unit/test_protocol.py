"""parse_client_frame (every client frame, every kind of bad input) and encode()."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from services.common.protocol import (
    MAX_FRAME_DEPTH,
    MAX_SEQ,
    PROTOCOL_VERSION,
    AckFrame,
    CancelFrame,
    ChatFrame,
    ChunkFrame,
    DoneFrame,
    ErrorCode,
    ErrorFrame,
    FinishReason,
    FrameError,
    HistoryFrame,
    HistoryItem,
    HistoryRequestFrame,
    MessageStatus,
    PingFrame,
    PongFrame,
    ResumeFrame,
    StreamInfo,
    Usage,
    WelcomeFrame,
    encode,
    parse_client_frame,
    valid_session_id,
)

pytestmark = pytest.mark.unit


def parse(obj: Any) -> Any:
    return parse_client_frame(json.dumps(obj))


# --- valid client frames -------------------------------------------------------------


def test_chat_minimal() -> None:
    frame = parse({"type": "chat", "text": "hi"})
    assert isinstance(frame, ChatFrame)
    assert frame.text == "hi"
    assert frame.client_msg_id is None


def test_chat_with_client_msg_id_of_max_length() -> None:
    frame = parse({"type": "chat", "text": "hi", "client_msg_id": "c" * 64})
    assert isinstance(frame, ChatFrame)
    assert frame.client_msg_id == "c" * 64


def test_chat_text_keeps_unicode_and_whitespace_verbatim() -> None:
    text = "  héllo 🌍\nsecond line\t"
    frame = parse({"type": "chat", "text": text})
    assert isinstance(frame, ChatFrame)
    assert frame.text == text


def test_resume_defaults_after_seq_to_zero() -> None:
    frame = parse({"type": "resume", "message_id": "m1"})
    assert isinstance(frame, ResumeFrame)
    assert (frame.message_id, frame.after_seq) == ("m1", 0)


def test_resume_with_after_seq() -> None:
    frame = parse({"type": "resume", "message_id": "m1", "after_seq": 3})
    assert isinstance(frame, ResumeFrame)
    assert frame.after_seq == 3


def test_cancel() -> None:
    frame = parse({"type": "cancel", "message_id": "m1"})
    assert isinstance(frame, CancelFrame)
    assert frame.message_id == "m1"


def test_history_defaults_limit_to_50() -> None:
    frame = parse({"type": "history"})
    assert isinstance(frame, HistoryRequestFrame)
    assert frame.limit == 50


def test_history_with_limit() -> None:
    frame = parse({"type": "history", "limit": 7})
    assert isinstance(frame, HistoryRequestFrame)
    assert frame.limit == 7


def test_ping_without_ts() -> None:
    frame = parse({"type": "ping"})
    assert isinstance(frame, PingFrame)
    assert frame.ts is None


@pytest.mark.parametrize("ts", [123, 1.5, "abc", {"a": [1, 2]}, [1, "x"]])
def test_ping_ts_is_kept_as_sent(ts: Any) -> None:
    frame = parse({"type": "ping", "ts": ts})
    assert isinstance(frame, PingFrame)
    assert frame.ts == ts


def test_unknown_extra_fields_are_ignored() -> None:
    frame = parse({"type": "chat", "text": "hi", "future_field": {"x": 1}, "v": 2})
    assert isinstance(frame, ChatFrame)
    assert frame.text == "hi"
    assert not hasattr(frame, "future_field")
    assert "future_field" not in frame.model_dump()


# --- bad input -> FrameError ---------------------------------------------------------


def test_binary_frame_is_rejected() -> None:
    with pytest.raises(FrameError, match="binary"):
        parse_client_frame(json.dumps({"type": "ping"}).encode())


@pytest.mark.parametrize("raw", ["", "{", "not json", "{'type': 'ping'}", '{"type": "ping",}'])
def test_invalid_json_is_rejected(raw: str) -> None:
    with pytest.raises(FrameError, match="invalid JSON"):
        parse_client_frame(raw)


@pytest.mark.parametrize("raw", ["[]", '["ping"]', '"ping"', "1", "null", "true"])
def test_non_object_json_is_rejected(raw: str) -> None:
    with pytest.raises(FrameError, match="JSON object"):
        parse_client_frame(raw)


@pytest.mark.parametrize(
    "obj",
    [{}, {"text": "hi"}, {"type": None}, {"type": 1}, {"type": ["chat"]}, {"type": {"a": 1}}],
)
def test_missing_or_non_string_type_is_rejected(obj: dict[str, Any]) -> None:
    with pytest.raises(FrameError, match="type"):
        parse(obj)


@pytest.mark.parametrize("kind", ["", "Chat", "CHAT", "welcome", "chunk", "done", "pong", "x"])
def test_unknown_type_is_rejected(kind: str) -> None:
    with pytest.raises(FrameError, match="unknown type"):
        parse({"type": kind, "text": "hi", "message_id": "m"})


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"type": "chat"}, "text"),
        ({"type": "chat", "text": 5}, "text"),
        ({"type": "chat", "text": None}, "text"),
        ({"type": "chat", "text": ""}, "text"),
        ({"type": "chat", "text": ["hi"]}, "text"),
        ({"type": "chat", "text": "hi", "client_msg_id": "c" * 65}, "client_msg_id"),
        ({"type": "chat", "text": "hi", "client_msg_id": ""}, "client_msg_id"),
        ({"type": "chat", "text": "hi", "client_msg_id": 7}, "client_msg_id"),
        ({"type": "resume"}, "message_id"),
        ({"type": "resume", "message_id": ""}, "message_id"),
        ({"type": "resume", "message_id": 12}, "message_id"),
        ({"type": "resume", "message_id": "m" * 129}, "message_id"),
        ({"type": "resume", "message_id": "m", "after_seq": "3"}, "after_seq"),
        ({"type": "resume", "message_id": "m", "after_seq": -1}, "after_seq"),
        ({"type": "resume", "message_id": "m", "after_seq": 1.5}, "after_seq"),
        ({"type": "resume", "message_id": "m", "after_seq": 3.0}, "after_seq"),
        ({"type": "resume", "message_id": "m", "after_seq": True}, "after_seq"),
        ({"type": "resume", "message_id": "m", "after_seq": None}, "after_seq"),
        ({"type": "cancel"}, "message_id"),
        ({"type": "cancel", "message_id": ""}, "message_id"),
        ({"type": "cancel", "message_id": 1}, "message_id"),
        ({"type": "history", "limit": 0}, "limit"),
        ({"type": "history", "limit": -5}, "limit"),
        ({"type": "history", "limit": 1001}, "limit"),
        ({"type": "history", "limit": "10"}, "limit"),
        ({"type": "history", "limit": None}, "limit"),
    ],
)
def test_wrong_field_is_rejected_naming_the_field(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(FrameError) as info:
        parse(obj)
    assert str(info.value).startswith(f"{field}:")


@pytest.mark.parametrize("limit", [1, 1000])
def test_history_limit_bounds_are_inclusive(limit: int) -> None:
    frame = parse({"type": "history", "limit": limit})
    assert isinstance(frame, HistoryRequestFrame)
    assert frame.limit == limit


def test_deeply_nested_json_is_a_frame_error() -> None:
    raw = '{"type": "ping", "ts": ' + "[" * 5000 + "]" * 5000 + "}"
    assert len(raw) < 65536
    with pytest.raises(FrameError):
        parse_client_frame(raw)


def test_huge_integer_literal_is_a_frame_error() -> None:
    raw = '{"type": "ping", "ts": ' + "1" * 5000 + "}"
    assert len(raw) < 65536
    with pytest.raises(FrameError):
        parse_client_frame(raw)


def nested(depth: int) -> str:
    """A ping whose frame nests `depth` levels deep (the frame object is level 1)."""
    return '{"type": "ping", "ts": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


@pytest.mark.parametrize("depth", [MAX_FRAME_DEPTH + 1, 256, 300, 900])
def test_a_ping_nested_too_deep_is_a_frame_error(depth: int) -> None:
    """Issue 7: `ts` nested 256+ deep parsed fine, then its pong could not be encoded
    (pydantic's serialiser stops at depth 255): `internal` and a traceback."""
    with pytest.raises(FrameError, match="nested more than"):
        parse_client_frame(nested(depth))


def test_a_ping_nested_to_the_limit_is_echoed() -> None:
    frame = parse_client_frame(nested(MAX_FRAME_DEPTH))
    assert isinstance(frame, PingFrame)
    assert json.loads(encode(PongFrame(ts=frame.ts)))["ts"] == frame.ts


def test_depth_counts_objects_and_unknown_fields_too() -> None:
    deep_object: Any = 1
    for _ in range(MAX_FRAME_DEPTH):
        deep_object = {"a": deep_object}
    with pytest.raises(FrameError, match="nested"):
        parse({"type": "ping", "ts": deep_object})
    with pytest.raises(FrameError, match="nested"):
        parse({"type": "chat", "text": "hi", "future": deep_object})


@pytest.mark.parametrize(
    "raw",
    [
        r'{"type": "ping", "ts": "\ud800"}',
        r'{"type": "ping", "ts": "a\udfffb"}',
        r'{"type": "ping", "ts": {"\udc00": 1}}',
        r'{"type": "ping", "ts": [["\ud83d"]]}',
        r'{"type": "chat", "text": "hi \ud800"}',
        r'{"type": "chat", "text": "hi", "client_msg_id": "\udc00"}',
        r'{"type": "resume", "message_id": "m\ud800"}',
        r'{"type": "cancel", "message_id": "\ud800"}',
        r'{"type": "\ud800"}',
    ],
)
def test_a_lone_surrogate_anywhere_is_a_frame_error(raw: str) -> None:
    """Issue 7: a lone surrogate parsed fine, then could be neither encoded for the pong
    nor stored in Redis: `internal` and a traceback."""
    with pytest.raises(FrameError, match="lone surrogate"):
        parse_client_frame(raw)


def test_a_surrogate_pair_is_one_character_and_fine() -> None:
    frame = parse_client_frame(r'{"type": "ping", "ts": "\ud83d\ude00 é"}')
    assert isinstance(frame, PingFrame)
    assert frame.ts == "😀 é"
    assert json.loads(encode(PongFrame(ts=frame.ts)))["ts"] == "😀 é"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(literal: str) -> None:
    with pytest.raises(FrameError, match="invalid JSON"):
        parse_client_frame('{"type": "ping", "ts": ' + literal + "}")


def test_after_seq_is_bounded_to_a_stream_id() -> None:
    frame = parse({"type": "resume", "message_id": "m", "after_seq": MAX_SEQ})
    assert isinstance(frame, ResumeFrame)
    with pytest.raises(FrameError, match="after_seq"):
        parse({"type": "resume", "message_id": "m", "after_seq": 2**64})


@pytest.mark.parametrize("seed", range(20))
def test_whatever_parses_can_be_echoed_and_stored(seed: int) -> None:
    """Random pings (deep, odd strings): each is refused with FrameError or its pong
    encodes, as UTF-8 too (what Redis and the socket need)."""
    rng = random.Random(seed)
    alphabet = ["a", "é", "😀", r"\ud800", r"\udc00", r"\ud83d\ude00", r"\"", r"\n"]

    def value(depth: int) -> str:
        roll = rng.random()
        if depth > 40 or roll < 0.3:
            return '"' + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))) + '"'
        if roll < 0.4:
            return str(rng.randint(-(10**6), 10**6))
        if roll < 0.7:
            return "[" + ", ".join(value(depth + 1) for _ in range(rng.randint(1, 2))) + "]"
        return "{" + f'"k{rng.randint(0, 9)}": ' + value(depth + 1) + "}"

    for _ in range(50):
        raw = '{"type": "ping", "ts": ' + value(2) + "}"
        try:
            frame = parse_client_frame(raw)
        except FrameError:
            continue
        assert isinstance(frame, PingFrame)
        encode(PongFrame(ts=frame.ts)).encode("utf-8")


# --- session ids ---------------------------------------------------------------------


@pytest.mark.parametrize("session_id", ["a", "s-1_B", "x" * 64])
def test_valid_session_ids(session_id: str) -> None:
    assert valid_session_id(session_id)


@pytest.mark.parametrize(
    "session_id",
    ["", "x" * 65, "abc\n", "abc\n\n", "\nabc", "a b", "a:b", "a/b", "é", "abc\r", "ab\x00"],
)
def test_invalid_session_ids(session_id: str) -> None:
    """Issue 7: `re.match` with a `$` pattern let a trailing newline through."""
    assert not valid_session_id(session_id)


# --- encode() of server frames -------------------------------------------------------


def decoded(frame: Any) -> dict[str, Any]:
    out = json.loads(encode(frame))
    assert isinstance(out, dict)
    return out


def test_error_frame_omits_fields_that_do_not_apply() -> None:
    out = decoded(ErrorFrame(code=ErrorCode.BAD_REQUEST, message="nope"))
    assert out == {"type": "error", "code": "bad_request", "message": "nope"}


def test_error_frame_keeps_fields_that_apply() -> None:
    out = decoded(
        ErrorFrame(
            code=ErrorCode.RATE_LIMITED, message="slow down", client_msg_id="c1", retry_after=1.5
        )
    )
    assert out == {
        "type": "error",
        "code": "rate_limited",
        "message": "slow down",
        "client_msg_id": "c1",
        "retry_after": 1.5,
    }


def test_error_frame_with_message_id() -> None:
    out = decoded(ErrorFrame(code=ErrorCode.NOT_FOUND, message="no", message_id="m1"))
    assert out == {"type": "error", "code": "not_found", "message": "no", "message_id": "m1"}


@pytest.mark.parametrize(
    "code",
    [
        "bad_request",
        "not_found",
        "stream_expired",
        "busy",
        "rate_limited",
        "upstream_unavailable",
        "internal",
    ],
)
def test_every_documented_error_code_encodes_as_its_wire_name(code: str) -> None:
    assert decoded(ErrorFrame(code=ErrorCode(code), message="m"))["code"] == code


def test_done_frame_shape_matches_protocol() -> None:
    out = decoded(
        DoneFrame(
            message_id="m1",
            last_seq=12,
            finish_reason=FinishReason.STOP,
            usage=Usage(prompt_tokens=3, completion_tokens=12),
        )
    )
    assert out == {
        "type": "done",
        "message_id": "m1",
        "last_seq": 12,
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 3, "completion_tokens": 12},
    }


@pytest.mark.parametrize("reason", ["stop", "length", "cancelled", "error"])
def test_done_frame_finish_reasons(reason: str) -> None:
    frame = DoneFrame(message_id="m", last_seq=0, finish_reason=FinishReason(reason), usage=Usage())
    out = decoded(frame)
    assert out["finish_reason"] == reason
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}


def test_chunk_frame_shape() -> None:
    out = decoded(ChunkFrame(message_id="m1", seq=1, delta="Hel"))
    assert out == {"type": "chunk", "message_id": "m1", "seq": 1, "delta": "Hel"}


def test_ack_frame_shape() -> None:
    out = decoded(AckFrame(client_msg_id="c1", message_id="m1"))
    assert out == {"type": "ack", "client_msg_id": "c1", "message_id": "m1"}


def test_welcome_frame_shape() -> None:
    out = decoded(
        WelcomeFrame(
            session_id="s1",
            user_id="u1",
            node_id="gw-1",
            server_time="2024-01-01T00:00:00+00:00",
            streams=[StreamInfo(message_id="m1", last_seq=4, status=MessageStatus.STREAMING)],
        )
    )
    assert out == {
        "type": "welcome",
        "protocol": 1,
        "session_id": "s1",
        "user_id": "u1",
        "node_id": "gw-1",
        "server_time": "2024-01-01T00:00:00+00:00",
        "streams": [{"message_id": "m1", "last_seq": 4, "status": "streaming"}],
    }
    assert PROTOCOL_VERSION == 1


def test_history_frame_shape() -> None:
    item = HistoryItem(message_id="m1", role="assistant", text="hi", created_at="t")
    out = decoded(HistoryFrame(session_id="s1", messages=[item]))
    assert out == {
        "type": "history",
        "session_id": "s1",
        "messages": [{"message_id": "m1", "role": "assistant", "text": "hi", "created_at": "t"}],
    }


@pytest.mark.parametrize("ts", [None, 5, "x", {"a": 1}])
def test_pong_echoes_ts(ts: Any) -> None:
    assert decoded(PongFrame(ts=ts)) == {"type": "pong", "ts": ts}


def test_encode_is_one_json_text() -> None:
    text = encode(ChunkFrame(message_id="m", seq=1, delta="a\nb"))
    assert "\n" not in text
    assert json.loads(text)["delta"] == "a\nb"


@pytest.mark.parametrize(
    "delta",
    [
        "plain words ",
        'quotes " and \\ backslashes',
        "lines\nand\ttabs\r\x00\x1f controls",
        "ünïcödé, 中文, emoji 🙂, U+2028 \u2028 and U+2029 \u2029",
        "",
        "</script><!-- -->",
    ],
)
def test_the_hand_written_chunk_frame_is_pydantics_text(delta: str) -> None:
    frame = ChunkFrame(message_id="m_0123abcd", seq=42, delta=delta)
    assert encode(frame) == frame.model_dump_json()
    assert json.loads(encode(frame)) == {
        "type": "chunk",
        "message_id": "m_0123abcd",
        "seq": 42,
        "delta": delta,
    }
