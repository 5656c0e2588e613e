"""In a real browser, the people at the desk: a message sent in the web chat shows on the live
dashboard without a rollup; a customer asking for a person shows up live in the staff inbox, the
staff member sees the transcript grow, replies, and the reply reaches the customer's chat."""
import pytest

from apps.conversations.models import Message
from apps.logs.models import AuditEvent, LLMCall
from apps.routing.models import Handoff
from tests.helpers import wait_until

from .test_dashboard_browser import TIMEOUT_MS, log_in_as_staff

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LIVE_MS = 5_000  # the promise: on the overview within 5 s


def chat(page, url, slug, text, expect):
    page.fill("#text", text)
    page.click("#send")
    if expect:
        page.wait_for_selector(f".msg.bot >> text={expect}", timeout=TIMEOUT_MS)


def test_a_message_is_on_the_live_dashboard_within_5_seconds(live_server_stack, browser, screenshot, admin_user,
                                                             webchat_channel):
    url = live_server_stack.url
    staff = browser.new_context(viewport={"width": 1280, "height": 900})
    customer = browser.new_context(viewport={"width": 420, "height": 800})
    try:
        dashboard = staff.new_page()
        log_in_as_staff(dashboard, url, admin_user)
        dashboard.wait_for_selector("body[data-live='3000']", timeout=TIMEOUT_MS)
        cards = dashboard.locator(".cards div", has_text="messages").first
        assert cards.inner_text().startswith("0")

        page = customer.new_page()
        page.goto(f"{url}/chat/{webchat_channel.slug}/")
        page.wait_for_selector("#send:not([disabled])", timeout=TIMEOUT_MS)
        chat(page, url, webchat_channel.slug, "hello dashboard", None)
        page.wait_for_selector(".msg.you >> text=hello dashboard", timeout=TIMEOUT_MS)
        # no rollup runs here: today's partial day is read live, and the page refreshes itself
        dashboard.wait_for_function(
            "() => document.querySelector('.cards div b').textContent.trim() === '1'", timeout=LIVE_MS)
        screenshot(dashboard, "overview-live")
    finally:
        staff.close()
        customer.close()


def test_the_inbox_receives_a_handoff_live_and_the_reply_reaches_the_customer(
        live_server_stack, browser, screenshot, admin_user, webchat_channel):
    admin_user.is_superuser = True  # may change conversations, as in the admin
    admin_user.save()
    url = live_server_stack.url
    staff = browser.new_context(viewport={"width": 1280, "height": 900})
    customer = browser.new_context(viewport={"width": 420, "height": 800})
    try:
        inbox = staff.new_page()
        log_in_as_staff(inbox, url, admin_user)
        inbox.goto(f"{url}/console/")
        inbox.wait_for_selector("body[data-live-state='open']", timeout=TIMEOUT_MS)
        assert inbox.locator(".inbox .item").count() == 0

        page = customer.new_page()
        page.goto(f"{url}/chat/{webchat_channel.slug}/")
        page.wait_for_selector("#send:not([disabled])", timeout=TIMEOUT_MS)
        chat(page, url, webchat_channel.slug, "where is my parcel", "Echo: where is my parcel")
        chat(page, url, webchat_channel.slug, "talk to a human", None)

        item = inbox.wait_for_selector(".inbox .item.waiting >> text=talk to a human", timeout=TIMEOUT_MS)
        screenshot(inbox, "inbox")
        item.click()
        inbox.wait_for_selector("#transcript >> text=where is my parcel", timeout=TIMEOUT_MS)
        inbox.wait_for_selector("body[data-live-state='open']", timeout=TIMEOUT_MS)
        inbox.click("#take")
        inbox.wait_for_selector("#reply-text", timeout=TIMEOUT_MS)

        chat(page, url, webchat_channel.slug, "are you there?", None)  # the transcript grows live
        inbox.wait_for_selector("#transcript >> text=are you there?", timeout=TIMEOUT_MS)

        inbox.fill("#reply-text", "Hi, Sam from support here. Your parcel ships today.")
        inbox.click("#reply-send")
        page.wait_for_selector(".msg.bot >> text=Sam from support", timeout=TIMEOUT_MS)
        inbox.wait_for_selector("#transcript >> text=Sam from support", timeout=TIMEOUT_MS)
        screenshot(inbox, "conversation")
        screenshot(page, "customer-chat")

        inbox.click("#handback")
        inbox.wait_for_url(f"{url}/console/", timeout=TIMEOUT_MS)
        assert not Handoff.objects.filter(ended_at__isnull=True).exists()
        actions = list(AuditEvent.objects.filter(action__startswith="handoff.").order_by("created_at")
                       .values_list("action", flat=True))
        assert actions == ["handoff.requested", "handoff.started", "handoff.replied", "handoff.ended"]
    finally:
        staff.close()
        customer.close()


def test_a_person_answering_while_the_agent_streams_replaces_its_pieces(live_server_stack, browser, admin_user,
                                                                         webchat_channel):
    """The customer's chat ends with the person's answer alone: the pieces the agent's run streamed
    for that message, before and after the person answered, are taken back once its reply is dropped."""
    admin_user.is_superuser = True
    admin_user.save()
    url = live_server_stack.url
    staff = browser.new_context(viewport={"width": 1280, "height": 900})
    customer = browser.new_context(viewport={"width": 420, "height": 800})
    try:
        page = customer.new_page()
        page.goto(f"{url}/chat/{webchat_channel.slug}/")
        page.wait_for_selector("#send:not([disabled])", timeout=TIMEOUT_MS)
        chat(page, url, webchat_channel.slug, "[[slow:1]] one two three four five six seven eight nine ten", None)
        page.wait_for_selector(".msg.bot >> text=Echo", timeout=TIMEOUT_MS)  # the agent is streaming
        message = Message.objects.get(direction="in")

        inbox = staff.new_page()
        log_in_as_staff(inbox, url, admin_user)
        inbox.goto(f"{url}/console/c/{message.conversation_id}/")
        inbox.click("#take")
        inbox.fill("#reply-text", "Sam here, I have it.")
        inbox.click("#reply-send")
        page.wait_for_selector(".msg.bot >> text=Sam here", timeout=TIMEOUT_MS)
        assert wait_until(lambda: LLMCall.objects.filter(message=message).exists(), timeout=30)  # the run ended
        page.wait_for_function("() => Array.from(document.querySelectorAll('.msg.bot'), e => e.textContent)"
                               ".join('|') === 'Sam here, I have it.'", timeout=TIMEOUT_MS)
        assert list(Message.objects.filter(reply_to=message).values_list("text", flat=True)) == [
            "Sam here, I have it."]
    finally:
        staff.close()
        customer.close()
