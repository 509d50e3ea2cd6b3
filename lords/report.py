"""What quantization reports: per-layer errors and floats, and a model's storage cost in bits per weight."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .linear import QuantizedLinear


@dataclass
class LayerReport:
    """One layer's outcome: squared error ``‖W − Ŵ‖²_F``, ``‖W‖²_F``, floats stored, refinement curve."""

    name: str
    shape: tuple[int, int]
    sq_error: float
    sq_norm: float
    float_params: int
    rank: int | None = None
    losses: list[float] = field(default_factory=list)
    bits: int | None = None


@dataclass
class QuantizeReport:
    layers: list[LayerReport] = field(default_factory=list)
    config: object = None
    """The config as applied (a rule that needed the model or data resolved, e.g. sensitivity bit allocation)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time by phase where the caller measured it (streamed PTQ: ``setup``, then ``blocks``)."""

    @property
    def rel_error(self) -> float:
        """``sqrt(Σ‖W − Ŵ‖² / Σ‖W‖²)`` over all quantized layers."""
        return (
            sum(layer.sq_error for layer in self.layers) / max(sum(layer.sq_norm for layer in self.layers), 1e-30)
        ) ** 0.5

    @property
    def frob_error(self) -> float:
        """``Σ ‖W − Ŵ‖_F`` over layers (the paper's 'quantization error' convention)."""
        return sum(layer.sq_error**0.5 for layer in self.layers)

    @property
    def float_params(self) -> int:
        return sum(layer.float_params for layer in self.layers)


def storage_bits(model: nn.Module) -> dict[str, float] | None:
    """Over the quantized modules of ``model``: ``code_bits`` (average bits per weight code) and
    ``bits_per_weight`` (codes plus the stored scale floats at their own dtype, bias excluded), weighted by
    weight count; None when nothing is quantized."""
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    weights = sum(m.in_features * m.out_features for m in layers)
    if not weights:
        return None
    codes = sum(m.bits * m.in_features * m.out_features for m in layers)
    scales = sum(m.float_params() * torch.finfo(m.scale_dtype).bits for m in layers)
    return {"code_bits": codes / weights, "bits_per_weight": (codes + scales) / weights}
