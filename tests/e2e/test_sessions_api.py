"""The browser app's REST surface on a real cluster, through nginx: a user's session list
(create, rename, delete), and the frontend listener (:3000) as a same-origin way to the
gateways for REST and the WebSocket."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.chat_client import Answer, ChatClient

pytestmark = pytest.mark.e2e

BEARER = {"Authorization": "Bearer dev-token"}


def user() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


def api(cluster, port: int | None = None) -> httpx.AsyncClient:
    base = f"http://127.0.0.1:{port or cluster.spec.public_port}/api"
    return httpx.AsyncClient(base_url=base, headers=BEARER, timeout=10)


async def test_info_tells_the_app_whether_dev_mode_is_on(cluster) -> None:
    async with api(cluster) as http:
        body = (await http.get("/info")).json()
    assert body["auth_dev_mode"] is True
    assert body["node_id"] in cluster.gateway_names


async def test_a_user_creates_renames_lists_and_deletes_sessions(cluster) -> None:
    uid = user()
    params = {"user_id": uid}
    async with api(cluster) as http:
        assert (await http.get("/sessions", params=params)).json() == {"sessions": []}
        first = await http.post("/sessions", params=params, json={"title": "  Trip   plans "})
        assert first.status_code == 201, first.text
        made = first.json()
        assert made["title"] == "Trip plans"  # whitespace runs collapsed
        assert made["answering"] is False
        second = (await http.post("/sessions", params=params)).json()  # no body at all
        assert second["title"] == ""
        listed = (await http.get("/sessions", params=params)).json()["sessions"]
        assert {s["session_id"] for s in listed} == {made["session_id"], second["session_id"]}

        renamed = await http.patch(
            f"/sessions/{second['session_id']}", params=params, json={"title": "Work"}
        )
        assert renamed.status_code == 200 and renamed.json()["title"] == "Work"
        for bad in ("", "   ", "x" * 101, "bell\x07"):
            refused = await http.patch(
                f"/sessions/{second['session_id']}", params=params, json={"title": bad}
            )
            assert refused.status_code == 400, bad
            assert "title" in refused.json()["detail"]
        unknown = await http.patch("/sessions/s-nope", params=params, json={"title": "x"})
        assert unknown.status_code == 404
        extra = await http.patch(
            f"/sessions/{second['session_id']}", params=params, json={"title": "a", "owner": "b"}
        )
        assert extra.status_code == 422  # unknown fields are refused, not ignored

        deleted = await http.delete(f"/sessions/{made['session_id']}", params=params)
        assert deleted.status_code == 204
        listed = (await http.get("/sessions", params=params)).json()["sessions"]
        assert [s["session_id"] for s in listed] == [second["session_id"]]
        gone = await http.get(f"/sessions/{made['session_id']}/history", params=params)
        assert gone.status_code == 404
        again = await http.delete(f"/sessions/{made['session_id']}", params=params)
        assert again.status_code == 404


async def test_sessions_are_per_user_and_need_a_token(cluster) -> None:
    owner, other = user(), user()
    async with api(cluster) as http:
        made = (await http.post("/sessions", params={"user_id": owner})).json()
        sid = made["session_id"]
        # Another user names a session of their own by that id: there is none.
        assert (await http.get("/sessions", params={"user_id": other})).json()["sessions"] == []
        renamed = await http.patch(
            f"/sessions/{sid}", params={"user_id": other}, json={"title": "mine now"}
        )
        assert renamed.status_code == 404
        assert (await http.delete(f"/sessions/{sid}", params={"user_id": other})).status_code == 404
        mine = (await http.get("/sessions", params={"user_id": owner})).json()["sessions"]
        assert [(s["session_id"], s["title"]) for s in mine] == [(sid, "")]
        bad_id = await http.delete("/sessions/bad%20id", params={"user_id": owner})
        assert bad_id.status_code == 400
    async with httpx.AsyncClient(timeout=10) as bare:
        url = f"http://127.0.0.1:{cluster.spec.public_port}/api/sessions"
        assert (await bare.get(url, params={"user_id": owner})).status_code == 401
        forged = await bare.get(url, headers={"Authorization": "Bearer not-a-jwt"})
        assert forged.status_code == 401


async def test_a_chat_names_its_session_and_a_running_answer_blocks_its_delete(cluster) -> None:
    uid = user()
    session = f"s-{uuid.uuid4().hex[:10]}"
    prompt = "echo " + " ".join(f"word{i}" for i in range(120))  # ~3 s at 40 tokens/s
    client = ChatClient(cluster.ws_url(session, user_id=uid), local_ip="127.0.41.1")
    await client.connect()
    ack = await client.chat(prompt)
    answer = Answer(ack["message_id"])
    answer.add(await client.recv_until(lambda f: f["type"] == "chunk"))
    async with api(cluster) as http:
        listed = (await http.get("/sessions", params={"user_id": uid})).json()["sessions"]
        assert [s["session_id"] for s in listed] == [session]
        assert listed[0]["answering"] is True
        # The default title is the start of the first prompt, cut at a word.
        assert listed[0]["title"].startswith("echo word0 word1")
        assert listed[0]["title"].endswith("…") and len(listed[0]["title"]) <= 61
        busy = await http.delete(f"/sessions/{session}", params={"user_id": uid})
        assert busy.status_code == 409
        assert "in progress" in busy.json()["detail"]
        answer = await client.read_answer(answer)
        assert answer.text == prompt.removeprefix("echo ")
        listed = (await http.get("/sessions", params={"user_id": uid})).json()["sessions"]
        assert listed[0]["answering"] is False
        done = await http.delete(f"/sessions/{session}", params={"user_id": uid})
        assert done.status_code == 204
    await client.close()


async def test_the_frontend_listener_reaches_the_gateways_same_origin(cluster) -> None:
    """The app on :3000 needs no other port: /api/ and /ws/ are proxied there, with the
    same Origin check (its own origin passes) and security headers on the page."""
    uid = user()
    async with api(cluster, cluster.spec.frontend_port) as http:
        made = await http.post("/sessions", params={"user_id": uid}, json={"title": "via 3000"})
        assert made.status_code == 201
        assert made.headers["cache-control"] == "no-store"
        session = made.json()["session_id"]
    url = cluster.ws_url(session, user_id=uid).replace(
        f":{cluster.spec.public_port}/", f":{cluster.spec.frontend_port}/"
    )
    client = ChatClient(url, local_ip="127.0.42.1", origin=cluster.frontend_origin)
    welcome = await client.connect()
    assert welcome["session_id"] == session
    ack = await client.chat("echo same origin")
    answer = await client.read_answer(Answer(ack["message_id"]))
    assert answer.text == "same origin"
    await client.close()
    async with httpx.AsyncClient(timeout=10) as http:
        page = await http.get(cluster.frontend_url + "/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "img-src 'self' data:" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
