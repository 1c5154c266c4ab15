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
