"""How a direction's rows lay over the run, and what a sum of two directions records: step buckets, windows as
whole buckets, the token positions both parts leave alone, their joint recommended settings. Shared by
`steer.vectors` (arithmetic) and `steer.engine` (applying directions); it imports neither."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch

from steer.config import PAPER_WINDOW

if TYPE_CHECKING:
    from steer.vectors import SteeringVector


def shared_fixed_tokens(vectors: Iterable[SteeringVector], site: str) -> int:
    """Leading token positions at ``site`` that every vector acting there leaves alone (metadata ``fixed_tokens``; 0
    for a vector without it, as files from before it steered every position)."""
    return min(((v.metadata.get("fixed_tokens") or {}).get(site, 0) for v in vectors if site in v.directions), default=0)


# How finely a sum of directions with different windows may divide the run (one direction row per share).
MAX_COMBINED_BUCKETS = 1000


def joint_recommendation(a: SteeringVector, b: SteeringVector) -> tuple[dict[str, Any] | None, tuple[Any, Any], int]:
    """What the sum of ``a`` and ``b`` recommends, and how its directions are laid out over the run.

    Returns ``(recommended, (window_a, window_b), buckets)``: the settings both record alike (None when neither records
    any), with the window their union's hull when theirs differ; then each part's window (None: the same for both)
    and the number of equal step buckets (the least common multiple of the parts' own and, for different windows, of
    the windows' fractions of the run, so each window is a whole number of buckets and the sum applies each part
    exactly where it applied alone, wherever a window spans at least one step). Settings they record differently,
    other than the window, are left to the built-in defaults, with a warning; the removal window and reference level
    are not carried (a sum cannot be taken away)."""
    ra, rb = a.metadata.get("recommended") or {}, b.metadata.get("recommended") or {}
    # normalize False is the built-in: recorded (a direction with its normalization applied) or not, the same
    ra, rb = ({k: v for k, v in r.items() if not (k == "normalize" and v is False)} for r in (ra, rb))
    steps = {as_step_rows(v).shape[0] for v in (*a.directions.values(), *b.directions.values())}
    buckets = math.lcm(*steps)
    if not ra and not rb:
        return None, (None, None), buckets
    agreed = {k: v for k, v in ra.items() if k not in ("window", "removal_window") and rb.get(k) == v}
    differ = sorted(k for k in (set(ra) | set(rb)) - {"window", "removal_window", "layers"} if ra.get(k) != rb.get(k))
    if differ:
        warnings.warn(f"{a.name!r} and {b.name!r} recommend different {', '.join(differ)}: their sum records only what they "
                      "share (the built-in defaults apply to the rest); passed to one call (steering=[a, b]) each keeps its own "
                      "window and route", UserWarning, stacklevel=4)
    wa, wb = (tuple(float(x) for x in (r.get("window") or PAPER_WINDOW)) for r in (ra, rb))
    if wa == wb:
        return {**agreed, "window": list(wa)}, (None, None), buckets
    fractions = [Fraction(x).limit_denominator(MAX_COMBINED_BUCKETS) for x in (*wa, *wb)]
    buckets = math.lcm(buckets, *(f.denominator for f in fractions))
    if buckets > MAX_COMBINED_BUCKETS or any(abs(float(f) - x) > 1e-9 for f, x in zip(fractions, (*wa, *wb), strict=True)):
        raise ValueError(f"cannot add {a.name!r} (window {wa}) and {b.name!r} (window {wb}) into one vector: the windows do not "
                         f"divide the run into at most {MAX_COMBINED_BUCKETS} equal shares; pass both to one call instead (steering=[a, b])")
    return {**agreed, "window": [min(wa[0], wb[0]), max(wa[1], wb[1])]}, (wa, wb), buckets


def as_step_rows(direction: torch.Tensor) -> torch.Tensor:
    """A stored direction as (S, C): a (C,) vector is one step bucket."""
    return direction[None] if direction.ndim == 1 else direction


def at_norm(rows: torch.Tensor, norm: float) -> torch.Tensor:
    """Each row of ``rows`` rescaled to length ``norm`` (zero rows stay zero): how a direction is applied under
    ``normalize`` (`steer.engine.build_layer_plans`) and how arithmetic bakes that in (`SteeringVector`)."""
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12) * norm


def in_step_buckets(direction: torch.Tensor, window: tuple[float, float] | None, buckets: int) -> torch.Tensor:
    """``direction`` as (buckets, C), each of its own buckets repeated (``buckets`` a multiple of its count); with
    ``window``, zero in the buckets outside it (its ends are whole multiples of 1 / buckets)."""
    d = as_step_rows(direction)
    d = d.repeat_interleave(buckets // d.shape[0], dim=0)
    if window is not None:
        first, stop = (round(w * buckets) for w in window)
        keep = torch.zeros(buckets, 1, dtype=d.dtype, device=d.device)
        keep[first:stop] = 1
        d = d * keep
    return d


def components_of(meta: dict[str, Any]) -> list[Any]:
    """A combination's parts, flattened so that chains of ``+`` / ``-`` do not nest metadata ever deeper."""
    if meta.get("method") == "combination" and isinstance(meta.get("components"), list):
        return list(meta["components"])
    return [meta]
