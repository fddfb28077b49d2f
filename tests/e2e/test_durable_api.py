"""Durable Streams on a real cluster (issue 11), beyond what the protocol's conformance
suite checks (tests/e2e/test_durable_streams.py): who may read and write what, bad input,
live reads woken across gateways, and chat answers as durable streams."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from services.common.settings import Settings
from services.durable.protocol import format_offset
from tests.chat_client import Answer, ChatClient

pytestmark = pytest.mark.e2e


def user() -> str:
    return f"ds-{uuid.uuid4().hex[:10]}"


def dev(uid: str) -> dict[str, Any]:
    """Request options of a dev-mode user (dev-token and ?user_id=)."""
    return {"headers": {"Authorization": "Bearer dev-token"}, "params": {"user_id": uid}}


def streams(cluster: Any, base: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"{base or cluster.public_url}/streams", timeout=30)


async def test_every_request_needs_a_token_and_each_user_has_a_namespace(cluster) -> None:
    alice, bob = user(), user()
    token = jwt.encode(
        {"sub": alice, "exp": int(time.time()) + 600}, cluster.jwt_secret, algorithm="HS256"
    )
    as_alice = {"headers": {"Authorization": f"Bearer {token}"}}
    async with streams(cluster) as http:
        for method in ("PUT", "POST", "GET", "HEAD", "DELETE"):
            refused = await http.request(method, "/notes/today")
            assert refused.status_code == 401, method
            assert refused.headers["www-authenticate"] == "Bearer"
        forged = {"headers": {"Authorization": "Bearer " + token[:-2] + "xx"}}
        assert (await http.put("/notes/today", **forged)).status_code == 401

        made = await http.put(
            "/notes/today",
            content=b"alice's",
            headers={**as_alice["headers"], "Content-Type": "text/plain"},
        )
        assert made.status_code == 201, made.text
        # The same path is another stream for Bob: he neither sees nor changes Alice's.
        assert (await http.get("/notes/today", **dev(bob))).status_code == 404
        assert (await http.delete("/notes/today", **dev(bob))).status_code == 404
        bobs = await http.put(
            "/notes/today",
            content=b"bob's",
            headers={"Authorization": "Bearer dev-token", "Content-Type": "text/plain"},
            params={"user_id": bob},
        )
        assert bobs.status_code == 201
        assert (await http.get("/notes/today", **dev(bob))).text == "bob's"
        assert (await http.get("/notes/today", **as_alice)).text == "alice's"


async def test_bad_input_gets_a_clear_error_and_loses_nothing(cluster) -> None:
    uid = user()
    opts = dev(uid)
    text = {**opts["headers"], "Content-Type": "text/plain"}
    async with streams(cluster) as http:
        assert (
            await http.put("/log", content=b"kept", headers=text, params=opts["params"])
        ).status_code == 201
        limit = Settings().ds_max_body_bytes
        big = await http.post(
            "/log", content=b"x" * (limit + 1), headers=text, params=opts["params"]
        )
        assert big.status_code == 413, big.text
        bad_headers: list[dict[str, str]] = [
            {"Stream-TTL": "+5"},
            {"Stream-TTL": "05"},
            {"Stream-Expires-At": "tomorrow"},
            {"Stream-TTL": "60", "Stream-Expires-At": "2030-01-01T00:00:00Z"},
        ]
        for extra in bad_headers:
            reply = await http.put("/log2", headers={**text, **extra}, params=opts["params"])
            assert reply.status_code == 400, extra
            assert reply.text.strip(), extra  # says what is wrong
        for extra in (
            {"Producer-Id": "p"},  # without its epoch and seq
            {"Producer-Id": "p", "Producer-Epoch": "x", "Producer-Seq": "0"},
            {"Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": str(2**53)},
        ):
            reply = await http.post(
                "/log", content=b"no", headers={**text, **extra}, params=opts["params"]
            )
            assert reply.status_code == 400, extra
        for query in ("offset=abc", "offset=", "offset=-1&offset=now", "offset=-1&live=forever"):
            reply = await http.get(f"/log?{query}&user_id={uid}", headers=opts["headers"])
            assert reply.status_code == 400, query
        assert (await http.put("/../etc", headers=text, params=opts["params"])).status_code in (
            400,
            404,
        )
        json_headers = {**opts["headers"], "Content-Type": "application/json"}
        assert (
            await http.put("/events", headers=json_headers, params=opts["params"])
        ).status_code == 201
        for body in (b"{not json", b"[]"):
            reply = await http.post(
                "/events", content=body, headers=json_headers, params=opts["params"]
            )
            assert reply.status_code == 400, body
        # Nothing refused reached either stream.
        assert (await http.get("/log", **opts)).text == "kept"
        assert (await http.get("/events", **opts)).json() == []


async def test_a_live_read_on_one_gateway_wakes_on_an_append_through_another(cluster) -> None:
    uid = user()
    opts = dev(uid)
    first, second, third = (cluster.node_url(n) for n in cluster.gateway_names[:3])
    async with streams(cluster, first) as one, streams(cluster, second) as two:
        made = await one.put(
            "/live",
            headers={**opts["headers"], "Content-Type": "text/plain"},
            params=opts["params"],
        )
        tail = made.headers["stream-next-offset"]
        started = time.monotonic()
        poll = asyncio.create_task(
            one.get(
                "/live",
                params={**opts["params"], "offset": tail, "live": "long-poll"},
                headers=opts["headers"],
            )
        )
        await asyncio.sleep(0)  # the long-poll is sent before the append
        appended = await two.post(
            "/live",
            content=b"hello",
            headers={**opts["headers"], "Content-Type": "text/plain"},
            params=opts["params"],
        )
        assert appended.status_code == 204
        woken = await poll
        assert woken.status_code == 200 and woken.text == "hello"
        assert woken.headers["x-served-by"] == cluster.gateway_names[0]
        # Woken by the append, not by the long-poll's timeout.
        timeout = float(cluster.spec.extra_env["DS_LONG_POLL_TIMEOUT_S"])
        assert time.monotonic() - started < timeout / 2

        # An SSE reader on the first gateway sees appends made through the third, in
        # order, each once, and the close.
        async def sse() -> list[str]:
            events: list[str] = []
            params = {
                **opts["params"],
                "offset": appended.headers["stream-next-offset"],
                "live": "sse",
            }
            async with one.stream("GET", "/live", params=params, headers=opts["headers"]) as reply:
                assert reply.headers["content-type"].startswith("text/event-stream")
                async for line in reply.aiter_lines():
                    events.append(line)
                    if '"streamClosed":true' in line:
                        return events
            return events

        reader = asyncio.create_task(sse())
        async with streams(cluster, third) as three:
            for word in ("a", "b", "c"):
                await three.post(
                    "/live",
                    content=word.encode(),
                    headers={**opts["headers"], "Content-Type": "text/plain"},
                    params=opts["params"],
                )
            closed = await three.post(
                "/live", headers={**opts["headers"], "Stream-Closed": "true"}, params=opts["params"]
            )
            assert closed.status_code == 204 and closed.headers["stream-closed"] == "true"
        events = await asyncio.wait_for(reader, 30)
        data = "".join(
            e[len("data:") :]
            for e in events
            if e.startswith("data:") and not e.startswith("data:{")
        )
        assert data == "abc"


async def read_answer(
    cluster: Any, uid: str, prompt: str, stop_after: int | None = None
) -> tuple[ChatClient, Answer]:
    client = ChatClient(cluster.ws_url(f"s-{uuid.uuid4().hex[:8]}", user_id=uid))
    await client.connect()
    ack = await client.chat(prompt)
    answer = await client.read_answer(Answer(ack["message_id"]), stop_after=stop_after)
    return client, answer


async def test_an_answer_is_a_durable_stream_its_owner_alone_reads(cluster) -> None:
    uid = user()
    words = " ".join(f"w{i}" for i in range(60))
    client, answer = await read_answer(cluster, uid, f"echo {words}", stop_after=5)
    mid = answer.message_id
    try:
        async with streams(cluster) as http:
            # Mid-answer, from the WebSocket's last seq: the rest, each chunk once, the
            # offsets one-to-one with seq (a client switches protocols without a gap).
            seen = await http.get(
                f"/answers/{mid}",
                params={
                    **dev(uid)["params"],
                    "offset": format_offset(answer.last_seq),
                    "live": "sse",
                },
                headers=dev(uid)["headers"],
            )
            assert seen.status_code == 200
            messages: list[dict[str, Any]] = []
            for line in seen.text.splitlines():
                if line.startswith("data:[") or line.startswith('data:{"seq'):
                    messages += json.loads(line[len("data:") :])
            assert [m["seq"] for m in messages] == list(
                range(answer.last_seq + 1, messages[-1]["seq"] + 1)
            )
            assert '"streamClosed":true' in seen.text
            await client.read_answer(answer)
            whole = await http.get(f"/answers/{mid}", **dev(uid))
            assert whole.headers["stream-closed"] == "true"
            assert whole.headers["content-type"] == "application/json"
            chunks = whole.json()
            assert [c["seq"] for c in chunks] == list(range(1, answer.done["last_seq"] + 1))  # type: ignore[index]
            assert "".join(c["delta"] for c in chunks) == answer.text == words
            assert "".join(m["delta"] for m in messages) == "".join(c["delta"] for c in chunks[5:])
            # Read-only, and nobody else's.
            for method in ("POST", "PUT", "DELETE"):
                refused = await http.request(method, f"/answers/{mid}", **dev(uid))
                assert refused.status_code == 405, method
            assert (await http.get(f"/answers/{mid}", **dev(user()))).status_code == 404
            assert (await http.get("/answers/m_nonexistent", **dev(uid))).status_code == 404
    finally:
        await client.close()


def readme_curl() -> list[str]:
    """The README's `curl -N` command for following an answer, as argv."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```sh\n(curl -N .*?)\n```", readme, re.S)
    assert block is not None, "the README lost its curl -N example"
    return shlex.split(block[1].replace("\\\n", " "))


async def test_the_readmes_curl_follows_a_streaming_answer(cluster) -> None:
    uid = user()
    words = " ".join(f"r{i}" for i in range(40))
    client, answer = await read_answer(cluster, uid, f"echo {words}", stop_after=1)
    try:
        argv = [
            a.replace("http://localhost:8080", cluster.public_url)
            .replace("MESSAGE_ID", answer.message_id)
            .replace("user_id=test", f"user_id={uid}")
            for a in readme_curl()
        ]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        text = out.decode()
        chunks = [
            c
            for line in text.splitlines()
            if line.startswith("data:[")
            for c in json.loads(line[5:])
        ]
        assert "".join(c["delta"] for c in chunks) == words  # the whole answer, once
        assert text.rstrip().endswith('"streamClosed":true}')
    finally:
        await client.close()


async def test_a_gateway_shutting_down_ends_its_live_reads_at_once(cluster) -> None:
    """SIGTERM: an SSE read and a long-poll on the gateway end at once (their clients
    resume elsewhere by offset), not after the graceful shutdown's timeout."""
    uid = user()
    opts = dev(uid)
    name = cluster.gateway_names[-1]
    async with streams(cluster, cluster.node_url(name)) as http:
        made = await http.put(
            "/draining",
            headers={**opts["headers"], "Content-Type": "text/plain"},
            params=opts["params"],
        )
        tail = made.headers["stream-next-offset"]
        opened = asyncio.Event()

        async def sse() -> str:
            params = {**opts["params"], "offset": tail, "live": "sse"}
            seen = ""
            async with http.stream("GET", "/draining", params=params, headers=opts["headers"]) as r:
                async for line in r.aiter_lines():
                    seen += line + "\n"
                    opened.set()
            return seen

        reader = asyncio.create_task(sse())
        poll = asyncio.create_task(
            http.get(
                "/draining",
                params={**opts["params"], "offset": tail, "live": "long-poll"},
                headers=opts["headers"],
            )
        )
        await asyncio.wait_for(opened.wait(), 10)
        started = time.monotonic()
        cluster.sigterm(name)
        seen = await asyncio.wait_for(reader, 30)
        polled = await asyncio.wait_for(poll, 30)
        took = time.monotonic() - started
    try:
        assert '"upToDate":true' in seen and "streamClosed" not in seen
        assert polled.status_code == 204 and polled.headers["stream-next-offset"] == tail
        assert took < Settings().shutdown_timeout / 2, took
    finally:
        cluster.wait_healthy(name, timeout=30)


async def test_a_token_stops_working_when_it_expires(cluster) -> None:
    """Gateways remember verified tokens (HTTP clients send one with every request), but
    never past their `exp`."""
    uid = user()
    token = jwt.encode(
        {"sub": uid, "exp": int(time.time()) + 2}, cluster.jwt_secret, algorithm="HS256"
    )
    auth = {"Authorization": f"Bearer {token}"}
    async with streams(cluster) as http:
        made = await http.put("/short", headers={**auth, "Content-Type": "text/plain"})
        assert made.status_code == 201
        deadline = time.monotonic() + 15
        statuses = []
        while time.monotonic() < deadline:
            # Every gateway in turn (least_conn), each of which has seen the token.
            statuses.append((await http.head("/short", headers=auth)).status_code)
            if statuses[-3:] == [401, 401, 401]:
                break
            await asyncio.sleep(0.2)
        assert statuses[0] == 200 and statuses[-3:] == [401, 401, 401], statuses


async def test_a_chunked_append_is_one_append(cluster) -> None:
    """An append whose body comes in chunks (Transfer-Encoding: chunked, no length) lands
    whole, as one entry: a reader gets it at once and the next offset after all of it."""
    uid = user()
    opts = dev(uid)
    text = {**opts["headers"], "Content-Type": "text/plain"}

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part

    async with streams(cluster) as http:
        assert (await http.put("/chunked", headers=text, params=opts["params"])).status_code == 201
        appended = await http.post("/chunked", content=parts(), headers=text, params=opts["params"])
        assert appended.status_code == 204, appended.text
        read = await http.get("/chunked", **opts)
        assert read.text == "one two three"
        assert read.headers["stream-next-offset"] == appended.headers["stream-next-offset"]
        assert read.headers["stream-next-offset"].endswith("13")
