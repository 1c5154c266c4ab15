"""The command line on every denoiser family: `steer layers`, `steer learn` and `steer generate` take a saved
pipeline folder of any supported family (`--model`), pick the steered class from its model_index.json, list that
family's sites, learn a direction on it and steer with it; a direction from another family is refused in one line."""

from __future__ import annotations

import importlib

import pytest
from PIL import Image

from steer.cli.main import main
from steer.recipe import read_recipe

# family -> (tiny pipeline builder "module:function", a site that family must list)
FAMILIES = {
    "sd": ("steer.testing:tiny_pipeline", "up_blocks.1.attentions.0"),
    "sdxl": ("steer.testing.sdxl:tiny_sdxl_pipeline", "up_blocks.0.attentions.0"),
    "pixart": ("steer.testing.pixart:tiny_pixart_pipeline", "transformer_blocks.1.attn2"),
    "sd3": ("steer.testing.sd3:tiny_sd3_pipeline", "transformer_blocks.1.attn"),
    "flux": ("steer.testing.flux:tiny_flux_pipeline", "single_transformer_blocks.0"),
}
# PixArt's resolution binning knows only the real sample sizes (32/64/128/256 latents), so the tiny PixArt model
# (8 latents) cannot sample through the command line, which keeps the pipeline's defaults; its sampling is covered in
# tests/test_family_pixart.py with use_resolution_binning=False. Flux samples at --height/--width 16 (its tiny
# pipeline's default image is 256 px).
SAMPLING = sorted(set(FAMILIES) - {"pixart", "sd"})  # SD's command line is tests/test_cli.py
SIZE = {"flux": ["--height", "16", "--width", "16"]}


def save(family: str, path) -> str:
    module, _, fn = FAMILIES[family][0].partition(":")
    getattr(importlib.import_module(module), fn)(seed=0).save_pretrained(path)
    return str(path)


def learn(model: str, out, size: list[str] = ()) -> None:
    code = main(["learn", "--model", model, "--device", "cpu", "--positive", "a red bag", "--negative", "a blue bag",
                 "--steps", "2", *size, "--out", str(out)])
    assert code == 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layers_lists_the_familys_sites(family, tmp_path, capsys):
    assert main(["layers", "--model", save(family, tmp_path / family), "--device", "cpu"]) == 0
    listed = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert "encoder_hidden_states" in listed and FAMILIES[family][1] in listed, listed


@pytest.mark.parametrize("family", SAMPLING)
def test_learn_and_generate_then_refuse_another_familys_direction(family, tmp_path, capsys):
    model = save(family, tmp_path / family)
    direction = tmp_path / "d.safetensors"
    size = SIZE.get(family, [])
    learn(model, direction, size)
    out = tmp_path / "gen"
    code = main(["generate", "--model", model, "--device", "cpu", "--prompt", "a bag", "--direction", str(direction),
                 "--sweep=0,4,2", "--steps", "2", "--seed", "0", *size, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    plain, steered = out / "seed0_scale+0.png", out / "seed0_scale+4.png"
    with Image.open(plain) as a, Image.open(steered) as b:
        assert a.size == b.size and a.tobytes() != b.tobytes()  # the direction moved this family's image
    assert read_recipe(steered)["scale"] == 4.0

    other = tmp_path / "other.safetensors"  # the same prompts learned on the SD family
    learn(save("sd", tmp_path / "sd"), other)
    capsys.readouterr()
    code = main(["generate", "--model", model, "--device", "cpu", "--prompt", "a bag", "--direction", str(other),
                 "--steps", "2", *size, "--out", str(tmp_path / "gen2")])
    err = capsys.readouterr().err  # generate shows loading / sampling progress on stderr, then the refusal
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("steer generate: error:"), err


def test_memorization_detection_says_where_it_does_not_apply():
    from steer.detect.detector import MemorizationDetector
    from steer.testing.sd3 import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(seed=0)
    with pytest.raises(ValueError, match="SD3Transformer2DModel has none") as err:
        MemorizationDetector(pipe)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(ValueError, match="UNet"):
        pipe("a bag", num_inference_steps=2, detect_memorization=True, output_type="latent")


def test_a_broken_or_unsupported_pipeline_index_is_one_line(tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model_index.json").write_text("{not json")
    assert main(["layers", "--model", str(folder), "--device", "cpu"]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and "model_index.json is not a readable pipeline index" in line, line
    (folder / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    assert main(["layers", "--model", str(folder), "--device", "cpu"]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and "cannot steer a KandinskyPipeline" in line, line
