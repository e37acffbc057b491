"""Browser fixtures: Debian's Chromium (headless) driven by Playwright.

Playwright's own browser download needs the internet, so the tests use the system
Chromium (`make test` installs it with apt-get when missing). Set CHROMIUM_PATH to use
another binary. Without any Chromium the browser tests are skipped, with the reason.

Screenshots go to test-artifacts/browser/ at the repository root; a failing test also
leaves a screenshot and a Playwright trace there (open it with `playwright show-trace`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from dualmedia.settings import REPO_ROOT, Settings

ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"

# Headless, no sandbox (tests run as root in CI containers), and nothing that phones
# home: without the background-networking flags Chromium keeps dialling out.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Airflow's React UI is slow to render on a 2-core machine: wait generously.
TIMEOUT_MS = 90_000


def find_chromium() -> str | None:
    """CHROMIUM_PATH, else `chromium` / `chromium-browser` on PATH, else /usr/bin/chromium."""
    override = os.environ.get("CHROMIUM_PATH")
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    fallback = Path("/usr/bin/chromium")
    return str(fallback) if os.access(fallback, os.X_OK) else None


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = find_chromium()
    if executable is None:
        where = os.environ.get("CHROMIUM_PATH") or "chromium, chromium-browser on PATH"
        pytest.skip(
            f"browser tests need Chromium and none was found ({where}, /usr/bin/chromium): "
            "run `make test` (installs it with apt-get) or `apt-get install chromium`, "
            "or set CHROMIUM_PATH"
        )
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def mlflow_login(request: pytest.FixtureRequest) -> dict[str, str] | None:
    """The MLflow server's basic-auth credentials when the test's `stack` fixture is a
    Settings: the browser answers MLflow's 401 challenge with them, and sends them to that
    origin only (Airflow has its own login form)."""
    if "stack" not in request.fixturenames:
        return None
    stack = request.getfixturevalue("stack")
    login = stack.mlflow_credentials() if isinstance(stack, Settings) else None
    if login is None:
        return None
    origin = stack.mlflow_uri.rstrip("/")
    return {"username": login[0], "password": login[1], "origin": origin}


@pytest.fixture
def page(browser: Browser, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (no cookies) per test; screenshot + trace when it fails."""
    name = request.node.name
    failed_png = artifacts / f"FAILED-{name}.png"
    failed_trace = artifacts / f"FAILED-{name}-trace.zip"
    for stale in (failed_png, failed_trace):
        stale.unlink(missing_ok=True)
    context = browser.new_context(
        viewport={"width": 1400, "height": 900}, http_credentials=mlflow_login(request)
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    context.tracing.start(screenshots=True, snapshots=True)
    new_page = context.new_page()
    try:
        yield new_page
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            with contextlib.suppress(PlaywrightError):  # the page may be gone
                new_page.screenshot(path=failed_png, full_page=True)
            context.tracing.stop(path=failed_trace)
        else:
            context.tracing.stop()
        context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Keep each phase's report on the test item, for the `page` fixture's teardown."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
