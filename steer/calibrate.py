"""Self-calibration of a learned direction from model-internal signals only (no attribute classifier).

After a direction is learned its strength is chosen so that ``steering_scale=1.0`` means "the full edit":

1. Sample the positive prompts unsteered: final latents ``z_pos``. ``z_pos[i]`` is what the model itself draws for
   the edited prompt from seed ``i``: the target of the edit.
2. Sample *open* prompts (`open_prompts`: the positive prompts without the words that make the attribute, so the
   model chooses it; `steer.wording`: "a blue sneaker" -> "a sneaker", "an old man" / "a man" -> "a man") from
   the same seeds, unsteered and with the direction at a grid of strengths (one batched call,
   a per-row strength sweep), and measure how far each set is from its same-seed targets, relative to the unsteered
   start: ``d(s) = mean |z(s) - z_pos| / mean |z(0) - z_pos|``.
3. The minimum of ``d`` (refined by a parabola through the best grid point and its neighbours) is the strength that
   best reproduces the model's own prompt edit in latent L2. L2 favours partial edits, so the full edit is `MARGIN`
   times that strength (the margin was fitted on the benchmark's tuning directions, docs/steering.md). The vector
   is rescaled by it, so ``steering_scale`` 0 -> 1 sweeps from the unsteered sample to the edit. Prompts that
   contradict the attribute need more.

`calibrate_windows` does this for several candidate windows on the same positive and unsteered samples and keeps the
window whose samples come closest (``learn_direction(window="auto")``, the text preset's default). For the first half
and the whole run, on schedulers that resume exactly, the runs share their first half (`steer.partial_run`), so the
choice on `WINDOW_CHOICE_GRID` costs as much as one window on `DEFAULT_GRID`.

With ``choose_route=True`` (``learn_direction(readers="auto")``, UNet denoisers) the unsteered open samples are drawn
before the sweep and compared with the positives' own: where the model's own prompt edit keeps less than
`LAYOUT_EDIT_BELOW` of the image's layout (`structure_kept`: where light and dark lie), it is a layout edit (an object or class),
and the direction is read by the cross-attentions of the down and mid blocks only (``steering_readers="layout"``,
where the layout is decided; the up blocks keep drawing the prompt's colour); else by every cross-attention. The sweep
then runs through the chosen route. Same cost. An appearance edit's window (every reader) is then chosen by colour:
the candidate whose decoded samples' mean colour (`mean_colours`) comes closest to the positives' own at some grid
strength, and its full edit is where that colour comes closest (`_strength_by_colour`: the margin overshot every
colour but blue on the demo model); that decodes the positives', the unsteered and every window's steered samples
(no denoiser rows).

Cost: ``(2 + len(grid)) * num_samples`` images at ``num_inference_steps`` with CFG (2 UNet batch rows per step each);
the shared window choice ``(2 + 3 * len(grid) / 2) * num_samples``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from steer.appearance import mean_colours, relative_colour_distances, structure_kept
from steer.engine.run import window_bounds
from steer.partial_run import SolverCarry, partial_pipeline, resumable, run_length
from steer.vae_codec import codec_vae
from steer.wording import open_prompts

DEFAULT_GRID = (0.08, 0.13, 0.2, 0.3, 0.45, 0.7)
# `calibrate_windows` (``window="auto"``): the top four of the default grid for each candidate window. Chosen on the
# benchmark's six tuning directions alone from their recorded six-point curves: with these four both windows' distance
# minima, hence the window choice and the strengths (within 1 %), come out as from all six (docs/steering.md).
WINDOW_CHOICE_GRID = (0.2, 0.3, 0.45, 0.7)
# The distance minimum hedges (a partial edit is closer in L2 to the target than an overshooting one); the full edit
# is this multiple of it. Chosen on the tuning directions of bench/steering_matrix.py at the text preset's window
# (0, 0.5): in units of the minimum they pass at 1.25-1.5 (green) ... 0.75-1.5 (red); classes 0.75/1.0-2.5.
MARGIN = 1.4
# A direction whose best strength leaves the open samples this far from the positives' own (relative distance) does
# not reproduce the prompt edit: on the demo model the 18 benchmark directions reach 0.09-0.45, the README's earlier
# "blue vs other colours" recipe 0.76 ("a blue item" vs "a red item": 0.87) and barely edits (docs/steering.md).
POOR_DISTANCE = 0.6
# A prompt edit whose positives' samples keep less than this share of the open samples' layout (`structure_kept`:
# same-seed correlation of the decoded grayscale over an 8 x 8 grid of the frame) is a layout edit. On both demo models
# at guidance 5 and 7.5 the benchmark's colour edits keep 0.92-0.99 and its class edits 0.34-0.75; the tuning targets
# leave the gap 0.75 (ankle boot) - 0.92 (green), and reading a colour edit by the layout blocks loses it (0 of 8 pass)
# where reading a class edit by every block only loses some of its colour, so the threshold sits low in the gap
# (bench/route_choice_screen.py, docs/steering.md "The route per direction").
LAYOUT_EDIT_BELOW = 0.8
LAYOUT_CLOSE = 0.05  # a structure share this near the threshold is a close call: the user is told which way it went
LAYOUT_READERS = ("layout",)


@dataclass
class Calibration:
    """The outcome of `calibrate`: the chosen strength and the read-out curve it was chosen from."""

    strength: float  # the full edit: MARGIN x the distance minimum (an appearance edit's: its colour minimum, strength_by)
    closest: float  # the strength of the distance minimum
    distance: float  # the relative distance to the target there (1 = no closer than unsteered)
    converged: bool  # False: no strength moved samples closer; a middle grid strength was used (with a warning)
    grid: list[float]
    distances: list[float]
    unet_rows: int
    window: list[float] | None = None  # the window calibrated for (None: the vector's own recommended one)
    # choose_route: {"structure": the share of the layout the prompt edit keeps, "readers": the route or None}
    route: dict[str, Any] | None = None
    branched_at: int | None = None  # calibrate_windows: the step the candidate windows' runs were split at
    open_prompts: list[str] | None = None  # the prompts it steered: the positives with the attribute left open
    chosen_by: str | None = None  # calibrate_windows, the chosen window's: "colour" (an appearance edit's) or "distance"
    # an appearance edit's window choice: the decoded samples' mean colour distance to the positives' own per grid
    # strength, relative to the unsteered samples' (`mean_colours`)
    colour_distances: list[float] | None = None
    strength_by: str | None = None  # "colour": an appearance edit's strength is its colour minimum (None: MARGIN x closest)

    def to_dict(self) -> dict[str, Any]:
        def r(v: Any) -> Any:
            if isinstance(v, dict | list):
                return {k: r(x) for k, x in v.items()} if isinstance(v, dict) else [r(x) for x in v]
            return round(v, 4) if isinstance(v, float) else v

        return {k: r(v) for k, v in asdict(self).items() if not (k in ("window", "route", "branched_at", "open_prompts", "colour_distances", "chosen_by", "strength_by") and v is None)}


def cfg_rows_per_sample(**call_kwargs: Any) -> int:
    """The SD-family rule: 2 denoiser rows per sample and step with classifier-free guidance (``guidance_scale > 1``),
    else 1."""
    return 2 if float(call_kwargs.get("guidance_scale", 1.0)) > 1 else 1


def rows_per_sample(pipe, **call_kwargs: Any) -> int:
    """Denoiser batch rows per sample and step of ``pipe(**call_kwargs)``: the pipeline's own count where it has one
    (Flux: 1 without true CFG), else `cfg_rows_per_sample`."""
    own = getattr(pipe, "denoiser_rows_per_sample", None)
    if callable(own):
        return int(own(**call_kwargs))
    return cfg_rows_per_sample(**call_kwargs)


def seeded_generators(pipe, seeds: Sequence[int]) -> list[torch.Generator]:
    """One generator per seed on the pipeline's device (CPU generators for MPS, which has none of its own)."""
    dev = pipe._execution_device
    gen_device = "cpu" if dev.type == "mps" else dev
    return [torch.Generator(device=gen_device).manual_seed(s) for s in seeds]


# Negative prompts a sampling call may take as one string for every row (diffusers wants one per prompt of a list).
NEGATIVE_PROMPTS = ("negative_prompt", "negative_prompt_2", "negative_prompt_3")


def rows_of(call_kwargs: Mapping[str, Any], n: int) -> dict[str, Any]:
    """``call_kwargs`` for a call on ``n`` prompts: a negative prompt given as one string is repeated for every row."""
    return {k: [v] * n if k in NEGATIVE_PROMPTS and isinstance(v, str) else v for k, v in call_kwargs.items()}


def sample_latents(
    pipe, prompts: Sequence[str], seeds: Sequence[int], flat: bool = True, raw: bool = False, batch_size: int | None = None, **call_kwargs: Any
) -> torch.Tensor:
    """Final latents of ``pipe(prompts)``, one seed per prompt, as float32 on the CPU (``flat``: one row each; ``raw``:
    as the pipeline returned them, to start another call from).

    ``batch_size``: at most this many images per pipeline call (None: one call), which bounds the memory a calibration
    needs. Each image has its own seeded generator, so the split draws the same noise. A ``steering_scale`` sequence, a
    ``latents`` tensor and an ``image`` batch (an edit's) then hold one entry per image and are split with the prompts."""
    n = len(prompts)
    if len(seeds) != n:
        raise ValueError(f"sample_latents: {len(seeds)} seeds for {n} prompts")
    size = n if not batch_size else max(1, int(batch_size))
    per_row = {}
    if size < n:
        for key in ("steering_scale", "latents", "image"):
            value = call_kwargs.get(key)
            if value is None or isinstance(value, int | float):
                continue
            if len(value) != n:
                raise ValueError(f"sample_latents: {key} must hold one entry per image ({n}) to be split into batches, got {len(value)}")
            per_row[key] = value
    parts = []
    for i in range(0, n, size):
        chunk = rows_of({**call_kwargs, **{k: v[i : i + size] for k, v in per_row.items()}}, len(prompts[i : i + size]))
        parts.append(pipe(list(prompts[i : i + size]), generator=seeded_generators(pipe, seeds[i : i + size]), output_type="latent", **chunk).images)
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    if raw:
        return out
    out = out.float().cpu()
    return out.flatten(1) if flat else out


@torch.no_grad()
def calibrate(
    pipe,
    vector,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    num_samples: int = 6,
    grid: Sequence[float] = DEFAULT_GRID,
    seed: int = 0,
    num_inference_steps: int = 12,
    guidance_scale: float = 7.5,
    choose_route: bool = False,
    batch_size: int | None = 8,
    **steering: Any,
) -> Calibration:
    """Choose the strength at which ``vector`` (unit strength per step bucket) carries open samples to the positives.

    Args:
        pipe: a `SteeringStableDiffusionPipeline`.
        vector: the direction, at the settings in ``steering`` (``steering_branch=...``, ``steering_mode=...``).
        positive / negative: the prompt sets the direction was learned from (cycled to ``num_samples``).
        num_samples: seeds per set.
        grid: the strengths tried (in the vector's own units), ascending.
        seed: the first seed; sample ``i`` uses ``seed + i`` for both sets.
        num_inference_steps / guidance_scale: sampling settings of the calibration runs.
        choose_route: choose ``steering_readers`` from the model's own prompt edit before the sweep (UNet denoisers;
            module docstring); the result's ``route`` records it.
        batch_size: at most this many images per sampling call (None: each sample set in one call); the result is
            the same (each image has its own seed), only the memory and the speed change.
        **steering: ``steering_*`` options passed to every steered call; other pipeline call options (``height=``,
            ``use_resolution_binning=``...) go to every call.
    """
    results = _sweeps(pipe, vector, positive, negative, [None], num_samples, grid, seed, num_inference_steps, guidance_scale, steering, choose_route,
                      batch_size=batch_size)
    _warn(results[0])
    return results[0]


@torch.no_grad()
def calibrate_windows(
    pipe,
    vector,
    positive: Sequence[str],
    negative: Sequence[str],
    windows: Sequence[tuple[float, float]],
    *,
    num_samples: int = 6,
    grid: Sequence[float] = WINDOW_CHOICE_GRID,
    seed: int = 0,
    num_inference_steps: int = 12,
    guidance_scale: float = 7.5,
    choose_route: bool = False,
    batch_size: int | None = 8,
    **steering: Any,
) -> tuple[int, list[Calibration]]:
    """`calibrate` over each of several windows, and the one where the direction comes closest to the positives.

    The positives' and the unsteered open samples are drawn once and shared. Two windows that start together, the
    second running to the end of the run, share more: at each strength both runs are the same until the first window
    ends, so that part is sampled once and both continue from its latents (`steer.partial_run`; exact on
    the schedulers `steer.partial_run.resumable` names; others sample each window whole). The chosen window is the one whose
    best relative distance is smallest among those that converged (the first window when none did): where the
    direction best reproduces the model's own prompt edit. For an appearance edit (the route chose every reader:
    the model's own prompt edit keeps the layout) the window is chosen by colour instead: the one whose samples' mean
    colour (`mean_colours`) comes closest to the positives' own at some grid strength. The latent distance weighs
    shape and colour alike and preferred the first half for red by 0.02, whose samples are darker than the model's
    own red (the benchmark's red read red 0.76 at 1.0 over the first half, 0.85 over the whole run, which the colour
    picks; docs/steering.md, "The window of an appearance edit by colour"). A decode that overflows (any non-finite
    colour) leaves the choice to the distance and records no colours.

    Args:
        windows: the candidate ``(start, end)`` shares of the run, in order of preference on a tie.
        grid: the strengths tried for every window (default `WINDOW_CHOICE_GRID`).
        Others: as for `calibrate`.

    Returns:
        The index of the chosen window and every window's `Calibration` (each with its ``window``; the chosen one's
        ``unet_rows`` count the whole choice, and ``branched_at`` the step the windows' runs were split at, if they were).
    """
    if not windows:
        raise ValueError("calibrate_windows needs at least one candidate window")
    windows = [tuple(float(x) for x in w) for w in windows]
    args = (pipe, vector, positive, negative, windows, num_samples, grid, seed, num_inference_steps, guidance_scale, steering, choose_route)
    branch = branch_step(pipe, windows, num_inference_steps)
    results = _branched_sweeps(*args, branch, batch_size=batch_size) if branch is not None else _sweeps(*args, batch_size=batch_size)
    converged = [i for i, r in enumerate(results) if r.converged] or [0]
    chosen, by = min(converged, key=lambda i: results[i].distance), "distance"
    if not all(all(map(math.isfinite, r.colour_distances or [])) for r in results):  # a decode overflowed: no verdict,
        for r in results:  # and no NaN recorded in the direction's metadata
            r.colour_distances = None
    by_colour = [min(results[i].colour_distances) for i in converged if results[i].colour_distances]
    if len(by_colour) == len(converged) > 1:  # an appearance edit
        chosen, by = converged[by_colour.index(min(by_colour))], "colour"
        for r in results:
            _strength_by_colour(r)
    results[chosen].unet_rows = sum(r.unet_rows for r in results)
    results[chosen].chosen_by = by
    _warn(results[chosen])
    return chosen, results


_MARGIN_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("steer_margin_full_edit", default=False)


@contextlib.contextmanager
def margin_full_edit() -> Iterator[None]:
    """Inside the block (this thread or task only) every calibration's full edit is `MARGIN` x the latent minimum, an
    appearance edit's too (as before session 39). Two-sided sliders learned inside it until session 40, when their
    flips, fitted over an appearance edit's own windows, held with the colour's full edit (docs/steering.md "Session
    40"); it stays for learning directions comparable with files from before."""
    token = _MARGIN_ONLY.set(True)
    try:
        yield
    finally:
        _MARGIN_ONLY.reset(token)


def _strength_by_colour(result: Calibration) -> None:
    """An appearance edit's full edit: the strength where its samples' mean colour comes closest to the positives' own
    (the colour curve's minimum, refined as the latent one is), where that lies inside the grid's reach; else it
    stays `MARGIN` x the latent minimum. The latent distance weighs layout and colour alike and its minimum hedges, so
    the margin was fitted; the colour's does not hedge: on the demo model the margin overshot every colour but blue by
    13-28 % (red peaked at 0.75 and darkened by 1.0; cyan changed garments' class; docs/steering.md "Session 39")."""
    if not result.colour_distances or _MARGIN_ONLY.get():
        return
    strength, _ = curve_minimum([0.0, *result.grid], [1.0, *result.colour_distances])
    if strength > 0:
        result.strength, result.strength_by = strength, "colour"


def _appearance_colours(pipe, route: dict[str, Any] | None, z_pos: torch.Tensor, z_open: torch.Tensor, windows: int,
                        batch_size: int | None, vae: torch.nn.Module):
    """What `_calibration` compares colours with where several windows are chosen between for an appearance edit
    (the route chose every reader), else None."""
    if windows < 2 or route is None or route.get("readers") is not None:
        return None
    return (pipe, mean_colours(pipe, z_pos, batch_size, vae), mean_colours(pipe, z_open, batch_size, vae), tuple(z_pos.shape[1:]),
            batch_size, vae)


def branch_step(pipe, windows: Sequence[tuple[float, float]], num_inference_steps: int) -> int | None:
    """The step where the runs of two candidate windows can be split (`calibrate_windows`), or None: two windows
    from the start of the run, the second to its end, the first ending inside it, on a resumable scheduler."""
    if len(windows) != 2 or not resumable(pipe.scheduler):
        return None
    (start_a, end_a), (start_b, end_b) = windows
    if start_a != 0 or start_b != 0 or end_b != 1:
        return None
    length = run_length(pipe, num_inference_steps)  # the denoiser calls the window is a share of
    stop = window_bounds((start_a, end_a), length)[1]
    return stop if 0 < stop < length else None


def calibration_sets(positive: Sequence[str], negative: Sequence[str], num_samples: int) -> tuple[list[str], list[str]]:
    """The positive and negative prompts of the calibration's ``num_samples`` seeds (each set cycled)."""
    return [positive[i % len(positive)] for i in range(num_samples)], [negative[i % len(negative)] for i in range(num_samples)]


def _prepare(pipe, positive, negative, num_samples, seed, num_inference_steps, guidance_scale, steering):
    """Seeds, the cycled prompt sets, the call options every sampling call takes and the steering options."""
    seeds = [seed + i for i in range(num_samples)]
    pos, neg = calibration_sets(positive, negative, num_samples)
    # the pipeline's own call options (height, use_resolution_binning, ...) go to every call, steering_* to steered ones
    kw = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **{k: v for k, v in steering.items() if not k.startswith("steering")})
    steering = {k: v for k, v in steering.items() if k.startswith("steering")}
    return seeds, pos, neg, kw, steering


def _choose_route(pipe, z_pos: torch.Tensor, z_open: torch.Tensor, steering: dict[str, Any],
                  vae: torch.nn.Module | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``readers="auto"``: the route from the model's own prompt edit, and the steering options with it."""
    structure = structure_kept(pipe, z_pos, z_open, vae=vae)
    readers = list(LAYOUT_READERS) if structure < LAYOUT_EDIT_BELOW else None
    return {"structure": structure, "readers": readers}, {**steering, "steering_readers": readers}


def _route_and_colours(pipe, z_pos: torch.Tensor, z_open: torch.Tensor, steering: dict[str, Any], windows: int,
                       batch_size: int | None) -> tuple[dict[str, Any], dict[str, Any], tuple | None]:
    """``readers="auto"``: the route, the steering options with it, and an appearance edit's colours
    (`_appearance_colours`), decoded with one `codec_vae` (a float32 copy where the pipeline upcasts its VAE)."""
    vae = codec_vae(pipe)
    route, steering = _choose_route(pipe, z_pos, z_open, steering, vae)
    return route, steering, _appearance_colours(pipe, route, z_pos, z_open, windows, batch_size, vae)


def _calibration(grid: list[float], z: torch.Tensor, z_pos: torch.Tensor, start: float, rows: int, window, route,
                 colours: tuple[Any, torch.Tensor, torch.Tensor, tuple[int, ...], int | None, Any] | None = None) -> Calibration:
    """A window's result from its steered samples ``z`` (grid, samples, features) against the positives' own ``z_pos``,
    relative to the unsteered distance ``start``; with ``colours`` (pipe, the positives' and the unsteered samples'
    `mean_colours`, the latent shape, the decode batch size and the `codec_vae`: an appearance edit's), the colour
    distance curve too."""
    distances = [1.0, *(float((zg - z_pos).norm(dim=1).mean()) / start for zg in z)]
    best, distance = curve_minimum([0.0, *grid], distances)
    converged = best > 0
    if not converged:  # no strength brings the open samples closer to the positives' own samples
        best = grid[len(grid) // 2]
    result = Calibration(MARGIN * best, best, distance, converged, grid, distances[1:], rows,
                         None if window is None else [float(w) for w in window], route)
    if colours is not None:
        pipe, pos_colours, open_colours, shape, batch_size, vae = colours
        result.colour_distances = relative_colour_distances(pipe, z.reshape(len(z), -1, *shape), pos_colours, open_colours, batch_size, vae)
    return result


def _sweeps(
    pipe, vector, positive: Sequence[str], negative: Sequence[str], windows: list[tuple[float, float] | None],
    num_samples: int, grid: Sequence[float], seed: int, num_inference_steps: int, guidance_scale: float, steering: dict[str, Any],
    choose_route: bool = False, batch_size: int | None = None,
) -> list[Calibration]:
    """One calibration per window (None: the vector's own), sharing the positives' and the unsteered open samples."""
    grid = check_grid(grid)
    seeds, pos, neg, kw, steering = _prepare(pipe, positive, negative, num_samples, seed, num_inference_steps, guidance_scale, steering)
    rows_per_set = num_samples * run_length(pipe, num_inference_steps) * rows_per_sample(pipe, **kw)
    opened = open_prompts(pos, neg)
    z_pos = sample_latents(pipe, pos, seeds, flat=False, batch_size=batch_size, **kw)
    # open samples (the attribute left to the model), steered at 0 (first window only) and along the grid in one
    # batched call per window
    start, results, route = None, [], None
    colours = None
    if choose_route:  # the unsteered open samples first: the route is chosen from the model's own prompt edit
        z_open = sample_latents(pipe, opened, seeds, flat=False, batch_size=batch_size, **kw)
        route, steering, colours = _route_and_colours(pipe, z_pos, z_open, steering, len(windows), batch_size)
        start = float((z_open.flatten(1) - z_pos.flatten(1)).norm(dim=1).mean().clamp_min(1e-6))
    z_pos = z_pos.flatten(1)
    for window in windows:
        strengths = [*([0.0] if start is None else []), *grid]
        rows = [(p, s, g) for g in strengths for p, s in zip(opened, seeds, strict=True)]
        in_window = {} if window is None else {"steering_window": window}
        z = sample_latents(pipe, [p for p, _, _ in rows], [s for _, s, _ in rows], batch_size=batch_size, steering=vector,
                           steering_scale=[g for _, _, g in rows], **kw, **steering, **in_window)
        z = z.reshape(len(strengths), num_samples, -1)
        if start is None:
            start = float((z[0] - z_pos).norm(dim=1).mean().clamp_min(1e-6))
            z = z[1:]
        # the positives' and the unsteered open samples count once (with the first window)
        sets = len(strengths) + (0 if results else 1 + (1 if choose_route else 0))
        results.append(_calibration(grid, z, z_pos, start, sets * rows_per_set, window, route, colours))
        results[-1].open_prompts = list(dict.fromkeys(opened))
    return results


def _branched_sweeps(
    pipe, vector, positive: Sequence[str], negative: Sequence[str], windows: list[tuple[float, float]],
    num_samples: int, grid: Sequence[float], seed: int, num_inference_steps: int, guidance_scale: float, steering: dict[str, Any],
    choose_route: bool, branch: int, batch_size: int | None = None,
) -> list[Calibration]:
    """`_sweeps` for an early window ``(0, e)`` and the whole run, split at ``branch`` (the early window's end): the
    grid is sampled steered over steps ``[0, branch)`` once, then continued twice from those latents in one call,
    unsteered (the early window's samples) and steered (the whole run's)."""
    grid = check_grid(grid)
    seeds, pos, neg, kw, steering = _prepare(pipe, positive, negative, num_samples, seed, num_inference_steps, guidance_scale, steering)
    row_steps = num_samples * rows_per_sample(pipe, **kw)  # denoiser rows per sample set and step
    opened = open_prompts(pos, neg)
    z_pos = sample_latents(pipe, pos, seeds, flat=False, batch_size=batch_size, **kw)
    z_open = sample_latents(pipe, opened, seeds, flat=False, batch_size=batch_size, **kw)
    route, colours = None, None
    if choose_route:
        route, steering, colours = _route_and_colours(pipe, z_pos, z_open, steering, len(windows), batch_size)
    z_pos, z_open = z_pos.flatten(1), z_open.flatten(1)
    start = float((z_open - z_pos).norm(dim=1).mean().clamp_min(1e-6))
    prompts = [p for _ in grid for p in opened]
    row_seeds = [s for _ in grid for s in seeds]
    scales = [g for g in grid for _ in seeds]
    tail = sample_branched(pipe, prompts, row_seeds, branch, scales, [[0.0] * len(scales), scales], batch_size,
                           steering=vector, **kw, **steering).reshape(2, len(grid), num_samples, -1)
    length = run_length(pipe, num_inference_steps)
    head_rows, tail_rows = len(grid) * branch * row_steps, len(grid) * (length - branch) * row_steps
    results = []
    for i, window in enumerate(windows):
        # the positives', the unsteered open and the shared first-part samples count with the first window
        rows = tail_rows + (2 * length * row_steps + head_rows if i == 0 else 0)
        results.append(_calibration(grid, tail[i], z_pos, start, rows, window, route, colours))
        results[-1].branched_at = branch
        results[-1].open_prompts = list(dict.fromkeys(opened))
    return results


def sample_branched(
    pipe, prompts: Sequence[str], seeds: Sequence[int], branch: int, scales: Sequence[Any], continuations: Sequence[Sequence[Any]],
    batch_size: int | None = None, **call_kwargs: Any,
) -> torch.Tensor:
    """Final latents of runs that share their first ``branch`` steps: ``prompts`` (one seed each) sampled over steps
    ``[0, branch)`` steered at ``scales`` (one entry per image), then every image continued from those latents once
    per entry of ``continuations`` (per-image scales for the rest of the run), in batches of ``batch_size`` images.
    Both parts steer over all of their steps (a window is a share of the part, not of the run); a multistep solver's
    history, and each image's generator state where the sampler draws noise, is handed from the first part's calls to
    the continuing ones (`steer.partial_run.SolverCarry`).
    ``call_kwargs`` (with ``num_inference_steps``) go to every call. Returns (len(continuations), images, features)."""
    copies = len(continuations)
    carry = SolverCarry()
    head = sample_latents(partial_pipeline(pipe, 0, branch, carry), prompts, seeds, flat=False, raw=True, batch_size=batch_size,
                          steering_scale=list(scales), steering_window=(0.0, 1.0), **call_kwargs)
    carry.repeat(copies, batch_size)
    tail = sample_latents(partial_pipeline(pipe, branch, None, carry), list(prompts) * copies, list(seeds) * copies, batch_size=batch_size,
                          latents=torch.cat([head] * copies), steering_scale=[s for scales_ in continuations for s in scales_],
                          steering_window=(0.0, 1.0), **call_kwargs)
    return tail.reshape(copies, len(prompts), -1)


def check_grid(grid: Any, what: str = "the calibration grid") -> list[float]:
    """The calibration grid (or ``what`` else: a fit's) as ascending floats, or a one-line ValueError: it must hold
    positive, finite strengths, each once."""
    try:
        values = sorted(float(g) for g in grid)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of positive strengths, got {str(grid)[:80]}") from None
    if not values or not all(0 < g < math.inf for g in values):
        raise ValueError(f"{what} must hold positive, finite strengths, got {values[:8]}")
    if repeated := sorted({a for a, b in zip(values, values[1:], strict=False) if a == b}):  # the curve's fit divided by their gap
        raise ValueError(f"{what} repeats the strength {repeated[0]:g}: give each once")
    return values


def _warn(result: Calibration) -> None:
    """The calibration's advice as a warning: it did not converge, or converged to a poor fit."""
    if not result.converged:
        warnings.warn(
            f"calibration: no strength in {result.grid} moved open samples toward the positive prompts' samples (relative "
            f"distances {[round(d, 3) for d in result.distances]}); using {result.closest} x {MARGIN}. Check that the prompts differ "
            "in an attribute the model renders, or pass calibrate=False and choose the scale yourself",
            stacklevel=4,
        )
    for advice in (fit_advice(result.to_dict()), route_advice(result.route)):  # None unless there is something to say
        if advice:
            warnings.warn(advice, stacklevel=4)


def route_advice(route: Mapping[str, Any] | None) -> str | None:
    """One line when the route choice (`Calibration.route`) was a close call, else None."""
    if not isinstance(route, Mapping) or not isinstance(route.get("structure"), int | float):
        return None
    structure = float(route["structure"])
    if abs(structure - LAYOUT_EDIT_BELOW) >= LAYOUT_CLOSE:
        return None
    chosen = "read by the layout blocks only (a layout edit)" if route.get("readers") else "read by every cross-attention (an appearance edit)"
    return (f"calibration: the positive prompts' own samples keep {structure:.2f} of the open prompts' layout, close to the "
            f"{LAYOUT_EDIT_BELOW:g} line, so the direction is {chosen} by a narrow margin; pass readers='all' or "
            "readers='layout' to choose")


def calibrated_for(metadata: Mapping[str, Any]) -> str | None:
    """What a calibrated direction's scale 1.0 was calibrated for, in words ("guidance 5, 20 steps, sampler ddim, no
    negative prompt"), from its ``metadata["sampling"]``; None for a direction without a calibration or a record of it."""
    sampling, calibration = metadata.get("sampling"), metadata.get("calibration")
    if not isinstance(sampling, Mapping) or not isinstance(calibration, Mapping):
        return None
    parts = []
    if isinstance(sampling.get("guidance_scale"), int | float):
        parts.append(f"guidance {sampling['guidance_scale']:g}")
    if isinstance(sampling.get("num_inference_steps"), int):
        parts.append(f"{sampling['num_inference_steps']} steps")
    if isinstance(sampling.get("sampler"), str):
        parts.append(f"sampler {sampling['sampler']}")
    if isinstance(sampling.get("height"), int) and isinstance(sampling.get("width"), int):
        parts.append(f"{sampling['width']}x{sampling['height']} pixels")
    negative = sampling.get("negative_prompt")
    parts.append(f"negative prompt {negative[:80]!r}" if isinstance(negative, str) and negative else "no negative prompt")
    return ", ".join(parts)


def full_edit_scale(metadata: Mapping[str, Any]) -> float | None:
    """The ``steering_scale`` of a calibrated direction's full edit: 1.0, or ``1 / scaled`` for one scaled since its
    calibration (``2 * v`` records ``calibration.scaled = 2``: its full edit is at 0.5); None without a calibration
    or for a direction scaled by 0."""
    calibration = metadata.get("calibration")
    if not isinstance(calibration, Mapping) or not isinstance(calibration.get("strength"), int | float):
        return None
    scaled = calibration.get("scaled", 1.0)
    if not isinstance(scaled, int | float) or not math.isfinite(scaled) or scaled == 0:
        return None
    return 1.0 / scaled


def fit_advice(calibration: Mapping[str, Any] | None) -> str | None:
    """One line for the user when a calibration (`Calibration.to_dict`, as recorded in a vector's metadata) says the
    direction does not reproduce the prompt edit it was learned from; None when it does (or there is none)."""
    if not isinstance(calibration, Mapping) or not calibration.get("converged"):
        return None
    distance = calibration.get("distance")
    if not isinstance(distance, int | float) or not distance > POOR_DISTANCE:
        return None
    return (
        f"calibration: at its best strength this direction brings open samples only to {distance:.2f} of their "
        f"unsteered distance from the positive prompts' own samples (directions that edit stay below {POOR_DISTANCE}), so "
        "it will not reliably make the edit. Contrast the positives with the same prompts with the attribute left open "
        "(\"a blue sneaker\" vs \"a sneaker\") rather than with other values of it"
    )


def curve_minimum(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """The minimum of a sampled curve, refined by the parabola through the best point and its two neighbours."""
    i = min(range(len(ys)), key=ys.__getitem__)
    if 0 < i < len(xs) - 1:
        (x0, x1, x2), (y0, y1, y2) = xs[i - 1 : i + 2], ys[i - 1 : i + 2]
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
        if a > 0:
            x = min(max(-b / (2 * a), x0), x2)
            c = y1 - a * x1 * x1 - b * x1
            return x, a * x * x + b * x + c
    return xs[i], ys[i]
