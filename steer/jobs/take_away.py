"""A batch job's take-away, as ``steer generate --take-away [--fit]``: add the job's one direction while removing what
the prompt states along another ("a red dress" -> bag: ``directions: [to_bag]``, ``take_away: to_dress``).

Each of the direction's scales ``s`` becomes the row ``[s, -min(s, 1)]`` under ``steering_negative="remove"``
(`steer.take_away.pair_scales`). ``take_away_fit: true`` fits the strength and window for the pair first
(`steer.take_away.fit_take_away`, at the job's guidance and size): the fit sets the scale unless the direction gives a
``scale`` or ``sweep``, and the window unless the job gives ``steering_window``. Fits run while the jobs are planned,
once per pair and call setting, and are deterministic (seeded), so a resumed run plans the same images; under an
accelerate launch the pairs are dealt out between the processes and the fits shared (`FitCache.share`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from steer.config import REMOVING, TAKE_AWAY_NEGATIVE
from steer.jobs.checks import check_bool
from steer.jobs.read import JobError


@dataclass(frozen=True)
class JobTakeAway:
    """The direction a job takes away, where it was found, whether the job asks for a fit, and the fit once made."""

    vector: Any
    path: str
    fit_wanted: bool = False
    fit: Any = None  # steer.take_away.TakeAwayFit

    def recipe(self, scale: float) -> dict[str, Any]:
        """The recipe's ``take_away`` entry for the image at ``scale`` (as `steer generate` records it)."""
        from steer.take_away import take_away_record

        return take_away_record(self.vector, self.path, scale, self.fit)


def check_fields(line: int, job: dict[str, Any]) -> tuple[Any, bool]:
    """The job's ``take_away`` spec (a path or direction name, or None) and whether to fit it; raises `JobError`."""
    spec = job.get("take_away")
    fit = check_bool(line, "take_away_fit", job.get("take_away_fit", False))
    if spec is None:
        if fit:
            raise JobError(line, "take_away_fit fits a take-away: give take_away too")
        return None, False
    if not isinstance(spec, str):
        raise JobError(line, f"take_away must be a direction file or name (a string), got {type(spec).__name__}")
    directions = job.get("directions") or []
    if not isinstance(directions, list) or len(directions) != 1:
        raise JobError(line, "take_away goes with exactly one direction in directions (the one that replaces it)")
    if job.get("steering_negative", TAKE_AWAY_NEGATIVE) not in REMOVING:
        raise JobError(line, f"take_away removes what the prompt says (steering_negative {TAKE_AWAY_NEGATIVE!r}, or 'remove' without "
                             "turning its word); leave steering_negative out")
    return spec, fit


def sets_scale(direction: Any) -> bool:
    """Whether a job's direction entry gives its own scale (``scale`` or ``sweep``; a bare path does not)."""
    return isinstance(direction, dict) and ("scale" in direction or "sweep" in direction)


class FitCache:
    """Take-away fits of one run, one per (direction, take-away, guidance, size): computed on first use, or shared
    out between the processes of an accelerate launch beforehand (`share`)."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self._fits: dict[tuple, tuple[Any, list[str], str | None]] = {}  # key -> (fit, warnings, error)
        self._reported: set[tuple] = set()

    @staticmethod
    def key(vector: Any, away: Any, guidance: float, height: int, width: int, sampler: str | None = None,
            negative_prompt: str | None = None, negative: str = TAKE_AWAY_NEGATIVE) -> tuple:
        return (vector.digest(), away.digest(), float(guidance), int(height), int(width), sampler, negative_prompt or None, negative)

    def _compute(self, vector: Any, away: Any, guidance: float, height: int, width: int, sampler: str | None = None,
                 negative_prompt: str | None = None, negative: str = TAKE_AWAY_NEGATIVE) -> tuple[Any, list[str], str | None]:
        from steer.samplers import with_sampler

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            negative_prompt_arg = {"negative_prompt": negative_prompt} if negative_prompt else {}  # fitted for how the job generates
            fit = with_sampler(self.pipe, sampler).fit_take_away(vector, away, guidance_scale=guidance, height=height, width=width,
                                                                 negative=negative, **negative_prompt_arg)
        return fit, list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning))), None

    def get(self, vector: Any, away: Any, guidance: float, height: int, width: int, report: Callable[[str], None] | None = None,
            sampler: str | None = None, negative_prompt: str | None = None, negative: str = TAKE_AWAY_NEGATIVE) -> Any:
        key = self.key(vector, away, guidance, height, width, sampler, negative_prompt, negative)
        if key not in self._fits:
            self._fits[key] = self._compute(vector, away, guidance, height, width, sampler, negative_prompt, negative)
        fit, messages, error = self._fits[key]
        if error is not None:  # failed in another process: the same one-line reason here
            raise RuntimeError(error)
        if report is not None and key not in self._reported:
            self._reported.add(key)
            report(f"take-away fit {vector.name!r} replacing {away.name!r}: strength {fit.strength:.3g}, window {fit.window[0]:g},{fit.window[1]:g}"
                   f"{fit.window_note()}")
            for message in messages:
                report(f"warning: {message}")
        return fit

    def share(self, process_index: int, num_processes: int, plan: Callable[[FitCache], Any],
              gather: Callable[[dict], list[dict]], reason: Callable[[BaseException], str] = str) -> int:
        """Fit every pair the run needs once across the processes of a launch, instead of every pair in each.

        ``plan(cache)`` plans the run against a cache that records the fits it is asked for and fits nothing; the
        requests (the same, in the same order, in every process: planning is deterministic) are dealt round-robin,
        each process fits its own, and ``gather`` (accelerate's ``gather_object`` of a one-item list) gives every
        process all of them. A fit that fails is shared as its one-line ``reason``. Returns how many this process fitted.
        """
        wanted = _FitRequests(self.pipe)
        plan(wanted)
        mine: dict[tuple, tuple[Any, list[str], str | None]] = {}
        for i, (key, args) in enumerate(wanted.requests.items()):
            if i % num_processes == process_index and key not in self._fits:
                try:
                    mine[key] = self._compute(*args)
                except Exception as err:  # noqa: BLE001 - the job fails with this reason, in every process alike
                    mine[key] = (None, [], reason(err))
        for part in gather(mine):
            self._fits.update(part)
        return len(mine)


class _FitRequests(FitCache):
    """A planning pass's cache that only records which fits the jobs ask for (each such job fails in that pass)."""

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self.requests: dict[tuple, tuple] = {}

    def get(self, vector: Any, away: Any, guidance: float, height: int, width: int, report: Callable[[str], None] | None = None,
            sampler: str | None = None, negative_prompt: str | None = None, negative: str = TAKE_AWAY_NEGATIVE) -> Any:
        self.requests.setdefault(self.key(vector, away, guidance, height, width, sampler, negative_prompt, negative),
                                 (vector, away, guidance, height, width, sampler, negative_prompt, negative))
        raise LookupError("take-away fit requested")


def row_scales(scale: float) -> tuple[float, float]:
    """The (direction, take-away) scales of the image at the direction's ``scale`` (>= 0, checked while planning)."""
    from steer.take_away import pair_scales

    return tuple(pair_scales(scale))
