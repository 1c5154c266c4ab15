"""What the Gradio demo's tests share: helpers, and fixtures for one in-process server per test module (a tiny random
pipeline). A module imports the ``*_fixture`` functions it needs; pytest knows them by their fixture names (``pipe``,
``direction_file``, ``server``, ``client``)."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from steer.app import helpers as H
from steer.denoisers import denoiser_of
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
# Fixtures: one in-process server per test module that imports them (`from app_server import ..._fixture`)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", name="pipe")
def pipe_fixture():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several threads thrash on a busy 2-core machine; the server's workers share this
    yield tiny_pipeline(seed=0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", name="direction_file")
def direction_file_fixture(pipe, tmp_path_factory) -> Path:
    return constructed_direction(pipe).save(tmp_path_factory.mktemp("dirs") / "constructed.safetensors")


@pytest.fixture(scope="module", name="server")
def server_fixture(pipe, direction_file):
    import app

    catalog = H.DirectionCatalog({"constructed": direction_file})
    demo = app.build_app(pipe, catalog=catalog)
    port = free_port()
    _, url, _ = app.launch(
        demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True
    )
    yield url
    demo.close()


@pytest.fixture(name="client")
def client_fixture(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def learned_text_direction(pipe, positive: str, negative: str, name: str) -> SteeringVector:
    """A text direction on the tiny pipeline: it records the reference level that removal needs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        vector = pipe.learn_direction([positive], [negative], num_inference_steps=2, calibration_samples=2, progress=False)
    vector.metadata["name"] = name
    return vector
