"""Triton kernels for ``y = x · (grid[Q] ⊙ (B·A))ᵀ + bias`` and its backward, on :mod:`.layout` codes.

Four kernels, one launcher each (the math they implement is :mod:`.reference`):

- ``_gemv_kernel`` (M = 1, decode): the activation-side identity ``y = Σ_j B[:, j] ⊙ (grid[Q] · (A[j] ⊙ x))``.
  ``_xa_kernel`` forms ``(A ⊙ x)ᵀ (K_pad, R)`` once; the tensor cores multiply raw code values ``(BN, T)`` by
  its ``(T, R)`` tiles into ``Z (BN, R)``; one ``Σ_j B ⊙ Z`` at the end. No per-weight multiply by a scale.
- ``_gemm_kernel`` (M ≥ 2, decode batches and prefill): the weight-side form. For every ``(T, BN)`` slice of the
  weight it rebuilds the scale tile on chip, ``S = Aᵀ_tile · Bᵀ_tile`` (a ``tl.dot``), multiplies by the code
  values and feeds ``x_tile · W_tile`` to the tensor cores. ``Q ⊙ (BA)`` never reaches memory.
- ``_dx_kernel``: ``dx = dy · W_hat``, the same on-chip rebuild, summed over N.
- ``_ds_kernel``: ``dS = (dyᵀ x) ⊙ grid[Q]`` per ``(BN, T)`` tile on chip, reduced at once into ``dB = dS Aᵀ``
  (kept in registers along K) and ``dA = Bᵀ dS`` (one fp32 partial per N-block, summed after). ``dS`` never
  reaches memory.

Split-K (``gemv``/``gemm``): each split writes an fp32 partial; the last split of a tile to arrive (an atomic
counter, reset by that split) sums them, adds the bias and writes ``y``: one launch, no memset.

``DOT_FP32`` (set under ``TRITON_INTERPRET=1``): dots on fp32 operands, since the interpreter's bf16 dot is wrong.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .layout import T, KernelCodes, group_size
from .tuning import pick_config, rank_pad

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
INTERP_MODE = tl.constexpr(INTERPRET)


@triton.jit
def _field(lo, hi, f, BITS: tl.constexpr):
    """Codes of field ``f`` (int32) from a tile of ``lo`` bytes (and pre-shifted ``hi`` bytes at 3 bits)."""
    if BITS == 4:
        c = (lo >> (4 * f)) & 15
    elif BITS == 2:
        c = (lo >> (2 * f)) & 3
    else:
        c = ((lo >> (2 * f)) & 3) | (((hi >> f) & 1) << 2)
    return c


@triton.jit
def _lut(grid_ptr, c):
    """``grid[c]`` in the grid's dtype. On the GPU an explicit ``ld.global.nc`` (the 2**bits-entry table stays
    in L1): a plain ``tl.load`` here is taken by the software pipeliner and becomes one ``cp.async`` per weight
    element through shared memory (measured 3-10x slower, NOTES.md)."""
    if INTERP_MODE:
        return tl.load(grid_ptr + c)
    else:
        if grid_ptr.dtype.element_ty == tl.float32:
            return tl.inline_asm_elementwise("ld.global.nc.f32 $0, [$1];", "=r,l", [grid_ptr + c],
                                             dtype=tl.float32, is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise("ld.global.nc.b16 $0, [$1];", "=h,l", [grid_ptr + c],
                                             dtype=grid_ptr.dtype.element_ty, is_pure=True, pack=1)


def _prmt_asm(bits: int, shift) -> str:
    """PTX mapping 4 packed codes (one per byte of ``$2``) to 4 fp16/bf16 grid values in ``$0, $1`` with byte
    permutes (``prmt``): the 16-entry table is 8 words, low bytes ``L0..L3`` (``$3 $7 $11 $15``) and high bytes
    ``H0..H3`` (``$19 $23 $27 $31``) of the 16-bit values; ``prmt`` looks up 8 entries at a time from a nibble
    selector, the 4th code bit picks between two lookups. About 4 instructions per weight, no memory access
    (the gather it replaces costs ~5 instructions and one load per weight). Checked bit-exact against an emulation
    of ``prmt``/``lop3`` for every width (NOTES.md)."""
    pre = [f"shr.b32 w, $2, {shift};" if shift else "mov.b32 w, $2;"]  # shift: an immediate or "$35"
    if bits == 4:
        body = ["and.b32 w, w, 0x0F0F0F0F;", "shr.b32 t, w, 4;", "or.b32 t, t, w;", "prmt.b32 sel, t, t, 0x0020;",
                "and.b32 sel, sel, 0x7777;", "shl.b32 m, w, 4;", "prmt.b32 m, m, m, 0xBA98;",
                "prmt.b32 a, $3, $7, sel;", "prmt.b32 b, $11, $15, sel;", "lop3.b32 lo, a, b, m, 0xD8;",
                "prmt.b32 a, $19, $23, sel;", "prmt.b32 b, $27, $31, sel;", "lop3.b32 hi, a, b, m, 0xD8;"]
    elif bits == 2:
        body = ["and.b32 w, w, 0x03030303;", "shr.b32 t, w, 4;", "or.b32 t, t, w;", "prmt.b32 sel, t, t, 0x0020;",
                "prmt.b32 lo, $3, $3, sel;", "prmt.b32 hi, $19, $19, sel;"]
    else:  # 3 bits: the bytes already hold codes < 8
        body = ["shr.b32 t, w, 4;", "or.b32 t, t, w;", "prmt.b32 sel, t, t, 0x0020;",
                "prmt.b32 lo, $3, $7, sel;", "prmt.b32 hi, $19, $23, sel;"]
    post = ["prmt.b32 $0, lo, hi, 0x5140;", "prmt.b32 $1, lo, hi, 0x7362;"]
    return "{ .reg .b32 w, t, sel, m, a, b, lo, hi; " + " ".join(pre + body + post) + " }"


PRMT4_0 = tl.constexpr(_prmt_asm(4, 0))
PRMT4_1 = tl.constexpr(_prmt_asm(4, 4))
PRMT2_0 = tl.constexpr(_prmt_asm(2, 0))
PRMT2_1 = tl.constexpr(_prmt_asm(2, 2))
PRMT2_2 = tl.constexpr(_prmt_asm(2, 4))
PRMT2_3 = tl.constexpr(_prmt_asm(2, 6))
PRMT3 = tl.constexpr(_prmt_asm(3, 0))
PRMT_CONSTRAINTS = tl.constexpr("=r,=r,r" + ",r" * 32)
PRMT4_RT = tl.constexpr(_prmt_asm(4, "$35"))
PRMT2_RT = tl.constexpr(_prmt_asm(2, "$35"))
PRMT_RT_CONSTRAINTS = tl.constexpr("=r,=r,r" + ",r" * 36)


@triton.jit
def _lut_prmt_rt(raw, tab_ptr, dt_ptr, shift, BITS: tl.constexpr):
    """:func:`_lut_prmt` with a run-time field shift (4 and 2 bits only)."""
    DT = dt_ptr.dtype.element_ty
    z = tl.zeros(raw.shape, dtype=tl.int32)
    args = [raw, z + tl.load(tab_ptr + 0), z + tl.load(tab_ptr + 1), z + tl.load(tab_ptr + 2),
            z + tl.load(tab_ptr + 3), z + tl.load(tab_ptr + 4), z + tl.load(tab_ptr + 5), z + tl.load(tab_ptr + 6),
            z + tl.load(tab_ptr + 7), z + shift]
    if BITS == 4:
        v = tl.inline_asm_elementwise(PRMT4_RT, PRMT_RT_CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
    else:
        v = tl.inline_asm_elementwise(PRMT2_RT, PRMT_RT_CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
    return v


@triton.jit
def _lut_prmt(raw, tab_ptr, dt_ptr, f: tl.constexpr, BITS: tl.constexpr):
    """Grid values (``dt_ptr``'s 16-bit dtype) of field ``f`` of the uint8 tile ``raw`` (3 bits: ``raw`` holds
    codes)."""
    DT = dt_ptr.dtype.element_ty
    z = tl.zeros(raw.shape, dtype=tl.int32)
    args = [raw, z + tl.load(tab_ptr + 0), z + tl.load(tab_ptr + 1), z + tl.load(tab_ptr + 2),
            z + tl.load(tab_ptr + 3), z + tl.load(tab_ptr + 4), z + tl.load(tab_ptr + 5), z + tl.load(tab_ptr + 6),
            z + tl.load(tab_ptr + 7)]
    if BITS == 4:
        if f == 0:
            v = tl.inline_asm_elementwise(PRMT4_0, PRMT_CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
        else:
            v = tl.inline_asm_elementwise(PRMT4_1, PRMT_CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
    elif BITS == 2:
        if f == 0:
            v = tl.inline_asm_elementwise(PRMT2_0, PRMT_CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
        elif f == 1:
            v = tl.inline_asm_elementwise(PRMT2_1, PRMT_CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
        elif f == 2:
            v = tl.inline_asm_elementwise(PRMT2_2, PRMT_CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
        else:
            v = tl.inline_asm_elementwise(PRMT2_3, PRMT_CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
    else:
        v = tl.inline_asm_elementwise(PRMT3, PRMT_CONSTRAINTS, args, dtype=DT, is_pure=True, pack=4)
    return v


@triton.jit
def _load_codes(lo_ptr, hi_ptr, rows, row_mask, g, offs_j, stride_lo, stride_hi, ROWS_FIRST: tl.constexpr,
                BITS: tl.constexpr, T: tl.constexpr, MASKED: tl.constexpr = True, RAW: tl.constexpr = False):
    """Bytes of group ``g`` for ``rows``: ``(len(rows), T)`` if ROWS_FIRST else ``(T, len(rows))``, int32."""
    if ROWS_FIRST:
        lo_p = lo_ptr + rows[:, None] * stride_lo + g * T + offs_j[None, :]
        rm = row_mask[:, None]
    else:
        lo_p = lo_ptr + rows[None, :] * stride_lo + g * T + offs_j[:, None]
        rm = row_mask[None, :]
    if MASKED:
        lo = tl.load(lo_p, mask=rm, other=0)
    else:
        lo = tl.load(lo_p)
    if not RAW:
        lo = lo.to(tl.int32)
    if BITS == 3:
        jj = offs_j % (T // 2)
        sh = 4 * (offs_j // (T // 2))
        if ROWS_FIRST:
            hi = tl.load(hi_ptr + rows[:, None] * stride_hi + g * (T // 2) + jj[None, :], mask=rm, other=0)
            hi = hi.to(tl.int32) >> sh[None, :]
        else:
            hi = tl.load(hi_ptr + rows[None, :] * stride_hi + g * (T // 2) + jj[:, None], mask=rm, other=0)
            hi = hi.to(tl.int32) >> sh[:, None]
    else:
        hi = lo
    return lo, hi


@triton.jit
def _code_values(lo, hi, f, grid_ptr, tab_ptr, dt_ptr, BITS: tl.constexpr, PRMT: tl.constexpr):
    """Grid values of field ``f`` (a run-time index) of a code tile: by byte permutes in ``dt_ptr``'s 16-bit dtype
    when ``PRMT``, else by a gather from the grid (in its dtype)."""
    if PRMT:
        if BITS == 3:
            q = _lut_prmt(_field(lo, hi, f, BITS).to(tl.uint8), tab_ptr, dt_ptr, 0, BITS)
        else:
            q = _lut_prmt_rt(lo, tab_ptr, dt_ptr, f * BITS, BITS)
    else:
        q = _lut(grid_ptr, _field(lo, hi, f, BITS))
    return q


@triton.jit
def _grouped_tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """``(pid_m, pid_n, num_n)`` of program ``pid`` in grouped order: ``GROUP_M`` row-blocks share each weight
    column-block while it is in L2."""
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    gsize = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % gsize, (pid % width) // gsize, num_n


@triton.jit
def _split_range(pid_k, n, split_k):
    """``[k0, k1)``: split ``pid_k``'s share of ``n`` K-slices."""
    per = tl.cdiv(n, split_k)
    k0 = pid_k * per
    return k0, tl.minimum(k0 + per, n)


@triton.jit
def _splitk_epilogue(acc, offs_m, offs_n, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, lock_ptr, tile_id, pid_k,
                     split_k, HAS_BIAS: tl.constexpr):
    """Write ``acc (BM, BN)`` fp32: directly if one split, else through the partials and the last split."""
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if split_k > 1:
        ws = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws + pid_k * M * N, acc, mask=mask)
        count = tl.atomic_add(lock_ptr + tile_id, 1)  # acq_rel: our partial is visible before the count
        if count == split_k - 1:
            acc = tl.zeros_like(acc)
            for s in range(0, split_k):
                acc += tl.load(ws + s * M * N, mask=mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(lock_ptr + tile_id, 0)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _xa_kernel(x_ptr, A_ptr, xa_ptr, K, r, stride_ar, R: tl.constexpr, BK: tl.constexpr):
    """``xaᵀ (K_pad, R) = (A ⊙ x)ᵀ``, zero beyond ``r`` and ``K``: the gemv's second operand, made once per call
    instead of once per N-block."""
    k = tl.program_id(0) * BK + tl.arange(0, BK)
    j = tl.arange(0, R)
    km = k < K
    a = tl.load(A_ptr + j[None, :] * stride_ar + k[:, None], mask=(j[None, :] < r) & km[:, None], other=0.0)
    xk = tl.load(x_ptr + k, mask=km, other=0.0)
    xa = a.to(tl.float32) * xk.to(tl.float32)[:, None]
    tl.store(xa_ptr + k[:, None] * R + j[None, :], xa.to(xa_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["r", "n_groups", "split_k"])
def _gemv_kernel(xa_ptr, lo_ptr, hi_ptr, grid_ptr, tab_ptr, B_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
                 N, r, n_groups, split_k, stride_lo, stride_hi, stride_bn,
                 HAS_BIAS: tl.constexpr, BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr,
                 BN: tl.constexpr, Q_AS_B: tl.constexpr, EVEN_N: tl.constexpr, PRMT: tl.constexpr,
                 ONES: tl.constexpr, DOT_FP32: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    cdt = xa_ptr.dtype.element_ty
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_mask = offs_n < N
    offs_j = tl.arange(0, T)
    offs_r = tl.arange(0, R)
    r_mask = offs_r < r
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
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, not Q_AS_B, BITS, T,
                             not EVEN_N, PRMT and BITS != 3)
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
                if DOT_FP32:
                    z = tl.dot(xa, q, z, input_precision="ieee")
                else:
                    z = tl.dot(xa, q, z)
            else:
                xa = tl.load(xa_ptr + k[:, None] * R + offs_r[None, :])  # (T, R)
                if DOT_FP32:
                    z = tl.dot(q, xa, z, input_precision="ieee")
                else:
                    z = tl.dot(q, xa, z)
    if Q_AS_B:
        bt = tl.load(B_ptr + offs_n[None, :] * stride_bn + offs_r[:, None], mask=n_mask[None, :] & r_mask[:, None],
                     other=0.0).to(tl.float32)
        y = tl.sum(z * bt, axis=0)
    else:
        b = tl.load(B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :],
                    other=0.0).to(tl.float32)
        y = tl.sum(z * b, axis=1)
    offs_m = tl.zeros((1,), dtype=tl.int32)
    _splitk_epilogue(y[None, :], offs_m, offs_n, 1, N, y_ptr, 0, bias_ptr, ws_ptr, lock_ptr, pid_n, pid_k,
                     split_k, HAS_BIAS)


@triton.jit(do_not_specialize=["M", "r", "n_groups", "split_k"])
def _gemm_kernel(x_ptr, lo_ptr, hi_ptr, grid_ptr, tab_ptr, B_ptr, A_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
                 M, N, K, r, n_groups, split_k, stride_xm, stride_ym, stride_lo, stride_hi, stride_bn, stride_ar,
                 HAS_BIAS: tl.constexpr, BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr, PRMT: tl.constexpr,
                 DOT_FP32: tl.constexpr):
    pid_m, pid_n, num_n = _grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    pid_k = tl.program_id(1)
    cdt = tl.float32 if DOT_FP32 else x_ptr.dtype.element_ty
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    m_mask = offs_m < M
    n_mask = offs_n < N
    offs_j = tl.arange(0, T)
    offs_r = tl.arange(0, R)
    r_mask = offs_r < r
    # Bᵀ tile (R, BN), kept for the whole K loop
    bt = tl.load(B_ptr + offs_n[None, :] * stride_bn + offs_r[:, None], mask=r_mask[:, None] & n_mask[None, :],
                 other=0.0).to(cdt)
    # one T-wide slice of K per iteration (field f of group g): a small pipeline stage, F times the byte
    # loads (they hit L1/L2); unrolling the F fields of a group multiplied shared memory by F.
    kt0, kt1 = _split_range(pid_k, n_groups * F, split_k)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kt in range(kt0, kt1):
        g = kt // F
        f = kt % F
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, False, BITS, T,
                             True, PRMT and BITS != 3)
        k = g * (F * T) + f * T + offs_j
        k_mask = k < K
        at = tl.load(A_ptr + offs_r[None, :] * stride_ar + k[:, None], mask=r_mask[None, :] & k_mask[:, None],
                     other=0.0).to(cdt)  # Aᵀ tile (T, R)
        if DOT_FP32:
            s = tl.dot(at, bt, input_precision="ieee")  # Sᵀ tile (T, BN), fp32
        else:
            s = tl.dot(at, bt)
        q = _code_values(lo, hi, f, grid_ptr, tab_ptr, x_ptr, BITS, PRMT)  # (T, BN)
        w = (q.to(tl.float32) * s).to(cdt)
        xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                     other=0.0).to(cdt)
        if DOT_FP32:
            acc = tl.dot(xt, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(xt, w, acc)
    _splitk_epilogue(acc, offs_m, offs_n, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, lock_ptr,
                     pid_m * num_n + pid_n, pid_k, split_k, HAS_BIAS)


@triton.jit(do_not_specialize=["M", "r", "n_groups", "split_k"])
def _gemm_t_kernel(x_ptr, lo_ptr, hi_ptr, grid_ptr, tab_ptr, B_ptr, A_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
                   M, N, K, r, n_groups, split_k, stride_xm, stride_ym, stride_lo, stride_hi, stride_bn, stride_ar,
                   HAS_BIAS: tl.constexpr, BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr, PRMT: tl.constexpr,
                   MUL16: tl.constexpr, S16: tl.constexpr, DOT_FP32: tl.constexpr):
    """The weight-side form transposed ("swap AB"): ``yᵀ (BN, BM) += W (BN, T) · xᵀ (T, BM)``. The weight rows are
    the tensor cores' M side, so ``S = B_tile · A_tile`` comes out in the accumulator layout, ``W = grid[Q] ⊙ S``
    is formed there and fed to the next MMA from registers (as flash attention feeds P): no shared-memory round
    trip for ``W``, and a small token count M sits on the MMA's narrow N side (8–256) instead of padding 64 rows."""
    pid_m, pid_n, num_n = _grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    pid_k = tl.program_id(1)
    cdt = tl.float32 if DOT_FP32 else x_ptr.dtype.element_ty
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    m_mask = offs_m < M
    n_mask = offs_n < N
    offs_j = tl.arange(0, T)
    offs_r = tl.arange(0, R)
    r_mask = offs_r < r
    b = tl.load(B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :],
                other=0.0).to(cdt)  # (BN, R), kept for the whole K loop
    kt0, kt1 = _split_range(pid_k, n_groups * F, split_k)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    for kt in range(kt0, kt1):
        g = kt // F
        f = kt % F
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T,
                             True, PRMT and BITS != 3)
        # the code values first: the previous slice's MMA is still running on the tensor cores meanwhile
        q = _code_values(lo, hi, f, grid_ptr, tab_ptr, x_ptr, BITS, PRMT)  # (BN, T)
        k = g * (F * T) + f * T + offs_j
        k_mask = k < K
        a = tl.load(A_ptr + offs_r[:, None] * stride_ar + k[None, :], mask=r_mask[:, None] & k_mask[None, :],
                    other=0.0).to(cdt)  # A tile (R, T)
        if DOT_FP32:
            s = tl.dot(b, a, input_precision="ieee")  # S tile (BN, T), fp32
        elif S16:  # fp16 accumulation of the rank-R sum (fp16 activations only): no convert before the multiply
            s = tl.dot(b, a, out_dtype=tl.float16)
        else:
            s = tl.dot(b, a)
        if MUL16:  # one packed half multiply per two weights instead of two converts and a float multiply
            w = q.to(cdt) * s.to(cdt)
        else:
            w = (q.to(tl.float32) * s).to(cdt)
        xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + k[:, None], mask=m_mask[None, :] & k_mask[:, None],
                     other=0.0).to(cdt)  # xᵀ (T, BM)
        if DOT_FP32:
            acc = tl.dot(w, xt, acc, input_precision="ieee")
        else:
            acc = tl.dot(w, xt, acc)
    _splitk_epilogue(tl.trans(acc), offs_m, offs_n, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, lock_ptr,
                     pid_m * num_n + pid_n, pid_k, split_k, HAS_BIAS)


@triton.jit(do_not_specialize=["M", "r"])
def _dx_kernel(dy_ptr, lo_ptr, hi_ptr, grid_ptr, B_ptr, A_ptr, dx_ptr, M, N, K, r,
               stride_dym, stride_dxm, stride_lo, stride_hi, stride_bn, stride_ar,
               BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, DOT_FP32: tl.constexpr):
    """``dx[:, kt] = dy · W_hat[:, kt]`` for one ``T``-wide slice ``kt`` of K (field ``f`` of group ``g``)."""
    pid_m = tl.program_id(0)
    kt = tl.program_id(1)
    g = kt // F
    f = kt % F
    cdt = tl.float32 if DOT_FP32 else dy_ptr.dtype.element_ty
    offs_m = pid_m * BM + tl.arange(0, BM)
    m_mask = offs_m < M
    offs_j = tl.arange(0, T)
    offs_r = tl.arange(0, R)
    r_mask = offs_r < r
    k = g * (F * T) + f * T + offs_j
    k_mask = k < K
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
        if DOT_FP32:
            s = tl.dot(b, a, input_precision="ieee")
            acc = tl.dot(dyt, (q.to(tl.float32) * s).to(cdt), acc, input_precision="ieee")
        else:
            s = tl.dot(b, a)
            acc = tl.dot(dyt, (q.to(tl.float32) * s).to(cdt), acc)
    tl.store(dx_ptr + offs_m[:, None] * stride_dxm + k[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=m_mask[:, None] & k_mask[None, :])


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
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_mask = offs_n < N
    offs_j = tl.arange(0, T)
    offs_r = tl.arange(0, R)
    r_mask = offs_r < r
    b = tl.load(B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :],
                other=0.0).to(tl.float32)  # (BN, R)
    bt = tl.trans(b)
    dB = tl.zeros((BN, R), dtype=tl.float32)
    kt0 = pid_k * slices_per
    kt1 = tl.minimum(kt0 + slices_per, n_slices)
    for kt in range(kt0, kt1):
        g = kt // F
        f = kt % F
        k = g * (F * T) + f * T + offs_j
        k_mask = k < K
        gacc = tl.zeros((BN, T), dtype=tl.float32)
        for m0 in range(0, M, BM):
            offs_m = m0 + tl.arange(0, BM)
            m_mask = offs_m < M
            dyt = tl.load(dy_ptr + offs_m[None, :] * stride_dym + offs_n[:, None],
                          mask=m_mask[None, :] & n_mask[:, None], other=0.0).to(cdt)  # (BN, BM)
            xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                         other=0.0).to(cdt)  # (BM, T)
            if DOT_FP32:
                gacc = tl.dot(dyt, xt, gacc, input_precision="ieee")
            else:
                gacc = tl.dot(dyt, xt, gacc)
        lo, hi = _load_codes(lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T)
        ds = gacc * _lut(grid_ptr, _field(lo, hi, f, BITS)).to(tl.float32)  # (BN, T) fp32: tf32 dots keep fp32 range
        at = tl.load(A_ptr + offs_r[None, :] * stride_ar + k[:, None], mask=r_mask[None, :] & k_mask[:, None],
                     other=0.0).to(tl.float32)  # (T, R)
        if DOT_FP32:
            dB = tl.dot(ds, at, dB, input_precision="ieee")
            dA = tl.dot(bt, ds, input_precision="ieee")
        else:
            dB = tl.dot(ds, at, dB)
            dA = tl.dot(bt, ds)
        tl.store(dA_ws_ptr + pid_n * R * K + offs_r[:, None] * K + k[None, :], dA,
                 mask=r_mask[:, None] & k_mask[None, :])
    tl.store(dB_ws_ptr + pid_k * N * R + offs_n[:, None] * R + offs_r[None, :], dB, mask=n_mask[:, None])


# ----------------------------------------------------------------------------------------------- launchers

_SCRATCH: dict = {}
_LOCKS = 1 << 16


def _scratch(device: torch.device, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split-K partials (fp32, grown on demand) and tile counters (int32, zero between launches)."""
    key = (device.type, device.index)
    ws, locks = _SCRATCH.get(key, (None, None))
    if ws is None or ws.numel() < numel:
        ws = torch.empty(max(numel, 1 << 20), dtype=torch.float32, device=device)
        if locks is None:
            locks = torch.zeros(_LOCKS, dtype=torch.int32, device=device)
        _SCRATCH[key] = (ws, locks)
    return ws, locks


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


def lords_matmul(x: torch.Tensor, codes: KernelCodes, grid: torch.Tensor, B: torch.Tensor, A: torch.Tensor,
                 bias: torch.Tensor | None, config: dict | None = None) -> torch.Tensor:
    """``y (..., N) = x @ W_hat.T + bias`` in ``x.dtype``; ``x (..., K)`` fp16/bf16, ``B (N, r)``, ``A (r, K)``."""
    K = codes.K
    N, r = B.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return y.reshape(*lead, N)
    bits = codes.bits
    R = rank_pad(r)
    cfg = dict(config or pick_config(M, N, K, bits, r))
    n_groups = codes.k_pad // group_size(bits)
    split = max(1, min(int(cfg.get("split_k", 1)), n_groups))
    F = 8 // (2 if bits == 3 else bits)
    hi = codes.hi if bits == 3 else codes.lo
    A = A if A.stride(-1) == 1 else A.contiguous()
    B = B if B.stride(-1) == 1 else B.contiguous()
    has_bias = bias is not None
    common = dict(HAS_BIAS=has_bias, BITS=bits, T=T, F=F, R=R, DOT_FP32=INTERPRET,
                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if cfg["kernel"] == "gemv" and M == 1:
        tiles = triton.cdiv(N, cfg["BN"])
        ws, locks = _scratch(x.device, split * N if split > 1 else 1)
        assert tiles <= _LOCKS
        # the gathered code values feed the tensor cores directly: fetch them in the operand dtype
        g = grid if INTERPRET else grid_as(grid, x.dtype)
        xa = torch.empty(codes.k_pad, R, dtype=torch.float32 if INTERPRET else x.dtype, device=x.device)
        _xa_kernel[(codes.k_pad // 64,)](x2, A, xa, K, r, A.stride(0), R=R, BK=64, num_warps=4)
        prmt = bool(cfg.get("PRMT", True)) and not INTERPRET
        tab = prmt_table(grid, x.dtype) if prmt else locks
        _gemv_kernel[(tiles, split)](
            xa, codes.lo, hi, g, tab, B, bias if has_bias else y, y, ws, locks,
            N, r, n_groups, split, codes.lo.stride(0), hi.stride(0), B.stride(0),
            BN=cfg["BN"], Q_AS_B=bool(cfg.get("Q_AS_B", True)), EVEN_N=N % cfg["BN"] == 0, PRMT=prmt,
            ONES=bool(cfg.get("ONES", False)) and not INTERPRET and x.dtype == torch.float16, **common)
    else:
        bm, bn = cfg.get("BM", 64), cfg["BN"]
        tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
        ws, locks = _scratch(x.device, split * M * N if split > 1 else 1)
        assert tiles <= _LOCKS
        prmt = bool(cfg.get("PRMT", bits != 3)) and not INTERPRET
        tab = prmt_table(grid, x.dtype) if prmt else locks
        args = (x2, codes.lo, hi, grid, tab, B, A, bias if has_bias else y, y, ws, locks,
                M, N, K, r, n_groups, split, x2.stride(0), y.stride(0), codes.lo.stride(0), hi.stride(0),
                B.stride(0), A.stride(0))
        if cfg["kernel"] == "gemm_t":
            _gemm_t_kernel[(tiles, split)](*args, BM=bm, BN=bn, GROUP_M=cfg.get("GROUP_M", 8), PRMT=prmt,
                                           MUL16=bool(cfg.get("MUL16", False)),
                                           S16=bool(cfg.get("S16", False)) and x.dtype == torch.float16, **common)
        else:
            _gemm_kernel[(tiles, split)](*args, BM=bm, BN=bn, GROUP_M=cfg.get("GROUP_M", 8), PRMT=prmt, **common)
    return y.reshape(*lead, N)


def lords_matmul_backward(dy: torch.Tensor, x: torch.Tensor, codes: KernelCodes, grid: torch.Tensor,
                          B: torch.Tensor, A: torch.Tensor, need_dx: bool = True, need_dBA: bool = True):
    """``(dx (..., K) in x.dtype | None, dB (N, r) fp32 | None, dA (r, K) fp32 | None)``; see reference."""
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
    if need_dx:
        dx = torch.empty(M, K, dtype=dy.dtype, device=dy.device)
        bm = 128 if big else max(16, min(64, triton.next_power_of_2(M)))
        _dx_kernel[(triton.cdiv(M, bm), n_slices)](
            dy2, codes.lo, hi, grid, B, A, dx, M, N, K, r, dy2.stride(0), dx.stride(0), codes.lo.stride(0),
            hi.stride(0), B.stride(0), A.stride(0), BITS=bits, T=T, F=F, R=R, BM=bm, BN=64,
            DOT_FP32=INTERPRET, num_warps=8 if big else 4, num_stages=3)
        dx = dx.reshape(*x.shape[:-1], K)
    if need_dBA:
        bn = 128
        n_blocks = triton.cdiv(N, bn)
        split = max(1, min(n_slices, triton.cdiv(264, n_blocks)))
        per = triton.cdiv(n_slices, split)
        split = triton.cdiv(n_slices, per)
        dB_ws = torch.empty(split, N, R, dtype=torch.float32, device=dy.device)
        dA_ws = torch.empty(n_blocks, R, K, dtype=torch.float32, device=dy.device)
        _ds_kernel[(n_blocks, split)](
            dy2, x2, codes.lo, hi, grid, B, A, dB_ws, dA_ws, M, N, K, r, n_slices, per, dy2.stride(0),
            x2.stride(0), codes.lo.stride(0), hi.stride(0), B.stride(0), A.stride(0),
            BITS=bits, T=T, F=F, R=R, BN=bn, BM=64, DOT_FP32=INTERPRET, num_warps=8, num_stages=3)
        dB = dB_ws.sum(0)[:, :r]
        dA = dA_ws.sum(0)[:r]
    return dx, dB, dA
