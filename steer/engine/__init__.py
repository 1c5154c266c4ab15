"""The steering engine: hooks on a bare denoiser (no pipeline knowledge).

- `steer.engine.run`: one run's hooks, call counting, context isolation, windows;
- `steer.engine.steering`: `SteeringSession` (add deltas) and the per-layer plans;
- `steer.engine.recording`: `ActivationRecorder` (pooled activations per step);
- `steer.engine.compiled`: `StaticSteeringSites` for a `torch.compile`-d denoiser.

Hooks are plain PyTorch forward hooks rather than diffusers' `HookRegistry`: a registry hook replaces the module's
``forward`` (one chain per module), which dynamo then traces as part of the graph, so a hook registered after
``torch.compile`` is ignored the same way; plain hooks keep `StaticSteeringSites` and per-call sessions simple, coexist
with diffusers' own registry hooks (offload, caches) on the same modules, and are removed by handle.
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
