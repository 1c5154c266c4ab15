"""The record of a window choice (``metadata["window_choice"]`` of ``learn_direction(window="auto")``): made from the
candidates' calibrations, and read back for the command line and the app."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steer.calibrate import Calibration


@dataclass(frozen=True)
class WindowChoice:
    """A recorded window choice as the user is told it: the chosen window, each candidate's relative latent distance
    to the positives' own samples and, for an appearance edit chosen by colour, each one's colour distance."""

    chosen: tuple[float, float]
    distances: list[tuple[float, float, float]]  # (start, end, relative distance) per candidate
    colours: list[float] | None  # per candidate, where the choice was by colour

    def sentence(self, separator: str = ",", digits: int = 3, limit: int = 4) -> str:
        """What was compared, in parentheses: the colour distances where the choice was by colour, then the relative
        latent distances; each window as ``start<separator>end``, at most ``limit`` candidates."""
        def window(a: float, b: float) -> str:
            return f"{a:g}{separator}{b:g}"

        tried = ", ".join(f"{window(a, b)}: {d:.{digits}f}" for a, b, d in self.distances[:limit])
        by_colour = ""
        if self.colours is not None:
            by_colour = "an appearance edit, chosen by the samples' colour: " + ", ".join(
                f"{window(a, b)}: {c:.{digits}f}" for (a, b, _), c in list(zip(self.distances, self.colours, strict=True))[:limit]) + "; "
        return f"({by_colour}relative distance to the positives' own samples {tried})"


def window_choice_record(windows: Sequence[Sequence[float]], tried: Sequence[Calibration], chosen: Sequence[float]) -> dict[str, Any]:
    """``metadata["window_choice"]`` of ``learn_direction(window="auto")``: what each candidate window came to and
    which was kept, and by what ("colour": an appearance edit's; "distance")."""
    record = {"windows": [list(w) for w in windows], "distances": [round(r.distance, 4) for r in tried],
              "strengths": [round(r.strength, 4) for r in tried], "converged": [r.converged for r in tried], "chosen": list(chosen),
              "by": next((r.chosen_by for r in tried if r.chosen_by), "distance")}
    if record["by"] == "colour":  # what the choice compared (none where the colours decided nothing)
        record["colour_distances"] = [round(min(r.colour_distances), 4) for r in tried]
    return record


def read_window_choice(metadata: Mapping[str, Any]) -> WindowChoice | None:
    """A direction's recorded window choice, or None where it has none or the record is malformed (a hand-edited
    file: the front ends then say nothing of it rather than fail)."""
    choice = metadata.get("window_choice")
    if not isinstance(choice, Mapping):
        return None
    try:
        distances = [(float(w[0]), float(w[1]), float(d)) for w, d in zip(choice["windows"], choice["distances"], strict=True)]
        start, end = (float(x) for x in choice["chosen"])
    except (TypeError, KeyError, ValueError, IndexError):
        return None
    if not distances or not all(math.isfinite(x) for row in distances for x in (*row, start, end)):
        return None
    try:  # the colours are told only where they are whole
        colours = [float(c) for c in choice["colour_distances"]] if choice.get("by") == "colour" else None
    except (TypeError, KeyError, ValueError):
        colours = None
    if colours is not None and (len(colours) != len(distances) or not all(map(math.isfinite, colours))):
        colours = None
    return WindowChoice((start, end), distances, colours)
