"""Block-wise absmax quantization (QLoRA's NF4 storage, RTN int): the baseline LoRDS starts from.

A block is ``block_size`` consecutive inputs of one output row; its scale is the block's absmax.
When ``block_size`` does not divide the input dimension the last block of each row is shorter.
"""

from __future__ import annotations

import torch

from .errors import ConfigError, NumericsError, ShapeError
from .grids import nearest_code


def num_blocks(in_features: int, block_size: int) -> int:
    """Blocks per row: ``ceil(in_features / block_size)``."""
    return -(-in_features // block_size)


def check_weight(weight: torch.Tensor, name: str = "weight") -> None:
    """Refuse what would silently produce a wrong model: non-2-D or non-finite weights."""
    if weight.dim() != 2:
        raise ShapeError(f"{name} must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise NumericsError(f"{name} holds {bad} NaN/Inf values; refusing to quantize it")


def block_absmax(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """Absmax of each block: ``weight (n, m)`` → ``scales (n, ceil(m / block_size))`` float32."""
    check_weight(weight)
    if block_size < 1:
        raise ConfigError(f"block_size={block_size} must be a positive integer")
    n, m = weight.shape
    block_size = min(block_size, m)  # a block past the row's end is the row: same scales, no huge padding
    nb = num_blocks(m, block_size)
    padded = weight.new_zeros(n, nb * block_size, dtype=torch.float32)
    padded[:, :m] = weight.float()
    return padded.view(n, nb, block_size).abs().amax(dim=-1)


def expand_blocks(scales: torch.Tensor, in_features: int, block_size: int) -> torch.Tensor:
    """Block scales ``(n, nb)`` → the full piecewise-constant scale matrix ``S (n, in_features)``."""
    return scales.repeat_interleave(min(block_size, in_features), dim=1)[:, :in_features]


def safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` with exact zeros replaced by 1, so ``W / S`` stays finite; denormal scales are kept.

    A zero scale belongs to an all-zero block (or a zero of ``B·A``): any code times 0 gives the same
    ``Ŵ``, so the choice is free. Found by fuzzing: clamping to an epsilon instead zeroed denormal blocks.
    """
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def quantize_with_scale(weight: torch.Tensor, scale: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest codes of ``weight / scale`` on ``grid``: ``(n, m)`` and full ``scale (n, m)`` → uint8 codes."""
    return nearest_code(weight.float() / safe_scale(scale.float()), grid)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``W_hat = grid[codes] ⊙ scale`` for codes ``(n, m)`` and a full ``scale (n, m)``; float32."""
    return grid.to(scale.device)[codes.long()] * scale.float()


def quantize_blockwise(weight: torch.Tensor, grid: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax round-to-nearest: ``weight (n, m)`` → ``(codes (n, m) uint8, scales (n, nb) float32)``."""
    scales = block_absmax(weight, block_size)
    codes = quantize_with_scale(weight, expand_blocks(scales, weight.shape[1], block_size), grid)
    return codes, scales


def double_quantize(scales: torch.Tensor, group: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize block scales to int8 like bitsandbytes' double quantization (simplified to linear int8).

    The scales' mean is subtracted, the residuals are grouped by ``group`` in flat order and each group
    gets its own absmax. Returns ``(q int8 (numel,), group_absmax (ceil(numel/group),), mean ())``.
    """
    flat = scales.float().flatten()
    mean = flat.mean()
    resid = flat - mean
    ng = -(-flat.numel() // group)
    padded = resid.new_zeros(ng * group)
    padded[: flat.numel()] = resid
    absmax = padded.view(ng, group).abs().amax(dim=1).clamp_min(1e-12)
    q = torch.round(padded.view(ng, group) / absmax[:, None] * 127).to(torch.int8).flatten()[: flat.numel()]
    return q, absmax, mean


def double_dequantize(q: torch.Tensor, absmax: torch.Tensor, mean: torch.Tensor, shape, group: int = 256):
    """Inverse of :func:`double_quantize`, returning scales of ``shape`` float32."""
    ng = absmax.numel()
    padded = q.new_zeros(ng * group, dtype=torch.float32)
    padded[: q.numel()] = q.float()
    vals = padded.view(ng, group) / 127 * absmax[:, None]
    return (vals.flatten()[: q.numel()] + mean).view(shape)
