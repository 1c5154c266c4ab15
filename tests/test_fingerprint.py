"""The model identity check (`steer.fingerprint`): the same weights pass in fp32, fp16 and bf16 on every family while a
fine-tune is refused; files written before the weights sample keep matching as before; an IP-Adapter is not a
fine-tune; sequential CPU offload (parameters on the meta device) is checked from accelerate's map, never a torch
error (tiny pipelines, CPU)."""

from __future__ import annotations

import copy
import hashlib
import warnings

import pytest
import torch

from steer import ModelMismatchError, SteeringVector
from steer.denoisers import CONTEXT_SITE, layer_channels
from steer.fingerprint import weights_hash, weights_verdict
from steer.testing import random_vector, tiny_pipeline
from steer.testing.flux import tiny_flux_pipeline
from steer.testing.pixart import tiny_pixart_pipeline
from steer.testing.sd3 import tiny_sd3_pipeline
from steer.testing.sdxl import tiny_sdxl_pipeline
from steer.vectors import unet_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
FAMILIES = {"sd": tiny_pipeline, "sdxl": tiny_sdxl_pipeline, "sd3": tiny_sd3_pipeline, "pixart": tiny_pixart_pipeline, "flux": tiny_flux_pipeline}
SITE = "up_blocks.0.resnets.0"  # an SD UNet site (the family tests use CONTEXT_SITE, which every family has)


def denoiser(pipe):
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def learned_on(module, seed=0):
    """A direction at the text site whose fingerprint is ``module``'s."""
    g = torch.Generator().manual_seed(seed)
    channels = layer_channels(module, [CONTEXT_SITE])[CONTEXT_SITE]
    return SteeringVector({CONTEXT_SITE: torch.randn(channels, generator=g)}, {"name": "d", "model": unet_fingerprint(module, [CONTEXT_SITE])})


def old_file(vector):
    """``vector`` as steer wrote it before the weights sample (its fingerprint has the fp16-rounded hash only)."""
    meta = copy.deepcopy(vector.metadata)
    meta["model"].pop("weights_sample", None)
    return SteeringVector(vector.directions, meta)


def old_hash(module):
    """The weights hash as steer computed it before reading base parameters: fp16-rounded ``params[0]`` and
    ``params[-1]`` (a plain denoiser, no LoRA)."""
    params = list(module.parameters())
    h = hashlib.sha256()
    for p in (params[0], params[-1]):
        h.update(p.detach().flatten()[:4096].to(device="cpu", dtype=torch.float16).float().numpy().tobytes())
    return h.hexdigest()[:16]


def fine_tune(module, factor=1.03):
    tuned = copy.deepcopy(module)
    with torch.no_grad():
        next(tuned.parameters()).mul_(factor)
    return tuned


def checks(vector, module):
    """``vector.check_compatible(module)`` (strict) with any warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vector.check_compatible(module)


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_fp16_and_bf16_copies_are_the_same_weights_and_a_fine_tune_is_not(family):
    base = denoiser(FAMILIES[family](seed=0))
    copies = {"fp32": base, "fp16": copy.deepcopy(base).to(torch.float16), "bf16": copy.deepcopy(base).to(torch.bfloat16)}
    for learned in copies:  # bf16 on either side (learned on a fp16 copy, used on a bf16 one: both rounded from fp32)
        vector = learned_on(copies[learned])
        for used in copies:
            checks(vector, copies[used])
        for dtype in (torch.float32, torch.bfloat16):  # weights 3% off: other weights, also at bf16's precision
            with pytest.raises(ModelMismatchError, match="learned on other weights of this architecture"):
                vector.check_compatible(fine_tune(base).to(dtype))
    other = denoiser(FAMILIES[family](seed=1)).to(torch.bfloat16)  # another checkpoint
    with pytest.raises(ModelMismatchError, match="other weights"):
        learned_on(base).check_compatible(other)


def test_a_learned_direction_steers_a_bf16_pipeline():
    pipe = tiny_pipeline(seed=0)
    vector = pipe.learn_direction(["a red bag"], ["a bag"], calibrate=False, progress=False)
    pipe.to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        images = pipe("a bag", steering=vector, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert torch.isfinite(images).all()
    learned = pipe.learn_direction(["a red bag"], ["a bag"], calibrate=False, progress=False)  # learned in bf16
    checks(learned, denoiser(tiny_pipeline(seed=0)))  # a fresh fp32 load of the same weights


def test_files_written_before_the_weights_sample_match_as_before():
    base = denoiser(tiny_pipeline(seed=0))
    assert weights_hash(base) == old_hash(base)  # a plain denoiser's hash is the one files record
    old = old_file(learned_on(base))
    checks(old, base)
    checks(old, copy.deepcopy(base).to(torch.float16))
    for other in (fine_tune(base, 1.001), denoiser(tiny_pipeline(seed=1))):  # other weights, as before (fp32 and fp16)
        for dtype in (torch.float32, torch.float16):
            with pytest.raises(ModelMismatchError, match="other weights"):
                old.check_compatible(other.to(dtype))
    # a bf16 copy cannot reproduce the fp16-rounded hash: the direction applies, and one line says it was not checked
    with pytest.warns(UserWarning, match=r"^direction 'd': its weights are not checked: .*bfloat16 copy cannot reproduce") as caught:
        old.check_compatible(copy.deepcopy(base).to(torch.bfloat16))
    assert all("\n" not in str(w.message) for w in caught)
    verdict = weights_verdict(old.metadata["model"], copy.deepcopy(base).to(torch.bfloat16))
    assert verdict.same is None


def test_an_old_file_accepted_before_stays_accepted_in_fp32_even_if_its_hash_read_an_adapter():
    """Before, the hash read ``params[-1]``: a file learned with an IP-Adapter loaded recorded the adapter's weight.
    With the same adapter loaded it still matches."""
    pipe = tiny_pipeline(seed=0)
    add_ip_adapter(pipe.unet)
    vector = learned_on(pipe.unet)
    vector.metadata["model"] = {**vector.metadata["model"], "weights_hash": old_hash(pipe.unet)}
    checks(old_file(vector), pipe.unet)


def add_ip_adapter(unet, embed=16, seed=0):
    """A random IP-Adapter in diffusers' own state-dict format, loaded with diffusers' loader."""
    g = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim
    state = {"image_proj": {"proj.weight": torch.randn(4 * width, embed, generator=g) * 0.05, "proj.bias": torch.zeros(4 * width),
                            "norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)}, "ip_adapter": {}}
    channels = unet.config.block_out_channels
    for key, name in enumerate((n for n in unet.attn_processors if not n.endswith("attn1.processor")), start=0):
        block = name.split(".")[0]
        hidden = channels[-1] if block == "mid_block" else (
            list(reversed(channels))[int(name.split(".")[1])] if block == "up_blocks" else channels[int(name.split(".")[1])])
        state["ip_adapter"][f"{2 * key + 1}.to_k_ip.weight"] = torch.randn(hidden, width, generator=g) * 0.05
        state["ip_adapter"][f"{2 * key + 1}.to_v_ip.weight"] = torch.randn(hidden, width, generator=g) * 0.05
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)


def test_an_ip_adapter_is_not_a_fine_tune():
    pipe = tiny_pipeline(seed=0)
    before = unet_fingerprint(pipe.unet, [SITE])
    vector, old = random_vector(pipe, [SITE], fingerprint=True), old_file(random_vector(pipe, [SITE], fingerprint=True))
    add_ip_adapter(pipe.unet)
    assert list(dict(pipe.unet.named_parameters()))[-1].startswith("encoder_hid_proj.")  # the adapter's come last
    assert unet_fingerprint(pipe.unet, [SITE]) == before
    checks(vector, pipe.unet)
    checks(old, pipe.unet)  # the files written before
    with pytest.raises(ModelMismatchError, match="other weights"):
        vector.check_compatible(fine_tune(pipe.unet))  # the base weights are still read


def offloaded(seed=0):
    """A tiny SD pipeline whose UNet is under accelerate's sequential CPU offload (`enable_sequential_cpu_offload`'s
    `cpu_offload`): its parameters on the meta device, their values in its hooks' weights maps."""
    from accelerate import cpu_offload

    pipe = tiny_pipeline(seed=seed)
    cpu_offload(pipe.unet, execution_device=torch.device("cpu"))
    assert next(pipe.unet.parameters()).is_meta
    return pipe


def test_sequential_cpu_offload_reads_the_weights_from_accelerates_map():
    base = denoiser(tiny_pipeline(seed=0))
    vector, fingerprint = learned_on(base), unet_fingerprint(base, [SITE])
    pipe = offloaded()
    assert unet_fingerprint(pipe.unet, [SITE]) == fingerprint  # learn_direction records it as on the loaded model
    checks(vector, pipe.unet)
    checks(old_file(vector), pipe.unet)
    with pytest.raises(ModelMismatchError, match="other weights"):
        learned_on(denoiser(tiny_pipeline(seed=1))).check_compatible(pipe.unet)


def test_offloaded_weights_steer_cannot_read_are_not_checked_in_one_line():
    vector = learned_on(denoiser(tiny_pipeline(seed=1)))  # other weights: not seen
    pipe = offloaded()
    for module in pipe.unet.modules():
        if hasattr(module, "_hf_hook"):
            module._hf_hook.weights_map = None
    with pytest.warns(UserWarning, match=r"^direction 'd': its weights are not checked: the denoiser's weights are offloaded"):
        vector.check_compatible(pipe.unet)
    with warnings.catch_warnings():  # steering_strict=False reads no weights: nothing to say
        warnings.simplefilter("error")
        vector.check_compatible(pipe.unet, strict=False)
    with pytest.warns(UserWarning, match="the fingerprint records no weights"):
        fingerprint = unet_fingerprint(pipe.unet, [SITE])  # what learn_direction records
    assert "weights_hash" not in fingerprint and fingerprint["channels"] == {SITE: 64}


def test_a_detector_file_checks_the_weights_the_same_way(tmp_path):
    from steer.detect.detector import _check_model

    base = denoiser(tiny_pipeline(seed=0))
    saved = unet_fingerprint(base, [SITE])
    _check_model(saved, copy.deepcopy(base).to(torch.bfloat16), [SITE], True, tmp_path / "d.safetensors")
    with pytest.raises(ModelMismatchError, match="calibrated on other weights"):
        _check_model(saved, fine_tune(base).to(torch.bfloat16), [SITE], True, tmp_path / "d.safetensors")


def test_a_malformed_weights_sample_is_refused_in_one_line(tmp_path):
    vector = learned_on(denoiser(tiny_pipeline(seed=0)))
    vector.metadata["model"]["weights_sample"]["values"][3] = "x"
    with pytest.raises(ValueError, match=r"metadata\.model\.weights_sample\.values\[3\] must be a number") as err:
        vector.save(tmp_path / "bad.safetensors")
    assert "\n" not in str(err.value)


def test_the_bundled_directions_and_detectors_check_on_a_bf16_demo_model():
    """They record the weights sample (added to the files shipped before it, their tensors unchanged)."""
    from diffusers import UNet2DConditionModel

    from steer.assets import DEFAULT_MODEL, DIRECTIONS_DIR
    from steer.detect.detector import _check_model, read_detector_file

    unet = UNet2DConditionModel.from_pretrained(f"{DEFAULT_MODEL}/unet").to(torch.bfloat16)
    for path in sorted(DIRECTIONS_DIR.glob("*.safetensors")):
        checks(SteeringVector.load(path), unet)
    path = DIRECTIONS_DIR.parent / "detectors" / "demo.safetensors"
    header, _ = read_detector_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_model(header["model"], unet, list(header["model"]["channels"]), True, path)


def test_a_bf16_copy_cast_from_fp16_files_is_the_same_weights():
    """``variant="fp16", torch_dtype=torch.bfloat16`` holds bf16(fp16(x)), rounded twice: 1 in 5 such copies of the
    learned-on weights fell outside the two dtypes' own rounding and was refused as "other weights"."""
    from steer.fingerprint import samples_agree

    x = torch.randn(20000, generator=torch.Generator().manual_seed(0)) * 0.05
    twice = x.to(torch.float16).to(torch.bfloat16).float()
    off = (twice - x).abs() > (2.0**-8 + 2.0**-24) * x.abs() * 1.01  # beyond the bf16 + fp32 half-ulps alone
    assert bool(off.any())  # the case exists
    xs, ys = x[off][:32].tolist(), twice[off][:32].tolist()
    assert samples_agree({"dtype": "float32", "values": xs}, {"dtype": "bfloat16", "values": ys})
    assert not samples_agree({"dtype": "float32", "values": xs}, {"dtype": "bfloat16", "values": [y * 1.03 for y in ys]})
