"""Loading pipelines: the embedded demo model by default, a local directory, or a hub id."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from steer.assets import default_model
from steer.pipelines.factory import steering_class
from steer.validation import clip

MAX_INDEX_BYTES = 1 << 20  # a model_index.json is a few hundred bytes


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a `torch.device`; ValueError (one line) for an unknown name or one this machine lacks."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {str(device)[:60]!r}: {str(err).splitlines()[0][:200]}") from None
    available = {"cpu": True, "meta": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(parsed.type, True):
        raise ValueError(f"device {str(device)!r} is not available on this machine")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


@contextlib.contextmanager
def _loading_bars(enabled: bool) -> Iterator[None]:
    """diffusers' and transformers' loading progress bars on or off for the duration (then as they were)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for module, _ in before:
        (module.enable_progress_bar if enabled else module.disable_progress_bar)()
    try:
        yield
    finally:
        for module, was in before:
            (module.enable_progress_bar if was else module.disable_progress_bar)()


def steering_class_for_model(model: str) -> type:
    """The steered pipeline class for a pipeline directory or hub id, from its ``model_index.json``'s
    ``_class_name`` (read from the folder, or through the Hugging Face cache / Hub for a hub id).

    Raises `UnsupportedPipelineError` (one line) for a pipeline steer does not support.
    """
    local = Path(model)
    if local.is_dir():
        index = local / "model_index.json"
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise OSError(f"{index} is larger than {MAX_INDEX_BYTES} bytes: not a pipeline index")
        try:
            config = json.loads(index.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise OSError(f"{index} is not a readable pipeline index: {str(err).splitlines()[0][:120]}") from None
    else:
        from diffusers import DiffusionPipeline

        config = DiffusionPipeline.load_config(model)
    name = config.get("_class_name") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise OSError(f"{model}: model_index.json has no _class_name")
    return steering_class(name)


def check_model(model: str | os.PathLike | None) -> str:
    """``model`` (default: `default_model`) when it can name a pipeline: a diffusers pipeline folder or a hub id."""
    model = str(model or default_model())
    local = Path(model)
    if local.is_file() and local.suffix.lower() in (".safetensors", ".ckpt"):
        raise FileNotFoundError(f"{model} is a single-file checkpoint: steer loads diffusers pipeline folders; convert it once "
                                "with diffusers (StableDiffusionPipeline.from_single_file(path).save_pretrained(folder)) "
                                "and pass the folder")
    if local.exists() and not (local / "model_index.json").is_file():
        raise FileNotFoundError(f"{model} is a path but not a diffusers pipeline directory (no model_index.json)")
    if not local.exists() and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise FileNotFoundError(f"model {model!r} not found: give a pipeline directory or a hub id like 'org/name'")
    return model


def _check_no_pickles(model: str) -> None:
    """A local pipeline folder with a component whose weights are only PyTorch pickles (``.bin``, ``.pt``...): one
    line saying so, before diffusers is asked (it loads safetensors only here, `load_pipeline`)."""
    local = Path(model).expanduser()
    if not local.is_dir():
        return
    try:  # the components the pipeline loads; steer never loads the safety checker (nor its feature extractor)
        loaded = set(json.loads((local / "model_index.json").read_text())) - {"safety_checker", "feature_extractor"}
    except (OSError, ValueError):
        return  # diffusers says what is wrong with the folder
    for part in sorted(p for p in local.iterdir() if p.is_dir() and p.name in loaded):
        files = [f for f in part.iterdir() if f.is_file()]
        pickled = [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        if pickled and not any(f.suffix == ".safetensors" for f in files):
            raise OSError(f"cannot load model {model!r}: {part.name}/{pickled[0].name} is a PyTorch pickle, which steer "
                          "never unpickles; convert the folder to .safetensors once, if you trust it "
                          "(DiffusionPipeline.from_pretrained(...).save_pretrained(new_folder))")


def _unloadable(model: str, err: OSError) -> OSError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = " (HF_HUB_OFFLINE=1 is set: only cached or local models load)" if offline else ""
    if not offline and (unreachable := _connection_error(err)) is not None:  # not "does not appear to have a file"
        return OSError(f"cannot load model {model!r}: it is not in the Hugging Face cache and the Hub cannot be reached "
                       f"({clip(str(unreachable), 120)})")
    return OSError(f"cannot load model {model!r}{hint}: {err}")


def _connection_error(err: BaseException) -> BaseException | None:
    """The innermost error of ``err``'s chain when huggingface_hub could not reach the Hub (a file neither cached nor
    downloadable: `LocalEntryNotFoundError`); diffusers reports it as the repo lacking ``model_index.json``."""
    seen, found = set(), None
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if type(err).__name__ == "LocalEntryNotFoundError":
            found = err
        elif found is not None:
            found = err  # deeper: the network's own reason (a name that does not resolve, a refused connection)
        err = err.__cause__ or err.__context__
    return found


def load_scheduler(model: str | os.PathLike | None = None):
    """The scheduler of a pipeline folder or hub id, without loading its weights (what `steer samplers` reads)."""
    import diffusers
    from diffusers import DiffusionPipeline

    model = check_model(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # huggingface_hub's deprecation notes about arguments diffusers passes
            entry = DiffusionPipeline.load_config(model).get("scheduler")
        if not (isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(getattr(diffusers, str(entry[1]), None), type)):
            raise OSError(f"its model_index.json names no diffusers scheduler ({entry!r})")
        return getattr(diffusers, entry[1]).from_pretrained(model, subfolder="scheduler")
    except OSError as err:
        raise _unloadable(model, err) from None


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device | None = None, dtype: torch.dtype | None = None, progress: bool = False,
                  loras: list | None = None):
    """Load the steered pipeline of a local directory or a hub id: the class its ``model_index.json`` names (SD,
    SDXL, SD3, PixArt-Sigma, Flux, image-to-image; `steer.pipelines.factory.STEERED_PIPELINES`), safety checker off;
    then ``loras`` (`steer.lora.LoraFile`s) into it (`steer.lora.load_loras`).

    fp16 on CUDA, fp32 elsewhere unless ``dtype`` is given. Raises FileNotFoundError / OSError with a readable
    message when the model cannot be found (e.g. a hub id while offline).
    """
    model = check_model(model)
    device = parse_device(device) if device is not None else default_device()
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    _check_no_pickles(model)
    try:
        cls = steering_class_for_model(model)
        extra = {}
        if "safety_checker" in inspect.signature(cls.__init__).parameters:  # SD 1.x/2.x: no safety checker
            extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        with _loading_bars(progress):
            pipe = cls.from_pretrained(model, dtype=dtype, use_safetensors=True, **extra)  # never unpickles (.bin)
    except OSError as err:
        raise _unloadable(model, err) from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress)
    if loras:
        from steer.lora import load_loras

        load_loras(pipe, loras)
    return pipe
