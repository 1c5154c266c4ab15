"""Editing a given image from its inversion (`steer.inversion`): unsteered, the replay lands on the picture's own
latents; steered, it moves; rows of a sweep, two threads at once, SDXL, SD3 and Flux (flow matching) replay the
same inversion (tiny random pipelines, CPU)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from steer.denoisers import CONTEXT_SITE
from steer.inversion import invert_image
from steer.testing import no_hooks_left, random_vector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
STEPS = 5


def picture(side: int = 32, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side + 8, 3), dtype=np.uint8))


def latents_of(pipe, image, height: int | None = None, width: int | None = None) -> torch.Tensor:
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(image, height=height or image.height, width=width or image.width)
        shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
        return (pipe.vae.encode(pixels).latent_dist.mode() - shift) * pipe.vae.config.scaling_factor


def test_the_unsteered_replay_is_the_picture_and_steering_moves_it(tiny_pipe):
    tiny_pipe.set_progress_bar_config(disable=True)
    image = picture()
    inversion = invert_image(tiny_pipe, image, "a bag", num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    assert (inversion.height, inversion.width) == (32, 40)  # the picture's own size
    target = latents_of(tiny_pipe, image)
    plain = inversion.edit(tiny_pipe, output_type="latent").images
    torch.testing.assert_close(plain, target, atol=1e-4, rtol=0)  # the picture's latents, to float rounding
    # a plain DDIM run from the same start is not (the recorded residuals are what brings it back)
    free = tiny_pipe(**inversion.call_kwargs(1), output_type="latent").images
    assert (free - target).abs().mean() > 10 * (plain - target).abs().mean()
    vector = random_vector(tiny_pipe, [CONTEXT_SITE], scale=4.0)
    sweep = inversion.edit(tiny_pipe, rows=3, steering=vector, steering_scale=[0.0, 1.0, 2.0], steering_window=(0, 1), output_type="latent").images
    torch.testing.assert_close(sweep[:1], plain, atol=1e-4, rtol=0)  # the sweep's scale-0 row is the picture too
    moved = [(sweep[i] - plain[0]).abs().mean().item() for i in (1, 2)]
    assert 1e-3 < moved[0] < moved[1], moved
    assert no_hooks_left(tiny_pipe.unet)
    assert type(tiny_pipe.scheduler).__name__ != "_ReplayingScheduler"  # the pipeline itself is untouched
    with pytest.raises(ValueError, match=f"recorded over {STEPS} steps; replay it with num_inference_steps={STEPS}"):
        inversion.pipeline(tiny_pipe)(**{**inversion.call_kwargs(1), "num_inference_steps": STEPS + 2})


def test_two_threads_replay_one_inversion_as_each_would_alone(tiny_pipe):
    tiny_pipe.set_progress_bar_config(disable=True)
    inversion = invert_image(tiny_pipe, picture(seed=1), "a coat", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1))
    vector = random_vector(tiny_pipe, [CONTEXT_SITE], scale=4.0)
    alone = {s: inversion.edit(tiny_pipe, steering=vector, steering_scale=s, output_type="latent").images for s in (0.0, 1.5)}
    got, errors = {}, []

    def worker(scale):
        try:
            for _ in range(2):
                got[scale] = inversion.edit(tiny_pipe, steering=vector, steering_scale=scale, output_type="latent").images
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (0.0, 1.5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s in (0.0, 1.5):
        torch.testing.assert_close(got[s], alone[s], atol=1e-5, rtol=0)


def test_sdxl_sd3_and_flux_invert():
    """SDXL (DDPM inversion), SD3 and Flux (flow matching: targets ``(1 - sigma) x0 + sigma eps`` at the scheduler's
    own sigmas, the Euler step as the mean; Flux in its packed latents): the unsteered replay is the picture's latents,
    a steered one moves; a flow scheduler that samples stochastically is refused in one line."""
    from steer.testing.flux import tiny_flux_pipeline
    from steer.testing.sd3 import tiny_sd3_pipeline
    from steer.testing.sdxl import tiny_sdxl_pipeline

    flux = tiny_flux_pipeline(0)
    for pipe, image in ((tiny_sdxl_pipeline(0), picture(side=64)), (tiny_sd3_pipeline(0), picture(side=56)), (flux, picture(side=22))):
        pipe.set_progress_bar_config(disable=True)
        inversion = invert_image(pipe, image, "a bag", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
        plain = inversion.edit(pipe, output_type="latent").images
        target = latents_of(pipe, image)
        if pipe is flux:  # 22 x 30 pixels: a multiple of 8, then of whole 2 x 2 latent patches (4 pixels on the tiny VAE)
            assert (inversion.height, inversion.width) == (16, 24)
            target = latents_of(pipe, image, 16, 24)
            target = pipe._pack_latents(target, 1, *target.shape[1:])
        torch.testing.assert_close(plain, target, atol=1e-4, rtol=0)
        free = pipe(**inversion.call_kwargs(1), output_type="latent").images  # no residuals: not the picture
        assert (free - plain).abs().mean() > 100 * 1e-4
        vector = random_vector(pipe, [CONTEXT_SITE], scale=4.0)
        sweep = inversion.edit(pipe, rows=2, steering=vector, steering_scale=[0.0, 2.0], steering_window=(0, 1), output_type="latent").images
        torch.testing.assert_close(sweep[:1], plain, atol=1e-4, rtol=0)
        assert (sweep[1] - plain[0]).abs().mean() > 1e-3
    flux.scheduler = type(flux.scheduler).from_config(flux.scheduler.config, stochastic_sampling=True)
    with pytest.raises(ValueError, match="^inverting needs the flow's deterministic Euler step"):
        invert_image(flux, picture(side=22), "a bag")
    from steer.testing.pixart import tiny_pixart_pipeline

    # PixArt's DPM-Solver lists DDIM as compatible: it passed the check and failed inside diffusers' prompt encoder
    with pytest.raises(ValueError, match="^inverting is not supported for SteeringPixArtSigmaPipeline"):
        invert_image(tiny_pixart_pipeline(0), picture(side=32), "a bag")


def test_generate_invert_gives_the_image_back_at_zero_records_it_and_reproduces(model_dir, tmp_path, capsys):
    from steer.cli.loading import load_pipeline
    from steer.cli.main import main
    from steer.recipe import read_recipe

    image = picture(seed=2)
    image.save(tmp_path / "photo.png")
    pipe = load_pipeline(model_dir, "cpu")
    random_vector(pipe, [CONTEXT_SITE], scale=4.0).save(tmp_path / "dir.safetensors")
    out = tmp_path / "out"
    code = main(["generate", "--model", model_dir, "--prompt", "a bag", "--image", str(tmp_path / "photo.png"), "--invert",
                 "--direction", str(tmp_path / "dir.safetensors"), "--sweep", "0,1,2", "--steps", str(STEPS), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    zero, one = (np.asarray(Image.open(out / f"seed0_scale+{s}.png").convert("RGB"), dtype=np.int16) for s in (0, 1))
    with torch.no_grad():
        vae = pipe.image_processor.postprocess(pipe.vae.decode(latents_of(pipe, image) / pipe.vae.config.scaling_factor).sample, output_type="np")[0]
    assert np.abs(zero - np.round(vae * 255)).max() <= 1  # the image back (its VAE reconstruction)
    assert np.abs(one - zero).mean() > 0.5
    recipe = read_recipe(out / "seed0_scale+1.png")
    assert recipe["edit"]["invert"] is True and recipe["edit"]["strength"] == 1.0
    capsys.readouterr()
    assert main(["reproduce", str(out / "seed0_scale+0.png"), str(out / "seed0_scale+1.png")]) == 0
    assert capsys.readouterr().out.count("identical") == 2
    for extra, needle in ((["--strength", "0.5"], "--invert replays the image's inversion over the whole run: it takes no --strength"),
                          (["--sampler", "euler"], "it takes no --sampler")):
        code = main(["generate", "--model", model_dir, "--prompt", "a bag", "--image", str(tmp_path / "photo.png"), "--invert",
                     *extra, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_matching_generate_invert_gives_the_image_back_at_zero_and_reproduces(family, tmp_path, capsys):
    """The command line on SD3 and Flux (flow matching): `steer generate --image --invert` edits from the inversion,
    its scale-0 row is the picture's VAE reconstruction, and `steer reproduce` makes both rows again."""
    from steer.cli.loading import load_pipeline
    from steer.cli.main import main
    from steer.testing.flux import tiny_flux_pipeline
    from steer.testing.sd3 import tiny_sd3_pipeline

    model = str(tmp_path / family)
    (tiny_sd3_pipeline if family == "sd3" else tiny_flux_pipeline)(0).save_pretrained(model)
    image = picture(side=56 if family == "sd3" else 16, seed=3)
    image.save(tmp_path / "photo.png")
    pipe = load_pipeline(model, "cpu")
    random_vector(pipe, [CONTEXT_SITE], scale=4.0).save(tmp_path / "dir.safetensors")
    out = tmp_path / "out"
    code = main(["generate", "--model", model, "--device", "cpu", "--prompt", "a bag", "--image", str(tmp_path / "photo.png"), "--invert",
                 "--direction", str(tmp_path / "dir.safetensors"), "--sweep", "0,1,2", "--steps", str(STEPS), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    zero, one = (np.asarray(Image.open(out / f"seed0_scale+{s}.png").convert("RGB"), dtype=np.int16) for s in (0, 1))
    config = pipe.vae.config
    with torch.no_grad():  # the latents as the VAE takes them: unshifted, unscaled (and, for Flux, unpacked)
        decoded = pipe.vae.decode(latents_of(pipe, image) / config.scaling_factor + config.shift_factor).sample
    vae = pipe.image_processor.postprocess(decoded, output_type="np")[0]
    assert np.abs(zero - np.round(vae * 255)).max() <= 1  # the image back (its VAE reconstruction)
    assert np.abs(one - zero).mean() > 0.5
    capsys.readouterr()
    assert main(["reproduce", str(out / "seed0_scale+0.png"), str(out / "seed0_scale+1.png"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("identical") == 2


def test_inverting_inside_a_steering_block_and_other_pictures_and_sizes(tiny_pipe):
    """A ``pipe.steering(...)`` block steered the inversion itself (its replay at 0 then missed the picture); an RGBA
    or greyscale photo failed deep in the VAE; an explicit height of 10**6 got the process killed for memory; an
    inversion's edit with num_images_per_prompt failed deep in attention."""
    tiny_pipe.set_progress_bar_config(disable=True)
    image = picture()
    vector = random_vector(tiny_pipe, [CONTEXT_SITE], scale=4.0)
    plain = invert_image(tiny_pipe, image, "a bag", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    with tiny_pipe.steering(vector, scale=1.0, window=(0, 1)):
        inside = invert_image(tiny_pipe, image, "a bag", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    replays = [i.edit(tiny_pipe, steering=vector, steering_scale=0.0, output_type="latent").images for i in (plain, inside)]
    torch.testing.assert_close(replays[1], replays[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(replays[0], latents_of(tiny_pipe, image), atol=1e-4, rtol=0)
    for mode in ("RGBA", "L", "CMYK"):  # the picture as its RGB decoding inverts
        other = invert_image(tiny_pipe, image.convert(mode), "a bag", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
        expected = latents_of(tiny_pipe, image.convert(mode).convert("RGB"))
        torch.testing.assert_close(other.edit(tiny_pipe, output_type="latent").images, expected, atol=1e-4, rtol=0)
    for bad, needle in (({"height": 10**6, "width": 64}, "height must be"), ({"height": 4, "width": 64}, "height must be")):
        with pytest.raises(ValueError, match=needle):
            invert_image(tiny_pipe, image, "a bag", num_inference_steps=STEPS, **bad)
    with pytest.raises(TypeError, match="pass rows= instead of num_images_per_prompt"):
        plain.edit(tiny_pipe, num_images_per_prompt=2)
    assert no_hooks_left(tiny_pipe.unet)
