"""`steer generate --image [--mask] [--strength]`: a given image edited by the model's image-to-image or inpainting
pipeline, steered; the same pixels as the Python API, a recipe `steer reproduce` makes again (finding the inputs by
their sha256), one-line refusals before the model loads (tiny random SD pipeline saved to disk, CPU)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from steer.cli.main import main
from steer.denoisers import CONTEXT_SITE
from steer.images import EditInputs, edit_size, file_sha256, open_image, pixel_digest
from steer.pipelines.factory import editing_pipeline
from steer.recipe import read_recipe
from steer.testing import assert_one_line_error, random_vector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
STEPS = "4"


@pytest.fixture(scope="module")
def files(tiny_pipe, tmp_path_factory):
    """A source image (40 x 48, not the model's size), a mask of its left half, and a direction."""
    folder = tmp_path_factory.mktemp("edit-inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / "src.png")
    mask = np.zeros((48, 40), dtype=np.uint8)
    mask[:, :20] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    vector = random_vector(tiny_pipe, [CONTEXT_SITE], scale=3.0)
    vector.save(folder / "dir.safetensors")
    return folder


def generate(capsys, *argv):
    try:
        code = main(["generate", *map(str, argv)])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def api_images(model_dir, files, task: str, scales, strength: float | None, seed: int = 0):
    """What the Python API gives for the same edit (the flow the README shows)."""
    from steer.cli.loading import load_pipeline
    from steer.vectors import SteeringVector

    pipe = editing_pipeline(load_pipeline(model_dir, "cpu", progress=False), task)
    edit = EditInputs.read(files / "src.png", files / "mask.png" if task == "inpaint" else None, strength)
    height, width = edit_size(edit.image.size)
    inputs = {k: [v] * len(scales) if k in ("image", "mask_image") else v for k, v in edit.prepared(height, width).items()}
    if task == "inpaint":
        inputs.update(height=height, width=width)
    return pipe(["a bag"] * len(scales), num_inference_steps=int(STEPS), guidance_scale=7.5,
                generator=[torch.Generator().manual_seed(seed) for _ in scales], steering=SteeringVector.load(files / "dir.safetensors"),
                steering_scale=[[s] for s in scales], **inputs).images


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_an_edit_is_the_api_call_records_its_inputs_and_reproduces(task, model_dir, files, tmp_path, capsys):
    out = tmp_path / "out"
    mask = ["--mask", files / "mask.png"] if task == "inpaint" else []
    code, printed, err = generate(capsys, "--model", model_dir, "--prompt", "a bag", "--image", files / "src.png", *mask,
                                  "--direction", files / "dir.safetensors", "--sweep", "0,1,2", "--steps", STEPS, "--out", out)
    assert code == 0, err
    zero, one = out / "seed0_scale+0.png", out / "seed0_scale+1.png"
    expected = api_images(model_dir, files, task, [0.0, 1.0], None)
    for png, image in zip((zero, one), expected, strict=True):
        assert Image.open(png).size == (40, 48)  # the image's own size (a multiple of 8)
        assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), np.asarray(image))
    assert not np.array_equal(np.asarray(Image.open(zero)), np.asarray(Image.open(one)))
    edit = read_recipe(one)["edit"]
    assert edit["strength"] == (1.0 if task == "inpaint" else 0.8)  # the pipeline's default, recorded
    assert edit["image"] == {"path": str((files / "src.png").resolve()), "sha256": file_sha256(files / "src.png"),
                             "pixels": pixel_digest(open_image(files / "src.png"))}
    assert ("mask" in edit) == (task == "inpaint")
    code = main(["reproduce", str(zero), str(one)])
    printed = capsys.readouterr().out
    assert code == 0 and printed.count("identical (generate recipe") == 2, printed


def test_strength_and_size_are_honoured(model_dir, files, tmp_path, capsys, monkeypatch):
    from diffusers import UNet2DConditionModel

    calls = []
    real = UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, "forward", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    out = tmp_path / "out"
    for strength in ("0.25", "1.0"):
        calls.clear()
        code, _, err = generate(capsys, "--model", model_dir, "--prompt", "a bag", "--image", files / "src.png", "--strength", strength,
                                "--height", "32", "--steps", STEPS, "--seed", "3", "--out", out / strength)
        assert code == 0, err
        assert len(calls) == int(int(STEPS) * float(strength))  # the last quarter of the run, or all of it
        assert read_recipe(out / strength / "seed3.png")["edit"]["strength"] == float(strength)
    low, high = (np.asarray(Image.open(out / s / "seed3.png"), dtype=float) for s in ("0.25", "1.0"))
    assert low.shape == high.shape == (32, 24, 3)  # width 26.7 from the aspect, to the nearest multiple of 8
    assert not np.array_equal(low, high)
    # an image far larger than the model's size (a phone photo on the 32-pixel model) is edited at twice that size,
    # said in a note (at its own size it ran for minutes per step); a size given is kept
    Image.new("RGB", (200, 120), (200, 40, 40)).save(tmp_path / "photo.png")
    code, _, err = generate(capsys, "--model", model_dir, "--prompt", "a bag", "--image", tmp_path / "photo.png", "--steps", "2",
                            "--out", out / "photo")
    assert code == 0 and "note: the image is 200x120; editing at 64x40, 2x the model's 32 pixels" in err, err
    assert Image.open(out / "photo" / "seed0.png").size == (64, 40)
    assert generate(capsys, "--model", model_dir, "--prompt", "a bag", "--image", tmp_path / "photo.png", "--steps", "2",
                    "--width", "96", "--out", out / "photo96")[0] == 0
    assert Image.open(out / "photo96" / "seed0.png").size == (96, 56)
    Image.new("L", (9000, 1000), 90).save(tmp_path / "panorama.png")  # over 8192 at its own size: capped, not refused
    code, _, err = generate(capsys, "--model", model_dir, "--prompt", "a bag", "--image", tmp_path / "panorama.png", "--steps", "2",
                            "--out", out / "panorama")
    assert code == 0 and "editing at 64x8" in err and Image.open(out / "panorama" / "seed0.png").size == (64, 8), err
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a bag", "image": str(tmp_path / "photo.png"), "num_inference_steps": 2, "name": "p"}) + "\n")
    assert main(["batch", str(jobs), "--out", str(out / "batch"), "--model", model_dir, "--device", "cpu", "--no-progress"]) == 0
    assert "edited at 64x40, 2x the model's 32 pixels" in capsys.readouterr().err
    assert Image.open(out / "batch" / "p.png").size == (64, 40)


def test_reproduce_finds_moved_renamed_or_resaved_inputs_and_refuses_changed_ones(model_dir, files, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "photo.png").write_bytes((files / "src.png").read_bytes())
    out = tmp_path / "out"
    code, _, err = generate(capsys, "--model", model_dir, "--prompt", "a bag", "--image", work / "photo.png",
                            "--direction", files / "dir.safetensors", "--steps", STEPS, "--out", out)
    assert code == 0, err
    png = out / "seed0_scale+1.png" if (out / "seed0_scale+1.png").exists() else next(out.glob("seed0*.png"))
    (out / "photo.png").write_bytes((work / "photo.png").read_bytes())
    (work / "photo.png").unlink()  # moved: found next to the image
    assert main(["reproduce", str(png)]) == 0
    assert "identical" in capsys.readouterr().out
    (out / "photo.png").rename(out / "holiday.png")  # renamed too: found by its bytes (it used to be by name only)
    assert main(["reproduce", str(png)]) == 0
    assert "identical" in capsys.readouterr().out
    # the same picture in another file (re-saved, as the app keeps its PNG copy of an upload): found by its pixels
    Image.open(out / "holiday.png").save(out / "resaved.png", compress_level=1)
    (out / "holiday.png").unlink()
    assert file_sha256(out / "resaved.png") != read_recipe(png)["edit"]["image"]["sha256"]
    assert main(["reproduce", str(png)]) == 0
    assert "identical" in capsys.readouterr().out
    (out / "resaved.png").unlink()
    (out / "photo.png").write_bytes((files / "mask.png").read_bytes())  # another picture under the same name
    code = main(["reproduce", str(png)])
    assert_one_line_error(code, capsys.readouterr().err, "photo.png", "gone or changed")


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--mask", "{mask}"], ("--mask goes with --image",)),
        (["--strength", "0.5"], ("--strength goes with --image",)),
        (["--image", "{missing}"], ("the image", "is not a file")),
        (["--image", "{text}"], ("the image", "not a readable image")),
        (["--image", "{src}", "--mask", "{small}"], ("the mask is 8x8 and the image 40x48", "same size")),
        (["--image", "{wide}", "--height", "16"], ("over 8192 pixels a side", "--height / --width")),  # sized so: unsized, it is capped
        (["--image", "{src}", "--strength", "0"], ("--strength", "(0, 1]")),
        (["--image", "{src}", "--strength", "0.2", "--steps", "4"], ("runs no step",)),
        # the steering changed nothing: diffusers repaints where the mask is >= 128 (an alpha mask read as all black)
        (["--image", "{src}", "--mask", "{black}"], ("repaints nothing", "white marks where to repaint")),
        (["--image", "{src}", "--mask", "{alpha}"], ("has transparent pixels", "white = repaint")),
    ],
    ids=["mask-alone", "strength-alone", "missing", "not-an-image", "mask-size", "too-wide", "strength-0", "no-step",
         "mask-black", "mask-alpha"],
)
def test_bad_edit_inputs_are_one_line_before_any_image_is_written(extra, needles, model_dir, files, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not a picture")
    Image.new("L", (8, 8), 255).save(tmp_path / "small.png")
    Image.new("RGB", (8200, 8)).save(tmp_path / "wide.png")
    Image.new("L", (40, 48), 100).save(tmp_path / "black.png")
    alpha = Image.new("RGBA", (40, 48), (0, 0, 0, 255))
    alpha.paste((0, 0, 0, 0), (0, 0, 20, 48))  # the editors' convention: transparent = repaint
    alpha.save(tmp_path / "alpha.png")
    paths = {"mask": files / "mask.png", "missing": tmp_path / "nope.png", "text": tmp_path / "notes.png", "src": files / "src.png",
             "small": tmp_path / "small.png", "wide": tmp_path / "wide.png", "black": tmp_path / "black.png", "alpha": tmp_path / "alpha.png"}
    argv = [a.format(**paths) for a in extra]
    out = tmp_path / "out"
    code, _, err = generate(capsys, "--model", model_dir, "--prompt", "a bag", "--out", out, *(["--steps", STEPS] if "--steps" not in argv else []), *argv)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_open_image_bounds_what_a_file_costs_and_keeps_what_it_shows(tmp_path):
    Image.new("RGB", (4000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="at most 10 megapixels"):
        open_image(tmp_path / "big.png", max_pixels=10_000_000)
    with pytest.raises(ValueError, match="over 0 MiB"):
        open_image(tmp_path / "big.png", max_bytes=10)
    assert open_image(tmp_path / "big.png", max_side=400).size == (400, 300)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "phone.jpg", exif=exif)
    assert open_image(tmp_path / "phone.jpg").size == (20, 40)  # upright, as a viewer shows it
    Image.new("RGB", (40, 20), (255, 0, 0)).resize((4000, 2000)).save(tmp_path / "phone-big.jpg", exif=exif)
    assert open_image(tmp_path / "phone-big.jpg", max_side=400).size == (200, 400)  # upright, then shrunk
    # a JPEG decoded at a reduced scale ends the size its same-size PNG mask does (they were 2046 against 2047 wide)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (4099, 4096, 3), dtype=np.uint8)).save(tmp_path / "big.jpg", quality=70)
    Image.fromarray(rng.integers(0, 255, (4099, 4096), dtype=np.uint8)).save(tmp_path / "mask.png")
    assert open_image(tmp_path / "big.jpg", max_side=2048).size == open_image(tmp_path / "mask.png", mode="L", max_side=2048).size == (2047, 2048)
    # 16-bit greyscale and 0-1 float images keep their grey (Pillow's conversion made them white and black)
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "grey.tiff")
    assert open_image(tmp_path / "grey16.png").getpixel((0, 0)) == (117, 117, 117)
    assert open_image(tmp_path / "grey.tiff", mode="L").getpixel((0, 0)) == 128
    # over PIL's own limit (89 MP): steer's one line only, without PIL's two-line warning before it
    Image.new("L", (10_000, 9_000)).save(tmp_path / "bomb.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="is 10000x9000 pixels; at most 50 megapixels"):
            open_image(tmp_path / "bomb.png")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert edit_size((1000, 750), width=512) == (384, 512)
    assert edit_size((30, 30)) == (24, 24)  # its own size: rounded down, as diffusers does
    assert edit_size((48, 32), width=32) == (24, 32)  # 21.3 from the aspect: the nearest multiple of 8


def test_a_recipe_with_a_damaged_edit_block_is_refused_in_one_line(model_dir, files, tmp_path, capsys):
    from steer.recipe import save_png

    recipe = {"model": model_dir, "prompt": "a bag", "seed": 0, "num_inference_steps": 2, "guidance_scale": 5.0, "directions": [],
              "height": 32, "width": 32, "edit": {"image": {"path": "x.png"}, "strength": 0.5}}
    png = save_png(Image.new("RGB", (32, 32)), tmp_path / "a.png", recipe)
    assert_one_line_error(main(["reproduce", str(png)]), capsys.readouterr().err, "edit.image", "path and sha256")
    recipe["edit"] = json.loads(json.dumps({"image": {"path": "x.png", "sha256": "0" * 64}, "strength": 2}))
    png = save_png(Image.new("RGB", (32, 32)), tmp_path / "b.png", recipe)
    assert_one_line_error(main(["reproduce", str(png)]), capsys.readouterr().err, "edit.strength")
