"""Why the steering hooks are plain PyTorch hooks and not diffusers' `HookRegistry` (see `steer/engine/__init__.py`).

    OMP_NUM_THREADS=1 python scripts/hook_registry_check.py

On the tiny UNet, a `ModelHook` that adds a delta at one resnet: does it act in eager mode, after `torch.compile`, and
how many compiles does each new per-call hook cost; and does a plain forward hook registered after compiling act.
Output on 2026-11-29 (torch 2.13, diffusers 0.42.1, CPU):

    eager hook acts: True
    removed -> identical: True
    compiled graphs: 1 same as base: True
    after registering on compiled: hook acts: True frames: 2
    delta changed: output changed: True frames: 2
    removed: back to base: True frames: 2
    plain hook after compile acts: False frames: 2
    3 new sessions on the compiled model: frames: 5
"""

from __future__ import annotations

import torch
import torch._dynamo as dynamo
from diffusers.hooks import HookRegistry, ModelHook
from torch._dynamo.testing import CompileCounter

from steer.testing import tiny_components


class AddHook(ModelHook):
    def __init__(self, delta: torch.Tensor):
        super().__init__()
        self.delta = delta

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        return output + self.delta


def main() -> None:
    torch.manual_seed(0)
    unet = tiny_components()["unet"]
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 4, 32)
    site = unet.up_blocks[0].resnets[0]

    def run(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model(x, t, encoder_hidden_states=c).sample

    def delta(value: float) -> torch.Tensor:
        return torch.full((1, 64, 1, 1), value)

    base = run(unet)
    reg = HookRegistry.check_if_exists_or_initialize(site)
    reg.register_hook(AddHook(delta(0.5)), "steer")
    print("eager hook acts:", not torch.equal(run(unet), base))
    reg.remove_hook("steer")
    print("removed -> identical:", torch.equal(run(unet), base))

    dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(unet, backend=counter)
    first = run(compiled)
    print("compiled graphs:", counter.frame_count, "same as base:", torch.allclose(first, base, atol=1e-6))
    reg = HookRegistry.check_if_exists_or_initialize(site)
    reg.register_hook(AddHook(delta(0.5)), "steer")
    hooked = run(compiled)
    print("after registering on compiled: hook acts:", not torch.allclose(hooked, base, atol=1e-6), "frames:", counter.frame_count)
    reg.get_hook("steer").delta = delta(1.0)
    moved = run(compiled)
    print("delta changed: output changed:", not torch.allclose(moved, hooked, atol=1e-6), "frames:", counter.frame_count)
    reg.remove_hook("steer")
    print("removed: back to base:", torch.allclose(run(compiled), base, atol=1e-6), "frames:", counter.frame_count)
    handle = site.register_forward_hook(lambda m, a, o: o + 0.5)
    print("plain hook after compile acts:", not torch.allclose(run(compiled), base, atol=1e-6), "frames:", counter.frame_count)
    handle.remove()
    for i in range(3):  # a new hook per call, as a per-call steering session would register
        reg = HookRegistry.check_if_exists_or_initialize(site)
        reg.register_hook(AddHook(delta(0.1 * (i + 1))), "steer")
        run(compiled)
        reg.remove_hook("steer")
        run(compiled)
    print("3 new sessions on the compiled model: frames:", counter.frame_count)


if __name__ == "__main__":
    main()
