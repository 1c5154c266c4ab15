"""Sliders (two-sided directions) in a call: each side applied where the rows' scales point, and a prompt that states
the other side flipped.

A slider's -1 is its opposite side's full edit and +1 its own (`split_sides`). On a prompt that already states the
other side ("a red t-shirt" slid toward blue) adding a side is not enough: the prompt's own words pull back (on the
demo model the slider alone flips 1 of 8 such cases). `learn_direction(..., two_sided=True)` therefore also fits, per
side, the strength and window at which it replaces the other side's attribute with that side taken away
(`steer.take_away.fit_take_away`) and records it with the words that state each side (``metadata["flip"]``); a row
whose prompt states the other side's words (and not the side's own) gets the side at ``|scale| * strength`` over the
fitted window and the other side's excess removed at ``min(|scale| * strength, 1)`` (``steering_negative="remove"``),
as `fit_take_away`'s recipe does at scale 1. A row slid toward the side its prompt already states is held: the
prompt's image is that side's full edit already, and adding the side on top over-edits (on the demo model "a red X"
slid to +1 turned brown: red on 2 of 8, against 7 of 8 unsteered). Other rows (open prompts, prompts that state both
sides), and sliders learned before the fit existed, are as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from steer.config import REMOVING, STEERING_DEFAULTS, check_window, is_per_vector, vector_branches, vector_windows
from steer.validation import short
from steer.vectors import SteeringVector
from steer.wording import states

FLIP_KEY = "flip"  # metadata: {"words": [phrases that state the side], "strength": k, "window": [start, end], ...}


def flip_of(side: SteeringVector) -> dict[str, Any] | None:
    """A slider side's recorded flip (``metadata["flip"]``) as ``{"words", "strength", "window", "negative"}`` (words:
    the phrases that state the side; negative: the ``steering_negative`` it was fitted under, "remove" for files from
    before the word swap), None where it records none; a one-line ValueError for an entry that is not one (an edited
    file)."""
    entry = side.metadata.get(FLIP_KEY)
    if entry is None:
        return None
    try:
        words = [str(w) for w in entry["words"]] if isinstance(entry["words"], list) else None
        strength = float(entry["strength"])
        window = check_window(entry["window"], "flip window")
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"direction {side.name!r}: its metadata 'flip' entry is not a flip record ({err})"[:300]) from None
    if not words or not (0 < strength < float("inf")):
        raise ValueError(f"direction {side.name!r}: its metadata 'flip' needs words and a positive finite strength")
    negative = entry.get("negative", "remove")
    if negative not in REMOVING:
        raise ValueError(f"direction {side.name!r}: its metadata 'flip' negative must be one of {REMOVING}, got {short(negative)}")
    return {"words": words, "strength": strength, "window": window, "negative": negative}


def without_flips(vector: SteeringVector) -> SteeringVector:
    """``vector`` (its tensors shared) with no flip records on either side: a slider that only adds its sides, as
    those learned with ``flip_stated=False`` (or before flips existed) do."""
    def strip(meta: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in meta.items() if k != FLIP_KEY}

    opposite = SteeringVector(vector.opposite.directions, strip(vector.opposite.metadata)) if vector.opposite is not None else None
    return SteeringVector(vector.directions, strip(vector.metadata), opposite)


def _with_window(side: SteeringVector, window: tuple[float, float]) -> SteeringVector:
    """``side`` (its tensors shared) recommending ``window``: the column that adds it over its fitted flip window."""
    recommended = {**(side.metadata.get("recommended") or {}), "window": list(window)}
    return SteeringVector(side.directions, {**side.metadata, "recommended": recommended})


def split_sides(vectors: Sequence[SteeringVector], scales: torch.Tensor, given: Mapping[str, Any],
                prompts: Sequence[str] | None = None) -> tuple[list[SteeringVector], torch.Tensor, dict[str, Any]]:
    """The call's vectors with each two-sided one (a slider, `SteeringVector.opposite`) as two: its own side at the
    rows' positive scales and its opposite at ``|scale|`` where the scale is negative (0 elsewhere), so -1 is the full
    edit toward the negatives' attribute. ``given``'s per-vector windows and branches are repeated for the opposites. With
    ``steering_negative="remove"`` a negative scale removes along the direction itself, as for a one-sided one.

    ``prompts`` (one per image row; None: prompt embeddings, nothing to read): rows whose prompt states the other side
    of a slider that records flips are flipped (module docstring): the added side is one more column over its flip
    window, the other side's column removes, and the call's ``steering_negative`` becomes the one the flips were fitted
    under (``"replace"``: the word the prompt states turned too, `steer.word_swap`; ``"remove"`` for files from before). A call that
    also subtracts a one-sided direction keeps the plain sides (subtracting and removing cannot share a call), with a
    warning. Rows slid toward the side their prompt already states (alone) are held: that side is not added again."""
    given = dict(given)
    if given.get("steering_negative", STEERING_DEFAULTS["steering_negative"]) != "subtract" or all(
            v.opposite is None for v in vectors):
        return [v.one_sided for v in vectors], scales, given
    rows = _stated_rows(vectors, scales, prompts)
    flips = any(bool(r[0].any() or r[1].any()) for r in rows.values())
    if flips and subtracts(vectors, scales):
        warnings.warn("a slider on a prompt that states its other side is flipped with that side taken away "
                      "(steering_negative='remove'), which this call's negative scale on a one-sided direction would "
                      "change: the sliders are applied without the flip", UserWarning, stacklevel=4)
        rows = {i: (torch.zeros_like(r[0]), torch.zeros_like(r[1]), r[2]) for i, r in rows.items()}
    if rows:
        scales = scales.expand(len(prompts), -1) if scales.shape[0] == 1 else scales
    out, columns, owner, fixed = [], [], [], []  # fixed: a flip column's own window (None: the call's)
    negatives = set()  # the steering_negative each flip used was fitted under
    for i, v in enumerate(vectors):
        s = scales[:, i]
        if v.opposite is None:
            out.append(v)
            columns.append(s)
            owner.append(i)
            fixed.append(None)
            continue
        none = torch.zeros_like(s, dtype=torch.bool)
        toward, away, held = rows.get(i, (none, none, none))  # rows flipped to each side; rows whose prompt has the side
        side_flip, opposite_flip = flip_of(v), flip_of(v.opposite)
        added = [torch.where(toward, s.clamp_min(0) * side_flip["strength"], 0.0) if side_flip else None,
                 torch.where(away, (-s).clamp_min(0) * opposite_flip["strength"], 0.0) if opposite_flip else None]
        plain = ~(toward | away | held)
        own = torch.where(plain, s.clamp_min(0), 0.0)
        other = torch.where(plain, (-s).clamp_min(0), 0.0)
        if added[1] is not None:  # the side the prompt states, taken away
            own = own - torch.where(away, _removal((-s).clamp_min(0), opposite_flip["strength"]), 0.0)
        if added[0] is not None:
            other = other - torch.where(toward, _removal(s.clamp_min(0), side_flip["strength"]), 0.0)
        out += [v.one_sided, v.opposite]
        columns += [own, other]
        owner += [i, i]
        fixed += [None, None]
        for side, flip, column in ((v.one_sided, side_flip, added[0]), (v.opposite, opposite_flip, added[1])):
            if column is not None and bool(column.any()):
                out.append(_with_window(side, flip["window"]))
                negatives.add(flip["negative"])
                columns.append(column)
                owner.append(i)
                fixed.append(flip["window"])
    flipped = any(w is not None for w in fixed)
    if flipped:  # with the word swap where every flip was fitted with it (one negative per call)
        given["steering_negative"] = "replace" if negatives == {"replace"} else "remove"
    branch = given.get("steering_branch")
    if vector_branches(branch, len(vectors)) is not None:  # one per direction: each side (and flip) on its slider's
        given["steering_branch"] = tuple(branch[i] for i in owner)
    for key in ("steering_window", "steering_removal_window"):
        window = given.get(key)
        if window is not None and is_per_vector(window):
            vector_windows(window, len(vectors), key)  # one line for a count that does not fit the call's directions
            given[key] = tuple(window[i] if key != "steering_window" or w is None else w for i, w in zip(owner, fixed, strict=True))
        elif window is not None and flipped and key == "steering_window":  # one window for the call: not the flips'
            given[key] = tuple(tuple(window) if w is None else w for w in fixed)
    return out, torch.stack(columns, 1), given


def _removal(scale: torch.Tensor, strength: float) -> torch.Tensor:
    """How much of the stated side a flipped row takes away at ``scale`` (its ``|scale|``) for a flip fitted at
    ``strength``: ``min(scale * strength, 1)``, `fit_take_away`'s removal at scale 1."""
    return (scale * strength).clamp_max(1.0)


def subtracts(vectors: Sequence[SteeringVector], scales: torch.Tensor) -> bool:
    """Whether a call subtracts a one-sided direction somewhere (``scales``: rows x vectors): its sliders then add
    their sides only, since a flip removes (`split_sides`)."""
    return any(v.opposite is None and bool((scales[:, i] < 0).any()) for i, v in enumerate(vectors))


def _stated_rows(vectors: Sequence[SteeringVector], scales: torch.Tensor, prompts: Sequence[str] | None
                 ) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per slider (its index in ``vectors``) that records flips and whose rows' prompts state one of its sides: the
    rows flipped toward its own side (positive scale, the prompt states the opposite's words and not its own), those
    flipped toward its opposite, and those held (slid toward the side the prompt states alone: the prompt's own image
    is that side's full edit already; adding the side on top over-edits, a red garment going brown)."""
    if prompts is None:
        return {}
    count = len(prompts)
    if scales.shape[0] not in (1, count):
        return {}
    found = {}
    for i, v in enumerate(vectors):
        if v.opposite is None:
            continue
        side, opposite = flip_of(v), flip_of(v.opposite)
        if side is None and opposite is None:
            continue
        s = scales[:, i].expand(count) if scales.shape[0] == 1 else scales[:, i]
        own = torch.tensor([side is not None and states(p, side["words"]) for p in prompts])
        other = torch.tensor([opposite is not None and states(p, opposite["words"]) for p in prompts])
        toward = (s > 0) & other & ~own & (side is not None)
        away = (s < 0) & own & ~other & (opposite is not None)
        held = ((s > 0) & own & ~other) | ((s < 0) & other & ~own)
        if bool(toward.any() or away.any() or held.any()):
            found[i] = (toward, away, held)
    return found


def stated_note(vector: SteeringVector | None, prompt: str, scales: Sequence[float]) -> str | None:
    """One line for the user on how a slider treats ``prompt`` at ``scales`` where it does more than add a side:
    turned toward one end (the prompt states the other) or held (it states the end slid toward); None otherwise."""
    if vector is None or vector.opposite is None or not scales:
        return None
    found = _stated_rows([vector], torch.tensor([[float(s)] for s in scales]), [prompt] * len(scales))
    if not found:
        return None
    toward, away, held = found[0]
    words = {1: flip_of(vector), -1: flip_of(vector.opposite)}  # a row is turned toward a side only if it records a flip

    def listed(rows: torch.Tensor) -> str:
        return ", ".join(f"{s:+g}" for s, r in zip(scales, rows.tolist(), strict=True) if r)

    parts = []
    for rows, sign in ((toward, 1), (away, -1)):
        if bool(rows.any()):
            end, stated = (" / ".join(map(repr, words[k]["words"])) for k in (sign, -sign))
            parts.append(f"at {listed(rows)} the slider turns it toward {end}, taking its {stated} away")
    if bool(held.any()):
        parts.append(f"at {listed(held)} it is slid toward the end it states already: left as the prompt draws it")
    return f"{short(prompt, 80)}: " + "; ".join(parts)
