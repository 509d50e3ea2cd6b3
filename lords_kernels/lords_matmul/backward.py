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
import triton.language as tl

from .layout import T, KernelCodes
from .primitives import INTERPRET, _dot, _field, _k_slice, _load_codes, _lut, _mm, _row_tile
from .tuning import dequant_min_m, rank_pad


@triton.jit(do_not_specialize=["M", "r"])
def _dx_kernel(dy_ptr, lo_ptr, hi_ptr, grid_ptr, B_ptr, A_ptr, dx_ptr, M, N, K, r,
               stride_dym, stride_dxm, stride_lo, stride_hi, stride_bn, stride_ar,
               BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, DOT_FP32: tl.constexpr):
    """``dx[:, kt] = dy · W_hat[:, kt]`` for one ``T``-wide slice ``kt`` of K (field ``f`` of group ``g``)."""
    pid_m = tl.program_id(0)
    kt = tl.program_id(1)
    cdt = tl.float32 if DOT_FP32 else dy_ptr.dtype.element_ty
    offs_m = pid_m * BM + tl.arange(0, BM)
    m_mask = offs_m < M
    offs_j = tl.arange(0, T)
    offs_r = tl.arange(0, R)
    r_mask = offs_r < r
    g, f, k, k_mask = _k_slice(kt, offs_j, K, F, T)
    a = tl.load(A_ptr + offs_r[:, None] * stride_ar + k[None, :], mask=r_mask[:, None] & k_mask[None, :],
                other=0.0).to(cdt)  # (R, T)
    acc = tl.zeros((BM, T), dtype=tl.float32)
    for n0 in range(0, N, BN):
        offs_n = n0 + tl.arange(0, BN)
        n_mask = offs_n < N
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T)
        q = _lut(grid_ptr, _field(lo, hi, f, BITS))  # (BN, T)
        b = tl.load(B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :],
                    other=0.0).to(cdt)
        dyt = tl.load(dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :], mask=m_mask[:, None] & n_mask[None, :],
                      other=0.0).to(cdt)
        s = _mm(b, a, DOT_FP32)
        acc = _dot(dyt, (q.to(tl.float32) * s).to(cdt), acc, DOT_FP32)
    tl.store(dx_ptr + offs_m[:, None] * stride_dxm + k[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=m_mask[:, None] & k_mask[None, :])


@triton.jit
def _rank_grads_slice(ds, A_ptr, stride_ar, offs_r, r_mask, k, k_mask, bt, dB, dA_ws_ptr, pid_n, K,
                      R: tl.constexpr, OPD: tl.constexpr, DOT_FP32: tl.constexpr):
    """One ``T``-wide K slice of ``dS (BN, T)``: returns ``dB + dS Aᵀ`` and stores ``Bᵀ dS`` as N-block ``pid_n``'s
    fp32 partial of ``dA``; ``OPD``: the dtype of the two products' operands (``dS`` arrives in it)."""
    at = tl.load(A_ptr + offs_r[None, :] * stride_ar + k[:, None], mask=r_mask[None, :] & k_mask[:, None],
                 other=0.0).to(OPD)  # Aᵀ (T, R)
    dB = _dot(ds, at, dB, DOT_FP32)
    dA = _mm(bt, ds, DOT_FP32)  # (R, T)
    tl.store(dA_ws_ptr + pid_n * R * K + offs_r[:, None] * K + k[None, :], dA, mask=r_mask[:, None] & k_mask[None, :])
    return dB


@triton.jit(do_not_specialize=["M", "r", "n_slices", "slices_per"])
def _ds_kernel(dy_ptr, x_ptr, lo_ptr, hi_ptr, grid_ptr, B_ptr, A_ptr, dB_ws_ptr, dA_ws_ptr, M, N, K, r,
               n_slices, slices_per, stride_dym, stride_xm, stride_lo, stride_hi, stride_bn, stride_ar,
               BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr,
               BN: tl.constexpr, BM: tl.constexpr, DOT_FP32: tl.constexpr):
    """For N-block ``pid_n`` and a run of K slices: ``dS = (dyᵀ x) ⊙ grid[Q]`` on chip, then
    ``dB_ws[pid_k, rows] = Σ dS Aᵀ`` and ``dA_ws[pid_n, :, slice] = Bᵀ dS`` (fp32 partials)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    cdt = tl.float32 if DOT_FP32 else dy_ptr.dtype.element_ty
    offs_n, n_mask, offs_j, offs_r, r_mask = _row_tile(pid_n, N, r, BN, T, R)
    b = tl.load(B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :],
                other=0.0).to(tl.float32)  # (BN, R)
    bt = tl.trans(b)
    dB = tl.zeros((BN, R), dtype=tl.float32)
    kt0 = pid_k * slices_per
    kt1 = tl.minimum(kt0 + slices_per, n_slices)
    for kt in range(kt0, kt1):
        g, f, k, k_mask = _k_slice(kt, offs_j, K, F, T)
        gacc = tl.zeros((BN, T), dtype=tl.float32)
        for m0 in range(0, M, BM):
            offs_m = m0 + tl.arange(0, BM)
            m_mask = offs_m < M
            dyt = tl.load(dy_ptr + offs_m[None, :] * stride_dym + offs_n[:, None],
                          mask=m_mask[None, :] & n_mask[:, None], other=0.0).to(cdt)  # (BN, BM)
            xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                         other=0.0).to(cdt)  # (BM, T)
            gacc = _dot(dyt, xt, gacc, DOT_FP32)
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T)
        ds = gacc * _lut(grid_ptr, _field(lo, hi, f, BITS)).to(tl.float32)  # (BN, T) fp32: tf32 dots keep fp32 range
        dB = _rank_grads_slice(ds, A_ptr, stride_ar, offs_r, r_mask, k, k_mask, bt, dB, dA_ws_ptr, pid_n, K,
                               R, tl.float32, DOT_FP32)
    tl.store(dB_ws_ptr + pid_k * N * R + offs_n[:, None] * R + offs_r[None, :], dB, mask=n_mask[:, None])


@triton.jit(do_not_specialize=["r", "n_slices", "slices_per"])
def _dsred_kernel(g_ptr, lo_ptr, hi_ptr, grid_ptr, B_ptr, A_ptr, dB_ws_ptr, dA_ws_ptr, N, K, r, n_slices, slices_per,
                  stride_gn, stride_lo, stride_hi, stride_bn, stride_ar,
                  BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr, BN: tl.constexpr,
                  DOT_FP32: tl.constexpr):
    """For N-block ``pid_n`` and the K slices of split ``pid_k``: ``dS = G ⊙ grid[Q]`` per ``(BN, T)`` tile (fp32,
    then the operand dtype of the two rank products), ``dB_ws[pid_k, rows] = Σ dS Aᵀ`` and
    ``dA_ws[pid_n, :, slice] = Bᵀ dS`` (fp32 partials)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    cdt = tl.float32 if DOT_FP32 else g_ptr.dtype.element_ty
    offs_n, n_mask, offs_j, offs_r, r_mask = _row_tile(pid_n, N, r, BN, T, R)
    bt = tl.load(B_ptr + offs_r[:, None] + offs_n[None, :] * stride_bn, mask=r_mask[:, None] & n_mask[None, :],
                 other=0.0).to(cdt)  # Bᵀ (R, BN)
    dB = tl.zeros((BN, R), dtype=tl.float32)
    kt0 = pid_k * slices_per
    kt1 = tl.minimum(kt0 + slices_per, n_slices)
    for kt in range(kt0, kt1):
        g, f, k, k_mask = _k_slice(kt, offs_j, K, F, T)
        gt = tl.load(g_ptr + offs_n[:, None] * stride_gn + k[None, :], mask=n_mask[:, None] & k_mask[None, :],
                     other=0.0)  # G (BN, T)
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T)
        ds = (gt.to(tl.float32) * _lut(grid_ptr, _field(lo, hi, f, BITS)).to(tl.float32)).to(cdt)
        dB = _rank_grads_slice(ds, A_ptr, stride_ar, offs_r, r_mask, k, k_mask, bt, dB, dA_ws_ptr, pid_n, K,
                               R, cdt, DOT_FP32)
    tl.store(dB_ws_ptr + pid_k * N * R + offs_n[:, None] * R + offs_r[None, :], dB, mask=n_mask[:, None])


def _rank_grad_partials(N: int, K: int, R: int, n_slices: int, bn: int, device):
    """Grid and fp32 partial buffers of the two rank-gradient kernels: ``⌈N/bn⌉`` row blocks × ``split`` runs of
    ``per`` K slices (about 264 programs in all), ``dB_ws (split, N, R)`` and ``dA_ws (⌈N/bn⌉, R, K)``."""
    n_blocks = triton.cdiv(N, bn)
    split = max(1, min(n_slices, triton.cdiv(264, n_blocks)))
    per = triton.cdiv(n_slices, split)
    split = triton.cdiv(n_slices, per)
    return (n_blocks, split, per, torch.empty(split, N, R, dtype=torch.float32, device=device),
            torch.empty(n_blocks, R, K, dtype=torch.float32, device=device))


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
        G, codes.lo, hi, grid, B, A, dB_ws, dA_ws, N, K, r, n_slices, per, G.stride(0), codes.lo.stride(0),
        hi.stride(0), B.stride(0), A.stride(0), BITS=bits, T=T, F=F, R=R, BN=bn, DOT_FP32=INTERPRET,
        num_warps=8 if bn >= 128 else 4, num_stages=3)
    return dB_ws.sum(0)[:, :r], dA_ws.sum(0)[:r]


def lords_matmul_backward(dy: torch.Tensor, x: torch.Tensor, codes: KernelCodes, grid: torch.Tensor,
                          B: torch.Tensor, A: torch.Tensor, need_dx: bool = True, need_dBA: bool = True,
                          cublas: bool | None = None):
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
            dy2, codes.lo, hi, grid, B, A, dx, M, N, K, r, dy2.stride(0), dx.stride(0), codes.lo.stride(0),
            hi.stride(0), B.stride(0), A.stride(0), BITS=bits, T=T, F=F, R=R, BM=bm, BN=64,
            DOT_FP32=INTERPRET, num_warps=8 if big else 4, num_stages=3)
        dx = dx.reshape(*x.shape[:-1], K)
    if need_dBA and cublas:  # after dx: G = dyᵀx reuses the buffer W_hat was in
        dB, dA = _rank_grads_cublas(dy2, x2, codes, grid, B.to(dy.dtype), A.to(dy.dtype), hi)
        need_dBA = False
    if need_dBA:
        bn = 128
        n_blocks, split, per, dB_ws, dA_ws = _rank_grad_partials(N, K, R, n_slices, bn, dy.device)
        _ds_kernel[(n_blocks, split)](
            dy2, x2, codes.lo, hi, grid, B, A, dB_ws, dA_ws, M, N, K, r, n_slices, per, dy2.stride(0),
            x2.stride(0), codes.lo.stride(0), hi.stride(0), B.stride(0), A.stride(0),
            BITS=bits, T=T, F=F, R=R, BN=bn, BM=64, DOT_FP32=INTERPRET, num_warps=8, num_stages=3)
        dB = dB_ws.sum(0)[:, :r]
        dA = dA_ws.sum(0)[:r]
    return dx, dB, dA
