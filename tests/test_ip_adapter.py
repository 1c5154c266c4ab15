"""Steering with an IP-Adapter loaded (random weights in diffusers' own format, loaded by diffusers' loader).

With an adapter, the UNet hands every cross-attention ``(text tokens, image tokens)``: a routed text direction
(`steering_readers`, or a recorded route such as the bundled class edits') steers the text part there (it did nothing),
and the channel probe of a cross-attention site runs with the adapter's image inputs (it failed inside diffusers).
"""

import numpy as np
import pytest
import torch

from steer.denoisers import (
    CONTEXT_SITE,
    LayerError,
    adapter_for,
    cross_attention_sites,
    layer_channels,
    register_site_hook,
)
from steer.testing import no_hooks_left, random_vector, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
STEPS = 3
EMBED = 16  # the image-encoder width of the random adapter


def add_ip_adapter(unet: torch.nn.Module, seed: int = 0) -> None:
    """A random IP-Adapter (an `ImageProjection` of ``EMBED``-wide image embeddings, one key/value pair per
    cross-attention) loaded with diffusers' own loader."""
    g = torch.Generator().manual_seed(seed)
    dim, widths = unet.config.cross_attention_dim, unet.config.block_out_channels
    state = {"image_proj": {"proj.weight": torch.randn(4 * dim, EMBED, generator=g) * 0.05, "proj.bias": torch.zeros(4 * dim),
                            "norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim)}, "ip_adapter": {}}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            width = widths[-1]
        elif name.startswith("up_blocks"):
            width = list(reversed(widths))[int(name.split(".")[1])]
        else:
            width = widths[int(name.split(".")[1])]
        state["ip_adapter"][f"{key}.to_k_ip.weight"] = torch.randn(width, dim, generator=g) * 0.05
        state["ip_adapter"][f"{key}.to_v_ip.weight"] = torch.randn(width, dim, generator=g) * 0.05
        key += 2
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)


@pytest.fixture(scope="module")
def pipes():
    """(plain, with an IP-Adapter): two tiny pipelines of the same weights, the second one's channel cache cold."""
    plain, ip = tiny_pipeline(seed=0), tiny_pipeline(seed=0)
    add_ip_adapter(ip.unet)
    return plain, ip


def call(pipe, ip: bool = True, **kw):
    if ip:  # the negative and positive image embeddings of the CFG batch
        kw["ip_adapter_image_embeds"] = [torch.randn(2, 1, EMBED, generator=torch.Generator().manual_seed(1))]
    return pipe("a red sneaker", generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, output_type="np", **kw).images


@pytest.mark.parametrize("readers", ["layout", "detail"])
def test_a_routed_text_direction_steers_the_text_part_of_the_adapters_tokens(pipes, readers):
    plain, ip = pipes
    v = random_vector(plain, [CONTEXT_SITE], seed=1, scale=2.0)
    unsteered = call(ip)
    steered = call(ip, steering=v, steering_readers=readers)
    assert not np.array_equal(steered, unsteered)  # it did nothing: the readers received a tuple
    assert no_hooks_left(ip.unet)
    ip.set_ip_adapter_scale(0.0)  # the image tokens weigh nothing: what the direction does without the adapter
    try:
        np.testing.assert_array_equal(call(ip, steering=v, steering_readers=readers), call(plain, False, steering=v, steering_readers=readers))
    finally:
        ip.set_ip_adapter_scale(1.0)


def test_the_reader_hook_rebuilds_the_pair_given_by_keyword_or_position(pipes):
    _, ip = pipes
    name = cross_attention_sites(ip.unet)[0]
    attn = ip.unet.get_submodule(name)
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, 4, attn.query_dim if hasattr(attn, "query_dim") else attn.to_q.in_features, generator=g)
    text = torch.randn(1, 3, ip.unet.config.cross_attention_dim, generator=g)
    image = [torch.randn(1, 1, 4, ip.unet.config.cross_attention_dim, generator=g)]
    with torch.no_grad():
        want = attn(hidden, encoder_hidden_states=(text + 1, image))
        handle = register_site_hook(ip.unet, CONTEXT_SITE, lambda h: h + 1, (name,))
        try:
            by_keyword = attn(hidden, encoder_hidden_states=(text, image))
            by_position = attn(hidden, (text, image))
        finally:
            handle.remove()
    torch.testing.assert_close(by_keyword, want, rtol=0, atol=0)
    torch.testing.assert_close(by_position, want, rtol=0, atol=0)


def test_a_cross_attention_direction_probes_its_channels_with_the_adapter_loaded(pipes):
    plain, ip = pipes
    site = cross_attention_sites(plain.unet)[0]
    v = random_vector(plain, [site], seed=3, scale=4.0)  # the plain pipeline's cache: the adapter's is cold
    assert site not in ip.unet.__dict__.get("_steer_channels", {})
    steered = call(ip, steering=v)  # a TypeError deep in diffusers: the probe gave the UNet no image embeddings
    assert not np.array_equal(steered, call(ip))
    assert layer_channels(ip.unet, ["down_blocks.0", site]) == layer_channels(plain.unet, ["down_blocks.0", site])
    args, kwargs = adapter_for(ip.unet).probe_inputs()
    assert [tuple(e.shape) for e in kwargs["added_cond_kwargs"]["image_embeds"]] == [(1, 1, EMBED)]


def test_a_probe_whose_trial_forward_fails_is_one_line(pipes, monkeypatch):
    import steer.denoisers.unet

    _, ip = pipes
    cache = ip.unet.__dict__.pop("_steer_channels", None)
    monkeypatch.setattr(steer.denoisers.unet, "_image_embeds", lambda *_: None)  # a projection taking no probe shape
    try:
        with pytest.raises(LayerError, match=r"cannot read the channel count of \['down_blocks.0'\]: a trial forward of this unet failed \(") as err:
            layer_channels(ip.unet, ["down_blocks.0"])
        assert len(str(err.value).splitlines()) == 1
    finally:
        ip.unet.__dict__.pop("_steer_channels", None)
        if cache is not None:
            ip.unet.__dict__["_steer_channels"] = cache
