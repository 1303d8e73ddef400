"""The web chat page in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright) against the real server: sign in, a streamed reply, Stop, a reload
mid-reply, two tabs, untrusted model output, and Japanese IME input. Screenshots go to
tests/screenshots/ (git-ignored) for a human to look at."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import orjson
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_client import ChatClient
from tests.servers import RunningServer, serve
from tests.wsclient import directive, new_user

pytestmark = pytest.mark.asyncio

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).with_name("screenshots")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert shutil.which(CHROMIUM), "install Chromium: apt-get install chromium"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        await browser.close()


async def signed_in(browser: Browser, server: RunningServer, user: str) -> Page:
    page = await browser.new_page(viewport={"width": 1100, "height": 800})
    await page.goto(server.http)
    await page.fill("#token", user)
    await page.click("#signin button")
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(page.locator("#signin")).to_be_hidden()
    return page


async def new_conversation(page: Page, title: str) -> None:
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept(title)))
    await page.click("#new")
    await expect(page.locator("#title")).to_have_text(title)


async def send(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


def replies(page: Page):
    return page.locator("#messages li.msg.assistant")


async def stored_reply(server: RunningServer, user: str) -> str:
    async with httpx.AsyncClient(
        base_url=f"{server.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    ) as http:
        conversation = (await http.get("/conversations")).json()["items"][0]
        messages = (await http.get(f"/conversations/{conversation['id']}/messages")).json()
    return str(messages["messages"][-1]["text"])


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_sign_in_send_and_the_reply_streams_in(
    browser: Browser, server: RunningServer
) -> None:
    user = new_user()
    page = await signed_in(browser, server, user)
    await new_conversation(page, "First chat")
    await send(page, "hello there " + directive(tps=60, tokens=40))
    reply = replies(page).first
    await expect(reply).to_have_attribute("data-streaming", "true")
    await expect(reply).to_have_attribute("data-streaming", "false", timeout=15000)
    text = await reply.locator(".body").inner_text()
    assert text.strip() == (await stored_reply(server, user)).strip()
    await expect(reply.locator(".meta strong")).to_have_text("Secretary")
    assert await reply.locator(".meta .why").inner_text(), "the router's why is shown"
    await expect(page.locator("#messages li.msg.user")).to_have_text(re.compile("hello there"))
    await shot(page, "streamed-reply")


async def test_stop_ends_the_reply_mid_stream(browser: Browser, server: RunningServer) -> None:
    page = await signed_in(browser, server, new_user())
    await new_conversation(page, "Stop me")
    await send(page, "go on " + directive(tps=20, tokens=200))
    await expect(replies(page).first).to_have_attribute("data-streaming", "true")
    await expect(page.locator("#stop")).to_be_enabled()
    await page.click("#stop")
    reply = replies(page).first
    await expect(reply).to_have_attribute("data-streaming", "false", timeout=10000)
    await expect(reply.locator(".meta")).to_contain_text("cancelled")
    await expect(page.locator("#stop")).to_be_disabled()


async def test_a_reload_mid_reply_finishes_it_without_duplicated_text(
    browser: Browser, server: RunningServer
) -> None:
    user = new_user()
    page = await signed_in(browser, server, user)
    await new_conversation(page, "Reload")
    await send(page, "tell me " + directive(tps=25, tokens=80))
    await expect(replies(page).first).to_have_attribute("data-streaming", "true")
    await page.wait_for_timeout(600)  # some text is on the page
    started = time.monotonic()
    await page.reload()
    reply = replies(page).first
    await expect(reply.locator(".body")).not_to_be_empty()
    resumed_ms = (time.monotonic() - started) * 1000
    print(f"\nreload mid-reply to the first resumed text on the page: {resumed_ms:.0f} ms")
    await expect(reply).to_have_attribute("data-streaming", "false", timeout=15000)
    shown = (await reply.locator(".body").inner_text()).strip()
    assert shown == (await stored_reply(server, user)).strip(), "no repeated or lost text"
    assert await replies(page).count() == 1


async def test_a_second_tab_sees_the_same_stream_and_a_rename(
    browser: Browser, server: RunningServer
) -> None:
    user = new_user()
    context = await browser.new_context()
    first = await context.new_page()
    await first.goto(server.http)
    await first.fill("#token", user)
    await first.click("#signin button")
    await new_conversation(first, "Two tabs")
    second = await context.new_page()  # the same browser profile: already signed in
    await second.goto(server.http)
    await expect(second.locator("#title")).to_have_text("Two tabs")
    await send(first, "both of you " + directive(tps=50, tokens=30))
    for page in (first, second):
        await expect(replies(page).first).to_have_attribute(
            "data-streaming", "false", timeout=15000
        )
    texts = [await replies(p).first.locator(".body").inner_text() for p in (first, second)]
    assert texts[0] == texts[1]
    await expect(second.locator("#presence")).to_contain_text("2 devices")
    first.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("Renamed")))
    await first.click("#rename")
    await expect(second.locator("#title")).to_have_text("Renamed")  # the other tab hears it
    await expect(second.locator("#conversations")).to_contain_text("Renamed")
    await context.close()


async def test_untrusted_model_output_renders_inert(
    browser: Browser, server: RunningServer
) -> None:
    page = await signed_in(browser, server, new_user())
    await new_conversation(page, "XSS")
    evil = (
        "<img src=x onerror=window.__xss=1> <script>window.__xss=2</script> "
        "[click me](javascript:window.__xss=3) **bold**"
    )
    await send(page, f"render this {directive(reply=shlex.quote(evil))}")
    reply = replies(page).first
    await expect(reply).to_have_attribute("data-streaming", "false", timeout=15000)
    body = reply.locator(".body")
    await expect(body.locator("strong")).to_have_text("bold")  # Markdown still renders
    assert await body.locator("img, script").count() == 0
    for link in await body.locator("a").all():
        assert not (await link.get_attribute("href") or "").startswith("javascript:")
    if await body.locator("a").count():
        await body.locator("a").first.click()
    assert await page.evaluate("window.__xss") is None, "nothing the model wrote ran"
    await shot(page, "untrusted-output")


async def test_enter_inside_an_ime_composition_does_not_send(
    browser: Browser, server: RunningServer
) -> None:
    page = await signed_in(browser, server, new_user())
    await new_conversation(page, "日本語")
    await page.fill("#text", "かいぎ")
    await page.dispatch_event(
        "#text", "keydown", {"key": "Enter", "isComposing": True, "keyCode": 229}
    )
    await page.wait_for_timeout(300)
    assert await page.locator("#messages li.msg.user").count() == 0
    assert await page.input_value("#text") == "かいぎ"
    await page.press("#text", "Enter")  # composition confirmed: now Enter sends
    await expect(page.locator("#messages li.msg.user")).to_have_count(1)


# The browser's speech engines are the platform's; these stand-ins let the test drive the
# page's own voice logic: a recognizer the test feeds transcripts to, and a synthesizer
# that "reads" each phrase for 150 ms and records it.
FAKE_SPEECH = """
window.SpeechRecognition = class {
  constructor() { window.__recognizer = this; }
  start() {}
  stop() {}
  say(text, isFinal) {
    const result = [{ transcript: text }];
    result.isFinal = isFinal;
    this.onresult({ resultIndex: 0, results: [result] });
  }
};
window.__spoken = [];
window.__cancelled = 0;
window.SpeechSynthesisUtterance = class { constructor(text) { this.text = text; } };
Object.defineProperty(window, "speechSynthesis", { value: {
  queue: [],
  speak(u) { this.queue.push(u); if (this.queue.length === 1) this.next(); },
  next() {
    const u = this.queue[0];
    if (!u) return;
    window.__spoken.push(u.text);
    setTimeout(() => {
      if (this.queue[0] === u) { this.queue.shift(); u.onend?.(); this.next(); }
    }, 150);
  },
  cancel() { this.queue = []; window.__cancelled += 1; },
}});
"""


async def test_voice_mode_talks_reads_aloud_and_is_interrupted_by_speaking(
    browser: Browser, server: RunningServer
) -> None:
    user = new_user()
    page = await browser.new_page()
    await page.add_init_script(FAKE_SPEECH)
    await page.goto(server.http)
    await page.fill("#token", user)
    await page.click("#signin button")
    await new_conversation(page, "Voice")
    await page.click("#voice")
    await expect(page.locator("#voice")).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#status")).to_have_text("connected")
    await page.wait_for_function("window.__recognizer !== undefined")
    # A final transcript commits the turn; the reply is read aloud phrase by phrase.
    reply_text = "First sentence here. Second one follows. And a third. " * 4
    spoken = f"hello {directive(tps=40, reply=shlex.quote(reply_text))}"
    await page.evaluate("t => window.__recognizer.say(t, true)", spoken)
    await expect(page.locator("#messages li.msg.user")).to_have_count(1)
    await page.wait_for_function("window.__spoken.length >= 2", timeout=10000)
    # Talking over it: reading stops and the reply ends where it was heard.
    await page.evaluate("window.__recognizer.say('wait', false)")
    reply = replies(page).first
    await expect(reply).to_have_attribute("data-streaming", "false", timeout=10000)
    await expect(reply.locator(".meta")).to_contain_text("interrupted")
    assert await page.evaluate("window.__cancelled") >= 1
    heard = await page.evaluate("window.__spoken.join('')")
    stored = (await stored_reply(server, user)).rstrip()
    assert 0 < len(stored) < len(reply_text.strip()), "kept only what was heard"
    assert heard.startswith(stored), "the stored reply is what was read aloud, no more"


async def test_the_team_is_created_and_edited_on_the_page(
    browser: Browser, server: RunningServer
) -> None:
    user = new_user()
    page = await signed_in(browser, server, user)
    await page.click("#team summary")
    await page.fill("#assistant-name", "Planner")
    await page.click("#new-assistant button")
    planner = page.locator("#assistants li.assistant", has_text="Planner")
    await expect(planner).to_have_count(1)
    await page.select_option("#skill-assistant", label="Planner")
    await page.fill("#skill-name", "trips")
    await page.fill("#skill-description", "plan trips and book travel")
    await page.click("#new-skill button")
    skill = page.locator("#assistants li.skill", has_text="trips")
    await expect(skill).to_contain_text("plan trips and book travel")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("plan journeys")))
    await skill.get_by_role("button", name="Edit").click()
    await expect(skill).to_contain_text("trips: plan journeys")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("Travel agent")))
    await planner.get_by_role("button", name="Rename").first.click()
    await expect(page.locator("#assistants")).to_contain_text("Travel agent")
    async with httpx.AsyncClient(
        base_url=f"{server.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    ) as http:
        names = {a["name"] for a in (await http.get("/assistants")).json()}
    assert "Travel agent" in names
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("2048")))
    agent = page.locator("#assistants li.assistant", has_text="Travel agent")
    await agent.get_by_role("button", name="Thinking").click()
    await expect(agent.locator("span").first).to_have_attribute("title", "thinking budget 2048")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await (
        page.locator("#assistants li.skill", has_text="trips")
        .get_by_role("button", name="Delete")
        .click()
    )
    await expect(page.locator("#assistants li.skill")).to_have_count(0)
    await shot(page, "team")


async def test_scrolling_up_pages_in_older_history(browser: Browser, server: RunningServer) -> None:
    user = new_user()
    client = ChatClient(server.ws, user)
    await client.connect()
    info = await client.create("Long")
    for n in range(30):  # 60 messages: more than the first page of 50
        ended = client.next("turn_end")
        await client.send(info.id, f"turn {n} {directive(ttft_ms=0, tps=2000, tokens=3)}")
        await asyncio.wait_for(ended, 10)
    await client.close()
    page = await signed_in(browser, server, user)
    messages = page.locator("#messages li.msg")
    await expect(messages).to_have_count(50)
    await expect(messages.first).to_contain_text("turn 5")  # seq 11: the oldest of the page
    await page.eval_on_selector("#messages", "el => el.scrollTop = 0")
    await expect(messages).to_have_count(60)
    await expect(messages.first).to_contain_text("turn 0")


async def test_regenerate_edit_and_versions_on_the_page(
    browser: Browser, server: RunningServer
) -> None:
    user = new_user()
    page = await signed_in(browser, server, user)
    await new_conversation(page, "Versions")
    quick = directive(ttft_ms=0, tps=500, tokens=6)
    await send(page, f"name a colour {quick}")
    done = page.locator("#messages li.msg.assistant[data-streaming='false']")
    await expect(done).to_have_count(1)
    messages = page.locator("#messages li.msg")

    # Regenerate: the new reply replaces the shown one; the first stays as version 1/2.
    await page.get_by_role("button", name="Regenerate this reply").click()
    await expect(replies(page).locator(".place")).to_have_text("2/2")
    await expect(messages).to_have_count(2)
    await expect(done).to_have_count(1)
    await page.get_by_role("button", name="Previous version").click()
    await expect(replies(page).locator(".place")).to_have_text("1/2")
    await expect(page.get_by_role("button", name="Previous version")).to_be_disabled()

    # Edit the turn: a new branch from its parent, with a reply of its own.
    page.once("dialog", lambda d: asyncio.ensure_future(d.accept(f"name a fruit {quick}")))
    await page.get_by_role("button", name="Edit and resend").click()
    user_turn = page.locator("#messages li.msg.user")
    await expect(user_turn.locator(".body")).to_have_text(re.compile("^name a fruit"))
    await expect(user_turn.locator(".place")).to_have_text("2/2")
    await expect(done).to_have_count(1)
    await expect(replies(page).locator(".place")).to_have_count(0)  # its only reply
    await shot(page, "versions")

    # A second tab opens on the branch shown, and follows a switch made in the first.
    other = await signed_in(browser, server, user)
    await expect(other.locator("#messages li.msg.user .body")).to_have_text(
        re.compile("^name a fruit")
    )
    await page.get_by_role("button", name="Previous version").click()
    await expect(other.locator("#messages li.msg.user .body")).to_have_text(
        re.compile("^name a colour")
    )
    # A switch shows the newest branch below the version picked: the regenerated reply.
    await expect(other.locator("#messages li.msg.assistant .place")).to_have_text("2/2")
    await page.close()
    await other.close()


async def test_thinking_shows_apart_from_the_reply(browser: Browser, server: RunningServer) -> None:
    page = await signed_in(browser, server, new_user())
    await new_conversation(page, "Thinking")
    # A complex turn gets the assistant's thinking budget: the model thinks, and the
    # page shows its summary folded, apart from the reply.
    await send(page, "Compare these two plans in detail, step by step, and analyze the risks.")
    reply = replies(page).last
    await expect(reply).to_have_attribute("data-streaming", "false")
    thoughts = reply.locator("details.thoughts")
    await expect(thoughts).to_be_visible()
    await expect(thoughts.locator("summary")).to_have_text("Thinking")
    await thoughts.locator("summary").click()
    await expect(thoughts).to_contain_text("Understanding the request")
    await expect(reply.locator(".body")).not_to_contain_text("Understanding the request")
    await shot(page, "thinking")


async def test_a_tool_is_added_on_the_page_and_its_call_shows_in_the_reply(
    browser: Browser, start_server: Callable[..., RunningServer]
) -> None:
    async def hook(request: Request) -> Response:
        args = orjson.loads(await request.body())["arguments"]
        return Response(orjson.dumps({"events": [f"dentist on {args['day']}"]}))

    backend = serve(Starlette(routes=[Route("/hooks/calendar", hook, methods=["POST"])]))
    try:
        server = start_server(tool_url_allowlist=f"{backend.http}/hooks/")
        page = await signed_in(browser, server, new_user())
        await page.click("#team summary")
        await page.fill("#tool-name", "calendar")
        await page.fill("#tool-description", "Looks up the user's calendar for a day")
        await page.fill("#tool-url", f"{backend.http}/hooks/calendar")
        schema = '{"type": "object", "properties": {"day": {"type": "string"}}}'
        await page.fill("#tool-parameters", schema)
        await page.click("#new-tool button")
        await expect(page.locator("#assistants li.tool")).to_contain_text("tool calendar")
        await new_conversation(page, "Tools")
        args = shlex.quote('{"day": "tuesday"}')
        await send(page, f"what is on tuesday? {directive(call='calendar', args=args)}")
        reply = replies(page).last
        await expect(reply).to_have_attribute("data-streaming", "false")
        call = reply.locator(".calls li")
        await expect(call).to_have_text(re.compile(r'^calendar\(day: "tuesday"\) → .*dentist'))
        await expect(call).to_have_attribute("data-state", "ok")
        await expect(reply.locator(".body")).to_contain_text("dentist on tuesday")
        await shot(page, "tools")
    finally:
        backend.stop()
