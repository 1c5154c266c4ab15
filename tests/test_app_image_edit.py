"""The Gradio demo's image edits through the HTTP API (upload, mask, inversion): the Python API's images, recipes that
replay. The server and helpers are `app_server`'s (a server of this module's own)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from app_server import (  # noqa: F401 (the *_fixture: pytest finds them here by their fixture names)
    SCALE,
    STEPS,
    client_fixture,
    direction_file_fixture,
    generate_args,
    pipe_fixture,
    pixels,
    server_fixture,
)
from PIL import Image

from steer.app import helpers as H
from steer.recipe import read_recipe
from steer.vectors import SteeringVector


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
    # off the server: the recipe names the app's own copy of the upload; the user's file beside the PNG is found by its
    # pixels (it was "gone or changed": the copy has other bytes and was never offered for download)
    away = tmp_path / "elsewhere"
    away.mkdir()
    shutil.copy(png, away / "steered.png")
    shutil.copy(tmp_path / "photo.png", away / "my-upload.png")
    Path(recipe["edit"]["image"]["path"]).unlink()  # as on another machine
    found = find_edit_inputs(read_replay(read_recipe(away / "steered.png")).edit, [away])
    assert found.image_path == away / "my-upload.png"
    again = replay_call(edit, replay, [SteeringVector.load(direction_file)], found)
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
    Image.new("L", (8, 8), 255).save(tmp_path / "small.png")
    with pytest.raises(H.UserError, match="the mask is 8x8 and the image to edit 48x32"):
        H.GenerateSettings(prompt="a dog", edit_image=str(tmp_path / "photo.png"), edit_mask=str(tmp_path / "small.png")).validated(pipe)
    Image.new("L", (48, 32), 0).save(tmp_path / "black.png")  # diffusers repaints nothing there: the steering did nothing
    with pytest.raises(H.UserError, match=r"'black.png' \(the mask\) repaints nothing"):
        H.GenerateSettings(prompt="a dog", edit_image=str(tmp_path / "photo.png"), edit_mask=str(tmp_path / "black.png")).validated(pipe)


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



def test_a_16_bit_grey_upload_is_edited_grey_not_white(client, tmp_path):
    """gradio converted the upload itself before the handler saw it, and Pillow clips 16-bit greyscale: a mid-grey
    picture was edited as pure white. The component passes the file as it is; steer decodes it."""
    from gradio_client import handle_file

    Image.fromarray(np.full((32, 48), 30000, np.uint16)).save(tmp_path / "grey16.png")
    *_, png, status = client.predict(**generate_args("constructed", edit_image=handle_file(str(tmp_path / "grey16.png")),
                                                       edit_strength=0.5, size=48), api_name="/generate")
    assert "Steered with" in status
    kept = Image.open(read_recipe(png)["edit"]["image"]["path"])
    assert kept.mode == "RGB" and kept.getpixel((0, 0)) == (117, 117, 117)
