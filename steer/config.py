"""`SteeringConfig`: how steering vectors are applied, and the ``steering_*`` call options with their defaults.

One carrier for the settings of a steered call: built once from the call's keyword arguments (and the directions'
recommended settings), handed down to the hooks, written into the recipe of every image.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import numbers
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch

if TYPE_CHECKING:
    from steer.vectors import SteeringVector

Branch = Literal["cond", "uncond", "both", "split"]
Mode = Literal["add", "weighted", "token"]
Negative = Literal["subtract", "remove", "replace"]
BRANCHES = ("cond", "uncond", "both", "split")
MODES = ("add", "weighted", "token")
NEGATIVES = ("subtract", "remove", "replace")
# the negatives under which a negative scale removes (a take-away's), its default first: "replace" also turns the word
# the prompt states for what is taken away into the added direction's (`steer.word_swap`; docs/steering.md "Session
# 41"); "remove" as before it
REMOVING = ("replace", "remove")
TAKE_AWAY_NEGATIVE = REMOVING[0]
ROUTE_NAMES = ("all", "layout", "detail")  # the named routes of `steering_readers` (UNet reader groups)
PAPER_WINDOW = (0.45, 0.95)
Window = tuple[float, float]


def check_window(window: tuple[float, float], name: str = "steering_window") -> tuple[float, float]:
    """``(start, end)`` as floats with 0 <= start < end <= 1, or a one-line ValueError naming ``name`` (an empty window
    would steer nothing, silently)."""
    try:
        start, end = (float(w) for w in window)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (start, end) of fractions, got {window!r}") from None
    if not (0.0 <= start < end <= 1.0):
        raise ValueError(f"{name} must satisfy 0 <= start < end <= 1, got ({start}, {end})")
    return start, end


def is_per_vector(window: Any) -> bool:
    """Whether ``window`` is one window per vector (a sequence of pairs) rather than one ``(start, end)`` pair."""
    return isinstance(window, Sequence) and not isinstance(window, str) and bool(window) and all(
        w is None or (isinstance(w, Sequence) and not isinstance(w, str)) for w in window)


def check_windows(window: Any, name: str = "steering_window", allow_none: bool = False) -> Window | tuple[Window | None, ...]:
    """One window ``(start, end)``, or one per vector (a list of them), checked as `check_window`; a one-line
    ValueError naming ``name`` otherwise. ``allow_none``: a vector's entry may be None (a removal window that follows
    that vector's window)."""
    if not is_per_vector(window):
        return check_window(window, name)
    return tuple(None if (w is None and allow_none) else check_window(w, name) for w in window)


def vector_windows(window: Any, count: int, name: str = "steering_window") -> list[Any] | None:
    """A per-vector ``window`` as a list of ``count`` entries (None for one window shared by every vector), or a
    one-line ValueError when it holds another number of windows."""
    if window is None or not is_per_vector(window):
        return None
    if len(window) != count:
        raise ValueError(f"{name} holds {len(window)} window(s) for {count} direction(s): give one (start, end) for all, or one per direction")
    return list(window)


def check_branches(branch: Any, name: str = "steering_branch") -> Branch | tuple[Branch, ...]:
    """One CFG branch (`BRANCHES`), or one per vector (a list of them), or a one-line ValueError naming ``name``."""
    if isinstance(branch, str) and branch in BRANCHES:
        return branch
    if (not isinstance(branch, Sequence) or isinstance(branch, str) or not branch
            or not all(isinstance(b, str) and b in BRANCHES for b in branch)):
        raise ValueError(f"{name} must be one of {BRANCHES}, or one of them per direction, got {shown_value(branch)}")
    return tuple(branch)


def vector_branches(branch: Any, count: int, name: str = "steering_branch") -> list[str] | None:
    """A per-vector ``branch`` as a list of ``count`` entries (None for one branch shared by every vector), or a
    one-line ValueError when it holds another number of branches."""
    if not isinstance(branch, Sequence) or isinstance(branch, str):
        return None
    if len(branch) != count:
        raise ValueError(f"{name} holds {len(branch)} branch(es) for {count} direction(s): give one for all, or one per direction")
    return list(branch)


def shown_value(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line errors."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def window_record(window: Any) -> list[Any] | None:
    """A window as a recipe records it: ``[start, end]``, or one such list (or None) per vector."""
    if window is None:
        return None
    if is_per_vector(window):
        return [None if w is None else [float(x) for x in w] for w in window]
    return [float(x) for x in window]


def _flag(value: Any, name: str) -> bool:
    """A yes/no option: a bool (numpy's and 0-d tensors' too, and the integers 0 and 1), else one line. ``bool()``
    of anything read ``steering_normalize="False"`` as on."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0 and isinstance(item(), bool):
        return item()
    raise ValueError(f"{name} must be True or False, got {shown_value(value)}")


@dataclass(frozen=True)
class SteeringConfig:
    """How vectors are applied; the ``steering_*`` options of a steered call without the vectors and scales.

    Args:
        window: ``(start, end)`` fractions of the denoising run in which the hooks act, or one such window per
            vector (a call that sets none, whose vectors record different windows, applies each in its own). A
            vector's entry may be None: the window(s) it records (`recorded_window`); a slider's two sides then act
            each in its own (what `recommended_settings` gives for a slider whose sides record different ones).
        branch: which half of the CFG batch is steered: ``"cond"`` (paper), ``"uncond"``, ``"both"``, or ``"split"``
            (``+scale`` on the conditional half and ``-scale`` on the unconditional one, so classifier-free
            guidance amplifies the push instead of cancelling it); or one per vector (a call that sets none, whose
            vectors record different ones, applies each on its own: a slider on split beside a one-sided direction on
            cond).
        normalize: unit-norm each layer's vector and measure the scale in units of its recorded activation norm.
        mode: ``"add"`` (the same delta at every position, paper), ``"weighted"`` (each position weighted by its
            norm relative to the mean) or ``"token"`` (each position moves by ``scale * v * |x_p|``: the vector is
            in units of each position's own norm).
        preserve_norm: rescale each steered position back to its pre-steering norm, so large strengths rotate
            activations instead of inflating them.
        layers: None (every layer of the vectors) or layer names / glob patterns restricting them.
        strict: require each vector's base-model weights hash to match the denoiser (False allows fine-tunes).
        negative: what a negative scale does: ``"subtract"`` (``-s * v``, pushing past the vector's absence) or
            ``"remove"`` (on the conditional half only, take away ``s`` times each position's excess along the vector
            over the level the vector's negative prompts had on average, never pushing below it: "a red t-shirt"
            loses its red, "a t-shirt", around that mean, changes little). ``"remove"`` needs vectors that record their reference level (text preset).
            ``"replace"``: ``"remove"``, and the phrase a row's prompt states for a removed vector ("red") turned into
            the phrase of the vector the row adds ("blue") at its own token positions while that one acts
            (`steer.word_swap`; the take-away's default since 2026-12-05).
        removal_window: ``(start, end)`` fractions of the run in which ``"remove"`` acts, or one per vector (None
            entries: that vector's window); None: ``window``. Text directions recommend removing until the end of
            the run: the prompt's own "red" or "coat" would otherwise come back in the unsteered steps after the
            window.
        readers: which cross-attentions read the steered text tokens (the ``encoder_hidden_states`` site; other
            sites are unaffected): None (all of them: the denoiser's text input), ``"layout"`` (those of the down
            blocks and the mid block, where the layout is decided; the up blocks read the prompt as written, so an
            object edit keeps the prompt's colour), ``"detail"`` (those of the up blocks), or cross-attention module
            paths / glob patterns. UNet denoisers (SD 1.x/2.x, SDXL) only.
    """

    window: Window | tuple[Window, ...] = PAPER_WINDOW
    branch: Branch | tuple[Branch, ...] = "cond"
    normalize: bool = False
    mode: Mode = "add"
    preserve_norm: bool = False
    layers: tuple[str, ...] | None = None
    strict: bool = True
    negative: Negative = "subtract"
    removal_window: Window | tuple[Window | None, ...] | None = None
    readers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", check_windows(self.window, allow_none=True))
        if self.removal_window is not None:
            object.__setattr__(self, "removal_window", check_windows(self.removal_window, "steering_removal_window", allow_none=True))
        object.__setattr__(self, "branch", check_branches(self.branch))
        if self.mode not in MODES:
            raise ValueError(f"steering_mode must be one of {MODES}, got {self.mode!r}")
        if self.negative not in NEGATIVES:
            raise ValueError(f"steering_negative must be one of {NEGATIVES}, got {self.negative!r}")
        for name in ("preserve_norm", "normalize", "strict"):
            object.__setattr__(self, name, _flag(getattr(self, name), f"steering_{name}"))
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
            if not all(isinstance(n, str) for n in layers):
                raise ValueError(f"steering_layers must be layer names or glob patterns, got {self.layers!r}")
            object.__setattr__(self, "layers", layers)
        if self.readers is not None:
            readers = (self.readers,) if isinstance(self.readers, str) else tuple(self.readers)
            if not readers or not all(isinstance(n, str) and n for n in readers):
                raise ValueError(f"steering_readers must be 'layout', 'detail' or cross-attention names / glob patterns, got {self.readers!r}")
            routes = sorted({n for n in readers if n in ROUTE_NAMES})
            if len(routes) > 1:  # read as one route per direction, it was their union: every cross-attention, silently
                raise ValueError(f"steering_readers {list(readers)!r} would read through every one of those routes at once, not one "
                                 "route per direction: give one route for the call, or leave it unset and each direction is "
                                 "read where it was calibrated")
            object.__setattr__(self, "readers", readers)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> SteeringConfig:
        """The config of a call's resolved ``steering_*`` settings (extra keys such as ``steering`` are ignored)."""
        return cls(**{f.name: settings[f"steering_{f.name}"] for f in fields(cls) if f"steering_{f.name}" in settings})

    def to_settings(self) -> dict[str, Any]:
        """The ``steering_*`` keyword arguments of a pipeline call that this config stands for."""
        return {f"steering_{f.name}": getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = window_record(self.window)
        if not isinstance(self.branch, str):
            d["branch"] = list(self.branch)
        if self.removal_window is None:  # recipes of calls without one read as before it existed
            del d["removal_window"]
        else:
            d["removal_window"] = window_record(self.removal_window)
        if self.layers is not None:
            d["layers"] = list(self.layers)
        if self.readers is None:  # likewise: recipes of calls that read the text everywhere stay as they were
            del d["readers"]
        else:
            d["readers"] = list(self.readers)
        return d


# The ``steering_*`` options of a steered pipeline call and their built-in defaults.
STEERING_DEFAULTS: dict[str, Any] = {
    "steering": None,
    "steering_scale": 1.0,
    "steering_layers": None,
    "steering_window": PAPER_WINDOW,
    "steering_branch": "cond",
    "steering_normalize": False,
    "steering_mode": "add",
    "steering_preserve_norm": False,
    "steering_strict": True,
    "steering_negative": "subtract",
    "steering_removal_window": None,
    "steering_readers": None,
}
# Options a direction may carry in ``metadata["recommended"]`` (its learned / calibrated settings); a call that does
# not set one of them (neither as an argument nor through `pipe.steering(...)`) uses the direction's value.
RECOMMENDABLE = ("layers", "window", "branch", "normalize", "mode", "preserve_norm", "removal_window", "readers")
WINDOW_KEYS = ("window", "removal_window")


def agreed_recommendation(vectors: Sequence[SteeringVector], key: str) -> Any:
    """The value every vector's ``metadata["recommended"]`` records for ``key``, or None (none, or they differ)."""
    values = [(v.metadata.get("recommended") or {}).get(key) for v in vectors]
    if not values or values[0] is None or any(val != values[0] for val in values[1:]):
        return None
    return values[0]


def recorded_routes(vectors: Sequence[SteeringVector]) -> list[tuple[str, ...] | None] | None:
    """Each vector's recorded ``readers`` (None: every reader) when they differ (a call that sets no
    ``steering_readers`` then reads each vector where it was calibrated), else None (one route for the call: the
    agreed recommendation, or every reader)."""
    routes = [tuple(r) if (r := (v.metadata.get("recommended") or {}).get("readers")) else None for v in vectors]
    return routes if len(set(routes)) > 1 else None


def routes_record(vectors: Sequence[SteeringVector], readers: Sequence[str] | None) -> dict[str, Any]:
    """A recipe's ``routes`` entry: each direction's route in call order (None: every reader) when the call set no
    readers and the directions record different ones (`recorded_routes`); else nothing (old recipes read the same)."""
    routes = recorded_routes(vectors) if readers is None else None
    return {"routes": [list(r) if r else None for r in routes]} if routes else {}


def recorded_windows(vectors: Sequence[SteeringVector], key: str = "window") -> tuple[Window | None, ...] | None:
    """Each vector's recorded ``key`` window (``"window"``: the built-in `PAPER_WINDOW` for a vector recording none;
    ``"removal_window"``: None, i.e. that vector's window) when they differ, else None (one window for the call)."""
    if key == "window":
        values = [recorded_window(v) for v in vectors]
    else:
        values = [tuple(float(x) for x in w) if (w := (v.metadata.get("recommended") or {}).get(key)) is not None else None for v in vectors]
    return tuple(values) if len(set(values)) > 1 else None


# How a vector is applied; one value for every vector of a call (unlike the windows, routes and branches, which may
# differ).
APPLICATION_KEYS = ("normalize", "mode", "preserve_norm")


def recorded_branches(vectors: Sequence[SteeringVector]) -> tuple[str, ...] | None:
    """Each vector's recorded ``branch`` (the built-in one for a vector recording none) when they differ (a call that
    sets no ``steering_branch`` then steers each on the branch it was calibrated on: a slider on split, a one-sided
    direction on cond), else None (one branch for the call)."""
    values = [(v.metadata.get("recommended") or {}).get("branch") for v in vectors]
    branches = tuple(x if isinstance(x, str) and x in BRANCHES else STEERING_DEFAULTS["steering_branch"] for x in values)
    return branches if len(set(branches)) > 1 else None


def disagreement_note(vectors: Sequence[SteeringVector], given: Collection[str] = ()) -> str | None:
    """One line saying which application settings (`APPLICATION_KEYS`) the vectors record differently and the call
    leaves unset (``given``: the ``steering_*`` options it sets), so that the built-in default applies to all of them;
    None when there are none."""
    parts = []
    for key in APPLICATION_KEYS:
        if f"steering_{key}" in given:
            continue
        values = [(v.metadata.get("recommended") or {}).get(key) for v in vectors]
        if len({repr(x) for x in values}) > 1:
            listed = ", ".join(f"{v.name}: {'none' if x is None else x}" for v, x in zip(vectors, values, strict=True))
            parts.append(f"steering_{key} ({listed}) -> {STEERING_DEFAULTS[f'steering_{key}']}")
    if not parts:
        return None
    return ("these directions recommend different " + "; ".join(parts)
            + ": the built-in value applies to all of them, so some are not applied as they were learned; set it in the call to choose")


def recorded_window(vector: SteeringVector) -> Window:
    """The window ``vector`` records in ``metadata["recommended"]``, else the built-in `PAPER_WINDOW`."""
    window = (vector.metadata.get("recommended") or {}).get("window")
    return tuple(float(x) for x in window) if window is not None else PAPER_WINDOW


def sides_differ(vector: SteeringVector) -> bool:
    """Whether ``vector`` is a slider whose two sides record different windows (each calibrated in its own)."""
    return vector.opposite is not None and recorded_window(vector) != recorded_window(vector.opposite)


def resolve_recorded_windows(window: Any, vectors: Sequence[SteeringVector]) -> Any:
    """``window`` with each None entry of a per-vector one replaced by that vector's `recorded_window` (``vectors``:
    one-sided, a slider split into its sides), collapsed to one window where every entry is the same; else as given."""
    if not is_per_vector(window) or all(w is not None for w in window):
        return window
    resolved = tuple(recorded_window(v) if w is None else tuple(w) for w, v in zip(vector_windows(window, len(vectors)), vectors, strict=True))
    return resolved[0] if len(set(resolved)) == 1 else resolved


def recommended_settings(vectors: Sequence[SteeringVector]) -> dict[str, Any]:
    """The ``steering_*`` settings the vectors recommend: those all of them record with one value; the branches and
    the windows when they record different ones (one per vector: each applied as it was calibrated), a slider whose sides
    record different windows as None (each side in its own: `resolve_recorded_windows`, where the call splits it)."""
    out: dict[str, Any] = {}
    if any(map(sides_differ, vectors)):
        out["steering_window"] = tuple(None if sides_differ(v) else recorded_window(v) for v in vectors)
    if (branches := recorded_branches(vectors)) is not None:
        out["steering_branch"] = branches
    for key in RECOMMENDABLE:
        if key == "window" and "steering_window" in out:
            continue
        value = agreed_recommendation(vectors, key)
        if value is not None:
            out[f"steering_{key}"] = tuple(value) if key in WINDOW_KEYS or key == "readers" else value
        elif key in WINDOW_KEYS and (per_vector := recorded_windows(vectors, key)) is not None:
            out[f"steering_{key}"] = per_vector
    return out


def check_removal_window(settings: Mapping[str, Any], recommended: Mapping[str, Any]) -> None:
    """A one-line ValueError for a ``steering_removal_window`` a call gives under ``steering_negative="subtract"``: it
    sets where ``"remove"`` acts, so it changed nothing. The directions' own recommended one is let through (callers
    that pass a direction's recorded settings whole, the app, batch and replay, carry it under either)."""
    given = settings.get("steering_removal_window")
    if given is None or settings.get("steering_negative", STEERING_DEFAULTS["steering_negative"]) in REMOVING:
        return
    own = recommended.get("steering_removal_window")
    if own is not None and window_record(check_windows(given, "steering_removal_window", allow_none=True)) == window_record(own):
        return
    raise ValueError("steering_removal_window sets where steering_negative='remove' acts: under 'subtract' nothing is "
                     "removed; pass steering_negative='remove' or leave the window out")


def without_zero_columns(vectors: Sequence[Any], scales: torch.Tensor, given: Mapping[str, Any]
                         ) -> tuple[list[Any], torch.Tensor, dict[str, Any]]:
    """The call's directions, (rows, directions) scales and settings without the directions whose scale is 0 in
    every row, so that one is as if absent: its recorded settings no longer take part in the ones the call agrees
    on (``[to_blue, red_to_blue]`` at ``[1, 0]`` ran ``to_blue`` under the built-in branch and mode). Per-direction
    windows and branches lose its entry; all zero (nothing steered) or none zero: returned as they are."""
    live = scales.abs().amax(0) > 0
    if bool(live.all()) or not bool(live.any()):
        return list(vectors), scales, dict(given)
    keep = live.nonzero().flatten().tolist()
    given = dict(given)
    branch = given.get("steering_branch")
    if vector_branches(branch, len(vectors)) is not None:  # a count that does not fit: one line, as for the windows
        given["steering_branch"] = tuple(branch[i] for i in keep)
    for key in WINDOW_KEYS:
        window = given.get(f"steering_{key}")
        if window is not None and is_per_vector(window):
            vector_windows(window, len(vectors), f"steering_{key}")  # a count that does not fit: one line, as before
            given[f"steering_{key}"] = tuple(window[i] for i in keep)
    return [vectors[i] for i in keep], scales[:, keep], given


def parse_scales(scale: Any, num_vectors: int, num_images: int) -> torch.Tensor:
    """Turn ``steering_scale`` into a (rows, vectors) tensor; rows is 1 or ``num_images``.

    A float applies everywhere; a list of ``num_vectors`` floats is one per vector; with one vector, a list of
    ``num_images`` floats is one per batch row (a sweep); a nested list / 2-D tensor is (rows, vectors), the only
    per-row form with several vectors (a flat list whose length matched the batch by chance was read per row).
    """
    if isinstance(scale, (str, bytes)) or isinstance(scale, torch.Tensor) and scale.is_complex():
        raise ValueError(f"steering_scale must be a number, a list of numbers or a tensor, got {scale!r}")
    try:
        raw = scale if isinstance(scale, torch.Tensor) else torch.as_tensor(scale)
        if raw.dtype == torch.bool:  # True ran as 1.0
            raise TypeError
        s = raw.float().cpu()
    except (TypeError, ValueError, RuntimeError):  # strings in a list, ragged nesting, None, booleans ...
        raise ValueError(f"steering_scale must be a number, a list of numbers (nested: one row per image) or a tensor, got {scale!r}"[:300]) from None
    if not torch.isfinite(s).all():
        raise ValueError(f"steering_scale must be finite, got {scale!r}")
    if s.ndim == 0:
        return s.reshape(1, 1).expand(1, num_vectors).clone()
    if s.ndim == 1:
        n = s.shape[0]
        if n == 1:
            return s.reshape(1, 1).expand(1, num_vectors).clone()
        if n == num_vectors:
            return s.reshape(1, n)
        if n == num_images and num_vectors == 1:
            return s.reshape(n, 1).expand(n, num_vectors).clone()
        if n == num_images:  # read per image only when the batch size happened to match: fit.options() + a third direction
            raise ValueError(f"steering_scale has {n} values for {num_vectors} directions and {num_images} images: give one "
                             f"per direction ({num_vectors}), or one row per image as a nested list ([[...] x {num_vectors}] x {n})")
        raise ValueError(
            f"steering_scale has {n} values: expected 1, one per vector ({num_vectors}) or one per image ({num_images})"
        )
    if s.ndim == 2 and s.shape[1] == num_vectors and s.shape[0] in (1, num_images):
        return s
    raise ValueError(f"steering_scale of shape {tuple(s.shape)} does not fit {num_images} images x {num_vectors} vectors")


# ----- `pipe.steering(...)` blocks ----------------------------------------------------------------------------------
T = TypeVar("T")
_BLOCKS: contextvars.ContextVar[dict[int, dict[str, Any]] | None] = contextvars.ContextVar("steer_blocks", default=None)


def block_settings(key: int) -> dict[str, Any]:
    """The ``steering_*`` settings the `steering` blocks in force (this thread or task) give pipeline ``key``."""
    return dict((_BLOCKS.get() or {}).get(key, {}))


@contextlib.contextmanager
def steering_block(key: int, settings: dict[str, Any]) -> Iterator[None]:
    """Inside: pipeline ``key``'s calls take ``settings`` unless given. A block replaces an enclosing one whole (its
    direction came with options of its own: merged, an inner ``to_bag`` ran under the outer direction's normalize,
    branch and per-direction scale list)."""
    current = dict(_BLOCKS.get() or {})
    current[key] = dict(settings)
    token = _BLOCKS.set(current)
    try:
        yield
    finally:
        _BLOCKS.reset(token)


def outside_steering_blocks(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` run with no `steering` block in force. Learning and fitting sample "unsteered" references and record
    activations: a block the caller opened (``with pipe.steering(...): pipe.learn_direction(...)``) must not steer
    them (it used to, silently: another strength, warnings about other directions)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        token = _BLOCKS.set(None)
        try:
            return fn(*args, **kwargs)
        finally:
            _BLOCKS.reset(token)

    return run
