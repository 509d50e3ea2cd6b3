"""The backward Triton kernels: ``dx`` through the codes, and the rank gradients ``dB``, ``dA`` per K slice with their
reduction; ``backward.py`` picks between them and the dequantize + cuBLAS route."""

from __future__ import annotations

import triton
import triton.language as tl

from .primitives import _dot, _field, _k_slice, _load_codes, _lut, _mm, _row_tile


@triton.jit(do_not_specialize=["M", "r"])
def _dx_kernel(
    dy_ptr,
    lo_ptr,
    hi_ptr,
    grid_ptr,
    B_ptr,
    A_ptr,
    dx_ptr,
    M,
    N,
    K,
    r,
    stride_dym,
    stride_dxm,
    stride_lo,
    stride_hi,
    stride_bn,
    stride_ar,
    BITS: tl.constexpr,
    T: tl.constexpr,
    F: tl.constexpr,
    R: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
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
    a = tl.load(A_ptr + offs_r[:, None] * stride_ar + k[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0).to(
        cdt
    )  # (R, T)
    acc = tl.zeros((BM, T), dtype=tl.float32)
    for n0 in range(0, N, BN):
        offs_n = n0 + tl.arange(0, BN)
        n_mask = offs_n < N
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T)
        q = _lut(grid_ptr, _field(lo, hi, f, BITS))  # (BN, T)
        b = tl.load(
            B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :], other=0.0
        ).to(cdt)
        dyt = tl.load(
            dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :], mask=m_mask[:, None] & n_mask[None, :], other=0.0
        ).to(cdt)
        s = _mm(b, a, DOT_FP32)
        acc = _dot(dyt, (q.to(tl.float32) * s).to(cdt), acc, DOT_FP32)
    tl.store(
        dx_ptr + offs_m[:, None] * stride_dxm + k[None, :],
        acc.to(dx_ptr.dtype.element_ty),
        mask=m_mask[:, None] & k_mask[None, :],
    )


@triton.jit
def _rank_grads_slice(
    ds,
    A_ptr,
    stride_ar,
    offs_r,
    r_mask,
    k,
    k_mask,
    bt,
    dB,
    dA_ws_ptr,
    pid_n,
    K,
    R: tl.constexpr,
    OPD: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """One ``T``-wide K slice of ``dS (BN, T)``: returns ``dB + dS Aᵀ`` and stores ``Bᵀ dS`` as N-block ``pid_n``'s
    fp32 partial of ``dA``; ``OPD``: the dtype of the two products' operands (``dS`` arrives in it)."""
    at = tl.load(
        A_ptr + offs_r[None, :] * stride_ar + k[:, None], mask=r_mask[None, :] & k_mask[:, None], other=0.0
    ).to(OPD)  # Aᵀ (T, R)
    dB = _dot(ds, at, dB, DOT_FP32)
    dA = _mm(bt, ds, DOT_FP32)  # (R, T)
    tl.store(dA_ws_ptr + pid_n * R * K + offs_r[:, None] * K + k[None, :], dA, mask=r_mask[:, None] & k_mask[None, :])
    return dB


@triton.jit(do_not_specialize=["M", "r", "n_slices", "slices_per"])
def _ds_kernel(
    dy_ptr,
    x_ptr,
    lo_ptr,
    hi_ptr,
    grid_ptr,
    B_ptr,
    A_ptr,
    dB_ws_ptr,
    dA_ws_ptr,
    M,
    N,
    K,
    r,
    n_slices,
    slices_per,
    stride_dym,
    stride_xm,
    stride_lo,
    stride_hi,
    stride_bn,
    stride_ar,
    BITS: tl.constexpr,
    T: tl.constexpr,
    F: tl.constexpr,
    R: tl.constexpr,
    BN: tl.constexpr,
    BM: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """For N-block ``pid_n`` and a run of K slices: ``dS = (dyᵀ x) ⊙ grid[Q]`` on chip, then
    ``dB_ws[pid_k, rows] = Σ dS Aᵀ`` and ``dA_ws[pid_n, :, slice] = Bᵀ dS`` (fp32 partials)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    cdt = tl.float32 if DOT_FP32 else dy_ptr.dtype.element_ty
    offs_n, n_mask, offs_j, offs_r, r_mask = _row_tile(pid_n, N, r, BN, T, R)
    b = tl.load(
        B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :], other=0.0
    ).to(tl.float32)  # (BN, R)
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
            dyt = tl.load(
                dy_ptr + offs_m[None, :] * stride_dym + offs_n[:, None],
                mask=m_mask[None, :] & n_mask[:, None],
                other=0.0,
            ).to(cdt)  # (BN, BM)
            xt = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0
            ).to(cdt)  # (BM, T)
            gacc = _dot(dyt, xt, gacc, DOT_FP32)
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T)
        ds = gacc * _lut(grid_ptr, _field(lo, hi, f, BITS)).to(tl.float32)  # (BN, T) fp32: tf32 dots keep fp32 range
        dB = _rank_grads_slice(
            ds, A_ptr, stride_ar, offs_r, r_mask, k, k_mask, bt, dB, dA_ws_ptr, pid_n, K, R, tl.float32, DOT_FP32
        )
    tl.store(dB_ws_ptr + pid_k * N * R + offs_n[:, None] * R + offs_r[None, :], dB, mask=n_mask[:, None])


@triton.jit(do_not_specialize=["r", "n_slices", "slices_per"])
def _dsred_kernel(
    g_ptr,
    lo_ptr,
    hi_ptr,
    grid_ptr,
    B_ptr,
    A_ptr,
    dB_ws_ptr,
    dA_ws_ptr,
    N,
    K,
    r,
    n_slices,
    slices_per,
    stride_gn,
    stride_lo,
    stride_hi,
    stride_bn,
    stride_ar,
    BITS: tl.constexpr,
    T: tl.constexpr,
    F: tl.constexpr,
    R: tl.constexpr,
    BN: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """For N-block ``pid_n`` and the K slices of split ``pid_k``: ``dS = G ⊙ grid[Q]`` per ``(BN, T)`` tile (fp32,
    then the operand dtype of the two rank products), ``dB_ws[pid_k, rows] = Σ dS Aᵀ`` and
    ``dA_ws[pid_n, :, slice] = Bᵀ dS`` (fp32 partials)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    cdt = tl.float32 if DOT_FP32 else g_ptr.dtype.element_ty
    offs_n, n_mask, offs_j, offs_r, r_mask = _row_tile(pid_n, N, r, BN, T, R)
    bt = tl.load(
        B_ptr + offs_r[:, None] + offs_n[None, :] * stride_bn, mask=r_mask[:, None] & n_mask[None, :], other=0.0
    ).to(cdt)  # Bᵀ (R, BN)
    dB = tl.zeros((BN, R), dtype=tl.float32)
    kt0 = pid_k * slices_per
    kt1 = tl.minimum(kt0 + slices_per, n_slices)
    for kt in range(kt0, kt1):
        g, f, k, k_mask = _k_slice(kt, offs_j, K, F, T)
        gt = tl.load(
            g_ptr + offs_n[:, None] * stride_gn + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0
        )  # G (BN, T)
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T)
        ds = (gt.to(tl.float32) * _lut(grid_ptr, _field(lo, hi, f, BITS)).to(tl.float32)).to(cdt)
        dB = _rank_grads_slice(
            ds, A_ptr, stride_ar, offs_r, r_mask, k, k_mask, bt, dB, dA_ws_ptr, pid_n, K, R, cdt, DOT_FP32
        )
    tl.store(dB_ws_ptr + pid_k * N * R + offs_n[:, None] * R + offs_r[None, :], dB, mask=n_mask[:, None])
