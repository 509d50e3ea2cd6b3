"""The forward Triton kernels: the batch-1 gemv (the activation-side identity, ``A ⊙ x`` staged by ``_xa_kernel``) and
the swap-AB ``gemm_t`` for small batches; ``forward.py`` binds and launches them."""

from __future__ import annotations

import triton
import triton.language as tl

from .primitives import (
    _code_values,
    _dot,
    _field,
    _grouped_tile,
    _load_codes,
    _lut,
    _lut_prmt,
    _mm,
    _row_tile,
    _split_range,
    _splitk_epilogue,
)


@triton.jit
def _round_scale(t, SCALE_RND: tl.constexpr):
    """``t`` rounded to the runner's compute dtype (1: fp16, 2: bf16, 0: as loaded), then fp32: scales stored in
    fp32 (``LordsConfig.scale_dtype``'s default) give what a cast to the activation dtype before the launch gives,
    with no cast launch (what a CUDA graph of a compiled model replays)."""
    if SCALE_RND == 1:
        t = t.to(tl.float16)
    elif SCALE_RND == 2:
        t = t.to(tl.bfloat16)
    return t.to(tl.float32)


@triton.jit
def _xa_kernel(x_ptr, A_ptr, xa_ptr, K, r, stride_ar, R: tl.constexpr, BK: tl.constexpr, SCALE_RND: tl.constexpr = 0):
    """``xaᵀ (K_pad, R) = (A ⊙ x)ᵀ``, zero beyond ``r`` and ``K``: the gemv's second operand, made once per call
    instead of once per N-block. ``A`` in any float dtype, rounded as :func:`_round_scale` says."""
    k = tl.program_id(0) * BK + tl.arange(0, BK)
    j = tl.arange(0, R)
    km = k < K
    a = tl.load(A_ptr + j[None, :] * stride_ar + k[:, None], mask=(j[None, :] < r) & km[:, None], other=0.0)
    xk = tl.load(x_ptr + k, mask=km, other=0.0)
    xa = _round_scale(a, SCALE_RND) * xk.to(tl.float32)[:, None]
    tl.store(xa_ptr + k[:, None] * R + j[None, :], xa.to(xa_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["r", "n_groups", "split_k"])
def _gemv_kernel(
    xa_ptr,
    lo_ptr,
    hi_ptr,
    grid_ptr,
    tab_ptr,
    B_ptr,
    bias_ptr,
    y_ptr,
    ws_ptr,
    lock_ptr,
    N,
    r,
    n_groups,
    split_k,
    stride_lo,
    stride_hi,
    stride_bn,
    HAS_BIAS: tl.constexpr,
    BITS: tl.constexpr,
    T: tl.constexpr,
    F: tl.constexpr,
    R: tl.constexpr,
    BN: tl.constexpr,
    Q_AS_B: tl.constexpr,
    EVEN_N: tl.constexpr,
    PRMT: tl.constexpr,
    ONES: tl.constexpr,
    DOT_FP32: tl.constexpr,
    SCALE_RND: tl.constexpr = 0,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    cdt = xa_ptr.dtype.element_ty
    offs_n, n_mask, offs_j, offs_r, r_mask = _row_tile(pid_n, N, r, BN, T, R)
    g0, g1 = _split_range(pid_k, n_groups, split_k)
    if Q_AS_B:  # Zᵀ (R, BN) = (A ⊙ x) (R, T) · grid[Q]ᵀ (T, BN): the code values go straight to shared memory
        z = tl.zeros((R, BN), dtype=tl.float32)
    else:  # Z (BN, R) = grid[Q] (BN, T) · (A ⊙ x)ᵀ (T, R)
        z = tl.zeros((BN, R), dtype=tl.float32)
    if ONES:  # a (BN, T) tile of ones out of a K = 16 MMA: see below
        e_n = tl.where(tl.arange(0, 16)[None, :] == 0, 1.0, 0.0) + tl.zeros((BN, 16), dtype=tl.float32)
        e_t = tl.where(tl.arange(0, 16)[:, None] == 0, 1.0, 0.0) + tl.zeros((16, T), dtype=tl.float32)
        ones = tl.dot(e_n.to(xa_ptr.dtype.element_ty), e_t.to(xa_ptr.dtype.element_ty), out_dtype=tl.float16)
    for g in range(g0, g1):
        lo, hi = _load_codes(
            lo_ptr,
            hi_ptr,
            offs_n,
            n_mask,
            g,
            offs_j,
            stride_lo,
            stride_hi,
            not Q_AS_B,
            BITS,
            T,
            not EVEN_N,
            PRMT and BITS != 3,
        )
        for f in tl.static_range(F):
            if PRMT:  # code values by byte permutes (no memory access), (BN, T) or (T, BN)
                if BITS == 3:
                    q = _lut_prmt(_field(lo, hi, f, BITS).to(tl.uint8), tab_ptr, xa_ptr, f, BITS)
                else:
                    q = _lut_prmt(lo, tab_ptr, xa_ptr, f, BITS)
            else:  # code values by a gather from the L1-resident table
                q = _lut(grid_ptr, _field(lo, hi, f, BITS)).to(cdt)
            if ONES:
                # times ones made by an MMA: the code values then live in the accumulator layout, which feeds the
                # next MMA from registers (as in gemm_t), instead of a store to and a reload from shared memory
                q = q * ones.to(q.dtype)
            k = g * (F * T) + f * T + offs_j
            if Q_AS_B:
                xa = tl.load(xa_ptr + k[None, :] * R + offs_r[:, None])  # (R, T)
                z = _dot(xa, q, z, DOT_FP32)
            else:
                xa = tl.load(xa_ptr + k[:, None] * R + offs_r[None, :])  # (T, R)
                z = _dot(q, xa, z, DOT_FP32)
    if Q_AS_B:
        bt = _round_scale(
            tl.load(
                B_ptr + offs_n[None, :] * stride_bn + offs_r[:, None], mask=n_mask[None, :] & r_mask[:, None], other=0.0
            ),
            SCALE_RND,
        )
        y = tl.sum(z * bt, axis=0)
    else:
        b = _round_scale(
            tl.load(
                B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :], other=0.0
            ),
            SCALE_RND,
        )
        y = tl.sum(z * b, axis=1)
    offs_m = tl.zeros((1,), dtype=tl.int32)
    _splitk_epilogue(
        y[None, :], offs_m, offs_n, 1, N, y_ptr, 0, bias_ptr, ws_ptr, lock_ptr, pid_n, pid_k, split_k, HAS_BIAS
    )


@triton.jit(do_not_specialize=["M", "r", "n_groups", "split_k"])
def _gemm_t_kernel(
    x_ptr,
    lo_ptr,
    hi_ptr,
    grid_ptr,
    tab_ptr,
    B_ptr,
    A_ptr,
    bias_ptr,
    y_ptr,
    ws_ptr,
    lock_ptr,
    M,
    N,
    K,
    r,
    n_groups,
    split_k,
    stride_xm,
    stride_ym,
    stride_lo,
    stride_hi,
    stride_bn,
    stride_ar,
    HAS_BIAS: tl.constexpr,
    BITS: tl.constexpr,
    T: tl.constexpr,
    F: tl.constexpr,
    R: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    GROUP_M: tl.constexpr,
    PRMT: tl.constexpr,
    S16: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """The weight-side form transposed ("swap AB"): ``yᵀ (BN, BM) += W (BN, T) · xᵀ (T, BM)``. The weight rows are
    the tensor cores' M side, so ``S = B_tile · A_tile`` comes out in the accumulator layout, ``W = grid[Q] ⊙ S``
    is formed there and fed to the next MMA from registers (as flash attention feeds P): no shared-memory round
    trip for ``W``, and a small token count M sits on the MMA's narrow N side (8–256) instead of padding 64 rows."""
    pid_m, pid_n, num_n = _grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    pid_k = tl.program_id(1)
    cdt = tl.float32 if DOT_FP32 else x_ptr.dtype.element_ty
    offs_m = pid_m * BM + tl.arange(0, BM)
    m_mask = offs_m < M
    offs_n, n_mask, offs_j, offs_r, r_mask = _row_tile(pid_n, N, r, BN, T, R)
    b = tl.load(
        B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :], other=0.0
    ).to(cdt)  # (BN, R), kept for the whole K loop
    kt0, kt1 = _split_range(pid_k, n_groups * F, split_k)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    for kt in range(kt0, kt1):
        g = kt // F
        f = kt % F
        lo, hi = _load_codes(
            lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T, True, PRMT and BITS != 3
        )
        # the code values first: the previous slice's MMA is still running on the tensor cores meanwhile
        q = _code_values(lo, hi, f, grid_ptr, tab_ptr, x_ptr, BITS, PRMT)  # (BN, T)
        k = g * (F * T) + f * T + offs_j
        k_mask = k < K
        a = tl.load(
            A_ptr + offs_r[:, None] * stride_ar + k[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0
        ).to(cdt)  # A tile (R, T)
        if (
            S16 and not DOT_FP32
        ):  # fp16 accumulation of the rank-R sum (fp16 activations): no convert before the multiply
            s = tl.dot(b, a, out_dtype=tl.float16)
        else:
            s = _mm(b, a, DOT_FP32)  # S tile (BN, T), fp32
        w = q.to(cdt) * s.to(cdt)  # one packed half multiply per two weights, not two converts and a float multiply
        xt = tl.load(
            x_ptr + offs_m[None, :] * stride_xm + k[:, None], mask=m_mask[None, :] & k_mask[:, None], other=0.0
        ).to(cdt)  # xᵀ (T, BM)
        acc = _dot(w, xt, acc, DOT_FP32)
    _splitk_epilogue(
        tl.trans(acc),
        offs_m,
        offs_n,
        M,
        N,
        y_ptr,
        stride_ym,
        bias_ptr,
        ws_ptr,
        lock_ptr,
        pid_m * num_n + pid_n,
        pid_k,
        split_k,
        HAS_BIAS,
    )
