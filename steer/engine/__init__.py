"""The steering engine: hooks on a bare denoiser (no pipeline knowledge).

- `steer.engine.run`: one run's hooks, call counting, context isolation, windows;
- `steer.engine.steering`: `SteeringSession` (add deltas) and the per-layer plans;
- `steer.engine.recording`: `ActivationRecorder` (pooled activations per step);
- `steer.engine.compiled`: `StaticSteeringSites` for a `torch.compile`-d denoiser.

Hooks are plain PyTorch forward hooks, not diffusers' `HookRegistry` / `ModelHook`. Tried
(`scripts/hook_registry_check.py`, tiny UNet, torch 2.13, diffusers 0.42.1): a registry hook registered after
``torch.compile`` does act, because the registry replaces the module's ``forward`` and dynamo recompiles, but every
new hook instance costs one more compile (3 per-call sessions: 3 recompiles), while a plain forward hook registered
after compiling is silently ignored. Per-call sessions therefore use plain hooks on an uncompiled denoiser (one
handle each, removed on every exit path, coexisting with diffusers' own registry hooks such as offloading or caches,
which wrap ``forward`` underneath them), and a compiled denoiser gets `StaticSteeringSites`: hooks installed once
before compiling whose deltas are tensors filled per call, so slider moves never recompile.
"""

from steer.engine.compiled import StaticSteeringSites
from steer.engine.recording import ActivationRecorder, Pooling, pool
from steer.engine.run import DenoiserRun, SequentialCFG, activated, window_bounds
from steer.engine.steering import LayerPlan, SteeringSession, apply_delta, build_layer_plans, step_bucket

__all__ = [
    "ActivationRecorder",
    "DenoiserRun",
    "LayerPlan",
    "Pooling",
    "SequentialCFG",
    "StaticSteeringSites",
    "SteeringSession",
    "activated",
    "apply_delta",
    "build_layer_plans",
    "pool",
    "step_bucket",
    "window_bounds",
]
