"""In headless Chromium, on a tiny random pipeline: what one page does stays that page's (a calibrated detector), and
'Several layers' follows the picked direction (a trajectory direction's own cross-attention outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_server import constructed_direction, free_port
from test_app_browser import browser, chromium_path, set_number  # noqa: F401 (browser: a fixture)
from test_app_own_sites import trajectory_direction

from steer.app import helpers as H

pytestmark = pytest.mark.browser
assert chromium_path  # the browser fixture needs it


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, pipe, trajectory direction file) of an in-process app on a tiny pipeline."""
    import torch

    import app
    from steer.testing import tiny_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = tiny_pipeline(seed=0)
    folder = tmp_path_factory.mktemp("dirs")
    path = trajectory_direction(pipe).save(folder / "trajectory.safetensors")
    demo = app.build_app(pipe, catalog=H.DirectionCatalog({"constructed": constructed_direction(pipe).save(folder / "c.safetensors")}))
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url, pipe, path
    demo.close()
    torch.set_num_threads(threads)


def open_page(browser, url: str):  # noqa: F811 (browser: the fixture's value)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.wait_for_selector("#generate", timeout=60_000)
    page.wait_for_function("document.querySelector('#direction-info').innerText.length > 0", timeout=60_000)
    return page


def test_a_calibration_shows_on_its_own_page_only(served, browser):  # noqa: F811
    url, *_ = served
    mine, other = open_page(browser, url), open_page(browser, url)
    for page in (mine, other):
        page.get_by_role("tab", name="Memorization").click()
        page.wait_for_function("document.querySelector('#detector-info').innerText.includes('No calibrated detector')")
    mine.get_by_text("Calibrate a detector on ordinary prompts").click()
    mine.click("#calibrate")
    mine.wait_for_function("document.querySelector('#detector-info').innerText.includes('Calibrated on this page')", timeout=120_000)
    assert "ordinary samples; threshold" in mine.inner_text("#detector-info")
    assert "No calibrated detector" in other.inner_text("#detector-info")
    other.reload()  # a new visitor
    other.wait_for_selector("#generate", timeout=60_000)
    other.get_by_role("tab", name="Memorization").click()
    other.wait_for_function("document.querySelector('#detector-info').innerText.includes('No calibrated detector')")
    mine.close()
    other.close()


def test_several_layers_offers_an_uploaded_trajectory_directions_own_layers(served, browser, tmp_path: Path):  # noqa: F811
    url, _, path = served
    sites = trajectory_direction(served[1]).layers
    page = open_page(browser, url)
    set_number(page, "steps", 2)
    with page.expect_file_chooser() as chooser:
        page.click("#upload")
    chooser.value.set_files(str(path))
    page.wait_for_selector("#status .steer-status-ok", timeout=30_000)
    page.get_by_text("Advanced", exact=True).click()
    page.locator("#several-layers input").first.click()
    option = page.get_by_role("option", name=sites[1], exact=True)
    option.wait_for(timeout=30_000)
    assert page.get_by_role("option", name=H.layer_names(served[1])[0], exact=True).count() == 0
    option.click()
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Steered with')", timeout=60_000)
    assert page.locator("#status .steer-status-error").count() == 0
    page.close()
