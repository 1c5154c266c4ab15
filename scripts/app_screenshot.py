"""Regenerate the README screenshot: the app's first screen on the demo model as it opens (the calibrated bundled
to_blue direction with its recommended settings, prompt "a sneaker"), 25 steps (headless Chromium, as in tests/test_app_browser.py).

    python scripts/app_screenshot.py [OUT.png]      # default assets/app-screenshot.png
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(out: str) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    os.chdir(ROOT)
    import torch
    from playwright.sync_api import sync_playwright
    from test_app_browser import CHROMIUM_ARGS, chromium_path, set_number

    import app

    torch.set_num_threads(1)
    demo = app.build_app("assets/models/demo")
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=7945, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.wait_for_selector("#generate", timeout=60_000)
            page.wait_for_function("document.querySelector('#direction-info').innerText.length > 0", timeout=60_000)
            page.wait_for_timeout(1500)  # the first screen: to_blue picked, its recommended settings applied on load
            set_number(page, "steps", 25)
            page.click("#generate")
            page.wait_for_selector("#status .steer-status-ok", timeout=120_000)
            page.wait_for_timeout(1000)
            print(page.inner_text("#status"))
            page.screenshot(path=out, full_page=True)
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "assets/app-screenshot.png")
