"""Browser-test fixtures: the portal world, a real `qilu serve` on a free loopback port, headless Chromium,
and the checks every main page gets (a screenshot in artifacts/, axe-core with no serious violations)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

from live_server import running_server
from portal_pages import ARTIFACTS
from portal_world import PortalWorld, build_portal_world

HERE = Path(__file__).resolve().parent
AXE = HERE / "node_modules_root" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--use-fake-device-for-media-stream",
                 "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required"]
# A consult room on two busy cores: small recordings if anyone consents, quick grace.
SERVER_ENV = {"QILU_CONSULT_GRACE_S": "5", "QILU_CONSULT_RECORDING_WIDTH": "320",
              "QILU_CONSULT_RECORDING_HEIGHT": "240", "QILU_CONSULT_RECORDING_FPS": "10"}



@pytest.fixture(scope="session")
async def portal_world(app) -> PortalWorld:
    return await build_portal_world(app.state.db)


@pytest.fixture(scope="session")
def portal(engines, settings, portal_world, celery_worker) -> str:
    """`qilu serve` on the tests' database with the worker delivering live events; its base URL."""
    with running_server(settings, "portal", SERVER_ENV) as (base, _proc):
        yield base


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE.is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("axe-core is missing and npm is not installed; run scripts/test once")
        subprocess.run([npm, "install", "-q", "--no-save", "--no-audit", "--no-fund", "--prefix",
                        str(AXE.parents[2]), "axe-core@4"], check=True, capture_output=True, timeout=300)
    return AXE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
async def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


class PageChecks:
    """What every main page is held to: a screenshot, and axe-core finding nothing serious or critical."""

    def __init__(self, axe_source: str):
        self.axe_source = axe_source

    async def __call__(self, page: Page, name: str) -> None:
        await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
            # Evaluated over the DevTools protocol, which the pages' Content-Security-Policy leaves alone.
            await page.evaluate(self.axe_source + "\n;true")
        result = await page.evaluate("""async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations.filter(v => ['serious', 'critical'].includes(v.impact))
                .map(v => ({id: v.id, impact: v.impact, help: v.help,
                            nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ' :: ' + n.failureSummary)}));
        }""")
        assert not result, f"axe-core on {name}: " + "\n".join(f"{v['impact']} {v['id']}: {v['help']} {v['nodes']}"
                                                             for v in result)
        # Nothing a person should never see: raw JSON or a stack trace.
        text = await page.inner_text("body")
        assert "Traceback" not in text and '{"' not in text and "[object Object]" not in text, text[:500]


@pytest.fixture(scope="session")
def check_page(axe_source) -> PageChecks:
    return PageChecks(axe_source)
