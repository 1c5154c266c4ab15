"""Where a take-away leaves the prompt's own value, token by token (a diagnostic; docs/steering.md "Session 41").

For a contradicting prompt ("a blue sandal" -> orange) the text tokens the denoiser reads are captured after the
take-away at a few strengths (``[to_target s, to_source -min(s, 1)]``, whole run), and each position is compared with
the same position of the rewritten prompt ("a orange sandal"): cosine to it, cosine to the prompt's own, and the
share of the gap between the two the steering closed. ``--negative replace`` shows the word swap (`steer.word_swap`).

    python bench/take_away_tokens.py --target orange --source blue [--negative remove|replace]
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

from steering_matrix import C, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.config import REMOVING  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=C, default="orange")
    ap.add_argument("--source", choices=C, default="blue")
    ap.add_argument("--classes", nargs="+", default=["sandal", "t-shirt", "ankle boot"])
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 2.64])
    ap.add_argument("--negative", choices=REMOVING, default="remove")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(None, "cpu")
    vectors = {}
    for colour in (args.target, args.source):
        P = prompts_for("colour", colour)
        vectors[colour] = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=20, guidance_scale=5.0, progress=False)
    attn = next(m for n, m in pipe.unet.named_modules() if n.endswith("attn2"))
    seen: list[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["encoder_hidden_states"].detach().clone()), with_kwargs=True)

    def tokens(prompt: str, **kw) -> torch.Tensor:
        seen.clear()
        pipe(prompt, num_inference_steps=8, guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="latent", **kw)
        return seen[-1][-1]  # the conditional half's row at the last step

    rows = []
    try:
        for k in args.classes:
            source, target = tokens(f"a {args.source} {k}"), tokens(f"a {args.target} {k}")
            ids = pipe.tokenizer(f"a {args.source} {k}").input_ids
            words = [pipe.tokenizer.decode([i]) for i in ids]
            for s in args.scales:
                kw = {} if s == 0 else dict(steering=[vectors[args.target], vectors[args.source]], steering_scale=[s, -min(s, 1.0)],
                                            steering_negative=args.negative, steering_window=(0.0, 1.0))
                x = tokens(f"a {args.source} {k}", **kw)
                gap = target - source
                closed = ((x - source) * gap).sum(-1) / gap.pow(2).sum(-1).clamp_min(1e-9)
                cos_t = torch.nn.functional.cosine_similarity(x, target, dim=-1)
                cos_s = torch.nn.functional.cosine_similarity(x, source, dim=-1)
                row = {"class": k, "scale": s, "tokens": words + ["<pad>"] * (len(x) - len(words)),
                       "cos_target": [round(float(v), 3) for v in cos_t], "cos_source": [round(float(v), 3) for v in cos_s],
                       "gap_closed": [round(float(v), 2) for v in closed]}
                rows.append(row)
                print(f"{k} s={s:g}: position 2 ({words[2]!r}) cos to '{args.target}' {row['cos_target'][2]:.2f}, to its own "
                      f"{row['cos_source'][2]:.2f}, gap closed {row['gap_closed'][2]:.2f}; padding (last) cos to the rewrite "
                      f"{row['cos_target'][-1]:.2f}, gap closed {row['gap_closed'][-1]:.2f}", flush=True)
    finally:
        handle.remove()
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
