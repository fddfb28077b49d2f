"""Bad input gets a clear error and loses nothing: frames, tokens, origins, sessions,
and a client that stops reading."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid

import jwt
import pytest
import websockets
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.common.keys import Keys
from tests.chat_client import Answer, ChatClient
from tests.node_probes import metric, rss_bytes

pytestmark = pytest.mark.e2e


def sid() -> str:
    return f"b-{uuid.uuid4().hex[:12]}"


async def closed_with(url: str, **kwargs: object) -> int:
    """Connect and return the close code the server ends the connection with."""
    async with websockets.connect(url, **kwargs) as ws:  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code


def token(cluster, **claims: object) -> str:
    body = {"sub": "jwt-user", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, cluster.jwt_secret, algorithm="HS256")


async def test_valid_jwt_sets_the_user_from_sub(cluster) -> None:
    client = ChatClient(cluster.ws_url(sid(), token=token(cluster), user_id="ignored"))
    welcome = await client.connect()
    assert welcome["user_id"] == "jwt-user"
    await client.close()


async def test_bearer_subprotocol_token(cluster) -> None:
    url = cluster.ws_url(sid(), token=None)
    async with websockets.connect(url, subprotocols=["bearer", token(cluster)]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome" and welcome["user_id"] == "jwt-user"


@pytest.mark.parametrize(
    "kind", ["expired", "malformed", "alg_none", "wrong_secret", "no_exp", "missing"]
)
async def test_bad_tokens_close_with_4401(cluster, kind: str) -> None:
    if kind == "expired":
        bad = token(cluster, exp=int(time.time()) - 10)
    elif kind == "malformed":
        bad = "not.a.jwt"
    elif kind == "alg_none":
        bad = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, key=None, algorithm="none")
    elif kind == "wrong_secret":
        other_secret = "another-secret-that-is-long-enough-0123456789"
        bad = jwt.encode(
            {"sub": "x", "exp": int(time.time()) + 60}, other_secret, algorithm="HS256"
        )
    elif kind == "no_exp":
        bad = jwt.encode({"sub": "x"}, cluster.jwt_secret, algorithm="HS256")
    else:
        bad = None
    assert await closed_with(cluster.ws_url(sid(), token=bad)) == 4401


async def test_foreign_origin_is_refused_with_403(cluster) -> None:
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(
            cluster.ws_url(sid()), additional_headers={"Origin": "http://evil.example"}
        )
    assert info.value.response.status_code == 403
    allowed = ChatClient(cluster.ws_url(sid()), origin=cluster.frontend_origin)
    await allowed.connect()
    await allowed.close()


async def test_another_user_with_the_same_session_id_gets_a_session_of_its_own(
    cluster,
) -> None:
    """A session id is its user's: the intruder's welcome lists none of the owner's
    answers, its history is empty, and its chat does not reach the owner's history."""
    session = sid()
    owner = ChatClient(cluster.ws_url(session, user_id="owner"))
    await owner.connect()
    ack = await owner.chat("a secret question")
    await owner.read_answer(Answer(ack["message_id"]))
    intruder = ChatClient(cluster.ws_url(session, user_id="intruder"))
    welcome = await intruder.connect()
    assert (welcome["session_id"], welcome["user_id"], welcome["streams"]) == (
        session,
        "intruder",
        [],
    )
    assert await history_messages(intruder) == []
    other = await intruder.chat("the intruder's question")
    assert other["type"] == "ack"  # not busy: the owner's session is not this one
    await intruder.read_answer(Answer(other["message_id"]))
    owners = [m["text"] for m in await history_messages(owner)]
    assert owners[0] == "a secret question" and len(owners) == 2
    intruders = [m["text"] for m in await history_messages(intruder)]
    assert intruders[0] == "the intruder's question" and len(intruders) == 2
    await owner.close()
    await intruder.close()


async def history_messages(client: ChatClient) -> list[dict[str, object]]:
    await client.send({"type": "history", "limit": 50})
    frame = await client.recv_until(lambda f: f["type"] == "history")
    return list(frame["messages"])


async def test_malformed_frames_get_bad_request_and_the_connection_stays(cluster) -> None:
    client = ChatClient(cluster.ws_url(sid(), user_id="bad1"))
    await client.connect()
    bad_frames: list[str | bytes] = [
        "{not json",
        b"\x00\x01binary",
        "[1, 2]",
        json.dumps({"text": "no type"}),
        json.dumps({"type": "dance"}),
        json.dumps({"type": "chat", "text": 5}),
        json.dumps({"type": "chat", "text": ""}),
        json.dumps({"type": "resume", "message_id": "m", "after_seq": "3"}),
        json.dumps({"type": "history", "limit": "ten"}),
        json.dumps({"type": "chat", "text": "x" * 9000}),
    ]
    for raw in bad_frames:
        await client.send(raw)
        frame = await client.recv()
        assert frame["type"] == "error" and frame["code"] == "bad_request", (raw, frame)
        assert frame["message"]
    await client.send({"type": "ping", "ts": 42})
    assert await client.recv() == {"type": "pong", "ts": 42}
    ack = await client.chat("still works?")
    assert ack["type"] == "ack"
    (await client.read_answer(Answer(ack["message_id"]))).assert_exactly_once()
    await client.close()


async def test_oversized_frame_closes_with_1009(cluster) -> None:
    """The server closes with 1009 at the frame's header, without reading the payload;
    the rest of the payload still in flight can make the kernel reset the connection
    before the close frame gets through, so a close without a frame is accepted too,
    but never another code, and the session stays usable."""
    session = sid()
    url = cluster.ws_url(session, user_id="big")
    async with websockets.connect(url, max_size=None) as ws:
        json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "chat", "text": "x" * 70_000}))
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert info.value.rcvd is None or info.value.rcvd.code == 1009, info.value
    client = ChatClient(cluster.ws_url(session, user_id="big"))
    await client.connect()
    await client.send({"type": "ping", "ts": 1})
    assert await client.recv_until(lambda f: f["type"] == "pong") == {"type": "pong", "ts": 1}
    await client.close()


async def test_client_that_stops_reading_is_closed_with_4008(tuned_cluster) -> None:
    """A client that reads nothing is cut off with 4008; the gateway's memory stays
    bounded, and the client resumes with nothing lost.

    The tuned cluster answers with 20,000 one-token chunks at full speed and allows
    100 queued frames; the client talks to the gateway directly with a tiny receive
    buffer, so the backlog cannot hide in nginx or kernel buffers.
    """
    cluster = tuned_cluster
    gateway = cluster.spec.gateway_names[0]
    base = f"http://127.0.0.1:{cluster.spec.node_port(gateway)}"
    url = cluster.ws_url(sid(), user_id="slow").replace(
        cluster.spec.public_url.split("//")[1], base.split("//")[1]
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(
        sock, ("127.0.0.1", cluster.spec.node_port(gateway))
    )
    ws = await websockets.connect(url, sock=sock, max_queue=1, compression=None)
    json.loads(await ws.recv())
    pid = cluster.pid_of(gateway)
    rss_before = rss_bytes(pid)
    closes_before = metric(base, "gateway_slow_consumer_closes_total")
    await ws.send(json.dumps({"type": "chat", "text": "flood me", "client_msg_id": "f"}))
    deadline = time.monotonic() + 60
    while metric(base, "gateway_slow_consumer_closes_total") <= closes_before:
        assert time.monotonic() < deadline, "the slow client was never closed"
        await asyncio.sleep(0.1)
    growth = rss_bytes(pid) - rss_before
    assert growth < 32 * 2**20, f"the gateway grew by {growth / 2**20:.1f} MiB"

    # The client reads again: what was queued, then the 4008 close.
    answer: Answer | None = None
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(30):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "ack":
                    answer = Answer(frame["message_id"])
                elif frame["type"] == "chunk" and answer is not None:
                    answer.add(frame)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4008
    assert answer is not None and answer.seqs == list(range(1, answer.last_seq + 1))

    # It resumes from where it was, through nginx, and misses nothing. (It waits for
    # the answer to finish first: this cluster generates faster than a Python client
    # reads, so a live follower would be too slow again by design.)
    redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + 60
        while await redis.hget(Keys().message_meta(answer.message_id), "status") != "done":
            assert time.monotonic() < deadline, "the answer never finished"
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    client = ChatClient(cluster.ws_url(url.split("session_id=")[1].split("&")[0], user_id="slow"))
    await client.connect()
    await client.send(
        {"type": "resume", "message_id": answer.message_id, "after_seq": answer.last_seq}
    )
    await client.read_answer(answer, timeout=120)
    answer.assert_exactly_once()
    assert len(answer.seqs) == 20_000
    await client.close()


@pytest.mark.parametrize(
    "session_id",
    ["abc\n", "abc\n\n", "abc\r\n", "\nabc", "a" * 65, "a b", ""],
    ids=["trailing-lf", "two-lf", "crlf", "leading-lf", "too-long", "space", "empty"],
)
async def test_an_invalid_session_id_gets_bad_request_then_1008(cluster, session_id: str) -> None:
    """Issue 7: a trailing newline passed `re.match` with a `$` pattern."""
    async with websockets.connect(cluster.ws_url(session_id, user_id="sid")) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["type"] == "error" and frame["code"] == "bad_request", frame
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008


async def test_frames_that_cannot_be_echoed_or_stored_get_bad_request(cluster) -> None:
    """Issue 7: a ping with a deeply nested or lone-surrogate `ts` got `internal` (the
    pong could not be encoded); the same strings in a chat, resume or cancel could not
    be stored in Redis. Each is a clean `bad_request` now, and the connection stays."""
    client = ChatClient(cluster.ws_url(sid(), user_id="bad2"))
    await client.connect()
    deep = 300
    bad_frames = [
        '{"type": "ping", "ts": ' + "[" * deep + "]" * deep + "}",
        '{"type": "ping", "ts": ' + '{"a": ' * deep + "1" + "}" * deep + "}",
        r'{"type": "ping", "ts": "\ud800"}',
        r'{"type": "ping", "ts": {"k": ["x\udfff"]}}',
        '{"type": "ping", "ts": NaN}',
        r'{"type": "chat", "text": "hi \ud800"}',
        r'{"type": "chat", "text": "hi", "client_msg_id": "\udc00"}',
        r'{"type": "resume", "message_id": "m_\ud800"}',
        r'{"type": "cancel", "message_id": "m_\ud800"}',
        json.dumps({"type": "resume", "message_id": "m_x", "after_seq": 2**64}),
    ]
    for raw in bad_frames:
        await client.send(raw)
        frame = await client.recv()
        assert frame["type"] == "error" and frame["code"] == "bad_request", (raw[:60], frame)
    await client.send(r'{"type": "ping", "ts": ["\ud83d\ude00", {"n": [[1]]}]}')
    assert await client.recv() == {"type": "pong", "ts": ["😀", {"n": [[1]]}]}
    ack = await client.chat("still works?")
    assert ack["type"] == "ack"
    (await client.read_answer(Answer(ack["message_id"]))).assert_exactly_once()
    await client.close()
