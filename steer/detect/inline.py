"""Inline detection: the pipeline extension point (``pipe(..., detect_memorization=True)``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from steer.detect.detector import SteeringPipelineOutput, as_detector
from steer.validation import MAX_STEPS, check_int


# ----------------------------------------------------------------------------------------------------------------------
# Inline mode: the pipeline extension point
# ----------------------------------------------------------------------------------------------------------------------
def enter_inline_detection(call_pipe, stack: contextlib.ExitStack, extras: dict[str, Any], num_images: int) -> Callable | None:
    """`SteeringStableDiffusionPipeline._enter_extras` for memorization detection.

    Enters an `ActivationRecorder` for this call and returns ``finish(output)``, which adds the scores to the
    output. Returns None when detection was not asked for.
    """
    detector = as_detector(extras.get("memorization_detector"), call_pipe) or as_detector(
        extras.get("detect_memorization"), call_pipe
    )
    early = check_int(extras.get("memorization_early_steps"), "memorization_early_steps", 1, MAX_STEPS)  # a NaN score else
    if detector is None:
        if early is not None:
            raise ValueError("memorization_early_steps scores memorization inline: pass detect_memorization=True too")
        return None
    if hasattr(call_pipe.unet, "_orig_mod"):
        raise ValueError("inline memorization detection needs hooks, which a torch.compile-d UNet ignores; use the uncompiled UNet")
    recorder = stack.enter_context(detector.recorder(call_pipe))

    def finish(output: Any) -> Any:
        steps = detector.step_scores(recorder)
        if steps.shape[1] != num_images:
            raise RuntimeError(f"recorded {steps.shape[1]} rows for {num_images} images")
        final, first = detector.inline_from_steps(steps, early)
        memorized = final > detector.inline_threshold if detector.inline_threshold is not None else None
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
