"""LoftQ (Li et al., 2023), the baseline the paper sets LoRDS against at ultra-low bits: block-wise NF codes plus a
float low-rank correction ``L·R`` fitted by alternating the two, ``W ≈ grid[Q] ⊙ s + L·R``.

peft's ``loftq_init`` runs this alternation for NF4 only, through bitsandbytes on CUDA; here it runs over the
project's own grids at every width (2, 3, 4 bits; mixed widths through ``MixedPrecisionConfig``) on any device:
``res = W``; repeat ``iters`` times: ``Q = quantize(res)``, ``L·R = SVD_r(W − deq(Q))``, ``res = W − L·R``. The
correction costs ``rank·(n + m)`` floats per layer on top of the block scales: more than LoRDS at parity.
``LoftQLinear`` registers its checkpoint layout (kind ``"loftq"``: the block-wise fields plus ``rank``), so LoftQ
models save, resume and open with ``from_pretrained`` like LoRDS ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .blockwise import check_weight
from .config import BlockwiseConfig, check_int
from .errors import ConfigError
from .grids import make_grid
from .handlers import layer_report, register_handler
from .layouts import register_layout
from .linear import BlockLinear
from .scales import BlockScale


@dataclass(frozen=True)
class LoftQConfig(BlockwiseConfig):
    """Block-wise codes and absmax scales plus a float rank-``rank`` correction, ``iters`` alternations."""

    rank: int = 16
    """Rank of the correction ``L·R`` (LoftQ's LoRA rank)."""
    iters: int = 5
    """Alternations of quantize and SVD (peft's ``loftq_iter``; LoftQ's paper uses up to 5)."""

    method: ClassVar[str] = "loftq"

    def __post_init__(self):
        super().__post_init__()
        check_int("rank", self.rank)
        check_int("iters", self.iters)
        if self.refine is not None:
            raise ConfigError("loftq: refine must be None (LoftQ fits its correction by alternation, not Algorithm 1)")


@register_layout("loftq")
class LoftQLinear(BlockLinear):
    """``y = x · (grid[Q] ⊙ expand(scales))ᵀ + (x · Rᵀ) · Lᵀ + bias``; ``scales (out, ceil(in/block))``,
    ``lora_L (out, r)``, ``lora_R (r, in)`` in the scales' dtype."""

    layout_fields = ("block_size", "rank")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        block_size: int,
        rank: int,
        bits: int,
        grid: torch.Tensor,
        bias: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(in_features, out_features, block_size, bits, grid, bias, dtype)
        self.rank = rank
        self.lora_L = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype), requires_grad=False)
        self.lora_R = nn.Parameter(torch.zeros(rank, in_features, dtype=dtype), requires_grad=False)

    def float_params(self) -> int:
        return super().float_params() + self.lora_L.numel() + self.lora_R.numel()

    def dequantized_weight(self) -> torch.Tensor:
        return super().dequantized_weight() + self.lora_L.float() @ self.lora_R.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = F.linear(F.linear(x, self.lora_R.to(x.dtype)), self.lora_L.to(x.dtype))
        return super().forward(x) + low

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}"


def low_rank(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L (n, r), R (r, m))`` with ``L·R`` the best rank-``r`` approximation of ``matrix``, √σ on each side."""
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root[:, None] * Vh[:rank]


@register_handler(LoftQConfig)
def quantize_loftq(name: str, linear: nn.Linear, config: LoftQConfig, stats=None):
    weight = linear.weight.detach().float()
    check_weight(weight, f"{name}.weight")
    n, m = weight.shape
    rank = min(config.rank, n, m)
    grid = make_grid(config.grid, config.bits).to(weight.device)
    bias = None if linear.bias is None else linear.bias.detach()
    residual = weight
    for _ in range(config.iters):
        base = BlockLinear.from_scale(residual, BlockScale.from_weight(residual, config.block_size), config, grid, bias)
        L, R = low_rank(weight - base.dequantized_weight(), rank)
        residual = weight - L @ R
    module = LoftQLinear(m, n, config.block_size, rank, config.bits, grid, bias).to(weight.device)
    module.load_state_dict(base.state_dict(), strict=False)
    module.lora_L.data.copy_(L)
    module.lora_R.data.copy_(R)
    return module, layer_report(name, weight, module)
