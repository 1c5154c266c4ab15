"""The Learn tab's logic (``app.py``): the request, validated, and the call to `learn_direction` with a progress bar
over its stages. Re-exported by `steer.app.helpers`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from steer.app.base import (
    LIMITS,
    ProgressFn,
    UserError,
    check_choice,
    check_float,
    check_int,
    check_prompt,
    check_sampler_choice,
    layer_names,
    sampling_pipe,
    shown,
)
from steer.app.uploads import load_images
from steer.denoisers import default_layers, denoiser_of
from steer.vectors import SteeringVector

LAYER_SCOPES = ("all layers", "paper default", "chosen layers")
LEARN_METHODS = ("mean_diff", "mean", "pca")
LEARN_MODES = ("text", "trajectory", "fast", "reference")
# "auto": the calibration compares the early half with the whole run (learn_direction(window="auto"))
LEARN_WINDOWS = ("mode default", "auto")
# which cross-attentions read a text direction (learn_direction(readers=...)): auto, learn_direction's default for text
# directions, reads by the layout blocks where the model's own prompt edit moves the layout; "all" is the denoiser's input
LEARN_READERS = ("auto", "all", "layout", "detail")


def parse_prompt_lines(text: str | None, what: str) -> list[str]:
    """Non-empty lines of ``text``, each within the prompt cap; at most ``max_learn_prompts``."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) > LIMITS.max_learn_prompts:
        raise UserError(f"the {what} prompts have {len(lines)} lines; at most {LIMITS.max_learn_prompts} are allowed")
    return [check_prompt(line, f"{what} prompt") for line in lines]


@dataclass(frozen=True)
class LearnSettings:
    """One learn request."""

    positive: str = ""
    negative: str = ""
    positive_files: tuple[Any, ...] = ()
    negative_files: tuple[Any, ...] = ()
    method: str = "mean_diff"
    mode: str = "fast"
    scope: str = "all layers"
    layers: tuple[str, ...] = ()
    num_samples: int = 8
    steps: int = 20
    guidance: float = 5.0
    seed: int = 0
    name: str = ""
    image_prompt: str = ""
    window: str = "mode default"
    readers: str = "auto"
    sampler: str = ""  # a `steer.samplers` name the samples are drawn with; "": the model's own scheduler
    negative_prompt: str = ""  # every learning and calibration sample is drawn with it (prompt sets only)
    two_sided: bool = False  # a slider: the negatives' attribute at negative strengths (learn_direction(two_sided=True))

    def sets(self) -> tuple[list, list]:
        """(positive, negative) items: images if any were uploaded for the positive set, else prompt lines."""
        if self.positive_files:
            pos = load_images(self.positive_files, "positive")
            neg = load_images(self.negative_files, "negative")
        else:
            if self.negative_files:
                raise UserError("negative images need positive images too (or use prompts for both sets)")
            pos = parse_prompt_lines(self.positive, "positive")
            neg = parse_prompt_lines(self.negative, "negative")
        if not pos:
            raise UserError("the positive set is empty: write at least one prompt (or upload images)")
        if self.method != "mean" and not neg:
            if self.positive_files and self.negative.strip():  # the prompts box is filled, yet not read: say why
                raise UserError("upload negative images too: with positive images both sets are images (the negative "
                                "prompts are not read), or use 'mean'")
            raise UserError(f"method {shown(self.method)} needs a negative set; add negative prompts/images or use 'mean'")
        return pos, neg

    def layer_list(self, pipe) -> list[str]:
        scope = check_choice(self.scope, "the layer scope", LAYER_SCOPES)
        if scope == "all layers":
            return layer_names(pipe)
        if scope == "paper default":
            return default_layers(denoiser_of(pipe))
        chosen = [n for n in self.layers if n]
        if not chosen:
            raise UserError("pick at least one layer, or choose 'all layers'")
        unknown = [n for n in chosen if n not in layer_names(pipe)]
        if unknown:
            raise UserError(f"unknown layer(s) {unknown}")
        return chosen

    def kwargs(self, pipe) -> dict[str, Any]:
        """Keyword arguments for `learn_direction` (after validation)."""
        mode = check_choice(self.mode, "the mode", LEARN_MODES)
        auto_window = check_choice(self.window, "the window", LEARN_WINDOWS) == "auto"
        if auto_window and (mode not in ("text", "trajectory") or not self.negative.strip() or self.positive_files):
            raise UserError("the auto window is chosen by calibration: it needs prompts for both sets and the text or trajectory mode")
        readers = check_choice(self.readers, "the readers", LEARN_READERS)
        if readers not in ("auto", "all") and (mode != "text" or self.positive_files):
            raise UserError(f"reading by {readers!r} routes text-token directions: it needs prompts and the text mode")
        negative_prompt = check_prompt(self.negative_prompt, "negative prompt to calibrate for", required=False)
        if negative_prompt and self.positive_files:
            raise UserError("the negative prompt to calibrate for applies to prompt sets: image sets are not sampled")
        if negative_prompt and mode == "text" and not self.negative.strip():  # nothing to calibrate, nothing sampled
            raise UserError("the negative prompt to calibrate for needs negative prompts: without them the text mode is "
                            "not calibrated")
        if self.sampler and self.positive_files:  # learned the same direction under any sampler
            raise UserError("the sampler applies to prompt sets: image sets are not sampled")
        if self.two_sided and (self.positive_files or not self.negative.strip() or mode not in ("text", "trajectory")):
            raise UserError("a two-sided slider is learned from prompts for both sets, each side calibrated (the text or "
                            "trajectory mode): write negative prompts that state the other attribute")
        if mode == "text" and self.positive_files:  # the text tokens do not depend on the images: all sets read alike
            raise UserError("the text mode learns from prompts: for image sets pick the fast or reference mode (the images "
                            "are re-encoded at the chosen layers)")
        if mode == "text" and self.scope == "chosen layers":  # learned at the prompt's tokens whatever was chosen
            raise UserError("the text mode learns at the prompt's tokens, not at chosen layers: pick the fast, reference "
                            "or trajectory mode to learn at chosen layers")
        if mode == "text":  # the text-token site, calibrated (learn_direction's default)
            layers: Any = None
        elif mode == "trajectory" and self.scope != "chosen layers":
            layers = "attn2"  # CASteer's sites: every cross-attention output
        else:
            layers = self.layer_list(pipe)
        return {
            "layers": layers,
            "method": check_choice(self.method, "the method", LEARN_METHODS),
            "mode": mode,
            **({"num_samples": check_int(self.num_samples, "samples per set", 1, LIMITS.max_learn_samples)}
               if mode in ("trajectory", "reference", "fast") and not self.positive_files else {}),  # the sampling modes'
            **({"num_inference_steps": check_int(self.steps, "learning steps", 1, LIMITS.max_learn_steps),
                "guidance_scale": check_float(self.guidance, "learning guidance", 0.0, LIMITS.max_guidance)}
               if not self.positive_files and (mode != "text" or self.negative.strip()) else {}),  # image sets, and the
            # text mode without negatives (uncalibrated), are not sampled: learn_direction refuses steps and guidance
            "seed": check_int(self.seed, "the learning seed", 0, LIMITS.max_seed),
            "name": check_prompt(self.name, "name", required=False) or None,
            **({"image_prompts": check_prompt(self.image_prompt, "image prompt", required=False)} if self.positive_files else {}),
            **({"window": "auto"} if auto_window else {}),
            **({"negative_prompt": negative_prompt} if negative_prompt else {}),
            **({"two_sided": True} if self.two_sided else {}),
            **({"readers": readers} if readers != "auto" and mode == "text" and not self.positive_files else {}),
        }


class StagedProgress:
    """Map `learn_direction`'s per-stage fractions (each stage runs 0 -> 1) onto one 0 -> 1 bar."""

    def __init__(self, report: ProgressFn, stages: int):
        self.report, self.stages, self.stage, self.last = report, max(stages, 1), 0, 0.0

    def __call__(self, fraction: float, desc: str) -> None:
        if fraction < self.last:
            self.stage = min(self.stage + 1, self.stages - 1)
        self.last = fraction
        self.report(min((self.stage + fraction) / self.stages, 1.0), desc)


def learn(pipe, settings: LearnSettings, progress: ProgressFn | None = None) -> SteeringVector:
    """Validate ``settings`` and learn a direction (forward passes only)."""
    kwargs = settings.kwargs(pipe)
    pipe = sampling_pipe(pipe, check_sampler_choice(pipe, settings.sampler))
    pos, neg = settings.sets()
    images = isinstance(pos[0], Image.Image)
    stages = (1 if images or kwargs["mode"] == "fast" else 2) * (2 if neg else 1) * (2 if kwargs.get("two_sided") else 1)
    report: Any = StagedProgress(progress, stages) if progress else False
    return pipe.learn_direction(pos, neg or None, progress=report, **kwargs)


