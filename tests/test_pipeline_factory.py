"""`steer.steering_pipeline(pipe)` and ``SteeringX.from_pipe``: the steered version of a diffusers pipeline instance,
sharing its components and dtypes; a one-line error for pipelines steer does not know."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMPipeline,
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DModel,
)

import steer
from steer.pipelines.factory import STEERED_PIPELINES, steering_class
from steer.testing import tiny_components
from steer.testing.sdxl import tiny_sdxl_components


def plain(cls):
    pipe = cls(**(tiny_sdxl_components(0) if "XL" in cls.__name__ else tiny_components(0)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def modules(pipe):
    return {k: m for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def test_every_entry_of_the_map_imports_and_steers_the_class_it_names():
    for name, target in STEERED_PIPELINES.items():
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        assert cls._steering_parent.__name__ == name, target
        assert steering_class(cls) is cls  # a steered class maps to itself


@pytest.mark.parametrize(
    "cls", [StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline],
    ids=lambda c: c.__name__,
)
def test_steering_pipeline_shares_the_components_and_is_exactly_the_parent_unsteered(cls):
    source = plain(cls)
    pipe = steer.steering_pipeline(source)
    assert type(pipe)._steering_parent is cls and type(pipe).__name__ == f"Steering{cls.__name__}"
    assert all(pipe.components[k] is m for k, m in modules(source).items())
    kw = dict(num_inference_steps=2, output_type="np")
    if "Img2Img" in cls.__name__:
        kw.update(image=torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)), strength=0.6)
    expected = source("a red bag", generator=torch.Generator().manual_seed(0), **kw).images
    got = pipe("a red bag", generator=torch.Generator().manual_seed(0), **kw).images
    np.testing.assert_array_equal(got, expected)
    again = steer.steering_pipeline(pipe)  # an already steered pipeline: a new one of the same class
    assert type(again) is type(pipe) and again is not pipe and again.unet is pipe.unet


def test_from_pipe_across_tasks_of_one_family():
    txt = plain(StableDiffusionXLPipeline)
    i2i = steer.SteeringStableDiffusionXLImg2ImgPipeline.from_pipe(txt)
    assert i2i.unet is txt.unet and i2i.text_encoder_2 is txt.text_encoder_2
    sd = steer.SteeringStableDiffusionImg2ImgPipeline.from_pipe(steer.steering_pipeline(plain(StableDiffusionPipeline)))
    assert type(sd).__name__ == "SteeringStableDiffusionImg2ImgPipeline"


def test_unsupported_pipelines_get_one_line_naming_the_class():
    ddpm = DDPMPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                         down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2),
                        scheduler=DDPMScheduler())
    with pytest.raises(steer.UnsupportedPipelineError) as err:
        steer.steering_pipeline(ddpm)
    message = str(err.value)
    assert "\n" not in message and "DDPMPipeline" in message and "StableDiffusionXLPipeline" in message
    with pytest.raises(steer.UnsupportedPipelineError, match="expects a diffusers pipeline instance, got str"):
        steer.steering_pipeline("stabilityai/sdxl")


def test_from_pipe_without_a_dtype_keeps_every_components_dtype_and_leaves_the_source_alone():
    source = plain(StableDiffusionXLPipeline)
    for name, m in modules(source).items():
        if name != "vae":  # SDXL in half precision with its VAE kept in float32, as users run it
            m.to(torch.float16)
    before = {k: m.dtype for k, m in modules(source).items()}
    assert before["vae"] == torch.float32 and before["unet"] == torch.float16
    pipe = steer.steering_pipeline(source)
    assert {k: m.dtype for k, m in modules(pipe).items()} == before
    assert {k: m.dtype for k, m in modules(source).items()} == before  # diffusers would have cast both to float32
    explicit = steer.SteeringStableDiffusionXLPipeline.from_pipe(source, dtype=torch.float32)
    assert {m.dtype for m in modules(explicit).values()} == {torch.float32}


def test_a_saved_steering_pipeline_loads_with_diffusers_generic_loaders_and_steers_again(tmp_path):
    """``save_pretrained`` wrote ``_class_name: SteeringStableDiffusionPipeline``: ``DiffusionPipeline`` and
    ``AutoPipelineForText2Image.from_pretrained`` failed on the folder; it names the diffusers class now, and steer's
    own loaders still give the steered class."""
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline, StableDiffusionPipeline

    from steer import SteeringStableDiffusionPipeline

    pipe = SteeringStableDiffusionPipeline(**tiny_components())
    pipe.save_pretrained(tmp_path / "saved")
    plain = DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert type(plain) is StableDiffusionPipeline and type(AutoPipelineForText2Image.from_pretrained(tmp_path / "saved")) is StableDiffusionPipeline
    again = steering_class(plain).from_pretrained(tmp_path / "saved")
    assert type(again) is SteeringStableDiffusionPipeline and type(SteeringStableDiffusionPipeline.from_pretrained(tmp_path / "saved")) is SteeringStableDiffusionPipeline
    kw = dict(num_inference_steps=2, output_type="np")
    assert np.array_equal(plain("a bag", generator=torch.Generator().manual_seed(0), **kw).images,
                          again("a bag", generator=torch.Generator().manual_seed(0), **kw).images)
