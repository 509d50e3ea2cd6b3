"""QAT for LoRDS: train latent weights ``W`` and scales ``B, A`` jointly through the rounding.

``prepare_qat`` swaps each ``nn.Linear`` for a ``QATLinear`` (SVD init from block scales, latent ``W``
= the float weight); ``convert_qat`` turns them into ``LoRDSLinear`` for storage and inference.
The rounding uses a straight-through estimator on ``u = W ⊘ S``: forward ``S ⊙ grid[code(u)]``,
backward ``∂/∂W = 1`` and ``∂/∂S = grid[code(u)] − u`` (LSQ's scale gradient).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .blockwise import check_weight, safe_scale
from .config import LordsConfig
from .grids import make_grid, nearest_code
from .linear import LoRDSLinear
from .lowrank import svd_init


class QATLinear(nn.Module):
    """Latent ``weight (out, in)``, scales ``B (out, r)``, ``A (r, in)``; forward on the fake-quantized weight."""

    def __init__(self, linear: nn.Linear, config: LordsConfig, name: str = ""):
        super().__init__()
        w = linear.weight.detach()
        check_weight(w, f"{name}.weight")
        n, m = w.shape
        self.in_features, self.out_features, self.bits = m, n, config.bits
        B, A = svd_init(w, config.block_size, config.rank, where=name)
        self.rank = B.shape[1]
        self.weight = nn.Parameter(w.float().clone())
        self.B, self.A = nn.Parameter(B), nn.Parameter(A)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone())
        self.register_buffer("grid", make_grid(config.grid, config.bits))

    def fake_quantized(self) -> torch.Tensor:
        S = self.B @ self.A
        u = self.weight / safe_scale(S)
        q = self.grid[nearest_code(u.detach(), self.grid).long()]
        return S * (u + (q - u).detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fake_quantized().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def prepare_qat(model: nn.Module, config: LordsConfig, filter_fn=None) -> nn.Module:
    """Swap the selected ``nn.Linear`` modules of ``model`` for ``QATLinear``, in place; returns model."""
    from .quantize import _set_module, select_linears

    for name, linear in select_linears(model, config, filter_fn).items():
        _set_module(model, name, QATLinear(linear, config, name).to(linear.weight.device))
    return model


@torch.no_grad()
def convert_qat(model: nn.Module, scale_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every ``QATLinear`` by the ``LoRDSLinear`` it stands for (codes packed); returns model."""
    from .quantize import _set_module

    for name, m in list(model.named_modules()):
        if isinstance(m, QATLinear):
            codes = nearest_code(m.weight / safe_scale(m.B @ m.A), m.grid)
            new = LoRDSLinear(m.in_features, m.out_features, m.rank, m.bits, m.grid, m.bias, scale_dtype)
            new = new.to(m.weight.device)
            new.B.copy_(m.B.to(scale_dtype))
            new.A.copy_(m.A.to(scale_dtype))
            new.set_codes(codes)
            _set_module(model, name, new)
    return model
