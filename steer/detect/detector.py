"""`MemorizationDetector`: scores a pipeline's samples (re-encode or inline), holds calibrated thresholds, and its
safetensors file format; `MemorizationReport`, the pipeline output that carries inline scores, and
`detect_memorization` (generate, score and judge in one call)."""

from __future__ import annotations

import inspect
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput

from steer.denoisers import denoiser_of, denoiser_use, resolve_layers
from steer.detect.scores import (
    _METADATA_KEY,
    DEFAULT_EARLY_STEPS,
    DEFAULT_INLINE_WINDOW,
    FORMAT_NAME,
    FORMAT_VERSION,
    INLINE_SCORES,
    POOLINGS,
    PROMPT_MODES,
    SCORE_KINDS,
    STATISTICS,
    InlineScore,
    Statistic,
    _is_prompt_list,
    cfg_distance,
    default_detection_layer,
    layer_scores,
    quantile_threshold,
    spikiness,
)
from steer.engine import ActivationRecorder, window_bounds
from steer.errors import DetectorFileError
from steer.extract import encode_images
from steer.files import read_checked, write_checked
from steer.fingerprint import check_weights
from steer.text_tokens import encode_text
from steer.vae_codec import codec_vae
from steer.validation import (
    SchemaError,
    check_call_kwargs,
    check_detector_header,
    check_detector_tensors,
    check_int,
    safetensors_path,
    short,
)
from steer.vectors import ModelMismatchError, unet_fingerprint


# ----------------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class SteeringPipelineOutput(StableDiffusionPipelineOutput):
    """`StableDiffusionPipelineOutput` plus inline memorization scores (one per image, higher = more memorized).

    ``memorization_step_scores`` is (steps, images): the statistic at every denoiser call, one per denoising step
    (second-order samplers such as ``"heun"`` and ``"dpm2"`` call the denoiser twice for all but the last step, so
    their rows, the inline window and ``memorization_early_steps`` count calls). ``memorized`` is set
    when a calibrated detector was given. With ``return_dict=False`` the call returns the tuple
    ``(images, nsfw_content_detected, memorization_scores, memorization_early_scores, memorized)``.
    """

    memorization_scores: torch.Tensor | None = None
    memorization_early_scores: torch.Tensor | None = None
    memorization_step_scores: torch.Tensor | None = None
    memorized: torch.Tensor | None = None


@dataclass
class MemorizationReport:
    """What `detect_memorization` returns: images, prompts, seeds, every score and the verdict."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    prompts: list[str]
    seeds: list[int]
    scores: torch.Tensor | None  # re-encode score (paper), None when skipped
    inline_scores: torch.Tensor
    early_scores: torch.Tensor
    memorized: torch.Tensor | None  # None for an uncalibrated detector
    threshold: float | None
    verdict_from: str
    timings: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able dict per image."""
        out = []
        for i, prompt in enumerate(self.prompts):
            out.append(
                {
                    "index": i,
                    "prompt": prompt,
                    "seed": self.seeds[i],
                    "score": None if self.scores is None else float(self.scores[i]),
                    "inline_score": float(self.inline_scores[i]),
                    "early_score": float(self.early_scores[i]),
                    "memorized": None if self.memorized is None else bool(self.memorized[i]),
                }
            )
        return out


# ----------------------------------------------------------------------------------------------------------------------
# The detector
# ----------------------------------------------------------------------------------------------------------------------
class MemorizationDetector:
    """The paper's memorization detector plus its inline, zero-extra-evaluation variant.

    ``layers``: module paths or globs (default: `default_detection_layer`); several layers average their scores.
    ``pooling``: spatial ``"max"`` (paper) or ``"mean"``. ``statistic``: see `spikiness`. ``timestep``: the DDPM
    step the re-encoded latent is noised to. ``prompt``: condition the re-encode pass on the empty prompt
    (``"empty"``, paper) or on each image's own prompt (``"own"``). ``seed`` fixes the re-encode noise (the same
    noise for every image, so a score never depends on batching). ``inline_window`` and ``early_steps`` define
    the inline scores. Thresholds (`threshold`, `inline_threshold`, `early_threshold`) are set by `calibrate`.
    ``inline_score``: what the inline and early scores measure at each step: ``"spikiness"`` (``statistic`` of the
    conditional branch: the paper's measure, read during sampling) or ``"cfg_distance"`` (`cfg_distance` between the
    two guidance branches; needs ``guidance_scale > 1``), at ``inline_layers`` (default: ``layers``).
    """

    def __init__(
        self,
        pipe,
        layers: str | Sequence[str] | None = None,
        pooling: Literal["max", "mean"] = "max",
        statistic: Statistic = "std",
        timestep: int = 10,
        prompt: Literal["empty", "own"] = "empty",
        *,
        seed: int = 0,
        inline_window: tuple[float, float] = DEFAULT_INLINE_WINDOW,
        early_steps: int = DEFAULT_EARLY_STEPS,
        batch_size: int = 32,
        inline_score: InlineScore = "spikiness",
        inline_layers: str | Sequence[str] | None = None,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {PROMPT_MODES}, got {prompt!r}")
        if inline_score not in INLINE_SCORES:
            raise ValueError(f"inline_score must be one of {INLINE_SCORES}, got {inline_score!r}")
        start, end = (float(w) for w in inline_window)
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"inline_window must satisfy 0 <= start < end <= 1, got {inline_window!r}")
        if int(early_steps) < 1:
            raise ValueError(f"early_steps must be >= 1, got {early_steps}")
        self.pipe = pipe
        unet = denoiser_of(pipe)
        default = default_detection_layer(unet)  # also refuses denoisers the signal does not apply to
        self.layers = resolve_layers(unet, layers) if layers is not None else [default]
        self.inline_layers = resolve_layers(unet, inline_layers) if inline_layers is not None else list(self.layers)
        self.inline_score = inline_score
        self.pooling = pooling
        self.statistic = statistic
        self.timestep = int(timestep)
        self.prompt = prompt
        self.seed = int(seed)
        self.inline_window = (start, end)
        self.early_steps = int(early_steps)
        self.batch_size = int(batch_size)
        self.threshold: float | None = None
        self.inline_threshold: float | None = None
        self.early_threshold: float | None = None
        self.fpr: float | None = None
        self.calibration: dict[str, torch.Tensor] = {}
        # how the calibration's ordinary samples were made (steps, guidance, sampler): the inline and early thresholds
        # hold their false-positive rate there only (`sampling_note`)
        self.sampling: dict[str, Any] | None = None
        noiser = DDPMScheduler.from_config(pipe.scheduler.config)
        if not 0 <= self.timestep < noiser.config.num_train_timesteps:
            raise ValueError(f"timestep must be in [0, {noiser.config.num_train_timesteps}), got {timestep}")
        self._noiser = noiser

    def __repr__(self) -> str:
        return (
            f"MemorizationDetector(layers={self.layers}, pooling={self.pooling!r}, statistic={self.statistic!r}, "
            f"timestep={self.timestep}, prompt={self.prompt!r}, inline_score={self.inline_score!r}, "
            f"inline_layers={self.inline_layers}, threshold={self.threshold})"
        )

    @property
    def calibrated(self) -> bool:
        return self.threshold is not None or self.inline_threshold is not None

    # ----- re-encode score (the paper) ---------------------------------------------------------------------------
    def _noise(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randn(tuple(shape), generator=gen).to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def representations(self, images: Any, prompts: str | Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Pooled (N, C) activations per layer of the re-encode pass (VAE encode, noise to t, one UNet call)."""
        items = list(images) if not isinstance(images, torch.Tensor) or images.ndim == 4 else [images]
        if not items:
            raise ValueError("no images to score")
        texts = self._condition_prompts(len(items), prompts)
        unet = denoiser_of(self.pipe)
        recorder = ActivationRecorder(unet, self.layers, self.pooling, cfg=False, branch="both")
        vae = codec_vae(self.pipe)  # one float32 copy for every batch where the VAE is upcast
        with denoiser_use(self.pipe), recorder:  # the uncompiled module, where the recorder's hooks fire
            for i in range(0, len(items), self.batch_size):
                z0 = encode_images(self.pipe, items[i : i + self.batch_size], vae=vae)
                t = torch.full((len(z0),), self.timestep, device=z0.device, dtype=torch.long)
                zt = self._noiser.add_noise(z0, self._noise(z0.shape[1:], z0).expand_as(z0), t)
                cond = encode_text(self.pipe, texts[i : i + self.batch_size]).to(zt.dtype)
                unet(zt, t, encoder_hidden_states=cond, return_dict=False)
        return {n: recorder.stacked(n) for n in self.layers}

    def _condition_prompts(self, n: int, prompts: str | Sequence[str] | None) -> list[str]:
        if self.prompt == "empty":
            return [""] * n
        if prompts is None:
            raise ValueError("this detector conditions on each image's own prompt (prompt='own'): pass prompts=...")
        texts = [prompts] * n if isinstance(prompts, str) else list(prompts)
        if len(texts) != n:
            raise ValueError(f"got {len(texts)} prompts for {n} images")
        return texts

    def score(self, images: Any, prompts: str | Sequence[str] | None = None) -> torch.Tensor:
        """Paper score of each image (PIL images, paths, or tensors in [0, 1]); (N,) float, higher = memorized."""
        return layer_scores(self.representations(images, prompts), self.statistic)

    def predict(self, images: Any, prompts: str | Sequence[str] | None = None) -> torch.Tensor:
        """Booleans: the re-encode score is above the calibrated threshold."""
        if self.threshold is None:
            raise RuntimeError("the detector is not calibrated: call calibrate(ordinary_images_or_prompts) or load a calibrated file")
        return self.score(images, prompts) > self.threshold

    # ----- inline scores ------------------------------------------------------------------------------------------
    def recorder(self, call_pipe) -> ActivationRecorder:
        """An `ActivationRecorder` for an inline run of ``call_pipe`` (all steps; the conditional branch, or both
        branches for ``inline_score="cfg_distance"``)."""
        return ActivationRecorder(
            denoiser_of(call_pipe),
            self.inline_layers,
            self.pooling,
            num_steps=lambda: len(call_pipe.scheduler.timesteps),
            cfg=lambda: call_pipe.do_classifier_free_guidance,
            branch="both" if self.inline_score == "cfg_distance" else "cond",
        )

    def step_scores(self, recorder: ActivationRecorder) -> torch.Tensor:
        """(steps, images) inline score at every recorded step, averaged over ``inline_layers``."""
        if self.inline_score == "cfg_distance" and not recorder.cfg:
            raise ValueError("inline_score='cfg_distance' compares the two classifier-free-guidance branches: "
                             "sample with guidance_scale > 1, or use inline_score='spikiness'")
        per_layer = []
        for name in self.inline_layers:
            steps = recorder.by_step(name)
            if not steps:
                raise RuntimeError(f"no activations were recorded at {name!r} during sampling")
            pooled = torch.stack([steps[s] for s in sorted(steps)])  # (steps, rows, C)
            if self.inline_score == "cfg_distance":
                uncond, cond = pooled.chunk(2, dim=1)
                per_layer.append(cfg_distance(uncond, cond))
            else:
                per_layer.append(spikiness(pooled, self.statistic))
        return torch.stack(per_layer).mean(0)

    def inline_from_steps(self, step_scores: torch.Tensor, early_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(final score, early score) per image from (steps, images) step scores."""
        n = step_scores.shape[0]
        first, stop = window_bounds(self.inline_window, n)
        first, stop = min(first, n - 1), max(stop, min(first, n - 1) + 1)
        k = min(int(early_steps or self.early_steps), n)
        return step_scores[first:stop].mean(0), step_scores[:k].mean(0)

    # ----- calibration --------------------------------------------------------------------------------------------
    def calibrate(
        self,
        ordinary: Any,
        fpr: float = 0.01,
        *,
        num_images_per_prompt: int = 1,
        seed: int = 0,
        **call_kwargs: Any,
    ) -> MemorizationDetector:
        """Set thresholds at the (1 - fpr) quantile of scores of ordinary (non-memorized) samples.

        ``ordinary``: images (re-encode threshold only) or prompts (generated first, with inline scores recorded:
        sets the re-encode, inline and early thresholds). ``call_kwargs`` go to the pipeline call.
        """
        if _is_prompt_list(ordinary):
            prompts = [ordinary] if isinstance(ordinary, str) else list(ordinary)
            report = detect_memorization(
                self.pipe, prompts, detector=self, num_images_per_prompt=num_images_per_prompt, seed=seed, **call_kwargs
            )
            scores = {"reencode": report.scores, "inline": report.inline_scores, "early": report.early_scores}
            self.sampling = sampling_of(self.pipe, call_kwargs)
        else:
            scores = {"reencode": self.score(ordinary)}
        self.calibration = {k: v.detach().float().cpu() for k, v in scores.items()}
        self.fpr = float(fpr)
        n = int(scores["reencode"].numel())
        if 0 < fpr and n * fpr < 1:  # the (1 - fpr) quantile of n samples is about their maximum
            warnings.warn(f"detector: {n} ordinary sample(s) cannot resolve a false-positive rate of {fpr:g} (that needs at "
                          f"least {math.ceil(1 / fpr)}): the threshold sits at about their maximum, so about 1 in {n + 1} "
                          "ordinary images will score above it; calibrate on more prompts or num_images_per_prompt", UserWarning, stacklevel=2)
        self.threshold = quantile_threshold(scores["reencode"], fpr)
        self.inline_threshold = quantile_threshold(scores["inline"], fpr) if "inline" in scores else None
        self.early_threshold = quantile_threshold(scores["early"], fpr) if "early" in scores else None
        return self

    # ----- files --------------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "pooling": self.pooling,
            "statistic": self.statistic,
            "timestep": self.timestep,
            "prompt": self.prompt,
            "seed": self.seed,
            "inline_window": list(self.inline_window),
            "early_steps": self.early_steps,
            "inline_score": self.inline_score,
            "inline_layers": list(self.inline_layers),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write a ``.safetensors`` file: calibration scores as tensors, settings/thresholds/model as JSON. Atomic."""

        path = safetensors_path(path)
        tensors = {f"calibration.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in self.calibration.items()}
        unet = denoiser_of(self.pipe)
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "config": self.config(),
            "thresholds": {"reencode": self.threshold, "inline": self.inline_threshold, "early": self.early_threshold},
            "fpr": self.fpr,
            **({"sampling": self.sampling} if self.sampling is not None else {}),
            "model": {**unet_fingerprint(unet, sorted({*self.layers, *self.inline_layers})),
                      "name_or_path": str(getattr(self.pipe, "name_or_path", "") or "")},
        }
        return write_checked(path, tensors, _METADATA_KEY, header)

    @classmethod
    def load(cls, path: str | os.PathLike, pipe, strict: bool = True) -> MemorizationDetector:
        """Read a detector file for ``pipe``. Raises `DetectorFileError` for a damaged or foreign file and
        `ModelMismatchError` when it was calibrated on another model (``strict=False`` allows other weights of the
        same architecture)."""
        header, tensors = read_detector_file(Path(path))
        cfg = header.get("config") or {}
        missing = [k for k in ("layers", "pooling", "statistic", "timestep", "prompt") if k not in cfg]
        if missing:
            raise DetectorFileError(f"{path}: the detector settings lack {missing}")
        try:
            layers = resolve_layers(denoiser_of(pipe), cfg["layers"])
            inline_layers = resolve_layers(denoiser_of(pipe), cfg.get("inline_layers") or cfg["layers"])
        except KeyError as err:
            raise ModelMismatchError(f"{path}: the detector's layers do not exist in this UNet: {err}") from None
        try:
            det = cls(
                pipe,
                layers=layers,
                pooling=cfg["pooling"],
                statistic=cfg["statistic"],
                timestep=cfg["timestep"],
                prompt=cfg["prompt"],
                seed=cfg.get("seed", 0),
                inline_window=tuple(cfg.get("inline_window", DEFAULT_INLINE_WINDOW)),
                early_steps=cfg.get("early_steps", DEFAULT_EARLY_STEPS),
                inline_score=cfg.get("inline_score", "spikiness"),
                inline_layers=inline_layers,
            )
        except (TypeError, ValueError) as err:
            raise DetectorFileError(f"{path}: invalid detector settings: {err}") from None
        _check_model(header.get("model") or {}, denoiser_of(pipe), sorted({*det.layers, *det.inline_layers}), strict, path)
        thresholds = header.get("thresholds") or {}
        det.threshold = _opt_float(thresholds.get("reencode"))
        det.inline_threshold = _opt_float(thresholds.get("inline"))
        det.early_threshold = _opt_float(thresholds.get("early"))
        det.fpr = _opt_float(header.get("fpr"))
        det.calibration = {k.split(".", 1)[1]: v for k, v in tensors.items()}
        det.sampling = header.get("sampling")
        return det

    def sampling_note(self, call_pipe: Any = None, now: dict[str, Any] | None = None) -> str | None:
        """One line when the call just run on ``call_pipe`` (or sampling ``now``: steps, guidance, sampler as
        `sampling_of` gives them) sampled otherwise than the calibration did, so the inline and early verdicts do not
        hold the calibrated false-positive rate (measured on demo-hybrid, calibrated at DDIM 25, guidance 5: the early
        verdict flagged 16 % of ordinary images at 10 steps, the inline one 17.5 % at guidance 2); None where they
        match or the file does not record them."""
        if not self.sampling:
            return None
        now = now if now is not None else sampling_of(call_pipe)
        differ = [k for k in ("num_inference_steps", "guidance_scale", "sampler") if k in self.sampling and now.get(k) != self.sampling[k]]
        if not differ:
            return None
        show = {"num_inference_steps": "{} steps", "guidance_scale": "guidance {:g}", "sampler": "{:.40}"}
        was = ", ".join(show[k].format(self.sampling[k]) for k in differ)
        got = ", ".join(show[k].format(now[k]) for k in differ)
        rate = f"the calibrated {self.fpr:.0%}" if self.fpr is not None else "the calibrated one"
        return (f"the memorization detector was calibrated at {was}; this call ran {got}: its false-positive rate is "
                f"not {rate} (recalibrate at these settings, or sample at the calibrated ones)")


def sampling_of(pipe, call_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Steps, guidance and sampler (its name as `steer.samplers.sampler_name` gives it) of a call of ``pipe`` with
    ``call_kwargs`` (the call's defaults where they leave one out); without them, of the call just run on ``pipe`` (a
    call's own copy: the steps its scheduler was set to, not diffusers' count of denoiser calls, which is 2N - 1 on
    Heun and fewer in an image-to-image run)."""
    from steer.samplers import sampler_name

    if call_kwargs is not None:
        defaults = inspect.signature(type(pipe).__call__).parameters
        steps = call_kwargs.get("num_inference_steps", defaults["num_inference_steps"].default)
        guidance = call_kwargs.get("guidance_scale", defaults["guidance_scale"].default)
    else:
        steps = getattr(pipe.scheduler, "num_inference_steps", None) or len(pipe.scheduler.timesteps)
        guidance = getattr(pipe, "_guidance_scale", 0.0)
    return {"num_inference_steps": int(steps), "guidance_scale": float(guidance), "sampler": sampler_name(pipe.scheduler)}


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def read_detector_file(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a detector file and check its whole header schema and calibration tensors (`steer.validation`)."""
    header, tensors = read_checked(
        path, _METADATA_KEY, FORMAT_NAME, FORMAT_VERSION, DetectorFileError, "memorization detector", contents="calibration data"
    )
    choices = {"pooling": POOLINGS, "statistic": STATISTICS, "prompt": PROMPT_MODES, "inline_score": INLINE_SCORES}
    try:
        check_detector_header(header, SCORE_KINDS, choices)
        check_detector_tensors(tensors, SCORE_KINDS)
    except SchemaError as err:
        raise DetectorFileError(f"{path}: {err}") from None
    return header, tensors


def _check_model(saved: dict[str, Any], unet: torch.nn.Module, layers: list[str], strict: bool, path: Path) -> None:
    if not saved:
        return
    current = unet_fingerprint(unet, layers, weights=False)  # the weights only when strict (under offload: read apart)
    if saved.get("config_hash") != current["config_hash"] or saved.get("channels", current["channels"]) != current["channels"]:
        raise ModelMismatchError(
            f"{path} was calibrated on a different UNet architecture (config hash {saved.get('config_hash')} vs "
            f"{current['config_hash']}, model {saved.get('name_or_path') or 'unknown'!r})"
        )
    if not strict:
        return
    check_weights(
        saved,
        unet,
        f"{path}: the weights it was calibrated on are not checked",
        lambda current: (
            f"{path} was calibrated on other weights (weights hash {saved.get('weights_hash')} vs {current}, "
            f"model {saved.get('name_or_path') or 'unknown'!r}); thresholds do not transfer between checkpoints — "
            "recalibrate, or load with strict=False"
        ),
        stacklevel=3,
    )


def as_detector(value: Any, pipe) -> MemorizationDetector | None:
    if isinstance(value, MemorizationDetector):
        return value
    if isinstance(value, str | os.PathLike):
        return MemorizationDetector.load(value, pipe)
    if value is None or value is False:
        return None
    if value is True:
        return MemorizationDetector(pipe)
    raise TypeError(f"detect_memorization takes True, a MemorizationDetector or a detector file path, got {type(value).__name__}")


# ----------------------------------------------------------------------------------------------------------------------
# Generate + score + verdict
# ----------------------------------------------------------------------------------------------------------------------
def detect_memorization(
    pipe,
    prompt: str | Sequence[str],
    *,
    detector: MemorizationDetector | str | os.PathLike | None = None,
    num_images_per_prompt: int = 1,
    seed: int = 0,
    reencode: bool = True,
    verdict_from: Literal["reencode", "inline", "early"] | None = None,
    batch_size: int = 8,
    **call_kwargs: Any,
) -> MemorizationReport:
    """Generate images for ``prompt`` (seeds ``seed + i``), score them inline and (``reencode``) with the paper's
    re-encode detector, and give a verdict when the detector is calibrated.

    ``verdict_from`` picks the score the verdict uses. Default: the inline score for a calibrated
    ``inline_score="cfg_distance"`` detector (the recommended one, docs/detection.md), else the re-encode score when
    computed, else the inline one.
    """
    if "memorization_detector" not in getattr(pipe, "_extra_call_params", tuple)():
        raise TypeError("detect_memorization needs a steer.SteeringStableDiffusionPipeline (see steer.cli.loading.load_pipeline)")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("detect_memorization takes a prompt or a non-empty list of prompts")
    check_int(num_images_per_prompt, "num_images_per_prompt", 1, 100_000, optional=False)
    check_int(batch_size, "batch_size", 1, 4096, optional=False)
    check_call_kwargs(pipe, call_kwargs, detect_memorization, sets=("memorization_detector",))
    if verdict_from not in (None, "reencode", "inline", "early"):
        raise ValueError(f"verdict_from must be 'reencode', 'inline', 'early' or None, got {short(verdict_from)}")
    det = as_detector(detector, pipe) if detector is not None else MemorizationDetector(pipe)
    early_steps = call_kwargs.get("memorization_early_steps")
    if verdict_from == "early" and early_steps is not None and early_steps != det.early_steps and det.early_threshold is not None:
        raise ValueError(f"verdict_from='early' compares with the early threshold, set over the first {det.early_steps} "
                         f"step(s): memorization_early_steps={short(early_steps)} scores another span (leave it out, or "
                         f"calibrate a detector with early_steps={short(early_steps)})")
    items = [p for p in prompts for _ in range(num_images_per_prompt)]
    seeds = [seed + i for i in range(len(items))]
    gen_device = "cpu" if pipe._execution_device.type == "mps" else pipe._execution_device
    images, inline, early = [], [], []
    t0 = time.perf_counter()
    for i in range(0, len(items), batch_size):
        gens = [torch.Generator(device=gen_device).manual_seed(s) for s in seeds[i : i + batch_size]]
        out = pipe(items[i : i + batch_size], generator=gens, output_type="pt", memorization_detector=det, **call_kwargs)
        images.append(out.images.float().cpu())
        inline.append(out.memorization_scores)
        early.append(out.memorization_early_scores)
    t1 = time.perf_counter()
    images_t = torch.cat(images)
    scores = det.score(images_t, items) if reencode else None
    t2 = time.perf_counter()
    prefer_inline = det.inline_score == "cfg_distance" and det.inline_threshold is not None
    source = verdict_from or ("inline" if prefer_inline or not reencode else "reencode")
    if source == "reencode" and not reencode:
        raise ValueError("verdict_from='reencode' needs reencode=True")
    values = {"reencode": scores, "inline": torch.cat(inline), "early": torch.cat(early)}[source]
    threshold = {"reencode": det.threshold, "inline": det.inline_threshold, "early": det.early_threshold}[source]
    return MemorizationReport(
        images=images_t,
        prompts=items,
        seeds=seeds,
        scores=scores,
        inline_scores=torch.cat(inline),
        early_scores=torch.cat(early),
        memorized=None if threshold is None else values > threshold,
        threshold=threshold,
        verdict_from=source,
        timings={"generate_s": t1 - t0, "reencode_s": t2 - t1},
    )
