"""Run-folder files of the lab's trainers: the training log, atomic safetensors / JSON writes, and an optimizer's
state as flat tensors (so a checkpoint is safetensors + JSON, never a pickle)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from steer.files import atomic_write


def log(out: Path, msg: str) -> None:
    line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata))


def atomic_json(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "opt.") -> dict:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{prefix}{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, prefix: str = "opt.") -> None:
    sd = opt.state_dict()
    state: dict = {}
    for key, v in tensors.items():
        if not key.startswith(prefix):
            continue
        i, k = key[len(prefix) :].split(".", 1)
        state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)

