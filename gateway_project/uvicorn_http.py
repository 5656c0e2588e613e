"""uvicorn's httptools protocol with a bound on a request's line and headers.

httptools (llhttp) keeps whatever header text it is sent until the head ends: one connection
sending an endless header line grows the server's memory by as much as it sends (200 MB sent, 400 MB
more resident, never given back). Daphne (Twisted) and uvicorn's h11 protocol stop at about 16 KiB;
this does the same for httptools, counting the bytes received while a request's head is still
incomplete and answering 400 (then closing) past GATEWAY_MAX_HEAD_BYTES. The image's CMD and
devtools.stack.UVICORN_OPTIONS select it with ``--http gateway_project.uvicorn_http:BoundedHttpToolsProtocol``.
Leaf module: imports no app and no Django.
"""
from __future__ import annotations

import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = int(os.environ.get("GATEWAY_MAX_HEAD_BYTES", 64 * 1024))


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False  # a request has begun and its headers are not complete yet
        self._head_began = False  # ... and it began in the chunk being parsed
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_began, self._head_bytes = True, True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        self._head_began = False
        super().data_received(data)
        # A chunk in which a head began and did not end is not counted (its start may be a
        # previous body): the bound is the limit plus one read.
        if self._in_head and not self._head_began and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.logger.warning("Request line and headers too large.")
                self.send_400_response("Request line and headers too large.")
