"""The connectors' plain-HTTP client against a real local server: what each answer becomes."""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apps.core.http import ConnectorError, request_json


class Handler(BaseHTTPRequestHandler):
    """The path says what to answer: /status/<code>, /slow, /redirect, /text, /empty, /echo."""

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def route(self):
        path = self.path.split("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        received = self.rfile.read(length) if length else b""
        if path == "/echo":
            self.answer(200, json.dumps({"method": self.command, "body": received.decode(),
                                         "type": self.headers.get("Content-Type")}).encode())
        elif path.startswith("/status/"):
            self.answer(int(path.rsplit("/", 1)[1]), b'{"error": "no"}', [("Retry-After", "7")])
        elif path == "/redirect":
            self.answer(302, headers=[("Location", "/echo")])
        elif path == "/text":
            self.answer(200, b"<html>not json</html>")
        elif path == "/empty":
            self.answer(204)
        elif path == "/slow":
            self.server.release.wait(10)
            self.answer(200, b"{}")


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


def test_a_json_answer_is_decoded_and_the_payload_sent_as_json(server):
    assert request_json("POST", f"{server}/echo", payload={"a": 1}) == {
        "method": "POST", "body": '{"a": 1}', "type": "application/json"}
    assert request_json("GET", f"{server}/empty") is None


@pytest.mark.parametrize("status, permanent", [(400, True), (404, True), (429, False), (500, False), (503, False)])
def test_statuses_say_whether_retrying_can_help(server, status, permanent):
    with pytest.raises(ConnectorError, match=f"HTTP {status} from 127.0.0.1") as caught:
        request_json("POST", f"{server}/status/{status}?access_token=secret-token", payload={})
    assert caught.value.permanent is permanent and caught.value.retry_after == 7.0
    assert "secret-token" not in str(caught.value)


def test_an_answer_that_is_not_json_is_an_error(server):
    with pytest.raises(ConnectorError, match="not JSON"):
        request_json("GET", f"{server}/text")


def test_a_get_follows_a_redirect_and_a_post_does_not(server):
    assert request_json("GET", f"{server}/redirect")["method"] == "GET"
    with pytest.raises(ConnectorError, match="HTTP 302") as caught:
        request_json("POST", f"{server}/redirect", payload={"secret": "body"})
    assert caught.value.permanent


def test_an_unreachable_host_is_transient():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectorError, match=f"cannot reach 127.0.0.1:{port}") as caught:
        request_json("GET", f"http://127.0.0.1:{port}/x?key=secret-key")
    assert not caught.value.permanent and "secret-key" not in str(caught.value)


def test_a_server_slower_than_the_timeout_is_transient(server, settings):
    settings.CONNECTOR_HTTP_TIMEOUT_SECONDS = 0.2
    with pytest.raises(ConnectorError, match="cannot reach 127.0.0.1") as caught:
        request_json("GET", f"{server}/slow")
    assert not caught.value.permanent
