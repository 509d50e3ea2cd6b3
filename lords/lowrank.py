"""LoRDS scales: the parity rank and the SVD initialisation from block scales."""

from __future__ import annotations

import torch

from .blockwise import block_absmax
from .errors import ConfigError, ShapeError


def parity_rank(out_features: int, in_features: int, block_size: int) -> int:
    """Largest ``r`` with ``r·(n + m) ≤ n·m / block_size``: LoRDS at the block-wise float budget."""
    return (out_features * in_features) // (block_size * (out_features + in_features))


def check_rank(rank: int, out_features: int, in_features: int, where: str = "") -> None:
    """Refuse a rank the factorisation cannot have; ``where`` names the layer in the message."""
    full = min(out_features, in_features)
    if rank < 1 or rank > full:
        hint = "" if rank >= 1 else "; use a smaller block_size or pass rank= explicitly"
        raise ShapeError(
            f"{where or 'layer'} of shape ({out_features}, {in_features}) cannot take rank {rank}: "
            f"it must lie in [1, {full}]{hint}"
        )


def init_from_blocks(
    scales: torch.Tensor, in_features: int, block_size: int, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of the expanded block-scale matrix: ``B = U_r Σ_r^½``, ``A = Σ_r^½ V_rᵀ``.

    ``scales (n, nb)`` are block scales; the expanded matrix is ``S = scales · E`` with ``E (nb, m)``
    the block indicator. Since ``E Eᵀ = diag(block lengths)``, the SVD of ``S`` comes from the SVD of
    the small ``scales · D^½`` (``D`` the block lengths), never forming ``S``. Exact when ``rank ≥ nb``.
    Returns ``B (n, rank)`` and ``A (rank, in_features)``, float32.
    """
    n, nb = scales.shape
    if rank < 1:
        raise ConfigError(f"rank={rank} must be ≥ 1")
    if block_size * nb < in_features:
        raise ShapeError(f"scales {tuple(scales.shape)} do not cover in_features={in_features} at block {block_size}")
    lengths = torch.full((nb,), float(block_size), dtype=torch.float64, device=scales.device)
    lengths[-1] = in_features - block_size * (nb - 1)
    root = lengths.sqrt()
    U, sigma, Vh = torch.linalg.svd(scales.double() * root, full_matrices=False)
    k = min(rank, sigma.numel())
    # Right singular vectors of S: rows of Vh · D^-½ · E (orthonormal because E Eᵀ = D).
    right = (Vh[:k] / root).repeat_interleave(block_size, dim=1)[:, :in_features]
    half = sigma[:k].sqrt()
    B = U[:, :k] * half
    A = half[:, None] * right
    if k < rank:
        # Rank above the block matrix's own rank: the extra directions start with B = 0 (so S is still exactly the
        # blocks) and A random at the scale of the kept rows. Zeros in both would be a saddle where neither factor
        # ever gets a gradient (∂/∂B_extra = ∂S·A_extraᵀ, ∂/∂A_extra = B_extraᵀ·∂S); LoRA starts the same way.
        gen = torch.Generator().manual_seed(rank * 1_000_003 + in_features)
        extra = torch.randn(rank - k, in_features, generator=gen, dtype=torch.float64).to(A.device)
        size = A.norm(dim=1).mean() if k else torch.ones((), dtype=torch.float64, device=A.device)
        A = torch.cat([A, extra / extra.norm(dim=1, keepdim=True) * size], dim=0)
        B = torch.cat([B, B.new_zeros(n, rank - k)], dim=1)
    return B.float(), A.float()


def svd_init(
    weight: torch.Tensor, block_size: int, rank: int | None = None, where: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRDS's PTQ init of ``weight (n, m)``: block absmax scales, then :func:`init_from_blocks` at ``rank``
    (the parity rank when None, refused with ``where`` named when impossible). Returns ``B (n, r)``, ``A (r, m)``."""
    n, m = weight.shape
    rank = rank or parity_rank(n, m, block_size)
    check_rank(rank, n, m, where=where)
    return init_from_blocks(block_absmax(weight, block_size), m, block_size, rank)
