"""The backward kernels of ``LoRDSLinear`` for ``x``, ``B`` and ``A`` (PEFT and QAT), and their launcher.

- ``_dx_kernel``: ``dx = dy · W_hat``, rebuilding ``W_hat`` tiles on chip as the forward does, summed over N.
- ``_ds_kernel``: ``dS = (dyᵀ x) ⊙ grid[Q]`` per ``(BN, T)`` tile on chip, reduced at once into ``dB = dS Aᵀ``
  (kept in registers along K) and ``dA = Bᵀ dS`` (one fp32 partial per N-block, summed after). ``dS`` never
  reaches memory. Used below the crossover (small M).
- From the crossover (``tuning.dequant_min_m``) on, both products go through cuBLAS instead: ``dx = dy · W_hat``
  with ``W_hat`` dequantized into the shared scratch buffer, then ``G = dyᵀ x`` into the same buffer (in the
  activation dtype, as cuBLAS returns ``dW`` of a plain fp16/bf16 ``nn.Linear``) and ``_dsred_kernel`` reads ``G``
  once: ``dS = G ⊙ grid[Q]`` on chip, ``dB`` kept in registers along its K range, ``dA`` one fp32 partial per
  N-block. The math is :mod:`.reference`'s.
"""

from __future__ import annotations

import torch
import triton

from .backward_kernels import _ds_kernel, _dsred_kernel, _dx_kernel, _rank_grads_slice  # noqa: F401
from .layout import KernelCodes, T
from .primitives import INTERPRET
from .tuning import dequant_min_m, rank_pad


def _rank_grad_partials(N: int, K: int, R: int, n_slices: int, bn: int, device):
    """Grid and fp32 partial buffers of the two rank-gradient kernels: ``⌈N/bn⌉`` row blocks × ``split`` runs of
    ``per`` K slices (about 264 programs in all), ``dB_ws (split, N, R)`` and ``dA_ws (⌈N/bn⌉, R, K)``."""
    n_blocks = triton.cdiv(N, bn)
    split = max(1, min(n_slices, triton.cdiv(264, n_blocks)))
    per = triton.cdiv(n_slices, split)
    split = triton.cdiv(n_slices, per)
    return (
        n_blocks,
        split,
        per,
        torch.empty(split, N, R, dtype=torch.float32, device=device),
        torch.empty(n_blocks, R, K, dtype=torch.float32, device=device),
    )


def _rank_grads_cublas(dy2, x2, codes: KernelCodes, grid, B, A, hi, bn: int = 128):
    """``(dB (N, r), dA (r, K))`` fp32 from ``G = dyᵀx`` (cuBLAS, into the shared scratch buffer) and
    :func:`_dsred_kernel`. Transient memory besides the scratch buffer: the dA partials ``(⌈N/bn⌉, R, K)`` and the
    dB partials ``(splits, N, R)``, fp32: 112 + 11 MiB at 14336 × 4096, R = 64, bn = 128."""
    from .dequant import scratch

    N, r = B.shape
    K, bits = codes.K, codes.bits
    R = rank_pad(r)
    F = 8 // (2 if bits == 3 else bits)
    G = scratch(dy2.device, dy2.dtype, N * K)[: N * K].view(N, K)
    torch.mm(dy2.t(), x2, out=G)
    n_slices = codes.k_pad // T
    n_blocks, split, per, dB_ws, dA_ws = _rank_grad_partials(N, K, R, n_slices, bn, dy2.device)
    _dsred_kernel[(n_blocks, split)](
        G,
        codes.lo,
        hi,
        grid,
        B,
        A,
        dB_ws,
        dA_ws,
        N,
        K,
        r,
        n_slices,
        per,
        G.stride(0),
        codes.lo.stride(0),
        hi.stride(0),
        B.stride(0),
        A.stride(0),
        BITS=bits,
        T=T,
        F=F,
        R=R,
        BN=bn,
        DOT_FP32=INTERPRET,
        num_warps=8 if bn >= 128 else 4,
        num_stages=3,
    )
    return dB_ws.sum(0)[:, :r], dA_ws.sum(0)[:r]


def lords_matmul_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    codes: KernelCodes,
    grid: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    need_dx: bool = True,
    need_dBA: bool = True,
    cublas: bool | None = None,
):
    """``(dx (..., K) in x.dtype | None, dB (N, r) fp32 | None, dA (r, K) fp32 | None)``; see reference.

    ``cublas``: route ``dx`` and ``dyᵀx`` through cuBLAS (True), the fused kernels (False), or pick by the shape's
    crossover (None)."""
    K = codes.K
    N, r = B.shape
    bits = codes.bits
    R = rank_pad(r)
    F = 8 // (2 if bits == 3 else bits)
    hi = codes.hi if bits == 3 else codes.lo
    dy2 = dy.reshape(-1, N)
    dy2 = dy2 if dy2.stride(-1) == 1 else dy2.contiguous()
    x2 = x.reshape(-1, K)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    M = dy2.shape[0]
    A = A if A.stride(-1) == 1 else A.contiguous()
    B = B if B.stride(-1) == 1 else B.contiguous()
    n_slices = codes.k_pad // T
    dx = dB = dA = None
    big = M >= 256
    if cublas is None:
        cublas = M >= dequant_min_m(N, K, bits)
    if need_dx and cublas:  # W_hat once into the shared buffer, then cuBLAS
        from .dequant import dequantize

        dx = torch.mm(dy2, dequantize(codes, grid, B.to(dy.dtype), A.to(dy.dtype), dy.dtype)).reshape(*x.shape[:-1], K)
        need_dx = False
    if need_dx:
        dx = torch.empty(M, K, dtype=dy.dtype, device=dy.device)
        bm = 128 if big else max(16, min(64, triton.next_power_of_2(M)))
        _dx_kernel[(triton.cdiv(M, bm), n_slices)](
            dy2,
            codes.lo,
            hi,
            grid,
            B,
            A,
            dx,
            M,
            N,
            K,
            r,
            dy2.stride(0),
            dx.stride(0),
            codes.lo.stride(0),
            hi.stride(0),
            B.stride(0),
            A.stride(0),
            BITS=bits,
            T=T,
            F=F,
            R=R,
            BM=bm,
            BN=64,
            DOT_FP32=INTERPRET,
            num_warps=8 if big else 4,
            num_stages=3,
        )
        dx = dx.reshape(*x.shape[:-1], K)
    if need_dBA and cublas:  # after dx: G = dyᵀx reuses the buffer W_hat was in
        dB, dA = _rank_grads_cublas(dy2, x2, codes, grid, B.to(dy.dtype), A.to(dy.dtype), hi)
        need_dBA = False
    if need_dBA:
        bn = 128
        n_blocks, split, per, dB_ws, dA_ws = _rank_grad_partials(N, K, R, n_slices, bn, dy.device)
        _ds_kernel[(n_blocks, split)](
            dy2,
            x2,
            codes.lo,
            hi,
            grid,
            B,
            A,
            dB_ws,
            dA_ws,
            M,
            N,
            K,
            r,
            n_slices,
            per,
            dy2.stride(0),
            x2.stride(0),
            codes.lo.stride(0),
            hi.stride(0),
            B.stride(0),
            A.stride(0),
            BITS=bits,
            T=T,
            F=F,
            R=R,
            BN=bn,
            BM=64,
            DOT_FP32=INTERPRET,
            num_warps=8,
            num_stages=3,
        )
        dB = dB_ws.sum(0)[:, :r]
        dA = dA_ws.sum(0)[:r]
    return dx, dB, dA
