"""A denoiser compiled in place (``unet.compile()``, diffusers' ``compile_repeated_blocks()``): a compiled graph ignores
hooks added inside it, so steering or recording at a site inside a compiled module is one line naming the site and
`compile_unet` (it gave the unsteered image bit for bit). Hooks on a compiled module itself still act: the text site
(a pre-hook on the UNet), a compiled block's own output, and the sites outside the compiled blocks steer as eager.
``backend="eager"``: dynamo traces and guards as usual, without code generation.
"""

import numpy as np
import pytest
import torch
import torch._dynamo
from torch import nn

from steer.denoisers import CONTEXT_SITE, LayerError, cross_attention_sites, layer_channels
from steer.engine.recording import ActivationRecorder
from steer.testing import no_hooks_left, random_vector, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
STEPS = 3
RESNET = "up_blocks.0.resnets.1"
BLOCK = "down_blocks.0.attentions.0"  # a Transformer2DModel: above the repeated blocks, not compiled itself
REPEATED = "down_blocks.0.attentions.0.transformer_blocks.0"  # a BasicTransformerBlock: what compile_repeated_blocks compiles


def call(pipe, **kw):
    return pipe("a red sneaker", generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, output_type="np", **kw).images


@pytest.fixture(scope="module")
def eager():
    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def vectors(eager):
    attn2 = cross_attention_sites(eager.unet)[0]
    return {name: random_vector(eager, [name], seed=i, scale=3.0) for i, name in enumerate([CONTEXT_SITE, RESNET, BLOCK, REPEATED, attn2])}


def compiled(how: str):
    torch._dynamo.reset()
    pipe = tiny_pipeline(seed=0)  # its channel cache cold: a cross-attention site is probed
    pipe.unet.compile(backend="eager") if how == "in place" else pipe.unet.compile_repeated_blocks(backend="eager")
    call(pipe)  # warm: the graphs are built without hooks
    return pipe


def refused(match: str, fn, *args, **kw) -> str:
    with pytest.raises(LayerError, match=match) as err:
        fn(*args, **kw)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "compile_unet(layers=...)" in message
    return message


def test_in_place_compile_refuses_every_site_inside_and_steers_the_text_tokens(eager, vectors):
    pipe = compiled("in place")
    attn2 = cross_attention_sites(eager.unet)[0]
    try:
        for name in (RESNET, BLOCK, attn2):
            refused(f"steering site '{name}' .*the denoiser is compiled in place", call, pipe, steering=vectors[name])
        assert no_hooks_left(pipe.unet)
        readers = cross_attention_sites(eager.unet)[0]
        refused(rf"steering site '{CONTEXT_SITE}' \(read at '{readers}'\)", call, pipe, steering=vectors[CONTEXT_SITE], steering_readers="layout")
        # the text site is a pre-hook on the compiled UNet itself: it acts, as eager
        np.testing.assert_array_equal(call(pipe, steering=vectors[CONTEXT_SITE]), call(eager, steering=vectors[CONTEXT_SITE]))
        # recording (learning, inline detection) is refused the same way: its hooks gave no activations or a stale graph's
        with pytest.raises(LayerError, match=f"'{RESNET}'"), ActivationRecorder(pipe.unet, [RESNET]):
            pass
        refused(f"'{attn2}'", pipe.learn_direction, ["a red bag"], ["a bag"], preset="casteer", calibrate=False,
                num_samples=1, num_inference_steps=2, step_buckets=1, progress=False)
        refused("nonlinearity", call, pipe, detect_memorization=True)
        refused(f"'{RESNET}'", pipe.compile_unet, layers=[CONTEXT_SITE, RESNET], backend="eager")
        assert no_hooks_left(pipe.unet)
    finally:
        torch._dynamo.reset()


def test_regional_compile_refuses_the_sites_inside_a_block_and_steers_the_rest(eager, vectors):
    pipe = compiled("regional")
    attn2 = cross_attention_sites(eager.unet)[0]
    try:
        refused(f"steering site '{attn2}' .*its module '{REPEATED}' is compiled in place", call, pipe, steering=vectors[attn2])
        refused(f"'{CONTEXT_SITE}'", call, pipe, steering=vectors[CONTEXT_SITE], steering_readers="detail")
        assert no_hooks_left(pipe.unet)
        # outside the compiled blocks, above them, and a compiled block's own output: as eager
        for name in (CONTEXT_SITE, RESNET, BLOCK, REPEATED):
            np.testing.assert_array_equal(call(pipe, steering=vectors[name]), call(eager, steering=vectors[name]), err_msg=name)
    finally:
        torch._dynamo.reset()


def test_a_flux_attention_inside_a_compiled_block_is_one_line_and_the_block_steers():
    from steer.testing.flux import tiny_flux_pipeline

    def flux_call(pipe, **kw):
        return pipe("a red sneaker", generator=torch.Generator().manual_seed(0), num_inference_steps=2, height=16, width=16,
                    output_type="np", **kw).images

    eager = tiny_flux_pipeline(seed=0)
    block, attention = random_vector(eager, ["transformer_blocks.0"], seed=1), random_vector(eager, ["single_transformer_blocks.0.attn"], seed=2)
    torch._dynamo.reset()
    pipe = tiny_flux_pipeline(seed=0)
    pipe.transformer.compile_repeated_blocks(backend="eager")
    try:
        flux_call(pipe)
        # inside the compiled block: steered nothing (or its channel probe, whose hook never ran, was a KeyError)
        refused("'single_transformer_blocks.0.attn' .*its module 'single_transformer_blocks.0'", flux_call, pipe, steering=attention)
        np.testing.assert_array_equal(flux_call(pipe, steering=block, steering_scale=0.5), flux_call(eager, steering=block, steering_scale=0.5))
    finally:
        torch._dynamo.reset()


def test_a_site_that_never_runs_in_the_probe_is_one_line():
    unet = tiny_pipeline(seed=0).unet
    unet.add_module("spare", nn.Linear(2, 2))  # no out_channels, and the forward never calls it
    with pytest.raises(LayerError, match=r"cannot read the channel count of \['spare'\]: the module never ran") as err:
        layer_channels(unet, ["spare"])
    assert len(str(err.value).splitlines()) == 1
