"""`SteeringVector`: one steering direction over several UNet layers, with its provenance.

A vector is a mapping from a UNet module path (``"up_blocks.0.resnets.1"``) to a 1-D tensor with one entry per
channel of that module's output, plus metadata: the base model's fingerprint, how it was learned, and each layer's
typical activation norm (used by calibrated strength). Files are ``.safetensors`` with the metadata as JSON in the
header; loading never unpickles.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steer.denoisers import layer_channels
from steer.errors import ModelMismatchError, SteeringFileError  # noqa: F401  (re-exported)
from steer.files import read_checked, tensor_digest, write_checked
from steer.fingerprint import _jsonable, adapter_state, check_weights, unet_fingerprint, weights_hash, weights_verdict  # noqa: F401  (re-exported)
from steer.step_rows import (
    as_step_rows,
    at_norm,
    components_of,
    in_step_buckets,
    joint_recommendation,
    shared_fixed_tokens,
)
from steer.validation import (
    SchemaError,
    check_depth,
    check_dict,
    check_direction_metadata,
    check_direction_tensors,
    clip,
    safetensors_path,
)

FORMAT_NAME = "steer.SteeringVector"
FORMAT_VERSION = 1
_METADATA_KEY = "steer"
OPPOSITE = "opposite:"  # prefix of a two-sided direction's opposite tensors in its file (not a module path)


def scaled_calibration(calibration: Any, factor: float) -> dict[str, Any]:
    """``{"calibration": ...}`` for a calibrated direction scaled by ``factor`` (``2 * v``, ``v / 4``, ``-v``): the
    strength it holds scaled, and ``scaled`` the product of the factors since the calibration (its full edit is then
    at ``steering_scale = 1 / scaled``); ``{}`` for a direction without a calibrated strength."""
    if not isinstance(calibration, dict) or not isinstance(calibration.get("strength"), int | float):
        return {}
    before = calibration.get("scaled")
    before = before if isinstance(before, int | float) and math.isfinite(before) else 1.0
    return {"calibration": {**calibration, "strength": round(calibration["strength"] * factor, 6),
                            "scaled": round(before * factor, 6)}}


@dataclass
class SteeringVector:
    """A steering direction: UNet module path -> per-channel vector, plus metadata.

    Supports ``v1 + v2``, ``v1 - v2``, ``2.0 * v``, ``-v`` and ``v / x``; `normalized` rescales each layer to unit
    norm. ``metadata`` holds the base model fingerprint (``"model"``), ``"method"``, ``"pooling"``, ``"timestep"``,
    the source prompts or image counts, and ``"activation_norm"`` (layer -> typical per-position activation norm).

    A *two-sided* direction (a slider: ``learn_direction(..., two_sided=True)``) also holds its ``opposite``: the
    direction a negative ``steering_scale`` applies (at ``|scale|``), so -1 is the full edit toward the negative prompts'
    attribute and +1 toward the positives' (a one-sided direction's -1 subtracts it: "anti-red", not "blue"). ``-v``
    swaps the sides; ``+`` / ``-`` between directions take one-sided ones (`one_sided`).
    """

    directions: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    opposite: SteeringVector | None = None

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("a SteeringVector needs at least one layer")
        for name, vec in self.directions.items():
            if not isinstance(vec, torch.Tensor) or vec.ndim not in (1, 2):
                shape = tuple(vec.shape) if isinstance(vec, torch.Tensor) else type(vec).__name__
                raise ValueError(
                    f"direction for layer {name!r} must be a (channels,) or (step buckets, channels) tensor, got {shape}"
                )
        if self.opposite is not None and self.opposite.opposite is not None:
            raise ValueError("the opposite of a two-sided direction is one-sided (its own opposite is the direction)")

    # ----- views -------------------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        return list(self.directions)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "direction"))

    @property
    def activation_norm(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metadata.get("activation_norm", {}).items()}

    def channels(self) -> dict[str, int]:
        return {k: int(v.shape[-1]) for k, v in self.directions.items()}

    @property
    def step_buckets(self) -> int:
        """How many step buckets the directions have (1: one vector for the whole run; S: the run split in S)."""
        return max((int(v.shape[0]) if v.ndim == 2 else 1) for v in self.directions.values())

    def norms(self) -> dict[str, float]:
        return {k: float(v.float().norm()) for k, v in self.directions.items()}

    def digest(self) -> str:
        """Content hash of what steers, for provenance records: the tensors and, where recorded, the token positions
        left alone (``fixed_tokens``: the same tensors without them steer differently), and a two-sided direction's
        opposite; not the rest of the metadata. Files without ``fixed_tokens`` keep the tensors-only hash they always
        had."""
        tensors = tensor_digest(self.directions)
        fixed = self.metadata.get("fixed_tokens")
        own = tensors[:16] if not fixed else hashlib.sha256(
            f"{tensors} fixed_tokens={json.dumps(fixed, sort_keys=True)}".encode()).hexdigest()[:16]
        if self.opposite is None:
            return own
        return hashlib.sha256(f"{own} opposite={self.opposite.digest()}".encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        norms = ", ".join(f"{k}: C={v.shape[-1]} |v|={float(v.float().norm()):.3g}" for k, v in self.directions.items())
        sides = f", opposite={self.opposite.name!r}" if self.opposite is not None else ""
        return f"SteeringVector(name={self.name!r}, method={self.metadata.get('method')!r}, {{{norms}}}{sides})"

    @property
    def one_sided(self) -> SteeringVector:
        """This direction without its opposite (a negative scale then subtracts it)."""
        return SteeringVector(self.directions, copy.deepcopy(self.metadata)) if self.opposite is not None else self

    # ----- arithmetic --------------------------------------------------------------------------------------------
    def _map(self, fn, drop: tuple[str, ...] = (), factor: float | None = None, **meta_updates: Any) -> SteeringVector:
        """``fn`` of every layer (both sides), without the metadata keys ``drop``; ``factor``: ``fn`` scales the
        direction by it, so the calibrated strength recorded is scaled too and marked so (scale 1.0 is no longer the
        calibrated full edit) and the benchmark measured at the file's own scale is dropped."""
        meta = {k: v for k, v in copy.deepcopy(self.metadata).items() if k not in drop}  # the copy's own: never the original's
        if factor is not None and factor != 1:
            meta.pop("benchmark", None)
            meta.update(scaled_calibration(meta.get("calibration"), factor))
        meta.update(meta_updates)
        opposite = self.opposite._map(fn, drop, factor) if self.opposite is not None else None
        return SteeringVector({k: fn(v) for k, v in self.directions.items()}, meta, opposite)

    def _as_applied(self) -> SteeringVector:
        """This direction as the engine applies it under its recommended ``normalize=True`` (each layer's rows at unit
        norm times its recorded activation norm), recorded ``normalize: False``, so that scaling or adding it scales or
        adds what steers (the engine would normalize the result again: ``2 * v`` steered as ``v``, ``v + w`` not as
        ``[v, w]``); any other direction as it is."""
        act = self.activation_norm
        if not (self.metadata.get("recommended") or {}).get("normalize") or any(k not in act for k in self.directions):
            return self
        meta = copy.deepcopy(self.metadata)
        meta["recommended"]["normalize"] = False
        applied = {}
        for name, d in self.directions.items():
            applied[name] = at_norm(as_step_rows(d.float()), act[name]).reshape(d.shape).to(d.dtype)
        return SteeringVector(applied, meta, self.opposite._as_applied() if self.opposite is not None else None)

    def _swapped(self) -> SteeringVector:
        """A two-sided direction with its sides exchanged (what ``-v`` and a negative factor give)."""
        assert self.opposite is not None
        return SteeringVector(self.opposite.directions, copy.deepcopy(self.opposite.metadata), self.one_sided)

    def __mul__(self, other: float) -> SteeringVector:
        if not isinstance(other, int | float):
            return NotImplemented
        if not math.isfinite(other):  # a NaN direction failed only at save or steering
            raise ValueError(f"a direction is scaled by a finite number, got {other!r}")
        if self.opposite is not None and other < 0:
            return self._swapped() * -other
        if other < 0:
            return -(self * -other)
        return self._as_applied()._map(lambda v: v * other, factor=other, name=f"{other:g}*{self.name}")

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> SteeringVector:
        if isinstance(other, int | float) and not math.isfinite(other):
            raise ValueError(f"a direction is divided by a finite number, got {other!r}")
        if not isinstance(other, int | float):
            return NotImplemented
        if other == 0:
            raise ZeroDivisionError("cannot divide a SteeringVector by zero")
        if self.opposite is not None and other < 0:
            return self._swapped() / -other
        if other < 0:
            return -(self / -other)
        return self._as_applied()._map(lambda v: v / other, factor=1 / other, name=f"{self.name}/{other:g}")

    def __neg__(self) -> SteeringVector:
        if self.opposite is not None:
            return self._swapped()
        # the reference level was measured along +v (what "remove" takes a prompt back to): not -v's
        return self._as_applied()._map(lambda v: -v, drop=("reference_level",), factor=-1.0, name=f"-{self.name}")

    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if self.opposite is not None or other.opposite is not None:
            two = self.name if self.opposite is not None else other.name
            raise ValueError(f"{two!r} is two-sided (a slider): combine its sides one at a time (v.one_sided, "
                             "v.opposite), or steer with both directions in one call")
        mine, theirs = self.metadata.get("model", {}), other.metadata.get("model", {})
        if mine and theirs and mine.get("config_hash") != theirs.get("config_hash"):
            raise ModelMismatchError(
                f"cannot combine {self.name!r} and {other.name!r}: learned on different UNet architectures "
                f"({mine.get('architecture')} vs {theirs.get('architecture')})"
            )
        self, other = self._as_applied(), other._as_applied()  # what each steers, as in one call (steering=[a, b])
        recommended, windows, buckets = joint_recommendation(self, other)
        mine_dirs, theirs_dirs = self.directions, other.directions
        if buckets > 1:  # one row per 1/buckets of the run; with different windows each part is zero outside its own
            mine_dirs = {k: in_step_buckets(v, windows[0], buckets) for k, v in mine_dirs.items()}
            theirs_dirs = {k: in_step_buckets(v, windows[1], buckets) for k, v in theirs_dirs.items()}
        out: dict[str, torch.Tensor] = {k: v.clone() for k, v in mine_dirs.items()}
        for k, v in theirs_dirs.items():
            if k in out:
                if out[k].shape != v.shape:
                    raise ModelMismatchError(f"layer {k!r} has shape {tuple(out[k].shape)} in one vector, {tuple(v.shape)} in the other")
                out[k] = out[k] + sign * v.to(out[k])
            else:
                out[k] = sign * v
        act = {**other.activation_norm, **self.activation_norm}
        op = "+" if sign > 0 else "-"
        meta = {
            "name": f"({self.name} {op} {other.name})",
            "method": "combination",
            "model": mine or theirs,
            "activation_norm": act,
            "components": [*components_of(self.metadata), *components_of(other.metadata)],
        }
        fixed = {k: shared_fixed_tokens((self, other), k) for k in out}  # positions both parts leave alone
        if any(fixed.values()):
            meta["fixed_tokens"] = {k: n for k, n in fixed.items() if n}
        if recommended is not None:
            meta["recommended"] = recommended
        return SteeringVector(out, meta)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __radd__(self, other: object) -> SteeringVector:
        """``sum([v, w])`` starts from ``0``: zero plus a direction is the direction; anything else is refused."""
        if isinstance(other, int | float) and other == 0:
            return self
        return NotImplemented

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def normalized(self) -> SteeringVector:
        """Each layer rescaled to unit L2 norm (zero layers stay zero); both sides of a two-sided direction."""
        # unit layers: no longer the calibrated strength, nor the benchmarked one
        return self._map(lambda v: v / v.norm().clamp_min(1e-12), drop=("calibration", "benchmark"), name=f"normalized({self.name})")

    def to(self, device: torch.device | str | torch.dtype | None = None, dtype: torch.dtype | None = None) -> SteeringVector:
        """A copy on ``device`` and/or in ``dtype``; ``v.to(torch.float16)`` as ``Tensor.to`` takes it."""
        if isinstance(device, torch.dtype):
            if dtype is not None:
                raise TypeError("to() got two dtypes: give the device first, or one dtype")
            device, dtype = None, device
        opposite = self.opposite.to(device, dtype) if self.opposite is not None else None
        return SteeringVector({k: v.to(device=device, dtype=dtype) for k, v in self.directions.items()}, copy.deepcopy(self.metadata), opposite)

    def select(self, layers: Iterable[str]) -> SteeringVector:
        """A copy restricted to ``layers`` (exact names, or one name; a two-sided direction's opposite keeps those it has)."""
        keep = [layers] if isinstance(layers, str) else list(layers)
        missing = [k for k in keep if k not in self.directions]
        if missing:
            raise KeyError(f"{self.name!r} has no layer(s) {missing}; it has {self.layers}")
        opposite = self.opposite
        if opposite is not None:
            kept = [k for k in keep if k in opposite.directions]
            opposite = opposite.select(kept) if kept else None
        meta = copy.deepcopy(self.metadata)
        recommended = meta.get("recommended")
        if isinstance(recommended, dict) and isinstance(recommended.get("layers"), list):  # the layers it still has
            layers = [k for k in recommended["layers"] if k in keep]
            meta["recommended"] = {**recommended, "layers": layers} if layers else {k: v for k, v in recommended.items() if k != "layers"}
        return SteeringVector({k: self.directions[k] for k in keep}, meta, opposite)

    # ----- compatibility -----------------------------------------------------------------------------------------
    def check_compatible(self, unet: torch.nn.Module, layers: Iterable[str] | None = None, strict: bool = True) -> None:
        """Raise `ModelMismatchError` if this vector was learned on another model than ``unet``.

        Architecture and channel counts must always match. With ``strict`` the weights must match too (the same
        checkpoint); pass ``strict=False`` to use a direction on a fine-tune of its base model. A two-sided
        direction's opposite must fit as well (on its own layers among ``layers``).
        """
        names = list(layers) if layers is not None else self.layers
        self._check_fits(unet, names, strict)
        if self.opposite is not None:
            self.opposite._check_fits(unet, [n for n in names if n in self.opposite.directions], strict)

    def _check_fits(self, unet: torch.nn.Module, names: list[str], strict: bool) -> None:
        """`check_compatible` for this direction's own tensors at ``names``."""
        learned_class = (self.metadata.get("model") or {}).get("unet_class")
        if learned_class not in (None, type(unet).__name__):  # another family: say so before its layer names fail
            raise ModelMismatchError(
                f"direction {self.name!r} was learned on a {learned_class}, this denoiser is a {type(unet).__name__}"
            )
        have = layer_channels(unet, names)
        for name in names:
            want = int(self.directions[name].shape[-1])
            if have[name] != want:
                raise ModelMismatchError(
                    f"channel mismatch at layer {name!r}: the direction {self.name!r} has {want} channels, "
                    f"the UNet's output there has {have[name]}"
                )
        learned = self.metadata.get("model")
        if not learned:
            return
        current = unet_fingerprint(unet, weights=False)  # the weights only when strict (under offload: read apart)
        if learned.get("unet_class") != current["unet_class"]:
            raise ModelMismatchError(
                f"direction {self.name!r} was learned on a {learned.get('unet_class')}, this UNet is a {current['unet_class']}"
            )
        if learned.get("config_hash") != current["config_hash"]:
            diffs = [
                f"{k}: {learned.get('architecture', {}).get(k)} -> {current['architecture'].get(k)}"
                for k in sorted(set(learned.get("architecture", {})) | set(current["architecture"]))
                if learned.get("architecture", {}).get(k) != current["architecture"].get(k)
            ]
            detail = "; ".join(diffs) if diffs else "the UNet configs differ outside the architecture keys"
            where = f" ({learned['name_or_path']!r})" if isinstance(learned.get("name_or_path"), str) and learned["name_or_path"] else ""
            raise ModelMismatchError(  # where it was learned: two directions of one name from two models told apart
                f"direction {self.name!r} was learned on a different UNet{where} (config hash {learned.get('config_hash')} "
                f"vs {current['config_hash']}): {detail}"
            )
        if not strict:
            return

        def other(current: str) -> str:  # the message for other weights (the adapters read only then)
            adapters = adapter_state(unet).get("adapters")
            lora = f"; this denoiser carries LoRA adapters {sorted(adapters)}" if adapters else ""
            return (
                f"direction {self.name!r} was learned on other weights of this architecture (weights hash "
                f"{learned.get('weights_hash')} vs {current}, base model "
                f"{learned.get('name_or_path', 'unknown')!r}){lora}; pass steering_strict=False to apply it to a fine-tune"
            )

        check_weights(learned, unet, f"direction {self.name!r}: its weights are not checked", other, stacklevel=3)

    # ----- files -------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (.safetensors): tensors in fp32 and the metadata as JSON in the header. Atomic."""
        given = os.fspath(path)
        path = Path(path)
        if given.endswith(("/", os.sep)) or path.is_dir():
            raise ValueError(f"cannot save {self.name!r} to {given}: it is a folder; give a file name ({path / 'direction.safetensors'})")
        path = safetensors_path(path)
        if path.is_dir():
            raise ValueError(f"cannot save {self.name!r} to {path}: a folder has that name")
        # copies: layers (or a slider's two sides) that share one tensor are written apart, which safetensors requires
        tensors = {k: v.detach().to("cpu", torch.float32, copy=True).contiguous() for k, v in self.directions.items()}
        try:  # refuse to write a file that `load` would refuse
            check_depth(self.metadata, "metadata")
            header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "metadata": _jsonable(self.metadata)}
            check_direction_tensors(tensors)
            check_direction_metadata(header["metadata"])
            if self.opposite is not None:  # its tensors under OPPOSITE + layer, its metadata in the header's "opposite"
                opposite = {k: v.detach().to("cpu", torch.float32, copy=True).contiguous() for k, v in self.opposite.directions.items()}
                check_depth(self.opposite.metadata, "opposite metadata")
                header["opposite"] = _jsonable(self.opposite.metadata)
                check_direction_tensors(opposite)
                check_direction_metadata(header["opposite"])
                tensors.update({OPPOSITE + k: v for k, v in opposite.items()})
        except SchemaError as err:
            raise ValueError(f"cannot save {self.name!r} to {path}: {err}") from None
        write_checked(path, tensors, _METADATA_KEY, header)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> SteeringVector:
        """Read and validate a file written by `save`. Never unpickles.

        Raises `SteeringFileError` (one line naming the file and the problem) for a missing, damaged or edited
        file, a header field of the wrong type (`steer.validation.check_direction_metadata`), a layer name that is
        not a module path, or entries that are not finite or exceed `steer.validation.MAX_VECTOR_ENTRY`.
        """
        from steer.hub import local_direction  # the path, or where `save` wrote it: "blue" -> blue.safetensors

        found = local_direction(path, files_first=True)
        if found is None or not found.is_file():  # (a name too long for the system is "not found", not an OSError)
            raise SteeringFileError(f"direction file not found: {clip(str(path), 300)}")
        path = found
        header, tensors = read_checked(path, _METADATA_KEY, FORMAT_NAME, FORMAT_VERSION, SteeringFileError, "steering vector")
        opposite_tensors = {k[len(OPPOSITE):]: tensors.pop(k) for k in list(tensors) if k.startswith(OPPOSITE)}
        opposite = None
        try:
            check_direction_tensors(tensors)
            meta = check_direction_metadata(header.get("metadata"))
            if opposite_tensors or header.get("opposite") is not None:  # a two-sided direction: both parts or neither
                check_direction_tensors(opposite_tensors)
                opposite = cls({k: v.to(device) for k, v in opposite_tensors.items()},
                               check_direction_metadata(check_dict(header.get("opposite"), "opposite", optional=False)))
        except SchemaError as err:
            raise SteeringFileError(f"{path}: {err}") from None
        return cls({k: v.to(device) for k, v in tensors.items()}, meta, opposite)

    # ----- the Hugging Face Hub (steer/hub.py) --------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_dir: str | os.PathLike,
        filename: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        device: torch.device | str = "cpu",
    ) -> SteeringVector:
        """Load a direction from a local file, a folder, or a Hub repo ``"owner/name[@revision][:file]"``.

        A folder or repo gives ``filename``, else ``steering_vector.safetensors``, else its only ``.safetensors``
        file; Hub files come through the Hugging Face cache (``HF_HUB_OFFLINE`` honoured). The file is read by
        `load`, with all its validation. See `steer.hub.resolve_direction`.
        """
        from steer.hub import resolve_direction

        path = resolve_direction(
            repo_id_or_dir, filename=filename, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only
        )
        return cls.load(path, device=device)

    def save_pretrained(self, save_directory: str | os.PathLike, filename: str = "steering_vector.safetensors", repo_id: str | None = None) -> Path:
        """Write the folder `push_to_hub` uploads: the direction file and a generated README.md model card."""
        from steer.hub import save_pretrained

        return save_pretrained(self, save_directory, filename=filename, repo_id=repo_id)

    def push_to_hub(
        self,
        repo_id: str,
        filename: str = "steering_vector.safetensors",
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
    ) -> Any:
        """Upload this direction and its model card to the Hub model repo ``repo_id`` (see `steer.hub.push_to_hub`)."""
        from steer.hub import push_to_hub

        return push_to_hub(self, repo_id, filename=filename, private=private, token=token, commit_message=commit_message, create_pr=create_pr)


def as_vector_list(steering: SteeringVector | str | os.PathLike | Iterable | None) -> list[SteeringVector]:
    """Normalise the ``steering`` argument: a vector, a path, or a list of those."""
    if steering is None:
        return []
    if isinstance(steering, SteeringVector):
        return [steering]
    if isinstance(steering, str | os.PathLike):
        return [SteeringVector.load(steering)]
    if not isinstance(steering, list | tuple):  # a tensor, a number, a dict: not what a call can steer with
        raise TypeError(f"steering takes a SteeringVector, a file path, a bundled direction's name or a list of them, "
                        f"got {type(steering).__name__}")
    out = []
    for item in steering:
        out.extend(as_vector_list(item))
    return out


def finite_or_raise(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value
