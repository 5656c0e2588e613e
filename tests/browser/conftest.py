"""Browser tests: headless Debian Chromium driven by Playwright, against a real Daphne process.

Chromium comes from Debian's ``chromium`` package (``make test`` installs it when missing);
Playwright's own browser download is never used. Screenshots go to ``test-artifacts/``.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.conf import settings

from devtools.stack import BASE_DIR, Stack, base_env, database_url

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = BASE_DIR / "test-artifacts"


def pytest_collection_modifyitems(config, items):
    missing = [] if Path(CHROMIUM).exists() else [f"no Chromium at {CHROMIUM}"]
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("playwright is not installed")
    browser_items = [item for item in items if "browser" in item.keywords]
    if not missing or not browser_items:
        return
    if os.environ.get("GATEWAY_REQUIRE_SERVICES") == "1":
        raise pytest.UsageError(f"browser tests cannot run: {', '.join(missing)} (run `make test`)")
    for item in browser_items:
        item.add_marker(pytest.mark.skip(reason=f"{', '.join(missing)}; `make test` installs them"))


@pytest.fixture(scope="module")
def live_server_stack(django_db_setup, django_db_blocker):
    """One Daphne (plus a Celery worker in services mode) on the test database.

    Module-scoped: the worker must be gone before other tests queue agent runs to the same
    broker, or it would answer their messages behind their backs."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        env = base_env(DATABASE_URL=f"sqlite:///{Path(db['NAME']).resolve()}")
    else:
        env = base_env(DATABASE_URL=database_url(db), REDIS_URL=settings.REDIS_URL)
    stack = Stack(env)
    try:
        if settings.REDIS_URL:
            stack.worker()
        url = stack.daphne()
        yield SimpleNamespace(stack=stack, url=url)
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, which makes Django refuse
    # ORM calls from the test itself; the test code is synchronous, so that refusal does not apply.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def screenshot(request):
    """screenshot(page, name): saves test-artifacts/<test>-<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)

    def take(page, name: str) -> Path:
        path = ARTIFACTS / f"{request.node.name}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take

