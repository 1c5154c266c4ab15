"""Inline detection: the pipeline extension point (``pipe(..., detect_memorization=True)``)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch

from steer.detect.detector import SteeringPipelineOutput, as_detector
from steer.validation import MAX_STEPS, check_int

# ----------------------------------------------------------------------------------------------------------------------
# Inline mode: the pipeline extension point
# ----------------------------------------------------------------------------------------------------------------------
STEERED_VERDICT_NOTE = (
    "the inline memorization verdict of steered rows ({rows}) is not calibrated: the threshold was set on unsteered "
    "samples, and steering moves the score as memorization does (measured on demo-hybrid: to_bag at 1.0 flagged 36 "
    "of 40 ordinary prompts, 1 of 40 unsteered); judge steered images by the re-encode score (detector.score(images))"
)


def enter_inline_detection(call_pipe, stack: contextlib.ExitStack, extras: dict[str, Any], num_images: int,
                           steered_rows: torch.Tensor | None = None) -> Callable | None:
    """`SteeringStableDiffusionPipeline._enter_extras` for memorization detection.

    Enters an `ActivationRecorder` for this call and returns ``finish(output)``, which adds the scores to the
    output. Returns None when detection was not asked for. ``steered_rows``: (images,) booleans, the rows steered
    at a non-zero scale: their verdicts come with a warning (`STEERED_VERDICT_NOTE`).
    """
    detector = as_detector(extras.get("memorization_detector"), call_pipe) or as_detector(
        extras.get("detect_memorization"), call_pipe
    )
    early = check_int(extras.get("memorization_early_steps"), "memorization_early_steps", 1, MAX_STEPS)  # a NaN score else
    if detector is None:
        if early is not None:
            raise ValueError("memorization_early_steps scores memorization inline: pass detect_memorization=True too")
        return None
    if hasattr(call_pipe.unet, "_orig_mod"):  # compiled in place: the recorder's hooks are refused (check_hookable)
        raise ValueError("inline memorization detection needs hooks, which a torch.compile-d UNet ignores; use the uncompiled UNet")
    recorder = stack.enter_context(detector.recorder(call_pipe))

    def finish(output: Any) -> Any:
        steps = detector.step_scores(recorder)
        if steps.shape[1] != num_images:
            raise RuntimeError(f"recorded {steps.shape[1]} rows for {num_images} images")
        final, first = detector.inline_from_steps(steps, early)
        memorized = final > detector.inline_threshold if detector.inline_threshold is not None else None
        if memorized is not None and (note := detector.sampling_note(call_pipe)) is not None:
            warnings.warn(note, UserWarning, stacklevel=4)
        if memorized is not None and steered_rows is not None and bool(steered_rows.any()):
            rows = ", ".join(str(i) for i in steered_rows.nonzero().flatten().tolist()[:8])
            warnings.warn(STEERED_VERDICT_NOTE.format(rows=rows + (", ..." if int(steered_rows.sum()) > 8 else "")),
                          UserWarning, stacklevel=4)
        if isinstance(output, tuple):
            return (*output, final, first, memorized)
        return SteeringPipelineOutput(
            images=output.images,
            nsfw_content_detected=getattr(output, "nsfw_content_detected", None),  # pipelines without a safety checker: None
            memorization_scores=final,
            memorization_early_scores=first,
            memorization_step_scores=steps,
            memorized=memorized,
        )

    return finish
