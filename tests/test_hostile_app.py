"""Hostile inputs to the Gradio demo (issue 15, "App" and the app side of "Metadata is not type-checked").

Each case asserts what a user sees: one readable line naming the problem (never "internal error" or a traceback),
names from files shown escaped (no raw ``<script>``, no escape sequences), uploads over the cap refused while they
stream in, and uploaded files the app has read (accepted or refused) gone from gradio's upload folder.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path

import pytest
import torch
from app_server import constructed_direction, free_port, generate_args
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from steer.app import files as app_files
from steer.app import helpers as H
from steer.files import tensor_digest
from steer.testing import tiny_pipeline
from steer.vectors import SteeringVector

SMALL_CAP = 256 * 1024  # the served app's upload cap in these tests (bytes)
HOSTILE_NAME = (
    "\x1b[31mred\x1b[0m <script>alert(1)</script> <img src=x onerror=alert(2)> [click](javascript:alert(3)) "
    "**bold** `code` \u202eevil\u202c \ud800 line\nbreak\x00\x07 " + "x" * 5000
)
FORBIDDEN = ("<script", "<img", "\x1b", "\u202e", "\ud800", "\x00", "\x07", "internal error", "Traceback")


def assert_clean(text: str, limit: int = 2000) -> None:
    """``text`` (a status box, a label) holds no raw markup or control characters and is bounded."""
    for bad in FORBIDDEN:
        assert bad not in text, (bad, text[:300])
    assert len(text) <= limit, len(text)


def assert_clean_label(label: str) -> None:
    """A dropdown label (shown as text, never as HTML): no control characters, one line, bounded."""
    for bad in ("\x1b", "\u202e", "\ud800", "\x00", "\x07", "\n"):
        assert bad not in label, (bad, label)
    assert len(label) <= H.LIMITS.max_shown_chars + len(" (uploaded) #99"), label


def assert_one_line_error(message: str, must_name: str) -> None:
    assert must_name in message, message
    assert "\n" not in message and len(message) <= H.LIMITS.max_message_chars, message
    assert "internal error" not in message and "Traceback" not in message, message


# ----------------------------------------------------------------------------------------------------------------------
# Files: a good direction, then crafted variants of its header
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_pipeline(seed=0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def good_file(pipe, folder) -> Path:
    return constructed_direction(pipe, name="good").save(folder / "good.safetensors")


def read_file(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["steer"])
    return header, load_file(str(path))


def craft(source: Path, target: Path, edit_header=None, edit_tensors=None, raw_header: str | None = None) -> Path:
    """A copy of ``source`` with its JSON header and/or tensors edited (digest kept valid for tensor edits)."""
    header, tensors = read_file(source)
    if edit_tensors is not None:
        tensors = edit_tensors(dict(tensors))
        header["digest"] = tensor_digest(tensors)
    if edit_header is not None:
        edit_header(header)
    save_file(tensors, str(target), metadata={"steer": raw_header if raw_header is not None else json.dumps(header)})
    return target


def set_meta(key, value):
    return lambda h: h["metadata"].__setitem__(key, value)


def deep(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def rename_first(new_name: str):
    def edit(tensors):
        first = next(iter(tensors))
        return {(new_name if k == first else k): v for k, v in tensors.items()}

    return edit


BAD_DIRECTIONS = {
    "metadata is a list": dict(edit_header=lambda h: h.__setitem__("metadata", [1, 2])),
    "metadata is a string": dict(edit_header=lambda h: h.__setitem__("metadata", "hello")),
    "format version is a list": dict(edit_header=lambda h: h.__setitem__("format_version", [1])),
    "deeply nested metadata": dict(raw_header='{"format": "steer.SteeringVector", "metadata": ' + "[" * 50_000 + "]" * 50_000 + "}"),
    "nested 200 levels (parses)": dict(edit_header=set_meta("extra", deep(200))),
    "model fingerprint is a string": dict(edit_header=set_meta("model", "sd15")),
    "model architecture is a list": dict(edit_header=lambda h: h["metadata"]["model"].__setitem__("architecture", [1])),
    "recommended is a list": dict(edit_header=set_meta("recommended", [1])),
    "recommended window is a number": dict(edit_header=set_meta("recommended", {"window": 5})),
    "recommended scale is text": dict(edit_header=set_meta("recommended", {"scale": "big"})),
    "recommended scale is NaN": dict(edit_header=set_meta("recommended", {"scale": float("nan")})),
    "recommended mode unknown": dict(edit_header=set_meta("recommended", {"mode": "explode"})),
    "recommended normalize is text": dict(edit_header=set_meta("recommended", {"normalize": "yes"})),
    "activation norms are text": dict(edit_header=set_meta("activation_norm", "x")),
    "activation norm is negative": dict(edit_header=set_meta("activation_norm", {"down_blocks.0.resnets.0": -1.0})),
    "name is an object": dict(edit_header=set_meta("name", {"a": 1})),
    "layer name with glob characters": dict(edit_tensors=rename_first("up_blocks.*")),
    "layer name not in this UNet": dict(edit_tensors=rename_first("down_blocks.9.resnets.0")),
    "header is not JSON": dict(raw_header="{not json"),
    "header is a JSON list": dict(raw_header="[1, 2, 3]"),
    "2-D tensor": dict(edit_tensors=lambda t: {**t, next(iter(t)): torch.zeros(4, 4)}),
    "NaN entries": dict(edit_tensors=lambda t: {**t, next(iter(t)): torch.full_like(next(iter(t.values())), math.nan)}),
}


@pytest.mark.parametrize("case", list(BAD_DIRECTIONS))
def test_bad_direction_file_is_one_readable_line(case, pipe, good_file, folder):
    path = craft(good_file, folder / f"bad-{H.slug(case)}.safetensors", **BAD_DIRECTIONS[case])
    start = time.perf_counter()
    with pytest.raises(H.UserError) as info:
        H.load_direction_file(path, pipe)
    assert time.perf_counter() - start < 5.0
    assert_one_line_error(H.readable(info.value), path.name)


@pytest.mark.parametrize(
    "failure",
    [TypeError("int() argument must be a string"), AttributeError("'list' object has no attribute 'get'"),
     RecursionError("maximum recursion depth exceeded"), KeyError("up_blocks.*"), ValueError("bad")],
)
def test_app_guard_holds_without_the_loaders_checks(failure, pipe, good_file, monkeypatch):
    """Whatever `SteeringVector.load` lets through (its own schema checks aside), the app gives one line."""

    def broken(cls, path, device="cpu"):
        raise failure

    monkeypatch.setattr(SteeringVector, "load", classmethod(broken))
    with pytest.raises(H.UserError) as info:
        H.load_direction_file(good_file, pipe)
    assert_one_line_error(H.readable(info.value), "good.safetensors")


@pytest.mark.parametrize(
    "metadata, fragment",
    [([1, 2], "metadata is a list"), ("text", "metadata is text"), ({"model": "x"}, "model fingerprint is text"),
     ({"recommended": {"window": [0.9, 0.1]}}, "recommended window"), ({"name": 5}, "name is a number")],
)
def test_app_metadata_check_without_the_loaders_checks(metadata, fragment, pipe, good_file, monkeypatch):
    directions = SteeringVector.load(good_file).directions
    monkeypatch.setattr(SteeringVector, "load", classmethod(lambda cls, path, device="cpu": cls(directions, metadata)))
    with pytest.raises(H.UserError, match=fragment) as info:
        H.load_direction_file(good_file, pipe)
    assert_one_line_error(H.readable(info.value), "good.safetensors")


def test_bundled_direction_damaged_is_readable(pipe, good_file, folder):
    broken = craft(good_file, folder / "bundled.safetensors", edit_header=set_meta("model", "sd15"))
    catalog = H.DirectionCatalog({"bundled one": broken})
    with pytest.raises(H.UserError) as info:
        catalog.get("bundled one", None)
    assert_one_line_error(H.readable(info.value), "bundled one")


# ----------------------------------------------------------------------------------------------------------------------
# Names from files and users: escaped wherever they are shown
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [HOSTILE_NAME, "a\u2028b\u2029c\ufeffd\u200be", "&lt; already escaped", 12345, None, [1] * 10_000])
def test_text_cleaning(value):
    for fn in (H.md_text, H.html_text):
        out = fn(value)
        assert_clean(out, 3 * H.LIMITS.max_shown_chars)
        assert "<" not in out and "\n" not in out
    assert len(H.clean_text(value)) <= H.LIMITS.max_shown_chars
    assert H.md_code("down_blocks.0.resnets.1") == "`down_blocks.0.resnets.1`"
    assert H.md_code("a`b <c>") == r"a\`b &lt;c&gt;"  # not code-span safe: shown escaped instead


def test_clean_text_is_bounded_on_huge_values():
    start = time.perf_counter()
    out = H.md_text("<" * 20_000_000)
    assert time.perf_counter() - start < 1.0 and len(out) < 1000


def test_hostile_name_escaped_in_every_status(pipe, good_file, folder, tmp_path):
    import app

    path = craft(good_file, folder / "hostile.safetensors", edit_header=set_meta("name", HOSTILE_NAME))
    steer_app = app.SteerApp(pipe, H.DirectionCatalog({}), workdir=tmp_path / "work", upload_root=tmp_path / "uploads")
    session, dropdown, status = app.guarded(3)(steer_app.upload_direction)(str(path), {}, True)
    assert "steer-status-ok" in status
    assert_clean(status)
    label = dropdown["value"]
    assert_clean_label(label)
    assert label.startswith("red <script>")  # the dropdown shows the name as text, cleaned and cut
    assert "&lt;script&gt;" in status  # shown as text, not dropped silently
    described = app.guarded(8)(steer_app.describe_direction)(label, session, 0)
    assert_clean(described[-1]) and assert_clean(described[0])
    assert_clean(steer_app.describe_layer(label, session, 1))
    values = generate_args(label, steps=1)
    values.pop("direction")
    result = app.guarded(5)(steer_app.generate)(label, session, **values)
    assert "steer-status-ok" in result[-1], result[-1]
    assert_clean(result[-1])
    gallery, strip_status = app.guarded(2)(steer_app.strip)(label, session, 2, **values)
    assert_clean(strip_status) and "steer-status-ok" in strip_status
    # the same name typed in the Learn tab
    learned = app.guarded(4)(steer_app.learn)(
        {}, "a dog", "a cat", None, None, "mean_diff", "fast", "all layers", [], 1, 1, 5.0, 0, HOSTILE_NAME[:290], ""
    )
    assert_clean(learned[-1]) and "steer-status-ok" in learned[-1]
    # an error message that quotes the name: the direction on its last two layers, the slider on the first layer
    session = {label: session[label].select(H.layer_names(pipe)[-2:])}
    error = app.guarded(5)(steer_app.generate)(label, session, **{**values, "layer": 1})
    assert "steer-status-error" in error[-1] and "has no vector for layer" in error[-1]
    assert "&lt;script&gt;" in error[-1]
    assert_clean(error[-1])


def test_error_box_and_warning_escape(monkeypatch):
    import app

    shown = []
    monkeypatch.setattr(app.gr, "Warning", lambda message, **kw: shown.append(message))

    def fail(*_):
        raise H.UserError(HOSTILE_NAME)

    (box,) = [app.guarded(1)(fail)()]
    assert_clean(box) and "steer-status-error" in box
    assert shown and all("<script" not in m and "\x1b" not in m for m in shown)
    assert_clean(app.guarded(1)(lambda: 1 / 0)().replace("internal error", "internal-error"))


@pytest.mark.parametrize("prompt", ["a dog \ud800", "\udfff"])
def test_lone_surrogate_prompt_is_refused(prompt, pipe, tmp_path):
    import app

    steer_app = app.SteerApp(pipe, H.DirectionCatalog({}), workdir=tmp_path)
    values = generate_args("(none)", steps=1, prompt=prompt)
    values.pop("direction")
    *_, status = app.guarded(5)(steer_app.generate)("(none)", {}, **values)
    assert "steer-status-error" in status and "unpaired UTF-16 surrogates" in status
    learned = app.guarded(4)(steer_app.learn)(
        {}, "a dog", "a cat", None, None, "mean_diff", "fast", "all layers", [], 1, 1, 5.0, 0, prompt, ""
    )
    assert "unpaired UTF-16 surrogates" in learned[-1]


def test_recommended_outside_the_slider_is_not_applied(pipe, good_file, folder):
    path = craft(good_file, folder / "big-rec.safetensors", edit_header=set_meta("recommended", {"scale": 30.0, "mode": "add"}))
    vector = H.load_direction_file(path, pipe)
    assert H.recommended_settings(vector) == (None, None, None, None, "add", None)


# ----------------------------------------------------------------------------------------------------------------------
# Uploads: removed after reading, never outside gradio's upload folder
# ----------------------------------------------------------------------------------------------------------------------
def test_discard_upload_only_inside_the_upload_folder(tmp_path):
    root, outside = tmp_path / "uploads", tmp_path / "mine"
    (root / "abc").mkdir(parents=True)
    outside.mkdir()
    inside = root / "abc" / "up.safetensors"
    inside.write_bytes(b"x")
    assert H.discard_upload(inside, root) and not inside.exists() and not (root / "abc").exists() and root.is_dir()
    users = outside / "users.safetensors"
    users.write_bytes(b"keep")
    assert not H.discard_upload(users, root) and users.read_bytes() == b"keep"
    assert not H.discard_upload(root / "abc" / ".." / ".." / "mine" / "users.safetensors", root) and users.exists()
    (root / "def").mkdir()
    link = root / "def" / "link.safetensors"
    link.symlink_to(users)
    assert H.discard_upload(link, root) and not link.is_symlink() and users.read_bytes() == b"keep"
    (root / "ghi").mkdir()
    (root / "ghi" / "other").write_bytes(b"y")
    (root / "ghi" / "a.safetensors").write_bytes(b"z")
    assert H.discard_upload(root / "ghi" / "a.safetensors", root) and (root / "ghi" / "other").exists()
    assert not H.discard_upload(root, root) and not H.discard_upload(None, root)


@pytest.mark.parametrize("kind", ["oversized", "garbage", "bad metadata", "accepted"])
def test_upload_handler_removes_the_uploaded_copy(kind, pipe, good_file, tmp_path):
    import app

    root = tmp_path / "uploads"
    (root / "hash").mkdir(parents=True)
    upload = root / "hash" / f"{kind.replace(' ', '-')}.safetensors"
    if kind == "oversized":  # over the direction cap, under the upload cap
        with open(upload, "wb") as f:
            f.truncate(H.LIMITS.max_direction_bytes + 1)
    elif kind == "garbage":
        upload.write_bytes(b"\x00" * 64)
    elif kind == "bad metadata":
        craft(good_file, upload, edit_header=lambda h: h.__setitem__("metadata", [1]))
    else:
        upload.write_bytes(good_file.read_bytes())
    steer_app = app.SteerApp(pipe, H.DirectionCatalog({}), workdir=tmp_path / "work", upload_root=root)
    *_, status = app.guarded(3)(steer_app.upload_direction)(str(upload), {}, True)
    assert ("steer-status-ok" in status) == (kind == "accepted"), status
    if kind != "accepted":
        assert upload.name in status.replace("\\", "") and "internal error" not in status
    if kind == "oversized":
        assert "MiB" in status
    assert not upload.exists() and not upload.parent.exists()
    assert good_file.exists()  # a file outside the upload folder is never touched
    *_, status = app.guarded(3)(steer_app.upload_direction)(str(good_file), {}, True)
    assert "steer-status-ok" in status and good_file.exists()


def test_learn_images_caps(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 7000)).save(huge)  # 56 MP of zeros compresses to a small file
    with pytest.raises(H.UserError, match="megapixels"):
        H.load_images([str(huge)], "positive")
    wide = tmp_path / "wide.png"
    Image.new("RGB", (4000, 1000), (200, 10, 10)).save(wide)
    (image,) = H.load_images([str(wide)], "positive")
    assert max(image.size) == H.LIMITS.max_image_side and image.getpixel((5, 5)) == (200, 10, 10)


# ----------------------------------------------------------------------------------------------------------------------
# Detector files: a bad one gives a message in the Memorization tab and never blocks generating
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector_file(pipe, folder) -> Path:
    from steer.detect.detector import MemorizationDetector

    detector = MemorizationDetector(pipe)
    detector.calibration = {"reencode": torch.linspace(0.1, 1.0, 16)}
    detector.threshold, detector.fpr = 0.9, 0.1
    return detector.save(folder / "detector.safetensors")


def set_key(*keys_and_value):
    *keys, value = keys_and_value

    def edit(header):
        target = header
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


BAD_DETECTORS = {
    "thresholds is a list": dict(edit_header=set_key("thresholds", [1, 2])),
    "threshold is text": dict(edit_header=set_key("thresholds", "reencode", "high")),
    "threshold is NaN": dict(edit_header=set_key("thresholds", "reencode", float("nan"))),
    "false-positive rate 5": dict(edit_header=set_key("fpr", 5)),
    "config is a list": dict(edit_header=set_key("config", [1])),
    "layers are numbers": dict(edit_header=set_key("config", "layers", [1, 2])),
    "model is text": dict(edit_header=set_key("model", "sd15")),
    "deeply nested": dict(raw_header='{"format": "steer.MemorizationDetector", "config": ' + "[" * 50_000 + "]" * 50_000 + "}"),
    "2-D calibration": dict(edit_tensors=lambda t: {"calibration.reencode": torch.rand(4, 4)}),
    "NaN calibration": dict(edit_tensors=lambda t: {"calibration.reencode": torch.tensor([0.1, math.nan])}),
    "empty calibration": dict(edit_tensors=lambda t: {"calibration.reencode": torch.zeros(0)}),
}


def craft_detector(source: Path, target: Path, edit_header=None, edit_tensors=None, raw_header=None) -> Path:
    with safe_open(str(source), "pt") as f:
        (key,) = f.metadata().keys()
        header = json.loads(f.metadata()[key])
    tensors = load_file(str(source))
    if edit_tensors is not None:
        tensors = edit_tensors(dict(tensors))
        header["digest"] = tensor_digest(tensors)
    if edit_header is not None:
        edit_header(header)
    save_file(tensors, str(target), metadata={key: raw_header if raw_header is not None else json.dumps(header)})
    return target


def test_good_detector_file_loads(pipe, detector_file):
    assert H.load_detector(pipe, detector_file).threshold == pytest.approx(0.9)


@pytest.mark.parametrize("case", list(BAD_DETECTORS))
def test_bad_detector_file_is_readable_in_the_app(case, pipe, detector_file, folder, tmp_path):
    import app

    path = craft_detector(detector_file, folder / f"det-{H.slug(case)}.safetensors", **BAD_DETECTORS[case])
    with pytest.raises(H.UserError) as info:
        H.load_detector(pipe, path)
    assert_one_line_error(H.readable(info.value), path.name)
    steer_app = app.SteerApp(pipe, H.DirectionCatalog({}), workdir=tmp_path, detector=path)
    status = app.guarded(1)(steer_app.detector_status)()
    assert "steer-status-error" in status and path.name in status.replace("\\", "")
    assert_clean(status)
    assert steer_app._detector_or_none() == (None, -1)  # generating goes on without inline scores
    plot, status = app.guarded(2)(steer_app.memorization)({"steered": None, "prompt": "a"}, "steered")
    assert "steer-status-error" in status and "internal error" not in status


# ----------------------------------------------------------------------------------------------------------------------
# Through the served app: the upload cap, and uploaded files gone after reading
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(pipe, good_file, detector_file, folder, tmp_path_factory):
    """(url, upload folder) of the app with a small upload cap, its own gradio upload folder and a bad detector."""
    import app

    uploads = tmp_path_factory.mktemp("gradio-uploads")
    bad_detector = craft_detector(detector_file, folder / "served-bad-detector.safetensors", **BAD_DETECTORS["model is text"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(uploads))
        demo = app.build_app(
            pipe, catalog=H.DirectionCatalog({"good": good_file}), detector=bad_detector, max_upload_bytes=SMALL_CAP
        )
        _, url, _ = demo.launch(  # plain launch: the cap is the app's default, not the caller's duty
            server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True
        )
        yield url, uploads
        demo.close()


@pytest.fixture()
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


def files_named(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.name == name]


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_upload_over_the_cap_is_refused_and_not_kept(served, client, tmp_path):
    import httpx
    from gradio_client import handle_file

    url, uploads = served
    before = all_files(uploads)
    big = tmp_path / f"big-{uuid.uuid4().hex}.safetensors"
    big.write_bytes(os.urandom(SMALL_CAP + 1))
    response = httpx.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": (big.name, big.read_bytes())}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    with pytest.raises(Exception, match="413|maximum allowed size|exceeds the maximum file size"):
        client.predict(handle_file(str(big)), True, api_name="/upload_direction")
    assert not files_named(uploads, big.name)
    assert not any(p.stat().st_size > SMALL_CAP for p in all_files(uploads) - before)
    small = tmp_path / f"small-{uuid.uuid4().hex}.bin"
    small.write_bytes(b"x" * 1000)  # under the cap: gradio takes it (and only it)
    response = httpx.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": (small.name, small.read_bytes())}, timeout=60)
    assert response.status_code == 200 and files_named(uploads, small.name)


@pytest.mark.parametrize("kind", ["garbage", "bad metadata", "hostile name", "good"])
def test_served_upload_is_read_then_removed(kind, served, client, good_file, tmp_path):
    import httpx
    from gradio_client import handle_file

    url, uploads = served
    path = tmp_path / f"{kind.replace(' ', '-')}-{uuid.uuid4().hex}.safetensors"
    if kind == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif kind == "bad metadata":
        craft(good_file, path, edit_header=set_meta("model", "sd15"))
    elif kind == "hostile name":
        craft(good_file, path, edit_header=set_meta("name", HOSTILE_NAME))
    else:
        path.write_bytes(good_file.read_bytes())
    picked, status = client.predict(handle_file(str(path)), True, api_name="/upload_direction")
    assert_clean(status)
    if kind in ("garbage", "bad metadata"):
        assert "steer-status-error" in status and path.name in status
    else:
        assert "steer-status-ok" in status
        assert_clean_label(picked["value"])
        *_, note = client.predict(**generate_args(picked["value"], steps=1), api_name="/generate")
        assert "Steered with" in note and "steer-status-ok" in note
        assert_clean(note)
    assert not files_named(uploads, path.name), "the uploaded copy was kept"
    fetched = httpx.get(f"{url.rstrip('/')}/gradio_api/file={uploads}/{path.name}", timeout=30)
    assert fetched.status_code >= 400


def test_served_bad_detector_is_a_message(client):
    *_, status = client.predict(**generate_args("good", steps=1), api_name="/generate")
    assert "steer-status-ok" in status  # a bad detector file never blocks generating
    plot, status = client.predict("steered", api_name="/memorization")
    assert "steer-status-error" in status and "served-bad-detector.safetensors" in status.replace("\\", "")
    assert_clean(status)


def test_command_line_upload_cap(capsys):
    import app

    assert app.parse_args([]).max_upload_mb == H.LIMITS.max_upload_bytes / 2**20
    for bad in ("0", "-1", "nan", "5000"):
        with pytest.raises(SystemExit) as info:
            app.parse_args(["--max-upload-mb", bad])
        assert info.value.code == 2
    assert "--max-upload-mb must be in" in capsys.readouterr().err
    with pytest.raises(ValueError):
        app.build_app(object(), max_upload_bytes=0)


# ----------------------------------------------------------------------------------------------------------------------
# In headless Chromium: what the page really renders (needs the Debian chromium package, like test_app_browser.py)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_browser_hostile_name_renders_as_text_and_big_upload_is_refused(served, good_file, tmp_path):
    from playwright.sync_api import sync_playwright
    from test_app_browser import CHROMIUM_ARGS, chromium_path

    url, uploads = served
    hostile = craft(good_file, tmp_path / "hostile-browser.safetensors", edit_header=set_meta("name", HOSTILE_NAME))
    big = tmp_path / f"big-{uuid.uuid4().hex}.safetensors"
    big.write_bytes(os.urandom(SMALL_CAP + 1))
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        page.wait_for_selector("#generate", timeout=60_000)
        with page.expect_file_chooser() as chooser:
            page.click("#upload")
        chooser.value.set_files(str(hostile))
        page.wait_for_selector("#status .steer-status-ok", timeout=30_000)
        status = page.locator("#status")
        assert "<script>alert(1)</script>" in status.inner_text()  # shown as text
        assert status.locator("script, img, a").count() == 0
        assert "\x1b" not in status.inner_text()
        with page.expect_file_chooser() as chooser:
            page.click("#upload")
        chooser.value.set_files(str(big))
        toast = page.wait_for_selector("[data-testid=toast-body]:has-text('exceed the maximum allowed size')", timeout=30_000)
        assert big.name in toast.inner_text()  # the page refuses it before sending a byte
        browser.close()
    assert not dialogs
    assert not files_named(uploads, big.name)
    assert not files_named(uploads, hostile.name)


def test_the_work_folder_is_swept_of_old_runs_only(tmp_path):
    """Every Generate, Learn and Calibrate left a folder in the app's work folder for good (175 after one session): run
    folders and kept edit inputs older than the age are removed; newer ones, other files and symlinks are left."""
    import os
    import time

    work = tmp_path / "work"
    work.mkdir()
    old, new = H.run_folder(work), H.run_folder(work)
    (old / "steered.png").write_bytes(b"x")
    kept = work / "edit-input-0123.png"
    kept.write_bytes(b"x")
    mine = work / "notes.txt"  # not the app's: never touched
    mine.write_text("keep")
    (work / "run-link").symlink_to(tmp_path)
    now = time.time()
    for path in (old, kept, mine):
        os.utime(path, (now - 7 * 3600, now - 7 * 3600))
    assert H.sweep_runs(work, 6 * 3600, now) == 2
    assert sorted(p.name for p in work.iterdir()) == sorted([new.name, "notes.txt", "run-link"])


def test_a_missing_or_damaged_detector_file_stops_the_app_in_one_line(tmp_path, monkeypatch):
    """``python app.py --detector FILE`` with no such file started, and the Memorization tab said "... file not found:
    the file" later; now the app stops before the model loads, naming it."""
    import app

    monkeypatch.setattr("steer.cli.loading.load_pipeline", lambda *a, **k: pytest.fail("the model was loaded first"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a detector")
    for name, needle in (("absent.safetensors", "memorization detector file not found"), ("junk.safetensors", "not a readable safetensors file")):
        with pytest.raises(SystemExit) as exc:
            app.main(["--detector", str(tmp_path / name)])
        assert str(exc.value).startswith("app.py: error: --detector: ") and needle in str(exc.value), exc.value
    assert app_files._without_path(OSError(f"file not found: {tmp_path}"), tmp_path) == "file not found"  # no "...: the file"
