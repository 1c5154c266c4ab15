"""The take-away's word swap at the text tokens: the token positions of the phrase a row's prompt states for what is
taken away ("blue" in "a blue sandal") blended toward the states they have with the added direction's phrase in its
place ("a orange sandal"), by the row's removal amount. `steer.word_swap` plans it from the call's prompts; the
session applies it (`SteeringSession`, before the additive part and the removal). Why: docs/steering.md "Session 41"."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WordSwap:
    """What a call's rows swap, one entry per image row: ``columns`` (n,) the vector column whose removal amount
    turns the row's phrase (-1: the row swaps nothing), ``targets`` (n,) the column of the direction whose phrase it
    turns into (the swap acts while that one is added, for its readers), ``mask`` (n, L) the phrase's token positions, ``states``
    (n, L, C) what they become at amount 1 (zeros elsewhere)."""

    columns: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    states: torch.Tensor

    def __post_init__(self) -> None:
        n, length = self.mask.shape
        if self.columns.shape != (n,) or self.targets.shape != (n,) or self.states.shape[:2] != (n, length):
            raise ValueError(f"a word swap's columns {tuple(self.columns.shape)}, targets {tuple(self.targets.shape)}, mask "
                             f"{tuple(self.mask.shape)} and states {tuple(self.states.shape)} disagree on the rows or tokens")

    def row_amounts(self, amounts: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
        """(m,) each batch row's swap amount: its removal amount (``amounts``, (m, K), the removal window applied)
        where its target is being added at this step (``added``, (m, K) additive scales with the windows and the
        hook's members applied), else 0; a batch of m = r * n rows (a CFG pair of halves repeats the images; the
        unconditional half's removal amounts are zero)."""
        reps = amounts.shape[0] // self.columns.shape[0]
        columns, targets = self.columns.to(amounts.device).repeat(reps), self.targets.to(amounts.device).repeat(reps)
        taken = amounts.gather(1, columns.clamp_min(0)[:, None])[:, 0]
        adding = added.to(amounts.device).gather(1, targets.clamp_min(0)[:, None])[:, 0] > 0
        return torch.where((columns >= 0) & adding, taken, torch.zeros_like(taken))


def swap_words(h: torch.Tensor, swap: WordSwap, amounts: torch.Tensor) -> torch.Tensor:
    """``h`` (m, L, C) text tokens with each row's phrase positions blended toward the swap's states by its amount
    (m,) in [0, 1] (clamped): ``(1 - a) x + a t`` rescaled to ``(1 - a)|x| + a|t|``, so amount 1 gives the states
    exactly and 0 leaves the row bit-identical, as does every position outside the phrase. A batch whose rows are no
    multiple of the swap's, or whose token count differs from the states' (a call at another sequence length), is
    returned unchanged."""
    n, length = swap.mask.shape
    if h.ndim != 3 or h.shape[0] % n or h.shape[1] != length or h.shape[2] != swap.states.shape[2]:
        return h
    reps = h.shape[0] // n
    a = amounts.to(h.device, torch.float32).clamp(0, 1)[:, None, None]
    x = h.float()
    states = swap.states.to(h.device, torch.float32).repeat(reps, 1, 1)
    mask = swap.mask.to(h.device).repeat(reps, 1)[..., None] & (a > 0)
    mixed = (1 - a) * x + a * states
    norm = (1 - a) * x.norm(dim=-1, keepdim=True) + a * states.norm(dim=-1, keepdim=True)
    mixed = torch.where(a >= 1, states, mixed / mixed.norm(dim=-1, keepdim=True).clamp_min(1e-12) * norm)
    return torch.where(mask, mixed.to(h.dtype), h)
