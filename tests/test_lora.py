"""Steering a denoiser that carries LoRA adapters (diffusers' `load_lora_weights`, PEFT): the LoRA'd pipeline is the
reference (scale 0 bit-identical to it, hooks gone), the weights hash tells a LoRA'd denoiser from its base model (so
recipes, batch resume keys and strict direction checks do), and fused adapters steer the same (tiny SD, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from steer.denoisers import CONTEXT_SITE
from steer.errors import ModelMismatchError
from steer.jobs import run as batch
from steer.testing import no_hooks_left, random_vector, tiny_pipeline
from steer.vectors import adapter_state, weights_hash

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
KW = dict(num_inference_steps=3, output_type="np")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A LoRA file for the tiny UNet's attention projections (random, so it changes the images)."""
    from peft import LoraConfig  # a dev dependency: diffusers' LoRA loading needs it
    from peft.utils import get_peft_model_state_dict

    pipe = tiny_pipeline(seed=0)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero (a no-op adapter): give it weights
            p.data.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("lora")
    type(pipe).save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return folder


def gen():
    return torch.Generator().manual_seed(0)


def test_a_lora_pipeline_steers_exactly_and_its_hash_is_not_the_base_models(lora_dir):
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    base_hash, base = weights_hash(pipe.unet), pipe("a bag", generator=gen(), **KW).images
    vector = random_vector(pipe, [CONTEXT_SITE, "up_blocks.1.resnets.0"], scale=3.0, fingerprint=True)
    assert adapter_state(pipe.unet) == {}
    pipe.load_lora_weights(lora_dir, adapter_name="style")
    lora = pipe("a bag", generator=gen(), **KW).images
    assert np.abs(lora - base).mean() > 1e-4  # the LoRA acts
    assert weights_hash(pipe.unet) != base_hash
    assert adapter_state(pipe.unet)["adapters"]["style"]["scales"] == [1.0]

    # strict (the default): a direction learned on the base model is refused in one line naming the adapters
    with pytest.raises(ModelMismatchError, match=r"carries LoRA adapters \['style'\]; pass steering_strict=False") as err:
        pipe("a bag", generator=gen(), steering=vector, **KW)
    assert "\n" not in str(err.value)
    loose = dict(steering=vector, steering_strict=False, steering_window=(0, 1), **KW)
    assert np.array_equal(pipe("a bag", generator=gen(), **{**loose, "steering_scale": 0.0}).images, lora)
    steered = pipe("a bag", generator=gen(), **loose).images
    assert np.abs(steered - lora).mean() > 1e-4 and no_hooks_left(pipe.unet)

    # the adapter's scale is part of the hash; unloaded, the base model's hash and images come back
    half_hash = weights_hash(pipe.unet)
    pipe.set_adapters(["style"], [0.5])
    assert weights_hash(pipe.unet) not in (half_hash, base_hash)
    pipe.set_adapters(["style"], [1.0])
    assert weights_hash(pipe.unet) == half_hash
    pipe.fuse_lora()  # fused: the same images, steered the same
    assert adapter_state(pipe.unet)["merged"] == ["style"]
    np.testing.assert_allclose(pipe("a bag", generator=gen(), **loose).images, steered, atol=1e-5)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    assert weights_hash(pipe.unet) == base_hash
    # unfusing subtracts the LoRA's product again: the base weights come back to float rounding
    np.testing.assert_allclose(pipe("a bag", generator=gen(), **KW).images, base, atol=1e-5)


def test_a_batch_run_with_a_lora_does_not_resume_from_the_base_models_images(lora_dir, tmp_path):
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a bag", "seeds": [0, 1], "num_inference_steps": 2, "name": "bag"}) + "\n")
    first = batch.run(jobs, pipe, tmp_path / "out", model="tiny", progress=False)
    pipe.load_lora_weights(lora_dir, adapter_name="style")
    second = batch.run(jobs, pipe, tmp_path / "out", model="tiny", progress=False)
    assert (first["written"], second["written"], second["skipped"]) == (2, 2, 0)  # other weights: other images
    again = batch.run(jobs, pipe, tmp_path / "out", model="tiny", progress=False)
    assert (again["written"], again["skipped"]) == (0, 2)


# ----------------------------------------------------------------------------------------------------------------------
# The command line: --lora FILE[:SCALE]
# ----------------------------------------------------------------------------------------------------------------------
def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from steer.cli.main import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_with_a_lora_is_the_lora_pipeline_records_it_and_reproduces(model_dir, lora_dir, tmp_path, capsys):
    from PIL import Image

    from steer.cli.loading import load_pipeline
    from steer.images import file_sha256
    from steer.recipe import read_recipe

    lora = lora_dir / "pytorch_lora_weights.safetensors"
    pipe = load_pipeline(model_dir, "cpu")
    vector = random_vector(pipe, [CONTEXT_SITE], scale=3.0, fingerprint=True)  # learned on the base model
    vector.save(tmp_path / "dir.safetensors")
    out = tmp_path / "out"
    argv = ["generate", "--model", model_dir, "--lora", f"{lora}:0.7", "--prompt", "a bag", "--direction", tmp_path / "dir.safetensors",
            "--steps", 3, "--seed", 1, "--out", out]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "carries LoRA adapters ['lora0']; pass --no-strict" in err.strip().splitlines()[-1]
    code, _, err = run_cli(capsys, *argv, "--no-strict")
    assert code == 0, err
    png = next(out.glob("seed1*.png"))
    pipe.load_lora_weights(lora_dir, adapter_name="x")  # diffusers' own loading, weighted the same
    pipe.set_adapters(["x"], [0.7])
    want = pipe("a bag", num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator().manual_seed(1), steering=vector,
                steering_strict=False).images[0]
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), np.asarray(want))
    assert read_recipe(png)["loras"] == [{"path": str(lora.resolve()), "sha256": file_sha256(lora), "scale": 0.7}]
    code, printed, err = run_cli(capsys, "reproduce", png)  # the recipe records --no-strict too
    assert code == 0 and "identical" in printed, err
    # moved next to the image: found by its sha256; another file under the name: refused in one line
    moved = out / "style.safetensors"
    moved.write_bytes(lora.read_bytes())
    lora.rename(tmp_path / "elsewhere.safetensors")
    try:
        code, printed, err = run_cli(capsys, "reproduce", png)
        assert code == 0 and "identical" in printed, err
        moved.unlink()
        code, _, err = run_cli(capsys, "reproduce", png)
        assert code == 2 and "the LoRA pytorch_lora_weights.safetensors" in err and "gone or changed" in err
        assert len(err.strip().splitlines()) == 1
    finally:
        (tmp_path / "elsewhere.safetensors").rename(lora)


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda d: d / "missing.safetensors", ("is not a file",)),
        (lambda d: d / "weights.bin", ("not a .safetensors file", "never unpickles")),
        (lambda d: d / "junk.safetensors", ("not a readable safetensors file",)),
        (lambda d: f"{d / 'real.safetensors'}:99", ("must be a number in [-10, 10]",)),
    ],
    ids=["missing", "pickle", "junk", "scale"],
)
def test_a_bad_lora_file_is_one_line_before_the_model_loads(make, needles, model_dir, lora_dir, tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"\x80\x04not for unpickling")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    (tmp_path / "real.safetensors").write_bytes((lora_dir / "pytorch_lora_weights.safetensors").read_bytes())
    code, _, err = run_cli(capsys, "generate", "--model", model_dir, "--lora", make(tmp_path), "--prompt", "a bag", "--out", tmp_path / "o")
    from steer.testing import assert_one_line_error

    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


def test_a_lora_of_another_model_is_refused_in_one_line(model_dir, tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 999),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(999, 4)},
              tmp_path / "other.safetensors")
    code, _, err = run_cli(capsys, "generate", "--model", model_dir, "--lora", tmp_path / "other.safetensors", "--prompt", "a bag",
                           "--steps", 2, "--out", tmp_path / "o")
    last = err.strip().splitlines()[-1]  # after the model's loading bars
    assert code == 2 and last.startswith("steer generate: error: the LoRA other.safetensors does not fit this model: "), err
    assert "Traceback" not in err


def test_batch_and_learn_take_a_lora(model_dir, lora_dir, tmp_path, capsys):
    from steer.cli.loading import load_pipeline
    from steer.lora import LoraFile
    from steer.recipe import read_recipe
    from steer.vectors import SteeringVector

    lora = lora_dir / "pytorch_lora_weights.safetensors"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a bag", "seed": 0, "num_inference_steps": 2, "name": "bag"}) + "\n")
    assert run_cli(capsys, "batch", jobs, "--model", model_dir, "--out", tmp_path / "b", "--no-progress")[0] == 0
    assert run_cli(capsys, "batch", jobs, "--model", model_dir, "--lora", lora, "--out", tmp_path / "b", "--no-progress")[0] == 0
    assert sorted(p.name for p in (tmp_path / "b").glob("bag*.png")) == ["bag-1.png", "bag.png"]  # not resumed
    recipes = [read_recipe(tmp_path / "b" / name) for name in ("bag.png", "bag-1.png")]
    assert ["loras" in r for r in recipes] == [False, True] and recipes[0]["unet_weights"] != recipes[1]["unet_weights"]
    code, _, err = run_cli(capsys, "learn", "--model", model_dir, "--lora", lora, "--positive", "a red bag", "a red coat",
                           "--negative", "a bag", "a coat", "--steps", 2, "--out", tmp_path / "red.safetensors")
    assert code == 0, err
    learned = SteeringVector.load(tmp_path / "red.safetensors")
    with_lora = load_pipeline(model_dir, "cpu", loras=[LoraFile(lora)])
    assert learned.metadata["model"]["weights_hash"] == weights_hash(with_lora.unet)  # learned on the LoRA'd model
    with_lora("a bag", num_inference_steps=2, steering=learned)  # strict: it fits the LoRA'd model
    with pytest.raises(ModelMismatchError, match="other weights"):
        load_pipeline(model_dir, "cpu")("a bag", num_inference_steps=2, steering=learned)


def test_the_app_takes_a_lora_and_records_it_in_its_recipes(model_dir, lora_dir, tmp_path):
    import app
    from steer.app import helpers as H
    from steer.cli.loading import load_pipeline

    lora = lora_dir / "pytorch_lora_weights.safetensors"
    args = app.parse_args(["--model", model_dir, "--lora", f"{lora}:0.5"])
    assert [(x.path, x.scale) for x in args.lora] == [(lora, 0.5)]
    pipe = load_pipeline(args.model, "cpu", loras=args.lora)
    recipe = H.GenerateSettings(prompt="a bag", steps=2).validated(pipe).recipe(pipe, None, 0.0)
    assert [(e["path"], e["scale"]) for e in recipe["loras"]] == [(str(lora.resolve()), 0.5)]
    with pytest.raises(SystemExit):
        app.parse_args(["--lora", str(tmp_path / "none.safetensors")])
    from safetensors.torch import save_file

    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 999),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(999, 4)},
              tmp_path / "other.safetensors")
    with pytest.raises(SystemExit, match=r"^app.py: error: the LoRA other.safetensors does not fit this model: ") as exit_:
        app.main(["--model", model_dir, "--lora", str(tmp_path / "other.safetensors")])
    assert "\n" not in str(exit_.value.code)


def test_load_loras_twice_keeps_both_and_a_failed_file_takes_out_only_itself(lora_dir, tmp_path):
    from safetensors.torch import save_file

    from steer.lora import LoraFile, load_loras, loaded_loras

    lora = lora_dir / "pytorch_lora_weights.safetensors"
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    load_loras(pipe, [LoraFile(lora, 0.5)])
    one = pipe("a bag", generator=gen(), **KW).images
    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 999),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(999, 4)},
              tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="the LoRA other.safetensors does not fit this model"):
        load_loras(pipe, [LoraFile(tmp_path / "other.safetensors")])
    assert [r["scale"] for r in loaded_loras(pipe)] == [0.5]
    assert np.array_equal(pipe("a bag", generator=gen(), **KW).images, one)  # the first LoRA still acts, alone
    both = load_loras(pipe, [LoraFile(lora, 0.5)])  # the same file again: adapters lora0 and lora1, 0.5 each
    assert [r["scale"] for r in both] == [0.5, 0.5] and sorted(adapter_state(pipe.unet)["adapters"]) == ["lora0", "lora1"]
    assert np.abs(pipe("a bag", generator=gen(), **KW).images - one).mean() > 1e-5
