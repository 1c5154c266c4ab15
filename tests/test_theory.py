"""Tests for the theory lab (steer.lab.theory and its theory_* modules): statistics helpers and the --quick
experiments."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from steer.lab import data as D
from steer.lab import theory
from steer.lab.memorization import nn_ratio
from steer.lab.theory_data import training_vectors
from steer.lab.theory_models import ReLUDAE, load_models, save_models
from steer.lab.theory_stats import activation_stats, weight_match

needs_data = pytest.mark.skipif(
    not (D.data_root() / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist",
)


def test_parser_registers_subcommands() -> None:
    parser = argparse.ArgumentParser()
    theory.configure_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["relu-dae", "--quick", "--out", "x", "--seed", "3", "--iters", "10"])
    assert args.func is theory.run_relu_dae and args.quick and args.seed == 3 and args.iters == 10
    args = parser.parse_args(["relu-diffusion", "--out", "y"])
    assert args.func is theory.run_relu_diffusion and not args.quick


def test_activation_stats_spiky_vs_balanced() -> None:
    spiky = torch.zeros(3, 100)
    spiky[:, 0] = 10.0
    balanced = torch.full((3, 100), 1.0) + 0.1 * torch.rand(3, 100)
    s, b = activation_stats(spiky), activation_stats(balanced)
    assert s["l4_l2"] == pytest.approx(1.0)
    assert b["l4_l2"] == pytest.approx(100**-0.25, rel=0.05)
    assert s["cv"] > 5 * b["cv"] and s["active"] == 1 and b["active"] == 100


def test_nn_ratio_and_weight_match() -> None:
    data = torch.eye(4) * 10
    samples = torch.stack([data[0] + 0.1, (data[1] + data[2]) / 2])
    ratios, idx = nn_ratio(samples, data)
    assert ratios[0] < 1 / 3 and ratios[1] == pytest.approx(1.0) and idx[0] == 0
    weight = torch.cat([data[:2] / 10, 1e-4 * torch.ones(3, 4)])
    match = weight_match(weight, data)
    assert match["rows_nonnegligible"] == 2 and match["frac_nonnegligible_rows"] == 1.0
    assert match["frac_all_rows"] == pytest.approx(0.4)


def test_model_files_are_safetensors_and_round_trip(tmp_path) -> None:
    dae = ReLUDAE(12, 4)
    path = save_models(tmp_path / "m.safetensors", {"memorizing": dae.state_dict()}, {"trace": [1.5, 0.25]})
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    state, meta = load_models(path)
    again = ReLUDAE(12, 4)
    again.load_state_dict(state["memorizing"])
    assert torch.equal(again.hidden(torch.ones(1, 12)), dae.hidden(torch.ones(1, 12)))
    assert meta == {"trace": [1.5, 0.25]}


def test_missing_dataset_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(D.ROOT_ENV, str(tmp_path))  # the theory lab reads the lab's one Fashion-MNIST reader
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        training_vectors(5, seed=0)


@pytest.fixture(scope="module")
def dae_stats(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("relu_dae")
    theory.main(["relu-dae", "--quick", "--out", str(out)])
    for name in ("dae_weights.png", "dae_activations.png", "hybrid_activations.png"):
        assert (out / name).stat().st_size > 1000
    assert (out / "dae_models.safetensors").is_file() and not list(out.glob("*.pt"))  # no pickles
    return json.loads((out / "dae_stats.json").read_text())


@needs_data
def test_relu_dae_memorizing_is_spiky(dae_stats: dict) -> None:
    mem, gen = dae_stats["memorizing"], dae_stats["generalizing"]
    assert mem["cv"] >= 2 * gen["cv"]  # scale-free std (std / mean): see docs/theory.md for raw std
    assert mem["l4_l2"] > gen["l4_l2"] and mem["active"] < gen["active"] / 4
    assert mem["std"] > gen["std"]


@needs_data
def test_relu_dae_memorizing_rows_are_training_images(dae_stats: dict) -> None:
    match = dae_stats["weight_match"]["memorizing"]
    assert match["rows_nonnegligible"] <= 40  # weight decay kills the unused units
    # the weights live in the span of the 5 training images (≈1.0 after 50k iterations); a generalizing model's don't
    assert match["span_energy"] > 0.4
    assert match["span_energy"] > 2 * dae_stats["weight_match"]["generalizing"]["span_energy_of_memorizing_set"]


@needs_data
def test_relu_dae_hybrid_duplicates_are_spikier(dae_stats: dict) -> None:
    hybrid = dae_stats["hybrid"]
    assert hybrid["duplicated"]["cv"] > hybrid["unique"]["cv"]
    assert hybrid["duplicated"]["top1_share"] > hybrid["unique"]["top1_share"]


@needs_data
def test_relu_diffusion_memorizing_copies_training_images(tmp_path) -> None:
    theory.main(["relu-diffusion", "--quick", "--out", str(tmp_path)])
    stats = json.loads((tmp_path / "diffusion_stats.json").read_text())
    mem, gen = stats["memorizing"], stats["generalizing"]
    assert mem["frac_memorized"] > gen["frac_memorized"]
    assert mem["nn_ratio_mean"] < gen["nn_ratio_mean"]
    assert mem["activations_sigma_0.2"]["cv"] >= 2 * gen["activations_sigma_0.2"]["cv"]
    assert (tmp_path / "diffusion_samples.png").stat().st_size > 1000
