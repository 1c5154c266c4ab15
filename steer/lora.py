"""LoRA files loaded into a pipeline before steering (``steer generate|learn|batch --lora FILE[:SCALE]``, ``app.py
--lora``): read safely, named in recipes by sha256, found again by `steer reproduce`.

Only ``.safetensors`` files are read (steer never unpickles a user file), within a size bound, by safetensors itself;
the tensors go to diffusers' ``load_lora_weights`` as a state dict (any format diffusers converts: its own, PEFT,
kohya), one adapter per file, weighted with ``set_adapters``. A file that is not a LoRA for the model is refused in
one line. The pipeline remembers what it loaded (`loaded_loras`), so every recipe it writes lists the files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer.images import file_sha256
from steer.validation import short

MAX_LORA_BYTES = 4 * 2**30  # the largest SDXL LoRAs are under 2 GiB
MAX_LORAS = 8
_LOADED = "_steer_loras"  # the pipeline attribute holding what `load_loras` loaded


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file and the weight its adapter is applied with."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraFile:
        """``PATH`` or ``PATH:SCALE`` (the scale a finite number in [-10, 10]); one-line `ValueError` otherwise."""
        path, scale = text, 1.0
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                scale = float(tail)
                path = head
            except ValueError:
                pass  # a ':' inside the path
        if not -10 <= scale <= 10:  # also refuses nan
            raise ValueError(f"the LoRA scale in {short(text)} must be a number in [-10, 10]")
        return cls(Path(path).expanduser(), scale)

    def check(self) -> LoraFile:
        """``self`` after checking it is a readable ``.safetensors`` file within `MAX_LORA_BYTES` (its header read,
        not its tensors); one-line `ValueError` otherwise."""
        from safetensors import safe_open

        label = f"the LoRA {short(str(self.path), 120)}"
        if not self.path.is_file():
            raise ValueError(f"{label} is not a file")
        if self.path.suffix.lower() != ".safetensors":
            raise ValueError(f"{label} is not a .safetensors file (steer never unpickles .bin/.pt/.ckpt files: convert it)")
        if self.path.stat().st_size > MAX_LORA_BYTES:
            raise ValueError(f"{label} is over {MAX_LORA_BYTES // 2**30} GiB")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                if not list(f.keys()):
                    raise ValueError(f"{label} holds no tensors")
        except ValueError as err:
            if str(err).startswith(label):
                raise
            raise ValueError(f"{label} is not a readable safetensors file") from None
        except Exception:  # noqa: BLE001 - safetensors raises its own error types for damaged headers
            raise ValueError(f"{label} is not a readable safetensors file") from None
        return self


def load_loras(pipe: Any, loras: list[LoraFile]) -> list[dict[str, Any]]:
    """Load each of ``loras`` into ``pipe`` as adapter ``lora<i>`` weighted by its scale, after those an earlier call
    loaded (the active adapters are then all of them: ``set_adapters``); returns (and records on the pipeline,
    `loaded_loras`) ``[{"path", "sha256", "scale"}]`` of every file loaded so far. One-line `ValueError` for a bad
    file, a pipeline that takes no LoRA, or a file that is not a LoRA for this model (what that file put in is taken
    out again).

    Args:
        pipe: a diffusers pipeline with ``load_lora_weights`` (SD, SDXL, SD3, PixArt, Flux).
        loras: the files, in the order their adapters are named.
    """
    if not loras:
        return []
    before = loaded_loras(pipe)
    if len(before) + len(loras) > MAX_LORAS:
        raise ValueError(f"at most {MAX_LORAS} LoRA files, got {len(before) + len(loras)}")
    if not hasattr(pipe, "load_lora_weights"):
        raise ValueError(f"a {type(pipe).__name__} takes no LoRA")
    records = [{"path": str(lora.check().path.resolve()), "sha256": file_sha256(lora.path), "scale": lora.scale} for lora in loras]
    quiet = _NoTextEncoderKeysFilter()
    loggers = [logging.getLogger(n) for n in ("diffusers.loaders.lora_base", "diffusers.loaders.lora_pipeline", "diffusers.loaders.peft")]
    for logger in loggers:  # "No LoRA keys associated to CLIPTextModel found": every UNet-only LoRA says it
        logger.addFilter(quiet)
    try:
        return _load(pipe, loras, before, records)
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


class _NoTextEncoderKeysFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No LoRA keys associated to")


def _load(pipe: Any, loras: list[LoraFile], before: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from safetensors.torch import load_file

    names: list[str] = []
    for i, lora in enumerate(loras, start=len(before)):
        name = f"lora{i}"
        try:
            pipe.load_lora_weights(load_file(str(lora.path)), adapter_name=name)
        except ImportError as err:
            raise ValueError(f"loading a LoRA needs peft (pip install peft): {short(str(err), 120)}") from None
        except Exception as err:  # noqa: BLE001 - diffusers/peft raise many kinds for a LoRA of another model
            _forget(pipe, [*names, name])
            first = (str(err).strip().strip("'\"").splitlines() or [type(err).__name__])[0]
            raise ValueError(f"the LoRA {lora.path.name} does not fit this model: {short(first, 200)}") from None
        names.append(name)
    everything = before + records
    pipe.set_adapters([f"lora{i}" for i in range(len(everything))], [r["scale"] for r in everything])
    pipe.__dict__[_LOADED] = everything
    return everything


def _forget(pipe: Any, names: list[str]) -> None:
    """Take out what a failed `load_loras` put in (best effort: a half-injected adapter may not be listed)."""
    try:
        pipe.delete_adapters(names)
    except Exception:  # noqa: BLE001
        pass


def loaded_loras(pipe: Any) -> list[dict[str, Any]]:
    """What `load_loras` loaded into ``pipe`` (or the pipeline it was copied from), for recipes; ``[]`` for none."""
    return list(pipe.__dict__.get(_LOADED, []))


def find_lora(record: dict[str, Any], folders: list[str | os.PathLike]) -> LoraFile:
    """The `LoraFile` a recipe names: its recorded path when it still holds the recorded sha256, else a
    ``.safetensors`` file of that hash in ``folders`` (files or folders, not searched below them); one-line
    `FileNotFoundError` when none does."""
    digest = record.get("sha256")
    scale = float(record.get("scale", 1.0))
    recorded = Path(str(record.get("path", "")))
    candidates = [recorded] if record.get("path") else []
    for folder in folders:
        folder = Path(folder).expanduser()
        candidates += [folder] if folder.is_file() else sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    for path in candidates:
        if path.is_file() and path.stat().st_size <= MAX_LORA_BYTES and file_sha256(path) == digest:
            return LoraFile(path, scale)
    raise FileNotFoundError(f"the LoRA {recorded.name or '?'} (sha256 {str(digest)[:12]}...) is gone or changed: "
                            "pass the file or its folder with --lora")
