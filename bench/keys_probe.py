"""How much of a text-site edit goes through the cross-attentions' keys (where each image position looks) rather than
their values (what each token writes there). Run from the repository root.

    python bench/keys_probe.py [--model DIR] [--seeds 2] [--out docs/steering/keys_share.json]

The text site steers the tokens every cross-attention (or the route's) reads, so both its keys and its values move.
Prompt-to-Prompt keeps a prompt's attention maps to keep its layout and edits what the tokens write; if the edits
that drift the class (cyan's kept) or miss it (sandal, coat) moved much through the keys, steering the values alone
would be a lever. For every bundled ``to_*`` direction of the model, on the matrix's attribute-open prompts
(`bench/steering_matrix.py`: a colour on "a <class>", a class on "a <colour> item"; per-image noise), at its full
edit (scale 1), three images per prompt and seed: unsteered, steered, and steered with every ``attn2.to_k`` handed
the call's unsteered text tokens (a bench-only patch: a pre-hook stashing the denoiser's text input before any
steering hook runs, one on each key projection handing it back). The keys' share of the edit is
``mean |steered - keys unsteered| / mean |steered - unsteered|`` (0: the values carry all of it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import C, K, direction_name, prompts_for  # noqa: E402

from steer.assets import DIRECTIONS_DIR  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402

_stash = threading.local()


def keys_read_the_prompt(unet: torch.nn.Module) -> list:
    """Hook ``unet`` so every cross-attention's keys read the call's unsteered text tokens; returns the handles."""

    def remember(_module, args, kwargs):
        h = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        _stash.tokens = h if isinstance(h, torch.Tensor) else None

    def unsteered(_module, args):
        h = getattr(_stash, "tokens", None)
        if h is not None and args and isinstance(args[0], torch.Tensor) and args[0].shape == h.shape:
            return (h, *args[1:])
        return None

    # registered before any steering session's hooks, so it sees the tokens as the pipeline passed them
    handles = [unet.register_forward_pre_hook(remember, with_kwargs=True)]
    handles += [m.to_k.register_forward_pre_hook(unsteered) for name, m in unet.named_modules() if name.endswith("attn2")]
    return handles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "keys_share.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    pipe = load_pipeline(args.model, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    names = {direction_name(n): (kind, n) for kind, group in (("colour", C), ("class", K)) for n in group}
    found = sorted(p.stem for p in DIRECTIONS_DIR.glob("to_*.safetensors") if p.stem in names)
    rows = []

    def draw(prompts, seeds, direction, scale):
        return pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=args.steps,
                    guidance_scale=5.0, output_type="np", steering=direction, steering_scale=scale).images

    for stem in found:
        kind, target = names[stem]
        prompts = prompts_for(kind, target)["open"] * args.seeds
        seeds = [args.seed_base + i for i in range(len(prompts))]
        plain, steered = draw(prompts, seeds, stem, 0.0), draw(prompts, seeds, stem, 1.0)
        handles = keys_read_the_prompt(pipe.unet)
        try:
            values_only = draw(prompts, seeds, stem, 1.0)
        finally:
            for h in handles:
                h.remove()
        edit, keys = float(abs(steered - plain).mean()), float(abs(steered - values_only).mean())
        rows.append({"direction": stem, "kind": kind, "edit": round(edit, 4), "keys_part": round(keys, 4), "keys_share": round(keys / edit, 3)})
        print(rows[-1], flush=True)
    meta = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()} CPU, 1 thread", "images_per_direction": 8 * args.seeds,
            "steps": args.steps, "guidance": 5.0, "seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
