"""In a real browser: the chat widget embedded in a page of another site. On a listed origin it
opens, chats, renders Markdown inert (no script from a reply), keeps the conversation across page
loads and fits a phone; on a foreign origin it refuses with a readable message."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .test_dashboard_browser import TIMEOUT_MS

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HOSTILE = "<img src=x onerror=alert(1)> [click me](javascript:alert(1)) and [docs](https://example.com/docs)"


@pytest.fixture
def shop_site(live_server_stack):
    """Another site (its own port, so its own origin) whose page embeds the widget with one tag.
    Its CSS is deliberately loud: none of it may reach the widget."""
    page = (
        "<!doctype html><html><head><meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<style>* { color: #c00 !important; font-family: serif !important } button { display: none }</style>"
        "</head><body><h1>The shop</h1><p>Products.</p>"
        f"<script src='{live_server_stack.url}/static/webchat/widget.js' data-chat='web' async></script>"
        "</body></html>"
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def open_widget(page):
    page.click("[data-agent-gateway-chat] .launcher")  # Playwright's CSS pierces the open shadow root


@pytest.fixture
def allowed_site(browser, shop_site, webchat_channel):
    """(the shop's address, a desktop-sized browser context) with the shop listed on the channel."""
    allowed = f"http://localhost:{shop_site}"
    webchat_channel.allowed_origins = [allowed]
    webchat_channel.save()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield allowed, context
    context.close()


def test_the_widget_on_an_allowed_site(screenshot, allowed_site):
    allowed, context = allowed_site
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(allowed + "/")
    open_widget(page)
    page.wait_for_selector("[data-agent-gateway-chat] .send:not([disabled])", timeout=TIMEOUT_MS)
    page.fill("[data-agent-gateway-chat] .text", HOSTILE)
    page.click("[data-agent-gateway-chat] .send")
    # A streamed reply is re-rendered when its final message lands, which sets data-id; a
    # handle taken from a delta's render would be detached by then, so wait for the final one.
    page.wait_for_selector("[data-agent-gateway-chat] .msg.bot[data-id] a >> text=docs", timeout=TIMEOUT_MS)
    reply = page.locator("[data-agent-gateway-chat] .msg.bot[data-id]")
    assert page.locator("[data-agent-gateway-chat] .msg.bot").count() == 1
    assert reply.evaluate("el => el.querySelectorAll('img, script, [onerror]').length") == 0
    hrefs = reply.evaluate("el => Array.from(el.querySelectorAll('a')).map(a => [a.textContent, "
                           "a.getAttribute('href'), a.getAttribute('rel')])")
    assert ["docs", "https://example.com/docs", "noopener noreferrer nofollow"] in hrefs
    assert all(not (href or "").lower().startswith("javascript:") for _text, href, _rel in hrefs)
    # the site's "* { color: #c00 }" and "button { display: none }" stay outside
    assert page.evaluate("getComputedStyle(document.querySelector('[data-agent-gateway-chat]').shadowRoot"
                         ".querySelector('.send')).display") != "none"
    screenshot(page, "widget-desktop")

    page.reload()  # the conversation (and the open panel) is kept across page loads
    page.wait_for_selector("[data-agent-gateway-chat] .panel.open", timeout=TIMEOUT_MS)
    page.wait_for_selector("[data-agent-gateway-chat] .msg.user >> text=click me", timeout=TIMEOUT_MS)
    page.wait_for_selector("[data-agent-gateway-chat] .msg.bot a >> text=docs", timeout=TIMEOUT_MS)

    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    width = page.evaluate("document.querySelector('[data-agent-gateway-chat]').shadowRoot"
                          ".querySelector('.panel').getBoundingClientRect().width")
    assert width == 390
    screenshot(page, "widget-phone")
    assert dialogs == []


def test_the_widget_refuses_a_foreign_site(browser, screenshot, shop_site, webchat_channel):
    webchat_channel.allowed_origins = [f"http://localhost:{shop_site}"]
    webchat_channel.save()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"http://127.0.0.1:{shop_site}/")  # same server, another origin: not listed
        open_widget(page)
        notice = page.wait_for_selector("[data-agent-gateway-chat] .notice", timeout=TIMEOUT_MS)
        assert "not available on this site" in notice.inner_text()
        assert page.locator("[data-agent-gateway-chat] .send[disabled]").count() == 1
        screenshot(page, "widget-refused")
    finally:
        context.close()


# Markup that loads a resource with no click while <img> is forbidden: a reply (what the model
# writes may carry what a page or a tool told it) must not reach any address by being shown.
BEACONS = ('<video poster="{leak}/poster"></video> <audio src="{leak}/audio" preload="auto"></audio> '
           '<video><source src="{leak}/source"></video>\n\n'
           '<table background="{leak}/background"><tr><td>cell</td></tr></table>')


def test_a_reply_loads_nothing_from_another_address(allowed_site):
    allowed, context = allowed_site
    page = context.new_page()
    beacons = []
    page.on("request", lambda request: beacons.append(request.url) if "/leak/" in request.url else None)
    page.goto(allowed + "/")
    open_widget(page)
    page.wait_for_selector("[data-agent-gateway-chat] .send:not([disabled])", timeout=TIMEOUT_MS)
    page.fill("[data-agent-gateway-chat] .text", BEACONS.format(leak=allowed + "/leak"))
    page.click("[data-agent-gateway-chat] .send")
    page.wait_for_selector("[data-agent-gateway-chat] .msg.bot[data-id] td >> text=cell", timeout=TIMEOUT_MS)
    reply = page.locator("[data-agent-gateway-chat] .msg.bot[data-id]")
    loading = reply.evaluate("el => Array.from(el.querySelectorAll("
                             "'video, audio, source, track, picture, [src], [srcset], [poster], [background]'))"
                             ".map(e => e.outerHTML)")
    assert loading == []
    assert beacons == []
