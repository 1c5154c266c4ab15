"""Memorization scores: spikiness statistics of pooled activations, the CFG-branch distance, thresholds.

The method and its defaults: `steer.detect` (package docstring).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from steer.denoisers import adapter_for, unwrap
from steer.extract import is_image_item

Statistic = Literal["std", "l4_l2", "max_over_mean"]
STATISTICS = ("std", "l4_l2", "max_over_mean")
POOLINGS = ("max", "mean")
PROMPT_MODES = ("empty", "own")
InlineScore = Literal["spikiness", "cfg_distance"]
INLINE_SCORES = ("spikiness", "cfg_distance")
SCORE_KINDS = ("reencode", "inline", "early")

# Inline defaults, chosen on the hybrid lab model (docs/detection.md): the statistic averaged over the last 20 %
# of the denoising steps is the final score; the mean over the first step(s) is the early warning.
DEFAULT_INLINE_WINDOW = (0.8, 1.0)
DEFAULT_EARLY_STEPS = 1

# The inline score that separates best on the hybrid lab model (docs/detection.md: selected on even seeds, reported on
# odd ones): the distance between the guidance branches' activations at the first resnet of up_blocks.1, all steps.
RECOMMENDED_INLINE = {"inline_score": "cfg_distance", "inline_layers": "up_blocks.1.resnets.0.nonlinearity",
                      "inline_window": (0.0, 1.0)}

# Extra ``__call__`` keywords of `SteeringStableDiffusionPipeline` handled here.
INLINE_CALL_PARAMS = ("detect_memorization", "memorization_detector", "memorization_early_steps")

FORMAT_NAME = "steer.MemorizationDetector"
FORMAT_VERSION = 1
_METADATA_KEY = "steer_detector"


# ----------------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------------
def spikiness(vectors: torch.Tensor, statistic: Statistic = "std") -> torch.Tensor:
    """Spikiness of each row of ``vectors`` (..., C) -> (...): high when a few channels dominate.

    - ``"std"``: population standard deviation over channels (the paper).
    - ``"l4_l2"``: ``||v||_4 / ||v||_2``; 1 for a one-hot vector, ``C**-0.25`` for a constant one.
    - ``"max_over_mean"``: ``max(v) / mean(|v|)``.
    """
    v = vectors.double()
    if statistic == "std":
        out = v.std(dim=-1, correction=0)
    elif statistic == "l4_l2":
        l2 = v.pow(2).sum(-1).sqrt()
        l4 = v.pow(4).sum(-1).pow(0.25)
        out = l4 / l2.clamp_min(1e-12)
    elif statistic == "max_over_mean":
        out = v.amax(-1) / v.abs().mean(-1).clamp_min(1e-12)
    else:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    return out.float()


def layer_scores(pooled: dict[str, torch.Tensor], statistic: Statistic) -> torch.Tensor:
    """Mean over layers of each layer's spikiness; ``pooled[layer]`` is (..., C)."""
    return torch.stack([spikiness(p, statistic) for p in pooled.values()]).mean(0)


def cfg_distance(uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """L2 distance between the pooled conditional and unconditional activations of each row, (..., C) -> (...).

    How much the prompt moves the representation: the representation-space analogue of Wen et al.'s
    ``||eps(x_t, c) - eps(x_t, 0)||``, free during sampling with classifier-free guidance (both branches are computed)."""
    return (cond.double() - uncond.double()).norm(dim=-1).float()


def default_detection_layer(unet: torch.nn.Module) -> str:
    """The paper's layer by role: the ``nonlinearity`` of the last resnet of ``up_blocks.0``.

    SD1.x: ``up_blocks.0.resnets.2.nonlinearity`` (the paper's); the lab models (``layers_per_block=1``):
    ``up_blocks.0.resnets.1.nonlinearity``.
    """
    unet = unwrap(unet)
    if adapter_for(unet).family != "unet":
        raise ValueError(
            f"memorization detection reads the spikiness of a UNet's up-block resnets (SD 1.x/2.x, SDXL); a "
            f"{type(unet).__name__} has none, and the signal is not established for diffusion transformers"
        )
    ups = list(getattr(unet, "up_blocks", []))
    if not ups or not getattr(ups[0], "resnets", None):
        raise ValueError("this UNet has no up_blocks.0.resnets; pass layers=... explicitly (see `steer layers`)")
    return f"up_blocks.0.resnets.{len(ups[0].resnets) - 1}.nonlinearity"


def quantile_threshold(scores: torch.Tensor, fpr: float) -> float:
    """The (1 - fpr) quantile of ordinary scores: about ``fpr`` of them lie above it."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise ValueError("cannot calibrate on zero ordinary samples")
    return float(torch.quantile(s, 1.0 - fpr))


def _is_prompt_list(items: Any) -> bool:
    if isinstance(items, str):
        return True
    items = list(items) if not isinstance(items, torch.Tensor) else []
    return bool(items) and all(isinstance(i, str) and not is_image_item(i) for i in items)
