"""The Durable Streams wire rules (services/durable/protocol.py)."""

from __future__ import annotations

import base64
import random

import pytest

from services.durable import protocol as p


def test_offsets_are_fixed_width_sortable_and_parse_back() -> None:
    offsets = [p.format_offset(n) for n in (0, 9, 10, 99, 12345678)]
    assert offsets == sorted(offsets)
    assert [p.parse_offset(o) for o in offsets] == [0, 9, 10, 99, 12345678]
    assert p.parse_offset(None) == p.parse_offset("-1") == 0
    assert p.parse_offset("now") is None
    for bad in ("", "abc", "12", "0,1", "0 1", p.format_offset(5) + "x", "1" * 16 + "_" + "0" * 16):
        with pytest.raises(p.BadRequest):
            p.parse_offset(bad)


def test_query_parameters_given_twice_or_empty_offsets_are_refused() -> None:
    assert p.single_query([("offset", "-1"), ("live", "sse")], "live") == "sse"
    assert p.single_query([], "cursor") is None
    with pytest.raises(p.BadRequest):
        p.single_query([("offset", "a"), ("offset", "b")], "offset")
    with pytest.raises(p.BadRequest):
        p.single_query([("offset", "")], "offset")


def test_header_values() -> None:
    assert p.closed_header("true") and p.closed_header("TRUE")
    assert not any(p.closed_header(v) for v in (None, "", "false", "yes", "1"))
    assert p.parse_ttl("3600") == 3600 and p.parse_ttl("0") == 0 and p.parse_ttl(None) is None
    for bad in ("+3600", "03600", "3600.0", "3.6e3", "-1", ""):
        with pytest.raises(p.BadRequest):
            p.parse_ttl(bad)
    assert p.parse_expires_at("2030-01-01T00:00:00Z") == 1_893_456_000_000
    assert p.parse_expires_at("2030-01-01T01:00:00+01:00") == 1_893_456_000_000
    for bad in ("2030-01-01", "tomorrow", "2030-13-01T00:00:00Z"):
        with pytest.raises(p.BadRequest):
            p.parse_expires_at(bad)
    assert p.media_type("Application/JSON; charset=utf-8") == "application/json"
    assert p.valid_content_type("text/plain") and not p.valid_content_type("plain")


def test_producer_headers_go_together_and_are_bounded() -> None:
    h = {"producer-id": "w1", "producer-epoch": "2", "producer-seq": "7"}
    assert p.parse_producer(h) == p.Producer("w1", 2, 7)
    assert p.parse_producer({}) is None
    for broken in (
        {"producer-id": "w1"},
        {**h, "producer-id": ""},
        {**h, "producer-epoch": "-1"},
        {**h, "producer-seq": "01"},
        {**h, "producer-seq": str(2**53)},
    ):
        with pytest.raises(p.BadRequest):
            p.parse_producer(broken)


def test_paths_are_url_safe_segments() -> None:
    assert p.check_path("v1/stream/a-b_c.d") == "v1/stream/a-b_c.d"
    for bad in ("", "a//b", "a/../b", "./a", "a b", "a/" + "x" * 2000):
        with pytest.raises(p.BadRequest):
            p.check_path(bad)


def test_json_mode_flattens_one_level_and_refuses_empty_appends() -> None:
    assert p.json_messages(b'{"a": 1}', creating=False) == [b'{"a":1}']
    assert p.json_messages(b"[[1,2],[3]]", creating=False) == [b"[1,2]", b"[3]"]
    assert p.json_messages(b"[[[1]]]", creating=False) == [b"[[1]]"]
    assert p.json_messages(b"[]", creating=True) == []
    for bad, creating in ((b"[]", False), (b"{oops", True), (b"", False)):
        with pytest.raises(p.BadRequest):
            p.json_messages(bad, creating=creating)
    assert p.json_body([b"1", b'{"b":2}']) == b'[1,{"b":2}]' and p.json_body([]) == b"[]"


def test_entries_round_trip_text_and_binary_and_are_cut_to_the_window() -> None:
    blob = bytes(range(256))
    flat = p.encode_entries([b"hello", blob])
    assert flat[:3] == [5, "hello", ""] and flat[5] == "b64"
    # As the read script returns them: (end, data, encoding, lo, hi), strings.
    quint = ["5", "hello", "", "2", "", "261", str(flat[4]), "b64", "2", "260"]
    entries = p.decode_entries(quint, json_mode=False)
    assert [e.end for e in entries] == [5, 260]
    assert entries[0].data == b"llo" and entries[1].data == blob[:255]
    assert p.decode_entries(["3", "[1]", "", "2", ""], json_mode=True) == [p.Entry(3, b"[1]")]
    assert p.decode_entries(["2", "[1]", "", "2", ""], json_mode=True) == []


def test_cursors_move_with_time_and_never_back() -> None:
    now = p.CURSOR_EPOCH_S + 20 * 1000 + 5
    assert p.cursor(None, now) == "1000"
    assert p.cursor("999", now) == "1000"  # behind: the current interval
    rng = random.Random(1)
    ahead = [int(p.cursor("1000", now, rng)) for _ in range(50)]
    assert all(1001 <= c <= 1000 + 180 for c in ahead)


def test_etags_change_with_the_range_and_with_closure() -> None:
    tags = {p.etag("s", 0, 5, False), p.etag("s", 0, 5, True), p.etag("s", 0, 6, False)}
    assert len(tags) == 3
    tag = p.etag("s", 0, 5, False)
    assert p.etag_matches(tag, tag) and p.etag_matches(f'"x", {tag}', tag)
    assert not p.etag_matches(None, tag) and not p.etag_matches('"other"', tag)


def test_sse_events_cannot_be_forged_by_the_payload() -> None:
    event = p.sse_data(b"a\r\nevent: control\rdata: x\nb", text=True).decode()
    lines = event.split("\n")
    assert lines[0] == "event: data"
    assert all(line.startswith("data:") for line in lines[1:-2]) and lines[-2:] == ["", ""]
    binary = p.sse_data(bytes(range(200)), text=False).decode()
    payload = "".join(line[5:] for line in binary.split("\n")[1:] if line.startswith("data:"))
    assert base64.b64decode(payload) == bytes(range(200))
    closed = p.sse_control("0", cursor_value="7", up_to_date=True, closed=True).decode()
    assert '"streamClosed":true' in closed and "streamCursor" not in closed
    live = p.sse_control("0", cursor_value="7", up_to_date=False, closed=False).decode()
    assert '"streamCursor":"7"' in live and "upToDate" not in live
