"""A staff member's browser, reduced to what the attacks need: log in, read a form, post it back.

Plain HTTP over loopback with the session and CSRF cookies a browser keeps (sent back whatever
their Secure flag says: the stack is plain HTTP). Redirects are not followed, so a 302 after a
save and a 403 on a refused page are both visible.
"""
from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class FormFields(HTMLParser):
    """The successful controls of one <form>: the one with this id, else the first one on the page
    that is not the admin's log-out form."""

    def __init__(self, form_id: str | None = None):
        super().__init__()
        self.form_id, self.inside, self.done = form_id, False, False
        self.fields: list[tuple[str, str]] = []
        self._select: str | None = None
        self._textarea: str | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        wanted = a.get("id") == self.form_id if self.form_id else a.get("id") != "logout-form"
        if tag == "form" and not self.done and wanted:
            self.inside = True
        if not self.inside:
            return
        name = a.get("name")
        if tag == "input" and name and "disabled" not in a:
            kind = (a.get("type") or "text").lower()
            if kind in ("checkbox", "radio"):
                if "checked" in a:
                    self.fields.append((name, a.get("value", "on")))
            elif kind not in ("submit", "button", "image", "file", "reset"):
                self.fields.append((name, a.get("value") or ""))
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in a:
            self.fields.append((self._select, a.get("value", "")))
        elif tag == "textarea" and name:
            self._textarea, self._text = name, ""

    def handle_data(self, data):
        if self._textarea:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea" and self._textarea:
            self.fields.append((self._textarea, self._text.lstrip("\n")))
            self._textarea = None
        elif tag == "form" and self.inside:
            self.inside, self.done = False, True


class Form:
    """Ordered, multi-valued form data: ``set`` replaces a field's values, ``drop`` removes them."""

    def __init__(self, fields: list[tuple[str, str]]):
        self.fields = list(fields)

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.fields if k == name]

    def set(self, name: str, *values: str) -> Form:
        self.drop(name)
        self.fields += [(name, str(v)) for v in values]
        return self

    def drop(self, name: str) -> Form:
        self.fields = [(k, v) for k, v in self.fields if k != name]
        return self


class AdminClient:
    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")
        self.cookies: dict[str, str] = {}
        self.opener = urllib.request.build_opener(_NoRedirect)

    def request(self, method: str, path: str, data: list[tuple[str, str]] | None = None):
        """(status, body text, headers); error statuses are answers, not exceptions."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()),
                   "Referer": self.base + path}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            response = self.opener.open(request, timeout=30)
        except urllib.error.HTTPError as error:
            response = error
        with response:
            status, text, response_headers = response.status, response.read().decode(errors="replace"), \
                response.headers
        for cookie in response_headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return status, text, response_headers

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, data: Form | list[tuple[str, str]]):
        fields = data.fields if isinstance(data, Form) else list(data)
        if not any(k == "csrfmiddlewaretoken" for k, _ in fields):
            fields.append(("csrfmiddlewaretoken", self.cookies.get("csrftoken", "")))
        return self.request("POST", path, fields)

    def form(self, path: str, form_id: str | None = None) -> tuple[int, Form]:
        """GET ``path`` and read its form (status, fields); an empty form when the page has none."""
        status, text, _ = self.get(path)
        parser = FormFields(form_id)
        parser.feed(text)
        return status, Form(parser.fields)

    def login(self, username: str, password: str) -> AdminClient:
        status, form = self.form("/admin/login/")
        assert status == 200, status
        status, text, headers = self.post("/admin/login/?next=/admin/", form.set("username", username)
                                          .set("password", password).set("next", "/admin/"))
        assert status == 302 and "sessionid" in self.cookies, (status, re.sub(r"\s+", " ", text)[:500])
        return self
