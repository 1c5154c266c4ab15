"""Fitting a take-away: the strength and window at which one direction replaces what a prompt states along another.

"a red dress" -> bag is steered with ``[to_bag, to_dress]`` at ``[s, -min(s, 1)]`` under ``steering_negative="remove"``. The
open prompts' full edit (`steer.calibrate`) is not the strength this needs: the prompt fights the edit, and in
between the two values cancel (a colour goes dark before it turns). `fit_take_away` asks the model itself, as the
calibration does: the take-away's own positive prompts ("a red dress", ...) are rewritten with the direction's
attribute ("a red bag", ...) and sampled, unsteered, as the target; the originals are sampled from the same seeds
with the replacement at a grid of strengths, over each candidate window, in one batched call per window. The
strength and window whose samples come closest (latent L2, relative to the unsteered ones) are the fit; for an
appearance edit (one that keeps the layout: a colour replaced), those whose decoded samples' mean colour comes closest,
where the latent minimum left the garments between the two hues (``fit_by``, docs/steering.md "Session 39"), over
its own candidate windows (`APPEARANCE_WINDOWS`: the first half, or from a quarter of the run to its end).
Cost: ``(2 + len(windows) * len(grid)) * num_samples`` images at ``num_inference_steps`` with CFG (an appearance edit: 2,016 UNet rows at
the defaults); a layout edit's default windows (`WINDOWS`) on a scheduler that resumes exactly
(`steer.partial_run.resumable`) share their first half, as in `steer.calibrate.calibrate_windows`: ``(2 + 1.5 *
len(grid)) * num_samples`` images (1,584 rows).

Which direction to take away is read from the words the directions record (`suggested_take_aways`: "a red sneaker"
with to_blue states to_red's "red"), among the files beside the direction and the model's bundled ones
(`take_away_candidates`); `steer generate`, `steer batch` and the app say it (`take_away_hint`) and take it with
``auto`` (`AUTO`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steer.appearance import mean_colours, relative_colour_distances, structure_kept
from steer.calibrate import (
    LAYOUT_EDIT_BELOW,
    MARGIN,
    POOR_DISTANCE,
    branch_step,
    check_grid,
    curve_minimum,
    rows_per_sample,
    sample_branched,
    sample_latents,
)
from steer.config import (
    REMOVING,
    TAKE_AWAY_NEGATIVE,
    check_window,
    outside_steering_blocks,
    recommended_settings,
)
from steer.partial_run import run_length
from steer.recipe import recorded_path
from steer.vae_codec import codec_vae
from steer.validation import MAX_CALIBRATION_SAMPLES, MAX_STEPS, check_call_kwargs, check_int, short
from steer.word_swap import phrases_of_prompts
from steer.wording import rewrite_attribute, states

GRID = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
WINDOWS = ((0.0, 0.5), (0.0, 1.0))  # the candidate windows of a layout edit's fit (an object replaced)
# an appearance edit's (a colour replaced): the second starts once the prompt's own object is laid out, so the
# replacement can be pushed further without redrawing it (contradicting red 0.71 -> 0.99, docs/steering.md "Session 40")
APPEARANCE_WINDOWS = ((0.0, 0.5), (0.25, 1.0))
FIT_STEPS = 12  # sampling steps of a fit by default
FIT_BY = ("auto", "distance")  # fit_take_away(fit_by=...): by colour for an appearance edit, else distance; distance alone


@dataclass
class TakeAwayFit:
    """The outcome of `fit_take_away`: call with ``steering=[vector, away], **fit.options()`` (``steering_scale=
    fit.scales``, ``steering_negative=fit.negative``, ``steering_window=fit.window``)."""

    strength: float
    window: tuple[float, float]
    distance: float  # relative to the unsteered sources (1 = no closer to the rewritten prompts' samples)
    converged: bool
    grid: list[float]
    distances: dict[str, list[float]]  # per window ("start,end"), along the grid
    prompts: list[tuple[str, str]]  # (source, rewritten target) pairs that were sampled
    unet_rows: int
    chosen_by: str = "distance"  # what chose the window and strength: "colour" (an appearance edit's) or "distance"
    # the share of the layout the edit keeps (`_appearance`; None where it was not read), and, where the fit was
    # by colour, each window's relative colour distance along the grid ("start,end" -> curve)
    structure: float | None = None
    colour_distances: dict[str, list[float]] | None = None
    negative: str = "remove"  # the steering_negative the fit sampled under ("replace": with the word swap)

    @property
    def scales(self) -> list[float]:
        """``[strength, -amount]`` as the fit sampled them: the prompt's excess along ``away`` is all removed (amount
        1) from strength 1 on, in proportion below it."""
        return pair_scales(self.strength)

    def options(self) -> dict[str, Any]:
        """The ``steering_*`` options of a call with ``steering=[vector, away]`` at this fit."""
        return {"steering_scale": self.scales, "steering_negative": self.negative, "steering_window": self.window}

    def advice(self) -> str | None:
        """One line for the user when the fit itself says the pair may not flip at it; None when it does not.

        A converged fit whose samples stay far from the rewritten prompts' own (relative distance above
        `steer.calibrate.POOR_DISTANCE`: the two directions do not reach what the model draws for the rewritten prompt,
        e.g. red -> orange on the demo model, 0.98), or whose closest strength is the top of the grid (more may be
        closer)."""
        if not self.converged:
            return None  # fit_take_away warned already: the strength is a guess
        source, target = self.prompts[0] if self.prompts else ("the prompts", "the rewritten ones")
        if self.distance > POOR_DISTANCE:
            return (
                f"take-away fit: at its best setting the samples come only to {self.distance:.2f} of their unsteered "
                f"distance from the rewritten prompts' own ({source!r} -> {target!r}; above {POOR_DISTANCE}, the line "
                "past which learned directions barely edit), so this pair may not flip: check a strength strip"
            )
        if self.strength >= self.grid[-1] - 1e-6:
            return (
                f"take-away fit: the closest strength is the largest tried ({self.grid[-1]:g}); a stronger one may be "
                "closer still: check a strength strip above it"
            )
        return None

    def window_note(self) -> str:
        """What the reports add after the fit's distance: how an appearance edit's fit was chosen ("" by distance)."""
        return "; an appearance edit, fitted by the samples' colour" if self.chosen_by == "colour" else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "strength": round(self.strength, 4), "window": list(self.window), "distance": round(self.distance, 4),
            "converged": self.converged, "grid": self.grid,
            "distances": {k: [round(x, 4) for x in v] for k, v in self.distances.items()},
            "prompts": [list(p) for p in self.prompts], "unet_rows": self.unet_rows, "chosen_by": self.chosen_by, "negative": self.negative,
            **({} if self.structure is None else {"structure": round(self.structure, 4)}),
            **({} if self.colour_distances is None else {"colour_distances": {k: [round(x, 4) for x in v] for k, v in self.colour_distances.items()}}),
        }


def pair_scales(strength: float) -> list[float]:
    """``[strength, -min(strength, 1)]``: the direction at ``strength``, the take-away's excess removed with it (all of
    it from 1 on; under ``steering_negative="remove"``)."""
    return [float(strength), -min(float(strength), 1.0)]


def take_away_record(away, path: Any, scale: float | None, fit: TakeAwayFit | None = None) -> dict[str, Any]:
    """A take-away's entry in an image's recipe, as `steer generate` and `steer batch` write it: its name, hash and
    file, the amount removed at the direction's ``scale`` (None without a scale), and the ``fit`` its strength and
    window came from, if any."""
    amount = -pair_scales(scale)[1] if scale is not None else None
    entry = {"name": away.name, "hash": away.digest(), "path": recorded_path(path), "amount": amount}
    if fit is not None:
        entry["fit"] = {"strength": round(fit.strength, 4), "window": list(fit.window), "distance": round(fit.distance, 4)}
    return entry


def recorded_prompts(vector, which: str, fitting: str = "a take-away") -> list[str]:
    """The ``which`` ("positive" / "negative") prompts a direction was learned from, as its metadata records them;
    one-line `ValueError` naming what is being fitted (``fitting``) when it records none."""
    found = vector.metadata.get(which)
    prompts = found.get("prompts") if isinstance(found, dict) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(
            f"direction {vector.name!r} records no {which} prompts: fitting {fitting} needs directions learned from "
            "prompts (pick the strength yourself)"
        )
    return list(prompts)


def suggested_take_aways(vector, prompt: str, candidates: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """What to take away when ``vector`` is added to ``prompt``: the ``candidates`` (name -> one-sided direction) that
    edit the same attribute as ``vector`` (learned from prompts whose open forms share one with ``vector``'s: "a
    t-shirt" for to_red and to_blue; "a red item" for to_dress and to_bag) and whose phrase ``prompt`` states ("a red
    sneaker" states to_red's "red"), as ``(name, the phrases stated)`` in ``candidates`` order; [] where the prompt
    states ``vector``'s own phrase, where ``vector`` is a slider (it turns such prompts itself) or records no prompts.
    Adding blue to "a red sneaker" alone mostly fights the prompt (docs/steering.md, "Contradicting prompts"); with
    the suggestion taken away (and `fit_take_away`) it replaces it."""
    for name, item in (("the direction", vector), *((repr(k), v) for k, v in candidates.items())):
        if not hasattr(item, "metadata") or not hasattr(item, "opposite"):
            raise TypeError(f"suggested_take_aways reads directions (SteeringVector; pipe.load_direction(...) reads a file "
                            f"or bundled name), got {type(item).__name__} for {name[:80]}")
    own = _prompted(vector)
    if own is None or vector.opposite is not None or states(prompt, own[0]):
        return []
    found = []
    for name, candidate in candidates.items():
        other = _prompted(candidate)
        if (other is None or candidate.opposite is not None or candidate.digest() == vector.digest()
                or not other[1] & own[1] or not states(prompt, other[0])):
            continue
        found.append((name, [p for p in other[0] if states(prompt, [p])]))
    return found


MAX_SAMPLES = MAX_CALIBRATION_SAMPLES  # num_samples of a fit (as `learn_direction`'s calibration_samples)
FOLDER_CANDIDATES = 64  # at most this many files of a direction's own folder are read as take-away candidates
CANDIDATE_BYTES = 64 * 2**20  # larger files beside a direction (a model checkpoint) are not read as candidates
ITSELF = ("the take-away is the direction itself: take away the one the prompt names (for 'a red sneaker' -> blue, add "
          "to_blue and take away to_red)")
AUTO = "auto"  # `steer generate --take-away auto`, a batch job's "take_away": "auto": the first suggested one


def take_away_candidates(path: str | os.PathLike | None, bundled: Mapping[str, str | os.PathLike],
                         load: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    """The directions to look among for `suggested_take_aways` when the direction read from ``path`` is added: the
    other ``.safetensors`` files of its folder first (learned alongside it; at most `FOLDER_CANDIDATES`, named by
    their path), then the model's ``bundled`` ones (by name). ``load`` reads a file (default `SteeringVector.load`; a
    cache in `steer batch`); a file that is no direction is simply left out, one over `CANDIDATE_BYTES` (a model
    checkpoint kept beside the direction) is not read."""
    from steer.vectors import SteeringVector

    load = load or SteeringVector.load
    own = Path(path).resolve() if path is not None else None
    files: dict[str, Path] = {}
    if own is not None and own.parent.is_dir() and own.parent not in {Path(p).resolve().parent for p in bundled.values()}:
        files.update((str(other), other) for other in sorted(own.parent.glob("*.safetensors"))[:FOLDER_CANDIDATES])
    files.update((name, Path(p)) for name, p in bundled.items())
    found = {}
    for name, file in files.items():
        try:
            if file.resolve() == own or file.stat().st_size > CANDIDATE_BYTES:
                continue
            found[name] = load(file.resolve())
        except Exception:  # noqa: BLE001 - a file that is no direction is simply no candidate
            continue
    return found


def take_away_hint(prompt: str, vector, found: Sequence[tuple[str, list[str]]]) -> str:
    """The sentence every surface starts its suggestion with, for `suggested_take_aways`' non-empty ``found``: "'a red
    sneaker' states 'red', which 'toward blue' replaces: alone the edit mostly fights the prompt" (a long prompt or name
    is cut: the note stays one short line)."""
    stated = ", ".join(short(p) for p in list(dict.fromkeys(p for _, phrases in found for p in phrases))[:4])
    return f"{short(prompt, 80)} states {stated}, which {short(vector.name)} replaces: alone the edit mostly fights the prompt"


_SAID_ELSEWHERE: contextvars.ContextVar[bool] = contextvars.ContextVar("steer_take_away_said_elsewhere", default=False)


@contextlib.contextmanager
def said_elsewhere() -> Iterator[None]:
    """Inside the block (this thread or task only), `pipe(...)` gives no take-away hint: the surface calling it (`steer
    generate`, `steer batch`, the app) says it in its own words."""
    token = _SAID_ELSEWHERE.set(True)
    try:
        yield
    finally:
        _SAID_ELSEWHERE.reset(token)


@functools.lru_cache(maxsize=64)
def _load_unchanged(path: str, mtime_ns: int, size: int):
    from steer.vectors import SteeringVector

    return SteeringVector.load(path)


def load_candidate(path: Path):
    """A take-away candidate read once while its file is unchanged (same modification time and size): `pipe(...)`
    looks among the same files at every call."""
    stat = path.stat()
    return _load_unchanged(str(path), stat.st_mtime_ns, stat.st_size)


def call_take_away_note(vector, path: str | os.PathLike | None, prompts: Sequence[str] | None, scales: torch.Tensor,
                        bundled: Mapping[str, str | os.PathLike]) -> str | None:
    """For a `pipe(...)` call adding one direction: the line `steer generate` prints when a row's prompt states what
    ``vector`` replaces ("a red t-shirt" with to_blue), with the Python way to take it away; None otherwise.

    Args:
        vector: the call's one direction (read from ``path`` when it was given as a file or bundled name).
        prompts: the prompt of each image row (None: a call from prompt embeddings); scales: (rows, 1) strengths,
            only rows that add the direction (> 0) are looked at.
        bundled: the model's bundled directions (name -> file), searched after the files beside ``path``.
    """
    if prompts is None or vector.opposite is not None or _SAID_ELSEWHERE.get():
        return None
    rows = scales[:, 0].expand(len(prompts)) if scales.shape[0] == 1 else scales[:, 0]
    added = list(dict.fromkeys(p for p, s in zip(prompts, rows.tolist(), strict=True) if s > 0))
    own = _prompted(vector)
    if not added or own is None:
        return None
    candidates = None
    for prompt in added:
        if states(prompt, own[0]):  # the prompt states the edit itself: nothing to take away
            continue
        candidates = candidates if candidates is not None else take_away_candidates(path, bundled, load_candidate)
        if found := suggested_take_aways(vector, prompt, candidates):
            away = found[0][0]
            return (f"{take_away_hint(prompt, vector, found)}; take it away as the edit is added: fit = "
                    f"pipe.fit_take_away(direction, {away!r}), then pipe(..., steering=[direction, {away!r}], "
                    "**fit.options())")
    return None


def _prompted(vector) -> tuple[tuple[str, ...], frozenset[tuple[str, ...]]] | None:
    """A direction's stated phrases and its open prompts (as word tuples), from the prompts it records; None for one
    learned otherwise, or whose prompts do not tell (no attribute words)."""
    try:
        positive, negative = recorded_prompts(vector, "positive"), recorded_prompts(vector, "negative")
    except (ValueError, AttributeError, TypeError):
        return None
    return phrases_of_prompts(tuple(positive), tuple(negative))


def removal_window_of(vector, away, call_kwargs: dict[str, Any]) -> tuple[float, float] | None:
    """Where a call with ``steering=[vector, away]`` removes ``away``: the call's ``steering_removal_window``, else
    the one the two directions recommend (``away``'s own where they differ); None: over the call's window."""
    given = call_kwargs.get("steering_removal_window")
    if given is None:
        given = recommended_settings([vector, away]).get("steering_removal_window")
    if given is None or len(given) == 0:
        return None
    if not isinstance(given[0], int | float):  # one per vector: the removed one's
        given = given[1]
    return None if given is None else (float(given[0]), float(given[1]))


@torch.no_grad()
@outside_steering_blocks
def fit_take_away(
    pipe,
    vector,
    away,
    *,
    num_samples: int = 6,
    grid: Sequence[float] = GRID,
    windows: Sequence[tuple[float, float]] | None = None,
    seed: int = 0,
    num_inference_steps: int = FIT_STEPS,
    guidance_scale: float = 7.5,
    batch_size: int | None = 8,
    fit_by: str = "auto",
    negative: str = TAKE_AWAY_NEGATIVE,
    **call_kwargs: Any,
) -> TakeAwayFit:
    """Fit the strength and window at which ``vector`` replaces what prompts state along ``away``.

    Args:
        pipe: a `SteeringStableDiffusionPipeline` (or another steering pipeline).
        vector: the direction to add ("toward bag"); away: the direction to take away ("toward dress"). Both learned
            from prompts that differ in the attribute's words ("a red bag" vs "a red item").
        num_samples: source prompts (``away``'s positives, cycled) and seeds; grid: the strengths tried, ascending;
            windows: the candidate steering windows (None: `APPEARANCE_WINDOWS` for an edit fitted by colour, else
            `WINDOWS`).
        seed, num_inference_steps, guidance_scale: sampling settings (use the guidance you generate with: the
            strength depends on it); ``call_kwargs`` go to every call (``height=``, ``steering_branch=``...).
        batch_size: at most this many images per sampling call (None: one call per sample set); the fit is the same.
        fit_by: ``"auto"`` (default): for an appearance edit (the edit keeps the layout: the direction's recorded layout share, else the fit's own
            `structure_kept`, at least `steer.calibrate.LAYOUT_EDIT_BELOW`; a colour, not an object, is replaced), the window and strength whose
            samples' mean colour comes closest to the rewritten prompts' own; else, and with ``"distance"``, those of
            the smallest latent distance. The latent distance weighs shape and colour alike and its minimum hedges: on
            the demo model its fits left contradicting colours between the source's hue and the target's (blue ->
            orange came out green), where the colour's are further along (docs/steering.md, "Session 39"). Under
            ``negative="replace"`` an appearance edit is fitted by the latent distance over its own windows: with the
            word swapped the latent minimum no longer stops between the hues, and it keeps the shapes the colour's
            fits lost at the grid's top (contradicting colours held-out 3 -> 5 of 5; docs/steering.md "Session 41").
        negative: how the take-away acts, as the calls will (`steering_negative`): ``"replace"`` (default) removes
            ``away``'s excess and turns the word the prompt states for it into ``vector``'s (`steer.word_swap`);
            ``"remove"`` only removes, as before 2026-12-05 (the strength it needs is higher: docs/steering.md
            "Session 41").
    """
    grid = check_grid(grid, "the take-away grid")
    check_int(num_samples, "num_samples", 1, MAX_SAMPLES, optional=False)
    check_int(num_inference_steps, "num_inference_steps", 1, MAX_STEPS, optional=False)
    if fit_by not in FIT_BY:
        raise ValueError(f"fit_by= is one of {', '.join(map(repr, FIT_BY))}, got {short(fit_by)}")
    if negative not in REMOVING:
        raise ValueError(f"negative= is one of {', '.join(map(repr, REMOVING))}, got {short(negative)}")
    if away is vector or away.digest() == vector.digest():
        raise ValueError(ITSELF)
    if windows is not None and not windows:
        raise ValueError("give at least one candidate window")
    if windows is not None and isinstance(windows[0], int | float):  # windows=(0, 1): one window, not a list of them
        one = ", ".join(short(w) for w in list(windows)[:2])
        raise ValueError(f"windows= is a list of candidate windows (windows=[({one})]), not one window")
    fixed = sorted(k for k in ("steering", "steering_scale", "steering_window", "steering_negative") if k in call_kwargs)
    if fixed:
        raise ValueError(f"fit_take_away sets {', '.join(fixed)} itself (the candidate windows are windows=)")
    check_call_kwargs(pipe, call_kwargs, fit_take_away)
    given = None if windows is None else [check_window(w, "each of windows=") for w in windows]
    grid = [g * margin_units(vector) for g in grid]
    positives, negatives = recorded_prompts(away, "positive"), recorded_prompts(away, "negative")
    like, like_negatives = recorded_prompts(vector, "positive")[0], recorded_prompts(vector, "negative")
    sources = [positives[i % len(positives)] for i in range(num_samples)]
    pairs = [(p, rewrite_attribute(p, negatives, like, like_negatives)) for p in sources]
    seeds = [seed + i for i in range(num_samples)]
    kw = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **call_kwargs)
    z_target = sample_latents(pipe, [t for _, t in pairs], seeds, flat=False, batch_size=batch_size, **kw)
    z_source = sample_latents(pipe, sources, seeds, flat=False, batch_size=batch_size, **kw)
    start = float((z_source.flatten(1) - z_target.flatten(1)).norm(dim=1).mean().clamp_min(1e-6))
    swap = negative == "replace"  # the word swapped: an appearance edit is fitted by the latent distance (docstring)
    structure, colours = _appearance(pipe, vector, z_target, z_source, batch_size, not swap) if fit_by == "auto" else (None, None)
    appearance = colours is not None or (swap and structure is not None and structure >= LAYOUT_EDIT_BELOW)
    windows = given if given is not None else list(APPEARANCE_WINDOWS if appearance else WINDOWS)
    samples, set_steps = _steered_samples(pipe, vector, away, sources, seeds, grid, windows, batch_size, kw, negative)
    distances: dict[str, list[float]] = {}
    colour_distances: dict[str, list[float]] = {}
    for window, z in zip(windows, samples, strict=True):
        key = f"{window[0]:g},{window[1]:g}"
        if colours is not None:
            colour_distances[key] = relative_colour_distances(pipe, z.reshape(len(grid), num_samples, *z_target.shape[1:]), *colours)
        z = z.reshape(len(grid), num_samples, -1)
        distances[key] = [float((zg - z_target.flatten(1)).norm(dim=1).mean()) / start for zg in z]
    chosen, strength, by = _chosen_fit(grid, list(distances.values()), list(colour_distances.values()))
    window = windows[chosen]
    distance = float(np.interp(strength, [0.0, *grid], [1.0, *distances[f"{window[0]:g},{window[1]:g}"]]))
    converged = strength > 0
    if not converged:
        strength = grid[len(grid) // 2]
        warnings.warn(
            f"take-away fit: no strength in {grid} brought {vector.name!r} with {away.name!r} taken away closer to the "
            f"rewritten prompts' samples; using {strength}", stacklevel=2,
        )
    unet_rows = (2 * run_length(pipe, num_inference_steps) + set_steps) * num_samples * rows_per_sample(pipe, **kw)
    fit = TakeAwayFit(strength, window, distance, converged, grid, distances, pairs, unet_rows, by, structure,
                      colour_distances if by == "colour" else None, negative)
    advice = fit.advice()
    if advice:
        warnings.warn(advice, stacklevel=2)
    return fit


def margin_units(vector) -> float:
    """What the take-away grid is multiplied by for ``vector``: where its full edit is its colour minimum
    (``metadata["calibration"]["strength_by"] == "colour"``), the margin's full edit over it (`MARGIN` x the latent
    minimum / the strength: 1.1-1.4 on the demo model's colours), so a fit samples the same added strengths as for the
    margin's full edit that the grid was set on; else 1. A direction only its take-away fit reaches further with
    (contradicting cyan fell 0.90 -> 0.68 at the grid's top; docs/steering.md "Session 39")."""
    calibration = vector.metadata.get("calibration")
    if not isinstance(calibration, Mapping) or calibration.get("strength_by") != "colour":
        return 1.0
    closest, strength = calibration.get("closest"), calibration.get("strength")
    ok = all(isinstance(x, int | float) and math.isfinite(x) and x > 0 for x in (closest, strength))
    return MARGIN * float(closest) / float(strength) if ok else 1.0


def _recorded_structure(vector) -> float | None:
    """The share of the layout ``vector``'s own prompt edit keeps, where its calibration chose a route and measured it
    (``metadata["route_choice"]``: "a blue t-shirt" vs "a t-shirt"); None where it records none."""
    recorded = vector.metadata.get("route_choice")
    value = recorded.get("structure") if isinstance(recorded, Mapping) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _appearance(pipe, vector, z_target: torch.Tensor, z_source: torch.Tensor, batch_size: int | None, colours: bool = True
                ) -> tuple[float | None, tuple[torch.Tensor, torch.Tensor, int | None, Any] | None]:
    """``fit_by="auto"``: the share of the layout the edit keeps and, for an appearance edit whose samples decode to
    finite values, what `relative_colour_distances` compares with (the rewritten prompts' and the sources'
    `mean_colours`) and decodes by (None for a layout edit: the latent distance fits it); (None, None) for latents that
    are no image grid (Flux packs its latents). The share is the direction's own record (`_recorded_structure`) first,
    else `structure_kept` between the rewritten prompts' samples and the sources' (same seeds): two classes of one
    silhouette (a pullover and a coat) keep the layout between themselves, yet their colours say nothing of the edit.
    The VAE copy (`codec_vae`) is made only where something is decoded; ``colours=False``: the share alone."""
    if z_target.dim() != 4:
        return None, None
    structure, vae = _recorded_structure(vector), None
    if structure is None:
        vae = codec_vae(pipe)
        structure = structure_kept(pipe, z_target, z_source, vae=vae)
    if structure < LAYOUT_EDIT_BELOW or not colours:
        return structure, None
    vae = vae if vae is not None else codec_vae(pipe)
    target, source = mean_colours(pipe, z_target, batch_size, vae), mean_colours(pipe, z_source, batch_size, vae)
    finite = bool(torch.isfinite(target).all()) and bool(torch.isfinite(source).all())
    return structure, ((target, source, batch_size, vae) if finite else None)


def _chosen_fit(grid: Sequence[float], distances: Sequence[Sequence[float]],
                colour_distances: Sequence[Sequence[float]]) -> tuple[int, float, str]:
    """The chosen window's index, the strength and what chose them, from each window's relative distance curve along
    the grid (`curve_minimum`, unsteered = 1 at 0). By colour where every window has a finite colour curve and one
    comes closer than unsteered (an appearance edit): the window and strength of the smallest colour distance; else by
    the latent distance, among the windows with a minimum inside the grid (all where none has; strength 0 then: not
    converged). The first window on a tie."""
    def minima(curves: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
        return [curve_minimum([0.0, *grid], [1.0, *curve]) for curve in curves]

    if len(colour_distances) == len(distances) and all(math.isfinite(x) for curve in colour_distances for x in curve):
        by_colour = minima(colour_distances)
        closer = [i for i, (strength, _) in enumerate(by_colour) if strength > 0]
        if closer:
            i = min(closer, key=lambda i: by_colour[i][1])
            return i, by_colour[i][0], "colour"
    by_distance = minima(distances)
    converged = [i for i, (strength, _) in enumerate(by_distance) if strength > 0] or list(range(len(by_distance)))
    i = min(converged, key=lambda i: by_distance[i][1])
    return i, by_distance[i][0], "distance"


def _steered_samples(pipe, vector, away, sources: list[str], seeds: list[int], grid: list[float], windows: list[tuple[float, float]],
                     batch_size: int | None, kw: dict[str, Any], negative: str = TAKE_AWAY_NEGATIVE) -> tuple[list[torch.Tensor], int]:
    """Each window's sources steered along the grid (rows: grid-major), and the steps sampled per source (for the
    cost). An early window ``(0, e)`` and the whole run, with the removal over the call's window or the whole run,
    share the first part of their runs where the scheduler resumes exactly (`steer.partial_run`): it is sampled once
    and continued twice, without the addition (and without the removal where it follows the window) and with both."""
    num_inference_steps = int(kw["num_inference_steps"])
    steps = run_length(pipe, num_inference_steps)  # denoiser calls per run
    prompts = [p for _ in grid for p in sources]
    row_seeds = [s for _ in grid for s in seeds]
    scales = [pair_scales(g) for g in grid for _ in seeds]
    steer = dict(steering=[vector, away], steering_negative=negative)
    removal = removal_window_of(vector, away, kw)
    branch = branch_step(pipe, windows, num_inference_steps) if removal in (None, (0.0, 1.0)) else None
    if branch is None:
        runs = [sample_latents(pipe, prompts, row_seeds, batch_size=batch_size, steering_scale=scales, steering_window=w, **steer, **kw)
                for w in windows]
        return runs, len(windows) * len(grid) * steps
    kept = 0.0 if removal is None else 1.0  # after the early window: its removal goes on only where it runs to the end
    early = [[0.0, amount * kept] for _, amount in scales]
    # both parts remove over all of their steps, as they add (the windows are shares of the part, not of the run)
    rest = {k: v for k, v in kw.items() if k != "steering_removal_window"}
    tail = sample_branched(pipe, prompts, row_seeds, branch, scales, [early, scales], batch_size,
                           steering_removal_window=(0.0, 1.0), **steer, **rest)
    return list(tail), len(grid) * branch + 2 * len(grid) * (steps - branch)
