"""``learn_direction(readers="auto")``, the text preset's default: the calibration chooses where a text direction is read from the model's own
prompt edit (a layout edit -> the down and mid blocks' cross-attentions; an appearance edit -> every one), at no
extra cost, and records it. Real decisions on the embedded demo model; the family fallback on a tiny PixArt."""

import math
import warnings

import pytest
import torch

from steer.appearance import layout_agreement, layout_signatures, mean_colours, structure_kept
from steer.calibrate import LAYOUT_EDIT_BELOW, WINDOW_CHOICE_GRID, curve_minimum, margin_full_edit, route_advice
from steer.cli.loading import load_pipeline
from steer.cli.main import main
from steer.lab import data as D
from steer.testing import assert_one_line_error
from steer.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
C = D.COLOUR_NAMES
QUICK = {"num_inference_steps": 10, "guidance_scale": 5.0, "calibration_samples": 3, "progress": False}


@pytest.fixture(scope="module")
def demo():
    return load_pipeline(None, "cpu")


def unet_rows(pipe, fn):
    """(fn's result, the denoiser batch rows it ran)."""
    rows = [0]
    handle = pipe.unet.register_forward_pre_hook(lambda _m, a: rows.__setitem__(0, rows[0] + a[0].shape[0]))
    try:
        return fn(), rows[0]
    finally:
        handle.remove()


def test_a_class_edit_is_read_by_the_layout_blocks_and_a_colour_edit_by_every_cross_attention(demo):
    bag = ([f"a {c} bag" for c in C], [f"a {c} item" for c in C])
    blue = (["a blue t-shirt", "a blue sneaker", "a blue bag", "a blue coat"], ["a t-shirt", "a sneaker", "a bag", "a coat"])
    to_bag, auto_rows = unet_rows(demo, lambda: demo.learn_direction(*bag, **QUICK))  # the default for text directions
    _, plain_rows = unet_rows(demo, lambda: demo.learn_direction(*bag, readers="all", **QUICK))
    assert auto_rows == plain_rows  # the route costs no UNet rows: the unsteered open samples are drawn either way
    choice = to_bag.metadata["route_choice"]
    assert choice["readers"] == ["layout"] and choice["structure"] < LAYOUT_EDIT_BELOW == choice["below"]
    assert to_bag.metadata["recommended"]["readers"] == ["layout"] and to_bag.metadata["calibration"]["route"]["readers"] == ["layout"]
    # calibrated through the route: the same strength as a direction learned for the layout route by name
    routed = demo.learn_direction(*bag, readers="layout", **QUICK)
    assert to_bag.metadata["calibration"]["strength"] == pytest.approx(routed.metadata["calibration"]["strength"], rel=1e-3)

    assert to_bag.metadata["window_choice"]["by"] == "distance" and "colour_distances" not in to_bag.metadata["window_choice"]

    to_blue = demo.learn_direction(*blue, readers="auto", **QUICK)
    assert to_blue.metadata["route_choice"]["readers"] is None and to_blue.metadata["route_choice"]["structure"] > LAYOUT_EDIT_BELOW
    assert "readers" not in to_blue.metadata["recommended"]
    # an appearance edit: the window whose samples' colour came closest to the positives' own
    choice = to_blue.metadata["window_choice"]
    assert choice["by"] == "colour" and choice["chosen"] == choice["windows"][choice["colour_distances"].index(min(choice["colour_distances"]))]
    # every reader's direction and strength: as learned for every reader over the chosen window on the choice's grid
    plain = demo.learn_direction(*blue, readers="all", window=tuple(choice["chosen"]), calibration_grid=WINDOW_CHOICE_GRID, **QUICK)
    assert "route_choice" not in plain.metadata and "readers" not in plain.metadata["recommended"]
    # the same sweep; its full edit where the samples' colour came closest (session 39), the named route's the margin's
    auto, named = to_blue.metadata["calibration"], plain.metadata["calibration"]
    assert auto["closest"] == pytest.approx(named["closest"], rel=1e-3) and named["strength"] == pytest.approx(1.4 * named["closest"], rel=1e-3)
    assert auto["strength_by"] == "colour" and "strength_by" not in named
    assert auto["strength"] == pytest.approx(curve_minimum([0.0, *auto["grid"]], [1.0, *auto["colour_distances"]])[0], abs=1e-3)
    unit = lambda v: v.directions["encoder_hidden_states"] / v.metadata["calibration"]["strength"]  # noqa: E731
    assert torch.allclose(unit(to_blue), unit(plain), rtol=1e-3, atol=1e-6)


def test_structure_kept_is_one_for_the_same_image_and_low_for_a_new_layout(demo):
    z = torch.randn(2, demo.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    assert structure_kept(demo, z, z.clone()) == pytest.approx(1.0, abs=1e-5)
    assert structure_kept(demo, z, z.flip(-1).flip(-2)) < 0.5


def test_layout_signatures_are_unit_rows_and_agreement_leaves_out_what_cannot_be_read(demo):
    z = torch.randn(3, demo.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    sig = layout_signatures(demo, z, batch_size=2)  # split decodes: the same rows
    assert sig.shape == (3, 64) and torch.allclose(sig.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(sig, layout_signatures(demo, z, batch_size=None), atol=1e-5)
    assert torch.allclose(sig.sum(1), torch.zeros(3), atol=1e-4)  # centred: where light and dark lie, not how bright
    other = layout_signatures(demo, z.flip(-1).flip(-2))
    both = layout_agreement(sig, other)
    assert both == pytest.approx(float((sig * other).sum(1).mean()), abs=1e-6)
    unread = other.clone()
    unread[0] = float("nan")  # a flat or overflowing decode: that pair says nothing
    assert layout_agreement(sig, unread) == pytest.approx(float((sig[1:] * other[1:]).sum(1).mean()), abs=1e-6)
    unread[:] = float("nan")
    assert layout_agreement(sig, unread) is None
    with pytest.raises(ValueError, match="do not pair up"):
        layout_agreement(sig, other[:2])
    with pytest.raises(ValueError, match="do not pair up"):
        structure_kept(demo, z, z[:2])


def test_auto_route_needs_a_calibrated_text_direction_and_stands_alone(demo):
    pos, neg = ["a blue bag"], ["a bag"]
    for kwargs, needle in (
        ({"calibrate": False}, "readers='auto' chooses the route in the calibration"),
        ({"preset": "paper"}, "readers= routes text-token directions"),
        ({"readers": ["auto", "layout"]}, "readers='auto' chooses the route itself: pass it alone"),
    ):
        with pytest.raises(ValueError) as err:
            demo.learn_direction(pos, neg, **{"readers": "auto", **kwargs})
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_default_route_steps_aside_where_it_cannot_apply(demo):
    uncalibrated = demo.learn_direction(["a blue bag"], ["a bag"], calibrate=False, progress=False)
    assert "route_choice" not in uncalibrated.metadata and "readers" not in uncalibrated.metadata["recommended"]
    paper = demo.learn_direction(["a blue bag"], preset="paper", num_samples=2, num_inference_steps=2, progress=False)
    assert "route_choice" not in paper.metadata and "readers" not in paper.metadata["recommended"]


def test_a_family_without_routes_reads_every_cross_attention():
    from steer.testing.pixart import TINY_CALL, tiny_pixart_pipeline

    pipe = tiny_pixart_pipeline(seed=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="calibration:")  # random weights render no attribute
        v = pipe.learn_direction(["a blue bag"], ["a bag"], readers="auto", num_inference_steps=2, calibration_samples=2,
                               progress=False, **TINY_CALL)
    assert "route_choice" not in v.metadata and "readers" not in v.metadata["recommended"]


def test_the_command_line_learns_with_the_auto_route_and_says_which(tmp_path, capsys):
    out = tmp_path / "bag.safetensors"
    args = ["learn", "--positive", *[f"a {c} bag" for c in C[:4]], "--negative", *[f"a {c} item" for c in C[:4]],
            "--steps", "10", "--guidance", "5", "--readers", "auto", "--out", str(out)]
    assert main(args) == 0
    v = SteeringVector.load(out)
    assert v.metadata["recommended"]["readers"] == ["layout"]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("readers: "))
    assert line.startswith("readers: layout (a layout edit): the positives' samples keep 0.") and "below 0.8" in line
    assert main(["inspect", str(out)]) == 0
    assert '"route_choice"' in capsys.readouterr().out
    rc = main([*args[:-2], "--readers", "auto", "layout", "--out", str(out)])
    assert_one_line_error(rc, capsys.readouterr().err, "readers='auto' chooses the route itself")


def test_a_close_route_call_is_said_in_one_line():
    close = route_advice({"structure": LAYOUT_EDIT_BELOW - 0.02, "readers": ["layout"]})
    assert close.startswith("calibration: the positive prompts' own samples keep 0.78 of the open prompts' layout")
    assert "read by the layout blocks only (a layout edit) by a narrow margin" in close and "\n" not in close
    assert "every cross-attention" in route_advice({"structure": LAYOUT_EDIT_BELOW + 0.03, "readers": None})
    for clear in ({"structure": 0.5, "readers": ["layout"]}, {"structure": 0.97, "readers": None}, None, {"structure": "x"}):
        assert route_advice(clear) is None


@pytest.mark.parametrize("route, converged, colours, chosen, by", [
    ({"structure": 0.95, "readers": None}, (True, True), ([0.4, 0.3], [0.5, 0.2]), 1, "colour"),  # closer by colour, farther by distance
    ({"structure": 0.95, "readers": None}, (True, False), ([0.4, 0.3], [0.5, 0.2]), 0, "distance"),  # one candidate left
    ({"structure": 0.95, "readers": None}, (True, True), ([0.4, float("nan")], [0.5, 0.2]), 0, "distance"),  # a decode overflowed
    ({"structure": 0.45, "readers": ["layout"]}, (True, True), (None, None), 0, "distance"),  # a layout edit: no colours
])
def test_an_appearance_edit_takes_the_window_closest_by_colour(monkeypatch, route, converged, colours, chosen, by):
    import steer.calibrate as calibrate_module
    from steer.calibrate import Calibration, calibrate_windows
    from steer.learn import AUTO_WINDOWS
    from steer.window_choice import window_choice_record

    def sweeps(*args, **kwargs):  # the first half closer to the positives' samples in latent distance
        return [Calibration(0.3, 0.2, d, ok, [0.2, 0.3], [d, d], 10, list(w), route, colour_distances=c)
                for w, d, ok, c in zip(AUTO_WINDOWS, (0.11, 0.14), converged, colours, strict=True)]

    monkeypatch.setattr(calibrate_module, "branch_step", lambda *a: None)
    monkeypatch.setattr(calibrate_module, "_sweeps", sweeps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a candidate that did not converge is no concern here
        index, tried = calibrate_windows(None, None, ["a red bag"], ["a bag"], AUTO_WINDOWS)
    assert index == chosen and tried[index].chosen_by == by and tried[index].unet_rows == 20
    record = window_choice_record(AUTO_WINDOWS, tried, AUTO_WINDOWS[index])
    assert record["by"] == by and record["chosen"] == list(AUTO_WINDOWS[chosen])
    assert ("colour_distances" in record) == (by == "colour")  # what decided, only
    nan_free = colours[0] is not None and all(map(math.isfinite, colours[0]))
    assert ("colour_distances" in tried[index].to_dict()) == nan_free  # the calibration record: never a NaN in a file


@pytest.mark.parametrize("route, colours, strengths, by", [
    # an appearance edit: each window's full edit is where its colour comes closest (the vertex of the parabola through
    # the best grid point and its neighbours: 0.34375 and 0.5), not 1.4 x the latent minimum
    ({"structure": 0.95, "readers": None}, ([0.3, 0.1, 0.2, 0.5], [0.5, 0.3, 0.2, 0.3]), [0.34375, 0.5], "colour"),
    # a colour curve that never comes closer than unsteered keeps that window's margin strength
    ({"structure": 0.95, "readers": None}, ([0.3, 0.1, 0.2, 0.5], [1.2, 1.3, 1.4, 1.5]), [0.34375, 0.63], "colour"),
    ({"structure": 0.45, "readers": ["layout"]}, (None, None), [0.63, 0.63], None),  # a layout edit: the margin
])
def test_an_appearance_edits_full_edit_is_where_its_colour_comes_closest(monkeypatch, route, colours, strengths, by):
    import steer.calibrate as calibrate_module
    from steer.calibrate import MARGIN, Calibration, calibrate_windows
    from steer.learn import AUTO_WINDOWS

    grid = [0.2, 0.3, 0.45, 0.7]

    def sweeps(*args, **kwargs):  # latent minimum at 0.45 in both windows: the margin's full edit 0.63
        return [Calibration(MARGIN * 0.45, 0.45, d, True, grid, [0.5, 0.3, d, 0.4], 10, list(w), route, colour_distances=c)
                for w, d, c in zip(AUTO_WINDOWS, (0.11, 0.14), colours, strict=True)]

    monkeypatch.setattr(calibrate_module, "branch_step", lambda *a: None)
    monkeypatch.setattr(calibrate_module, "_sweeps", sweeps)
    index, tried = calibrate_windows(None, None, ["a red bag"], ["a bag"], AUTO_WINDOWS)
    assert [r.strength for r in tried] == pytest.approx(strengths, abs=1e-4)
    assert [r.strength_by for r in tried] == [by if s != pytest.approx(0.63) else None for s in strengths]
    with margin_full_edit():  # a slider's sides: the margin's full edit, as their flips were measured with
        _, margins = calibrate_windows(None, None, ["a red bag"], ["a bag"], AUTO_WINDOWS)
    assert [r.strength for r in margins] == pytest.approx([0.63, 0.63]) and [r.strength_by for r in margins] == [None, None]
    assert [r.closest for r in tried] == [0.45, 0.45]  # the latent minimum stays recorded
    assert tried[index].to_dict().get("strength_by") == tried[index].strength_by


def test_mean_colours_reads_the_colour_the_vae_decodes(demo):
    """Coloured squares on black (the demo data's look), encoded by the model's VAE: their decoded mean colour comes
    back near the images' own, in the same hue; batches split alike."""
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.9]])
    images = torch.zeros(3, 3, 32, 32)
    images[:, :, 8:24, 8:24] = colours[:, :, None, None]
    with torch.no_grad():
        latents = demo.vae.encode(images * 2 - 1).latent_dist.mean * demo.vae.config.scaling_factor
    read = mean_colours(demo, latents, batch_size=2)
    assert read.shape == (3, 3) and (read - images.mean((2, 3))).abs().max() < 0.06
    assert read[0].argmax() == 0 and read[1].argmax() == 2 and read[2].min() > 0.15
    assert torch.allclose(read, mean_colours(demo, latents, batch_size=None), atol=1e-5)  # None: one decode


def test_the_command_line_says_when_the_window_was_chosen_by_colour(capsys):
    from steer.cli.main import _print_calibration

    choice = {"windows": [[0.0, 0.5], [0.0, 1.0]], "distances": [0.116, 0.138], "chosen": [0.0, 1.0]}
    _print_calibration("", {"window_choice": {**choice, "by": "colour", "colour_distances": [0.135, 0.114]}}, str)
    assert capsys.readouterr().out == ("window: 0,1 (an appearance edit, chosen by the samples' colour: 0,0.5: 0.135, 0,1: 0.114; "
                                       "relative distance to the positives' own samples 0,0.5: 0.116, 0,1: 0.138)\n")
    _print_calibration("", {"window_choice": {**choice, "chosen": [0.0, 0.5], "by": "distance"}}, str)
    assert capsys.readouterr().out == "window: 0,0.5 (relative distance to the positives' own samples 0,0.5: 0.116, 0,1: 0.138)\n"
    # the full edit where the colour came closest: said with what the margin would have given
    _print_calibration("", {"calibration": {"strength": 0.3185, "closest": 0.3144, "strength_by": "colour"}}, str)
    assert capsys.readouterr().out == ("full edit: strength 0.319, where the samples' colour comes closest to the positives' own "
                                       "(1.4 x the latent distance's minimum would be 0.44)\n")
    for junk in ({"strength": "x", "closest": 1, "strength_by": "colour"}, {"strength": 0.3, "strength_by": "colour"}, {"strength": 0.3}):
        _print_calibration("", {"calibration": junk}, str)
        assert capsys.readouterr().out == ""


def test_the_colour_distance_is_to_the_positives_own_colour_relative_to_the_unsteered_one():
    """`_calibration`'s colour curve with a VAE whose decode paints each image the colour its latent holds: the
    distance is measured to the positives' colours and in units of the unsteered samples' distance."""
    from types import SimpleNamespace

    from steer.calibrate import _calibration

    class Paint(torch.nn.Module):
        config = SimpleNamespace(scaling_factor=1.0, shift_factor=None)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def decode(self, z):  # channel c of the latent's mean -> colour c, in [-1, 1]
            return SimpleNamespace(sample=z[:, :3].mean((2, 3), keepdim=True).expand(-1, -1, 4, 4) * 2 - 1)

    pipe = SimpleNamespace(vae=Paint())
    shape = (4, 2, 2)
    paint = lambda *rgb: torch.tensor([*rgb, 0.0])[:, None, None].expand(shape).clone()  # noqa: E731
    z_pos = torch.stack([paint(0.9, 0.1, 0.1)] * 2)  # red positives
    z_open = torch.stack([paint(0.1, 0.1, 0.9)] * 2)  # blue open samples: 1.131 away
    steered = torch.stack([torch.stack([paint(0.5, 0.1, 0.5)] * 2), torch.stack([paint(0.9, 0.1, 0.1)] * 2)])  # halfway; there
    colours = (pipe, mean_colours(pipe, z_pos), mean_colours(pipe, z_open), shape, 8, pipe.vae)
    result = _calibration([0.2, 0.3], steered.flatten(2), z_pos.flatten(1), 1.0, 1, (0.0, 1.0), None, colours)
    assert result.colour_distances == pytest.approx([0.5, 0.0], abs=1e-5)


def test_mean_colours_reads_an_overflowing_decode_as_no_colour():
    from types import SimpleNamespace

    class Overflow(torch.nn.Module):
        config = SimpleNamespace(scaling_factor=1.0)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def decode(self, z):
            image = torch.zeros(len(z), 3, 4, 4)
            image[0, 0, 0, 0] = float("inf")  # the clamp would read it as a white pixel
            image[1, 1, 0, 0] = float("nan")
            return SimpleNamespace(sample=image)

    read = mean_colours(SimpleNamespace(vae=Overflow()), torch.zeros(3, 4, 2, 2))
    assert read[:2].isnan().all() and torch.equal(read[2], torch.full((3,), 0.5))
    assert mean_colours(SimpleNamespace(vae=Overflow()), torch.zeros(0, 4, 2, 2)).shape == (0, 3)


def test_a_recorded_window_choice_reads_back_whole_or_not_at_all():
    from steer.window_choice import read_window_choice

    record = {"windows": [[0.0, 0.5], [0.0, 1.0]], "distances": [0.378, 0.353], "chosen": [0.0, 1.0], "by": "colour",
              "colour_distances": [0.13, 0.11]}
    choice = read_window_choice({"window_choice": record})
    assert choice.chosen == (0.0, 1.0) and choice.distances == [(0.0, 0.5, 0.378), (0.0, 1.0, 0.353)] and choice.colours == [0.13, 0.11]
    assert choice.sentence() == ("(an appearance edit, chosen by the samples' colour: 0,0.5: 0.130, 0,1: 0.110; relative "
                                 "distance to the positives' own samples 0,0.5: 0.378, 0,1: 0.353)")
    # colours that do not match the candidates are left out, the rest is told
    assert read_window_choice({"window_choice": {**record, "colour_distances": [0.13]}}).colours is None
    assert read_window_choice({"window_choice": {**record, "colour_distances": [float("nan"), 0.1]}}).colours is None
    for junk in ({**record, "distances": [float("nan"), 0.3]}, {**record, "chosen": [0.0]}, {**record, "windows": []}, "auto", None):
        assert read_window_choice({"window_choice": junk}) is None
