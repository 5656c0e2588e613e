"""Django's middleware as Daphne runs it (async mode, gateway_project/middleware.py): API paths carry
no browser state and still get the security headers; browser pages keep CSRF and sessions (the
browser tests log staff in through them)."""
import urllib.error
import urllib.parse
import urllib.request

import pytest

from devtools.stack import http

pytestmark = pytest.mark.e2e


def test_an_api_request_gets_security_headers_and_no_cookies(embedded_stack):
    status, body, headers = http("POST", f"{embedded_stack.url}/api/v1/messages", {"message": "hi"},
                                 {"Authorization": f"Bearer {embedded_stack.demo['api_keys']['customer']}"})
    assert status == 202, body
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert headers.get_all("Set-Cookie") is None  # no session, no CSRF cookie


def test_a_browser_page_gets_a_csrf_cookie_and_a_post_without_the_token_is_refused(embedded_stack):
    status, _page, headers = http("GET", f"{embedded_stack.url}/admin/login/")
    assert status == 200 and headers["X-Frame-Options"] == "DENY"
    assert any(cookie.startswith("csrftoken=") for cookie in headers.get_all("Set-Cookie"))
    form = urllib.parse.urlencode({"username": "staff", "password": "wrong"})

    request = urllib.request.Request(f"{embedded_stack.url}/admin/login/", data=form.encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403  # CSRF still guards the browser pages
