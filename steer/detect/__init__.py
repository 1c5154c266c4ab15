"""Memorization detection from the spikiness of UNet activations (Zhang et al. 2026).

A memorized sample excites a few units of the denoiser very strongly; a generalized one excites many units
moderately. Two ways to read this:

- **Re-encode** (the paper): VAE-encode the generated image, noise it to a small DDPM timestep (t = 10), run one
  UNet pass with the empty prompt, hook ``up_blocks.0.resnets.<last>.nonlinearity``, max-pool over space to a
  per-channel vector and take its population standard deviation. Costs one UNet evaluation (plus a VAE encode)
  after the generation. `MemorizationDetector.score`.
- **Inline**: ``pipe(..., detect_memorization=True)`` records the same layer's max-pooled activations of the
  conditional CFG branch *during* normal sampling, so the score costs zero extra UNet evaluations. The score of
  the first ``early_steps`` steps is an early warning available before the image exists.

The hooked module is the ``nonlinearity`` (SiLU) of a diffusers ``ResnetBlock2D``. That one module instance is
called three times per forward (after ``norm1`` on the block input, on the time embedding, and after ``norm2``);
the detector keeps the **last call** (after ``norm2``, ``out_channels`` wide), i.e. the input of the block's
second convolution.

Scores are "higher = more memorized". A detector calibrated on ordinary samples (`MemorizationDetector.calibrate`)
holds thresholds at a chosen false-positive rate and is saved as safetensors + JSON metadata (never pickle).

Modules: `steer.detect.scores` (statistics), `steer.detect.detector` (the detector and its file),
`steer.detect.inline` (the pipeline extension and `detect_memorization`), `steer.detect.baselines` (peers).
"""
