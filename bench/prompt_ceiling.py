"""The model's own ceiling for each matrix target: rewrite the open prompt with the attribute, same seeds, same judges.

    python bench/prompt_ceiling.py [--out docs/steering/prompt_ceiling.json]

"a t-shirt" -> "a blue t-shirt", "a red item" -> "a red ankle boot": if the model itself does not render the
attribute from its own prompt (by the matrix's judges), no steering of that model can be expected to. This separates
the model's limits from the method's without a larger model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import C, K, cell_metrics, judge, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402


def edited(kind: str, target: str, prompt: str) -> str:
    """The open prompt with the attribute written in ("a t-shirt" -> "a blue t-shirt"; "a red item" -> "a red bag")."""
    return f"a {target} {prompt[2:]}" if kind == "colour" else prompt.replace(" item", f" {target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "prompt_ceiling.json"))
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded demo model)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe, classifier = load_pipeline(args.model, "cpu"), load_classifier()
    rows = []
    for kind, values in (("colour", C), ("class", K)):
        for target in values:
            P = prompts_for(kind, target)
            prompts = [p for _ in range(args.seeds) for p in P["open"]]
            gens = [torch.Generator().manual_seed(1000 + s) for s in range(args.seeds) for _ in P["open"]]
            kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np")
            ref = pipe(prompts, generator=gens, **kw).images.transpose(0, 3, 1, 2)
            gens = [torch.Generator().manual_seed(1000 + s) for s in range(args.seeds) for _ in P["open"]]
            out = pipe([edited(kind, target, p) for p in prompts], generator=gens, **kw).images.transpose(0, 3, 1, 2)
            m = cell_metrics(judge(classifier, out), judge(classifier, ref), kind, (C if kind == "colour" else K).index(target))
            rows.append({"kind": kind, "target": target, **m})
            print(kind, target, {k: round(v, 2) for k, v in m.items()}, flush=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "model": args.model or "assets/models/demo", "seeds": args.seeds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
