"""Prefill and backward through cuBLAS: ``W_hat = grid[Q] ⊙ (B·A)`` written once into one scratch buffer shared by
every layer of the process (per device and dtype, grown to the largest ``N × K`` seen), then ``torch.mm``.

At large M the fused kernel's per-weight work (LUT, rank-R rebuild, multiply) is repeated for every M-tile, while
here it is paid once per call and the GEMM runs at cuBLAS speed; the dequantize itself is a memory-bound pass
(read the codes, write ``2·N·K`` bytes). Below the crossover (``tuning.DEQUANT_MIN_M``) the fused kernels win.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import KernelCodes, group_size
from .primitives import INTERPRET, _code_values, _load_codes, _mm
from .tuning import rank_pad

_SCRATCH: dict = {}


@triton.jit(do_not_specialize=["r"])
def _dequant_kernel(lo_ptr, hi_ptr, grid_ptr, tab_ptr, B_ptr, A_ptr, w_ptr, N, K, r,
                    stride_lo, stride_hi, stride_bn, stride_ar, stride_wn,
                    BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr, BN: tl.constexpr,
                    PRMT: tl.constexpr, DOT_FP32: tl.constexpr):
    """``W_hat[rows, group g]`` for ``BN`` rows: per ``T``-wide field, ``S = B_tile · A_tile`` on the tensor cores
    times the code values, stored in ``w_ptr``'s dtype."""
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    cdt = tl.float32 if DOT_FP32 else w_ptr.dtype.element_ty
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_mask = offs_n < N
    offs_j = tl.arange(0, T)
    offs_r = tl.arange(0, R)
    r_mask = offs_r < r
    b = tl.load(B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :],
                other=0.0).to(cdt)  # (BN, R)
    lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T, True,
                         PRMT and BITS != 3)
    for f in tl.static_range(F):
        q = _code_values(lo, hi, f, grid_ptr, tab_ptr, w_ptr, BITS, PRMT)  # (BN, T)
        k = g * (F * T) + f * T + offs_j
        k_mask = k < K
        a = tl.load(A_ptr + offs_r[:, None] * stride_ar + k[None, :], mask=r_mask[:, None] & k_mask[None, :],
                    other=0.0).to(cdt)  # (R, T)
        s = _mm(b, a, DOT_FP32)  # (BN, T) fp32
        w = (q.to(tl.float32) * s).to(w_ptr.dtype.element_ty)
        tl.store(w_ptr + offs_n[:, None] * stride_wn + k[None, :], w, mask=n_mask[:, None] & k_mask[None, :])


def scratch(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """The process's one dequantize buffer for ``(device, dtype)``, at least ``numel`` elements."""
    key = (device.type, device.index, dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf


def scratch_bytes() -> int:
    """Bytes held by the dequantize buffers (the peak memory this path adds)."""
    return sum(b.numel() * b.element_size() for b in _SCRATCH.values())


def dequantize(codes: KernelCodes, grid: torch.Tensor, B: torch.Tensor, A: torch.Tensor, dtype: torch.dtype,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """``W_hat (N, K)`` in ``dtype``: into ``out`` (``N·K`` elements) or the shared scratch buffer."""
    from .forward import prmt_table

    N, r = B.shape
    K, bits = codes.K, codes.bits
    w = (out if out is not None else scratch(B.device, dtype, N * K))[: N * K].view(N, K)
    hi = codes.hi if bits == 3 else codes.lo
    A = A if A.stride(-1) == 1 else A.contiguous()
    B = B if B.stride(-1) == 1 else B.contiguous()
    prmt = bits != 3 and not INTERPRET
    tab = prmt_table(grid, dtype) if prmt else grid
    bn = 128
    F = 8 // (2 if bits == 3 else bits)
    n_groups = codes.k_pad // group_size(bits)
    _dequant_kernel[(triton.cdiv(N, bn), n_groups)](
        codes.lo, hi, grid, tab, B, A, w, N, K, r, codes.lo.stride(0), hi.stride(0),
        B.stride(0), A.stride(0), w.stride(0), BITS=bits, T=64, F=F, R=rank_pad(r), BN=bn, PRMT=prmt,
        DOT_FP32=INTERPRET, num_warps=8, num_stages=2)
    return w
