"""PEFT on LoRDS: train only the scale factors ``B, A``; ``Q`` stays frozen and nothing is merged after.

The update ``ΔW = Q ⊙ (B'A' − BA)`` is high-rank although ``B, A`` are low-rank, and the trained model
is still ``Q ⊙ (B·A)``: the same module, the same kernel, no adapter path at inference.
"""

from __future__ import annotations

from torch import nn

from .errors import UnsupportedModuleError
from .linear import LoRDSLinear


def mark_only_scales_trainable(model: nn.Module) -> int:
    """Freeze every parameter but the ``B, A`` of LoRDS layers; returns the number of trainable floats."""
    layers = [m for m in model.modules() if isinstance(m, LoRDSLinear)]
    if not layers:
        raise UnsupportedModuleError("the model has no LoRDSLinear: quantize_ it with a LordsConfig first")
    for p in model.parameters():
        p.requires_grad_(False)
    for m in layers:
        m.B.requires_grad_(True)
        m.A.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
