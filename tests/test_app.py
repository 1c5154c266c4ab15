"""The Gradio demo: helper logic, and the HTTP API through gradio_client on a tiny random pipeline."""

from __future__ import annotations

import socket
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from steer.app import helpers as H
from steer.app.handlers import AUTO_CHOICE, take_away_choices
from steer.config import SteeringConfig
from steer.denoisers import denoiser_of
from steer.recipe import read_recipe
from steer.testing import tiny_pipeline
from steer.vectors import SteeringVector, unet_fingerprint

STEPS = 4
SCALE = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def constructed_direction(pipe, seed: int = 0, name: str = "constructed") -> SteeringVector:
    """A random direction on every hookable layer of ``pipe``, with ``pipe``'s fingerprint."""
    unet = denoiser_of(pipe)
    layers = H.layer_names(pipe)
    from steer.denoisers import layer_channels

    g = torch.Generator().manual_seed(seed)
    dirs = {n: torch.randn(c, generator=g) for n, c in layer_channels(unet, layers).items()}
    return SteeringVector(dirs, {"name": name, "method": "constructed", "model": unet_fingerprint(unet, layers)})


def pixels(path_or_image) -> np.ndarray:
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def native(path) -> np.ndarray:
    """Undo the app's integer nearest-neighbour display upscale (32 px images shown at 256 px)."""
    big = pixels(path)
    factor = big.shape[0] // 32
    return big[::factor, ::factor]


def generate_args(direction: str, scale: float = SCALE, **over) -> dict:
    args = dict(
        direction=direction,
        prompt="a photo of a dog",
        negative_prompt="",
        seed=7,
        steps=STEPS,
        guidance=5.0,
        size=32,
        strength=scale,
        layer=0,
        layers=[],
        window_start=0.0,
        window_end=1.0,
        branch="cond",
        normalize=False,
        mode="add",
        strict=True,
        negative="subtract",
    )
    args.update(over)
    return args


def expected_pair(
    pipe,
    vector,
    scale: float,
    seed: int = 7,
    window=(0.0, 1.0),
    prompt: str = "a photo of a dog",
    steps: int = STEPS,
    **steer,
) -> list[np.ndarray]:
    """What the Python API gives for the app's settings (one batched call, scales [0, s], the same seed per row)."""
    gens = [torch.Generator().manual_seed(seed) for _ in range(2)]
    out = pipe(
        [prompt] * 2,
        num_inference_steps=steps,
        guidance_scale=5.0,
        height=32,
        width=32,
        generator=gens,
        steering=vector,
        steering_scale=[0.0, scale],
        steering_window=tuple(window),
        **steer,
    )
    return [pixels(im) for im in out.images]


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures: one in-process server for the module
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several threads thrash on a busy 2-core machine; the server's workers share this
    yield tiny_pipeline(seed=0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def direction_file(pipe, tmp_path_factory) -> Path:
    return constructed_direction(pipe).save(tmp_path_factory.mktemp("dirs") / "constructed.safetensors")


@pytest.fixture(scope="module")
def server(pipe, direction_file):
    import app

    catalog = H.DirectionCatalog({"constructed": direction_file})
    demo = app.build_app(pipe, catalog=catalog)
    port = free_port()
    _, url, _ = app.launch(
        demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True
    )
    yield url
    demo.close()


@pytest.fixture()
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers (no server)
# ----------------------------------------------------------------------------------------------------------------------
def test_settings_validation_caps(pipe):
    ok = H.GenerateSettings(prompt="  a dog ", steps=10).validated(pipe)
    assert ok.prompt == "a dog" and ok.height == ok.width == 32
    bad = [
        dict(prompt=""),
        dict(prompt="x" * 301),
        dict(prompt="a", steps=101),
        dict(prompt="a", steps=2.5),
        dict(prompt="a", height=36),
        dict(prompt="a", width=2048),
        dict(prompt="a", strength=float("nan")),
        dict(prompt="a", seed=-1),
    ]
    for fields in bad:
        with pytest.raises(H.UserError):
            H.GenerateSettings(**fields).validated(pipe)
    widgets = generate_args("constructed")  # the Generate tab's values, as its buttons send them
    widgets.pop("direction")
    ok = H.GenerateSettings.from_inputs(pipe, **widgets)
    assert ok.config == SteeringConfig(window=(0.0, 1.0)) and ok.height == ok.width == 32
    removing = H.GenerateSettings.from_inputs(pipe, **{**widgets, "negative": "remove"})
    assert removing.config.negative == "remove" and removing.steering_kwargs(pipe, None)["steering_negative"] == "remove"
    for fields in [dict(window_start=0.9, window_end=0.2), dict(branch="sideways"), dict(mode="up"), dict(size=36), dict(steps=0), dict(negative="erase")]:
        with pytest.raises(H.UserError):
            H.GenerateSettings.from_inputs(pipe, **{**widgets, **fields})


def test_strip_scales_and_names():
    assert H.strip_scales(2.0, 5) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert H.strip_scales(-1.0, 3) == [-1.0, 0.0, 1.0]
    with pytest.raises(H.UserError):
        H.strip_scales(1.0, 10)
    with pytest.raises(H.UserError):
        H.strip_scales(0.0, 3)
    assert H.unique_name("a", {"a", "a #2"}) == "a #3"
    assert H.slug("red <- blue / x") == "red-blue-x"


def test_a_steered_image_much_darker_than_the_original_gets_a_note():
    lit = Image.new("RGB", (32, 32), (200, 40, 30))
    assert H.darkening_note(lit, Image.new("RGB", (32, 32), (30, 60, 200))) == ""  # recoloured, as bright
    note = H.darkening_note(lit, Image.new("RGB", (32, 32), (4, 4, 8)))
    assert "much darker than the original" in note and "Raise the strength" in note
    black = Image.new("RGB", (32, 32))
    assert H.darkening_note(black, black) == ""  # nothing to compare against: no note


def test_layer_slider_selection(pipe):
    names = H.layer_names(pipe)
    vector = constructed_direction(pipe).select(names[-3:])
    assert H.selected_layers(pipe, vector, 0, []) is None
    assert H.selected_layers(pipe, vector, len(names), []) == [names[-1]]
    assert H.selected_layers(pipe, vector, 1, [names[-2]]) == [names[-2]]  # the multi-select wins
    with pytest.raises(H.UserError, match="has no vector for layer"):
        H.selected_layers(pipe, vector, 1, [])
    assert "not in direction" in H.describe_layer(pipe, vector, 1)
    with pytest.raises(H.UserError):
        H.layer_at(pipe, len(names) + 1)


def test_upload_checks(pipe, tmp_path):
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(H.UserError, match="cannot use 'bad.safetensors'"):
        H.load_direction_file(garbage, pipe)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(H.UserError, match="not a direction file"):
        H.load_direction_file(text, pipe)
    foreign = constructed_direction(tiny_pipeline(seed=1)).save(tmp_path / "foreign.safetensors")
    with pytest.raises(H.UserError, match="does not fit this model.*strict"):
        H.load_direction_file(foreign, pipe)
    assert H.load_direction_file(foreign, pipe, strict=False).layers  # same architecture: fine-tune use allowed


def test_a_direction_whose_calibration_says_it_barely_edits_gets_a_note():
    weak = SteeringVector({"x": torch.ones(4)}, {"name": "<b>weak</b>", "calibration": {"converged": True, "distance": 0.8}})
    fine = SteeringVector({"x": torch.ones(4)}, {"name": "fine", "calibration": {"converged": True, "distance": 0.2}})
    note = H.direction_advice(weak)
    assert note.startswith("\n\n**Note:** calibration:") and "left open" in note and "\n" not in note.strip()
    assert H.direction_advice(fine) == "" and H.direction_advice(SteeringVector({"x": torch.ones(4)}, {})) == ""
    # a text direction learned without negatives (the Learn tab allows it) says it is not calibrated and what to do
    lone = SteeringVector({"x": torch.ones(4)}, {"name": "a blue bag", "source": "prompts-text", "negative": None, "calibration": None})
    assert "not calibrated" in H.direction_advice(lone) and "as negative" in H.direction_advice(lone)
    assert H.direction_advice(SteeringVector({"x": torch.ones(4)}, {"source": "prompts-reference", "negative": None})) == ""  # the paper's


def test_learn_settings_validation(pipe, tmp_path):
    with pytest.raises(H.UserError, match="needs a negative set"):
        H.LearnSettings(positive="a dog").sets()
    with pytest.raises(H.UserError, match="positive set is empty"):
        H.LearnSettings(positive="  \n ", negative="a cat").sets()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    with pytest.raises(H.UserError, match="not a readable image"):
        H.LearnSettings(positive_files=(str(broken),), method="mean").sets()
    assert H.LearnSettings().layer_list(pipe) == H.layer_names(pipe)
    with pytest.raises(H.UserError):
        H.LearnSettings(scope="chosen layers").layer_list(pipe)
    # the auto window is chosen by calibration: prompts for both sets and a calibrated mode, else one readable line
    auto = H.LearnSettings(positive="a blue sneaker", negative="a sneaker", mode="text", window="auto")
    assert auto.kwargs(pipe)["window"] == "auto" and "window" not in H.LearnSettings(mode="text").kwargs(pipe)
    for bad in (dict(mode="fast"), dict(mode="reference"), dict(negative=""), dict(positive_files=(str(broken),))):
        with pytest.raises(H.UserError, match="^the auto window is chosen by calibration"):
            H.LearnSettings(**{**auto.__dict__, **bad}).kwargs(pipe)
    with pytest.raises(H.UserError, match="window"):
        H.LearnSettings(mode="text", window="late").kwargs(pipe)
    # the cross-attentions that read a text direction: "all" is the default hook, the others route it
    routed = H.LearnSettings(positive="a red bag", negative="a red item", mode="text", readers="layout")
    assert routed.kwargs(pipe)["readers"] == "layout" and "readers" not in H.LearnSettings(mode="text").kwargs(pipe)
    for bad in (dict(mode="fast"), dict(positive_files=(str(broken),))):
        with pytest.raises(H.UserError, match="^reading by 'layout' routes text-token directions"):
            H.LearnSettings(**{**routed.__dict__, **bad}).kwargs(pipe)
    with pytest.raises(H.UserError, match="readers"):
        H.LearnSettings(mode="text", readers="everywhere").kwargs(pipe)
    # "auto" (the default) leaves the route to learn_direction's calibration; "all" asks for every reader by name
    assert H.LearnSettings().readers == "auto" and "readers" not in H.LearnSettings(mode="fast").kwargs(pipe)
    assert H.LearnSettings(mode="text", readers="all").kwargs(pipe)["readers"] == "all"
    assert "readers" not in H.LearnSettings(mode="fast", readers="all").kwargs(pipe)  # not a text direction: nothing to route
    # the negative prompt to calibrate for goes to learn_direction; with image sets it is one readable line
    assert H.LearnSettings(mode="text", negative_prompt=" a bag ").kwargs(pipe)["negative_prompt"] == "a bag"
    assert "negative_prompt" not in H.LearnSettings(mode="text").kwargs(pipe)
    with pytest.raises(H.UserError, match="^the negative prompt to calibrate for applies to prompt sets"):
        H.LearnSettings(positive_files=(str(broken),), method="mean", negative_prompt="a bag").kwargs(pipe)


def test_route_choice_note_reads_the_recorded_choice_and_ignores_junk():
    choice = {"structure": 0.4512, "below": 0.8, "readers": ["layout"]}
    note = H.route_choice_note(SteeringVector({"x": torch.ones(4)}, {"route_choice": choice}))
    assert note == (" Read by the layout blocks only (a layout edit): the positive prompts' own samples keep 0.45 of the open "
                    "prompts' layout (below 0.8: the edit moves the layout).")
    assert "every cross-attention (an appearance edit)" in H.route_choice_note(SteeringVector({"x": torch.ones(4)}, {"route_choice": {**choice, "readers": None}}))
    for junk in (None, "auto", {"structure": "x", "below": 0.8, "readers": None}, {"below": 0.8}):
        assert H.route_choice_note(SteeringVector({"x": torch.ones(4)}, {"route_choice": junk})) == ""


def test_window_choice_note_reads_the_recorded_choice_and_ignores_junk():
    choice = {"windows": [[0.0, 0.5], [0.0, 1.0]], "distances": [0.378, 0.353], "chosen": [0.0, 1.0]}
    note = H.window_choice_note(SteeringVector({"x": torch.ones(4)}, {"window_choice": choice}))
    assert note == " Window chosen by calibration: **0-1** (relative distance to the positives' own samples 0-0.5: 0.38, 0-1: 0.35)."
    for junk in (None, "auto", {"windows": [[0, 1]]}, {**choice, "distances": ["x", 1]}, {**choice, "chosen": 3}):
        assert H.window_choice_note(SteeringVector({"x": torch.ones(4)}, {"window_choice": junk})) == ""


# ----------------------------------------------------------------------------------------------------------------------
# Through the HTTP API
# ----------------------------------------------------------------------------------------------------------------------
def test_api_generate_matches_python_api(client, pipe, direction_file):
    original, steered, png, status = client.predict(**generate_args("constructed"), api_name="/generate")
    assert "Steered with" in status
    got_original, got_steered = native(original), native(steered)
    assert np.abs(got_original - got_steered).mean() > 1.0, "steering changed nothing"
    want_original, want_steered = expected_pair(pipe, SteeringVector.load(direction_file), SCALE)
    assert np.abs(got_original - want_original).max() <= 1
    assert np.abs(got_steered - want_steered).max() <= 1
    recipe = read_recipe(png)
    assert recipe["seed"] == 7 and recipe["steering"]["scale"] == SCALE and recipe["steering"]["name"] == "constructed"
    assert np.array_equal(pixels(png), got_steered)  # the download is the native-size steered image


def test_api_generate_with_a_picked_sampler_matches_python_api(client, pipe, direction_file):
    """The Advanced panel's sampler: the pair is what `pipe.with_sampler(name)` gives, the recipe records it, and one
    that does not fit the model (a hand-made API call) is a readable message."""
    original, steered, png, status = client.predict(**generate_args("constructed", sampler="euler-a"), api_name="/generate")
    assert "Steered with" in status
    want = expected_pair(pipe.with_sampler("euler-a"), SteeringVector.load(direction_file), SCALE)
    assert np.abs(native(original) - want[0]).max() <= 1 and np.abs(native(steered) - want[1]).max() <= 1
    default = expected_pair(pipe, SteeringVector.load(direction_file), SCALE)
    assert np.abs(native(steered) - default[1]).mean() > 1.0  # another sampler, another image
    recipe = read_recipe(png)
    assert (recipe["sampler"], recipe["scheduler"]) == ("euler-a", "EulerAncestralDiscreteScheduler")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="flow-euler is not in the list of choices"):  # gradio refuses it first
        client.predict(**generate_args("constructed", sampler="flow-euler"), api_name="/generate")


def test_api_generate_edits_an_uploaded_image_as_the_python_api_and_its_recipe_replays(client, pipe, direction_file, tmp_path):
    """The Generate tab's 'Edit an image': the pair is the image-to-image pipeline's [0, s] call on the uploaded image
    (48 x 32: the edit keeps its aspect, its longer side the size picked); the recipe keeps the input and replays it."""
    from gradio_client import handle_file

    from steer.images import EditInputs
    from steer.pipelines.factory import editing_pipeline
    from steer.replay import find_edit_inputs, read_replay, replay_call

    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    original, steered, png, status = client.predict(
        **generate_args("constructed", edit_image=handle_file(str(tmp_path / "photo.png")), edit_strength=0.5, size=48),
        api_name="/generate")
    assert "Steered with" in status
    edit = editing_pipeline(pipe, "img2img")
    inputs = EditInputs.read(tmp_path / "photo.png", strength=0.5).prepared(32, 48)
    want = edit(["a photo of a dog"] * 2, image=[inputs["image"]] * 2, strength=0.5, num_inference_steps=STEPS, guidance_scale=5.0,
                generator=[torch.Generator().manual_seed(7) for _ in range(2)], steering=SteeringVector.load(direction_file),
                steering_scale=[0.0, SCALE], steering_window=(0.0, 1.0)).images
    got = [pixels(Image.open(p).resize((48, 32), Image.NEAREST)) for p in (original, steered)]
    assert all(np.abs(g - pixels(w)).max() <= 1 for g, w in zip(got, want, strict=True))
    recipe = read_recipe(png)
    assert (recipe["height"], recipe["width"], recipe["edit"]["strength"]) == (32, 48, 0.5)
    replay = read_replay(recipe)
    again = replay_call(edit, replay, [SteeringVector.load(direction_file)], find_edit_inputs(replay.edit))
    assert np.array_equal(pixels(again), pixels(png))
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="cannot identify image file"):  # not a picture: gradio refuses it first
        client.predict(**generate_args("constructed", edit_image=handle_file(str(direction_file)), edit_strength=0.5), api_name="/generate")
    with pytest.raises(H.UserError, match="edit strength of 0.05 of 4 steps runs no step"):
        H.GenerateSettings(prompt="a dog", steps=4, edit_image=str(tmp_path / "photo.png"), edit_strength=0.05).validated(pipe)
    with pytest.raises(H.UserError, match=r"photo.txt'? \(the image to edit\) is not a readable image"):
        (tmp_path / "photo.txt").write_text("words")
        H.GenerateSettings(prompt="a dog", edit_image=str(tmp_path / "photo.txt")).validated(pipe)


def test_api_generate_inpaints_inside_an_uploaded_mask_as_the_python_api_and_its_recipe_replays(client, pipe, direction_file, tmp_path):
    """'Edit an image' with a mask: the pair is the inpainting pipeline's [0, s] call (white repainted); the recipe
    keeps image and mask and replays; a mask without an image, or of another size, is one readable line."""
    from gradio_client import handle_file

    from steer.images import EditInputs
    from steer.pipelines.factory import editing_pipeline
    from steer.replay import find_edit_inputs, read_replay, replay_call

    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    mask = np.zeros((32, 48), dtype=np.uint8)
    mask[:, :24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    original, steered, png, status = client.predict(
        **generate_args("constructed", edit_image=handle_file(str(tmp_path / "photo.png")),
                        edit_mask=handle_file(str(tmp_path / "mask.png")), edit_strength=0.75, size=48),
        api_name="/generate")
    assert "Steered with" in status
    inpaint = editing_pipeline(pipe, "inpaint")
    inputs = EditInputs.read(tmp_path / "photo.png", tmp_path / "mask.png", 0.75).prepared(32, 48)
    want = inpaint(["a photo of a dog"] * 2, image=[inputs["image"]] * 2, mask_image=[inputs["mask_image"]] * 2, strength=0.75,
                   height=32, width=48, num_inference_steps=STEPS, guidance_scale=5.0,
                   generator=[torch.Generator().manual_seed(7) for _ in range(2)], steering=SteeringVector.load(direction_file),
                   steering_scale=[0.0, SCALE], steering_window=(0.0, 1.0)).images
    got = [pixels(Image.open(p).resize((48, 32), Image.NEAREST)) for p in (original, steered)]
    assert all(np.abs(g - pixels(w)).max() <= 1 for g, w in zip(got, want, strict=True))
    plain = editing_pipeline(pipe, "img2img")(["a photo of a dog"], image=[inputs["image"]], strength=0.75, num_inference_steps=STEPS,
                                             guidance_scale=5.0, generator=[torch.Generator().manual_seed(7)]).images[0]
    assert np.abs(got[0] - pixels(plain)).mean() > 1.0  # the mask was used: not the image-to-image edit
    recipe = read_recipe(png)
    assert recipe["edit"]["strength"] == 0.75 and Path(recipe["edit"]["mask"]["path"]).name.startswith("edit-mask-")
    replay = read_replay(recipe)
    again = replay_call(inpaint, replay, [SteeringVector.load(direction_file)], find_edit_inputs(replay.edit))
    assert np.array_equal(pixels(again), pixels(png))
    with pytest.raises(H.UserError, match="the mask goes with an image to edit"):
        H.GenerateSettings(prompt="a dog", edit_mask=str(tmp_path / "mask.png")).validated(pipe)
    Image.new("L", (8, 8)).save(tmp_path / "small.png")
    with pytest.raises(H.UserError, match="the mask is 8x8 and the image to edit 48x32"):
        H.GenerateSettings(prompt="a dog", edit_image=str(tmp_path / "photo.png"), edit_mask=str(tmp_path / "small.png")).validated(pipe)


def test_api_generate_edits_from_the_inversion_its_original_is_the_picture_and_its_recipe_replays(client, pipe, direction_file, tmp_path):
    """'From its inversion': the pair replays the picture's inversion ([0, s]); the original is the picture (its VAE
    reconstruction), the recipe says so and replays; the option without an image, or with a mask, is one line."""
    from gradio_client import handle_file

    from steer.images import EditInputs
    from steer.inversion import invert_image, replay_inverted
    from steer.replay import find_edit_inputs, read_replay

    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    original, steered, png, status = client.predict(
        **generate_args("constructed", edit_image=handle_file(str(tmp_path / "photo.png")), edit_invert=True, size=48),
        api_name="/generate")
    assert "Steered with" in status
    photo = EditInputs.read(tmp_path / "photo.png").prepared(32, 48)["image"]
    inversion = invert_image(pipe, photo, "a photo of a dog", num_inference_steps=STEPS, guidance_scale=5.0,
                             generator=torch.Generator().manual_seed(7))
    want = inversion.edit(pipe, rows=2, steering=SteeringVector.load(direction_file), steering_scale=[0.0, SCALE],
                          steering_window=(0.0, 1.0)).images
    got = [pixels(Image.open(p).resize((48, 32), Image.NEAREST)) for p in (original, steered)]
    assert all(np.abs(g - pixels(w)).max() <= 1 for g, w in zip(got, want, strict=True))
    with torch.no_grad():
        latents = pipe.vae.encode(pipe.image_processor.preprocess(photo)).latent_dist.mode()
        vae = pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pil")[0]
    assert np.abs(got[0] - pixels(vae)).max() <= 2  # the original is the picture (as the VAE gives it back)
    recipe = read_recipe(png)
    assert recipe["edit"]["invert"] is True
    replay = read_replay(recipe)
    again = replay_inverted(pipe, replay, [SteeringVector.load(direction_file)], find_edit_inputs(replay.edit))
    assert np.array_equal(pixels(again), pixels(png))
    with pytest.raises(H.UserError, match="'from its inversion' edits the whole of an uploaded image"):
        H.GenerateSettings(prompt="a dog", edit_invert=True).validated(pipe)
    Image.new("L", (48, 32)).save(tmp_path / "mask.png")
    with pytest.raises(H.UserError, match="without a mask"):
        H.GenerateSettings(prompt="a dog", edit_image=str(tmp_path / "photo.png"), edit_mask=str(tmp_path / "mask.png"),
                           edit_invert=True).validated(pipe)


def test_api_negative_remove_matches_python_api_and_needs_a_reference_level(client, pipe, direction_file, tmp_path):
    # a direction without a recorded reference level: a readable one-line status, no traceback
    *_, status = client.predict(**generate_args("constructed", scale=-SCALE, negative="remove"), api_name="/generate")
    assert "reference level" in status and "Traceback" not in status
    # a learned text direction records one: the app's remove is the Python API's steering_negative="remove"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        dog = pipe.learn_direction(["a photo of a dog"], ["a photo"], num_inference_steps=2, calibration_samples=2, progress=False)
    dog.metadata["name"] = "dog"
    from gradio_client import handle_file

    picked, status = client.predict(handle_file(str(dog.save(tmp_path / "dog.safetensors"))), True, api_name="/upload_direction")
    assert "Loaded" in status
    values = generate_args(picked["value"], scale=-1.0, negative="remove", window_end=1.0)
    _, steered, png, status = client.predict(**values, api_name="/generate")
    assert "Steered with" in status and read_recipe(png)["steering"]["negative"] == "remove"
    rec = dog.metadata["recommended"]
    _, want = expected_pair(pipe, dog, -1.0, steering_negative="remove", steering_branch="cond", steering_mode="add",
                            steering_preserve_norm=rec["preserve_norm"], steering_normalize=False)
    assert np.abs(native(steered) - want).max() <= 1


def learned_text_direction(pipe, positive: str, negative: str, name: str) -> SteeringVector:
    """A text direction on the tiny pipeline: it records the reference level that removal needs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        vector = pipe.learn_direction([positive], [negative], num_inference_steps=2, calibration_samples=2, progress=False)
    vector.metadata["name"] = name
    return vector


def test_the_take_away_hint_before_generating(pipe, tmp_path):
    """Shown under the Take away picker as the prompt or the direction changes: the direction the prompt states
    against the edit, once none is picked; a label, so anything odd is simply no hint."""
    from steer.app.handlers import SteerApp

    cat = learned_text_direction(pipe, "a photo of a cat", "a photo", "cat")
    dog = learned_text_direction(pipe, "a photo of a dog", "a photo", "dog")
    app = SteerApp(pipe, H.DirectionCatalog({"cat": cat.save(tmp_path / "cat.safetensors"), "dog": dog.save(tmp_path / "dog.safetensors")}))
    hint = app.take_away_hint("cat", None, H.NONE_CHOICE, "a photo of a dog")
    assert hint.startswith(H.md_text("'a photo of a dog' states 'of a dog', which 'cat' replaces", 400))
    assert hint.endswith("Pick **dog** under *Take away* (and *Fit*) to take it away as the edit is added.")
    assert app.take_away_hint("cat", None, "dog", "a photo of a dog") == ""  # picked already
    assert app.take_away_hint("cat", None, H.NONE_CHOICE, "a photo") == ""  # states nothing against it
    assert app.take_away_hint("dog", None, H.NONE_CHOICE, "a photo of a dog") == ""  # states the edit itself
    for odd in (("nope", "a photo of a dog"), (H.NONE_CHOICE, "a photo of a dog"), ("cat", None), ("cat", "x" * 10_000)):
        assert app.take_away_hint(odd[0], None, H.NONE_CHOICE, odd[1]) == ""
    # with auto picked: what it will take away, or that it takes nothing
    assert app.take_away_hint("cat", None, AUTO_CHOICE, "a photo of a dog") == "Auto: taking away **dog** (the prompt states 'of a dog')."
    assert app.take_away_hint("cat", None, AUTO_CHOICE, "a photo") == "Auto: the prompt states nothing against the edit; nothing is taken away."
    assert take_away_choices(app.catalog, {"x": cat})[:2] == [H.NONE_CHOICE, AUTO_CHOICE] and take_away_choices(app.catalog, {"x": cat})[-1] == "x"


def test_take_away_scales_and_checks(pipe):
    assert H.take_away_scales([0.0, 0.5, 2.0]) == [[0.0, -0.0], [0.5, -0.5], [2.0, -1.0]]
    with pytest.raises(H.UserError, match="positive strength"):
        H.take_away_scales([0.0, -1.0])
    assert H.strip_scales(2.0, 3, signed=False) == [0.0, 1.0, 2.0]
    dog = learned_text_direction(pipe, "a photo of a dog", "a photo", "dog")
    H.check_take_away(dog, None)
    with pytest.raises(H.UserError, match="pick a direction to add"):
        H.check_take_away(None, dog)
    with pytest.raises(H.UserError, match="the take-away is the direction itself"):
        H.check_take_away(dog, SteeringVector(dict(dog.directions), dict(dog.metadata)))


def test_api_take_away_matches_python_api(client, pipe, tmp_path, monkeypatch):
    """Add one direction and take away another: the Python API's [add, remove] recipe, recorded in the PNG."""
    from gradio_client import handle_file

    cat = learned_text_direction(pipe, "a photo of a cat", "a photo", "cat")
    dog = learned_text_direction(pipe, "a photo of a dog", "a photo", "dog")
    names = {}
    for vector in (cat, dog):
        picked, status = client.predict(handle_file(str(vector.save(tmp_path / f"{vector.name}.safetensors"))), True, api_name="/upload_direction")
        assert "Loaded" in status
        names[vector.name] = picked["value"]
    values = generate_args(names["cat"], scale=2.0, window_end=1.0, take_away=names["dog"])
    original, steered, png, status = client.predict(**values, api_name="/generate")
    assert "Steered with **cat** × 2" in status and "taking away **dog** (amount 1)" in status
    assert "replaces: alone" not in status  # a take-away given: nothing to suggest
    # without it, the note names the direction the prompt ("a photo of a dog") states against the edit (steer.take_away)
    *_, alone_status = client.predict(**{**values, "take_away": H.NONE_CHOICE}, api_name="/generate")
    said = H.md_text("'a photo of a dog' states 'of a dog', which 'cat' replaces: alone the edit mostly fights the prompt", 400)
    assert f"{said}. Pick **{H.md_text(names['dog'])}** under *Take away* (and *Fit*)" in alone_status
    *_, open_status = client.predict(**{**values, "take_away": H.NONE_CHOICE, "prompt": "a photo"}, api_name="/generate")
    assert "replaces: alone" not in open_status  # the prompt states neither
    # auto: what the prompt states against the edit (the same images as picking it), or nothing
    _, auto_steered, auto_png, auto_status = client.predict(**{**values, "take_away": AUTO_CHOICE}, api_name="/generate")
    assert "taking away **dog** (auto) (amount 1)" in auto_status and np.abs(native(auto_steered) - native(steered)).max() == 0
    assert read_recipe(auto_png)["steering"]["take_away"]["digest"] == dog.digest()
    _, none_steered, _, none_status = client.predict(**{**values, "take_away": AUTO_CHOICE, "prompt": "a photo"}, api_name="/generate")
    _, plain_steered, _, _ = client.predict(**{**values, "take_away": H.NONE_CHOICE, "prompt": "a photo"}, api_name="/generate")
    assert "nothing taken away (auto: the prompt states nothing against the edit)" in none_status
    assert np.abs(native(none_steered) - native(plain_steered)).max() == 0
    rec = cat.metadata["recommended"]
    steer = dict(steering_branch="cond", steering_mode="add", steering_normalize=False, steering_preserve_norm=rec["preserve_norm"],
                 steering_negative="remove")
    gens = [torch.Generator().manual_seed(7) for _ in range(2)]
    want = pipe(["a photo of a dog"] * 2, num_inference_steps=STEPS, guidance_scale=5.0, height=32, width=32, generator=gens,
                steering=[cat, dog], steering_scale=[[0.0, 0.0], [2.0, -1.0]], steering_window=(0.0, 1.0), **steer).images
    assert np.abs(native(original) - pixels(want[0])).max() <= 1 and np.abs(native(steered) - pixels(want[1])).max() <= 1
    _, alone = expected_pair(pipe, cat, 2.0, **steer)
    assert np.abs(native(steered) - alone).mean() > 0.5, "the take-away changed nothing"
    taken = read_recipe(png)["steering"]
    assert taken["negative"] == "remove" and taken["take_away"] == {"name": "dog", "digest": dog.digest(), "amount": 1.0}
    gallery, status = client.predict(**values, count=3, api_name="/strip")
    assert [item["caption"] for item in gallery] == ["+0", "+1", "+2"] and "taking away **dog**" in status
    # the fit sets the strength and window sliders to what the Python API's fit finds
    strength, start, end, status = client.predict(names["cat"], names["dog"], 5.0, True, api_name="/fit_take_away")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: the fit may not converge
        fit = pipe.fit_take_away(cat, dog, guidance_scale=5.0)
    assert "Fitted: **cat**" in status and (start, end) == fit.window
    assert strength == pytest.approx(round(fit.strength / 0.05) * 0.05)
    assert client.predict(names["cat"], AUTO_CHOICE, 5.0, True, "", "", "a photo of a dog", api_name="/fit_take_away")[:3] == (strength, start, end)
    *_, status = client.predict(names["cat"], AUTO_CHOICE, 5.0, True, "", "", "a photo", api_name="/fit_take_away")
    assert "this prompt states nothing: nothing to fit" in status and "Traceback" not in status
    # with the Generate tab's negative prompt: fitted for generating with it (random weights fit alike either way: the
    # call is checked)
    from steer.pipelines.mixin import SteeringMixin

    real, asked = SteeringMixin.fit_take_away, []
    monkeypatch.setattr(SteeringMixin, "fit_take_away", lambda self, *a, **kw: asked.append(kw.get("negative_prompt")) or real(self, *a, **kw))
    *_, status = client.predict(names["cat"], names["dog"], 5.0, True, "", "a coat", api_name="/fit_take_away")
    assert "Fitted: **cat**" in status and asked == ["a coat"]
    monkeypatch.undo()
    *_, status = client.predict(names["cat"], H.NONE_CHOICE, 5.0, True, api_name="/fit_take_away")
    assert "pick a take-away first" in status
    # mistakes are one-line messages
    *_, status = client.predict(**generate_args(names["dog"], take_away=names["dog"]), api_name="/generate")
    assert "the take-away is the direction itself" in status
    *_, status = client.predict(**generate_args(H.NONE_CHOICE, take_away=names["dog"]), api_name="/generate")
    assert "pick a direction to add" in status
    *_, status = client.predict(**generate_args(names["dog"], take_away="constructed"), api_name="/generate")
    assert "reference level" in status and "Traceback" not in status


def test_api_single_layer_and_missing_layer(client, pipe, direction_file):
    names = H.layer_names(pipe)
    index = names.index("up_blocks.0.resnets.1") + 1
    _, steered, _, status = client.predict(**generate_args("constructed", layer=index), api_name="/generate")
    assert "up_blocks.0.resnets.1" in status
    vector = SteeringVector.load(direction_file)
    _, want = expected_pair(pipe, vector, SCALE, steering_layers=["up_blocks.0.resnets.1"])
    assert np.abs(native(steered) - want).max() <= 1
    # a direction learned on fewer layers: the slider position outside it gives a readable message
    partial = vector.select(names[-2:])
    partial.metadata["name"] = "partial"
    path = partial.save(Path(direction_file).parent / "partial.safetensors")
    from gradio_client import handle_file

    picked, status = client.predict(handle_file(str(path)), True, api_name="/upload_direction")
    assert "Loaded" in status
    result = client.predict(**generate_args(picked["value"], layer=1), api_name="/generate")
    assert "has no vector for layer down_blocks.0.resnets.0" in result[-1] and "Traceback" not in result[-1]


def test_api_invalid_and_foreign_uploads(client, tmp_path):
    from gradio_client import handle_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    *_, status = client.predict(handle_file(str(garbage)), True, api_name="/upload_direction")
    assert "Error" in status and "garbage.safetensors" in status and "Traceback" not in status
    foreign = constructed_direction(tiny_pipeline(seed=3), name="foreign").save(tmp_path / "foreign.safetensors")
    *_, status = client.predict(handle_file(str(foreign)), True, api_name="/upload_direction")
    assert "does not fit this model" in status and "Traceback" not in status


def test_api_limits_and_unknown_direction(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="greater than maximum value 100"):  # gradio's own slider bounds check
        client.predict(**generate_args("constructed", steps=1000), api_name="/generate")
    with pytest.raises(AppError, match="greater than maximum value 9"):
        client.predict(**generate_args("constructed"), count=12, api_name="/strip")
    *_, status = client.predict(**generate_args("constructed", prompt="x" * 400), api_name="/generate")
    assert "at most 300" in status
    *_, status = client.predict(**generate_args("nope"), api_name="/generate")
    assert "unknown direction 'nope'" in status
    *_, status = client.predict(**generate_args("constructed", window_start=0.8, window_end=0.2), api_name="/generate")
    assert "timestep window is empty" in status


def test_api_strip(client, pipe, direction_file):
    gallery, status = client.predict(**generate_args("constructed", scale=2.0), count=3, api_name="/strip")
    assert "-2, +0, +2" in status and len(gallery) == 3
    images = [pixels(item["image"])[::4, ::4] for item in gallery]  # shown at 128 px
    assert [item["caption"] for item in gallery] == ["-2", "+0", "+2"]
    want_original, _ = expected_pair(pipe, SteeringVector.load(direction_file), 2.0)
    assert np.abs(images[1] - want_original).max() <= 1
    assert np.abs(images[0] - images[2]).mean() > 1.0


def test_concurrent_clients_get_their_own_results(server, pipe, direction_file):
    from gradio_client import Client

    vector = SteeringVector.load(direction_file)
    scales = {"a": 4.0, "b": -4.0}
    results: dict[str, tuple] = {}

    def run(key: str) -> None:
        results[key] = Client(server, verbose=False).predict(
            **generate_args("constructed", scale=scales[key]), api_name="/generate"
        )

    threads = [threading.Thread(target=run, args=(k,)) for k in scales]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for key, scale in scales.items():
        _, want = expected_pair(pipe, vector, scale)
        assert np.abs(native(results[key][1]) - want).max() <= 1, key
        assert read_recipe(results[key][2])["steering"]["scale"] == scale
    assert np.abs(native(results["a"][1]) - native(results["b"][1])).mean() > 1.0


def test_learned_direction_is_per_session(server, client, pipe):
    from gradio_client import Client

    picked, file, status = client.predict(
        "a dog",
        "a cat",
        None,
        None,
        "mean_diff",
        "fast",
        "all layers",
        [],
        2,
        3,
        5.0,
        0,
        "dog-cat",
        "",
        "mode default",
        api_name="/learn",
    )
    assert "Learned **dog-cat**" in status and picked["value"] == "dog-cat (learned)"
    assert "Window chosen" not in status
    assert SteeringVector.load(file).layers  # downloadable and valid
    *_, status = client.predict(
        **generate_args("dog-cat (learned)", layer=len(H.layer_names(pipe))), api_name="/generate"
    )
    assert "Steered with **dog-cat**" in status
    other = Client(server, verbose=False)
    *_, status = other.predict(**generate_args("dog-cat (learned)"), api_name="/generate")
    assert "unknown direction" in status


def test_api_learn_with_the_auto_window_says_which_window_it_chose(client):
    picked, file, status = client.predict(
        "a blue sneaker\na blue bag", "a sneaker\na bag", None, None, "mean_diff", "text", "all layers", [], 2, 2, 5.0, 0,
        "auto-blue", "", "auto", "auto", "", "a coat", api_name="/learn",
    )
    assert SteeringVector.load(file).metadata["sampling"]["negative_prompt"] == "a coat"  # calibrated for generating with it
    choice = SteeringVector.load(file).metadata["window_choice"]
    chosen = f"{choice['chosen'][0]:g}-{choice['chosen'][1]:g}"
    assert "Learned **auto-blue**" in status and f"Window chosen by calibration: **{chosen}**" in status
    route = SteeringVector.load(file).metadata["route_choice"]  # the route too, by default (the Read by radio's "auto")
    assert ("Read by the layout blocks only" if route["readers"] else "Read by every cross-attention") in status
    *_, status = client.predict("a blue sneaker", "", None, None, "mean_diff", "fast", "all layers", [], 2, 2, 5.0, 0, "", "", "auto", api_name="/learn")
    assert "the auto window is chosen by calibration" in status and "Traceback" not in status


def test_api_learns_a_two_sided_slider_and_says_what_each_end_edits_toward(client):
    args = ["a red sneaker\na red bag", "a blue sneaker\na blue bag", None, None, "mean_diff", "text", "all layers", [], 2, 2, 5.0,
            0, "", "", "mode default", "auto", "", ""]
    picked, file, status = client.predict(*args, True, api_name="/learn")
    slider = SteeringVector.load(file)
    assert slider.opposite is not None and slider.opposite.metadata["positive"]["prompts"] == ["a blue sneaker", "a blue bag"]
    assert "a two-sided slider: +1 toward *a red sneaker*, -1 toward *a blue sneaker*" in status
    assert "(a prompt that states one end is turned to the other: that end taken away)" in status  # steer.sliders
    assert slider.metadata["flip"]["words"] == ["red"] and slider.opposite.metadata["flip"]["words"] == ["blue"]
    assert picked["value"] == "a red sneaker <-> a blue sneaker (learned)"
    *_, status = client.predict(**generate_args(picked["value"], scale=-1.0), api_name="/generate")
    assert "Steered with **a red sneaker &lt;-&gt; a blue sneaker** × -1" in status
    assert "turns it toward" not in status and "left as the prompt draws it" not in status  # the prompt states neither end
    *_, status = client.predict(**generate_args(picked["value"], scale=-1.0, prompt="a red sneaker"), api_name="/generate")
    assert "at -1 the slider turns it toward 'blue', taking its 'red' away" in status  # steer.sliders
    _, status = client.predict(**generate_args(picked["value"], scale=1.0, prompt="a red sneaker"), count=3, api_name="/strip")
    assert "at -1 the slider turns it toward" in status and "at +1 it is slid toward the end it states already" in status
    for wrong in (["a red sneaker", ""], ["a red sneaker", "a blue sneaker"]):  # no negatives; the fast mode (uncalibrated)
        mode = "text" if not wrong[1] else "fast"
        *_, status = client.predict(wrong[0], wrong[1], *args[2:5], mode, *args[6:], True, api_name="/learn")
        assert "a two-sided slider is learned from prompts for both sets" in status and "Traceback" not in status


def test_memorization_panel(client):
    plot, status = client.predict("steered", api_name="/memorization")
    assert "generate an image first" in status
    client.predict(**generate_args("constructed"), api_name="/generate")
    plot, status = client.predict("steered", api_name="/memorization")
    assert "no calibrated detector" in status
    detector_file, info = client.predict("a photo of a dog\na photo of a cat", 8, 0.1, 3, 5.0, api_name="/calibrate")
    assert "calibrated on 8 ordinary samples" in info
    from steer.detect.detector import MemorizationDetector

    assert MemorizationDetector.load(detector_file, tiny_pipeline(seed=0)).threshold is not None
    plot, status = client.predict("steered", api_name="/memorization")
    assert ("ordinary" in status or "likely memorized" in status) and "threshold" in status
    assert "inline" not in status  # generated before the detector existed: re-encode score
    assert Image.open(plot).size[0] > 100  # the histogram
    client.predict(**generate_args("constructed"), api_name="/generate")  # now read inline during sampling
    plot, status = client.predict("steered", api_name="/memorization")
    assert "inline CFG distance" in status and "no extra UNet evaluation" in status, status
    assert ("ordinary" in status or "likely memorized" in status) and Image.open(plot).size[0] > 100
