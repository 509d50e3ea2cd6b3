"""The code-value tables the kernels read, cast or packed once per grid and dtype and cached: the grid in the
activation dtype, and the 8 int32 words of the ``prmt`` lookup (forward and dequantize passes both read them)."""

from __future__ import annotations

import torch

_GRIDS: dict = {}


def grid_as(grid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``grid`` in ``dtype``, cast once and cached (the cache holds the source, so its address stays unique)."""
    if grid.dtype == dtype:
        return grid
    key = (grid.data_ptr(), grid._version, dtype)
    hit = _GRIDS.get(key)
    if hit is None:
        hit = _GRIDS[key] = (grid, grid.to(dtype))
    return hit[1]


def prmt_table(grid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 8 int32 words ``_prmt_asm`` reads: low bytes then high bytes of the grid in ``dtype``, padded to 16."""
    key = ("prmt", grid.data_ptr(), grid._version, dtype)
    hit = _GRIDS.get(key)
    if hit is None:
        g16 = torch.zeros(16, dtype=dtype, device=grid.device)
        g16[: grid.numel()] = grid.to(dtype)
        by = g16.view(torch.uint8)
        tab = torch.cat([by[0::2].contiguous().view(torch.int32), by[1::2].contiguous().view(torch.int32)])
        hit = _GRIDS[key] = (grid, tab)
    return hit[1]
