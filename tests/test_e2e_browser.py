"""End to end: `streamlit run streamlit_app.py` on a free port, every page opened in headless Chromium,
the relatedness threshold moved with the keyboard; screenshots go to artifacts/screenshots/."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.dashboard_common import ROOT, build_root

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
PAGES = {"models": "", "generations": "generations", "relatedness": "relatedness", "retrieval": "retrieval",
         "score": "score", "train": "train", "compare": "compare"}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("playwright.sync_api")
    env = {**os.environ, **build_root(tmp_path_factory)}
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().strip() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}; see {log.name}")
    else:
        proc.terminate()
        pytest.fail("streamlit did not answer /_stcore/health within 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 1700})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def settle(pg, quiet: float = 2.5, timeout: float = 90.0) -> None:
    """Wait for a title, then until the page stops changing for ``quiet`` seconds (reruns done,
    charts drawn): Streamlit streams elements in, so a stable DOM means the run has finished."""
    pg.wait_for_selector("h1")
    probe = ("() => [document.querySelectorAll('[data-testid]').length, document.body.innerText.length, "
             "document.querySelectorAll('.js-plotly-plot, img').length].join()")
    last, since, deadline = None, time.time(), time.time() + timeout
    while time.time() < deadline:
        now = pg.evaluate(probe)
        busy = pg.locator('[data-testid="stSpinner"]').count() > 0
        if now != last or busy:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            return
        pg.wait_for_timeout(250)


def metrics(pg) -> list[str]:
    return pg.locator('[data-testid="stMetricValue"]').all_inner_texts()


@pytest.mark.parametrize("name", list(PAGES))
def test_page_opens_without_errors(server, page, name):
    page.goto(f"{server}/{PAGES[name]}")
    settle(page)
    if name == "generations":
        page.get_by_role("button", name="Generate").click()
        page.wait_for_selector('[data-testid="stImage"]', timeout=120_000)
        settle(page)
        assert page.locator('[data-testid="stImage"]').count() >= 2
    assert page.locator('[data-testid="stException"]').count() == 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_threshold_moves_with_the_keyboard(server, page):
    page.goto(f"{server}/relatedness")
    settle(page)
    page.wait_for_selector('[data-testid="stMetricValue"]')
    before = metrics(page)
    assert len(before) == 8
    handle = page.locator('[data-testid="stSlider"] input[type="range"], '
                          '[data-testid="stSlider"] [role="slider"]').first
    handle.focus()
    for _ in range(12):
        page.keyboard.press("ArrowRight")
    page.wait_for_function("(b) => JSON.stringify([...document.querySelectorAll('[data-testid=\"stMetricValue\"]')]"
                           ".map(e => e.innerText).slice(0, 4)) !== JSON.stringify(b.slice(0, 4))", arg=before,
                           timeout=30_000)
    after = metrics(page)
    assert after[:4] != before[:4]
    assert after[4:] == before[4:]          # only the moved model's panel changed
    page.wait_for_function("() => location.search.includes('t=')")
    assert "runs=MMVAE" in page.url
    settle(page)
    page.screenshot(path=str(SHOTS / "relatedness-moved.png"), full_page=True)
