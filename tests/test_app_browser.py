"""End to end in headless Chromium: open the demo, move the strength slider, generate, check both images.

Needs the Debian ``chromium`` package (``apt-get install -y chromium``; ``/usr/bin/chromium`` or ``$CHROMIUM``).
Runs on the embedded demo model with a bundled colour direction when both exist, else on a tiny random pipeline
with a constructed direction (then "the direction's sense" is checked against the Python API's result).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steer.app import helpers as H
from steer.config import PAPER_WINDOW

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STRENGTH = 2.5
STEPS = 8


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("headless Chromium is required for the browser tests: apt-get install -y chromium")
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, pipe, direction, kind) of an in-process app on a free port: the demo model with a learned
    "blue minus red" direction when the demo model exists, else a tiny random pipeline with a constructed one."""
    import torch
    from app_server import constructed_direction, free_port

    import app
    from steer.assets import DEFAULT_MODEL
    from steer.cli.loading import load_pipeline
    from steer.testing import tiny_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several threads thrash on a busy 2-core machine
    folder = tmp_path_factory.mktemp("dirs")
    if (DEFAULT_MODEL / "model_index.json").is_file():
        pipe, kind = load_pipeline(DEFAULT_MODEL, device="cpu"), "demo"
        vector = pipe.learn_direction(
            [f"a blue {c}" for c in ("sneaker", "dress", "bag", "coat")],
            [f"a red {c}" for c in ("sneaker", "dress", "bag", "coat")],
            method="mean_diff",
            mode="fast",
            num_samples=4,
            num_inference_steps=10,
            name="blue minus red",
            progress=False,
        )
    else:
        pipe, kind = tiny_pipeline(seed=0), "tiny"
        vector = constructed_direction(pipe)
    path = vector.save(folder / "direction.safetensors")
    demo = app.build_app(pipe, catalog=H.DirectionCatalog({vector.name: path}))
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url, pipe, vector, kind
    demo.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


def set_slider(page, elem_id: str, value: float) -> None:
    """Drag-free slider move: set the range input (fires input/change like a user's move)."""
    page.locator(f"#{elem_id} input[type=range]").fill(str(value))


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def image_pixels(page, elem_id: str, timeout: float = 90_000) -> np.ndarray:
    """The pixels of the image shown in ``#elem_id`` (fetched from its src URL), at native size."""
    img = page.locator(f"#{elem_id} img").first
    img.wait_for(state="visible", timeout=timeout)
    src = img.get_attribute("src")
    data = page.request.get(src).body()
    big = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    factor = big.shape[0] // 32
    return big[::factor, ::factor]


def blue_minus_red(pixels: np.ndarray) -> float:
    return float((pixels[..., 2] - pixels[..., 0]).mean())


def test_generate_in_browser(served, browser, tmp_path: Path):
    from app_server import expected_pair

    url, pipe, vector, kind = served
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.wait_for_selector("#generate", timeout=60_000)
    page.wait_for_function("document.querySelector('#direction-info').innerText.length > 0", timeout=60_000)
    set_number(page, "steps", STEPS)
    if kind == "demo":
        page.locator("#prompt textarea, #prompt input").first.fill("a red sneaker")
    set_slider(page, "strength", STRENGTH)
    assert float(page.locator("#strength input[type=number]").input_value()) == STRENGTH
    page.click("#generate")
    page.wait_for_selector("#status .steer-status-ok", timeout=120_000)
    original, steered = image_pixels(page, "original"), image_pixels(page, "steered")
    assert np.abs(original - steered).mean() > 1.0, "the steered image equals the original"
    assert f"Steered with {vector.name}" in page.inner_text("#status")
    if kind == "demo":  # "blue minus red" makes the image bluer / less red
        assert blue_minus_red(steered) > blue_minus_red(original) + 3.0
    else:  # the app's images are the Python API's result for the same settings (the app's default window)
        want_original, want_steered = expected_pair(pipe, vector, STRENGTH, seed=0, window=PAPER_WINDOW, steps=STEPS)
        assert np.abs(original - want_original).max() <= 1
        assert np.abs(steered - want_steered).max() <= 1
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    assert (tmp_path / "app.png").stat().st_size > 10_000
    if os.environ.get("STEER_APP_SCREENSHOT"):  # regenerate the README screenshot
        shutil.copy(tmp_path / "app.png", os.environ["STEER_APP_SCREENSHOT"])
    page.close()


def test_invalid_upload_shows_message(served, browser, tmp_path: Path):
    url, *_ = served
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a direction")
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#generate", timeout=60_000)
    with page.expect_file_chooser() as chooser:
        page.click("#upload")
    chooser.value.set_files(str(bad))
    page.wait_for_selector("#status .steer-status-error", timeout=30_000)
    text = page.inner_text("#status")
    assert "broken.safetensors" in text and "Traceback" not in text
    page.screenshot(path=str(tmp_path / "invalid-upload.png"))
    page.close()


def test_take_away_offers_uploaded_directions_and_reports_mistakes(served, browser, tmp_path: Path):
    """A direction uploaded in the page joins the take-away picker too; taking away the direction being added is a
    one-line message, not a traceback."""
    url, _, vector, _ = served
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.wait_for_selector("#generate", timeout=60_000)
    page.wait_for_function("document.querySelector('#direction-info').innerText.length > 0", timeout=60_000)
    set_number(page, "steps", 2)
    with page.expect_file_chooser() as chooser:
        page.click("#upload")
    chooser.value.set_files(str(vector.save(tmp_path / "again.safetensors")))
    page.wait_for_selector("#status .steer-status-ok", timeout=30_000)
    uploaded = f"{vector.name} (uploaded)"
    page.locator("#take-away input").first.click()
    option = page.get_by_role("option", name=uploaded, exact=True)
    option.wait_for(timeout=30_000)  # the picker was refreshed when the upload became the selected direction
    option.click()
    page.click("#generate")
    page.wait_for_selector("#status .steer-status-error", timeout=60_000)
    text = page.inner_text("#status")
    assert "the take-away is the direction itself" in text and "Traceback" not in text
    page.close()


def test_edit_an_uploaded_image_in_browser(served, browser, tmp_path: Path):
    """'Edit an image': upload a picture, generate; both images are edits of it (its aspect kept) and the direction
    moves the steered one (on the demo model: a red sneaker edited bluer); from its inversion the original is the
    picture itself; with a mask the change stays on the mask's side."""
    import torch

    url, pipe, vector, kind = served
    photo = pipe("a red sneaker", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1)).images[0]
    photo.resize((photo.width * 2, photo.height)).save(tmp_path / "photo.png")  # 2:1, so the edit's aspect shows
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.wait_for_selector("#generate", timeout=60_000)
    page.wait_for_function("document.querySelector('#direction-info').innerText.length > 0", timeout=60_000)
    set_number(page, "steps", STEPS)
    page.get_by_text("Edit an image (optional)").click()
    page.locator("#edit-image input[type=file]").set_input_files(str(tmp_path / "photo.png"))
    page.locator("#edit-image img").first.wait_for(state="visible", timeout=30_000)
    set_slider(page, "edit-strength", 0.75)
    if kind == "demo":
        page.locator("#prompt textarea, #prompt input").first.fill("a sneaker")
    set_slider(page, "strength", STRENGTH)
    page.click("#generate")
    page.wait_for_selector("#status .steer-status-ok", timeout=120_000)
    shown = page.locator("#steered img").first
    src = shown.get_attribute("src")
    steered_full = Image.open(io.BytesIO(page.request.get(src).body()))
    assert steered_full.width == 2 * steered_full.height  # the edit kept the upload's 2:1 aspect
    original, steered = image_pixels(page, "original"), image_pixels(page, "steered")
    assert np.abs(original - steered).mean() > 1.0, "the steered edit equals the unsteered one"
    if kind == "demo":
        assert blue_minus_red(steered) > blue_minus_red(original) + 3.0
    page.screenshot(path=str(tmp_path / "edit.png"), full_page=True)
    unmasked = np.abs(original - steered).mean(axis=(0, 2))
    # from its inversion: the original is the uploaded picture itself (the VAE's reconstruction of it)
    page.locator("#edit-invert input[type=checkbox]").check()
    before = page.locator("#steered img").first.get_attribute("src")
    page.click("#generate")
    page.wait_for_function(f"document.querySelector('#steered img') && document.querySelector('#steered img').src !== {before!r}",
                           timeout=120_000)
    page.wait_for_selector("#status .steer-status-ok", timeout=120_000)
    from steer.denoisers import native_size
    from steer.images import EditInputs

    side = native_size(pipe)  # the size slider's default: the 2:1 upload runs at side/2 x side
    step = image_pixels(page, "original").shape[0] // (side // 2)  # image_pixels samples 32 rows of the display
    inverted_original = image_pixels(page, "original")[::step, ::step]
    original = original[::step, ::step]
    upload = EditInputs.read(tmp_path / "photo.png").prepared(side // 2, side)["image"]
    with torch.no_grad():
        latents = pipe.vae.encode(pipe.image_processor.preprocess(upload)).latent_dist.mode()
        vae = np.asarray(pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pil")[0], dtype=np.int16)
    assert np.abs(inverted_original - vae).mean() < 1.0, "the inverted original is not the picture (its VAE reconstruction)"
    assert np.abs(original - vae).mean() > 3.0  # image-to-image's original was a re-drawing
    page.locator("#edit-invert input[type=checkbox]").uncheck()
    # a mask of the left half: the inpainting pipeline repaints there, the right half is kept by both images
    mask = np.zeros((photo.height, 2 * photo.width), dtype=np.uint8)
    mask[:, : photo.width] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    page.locator("#edit-mask input[type=file]").set_input_files(str(tmp_path / "mask.png"))
    page.locator("#edit-mask img").first.wait_for(state="visible", timeout=30_000)
    before = page.locator("#steered img").first.get_attribute("src")
    page.click("#generate")
    page.wait_for_function(f"document.querySelector('#steered img') && document.querySelector('#steered img').src !== {before!r}",
                           timeout=120_000)
    page.wait_for_selector("#status .steer-status-ok", timeout=120_000)
    original, steered = image_pixels(page, "original"), image_pixels(page, "steered")
    third = original.shape[1] // 3
    moved = np.abs(original - steered).mean(axis=(0, 2))
    # the decoder spreads a latent's change a few pixels, so the kept side still moves a little: compare the sides'
    # ratio with the unmasked edit's (0.46 against 1.08 when written)
    ratio, unmasked_ratio = (d[-third:].mean() / d[:third].mean() for d in (moved, unmasked))
    assert moved[:third].mean() > 1.0 and ratio < 0.6 * unmasked_ratio, (ratio, unmasked_ratio)
    page.screenshot(path=str(tmp_path / "inpaint.png"), full_page=True)
    page.close()


def test_the_take_away_to_pick_shows_as_the_prompt_is_typed(browser):
    """With the bundled directions: to_blue (a direction on the prompt's tokens) sets the layer slider over the
    cross-attentions that read it; picked with "a red sneaker" typed, the page names to_red under the Take
    away picker before anything is generated; picking it (or an open prompt) clears the hint, picking auto says it
    will take to_red away."""
    import torch
    from app_server import free_port

    import app
    from steer.app.handlers import AUTO_CHOICE
    from steer.assets import DEFAULT_MODEL
    from steer.cli.loading import load_pipeline

    if not (DEFAULT_MODEL / "model_index.json").is_file():
        pytest.fail("the embedded demo model is part of the repository: assets/models/demo is missing")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = load_pipeline(DEFAULT_MODEL, device="cpu")
    demo = app.build_app(pipe, catalog=H.DirectionCatalog.from_assets())
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.wait_for_selector("#generate", timeout=60_000)
        page.wait_for_function("document.querySelector('#direction-info').innerText.length > 0", timeout=60_000)
        assert page.locator("#direction input").first.input_value() == "to_blue"  # the first screen's direction
        # to_blue acts on the prompt's tokens: the layer slider ranges over the 7 cross-attentions that read them
        page.wait_for_function("document.querySelector('#layer input[type=range]').max === '7'", timeout=30_000)
        assert "its own route, every cross-attention" in page.inner_text("#layer-info")
        set_slider(page, "layer", 1)
        page.wait_for_function("document.querySelector('#layer-info').innerText.includes('Read by: down_blocks.0')", timeout=30_000)
        set_slider(page, "layer", 0)
        page.locator("#prompt textarea, #prompt input").first.fill("a red sneaker")
        page.wait_for_function("document.querySelector('#take-away-hint').innerText.includes('Pick to_red')", timeout=30_000)
        assert "'a red sneaker' states 'red', which 'toward blue' replaces" in page.inner_text("#take-away-hint")
        page.locator("#take-away input").first.click()
        page.get_by_role("option", name="to_red", exact=True).click()
        page.wait_for_function("document.querySelector('#take-away-hint').innerText.trim() === ''", timeout=30_000)
        page.locator("#take-away input").first.click()
        page.get_by_role("option", name=AUTO_CHOICE, exact=True).click()  # auto says what it will take away
        page.wait_for_function("document.querySelector('#take-away-hint').innerText.includes('Auto: taking away to_red')", timeout=30_000)
        page.locator("#take-away input").first.click()
        page.get_by_role("option", name=H.NONE_CHOICE, exact=True).click()
        page.locator("#prompt textarea, #prompt input").first.fill("a sneaker")
        page.wait_for_timeout(1500)
        assert page.inner_text("#take-away-hint").strip() == ""
        page.close()
    finally:
        demo.close()
        torch.set_num_threads(threads)
