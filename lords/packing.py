"""Bit-packing of codes along the input dimension.

The stored format (``qweight``, uint8, shape ``(n, packed_width(k, bits))``), for codes ``c`` of a row
padded with zeros to ``k8 = ceil(k / 8) * 8``:

- 4 bits: byte ``j`` holds ``c[2j] | c[2j+1] << 4``                      (``k8 / 2`` bytes)
- 2 bits: byte ``j`` holds ``c[4j] | c[4j+1] << 2 | c[4j+2] << 4 | c[4j+3] << 6``   (``k8 / 4`` bytes)
- 3 bits: two planes side by side, ``[low | high]``: ``low`` is the 2-bit packing of ``c & 3``
  (``k8 / 4`` bytes), ``high`` holds bit ``i`` of byte ``j`` = ``c[8j+i] >> 2`` (``k8 / 8`` bytes).
  Exactly 3 bits per weight, and both planes unpack with shifts and masks alone (kernel friendly).
"""

from __future__ import annotations

import torch

from .errors import ConfigError, ShapeError
from .grids import SUPPORTED_BITS


def padded_k(k: int) -> int:
    """Input dimension rounded up to a multiple of 8, the packing unit of every width."""
    return -(-k // 8) * 8


def packed_width(k: int, bits: int) -> int:
    """Bytes per row of packed codes for ``k`` inputs at ``bits`` bits."""
    if bits not in SUPPORTED_BITS:
        raise ConfigError(f"bits={bits!r} is not supported; choose one of {SUPPORTED_BITS}")
    return padded_k(k) * bits // 8


def _pack_fields(codes: torch.Tensor, width: int) -> torch.Tensor:
    """Pack ``(n, k)`` codes of ``width`` bits, ``8 // width`` per byte, lowest field first."""
    per = 8 // width
    c = codes.to(torch.uint8).reshape(codes.shape[0], -1, per)
    out = torch.zeros(c.shape[:2], dtype=torch.uint8, device=codes.device)
    for i in range(per):
        out |= c[:, :, i] << (i * width)
    return out


def _unpack_fields(packed: torch.Tensor, width: int) -> torch.Tensor:
    per = 8 // width
    mask = (1 << width) - 1
    shifts = torch.arange(0, 8, width, device=packed.device, dtype=torch.uint8)
    fields = (packed.unsqueeze(-1) >> shifts) & mask
    return fields.reshape(packed.shape[0], packed.shape[1] * per)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes ``(n, k)`` (integers in ``[0, 2**bits)``) into ``qweight (n, packed_width(k, bits))`` uint8."""
    if codes.dim() != 2:
        raise ShapeError(f"codes must be 2-D (out, in), got shape {tuple(codes.shape)}")
    n, k = codes.shape
    width = packed_width(k, bits)  # validates bits
    if codes.numel() and int(codes.max()) >= 2**bits:
        raise ConfigError(f"codes hold {int(codes.max())}, out of range for bits={bits}")
    k8 = padded_k(k)
    c = torch.zeros(n, k8, dtype=torch.uint8, device=codes.device)
    c[:, :k] = codes.to(torch.uint8)
    if bits == 3:
        packed = torch.cat([_pack_fields(c & 3, 2), _pack_fields(c >> 2, 1)], dim=1)
    else:
        packed = _pack_fields(c, bits)
    assert packed.shape[1] == width
    return packed


def unpack_codes(qweight: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``qweight (n, packed_width(k, bits))`` → codes ``(n, k)`` uint8."""
    width = packed_width(k, bits)
    if qweight.dim() != 2 or qweight.shape[1] != width:
        raise ShapeError(
            f"qweight of shape {tuple(qweight.shape)} does not hold k={k} codes at {bits} bits (expected (n, {width}))"
        )
    if qweight.dtype != torch.uint8:
        raise ShapeError(f"qweight must be uint8, got {qweight.dtype}")
    k8 = padded_k(k)
    if bits == 3:
        low = _unpack_fields(qweight[:, : k8 // 4], 2)
        high = _unpack_fields(qweight[:, k8 // 4 :], 1)
        codes = low | (high << 2)
    else:
        codes = _unpack_fields(qweight, bits)
    return codes[:, :k].contiguous()
