"""The Gradio demo with a direction whose layers are not the hookable layers: a trajectory direction's cross-attention
outputs (``...attn2``). The layer slider and 'Several layers' walk the direction's own layers (hunt33 finding 4: every
position but 0 was an error that advised learning with 'all layers', which trajectory mode ignores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from app_server import (  # noqa: F401 (the *_fixture: pytest finds them here by their fixture names)
    SCALE,
    client_fixture,
    constructed_direction,
    expected_pair,
    generate_args,
    native,
    pipe_fixture,
    server_fixture,
)

from steer.app import helpers as H
from steer.app.handlers import SteerApp
from steer.denoisers import cross_attention_sites, denoiser_of, layer_channels
from steer.vectors import SteeringVector, unet_fingerprint


def trajectory_direction(pipe, seed: int = 0) -> SteeringVector:
    """A random direction on every cross-attention output of ``pipe``: the sites trajectory mode learns."""
    unet = denoiser_of(pipe)
    sites = cross_attention_sites(unet)
    g = torch.Generator().manual_seed(seed)
    dirs = {n: torch.randn(c, generator=g) for n, c in layer_channels(unet, sites).items()}
    return SteeringVector(dirs, {"name": "trajectory", "method": "mean_diff", "model": unet_fingerprint(unet, sites)})


@pytest.fixture(scope="module", name="direction_file")
def direction_file_fixture(pipe, tmp_path_factory) -> Path:
    """The served catalog's "constructed" direction is a trajectory one here (app_server's server fixture)."""
    return trajectory_direction(pipe).save(tmp_path_factory.mktemp("dirs") / "trajectory.safetensors")


def test_the_slider_and_several_layers_walk_a_trajectory_directions_own_layers(pipe):
    vector = trajectory_direction(pipe)
    sites = list(vector.layers)
    assert not set(sites) & set(H.layer_names(pipe))  # none of them is a hookable layer
    assert H.slider_sites(pipe, vector) == H.layer_choices(pipe, vector) == sites
    for position, site in enumerate(sites, start=1):
        assert H.layer_at(pipe, position, vector) == site
        assert H.selected_layers(pipe, vector, position, []) == [site]
        assert "⚠" not in H.describe_layer(pipe, vector, position) and site in H.describe_layer(pipe, vector, position)
    assert H.selected_layers(pipe, vector, 0, []) is None  # 0: all of its layers
    assert H.selected_layers(pipe, vector, 1, sites[1:3]) == sites[1:3]  # the multi-select wins
    with pytest.raises(H.UserError, match="must be"):
        H.layer_at(pipe, len(sites) + 1, vector)
    # a direction on hookable layers still walks them all, and the advice to relearn names the modes that learn them
    names = H.layer_names(pipe)
    partial = constructed_direction(pipe).select(names[-3:])
    assert H.slider_sites(pipe, partial) == H.layer_choices(pipe, partial) == names
    with pytest.raises(H.UserError, match="learn a direction with 'all layers' in the Learn tab's fast or reference mode"):
        H.selected_layers(pipe, partial, 1, [])
    # a take-away is checked at the added direction's slider site: no advice to relearn with 'all layers' (trajectory
    # mode does not learn the hookable layers)
    with pytest.raises(H.UserError, match="has no vector for layer .*attn2") as err:
        H.selected_layers(pipe, partial, 1, [], vector)
    assert "all layers" not in str(err.value)


def test_several_layers_offers_the_picked_directions_own_layers(pipe, tmp_path):
    vector = trajectory_direction(pipe)
    sites = list(vector.layers)
    steer_app = SteerApp(pipe, H.DirectionCatalog({}), workdir=tmp_path)
    session = {"trajectory (learned)": vector, "layers (learned)": constructed_direction(pipe)}
    update = steer_app.layer_choices("trajectory (learned)", session, [sites[0], "down_blocks.0.resnets.0"])
    assert update["choices"] == sites and update["value"] == [sites[0]]  # a picked layer still offered stays picked
    update = steer_app.layer_choices("layers (learned)", session, [sites[0]])
    assert update["choices"] == H.layer_names(pipe) and update["value"] == []


def test_api_generates_at_every_slider_position_and_several_layers_of_a_trajectory_direction(client, pipe, direction_file):
    vector = SteeringVector.load(direction_file)
    sites = list(vector.layers)
    for position, site in enumerate(sites, start=1):
        _, steered, _, status = client.predict(**generate_args("constructed", layer=position), api_name="/generate")
        assert "steer-status-ok" in status and f"at layer `{site}`" in status, status
        if position in (1, len(sites)):  # the image is the Python API's at that site
            _, want = expected_pair(pipe, vector, SCALE, steering_layers=[site])
            assert np.abs(native(steered) - want).max() <= 1
    _, steered, _, status = client.predict(**generate_args("constructed", layers=sites[1:3]), api_name="/generate")
    assert "steer-status-ok" in status, status
    _, want = expected_pair(pipe, vector, SCALE, steering_layers=sites[1:3])
    assert np.abs(native(steered) - want).max() <= 1
    *_, status = client.predict(**generate_args("constructed", layers=["no.such.layer"]), api_name="/generate")
    assert "steer-status-error" in status and "no.such.layer" in status and "Traceback" not in status
