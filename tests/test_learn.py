"""Training-free learning on the tiny pipeline: arithmetic of the methods and agreement of the three sources."""

import warnings

import pytest
import torch

from steer.denoisers import default_layers
from steer.errors import UnusedOptionError
from steer.extract import extract_during_sampling, generate_samples
from steer.learn import aggregate

POS, NEG = ["a blue sneaker", "a blue bag"], ["a red sneaker", "a red bag"]
KW = dict(num_samples=4, num_inference_steps=4, progress=False, batch_size=4, mode="fast")


def cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def concat(v, layers):
    return torch.cat([v.directions[n] for n in layers])


def test_mean_diff_is_the_difference_of_the_captured_means(tiny_pipe):
    layers = default_layers(tiny_pipe.unet)
    md = tiny_pipe.learn_direction(POS, NEG, method="mean_diff", **KW)
    pos_mean = tiny_pipe.learn_direction(POS, method="mean", **KW)
    # the negative set of a mean_diff run uses seeds offset by 1_000_003: capture it directly with those seeds
    neg, _ = extract_during_sampling(tiny_pipe, NEG, 4, layers, seed=1_000_003, batch_size=4, num_inference_steps=4, guidance_scale=7.5)
    for n in layers:
        torch.testing.assert_close(md.directions[n], pos_mean.directions[n] - neg[n].mean(0), atol=1e-5, rtol=1e-4)
    assert md.metadata["method"] == "mean_diff" and pos_mean.metadata["negative"] is None
    assert set(md.activation_norm) == set(layers) and all(x > 0 for x in md.activation_norm.values())


def test_pca_is_unit_direction_signed_toward_positive():
    g = torch.Generator().manual_seed(0)
    shift = torch.randn(16, generator=g)
    pos = torch.randn(12, 16, generator=g) * 0.1 + shift
    neg = torch.randn(12, 16, generator=g) * 0.1
    pc = aggregate(pos, neg, "pca")
    md = aggregate(pos, neg, "mean_diff")
    assert cos(pc, md) > 0.99
    assert abs(float(pc.norm()) - float(((pos - neg) @ (pc / pc.norm())).mean())) < 1e-4
    flipped = aggregate(neg, pos, "pca")
    assert cos(flipped, pc) < -0.99
    with pytest.raises(ValueError, match="negative set"):
        aggregate(pos, None, "pca")


def test_fast_and_image_modes_agree_in_sign_with_reference(tiny_pipe):
    layers = default_layers(tiny_pipe.unet)
    ref = tiny_pipe.learn_direction(POS, NEG, **{**KW, "mode": "reference"})
    fast = tiny_pipe.learn_direction(POS, NEG, **KW)
    pos_imgs, pos_used = generate_samples(tiny_pipe, POS, 4, seed=77, batch_size=4, num_inference_steps=4)
    neg_imgs, neg_used = generate_samples(tiny_pipe, NEG, 4, seed=99, batch_size=4, num_inference_steps=4)
    imgs = tiny_pipe.learn_direction(list(pos_imgs), list(neg_imgs), image_prompts=pos_used + neg_used, progress=False, batch_size=4)
    assert ref.metadata["source"] == "prompts-reference" and imgs.metadata["source"] == "images"
    assert cos(concat(fast, layers), concat(ref, layers)) > 0
    assert cos(concat(imgs, layers), concat(ref, layers)) > 0


def test_learning_errors_are_readable(tiny_pipe, tmp_path):
    with pytest.raises(ValueError, match="needs a negative set"):
        tiny_pipe.learn_direction(POS, method="mean_diff", **KW)
    with pytest.raises(ValueError, match="both be prompts or both be images"):
        tiny_pipe.learn_direction([torch.rand(3, 32, 32)], NEG, **KW)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        tiny_pipe.learn_direction([str(tmp_path / "missing.png")], method="mean", **KW)
    with pytest.raises(ValueError, match="method must be one of"):
        tiny_pipe.learn_direction(POS, NEG, method="median", **KW)


def test_options_a_learning_does_not_use_are_one_line_not_ignored(tiny_pipe, tmp_path, capsys):
    """``num_samples`` to the text mode (it reads the prompts themselves), ``timestep`` to a mode that reads no image,
    ``image_prompts`` to prompt sets: each learned the same file as without it; now a one-line error before any
    sampling, in Python and, named as its flag, on the command line."""
    from steer.cli.main import main

    for option, needle in ((dict(num_samples=3), "num_samples does nothing for mode='text': it sets how many images"),
                           (dict(timestep=999), "timestep does nothing for mode='text'"),
                           (dict(image_prompts="zzz"), "image_prompts does nothing for mode='text'"),
                           (dict(mode="fast", timestep=5), "timestep does nothing for mode='fast'")):
        with pytest.raises(UnusedOptionError, match=needle) as caught:
            tiny_pipe.learn_direction(["a blue bag"], ["a bag"], progress=False, **option)
        assert caught.value.option == needle.split()[0]  # named for the CLI to spell as its flag
    with pytest.raises(ValueError, match="the text mode learns from prompts"):  # images read at the text tokens: all alike
        tiny_pipe.learn_direction([torch.rand(3, 32, 32)], [torch.rand(3, 32, 32)], mode="text", progress=False)
    with pytest.raises(ValueError, match="num_samples does nothing for image sets"):
        tiny_pipe.learn_direction([torch.rand(3, 32, 32)], [torch.rand(3, 32, 32)], num_samples=2, progress=False)
    # uncalibrated, the text mode samples nothing: the sampling options and a calibration grid changed nothing
    for option, needle in ((dict(num_inference_steps=3), "num_inference_steps does nothing for mode='text' without calibration: "
                            "it sets the denoising steps of the learning and calibration samples, and the text mode reads"),
                           (dict(negative_prompt="blurry"), "negative_prompt does nothing for mode='text' without calibration"),
                           (dict(calibration_grid=[0.5, 1.0]), "calibration_grid does nothing without calibration"),
                           (dict(calibration_samples=12), "calibration_samples does nothing without calibration")):
        with pytest.raises(UnusedOptionError, match=needle):
            tiny_pipe.learn_direction(["a blue bag"], ["a bag"], calibrate=False, progress=False, **option)
    # nor does it record a sampling it never ran (it recorded steps 20, guidance 7.5 and the pipe's sampler)
    assert tiny_pipe.learn_direction(["a blue bag"], ["a bag"], calibrate=False, progress=False).metadata["sampling"] is None
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    capsys.readouterr()
    rc = main(["learn", "--model", str(model), "--positive", "a blue bag", "--negative", "a bag", "--num-samples", "3",
               "--out", str(tmp_path / "d.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("steer learn: error: --num-samples does nothing for mode='text'") and err.count("\n") == 1
    assert not (tmp_path / "d.safetensors").exists()
    learn = ["learn", "--model", str(model), "--positive", "a blue bag", "--negative", "a bag", "--steps", "2", "--out", str(tmp_path / "d.safetensors")]
    assert main(learn) == 0 and capsys.readouterr().out.startswith("wrote ")
    assert main(learn) == 0 and capsys.readouterr().out.startswith("replaced ")  # an earlier file there: said


def test_prompts_without_negatives_learn_with_a_warning_that_says_why_and_what_to_pass(tiny_pipe):
    """No negative prompts: the text preset can only take the positives' mean and cannot calibrate it, so 1.0 is not a
    full edit; the user is told so and what to pass. With negatives no such warning."""
    import warnings

    with pytest.warns(UserWarning, match="no negative prompts") as caught:
        v = tiny_pipe.learn_direction(["a blue bag", "a blue sneaker"], progress=False)
    assert "calibration" not in v.metadata or v.metadata["calibration"] is None
    assert any('"a bag" for "a blue bag"' in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_pipe.learn_direction(["a blue bag"], ["a bag"], calibrate=False, progress=False)
    assert not [w for w in caught if "no negative prompts" in str(w.message)]


@pytest.mark.parametrize("options", [{}, {"preset": "casteer", "num_samples": 2}, {"preset": "paper", "method": "mean_diff", "mode": "fast", "num_samples": 2}])
def test_a_negative_prompt_reaches_every_learning_and_calibration_sample_and_is_recorded(tiny_pipe, options):
    """``negative_prompt="..."`` (one string): every sampling call's unconditional half reads it (before: diffusers'
    TypeError for a list of prompts with one string), so the strength is calibrated for generating with it."""
    from steer.text_tokens import encode_text

    wanted = encode_text(tiny_pipe, ["a bag"])[0]
    uncond_rows = []

    def record(_module, args, kwargs):
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        uncond_rows.extend(states[: states.shape[0] // 2])  # CFG: the unconditional half first

    handle = tiny_pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: the calibration may not converge
            v = tiny_pipe.learn_direction(POS, ["a sneaker", "a bag"], negative_prompt="a bag", num_inference_steps=4, progress=False, **options)
    finally:
        handle.remove()
    assert uncond_rows and all(torch.equal(r, wanted) for r in uncond_rows)
    assert v.metadata["sampling"]["negative_prompt"] == "a bag"
    with pytest.raises(ValueError, match=r"^negative_prompt must be one string \(used for every learning and calibration sample\), got list$"):
        tiny_pipe.learn_direction(POS, NEG, negative_prompt=["a bag", "a coat"], progress=False)



def test_image_tensors_pictures_and_sliders_that_could_not_work(tiny_pipe):
    """uint8 tensors (torchvision's) were clamped to white; 0-255 floats and NaN images gave misleading errors or a
    NaN direction; greyscale/RGBA PIL images were refused as "1 channels" (their files worked); mode='fast' with
    images reached pipe.unet on the transformer families; a two-sided slider learned uncalibrated with the paper's
    mean had two nearly equal sides; a direction times NaN failed only at save."""
    import numpy as np
    from PIL import Image

    from steer.extract import encode_images

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(1, 255, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    as_uint8 = encode_images(tiny_pipe, list(pixels))
    torch.testing.assert_close(as_uint8, encode_images(tiny_pipe, list(pixels.float() / 255)))
    assert not torch.allclose(as_uint8, encode_images(tiny_pipe, [torch.ones(3, 32, 32)] * 2))
    for bad, needle in ((pixels[0].float(), "float image tensors are in \\[0, 1\\], got values from"),
                        (torch.full((3, 32, 32), float("nan")), "NaN or infinite"),
                        (torch.rand(32, 32, 3), "channels first")):
        with pytest.raises(ValueError, match=needle):
            encode_images(tiny_pipe, [bad])
    grey = Image.fromarray(np.asarray(pixels[0, 0]))
    torch.testing.assert_close(encode_images(tiny_pipe, [grey]), encode_images(tiny_pipe, [grey.convert("RGB")]))
    with pytest.raises(ValueError, match="mixes tensors with PIL images"):
        encode_images(tiny_pipe, [grey, pixels[0]])
    fast = tiny_pipe.learn_direction([torch.rand(3, 32, 32)] * 2, [torch.rand(3, 32, 32)] * 2, mode="fast", progress=False)
    assert fast.metadata["source"] == "images"
    for options in (dict(preset="paper"), dict(mode="fast"), dict(method="mean")):
        with pytest.raises(ValueError, match="two_sided=True calibrates each side"):
            tiny_pipe.learn_direction(["a blue bag"], ["a red bag"], two_sided=True, progress=False, **options)
    with pytest.raises(ValueError, match="scaled by a finite number"):
        fast * float("nan")


def test_unused_prompts_empty_layers_and_late_type_errors_are_said_up_front(tiny_pipe):
    """Prompts past num_samples were never sampled, without a word; layers=[] failed in max() after all the sampling;
    a string seed failed deep in torch; a numeric name only at save; the size a strength was calibrated at was not
    recorded."""
    with pytest.warns(UserWarning, match="num_samples=2 samples only the first 2 of 3 prompts of a set"):
        tiny_pipe.learn_direction(["a red bag", "a red hat", "a red shoe"], ["a bag", "a hat", "a shoe"], mode="fast",
                                  num_samples=2, num_inference_steps=2, progress=False)
    for options, error, needle in ((dict(layers=[]), ValueError, "names no layer"), (dict(seed="1"), ValueError, "seed must be"),
                                   (dict(name=123), TypeError, "name must be a string, got int")):
        with pytest.raises(error, match=needle):
            tiny_pipe.learn_direction(["a red bag"], ["a bag"], mode="fast", num_samples=1, num_inference_steps=2,
                                      progress=False, **options)
    v = tiny_pipe.learn_direction(["a red bag", "a red hat"], ["a bag", "a hat"], num_inference_steps=2, calibration_samples=2,
                                  height=64, width=32, progress=False)
    assert (v.metadata["sampling"]["height"], v.metadata["sampling"]["width"]) == (64, 32)


def test_sampling_options_given_to_image_sets_or_a_mode_that_does_not_use_them_are_one_line(tiny_pipe, tmp_path, capsys):
    """Image sets are read, not sampled: their steps, guidance, size, negative prompt and sampler learned the same file
    as without them; the text mode ignored capture_window and step_buckets. Each is now refused in one line before any
    learning, named as its flag on the command line; calls that give none learn as before (defaults resolved inside)."""
    import numpy as np
    from PIL import Image

    from steer.cli.main import main

    images = [torch.rand(3, 32, 32) for _ in range(2)]
    for option in (dict(num_inference_steps=3), dict(guidance_scale=2.0), dict(height=64), dict(width=64), dict(negative_prompt="blurry")):
        name = next(iter(option))
        with pytest.raises(UnusedOptionError, match=f"^{name} does nothing for image sets: it ") as caught:
            tiny_pipe.learn_direction(images[:1], images[1:], progress=False, **option)
        assert caught.value.option == name and "\n" not in str(caught.value)
    for option, mode in ((dict(capture_window=(0.0, 0.1)), "text"), (dict(step_buckets=7), "text"), (dict(step_buckets=2), "fast"),
                         (dict(capture_window=(0.5, 1.0)), "trajectory"), (dict(capture_window=(0.5, 1.0)), "reference")):
        name = next(iter(option))
        with pytest.raises(UnusedOptionError, match=f"^{name} does nothing for mode='{mode}'"):
            tiny_pipe.learn_direction(["a blue bag"], ["a bag"], mode=mode, progress=False, **option)
    with pytest.raises(UnusedOptionError, match="capture_window does nothing for image sets"):
        tiny_pipe.learn_direction(images[:1], images[1:], mode="fast", capture_window=(0.5, 1.0), progress=False)
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    for seed, label in enumerate(("pos", "neg")):
        (tmp_path / label).mkdir()
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / label / "0.png")
    learn = ["learn", "--model", str(model), "--positive", str(tmp_path / "pos"), "--negative", str(tmp_path / "neg"), "--out", str(tmp_path / "d")]
    capsys.readouterr()
    for flags in (["--steps", "3"], ["--guidance", "2"], ["--height", "64"], ["--width", "64"], ["--negative-prompt", "blurry"], ["--sampler", "euler-a"]):
        assert main([*learn, *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"steer learn: error: {flags[0]} does nothing for image sets: it ") and err.count("\n") == 1, err
    assert not (tmp_path / "d.safetensors").exists()
    assert main(learn) == 0 and capsys.readouterr().out.startswith("wrote ")  # the defaults alone: learned as before
    # the text mode without negatives samples nothing either: the same file under any sampler
    text = ["learn", "--model", str(model), "--positive", "a blue bag", "--sampler", "euler-a", "--out", str(tmp_path / "t")]
    assert main(text) == 2 and "--sampler does nothing for the text mode without calibration" in capsys.readouterr().err
    assert not (tmp_path / "t.safetensors").exists()


def test_the_same_images_as_both_sets_are_refused_in_one_line_as_the_same_prompts_are(tiny_pipe, tmp_path):
    """The same images positive and negative learned a direction from the sets' noise seeds alone (as large as two
    different sets'), where the same prompts are refused: now one line before any encoding, in any order or form."""
    import numpy as np
    from PIL import Image

    images = [torch.rand(3, 32, 32) for _ in range(2)]
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    same = "^the positive and negative sets are the same images .*: there is no direction to learn; check that the images differ$"
    for pos, neg in ((images, images), (images, images[::-1]), (images, [im.clone() for im in images] * 2),
                     ([str(p) for p in paths], [Image.open(p) for p in paths])):
        with pytest.raises(ValueError, match=same):
            tiny_pipe.learn_direction(pos, neg, progress=False)
    tiny_pipe.learn_direction(images, images[:1], progress=False)  # overlapping sets differ
    tiny_pipe.learn_direction(images, images, method="mean", progress=False)  # the positives' own mean: no negative read


def test_a_list_of_image_prompts_of_the_wrong_length_says_how_many_and_what_for(tiny_pipe):
    """3 image_prompts for 2 + 2 images blamed the negative set ("got 1 prompts for 2 images"); one too many with no
    negative set was silently dropped. Now one line that says how many are wanted: one per image of both sets."""
    pos, neg = [torch.rand(3, 32, 32) for _ in range(2)], [torch.rand(3, 32, 32) for _ in range(2)]
    with pytest.raises(ValueError, match=r"^image_prompts has 3 prompts: give one per image of both sets, 4 \(2 positive, then 2 "
                                         r"negative\), or one string to read every image with$"):
        tiny_pipe.learn_direction(pos, neg, image_prompts=["a", "b", "c"], progress=False)
    with pytest.raises(ValueError, match=r"^image_prompts has 3 prompts: give one per image of both sets, 2, or one string"):
        tiny_pipe.learn_direction(pos, image_prompts=["a", "b", "c"], method="mean", progress=False)
    assert tiny_pipe.learn_direction(pos, neg, image_prompts=["a", "b", "c", "d"], progress=False).metadata["source"] == "images"


@pytest.mark.parametrize("options", [dict(preset="casteer", mode="fast", window=(0, 1)), dict(preset="casteer", mode="reference"),
                                     dict(preset="text", mode="fast", layers="attn2", window=(0.2, 0.8))])
def test_uncalibrated_activation_directions_record_their_window_under_every_preset(tiny_pipe, one_thread, options):
    """Outside the paper preset an uncalibrated fast / reference direction recorded no ``recommended``: window= (and
    the preset's window) was dropped and steering applied the built-in paper window (hunt32 finding 5)."""
    from steer.config import recommended_settings

    v = tiny_pipe.learn_direction(["a red bag"], ["a bag"], calibrate=False, num_samples=1, num_inference_steps=2, progress=False, **options)
    window = list(options.get("window", (0.0, 1.0)))  # casteer's own window where none is given
    assert v.metadata["recommended"] == {"layers": list(v.directions), "window": window, "branch": "cond", "mode": "add",
                                         "normalize": False, "preserve_norm": False}
    assert recommended_settings([v])["steering_window"] == tuple(window)


def test_image_sets_say_they_are_uncalibrated_and_unproven(tiny_pipe):
    """A direction learned from images pushed the demo model's colour away from the positive images at its default
    sites (bench/image_sets.py): learning from images now says so, and the app's note on the direction repeats it."""
    from steer.app.files import direction_advice
    from steer.learn import IMAGE_SET_ADVICE

    pos_imgs, _ = generate_samples(tiny_pipe, POS, 2, seed=77, batch_size=2, num_inference_steps=2)
    neg_imgs, _ = generate_samples(tiny_pipe, NEG, 2, seed=99, batch_size=2, num_inference_steps=2)
    with pytest.warns(UserWarning, match="learned from images, so uncalibrated"):
        imgs = tiny_pipe.learn_direction(list(pos_imgs), list(neg_imgs), progress=False, batch_size=2)
    assert "both signs" in direction_advice(imgs) and IMAGE_SET_ADVICE.split(",")[0] in direction_advice(imgs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # prompt sets learn as before, without the image note
        prompts = tiny_pipe.learn_direction(POS, NEG, **KW)
    assert "images" not in direction_advice(prompts)
