"""The Memorization tab's logic: calibrate a detector in the app, and show a verdict with the ordinary-sample
histogram. Never imports gradio (see `steer.app.helpers`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from steer.app.base import LIMITS, ProgressFn, UserError, check_float, check_int, check_prompt


def calibrate_detector(
    pipe,
    prompts: Sequence[str],
    samples: int,
    fpr: float,
    steps: int,
    guidance: float,
    progress: ProgressFn | None = None,
):
    """A fresh detector calibrated on ``samples`` ordinary images of ``prompts`` (thresholds at ``fpr``)."""
    try:
        from steer.detect.detector import MemorizationDetector
    except ImportError:
        raise UserError("memorization detection is not available: steer.detect is missing from this install") from None
    prompts = [check_prompt(p, "calibration prompt") for p in prompts if p.strip()]
    if not prompts:
        raise UserError("write at least one ordinary prompt to calibrate on")
    samples = check_int(samples, "calibration samples", 4, 256)
    fpr = check_float(fpr, "the false-positive rate", 0.001, 0.5)
    items = [prompts[i % len(prompts)] for i in range(samples)]
    if progress:
        progress(0.0, "calibrating")
    from steer.detect.scores import RECOMMENDED_INLINE

    try:  # the inline score that worked best (docs/detection.md); it needs the layer and classifier-free guidance
        detector = MemorizationDetector(pipe, **RECOMMENDED_INLINE) if guidance > 1.0 else MemorizationDetector(pipe)
    except KeyError:
        detector = MemorizationDetector(pipe)
    detector.calibrate(
        items,
        fpr=fpr,
        seed=1_000_000,
        num_inference_steps=check_int(steps, "steps", 1, LIMITS.max_steps),
        guidance_scale=guidance,
    )
    return detector


@dataclass
class MemorizationView:
    """What the Memorization panel shows: a verdict (markdown) and the histogram with the image's score."""

    markdown: str
    plot: Image.Image | None = None


def _verdict_view(score: float, ordinary, threshold: float, fpr: float | None, described: str, xlabel: str) -> MemorizationView:
    """Verdict text and histogram of ``score`` against the ``ordinary`` calibration scores; ``described`` names the
    score after the verdict (e.g. ``"score **1.2**"``)."""
    ordinary = ordinary.double()
    percentile = float((ordinary < score).double().mean() * 100)
    verdict = "⚠ **likely memorized**" if score > threshold else "✓ **ordinary** (not flagged)"
    rate = f" at a {fpr:.0%} false-positive rate" if fpr is not None else ""
    text = (
        f"{verdict} - {described}, threshold {threshold:.4g}{rate}. Higher than {percentile:.0f}% of "
        f"{len(ordinary)} ordinary samples of this model."
    )
    return MemorizationView(text, histogram(ordinary.float().numpy(), score, threshold, xlabel))


def inline_view(detector, score: float, note: str | None = None) -> MemorizationView:
    """The verdict of an inline score read while the image was generated, on the ordinary-sample histogram; ``note``
    (`MemorizationDetector.sampling_note`: the image was sampled otherwise than the calibration) after it."""
    what = "CFG distance" if getattr(detector, "inline_score", "spikiness") == "cfg_distance" else "spikiness"
    described = f"inline {what} **{score:.4g}**, read while this image was generated (no extra UNet evaluation)"
    view = _verdict_view(score, detector.calibration["inline"], float(detector.inline_threshold), detector.fpr,
                         described, f"inline {what} (higher = more memorized)")
    if note:
        view.markdown += f"\n\nNote: {note[0].upper()}{note[1:]}."
    return view


def score_image(detector, image: Image.Image, prompt: str) -> MemorizationView:
    """Score ``image`` (the paper's re-encode score) and place it on the ordinary-sample histogram."""
    score = float(detector.score([image], [prompt])[0])
    ordinary = detector.calibration.get("reencode")
    threshold = detector.threshold
    if threshold is None or ordinary is None or len(ordinary) == 0:
        return MemorizationView(
            f"Score **{score:.4g}** (higher = more memorized). The detector is not calibrated: no verdict."
        )
    return _verdict_view(score, ordinary, threshold, detector.fpr, f"score **{score:.4g}**",
                         "re-encode score (higher = more memorized)")


def histogram(
    ordinary: np.ndarray, score: float, threshold: float, xlabel: str = "re-encode score (higher = more memorized)"
) -> Image.Image | None:
    """The ordinary-sample score histogram with the threshold and this image's score marked (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    ax.hist(ordinary, bins=min(30, max(5, len(ordinary) // 3)), color="#88aacc", label="ordinary samples")
    ax.axvline(threshold, color="#cc3311", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.axvline(score, color="#222222", linewidth=2.5, label=f"this image {score:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
