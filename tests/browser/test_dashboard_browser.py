"""In a real browser: staff log in, read the dashboards and a conversation, chat on the web chat
page and see the reply; a customer is refused the dashboard."""
import pytest
from django.test import Client

from apps.logs.request_log import request_log_flush
from apps.logs.rollups import recent_days, rollup_days

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TIMEOUT_MS = 30_000


def log_in_as_staff(page, url, user):
    page.goto(f"{url}/admin/login/?next=/dashboard/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", "pw-for-tests")
    page.click("input[type=submit]")
    page.wait_for_url(f"{url}/dashboard/", timeout=TIMEOUT_MS)


def test_staff_chat_then_dashboards_and_the_conversation(
    live_server_stack, browser, screenshot, admin_user, webchat_channel
):
    url = live_server_stack.url
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        log_in_as_staff(page, url, admin_user)

        page.goto(f"{url}/chat/{webchat_channel.slug}/")
        page.wait_for_selector("#send:not([disabled])", timeout=TIMEOUT_MS)
        page.fill("#text", "hello from the browser")
        page.click("#send")
        reply = page.wait_for_selector(".msg.bot >> text=Echo: hello from the browser", timeout=TIMEOUT_MS)
        assert reply.is_visible()
        screenshot(page, "chat")

        request_log_flush()
        rollup_days(recent_days())  # what the beat task does every few minutes

        page.goto(f"{url}/dashboard/")
        page.wait_for_selector("body[data-charts-drawn='7']", timeout=TIMEOUT_MS)
        assert page.locator("canvas[data-drawn='1']").count() == 7
        assert page.locator(".cards div", has_text="messages").inner_text().startswith("1")
        screenshot(page, "overview")

        for name in ("cost", "errors"):
            page.goto(f"{url}/dashboard/{name}/")
            page.wait_for_selector("body[data-charts-drawn]", timeout=TIMEOUT_MS)
            screenshot(page, name)

        page.goto(f"{url}/dashboard/conversations/?text=browser")
        page.click("#table-conversations tbody a")
        page.wait_for_selector("#table-messages", timeout=TIMEOUT_MS)
        messages = page.locator("#table-messages tbody tr")
        assert messages.count() == 2
        assert "hello from the browser" in messages.nth(0).inner_text()
        assert "Echo: hello from the browser" in messages.nth(1).inner_text()
        assert "fake-gpt" in messages.nth(1).inner_text()
        screenshot(page, "conversation")
    finally:
        context.close()


def test_a_customer_is_refused_the_dashboard(live_server_stack, browser, screenshot, customer):
    django_client = Client()
    django_client.force_login(customer)
    session = django_client.cookies["sessionid"].value
    context = browser.new_context()
    context.add_cookies([{"name": "sessionid", "value": session, "url": live_server_stack.url}])
    page = context.new_page()
    try:
        response = page.goto(f"{live_server_stack.url}/dashboard/")
        assert response.status == 403
        assert "Not allowed" in page.inner_text("h1")
        screenshot(page, "refused")
    finally:
        context.close()
