"""Quantization grids (codebooks) and the nearest-code search.

A grid is a sorted float32 tensor of ``2**bits`` values in ``[-1, 1]``; a code is an index into it.
Block-wise and LoRDS quantization both store ``Q`` as codes and dequantize as ``grid[Q] * scale``.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

SUPPORTED_BITS = (2, 3, 4)
GRIDS = ("nf", "int")

# bitsandbytes' NF4 table (functional.py, `get_4bit_type("nf4")`), kept verbatim as the reference
# our construction must reproduce code for code.
NF4_BITSANDBYTES = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ConfigError(f"bits={bits!r} is not supported; choose one of {SUPPORTED_BITS}")


def normal_float(bits: int) -> torch.Tensor:
    """NormalFloat grid NF``bits``: ``2**bits`` values, exact zero, asymmetric like QLoRA's NF4.

    ``2**(b-1)`` positive and ``2**(b-1) - 1`` negative quantiles of N(0, 1), taken between
    ``offset`` and 1/2, normalised by the largest so the grid spans ``[-1, 1]``. The offset
    generalises bitsandbytes' 0.9677 = 1 - (1/(2·15) + 1/(2·16)) / 2 to any bit width.
    Returns shape ``(2**bits,)`` float32, sorted ascending. NF4 returns bitsandbytes' table itself:
    the construction matches it to 2e-7 (scipy's and torch's quantile functions differ in the last bit),
    and QLoRA checkpoints must agree code for code.
    """
    _check_bits(bits)
    if bits == 4:
        return torch.tensor(NF4_BITSANDBYTES, dtype=torch.float32)
    return _normal_float_construction(bits)


def _normal_float_construction(bits: int) -> torch.Tensor:
    n = 2**bits
    offset = 1.0 - 0.5 * (1.0 / (2 * (n - 1)) + 1.0 / (2 * n))
    half = n // 2
    # Quantiles in float64, as scipy computes them for bitsandbytes, then rounded once.
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, half + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, half, dtype=torch.float64)[:-1])
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (values / values.abs().max()).to(torch.float32)


def symmetric_int(bits: int) -> torch.Tensor:
    """Symmetric integer grid ``{-(2^(b-1)-1), ..., 2^(b-1)-1} / (2^(b-1)-1)``.

    That is ``2**bits - 1`` levels; the last code repeats the top level so every code is valid
    (nearest_code never picks it over its twin). Returns shape ``(2**bits,)`` float32.
    """
    _check_bits(bits)
    top = 2 ** (bits - 1) - 1
    levels = torch.arange(-top, top + 1, dtype=torch.float32) / top
    return torch.cat([levels, levels[-1:]])


def make_grid(name: str, bits: int) -> torch.Tensor:
    """The codebook ``name`` ('nf' or 'int') at ``bits`` bits, shape ``(2**bits,)`` float32."""
    if name == "nf":
        return normal_float(bits)
    if name == "int":
        return symmetric_int(bits)
    raise ConfigError(f"grid={name!r} is not supported; choose one of {GRIDS}")


def nearest_code(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index of the nearest grid value for every element of ``x`` (any shape), as uint8.

    The code is the number of midpoints between sorted grid values that ``x`` exceeds; ties go to
    the lower code. On the CPU one vectorised comparison per midpoint (at most 15) runs several times
    faster than ``torch.bucketize``, which gives the same answer; on a GPU ``bucketize`` is one pass and
    keeps the midpoints on the device (the loop reads them on the host: a sync per call, per layer and
    step in QAT). NaN gets code 0 from the loop and the last code from ``bucketize``.
    """
    grid = grid.to(device=x.device, dtype=torch.float32)
    mids = (grid[1:] + grid[:-1]) / 2
    x = x.float()
    if x.is_cuda:
        return torch.bucketize(x, mids, out_int32=True).to(torch.uint8)
    codes = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for mid in mids.tolist():
        codes += x > mid
    return codes
