"""uvicorn as the image runs it (devtools.stack.UVICORN_OPTIONS) bounds what one client makes it
buffer, as Daphne does: a request's line and headers (h11's 16 KiB; httptools would keep any
amount), and a websocket message (uvicorn's default allows 16 MiB). granian for the HTTP doors
(GRANIAN_OPTIONS) bounds the head the same. A tiny ASGI app stands in for the gateway."""
import asyncio
import socket
import subprocess
import time
from pathlib import Path

import pytest
import websockets

from devtools.stack import BIN, GRANIAN_OPTIONS, UVICORN_OPTIONS, free_port

BASE_DIR = Path(__file__).resolve().parents[2]
APP = '''
async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (event := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": str(len(event.get("text") or ""))})
        return
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    answer = str(len(body)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
'''


def started(name: str, app_dir, port: int) -> subprocess.Popen:
    if name == "granian":
        command = [str(BIN / "granian"), *GRANIAN_OPTIONS, "--working-dir", str(app_dir), "--log-level", "warning"]
    else:
        command = [str(BIN / "uvicorn"), *UVICORN_OPTIONS, "--app-dir", str(app_dir), "--log-level", "warning"]
    return subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port), "tiny_asgi:app"],
                            cwd=BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def serving(tmp_path_factory, name: str):
    app_dir = tmp_path_factory.mktemp("tiny_asgi")
    (app_dir / "tiny_asgi.py").write_text(APP)
    port = free_port()
    process = started(name, app_dir, port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module", params=["uvicorn", "granian"])
def server(tmp_path_factory, request):
    yield from serving(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def uvicorn_server(tmp_path_factory):
    yield from serving(tmp_path_factory, "uvicorn")


def exchange(port: int, head: bytes, pieces, timeout: float = 20) -> bytes:
    """Send ``head`` then each piece; whatever the server answers (it may close mid-way)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            for piece in pieces:
                sock.sendall(piece)
        except OSError:  # the server closed: read what it said
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer


def test_an_endless_header_is_refused(server):
    answer = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ",
                      [b"a" * 65536 for _ in range(64)] + [b"\r\nConnection: close\r\n\r\n"])
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:200]  # uvicorn's, granian's


def test_ordinary_heads_and_large_bodies_pass(server):
    body = b"b" * (3 * 1024 * 1024)
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nX-Token: " + b"t" * 16000 + b"\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    answer = exchange(server, head + body, [])
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(str(len(body)).encode()), answer[:200]


def test_a_websocket_message_over_one_mebibyte_closes_the_socket(uvicorn_server):
    """(granian serves no websockets: --no-ws; uvicorn or Daphne serve /ws/.)"""
    async def run():
        async with websockets.connect(f"ws://127.0.0.1:{uvicorn_server}/", max_size=None, compression=None) as ws:
            await ws.send("x" * 1000)
            assert await ws.recv() == "1000"
            # The server may close while the message is still being sent: the send then raises.
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.send("x" * (2 * 1024 * 1024))
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(run()) == 1009
