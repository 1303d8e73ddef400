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
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.servers import RunningServer
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
