"""What fine-tuning changed in a layer: ``ΔW``, its singular values and its effective rank.

LoRDS PEFT moves the scales of frozen codes: ``ΔW = grid[Q] ⊙ (B'·A' − B·A)``, an element-wise product of the
``(n, m)`` code values with a rank ≤ ``2r`` matrix, which is generically of full rank (``min(n, m)``) although it
trains ``r·(n + m)`` floats. A LoRA adds ``ΔW = scaling · B_lora·A_lora``: rank ≤ ``r``. Two effective ranks say how
spread the spectrum is: the entropy rank ``exp(H(p))`` with ``p = σ² / Σσ²`` (Roy & Vetterli's, on the energies; 1
for a rank-1 matrix, ``k`` for ``k`` equal singular values) and the energy rank, the fewest singular values that
hold a share ``energy`` (90%) of ``Σσ²``.
"""

from __future__ import annotations

import torch


def lords_delta(
    values: torch.Tensor, B0: torch.Tensor, A0: torch.Tensor, B1: torch.Tensor, A1: torch.Tensor
) -> torch.Tensor:
    """``ΔW = values ⊙ (B1·A1 − B0·A0)`` ``(n, m)`` float64: ``values = grid[Q] (n, m)``, the frozen code values;
    ``B0, B1 (n, r)`` and ``A0, A1 (r, m)`` the scale factors before and after training."""
    d = lambda x: x.detach().double()  # noqa: E731
    return d(values) * (d(B1) @ d(A1) - d(B0) @ d(A0))


def lora_delta(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """``ΔW = scaling · B·A`` ``(n, m)`` float64 of a LoRA with ``A (r, m)``, ``B (n, r)`` (peft's ``lora_A``,
    ``lora_B`` weights)."""
    return scaling * (B.detach().double() @ A.detach().double())


def singular_values(delta: torch.Tensor) -> torch.Tensor:
    """The singular values of ``delta (n, m)``, descending, float64 ``(min(n, m),)``."""
    return torch.linalg.svdvals(delta.detach().double())


def entropy_rank(sv: torch.Tensor) -> float:
    """``exp(H(p))``, ``p = σ² / Σσ²`` over the singular values ``sv``: 1 for rank 1, ``k`` for ``k`` equal values;
    0 for a zero matrix."""
    energy = sv.double() ** 2
    total = energy.sum()
    if total <= 0:
        return 0.0
    p = energy[energy > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def energy_rank(sv: torch.Tensor, energy: float = 0.9) -> int:
    """The fewest leading singular values of ``sv`` (descending) whose ``Σσ²`` reaches ``energy`` of the total;
    0 for a zero matrix."""
    e = sv.double() ** 2
    total = e.sum()
    if total <= 0:
        return 0
    share = e.sort(descending=True).values.cumsum(0) / total
    return int((share < energy - 1e-12).sum()) + 1
