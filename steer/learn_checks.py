"""What `steer.learn.learn_direction` checks of its options and sets: each option given to a learning that does not use
it is a one-line `UnusedOptionError` before any sampling (named for the command line to spell as its flag), and two
sets that give the same representation have no direction to learn."""

from __future__ import annotations

from typing import Any

import torch

from steer.errors import UnusedOptionError

# Below this share of a layer's typical norm the two sets' difference is the same representation (float noise).
SAME_SETS = 1e-5
_USES = {  # what each option sets, and which learnings use it
    "num_samples": "how many images the sampling modes (reference, fast, trajectory) draw per set",
    "timestep": "the timestep the reference mode and image sets are read at",
    "image_prompts": "the prompt image sets are read with",
}


def sampling_options(mode: str, image_input: bool, num_samples: Any, timestep: Any, image_prompts: Any) -> tuple[Any, Any, Any]:
    """``num_samples``, ``timestep`` and ``image_prompts`` with their defaults (16, 10, ""), or a one-line UnusedOptionError
    for one given to a learning that does not use it (the text mode reads the prompts themselves: ``--num-samples 3``
    learned the same file as without it)."""
    used = {"num_samples": not image_input and mode in ("trajectory", "reference", "fast"),
            "timestep": image_input or mode == "reference", "image_prompts": image_input}
    given = {"num_samples": num_samples is not None, "timestep": timestep is not None, "image_prompts": bool(image_prompts)}
    for name, is_given in given.items():
        if is_given and not used[name]:
            what = "image sets" if image_input else f"mode={mode!r}"
            raise UnusedOptionError(name, f"{name} does nothing for {what}: it sets {_USES[name]}")
    return (16 if num_samples is None else num_samples, 10 if timestep is None else timestep,
            "" if image_prompts is None else image_prompts)


def check_sets_differ(directions: dict[str, torch.Tensor], act_norm: dict[str, float], image_input: bool) -> None:
    """A one-line ValueError when the two sets gave the same representation at every layer: there is no direction
    (prompts that differ only past what the text encoder reads)."""
    relative = {n: float(d.norm()) / max(act_norm[n], 1e-12) for n, d in directions.items()}
    if max(relative.values()) > SAME_SETS:
        return
    where = next(iter(relative)) if len(relative) == 1 else f"every one of the {len(relative)} layers"
    check = "the images differ" if image_input else "the prompts differ within what the text encoder reads (77 tokens on CLIP)"
    raise ValueError(f"the positive and negative sets give the same representation at {where} (difference "
                     f"{max(relative.values()):.1e} of its typical norm): there is no direction to learn; check that {check}")
