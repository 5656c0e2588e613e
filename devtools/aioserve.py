"""Serving a small aiohttp app: the local stand-ins (fake_llm, fake_platforms) use this.

``serve_until_signal`` runs one in the foreground (management commands); ``ThreadedServer`` runs
one on a daemon thread with its own event loop (tests).
"""
from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable

from aiohttp import web


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Listen on host:port (0 picks a free port); returns the runner and the root URL."""
    # No access log: it costs more than the request itself under benchmark load.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{runner.addresses[0][1]}"


def serve_until_signal(app: web.Application, host: str, port: int, *,
                       on_ready: Callable[[str], None] | None = None) -> None:
    """Serve in this thread until SIGINT/SIGTERM, then shut down cleanly. ``on_ready(root_url)``.

    A SIGINT the process was started ignoring stays ignored, as a shell's background job expects:
    under ``make run`` the terminal's Ctrl-C is for the script, which stops the gateway first and
    the model stand-in after it (its runs in flight still need the model)."""

    async def main() -> None:
        runner, root = await start_site(app, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                loop.add_signal_handler(sig, stop.set)
        try:
            if on_ready is not None:
                on_ready(root)
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


class ThreadedServer:
    """``app`` served on a daemon thread with its own event loop; one-shot (start, then stop)."""

    thread_name = "aiohttp-server"

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port
        self.root: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start_in_thread(self, timeout: float = 10.0) -> str:
        """Start serving; returns the root URL once listening (re-raises a failure to bind)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.thread_name} already started")
        ready, failure = threading.Event(), []
        loop = self._loop = asyncio.new_event_loop()

        def run() -> None:
            try:
                runner, self.root = loop.run_until_complete(start_site(self.app, self.host, self.port))
            except BaseException as exc:  # surfaced in the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"{self.thread_name} did not start in time")
        if failure:
            self._thread = None
            raise failure[0]
        assert self.root is not None
        return self.root

    def call_in_loop(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the server's loop (where its state lives) and wait until it has run."""
        async def run() -> None:
            fn()
        asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    def stop(self) -> None:
        """Stop the loop and join the thread; safe to call twice."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
