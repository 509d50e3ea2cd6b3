"""The kernels' layout of the codes: a once-per-layer repack of the stored ``qweight`` (pure torch).

The stored format packs codes of consecutive ``k`` into one byte (``lords.packing``); a kernel would have to
interleave nibbles back into order. Here every byte instead holds codes ``T`` apart, so each bit-field of a
contiguous run of ``T`` bytes is itself a contiguous run of ``T`` codes, and a kernel extracts it with one shift
and one mask, no shuffle. ``T = 64`` for every width; a *group* is the ``G = F·T`` codes that one run of ``T``
bytes covers (``F`` fields per byte).

- 4 bits (F = 2, G = 128), 2 bits (F = 4, G = 256): ``lo[n, g·T + j]`` holds, in field ``f`` (bits ``b·f ..``),
  the code of ``k = g·G + f·T + j``.
- 3 bits (G = 256): ``lo`` is the 2-bit layout of ``code & 3``; ``hi[n, g·T/2 + j]`` holds in bit
  ``f + 4·h`` the top bit of the code of ``k = g·G + f·T + h·T/2 + j`` (``j < T/2``).

K is padded with code 0 up to a multiple of ``G``; the kernels mask ``x`` and ``A`` beyond K, so the padding
contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lords.packing import unpack_codes

T = 64


def group_size(bits: int) -> int:
    return {4: 2 * T, 3: 4 * T, 2: 4 * T}[bits]


@dataclass(frozen=True)
class KernelCodes:
    """Codes in the kernels' layout. ``lo (N, K_pad·b'/8)`` uint8 with ``b' = bits`` (2 for 3 bits);
    ``hi (N, K_pad/8)`` uint8 for 3 bits, else an empty tensor. ``K`` is the true input size."""

    lo: torch.Tensor
    hi: torch.Tensor
    bits: int
    K: int

    @property
    def k_pad(self) -> int:
        return -(-self.K // group_size(self.bits)) * group_size(self.bits)


def _fields(codes: torch.Tensor, width: int) -> torch.Tensor:
    """``codes (N, ngroups·F·T)`` with F = 8 // width → bytes ``(N, ngroups·T)``: field f ↔ code f·T + j."""
    n = codes.shape[0]
    per = 8 // width
    c = codes.reshape(n, -1, per, T).to(torch.uint8)
    out = torch.zeros(n, c.shape[1], T, dtype=torch.uint8, device=codes.device)
    for f in range(per):
        out |= c[:, :, f, :] << (width * f)
    return out.reshape(n, -1)


def repack_codes(codes: torch.Tensor, bits: int) -> KernelCodes:
    """``codes (N, K)`` (integers in ``[0, 2**bits)``) → :class:`KernelCodes`."""
    n, k = codes.shape
    g = group_size(bits)
    k_pad = -(-k // g) * g
    c = torch.zeros(n, k_pad, dtype=torch.uint8, device=codes.device)
    c[:, :k] = codes.to(torch.uint8)
    if bits == 3:
        lo = _fields(c & 3, 2)
        h = (c >> 2).reshape(n, -1, 4, 2, T // 2)  # (n, group, f, half, j)
        hi = torch.zeros(n, h.shape[1], T // 2, dtype=torch.uint8, device=codes.device)
        for f in range(4):
            for half in range(2):
                hi |= h[:, :, f, half, :] << (f + 4 * half)
        return KernelCodes(lo.contiguous(), hi.reshape(n, -1).contiguous(), bits, k)
    empty = torch.zeros(0, dtype=torch.uint8, device=codes.device)
    return KernelCodes(_fields(c, bits).contiguous(), empty, bits, k)


def repack(qweight: torch.Tensor, bits: int, K: int) -> KernelCodes:
    """Stored ``qweight`` (``lords.packing``) → :class:`KernelCodes`."""
    return repack_codes(unpack_codes(qweight, bits, K), bits)


def unrepack(kc: KernelCodes) -> torch.Tensor:
    """Inverse of :func:`repack_codes` (for tests): codes ``(N, K)`` uint8."""
    n = kc.lo.shape[0]
    width = 2 if kc.bits == 3 else kc.bits
    per = 8 // width
    lo = kc.lo.reshape(n, -1, 1, T)
    shifts = (torch.arange(per, device=lo.device, dtype=torch.uint8) * width).view(1, 1, per, 1)
    codes = ((lo >> shifts) & ((1 << width) - 1)).reshape(n, -1)
    if kc.bits == 3:
        hi = kc.hi.reshape(n, -1, 1, 1, T // 2)
        sh = (
            torch.arange(4, device=hi.device, dtype=torch.uint8).view(4, 1)
            + 4 * torch.arange(2, device=hi.device, dtype=torch.uint8).view(1, 2)
        ).view(1, 1, 4, 2, 1)
        codes = codes | (((hi >> sh) & 1).reshape(n, -1) << 2)
    return codes[:, : kc.K].contiguous()
