"""A steered pipeline is a drop-in for its diffusers parent: the same ``__call__`` signature plus the steering options,
and the behaviours diffusers' own fast tests check on it (callback tensor inputs, callback-driven CFG and interrupt,
images per prompt, no-CFG runs, the state a call leaves on the pipeline), with steering on. SD and SDXL, tiny
random-weight components, CPU."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from steer import SteeringVector
from steer.config import STEERING_DEFAULTS
from steer.denoisers import CONTEXT_SITE, layer_channels
from steer.detect.scores import INLINE_CALL_PARAMS
from steer.pipelines.factory import steering_class
from steer.pipelines.img2img import SteeringStableDiffusionImg2ImgPipeline, SteeringStableDiffusionXLImg2ImgPipeline
from steer.pipelines.stable_diffusion import SteeringStableDiffusionPipeline
from steer.pipelines.stable_diffusion_xl import SteeringStableDiffusionXLPipeline

PAIRS = [
    (SteeringStableDiffusionPipeline, StableDiffusionPipeline),
    (SteeringStableDiffusionImg2ImgPipeline, StableDiffusionImg2ImgPipeline),
    (SteeringStableDiffusionXLPipeline, StableDiffusionXLPipeline),
    (SteeringStableDiffusionXLImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline),
    *((steering_class(p), p) for p in (StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline,
                                              StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline,
                                              StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline)),
]
STEERING_PARAMS = {*STEERING_DEFAULTS, *INLINE_CALL_PARAMS}
# What a call leaves on the pipeline (diffusers' properties), where the class has them.
STATE = ("guidance_scale", "guidance_rescale", "clip_skip", "cross_attention_kwargs", "num_timesteps", "interrupt",
         "denoising_end", "do_classifier_free_guidance")
STEPS = 3


def same_default(a, b) -> bool:
    return a is b or (type(a) is type(b) and a == b)


@pytest.mark.parametrize(("steered", "parent"), PAIRS, ids=lambda c: c.__name__)
def test_call_signature_is_the_parents_plus_the_steering_options(steered, parent):
    assert steered._steering_parent is parent
    mine, theirs = inspect.signature(steered.__call__).parameters, inspect.signature(parent.__call__).parameters
    for name, p in theirs.items():
        q = mine.get(name)
        assert q is not None, f"{name} is missing"
        assert q.kind == p.kind and same_default(q.default, p.default), (name, q, p)
    kept = [n for n in mine if n in theirs]
    assert kept == list(theirs)  # same order: positional calls bind the same way
    extra = {n: q for n, q in mine.items() if n not in theirs}
    assert set(extra) == STEERING_PARAMS
    for name, q in extra.items():
        assert q.kind is inspect.Parameter.KEYWORD_ONLY
        assert same_default(q.default, STEERING_DEFAULTS.get(name))
    assert "callback_on_step_end_tensor_inputs" in mine and "latents" in steered._callback_tensor_inputs
    assert steered.__call__.__doc__.startswith(parent.__call__.__doc__ or "")


# behaviour ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sd", "sdxl"])
def case(request):
    if request.param == "sd":
        from steer.testing import tiny_pipeline

        pipe = tiny_pipeline(seed=0)
    else:
        from steer.testing.sdxl import tiny_sdxl_pipeline

        pipe = tiny_sdxl_pipeline(seed=0)
    ch = layer_channels(pipe.unet, [CONTEXT_SITE, "up_blocks.0.resnets.1"])
    g = torch.Generator().manual_seed(0)
    v = SteeringVector({n: 2.0 * torch.randn(c, generator=g) for n, c in ch.items()}, {"name": "rand"})
    return pipe, v


STEER = {"steering_window": (0.0, 1.0)}


def call(pipe, prompt="a red bag", seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("output_type", "np")
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kw).images


def test_callback_receives_the_tensor_inputs_it_asks_for_and_its_latents_are_used(case):
    pipe, v = case
    seen = []

    def zero_last(p, i, t, kwargs):
        seen.append(sorted(kwargs))
        if i == p.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    inputs = ["latents", "prompt_embeds"]
    out = call(pipe, steering=v, callback_on_step_end=zero_last, callback_on_step_end_tensor_inputs=inputs, output_type="latent", **STEER)
    assert seen == [sorted(inputs)] * STEPS
    assert float(out.abs().sum()) == 0
    latents = []

    def grab(p, i, t, kwargs):
        latents.append(kwargs["latents"].clone())
        return {}

    call(pipe, callback_on_step_end=grab, output_type="latent")
    call(pipe, steering=v, callback_on_step_end=grab, output_type="latent", **STEER)
    assert not torch.equal(latents[0], latents[STEPS])  # the callback runs inside the steered run


def test_callback_changes_to_guidance_and_interrupt_are_honoured_and_left_on_the_pipeline(case):
    pipe, v = case
    parent = type(pipe)._steering_parent

    def more_cfg(p, i, t, kwargs):
        p._guidance_scale += 1.0
        return kwargs

    call(pipe, steering=v, guidance_scale=5.0, callback_on_step_end=more_cfg, **STEER)
    assert pipe.guidance_scale == 5.0 + pipe.num_timesteps
    calls = []
    counter = pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))

    def stop(p, i, t, kwargs):
        p._interrupt = i == 0
        return kwargs

    try:
        parent.__call__(pipe, "a red bag", num_inference_steps=STEPS, callback_on_step_end=stop, output_type="latent")
        plain = len(calls)
        call(pipe, steering=v, callback_on_step_end=stop, output_type="latent", **STEER)
    finally:
        counter.remove()
    assert plain == 1 and len(calls) == 2 and pipe.interrupt is True


def test_images_per_prompt_multiply_the_batch_and_are_steered_row_by_row(case):
    pipe, v = case
    prompts = ["a red bag", "a green hat"]
    plain = call(pipe, prompts, num_images_per_prompt=2)
    steered = call(pipe, prompts, num_images_per_prompt=2, steering=v, steering_scale=[0.0, 1.0, 0.0, 1.0], **STEER)
    assert plain.shape[0] == steered.shape[0] == 4
    for row in (0, 2):
        np.testing.assert_array_equal(steered[row], plain[row])
    for row in (1, 3):
        assert np.abs(steered[row] - plain[row]).max() > 1e-4
    everything = call(pipe, prompts, num_images_per_prompt=2, steering=v, **STEER)
    assert all(np.abs(everything[r] - plain[r]).max() > 1e-4 for r in range(4))


def test_without_cfg_every_row_is_steered_whatever_the_branch(case):
    pipe, v = case
    plain = call(pipe, guidance_scale=1.0)
    cond = call(pipe, guidance_scale=1.0, steering=v, steering_branch="cond", **STEER)
    assert not pipe.do_classifier_free_guidance
    assert np.abs(cond - plain).max() > 1e-4
    np.testing.assert_array_equal(call(pipe, guidance_scale=1.0, steering=v, steering_branch="uncond", **STEER), cond)


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_a_steered_call_leaves_the_state_an_unsteered_one_leaves(case, guidance):
    pipe, v = case
    parent = type(pipe)._steering_parent
    kw = dict(num_inference_steps=STEPS, guidance_scale=guidance, guidance_rescale=0.3, output_type="latent")
    parent.__call__(pipe, "a red bag", generator=torch.Generator().manual_seed(0), **kw)
    expected = {k: getattr(pipe, k) for k in STATE if hasattr(type(pipe), k)}
    assert len(expected) >= 6
    call(pipe, num_inference_steps=2, guidance_scale=2.5, output_type="latent")  # something else in between
    scheduler = pipe.scheduler
    call(pipe, steering=v, **kw, **STEER)
    assert {k: getattr(pipe, k) for k in expected} == expected
    assert pipe.scheduler is scheduler  # the call's own scheduler copy stays with the call
