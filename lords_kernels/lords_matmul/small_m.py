"""``_zgemv_kernel``: batch 1 and small batches in one launch, through the activation-side identity.

For one token, LoRDS is a scale-free low-bit GEMV with ``r`` activation rows: ``Z = grid[Q] · (A ⊙ x)ᵀ`` (N × r), then
``y_n = Σ_j B[n, j] Z[n, j]``. For M tokens the M blocks of ``r`` rows sit side by side: column ``c = m·R + j`` of the
second operand is ``A[j] ⊙ x_m``, so one ``(BN, T) × (T, MP·R)`` tensor-core product per K-slice serves every token,
the code values enter it raw (no per-weight scale multiply, no per-weight cast beyond the LUT), and the only
per-token work is the final ``Σ_j B ⊙ Z`` (a row sum over each token's R columns).

Compared with the M = 1 ``_gemv_kernel`` (:mod:`.forward`): ``A ⊙ x`` is formed in the kernel from compact ``Aᵀ (T, R)``
and ``xᵀ (T, MP)`` tiles (L2-resident; broadcast to ``(T, MP·R)`` in registers, so the pipeliner stages only the
compact tiles in shared memory; ``MP·R × T`` multiplies per slice against ``BN × T`` LUT work) instead of by a separate
``_xa_kernel`` launch and a ``(K, R)`` buffer, so a call is one launch and allocates nothing but ``y``; and M > 1
works. The rank work is ``M·R`` MACs per weight against ``R + M`` for the weight-side ``gemm_t``: it pays where
``M·R`` stays small (block-128/256 parity ranks R = 32/16, M ≤ 4–8), which the tile table decides per cell.
Split-K: the last split of a tile to arrive sums the fp32 partials (one launch, no memset), as in :mod:`.forward`.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .primitives import _dot, _field, _load_codes, _lut, _lut_prmt, _row_tile, _split_range, _splitk_epilogue


@triton.jit(do_not_specialize=["M", "r", "n_groups", "split_k"])
def _zgemv_kernel(x_ptr, A_ptr, lo_ptr, hi_ptr, grid_ptr, tab_ptr, B_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
                  M, N, K, r, n_groups, split_k, stride_xm, stride_ym, stride_lo, stride_hi, stride_bn, stride_ar,
                  HAS_BIAS: tl.constexpr, BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr,
                  MP: tl.constexpr, BN: tl.constexpr, EVEN_N: tl.constexpr, PRMT: tl.constexpr,
                  ONES: tl.constexpr, DOT_FP32: tl.constexpr):
    """``y[:, rows] = Σ_j B[rows, j] ⊙ (grid[Q] · (A ⊙ x)ᵀ)[:, (m, j)]`` for ``BN`` weight rows and split ``pid_k``
    of the code groups. ``MP``: tokens padded to a power of two."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    cdt = tl.float32 if DOT_FP32 else x_ptr.dtype.element_ty
    offs_n, n_mask, offs_j, offs_r, _ = _row_tile(pid_n, N, r, BN, T, R)
    offs_m = tl.arange(0, MP)
    cj = tl.arange(0, MP * R) % R  # column m·R + j of the second operand: rank j of token m
    z = tl.zeros((BN, MP * R), dtype=tl.float32)
    if ONES:  # code values routed into the accumulator layout by an MMA-made tile of ones (see _gemv_kernel)
        e_n = tl.where(tl.arange(0, 16)[None, :] == 0, 1.0, 0.0) + tl.zeros((BN, 16), dtype=tl.float32)
        e_t = tl.where(tl.arange(0, 16)[:, None] == 0, 1.0, 0.0) + tl.zeros((16, T), dtype=tl.float32)
        ones = tl.dot(e_n.to(x_ptr.dtype.element_ty), e_t.to(x_ptr.dtype.element_ty), out_dtype=tl.float16)
    g0, g1 = _split_range(pid_k, n_groups, split_k)
    for g in range(g0, g1):
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T,
                             not EVEN_N, PRMT and BITS != 3)
        for f in tl.static_range(F):
            if PRMT:
                if BITS == 3:
                    q = _lut_prmt(_field(lo, hi, f, BITS).to(tl.uint8), tab_ptr, x_ptr, f, BITS)
                else:
                    q = _lut_prmt(lo, tab_ptr, x_ptr, f, BITS)
            else:
                q = _lut(grid_ptr, _field(lo, hi, f, BITS)).to(cdt)
            if ONES:
                q = q * ones.to(q.dtype)
            k = g * (F * T) + f * T + offs_j
            k_ok = k < K
            # compact tiles (what the pipeliner stages in shared memory), broadcast to (T, MP, R) in registers
            a = tl.load(A_ptr + offs_r[None, :] * stride_ar + k[:, None], mask=(offs_r < r)[None, :] & k_ok[:, None],
                        other=0.0).to(tl.float32)  # Aᵀ (T, R)
            xv = tl.load(x_ptr + offs_m[None, :] * stride_xm + k[:, None], mask=(offs_m < M)[None, :] & k_ok[:, None],
                         other=0.0).to(tl.float32)  # xᵀ (T, MP)
            xa = tl.reshape(xv[:, :, None] * a[:, None, :], (T, MP * R)).to(cdt)  # column m·R + j: A[j, k]·x[m, k]
            z = _dot(q.to(cdt), xa, z, DOT_FP32)
    b = tl.load(B_ptr + offs_n[:, None] * stride_bn + cj[None, :], mask=n_mask[:, None] & (cj < r)[None, :],
                other=0.0).to(tl.float32)  # B[n, c % R]
    zb = z * b
    if MP == 1:
        y = tl.sum(zb, axis=1)[None, :]  # (1, BN)
        offs_y = tl.zeros((1,), dtype=tl.int32)
    else:  # per-token sums over its R columns
        y = tl.trans(tl.sum(tl.reshape(zb, (BN, MP, R)), axis=2))  # (MP, BN)
        offs_y = tl.arange(0, MP)
    _splitk_epilogue(y, offs_y, offs_n, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, lock_ptr, pid_n, pid_k,
                     split_k, HAS_BIAS)


ZGEMV_MAX_COLS = 256
"""zgemv's second operand is ``(T, next_pow2(M)·R)``: wider than this, one accumulator tile cannot hold it."""


def zgemv_columns(M: int, R: int) -> int:
    """Width of zgemv's second operand for M tokens at padded rank R (at most ``ZGEMV_MAX_COLS``)."""
    return triton.next_power_of_2(M) * R
