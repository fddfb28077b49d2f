"""The browser app as a user meets it: Debian's Chromium, driven by Playwright, against a
real cluster through nginx's frontend listener (the built app, same-origin `/ws/` and
`/api/`).

Checks what a user would: an answer streams and renders as Markdown; a reload or a
kill -9 of the client's gateway mid-answer ends with exactly the stored text, nothing
doubled; Stop keeps the partial answer; switching sessions shows each one's history;
model output carrying script is shown, never run; a refused sign-in says why; the app
fits a phone's width. A failed test leaves a screenshot in test-artifacts/browser/.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.frontend import FrontendError, ensure_built

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
#: Flags for a closed network (no Google look-ups) and running as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
#: An echo prompt of N words takes about N / 40 s at the cluster's 40 tokens/s.
LONG = 240


def echo_words(n: int, tag: str) -> tuple[str, str]:
    """(prompt, the answer the simulated model gives it)."""
    text = " ".join(f"{tag}{i}" for i in range(n))
    return "echo " + text, text


@pytest.fixture(scope="session")
def built_app() -> None:
    """frontend/dist, built (npm ci && npm run build) if its sources changed."""
    try:
        ensure_built(print)
    except FrontendError as exc:
        pytest.fail(f"the app does not build: {exc}")


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Any, built_app: None, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1200, "height": 850})
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
    opened.errors = errors
    try:
        yield opened
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / f"{request.node.name}.png"
            await opened.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failure: {shot}")
        await context.close()


# --- what a user does -------------------------------------------------------------------


async def sign_in(page: Any, cluster: Any, user: str) -> None:
    await page.goto(cluster.frontend_url + "/")
    await page.get_by_test_id("login-user").fill(user)
    await page.get_by_test_id("login-submit").click()
    await page.get_by_test_id("session-list").wait_for()


async def snapshot(page: Any) -> dict[str, Any]:
    return await page.evaluate("() => window.__chat.snapshot()")  # type: ignore[no-any-return]


async def new_session(page: Any) -> str:
    before = (await snapshot(page))["sessionId"]
    await page.get_by_test_id("new-session").click()
    await page.wait_for_function(
        "(before) => { const s = window.__chat.snapshot();"
        " return s.sessionId && s.sessionId !== before && s.connection === 'open'; }",
        arg=before,
        timeout=15_000,
    )
    return str((await snapshot(page))["sessionId"])


async def send(page: Any, text: str) -> None:
    await page.get_by_test_id("composer-input").fill(text)
    await page.get_by_test_id("send-button").click()


async def wait_answer(page: Any, states: str = "done", timeout: float = 60_000) -> dict[str, Any]:
    """The last assistant message once its status is one of `states` (comma-separated)."""
    await page.wait_for_function(
        "(states) => { const m = window.__chat.snapshot().messages.filter("
        "x => x.role === 'assistant').at(-1); return m && states.split(',').includes(m.status); }",
        arg=states,
        timeout=timeout,
    )
    messages = (await snapshot(page))["messages"]
    return [m for m in messages if m["role"] == "assistant"][-1]  # type: ignore[no-any-return]


async def wait_streaming(page: Any, min_chars: int) -> dict[str, Any]:
    await page.wait_for_function(
        "(n) => { const m = window.__chat.snapshot().messages.filter("
        "x => x.role === 'assistant').at(-1); return m && m.status === 'streaming'"
        " && m.text.length >= n; }",
        arg=min_chars,
        timeout=30_000,
    )
    messages = (await snapshot(page))["messages"]
    return [m for m in messages if m["role"] == "assistant"][-1]  # type: ignore[no-any-return]


def bubble(page: Any, message_id: str) -> Any:
    """The message element of `message_id`."""
    return page.locator(f'[data-testid="message"][data-message-id="{message_id}"]')


async def stored_history(cluster: Any, user: str, session: str) -> list[dict[str, Any]]:
    url = f"{cluster.public_url}/api/sessions/{session}/history"
    bearer = {"Authorization": "Bearer dev-token"}
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.get(url, params={"user_id": user, "limit": 200}, headers=bearer)
    reply.raise_for_status()
    return reply.json()["messages"]  # type: ignore[no-any-return]


async def switch_to(page: Any, session: str, turns: int = 2) -> str:
    """Click the session in the list; once its history is shown, its text (each
    message's whitespace collapsed, joined by a space)."""
    await page.locator(f'[data-testid="session-item"][data-session-id="{session}"]').click()
    await page.wait_for_function(
        "([sid, n]) => { const s = window.__chat.snapshot();"
        " return s.sessionId === sid && s.messages.length === n; }",
        arg=[session, turns],
    )
    return bodies_text(await page.get_by_test_id("message-body").all_inner_texts())


def user() -> str:
    return f"web-{uuid.uuid4().hex[:8]}"


def bodies_text(texts: list[str]) -> str:
    return " ".join(" ".join(t.split()) for t in texts)


# --- the tests ----------------------------------------------------------------------------


async def test_an_answer_streams_and_renders_as_markdown(page: Any, cluster: Any) -> None:
    uid = user()
    await sign_in(page, cluster, uid)
    session = await new_session(page)
    await send(page, "Show me a markdown overview of streams")
    # While the answer streams the user cannot send a follow-up, and can stop it.
    await page.wait_for_function(
        "() => window.__chat.snapshot().messages.some(m => m.role === 'assistant')"
    )
    assert await page.get_by_test_id("send-button").is_disabled()
    await page.get_by_test_id("stop-button").wait_for()
    answer = await wait_answer(page)
    body = bubble(page, answer["messageId"])
    content = body.get_by_test_id("message-body")
    assert await content.locator("h2").count() == 1
    assert await content.locator("ul > li").count() == 3
    assert await content.locator("li strong").count() == 3
    assert await content.locator("table tr").count() == 4
    code = content.locator("pre code")
    assert await code.count() == 1
    # Highlighted: the keyword is its own element, not plain text.
    assert await code.locator(".hljs-keyword").count() >= 1
    assert await body.get_by_test_id("copy-code").count() == 1
    # The live region announces the answer as it streams.
    assert await page.locator('[aria-live="polite"]').count() >= 1
    # The raw text the app holds is exactly what history stored; nothing shown as `##`.
    stored = await stored_history(cluster, uid, session)
    assert answer["text"] == stored[-1]["text"]
    assert "##" not in await content.inner_text()
    assert await page.get_by_test_id("send-button").is_enabled() is False  # empty composer
    assert page.errors == []


async def test_a_reload_mid_answer_resumes_with_the_exact_text(page: Any, cluster: Any) -> None:
    uid = user()
    await sign_in(page, cluster, uid)
    session = await new_session(page)
    prompt, expected = echo_words(LONG, "r")
    await send(page, prompt)
    partial = await wait_streaming(page, 200)
    await page.reload()
    answer = await wait_answer(page)
    assert len(partial["text"]) < len(expected)
    assert answer["text"] == expected
    shown = await bubble(page, answer["messageId"]).get_by_test_id("message-body").inner_text()
    assert " ".join(shown.split()) == expected  # every word once, in order
    stored = await stored_history(cluster, uid, session)
    assert [m["text"] for m in stored] == [prompt, expected]
    assert (await snapshot(page))["sessionId"] == session  # the reload kept the session


async def test_kill9_of_the_clients_gateway_resumes_with_the_exact_text(
    page: Any, cluster: Any
) -> None:
    uid = user()
    await sign_in(page, cluster, uid)
    session = await new_session(page)
    prompt, expected = echo_words(LONG, "k")
    await send(page, prompt)
    await wait_streaming(page, 150)
    gateway = (await snapshot(page))["nodeId"]
    assert gateway in cluster.gateway_names
    cluster.kill9(gateway)
    answer = await wait_answer(page, timeout=90_000)
    # The client noticed the loss and connected again (the states it went through, as
    # recorded by the page; the banner may show a reconnect shorter than a frame or not).
    states = (await snapshot(page))["connectionLog"]
    after = states[states.index("open") + 1 :]
    assert "reconnecting" in after and after[-1] == "open", states
    assert answer["text"] == expected
    shown = await bubble(page, answer["messageId"]).get_by_test_id("message-body").inner_text()
    assert " ".join(shown.split()) == expected
    assert (await snapshot(page))["nodeId"] != gateway
    stored = await stored_history(cluster, uid, session)
    assert stored[-1]["text"] == expected
    cluster.wait_healthy(gateway, 30)


async def test_stop_keeps_the_partial_answer(page: Any, cluster: Any) -> None:
    uid = user()
    await sign_in(page, cluster, uid)
    session = await new_session(page)
    prompt, expected = echo_words(LONG, "s")
    await send(page, prompt)
    await wait_streaming(page, 100)
    await page.get_by_test_id("stop-button").click()
    answer = await wait_answer(page, "stopped")
    assert 0 < len(answer["text"]) < len(expected)
    assert expected.startswith(answer["text"])
    stored = await stored_history(cluster, uid, session)
    assert stored[-1]["text"] == answer["text"]
    message = bubble(page, answer["messageId"])
    assert await message.get_attribute("data-status") == "stopped"
    # The user can ask again at once.
    await send(page, "echo again")
    assert (await wait_answer(page))["text"] == "again"


async def test_switching_sessions_shows_each_ones_history(page: Any, cluster: Any) -> None:
    uid = user()
    await sign_in(page, cluster, uid)
    first = await new_session(page)
    await send(page, "echo apples and pears")
    await wait_answer(page)
    second = await new_session(page)
    await send(page, "echo a second session")
    await wait_answer(page)
    items = page.get_by_test_id("session-item")
    assert await items.count() == 2
    assert await switch_to(page, first) == "echo apples and pears apples and pears"
    active = page.locator('[data-testid="session-item"][data-active="true"]')
    assert await active.get_attribute("data-session-id") == first
    assert await switch_to(page, second) == "echo a second session a second session"


async def test_script_in_model_output_is_shown_not_run(page: Any, cluster: Any) -> None:
    uid = user()
    await sign_in(page, cluster, uid)
    await new_session(page)
    payload = (
        'Look: <img src="x" onerror="window.__pwned = 1"> '
        "<script>window.__pwned = 2</script> "
        '<a href="javascript:window.__pwned = 3">click</a> '
        '<svg onload="window.__pwned = 4"></svg> '
        "[link](javascript:window.__pwned=5)"
    )
    await send(page, "echo " + payload)
    answer = await wait_answer(page)
    assert answer["text"] == payload
    message = bubble(page, answer["messageId"])
    html = await message.get_by_test_id("message-body").inner_html()
    assert "<script" not in html
    assert not re.search(r"\son\w+=", html), html
    assert "javascript:" not in html
    for link in await message.locator("a").all():
        await link.click(modifiers=["Control"], no_wait_after=True)
    assert await page.evaluate("() => window.__pwned") is None
    assert page.errors == []


async def test_a_refused_sign_in_says_why(page: Any, cluster: Any) -> None:
    await page.goto(cluster.frontend_url + "/")
    await page.get_by_test_id("login-user").fill("not a valid user!")
    await page.get_by_test_id("login-submit").click()
    error = page.get_by_test_id("login-error")
    await error.wait_for(timeout=15_000)
    text = await error.inner_text()
    assert "user" in text.lower()
    assert "4401" not in text or len(text) > 20  # a sentence, not a bare code


async def test_the_app_fits_a_phone_and_has_a_dark_mode(
    browser: Any, built_app: None, cluster: Any
) -> None:
    context = await browser.new_context(
        viewport={"width": 390, "height": 844}, color_scheme="dark", has_touch=True
    )
    try:
        phone = await context.new_page()
        await sign_in(phone, cluster, user())
        await new_session(phone)
        await send(phone, "echo " + " ".join(["wide"] * 60))
        await wait_answer(phone)
        width = await phone.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390
        composer = await phone.get_by_test_id("composer-input").bounding_box()
        assert composer is not None and composer["x"] >= 0
        assert composer["x"] + composer["width"] <= 390
        background = await phone.evaluate("() => getComputedStyle(document.body).backgroundColor")
        channels = [int(c) for c in re.findall(r"\d+", background)[:3]]
        assert sum(channels) / 3 < 100, background  # dark, from prefers-color-scheme
    finally:
        await context.close()


# --- what the user sees when the cluster cannot serve ----------------------------------

#: One gateway that holds one answer at a time, and gives an answer no worker takes up
#: after 8 s (not 20).
STRAINED_ENV = {"GATEWAY_MAX_ANSWERS": "1", "STREAM_RECOVERY_TIMEOUT": "8"}


@pytest.fixture(scope="module")
def strained_cluster(cluster_factory: Any) -> Any:
    return cluster_factory(gateways=1, workers=1, extra_env=STRAINED_ENV)


async def test_a_full_cluster_shows_a_countdown_and_then_serves(
    browser: Any, built_app: None, strained_cluster: Any
) -> None:
    first = await browser.new_context()
    second = await browser.new_context()
    try:
        one, two = await first.new_page(), await second.new_page()
        await sign_in(one, strained_cluster, user())
        await new_session(one)
        prompt, _ = echo_words(160, "f")
        await send(one, prompt)
        await wait_streaming(one, 50)
        await sign_in(two, strained_cluster, user())
        await new_session(two)
        await send(two, "echo served after the wait")
        # The gateway holds its one answer: the second user is told to wait, in words,
        # with the time left, and the app sends again by itself.
        countdown = two.get_by_text(re.compile(r"[Rr]etrying in \d+ ?s"))
        await countdown.first.wait_for(timeout=15_000)
        assert (await wait_answer(one, timeout=60_000))["text"].startswith("f0 f1")
        assert (await wait_answer(two, timeout=60_000))["text"] == "served after the wait"
        user_turns = [m for m in (await snapshot(two))["messages"] if m["role"] == "user"]
        assert len(user_turns) == 1  # one prompt shown once, however often it was sent
    finally:
        await first.close()
        await second.close()


async def test_no_worker_shows_a_waiting_state_then_a_sentence(
    page: Any, strained_cluster: Any
) -> None:
    await sign_in(page, strained_cluster, user())
    await new_session(page)
    worker = strained_cluster.worker_names[0]
    strained_cluster.stop_process(worker)
    try:
        await send(page, "echo nobody will answer this")
        notice = page.get_by_test_id("message-notice")
        await notice.get_by_text(re.compile("taking long", re.IGNORECASE)).wait_for(timeout=10_000)
        answer = await wait_answer(page, "error", timeout=30_000)
        message = bubble(page, answer["messageId"])
        said = await message.get_by_test_id("message-notice").inner_text()
        assert "worker" in said.lower()
        assert "upstream_unavailable" not in said  # a sentence, not the code
        assert await page.get_by_test_id("send-button").is_disabled()  # empty composer
        await page.get_by_test_id("composer-input").fill("echo and now?")
        assert await page.get_by_test_id("send-button").is_enabled()
        # From history (after a reload) the failed answer says it has no text, rather
        # than showing an empty bubble.
        await page.reload()
        message = bubble(page, answer["messageId"])
        await message.get_by_test_id("message-notice").get_by_text("no text").wait_for()
    finally:
        strained_cluster.start_process(worker)


# --- the operator's dashboard ---------------------------------------------------------


async def test_the_status_dashboard_shows_every_node_live(browser: Any, cluster: Any) -> None:
    """:8090 in a real browser: a row per node and dependency filled in from the nodes'
    metrics, and plots that grow with each scrape."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        status = await context.new_page()
        errors: list[str] = []
        status.on("pageerror", lambda exc: errors.append(str(exc)))
        await status.goto(cluster.status_url + "/")
        nodes = [*cluster.gateway_names, *cluster.worker_names]
        for name in nodes:
            health = status.locator(f'tr[data-node="{name}"] [data-f="health"]')
            await health.get_by_text("up").wait_for(timeout=15_000)
        for dep in ("redis", "kafka"):
            health = status.locator(f'tr[data-dep="{dep}"] [data-f="health"]')
            await health.get_by_text("up").wait_for(timeout=15_000)
        # Rates need two scrapes: the first plot points appear after the second.
        await status.wait_for_function(
            "() => [...document.querySelectorAll('#plots svg path')]"
            ".some(p => (p.getAttribute('d') || '').includes('L'))",
            timeout=20_000,
        )
        connections = status.locator(
            f'tr[data-node="{cluster.gateway_names[0]}"] [data-f="connections"]'
        )
        assert re.fullmatch(r"\d+", (await connections.inner_text()).strip())
        assert errors == []
    finally:
        await context.close()


# --- sign-in with real tokens -----------------------------------------------------------


@pytest.fixture(scope="module")
def token_cluster(cluster_factory: Any) -> Any:
    """Dev mode off: only signed tokens get in."""
    return cluster_factory(gateways=1, workers=1, extra_env={"AUTH_DEV_MODE": "false"})


async def test_without_dev_mode_the_app_asks_for_a_token_and_says_why_one_is_refused(
    page: Any, token_cluster: Any
) -> None:
    from deploy.tokens import mint

    await page.goto(token_cluster.frontend_url + "/")
    token_field = page.get_by_test_id("login-token")
    await token_field.wait_for()
    assert await page.get_by_test_id("login-user").count() == 0  # no user picker
    # A token signed with another secret: the server's reason reaches the user.
    await token_field.fill(mint("f" * 64, "mallory"))
    await page.get_by_test_id("login-submit").click()
    error = page.get_by_test_id("login-error")
    await error.wait_for(timeout=15_000)
    assert "signature" in (await error.inner_text()).lower()
    # A valid token signs the user in; the token is not in the address.
    token = mint(token_cluster.jwt_secret, "carol")
    await page.get_by_test_id("login-token").fill(token)
    await page.get_by_test_id("login-submit").click()
    await page.get_by_test_id("session-list").wait_for()
    await new_session(page)
    assert (await snapshot(page))["userId"] == "carol"
    await send(page, "echo signed in")
    assert (await wait_answer(page))["text"] == "signed in"
    assert token not in page.url
