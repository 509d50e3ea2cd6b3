"""Scale parameterisations ``S(θ) (n, m)`` that multiply the code values: LoRDS's ``B·A`` and block scales.

Each is an ``nn.Module`` whose ``forward()`` returns the full scale matrix and whose ``grads(∂loss/∂S)``
applies the chain rule to its own parameters (Algorithm 1 runs without an autograd graph per step). A scale
without ``grads`` still works: ``lords.refine`` then asks autograd.
"""

from __future__ import annotations

import torch
from torch import nn

from .blockwise import block_absmax, expand_blocks
from .lowrank import svd_init


class LowRankScale(nn.Module):
    """``S = B·A`` with ``B (n, r)`` and ``A (r, m)``, float32."""

    def __init__(self, B: torch.Tensor, A: torch.Tensor):
        super().__init__()
        self.B = nn.Parameter(B.detach().float().clone())
        self.A = nn.Parameter(A.detach().float().clone())

    @classmethod
    def from_weight(cls, weight: torch.Tensor, block_size: int, rank: int | None = None, where: str = ""):
        """LoRDS's PTQ init of ``weight (n, m)``: SVD of its block absmax scales (``lords.lowrank.svd_init``)."""
        return cls(*svd_init(weight, block_size, rank, where=where))

    def forward(self) -> torch.Tensor:
        return self.B @ self.A

    def grads(self, grad_S: torch.Tensor) -> list[torch.Tensor]:
        """``[∂/∂B, ∂/∂A]`` from ``∂/∂S (n, m)``."""
        return [grad_S @ self.A.T, self.B.T @ grad_S]


class BlockScale(nn.Module):
    """Piecewise-constant ``S`` from block scales ``(n, nb)`` repeated over ``block_size`` inputs."""

    def __init__(self, scales: torch.Tensor, in_features: int, block_size: int):
        super().__init__()
        self.scales = nn.Parameter(scales.detach().float().clone())
        self.in_features = in_features
        self.block_size = block_size

    @classmethod
    def from_weight(cls, weight: torch.Tensor, block_size: int):
        """Absmax scales of ``weight (n, m)`` per block of ``block_size`` inputs."""
        return cls(block_absmax(weight, block_size), weight.shape[1], block_size)

    def forward(self) -> torch.Tensor:
        return expand_blocks(self.scales, self.in_features, self.block_size)

    def grads(self, grad_S: torch.Tensor) -> list[torch.Tensor]:
        """``[∂/∂scales (n, nb)]``: the gradient summed over each block."""
        n, m = grad_S.shape
        nb, bs = self.scales.shape[1], self.block_size
        padded = grad_S.new_zeros(n, nb * bs)
        padded[:, :m] = grad_S
        return [padded.view(n, nb, bs).sum(-1)]
