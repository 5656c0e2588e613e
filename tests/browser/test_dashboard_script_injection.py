"""In a real browser: a model name carrying a script tag is shown as text on the dashboard and
never runs (issue: chart data used to be written with |safe inside a <script> element)."""
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.logs.models import LLMCall
from apps.logs.rollups import rollup_day

from .test_dashboard_browser import TIMEOUT_MS, log_in_as_staff

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SCRIPT = "</script><script>alert(1)</script>"


def test_a_script_in_a_model_name_stays_text(live_server_stack, browser, screenshot, admin_user):
    LLMCall.objects.create(model=SCRIPT, provider="p", status="ok", total_tokens=10, cost=Decimal("0.5"))
    rollup_day(timezone.localdate())
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        log_in_as_staff(page, live_server_stack.url, admin_user)
        page.goto(f"{live_server_stack.url}/dashboard/cost/")
        page.wait_for_selector("body[data-charts-drawn='1']", timeout=TIMEOUT_MS)
        assert page.locator("canvas[data-drawn='1']").count() == 1  # the chart (with that label) drew
        assert SCRIPT in page.locator("#table-model").inner_text()
        assert page.evaluate("document.querySelectorAll('script').length") == 4  # data, Chart.js, ours, live refresh
        screenshot(page, "cost")
    finally:
        context.close()
    assert dialogs == []
