"""Theory lab: tiny ReLU denoisers that memorize or generalize (Zhang et al., ICLR 2026).

Two experiments on Fashion-MNIST vectors in [-1, 1]:

* ``relu-dae``: a tied-weight ReLU denoising autoencoder f(x) = Wᵀ ReLU(W x). Trained on 5 images it
  memorizes (the surviving weight rows are built from the training images, hidden activations are
  spiky); trained on 10,000
  images it generalizes (many moderate activations). A hybrid set with a few heavily duplicated images
  shows both regimes inside one model.
* ``relu-diffusion``: the same layer as an x0-prediction diffusion model with multiplicative time
  conditioning, sampled with a 60-step Euler ODE solver; memorized samples are detected with the
  nearest-neighbour ratio d(x, NN1) / d(x, NN2) < 1/3.

Run ``python -m steer.lab.theory relu-dae --quick --out DIR`` (or through ``steer lab``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from steer.validation import bounded_int

from .memorization import RATIO_THRESHOLD, nn_ratio
from .theory_data import hybrid_set, training_vectors
from .theory_models import ReLUDAE, ReLUDiffusion, load_models, save_models
from .theory_plots import plot_activation_bars, plot_samples, plot_weights
from .theory_stats import activation_stats, noisy_inputs, span_energy, weight_match
from .theory_training import (
    GENERALIZE,
    MEMORIZE,
    TrainConfig,
    gaussian_prior,
    sample_euler,
    train_dae,
    train_diffusion,
    with_iters,
)


def _prepare(args: argparse.Namespace) -> tuple[Path, Callable[[str], None]]:
    """Set the torch threads and create the output folder of an experiment; returns it and a logger that prints
    timestamped lines and appends them to ``OUT/log.txt``."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.txt"

    def log(msg: str) -> None:
        msg = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(msg, flush=True)
        with open(log_path, "a") as fh:
            fh.write(msg + "\n")

    return out, log


def _check_reused(ckpt: Path, meta: dict, settings: dict) -> None:
    """``--reuse`` of a checkpoint trained with other settings (seed, data size, schedule): refused in one line (the
    seed-0 models were scored against seed-5 data, and their statistics replaced the right ones). Checkpoints from
    before the settings were recorded are reused as before."""
    saved = meta.get("settings")
    if saved is None or saved == settings:
        return
    differ = sorted(k for k in {*saved, *settings} if saved.get(k) != settings.get(k))
    shown = ", ".join(f"{k} {saved.get(k)!r} there, {settings.get(k)!r} now" for k in differ[:3])
    raise SystemExit(f"--reuse: {ckpt} was trained with other settings ({shown}); run without --reuse to train anew, "
                     "or with its settings")


def _train_or_load(out: Path, reuse: bool, train_mem: Callable, train_gen: Callable, log, settings: dict) -> tuple:
    """Train the memorizing and generalizing DAEs, or load them from ``out/dae_models.safetensors`` when reusing
    (trained with the same ``settings`` only)."""
    ckpt = out / "dae_models.safetensors"
    if reuse and ckpt.exists():
        log(f"reusing trained models from {ckpt}")
        state, meta = load_models(ckpt)
        _check_reused(ckpt, meta, settings)
        models = []
        for name in ("memorizing", "generalizing"):
            model = ReLUDAE(*reversed(state[name]["weight"].shape))
            model.load_state_dict(state[name])
            models.append(model)
        return models[0], models[1], meta.get("timings", {}) | {"reused": True}, meta.get("final_loss", {})
    t, c = time.time(), time.process_time()
    mem, mem_loss = train_mem()
    timings = {"memorizing": round(time.time() - t, 1), "memorizing_cpu": round(time.process_time() - c, 1)}
    t, c = time.time(), time.process_time()
    gen, gen_loss = train_gen()
    timings |= {"generalizing": round(time.time() - t, 1), "generalizing_cpu": round(time.process_time() - c, 1)}
    final = {"memorizing": mem_loss[-1], "generalizing": gen_loss[-1]}
    save_models(ckpt, {"memorizing": mem.state_dict(), "generalizing": gen.state_dict()},
                {"timings": timings, "final_loss": final, "settings": settings})
    return mem, gen, timings, final


def dae_configs(quick: bool, iters: int | None) -> tuple[TrainConfig, TrainConfig, TrainConfig]:
    """(memorizing, generalizing, hybrid) optimiser settings; ``--quick`` shortens them."""
    mem = with_iters(MEMORIZE, iters or (3000 if quick else None))
    gen = with_iters(GENERALIZE, iters or (1000 if quick else None))
    if quick:  # a much shorter schedule needs a larger step to reach the same (balanced) regime
        gen = TrainConfig("adam", 1e-3, gen.weight_decay, gen.batch, gen.iters)
    hybrid = TrainConfig("rmsprop", 1e-3, 1e-2, 256, iters or (1200 if quick else 10_000))
    return mem, gen, hybrid


def run_relu_dae(args: argparse.Namespace) -> dict:
    """Memorizing vs generalizing ReLU-DAE, plus the hybrid (duplicated images) set."""
    out, log = _prepare(args)
    quick = args.quick
    width, noise = 100, 0.2
    n_gen = 2000 if quick else 10_000
    mem_cfg, gen_cfg, hybrid_cfg = dae_configs(quick, args.iters)
    if getattr(args, "hybrid_iters", None):
        hybrid_cfg = with_iters(hybrid_cfg, getattr(args, "hybrid_iters", None))
    t0 = time.time()
    log(f"relu-dae quick={quick} seed={args.seed} mem={asdict(mem_cfg)} gen={asdict(gen_cfg)} n_gen={n_gen}")

    mem_data = training_vectors(5, args.seed)
    gen_data = training_vectors(n_gen, args.seed + 100)

    def train_mem() -> tuple[ReLUDAE, list[float]]:
        log("training memorizing model (N=5)")
        return train_dae(mem_data, mem_cfg, width, noise, args.seed, log)

    def train_gen() -> tuple[ReLUDAE, list[float]]:
        log(f"training generalizing model (N={n_gen})")
        return train_dae(gen_data, gen_cfg, width, noise, args.seed, log)

    settings = {"seed": args.seed, "width": width, "noise": noise, "n_gen": n_gen, "memorizing": asdict(mem_cfg),
                "generalizing": asdict(gen_cfg)}
    mem, gen, timings, final = _train_or_load(out, getattr(args, "reuse", None), train_mem, train_gen, log, settings)
    stats = dae_statistics(mem, gen, mem_data, gen_data, noise, args.seed)
    stats["final_loss"] = final
    plot_weights(out / "dae_weights.png", mem_data, mem.weight, gen.weight)
    with torch.no_grad():
        mem_x, _ = noisy_inputs(mem_data, 1, noise, args.seed + 7)
        gen_x, _ = noisy_inputs(gen_data, 1, noise, args.seed + 7)
    plot_activation_bars(
        out / "dae_activations.png",
        [
            ("memorizing (N=5)", mem_x[0], mem.hidden(mem_x)[0]),
            (f"generalizing (N={n_gen})", gen_x[0], gen.hidden(gen_x)[0]),
        ],
    )
    if not getattr(args, "no_hybrid", None):
        t, c = time.time(), time.process_time()
        stats["hybrid"] = run_hybrid(args, hybrid_cfg, width, noise, out, log)
        timings |= {"hybrid": round(time.time() - t, 1), "hybrid_cpu": round(time.process_time() - c, 1)}
    stats["config"] = {
        "quick": quick,
        "seed": args.seed,
        "width": width,
        "noise": noise,
        "n_memorizing": 5,
        "n_generalizing": n_gen,
        "memorizing_train": asdict(mem_cfg),
        "generalizing_train": asdict(gen_cfg),
        "hybrid_train": asdict(hybrid_cfg),
        "threads": args.threads,
        "reused_models": bool(timings.get("reused", False)),
    }
    stats["wall_s"] = timings | {
        "this_invocation": round(time.time() - t0, 1),
        "this_invocation_cpu": round(time.process_time(), 1),
    }
    (out / "dae_stats.json").write_text(json.dumps(stats, indent=2))
    log(json.dumps({k: stats[k] for k in ("memorizing", "generalizing", "ratios", "weight_match")}, indent=2))
    return stats


def dae_statistics(mem: ReLUDAE, gen: ReLUDAE, mem_data: Tensor, gen_data: Tensor, noise: float, seed: int) -> dict:
    """Activation statistics over 100 noisy training inputs per model, ratios, and weight-row matches."""
    with torch.no_grad():
        mem_x, _ = noisy_inputs(mem_data, 100, noise, seed + 7)
        gen_x, _ = noisy_inputs(gen_data, 100, noise, seed + 7)
        mem_acts, gen_acts = mem.hidden(mem_x), gen.hidden(gen_x)
        stats = {
            "memorizing": activation_stats(mem_acts),
            "generalizing": activation_stats(gen_acts),
            # the memorizing model's 100 noisy inputs, seen by the generalizing model
            "generalizing_on_memorizing_inputs": activation_stats(gen.hidden(mem_x)),
            # tied weights: ‖ReLU(Wx)‖² = f(x)·x, so a good denoiser of either kind has ‖a‖ ≈ ‖x‖
            "sq_norm_identity": {
                "memorizing_a2": float(mem_acts.pow(2).sum(1).mean()),
                "memorizing_x2": float(mem_x.pow(2).sum(1).mean()),
                "generalizing_a2": float(gen_acts.pow(2).sum(1).mean()),
                "generalizing_x2": float(gen_x.pow(2).sum(1).mean()),
            },
        }
    stats["ratios"] = _ratios(stats["memorizing"], stats["generalizing"])
    stats["weight_match"] = {
        "memorizing": weight_match(mem.weight, mem_data) | {"span_energy": span_energy(mem.weight, mem_data)},
        "generalizing": weight_match(gen.weight, gen_data)
        | {"span_energy_of_memorizing_set": span_energy(gen.weight, mem_data)},
    }
    return stats


def _ratios(mem: dict, gen: dict) -> dict[str, float]:
    return {k: mem[k] / max(gen[k], 1e-12) for k in ("std", "cv", "l4_l2", "top1_share")}


def _median_cv_index(acts: Tensor) -> int:
    """Index of the input whose std/mean is the median of its group (a typical example to plot)."""
    cv = acts.std(1, unbiased=False) / acts.mean(1).clamp_min(1e-12)
    return int(cv.argsort()[len(cv) // 2])


def run_hybrid(args, cfg: TrainConfig, width: int, noise: float, out: Path, log) -> dict:
    """One model on 500 unique images + 5 images x 100 copies: duplicated vs unique activations."""
    n_total, n_dup, copies = 1000, 5, 100
    data, mask = hybrid_set(n_total, n_dup, copies, args.seed + 200)
    log(f"training hybrid model (N={n_total}, {n_dup} images x {copies} copies) {asdict(cfg)}")
    model, trace = train_dae(data, cfg, width, noise, args.seed, log)
    dup_imgs = data[:n_dup]
    unique = data[~mask]
    with torch.no_grad():
        dup_x, _ = noisy_inputs(dup_imgs, 100, noise, args.seed + 9)
        uni_x, _ = noisy_inputs(unique, 100, noise, args.seed + 9)
        dup_acts, uni_acts = model.hidden(dup_x), model.hidden(uni_x)
    i, j = _median_cv_index(dup_acts), _median_cv_index(uni_acts)
    plot_activation_bars(
        out / "hybrid_activations.png",
        [
            (f"hybrid: duplicated image ({copies} copies)", dup_x[i], dup_acts[i]),
            ("hybrid: unique image", uni_x[j], uni_acts[j]),
        ],
    )
    save_models(out / "hybrid_model.safetensors", {"model": model.state_dict()}, {"trace": trace})
    res = {
        "duplicated": activation_stats(dup_acts),
        "unique": activation_stats(uni_acts),
        "n_total": n_total,
        "n_duplicated_images": n_dup,
        "copies": copies,
        "weight_match_duplicated": weight_match(model.weight, dup_imgs),
        "final_loss": trace[-1],
    }
    res["ratios"] = _ratios(res["duplicated"], res["unique"])
    return res


def run_relu_diffusion(args: argparse.Namespace) -> dict:
    """Memorizing (N=5) vs generalizing (large N) ReLU diffusion models: samples, NN ratios, activations."""
    out, log = _prepare(args)
    quick = args.quick
    width, sigma_range, steps, n_samples = 256, (0.02, 2.0), 60, 64
    n_gen = 2000 if quick else 60_000
    mem_cfg = with_iters(MEMORIZE, getattr(args, "mem_iters", None) or args.iters or (4000 if quick else None))
    # the generalizing diffusion model uses Adam lr 1e-3 and 5k iterations (50k at lr 1e-4 is ~30 CPU-minutes)
    gen_iters = getattr(args, "gen_iters", None) or args.iters or (1000 if quick else 5000)
    gen_cfg = TrainConfig("adam", 1e-3, GENERALIZE.weight_decay, GENERALIZE.batch, gen_iters)
    t0 = time.time()
    log(f"relu-diffusion quick={quick} seed={args.seed} mem={asdict(mem_cfg)} gen={asdict(gen_cfg)} n_gen={n_gen}")
    mem_data = training_vectors(5, args.seed)
    gen_data = training_vectors(n_gen, args.seed + 100)

    results: dict = {}
    groups = []
    timings = {}
    for name, data, cfg in (("memorizing", mem_data, mem_cfg), ("generalizing", gen_data, gen_cfg)):
        if getattr(args, "only", None) and getattr(args, "only", None) != name:
            continue
        t, c = time.time(), time.process_time()
        ckpt = out / f"diffusion_{name}.safetensors"
        settings = {"seed": args.seed, "width": width, "n_train": len(data), "sigma_range": list(sigma_range), "train": asdict(cfg)}
        if getattr(args, "reuse", None) and ckpt.exists():
            log(f"reusing {ckpt}")
            state, meta = load_models(ckpt)
            _check_reused(ckpt, meta, settings)
            model = ReLUDiffusion(len(data[0]), width)
            model.load_state_dict(state["model"])
            trace, timings[f"{name}_train"] = meta["trace"], meta["timings"]
        else:
            log(f"training {name} diffusion model (N={len(data)})")
            model, trace = train_diffusion(data, cfg, width, sigma_range, args.seed, log)
            timings[f"{name}_train"] = {"wall": round(time.time() - t, 1), "cpu": round(time.process_time() - c, 1)}
            save_models(ckpt, {"model": model.state_dict()}, {"trace": trace, "timings": timings[f"{name}_train"], "settings": settings})
        samples = sample_euler(model, n_samples, gaussian_prior(data), sigma_range, steps, args.seed + 11)
        ratios, nn_idx = map(torch.from_numpy, nn_ratio(samples, data))
        with torch.no_grad():
            x, _ = noisy_inputs(data, 100, 0.2, args.seed + 7)
            acts = model.hidden(x, torch.full((100,), 0.2))
        results[name] = {
            "activations_sigma_0.2": activation_stats(acts),
            "nn_ratio_mean": float(ratios.mean()),
            "nn_ratio_median": float(ratios.median()),
            "frac_memorized": float((ratios < RATIO_THRESHOLD).double().mean()),
            "nn_distance_mean": float((samples.double() - data[nn_idx].double()).norm(dim=1).mean()),
            "weight_match": weight_match(model.weight, data),
            "final_loss": trace[-1],
            "n_train": len(data),
        }
        groups.append((f"{name} (N={len(data)})", samples, data[nn_idx], ratios))
        timings[name] = round(time.time() - t, 1)
        timings[f"{name}_cpu"] = round(time.process_time() - c, 1)
        log(f"{name}: {json.dumps(results[name])}")
    if getattr(args, "only", None):  # training one model only (e.g. two processes in parallel, then --reuse)
        return results
    results["ratios"] = _ratios(
        results["memorizing"]["activations_sigma_0.2"], results["generalizing"]["activations_sigma_0.2"]
    )
    plot_samples(out / "diffusion_samples.png", groups)
    results["config"] = {
        "quick": quick,
        "seed": args.seed,
        "width": width,
        "sigma_range": sigma_range,
        "steps": steps,
        "sampler": "Euler, geometric sigma grid, x0 clipped, start N(mu, Sigma + sigma_max^2 I)",
        "n_samples": n_samples,
        "memorizing_train": asdict(mem_cfg),
        "generalizing_train": asdict(gen_cfg),
        "threads": args.threads,
    }
    results["wall_s"] = {**timings, "total": round(time.time() - t0, 1), "total_cpu": round(time.process_time(), 1)}
    (out / "diffusion_stats.json").write_text(json.dumps(results, indent=2))
    return results


# --------------------------------------------------------------------------------------------- CLI


ITERS = bounded_int(1, 10**9)  # a bad number is a one-line usage error, not a traceback after the data loads


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--quick", action="store_true", help="small, fast run (about a minute on 2 CPU cores)")
    p.add_argument("--out", default=default_out, help="output folder for figures and JSON")
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="seed of the data and the models (default 0)")
    p.add_argument("--iters", type=ITERS, default=None, help="override the iteration count of every model")
    p.add_argument("--threads", type=bounded_int(1, 1024), default=1, help="torch CPU threads")


def configure_parser(subparsers) -> None:
    """Add the ``relu-dae`` and ``relu-diffusion`` subcommands to an argparse sub-parser group."""
    p = subparsers.add_parser("relu-dae", help="memorizing vs generalizing ReLU denoising autoencoder")
    _common(p, "runs/relu-dae")
    p.add_argument("--no-hybrid", action="store_true", help="skip the duplicated-images experiment")
    p.add_argument("--reuse", action="store_true", help="load the two models from OUT/dae_models.safetensors if present")
    p.add_argument("--hybrid-iters", type=ITERS, default=None, help="iterations of the hybrid model only")
    p.set_defaults(func=run_relu_dae)
    p = subparsers.add_parser("relu-diffusion", help="memorizing vs generalizing ReLU diffusion model")
    _common(p, "runs/relu-diffusion")
    p.add_argument("--gen-iters", type=ITERS, default=None, help="iterations of the generalizing model only")
    p.add_argument("--mem-iters", type=ITERS, default=None, help="iterations of the memorizing model only")
    p.add_argument("--reuse", action="store_true", help="load trained models from OUT/diffusion_*.safetensors if present")
    p.add_argument("--only", choices=["memorizing", "generalizing"], help="train and evaluate one model only")
    p.set_defaults(func=run_relu_diffusion)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m steer.lab.theory", description=__doc__.split("\n\n")[0])
    configure_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
