"""Device functions the LoRDS kernels share: code fields, the code-value LUTs (gather, or ``prmt`` byte permutes as
inline PTX), code loads, tile scheduling, the split-K epilogue, and the one place the interpreter's dot differs.

``DOT_FP32`` (set under ``TRITON_INTERPRET=1``): dots on fp32 operands with IEEE precision, since the interpreter's
bf16 dot is wrong; :func:`_dot` / :func:`_mm` hold that branch for every kernel.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
INTERP_MODE = tl.constexpr(INTERPRET)


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr):
    """``acc + a · b`` on the tensor cores (IEEE fp32 under the interpreter)."""
    if DOT_FP32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _mm(a, b, DOT_FP32: tl.constexpr):
    """``a · b`` with an fp32 result (IEEE fp32 under the interpreter)."""
    if DOT_FP32:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _row_tile(pid_n, N, r, BN: tl.constexpr, T: tl.constexpr, R: tl.constexpr):
    """The index vectors every kernel starts from: its ``BN`` weight rows and their mask, the ``T`` columns of a code
    field, the ``R`` padded ranks and their mask (``r`` real ones)."""
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_r = tl.arange(0, R)
    return offs_n, offs_n < N, tl.arange(0, T), offs_r, offs_r < r


@triton.jit
def _k_slice(kt, offs_j, K, F: tl.constexpr, T: tl.constexpr):
    """Slice ``kt`` of K (``T`` columns): its code group ``g``, its field ``f`` within the group's bytes, its
    columns ``kt·T + j`` (= ``g·F·T + f·T + j``) and their mask."""
    k = kt * T + offs_j
    return kt // F, kt % F, k, k < K


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
            return tl.inline_asm_elementwise(
                "ld.global.nc.f32 $0, [$1];", "=r,l", [grid_ptr + c], dtype=tl.float32, is_pure=True, pack=1
            )
        else:
            return tl.inline_asm_elementwise(
                "ld.global.nc.b16 $0, [$1];",
                "=h,l",
                [grid_ptr + c],
                dtype=grid_ptr.dtype.element_ty,
                is_pure=True,
                pack=1,
            )


def _prmt_asm(bits: int, shift) -> str:
    """PTX mapping 4 packed codes (one per byte of ``$2``) to 4 fp16/bf16 grid values in ``$0, $1`` with byte
    permutes (``prmt``): the 16-entry table is 8 words, low bytes ``L0..L3`` (``$3 $7 $11 $15``) and high bytes
    ``H0..H3`` (``$19 $23 $27 $31``) of the 16-bit values; ``prmt`` looks up 8 entries at a time from a nibble
    selector, the 4th code bit picks between two lookups. About 4 instructions per weight, no memory access
    (the gather it replaces costs ~5 instructions and one load per weight). Checked bit-exact against an emulation
    of ``prmt``/``lop3`` for every width (NOTES.md)."""
    pre = [f"shr.b32 w, $2, {shift};" if shift else "mov.b32 w, $2;"]  # shift: an immediate or "$35"
    if bits == 4:
        body = [
            "and.b32 w, w, 0x0F0F0F0F;",
            "shr.b32 t, w, 4;",
            "or.b32 t, t, w;",
            "prmt.b32 sel, t, t, 0x0020;",
            "and.b32 sel, sel, 0x7777;",
            "shl.b32 m, w, 4;",
            "prmt.b32 m, m, m, 0xBA98;",
            "prmt.b32 a, $3, $7, sel;",
            "prmt.b32 b, $11, $15, sel;",
            "lop3.b32 lo, a, b, m, 0xD8;",
            "prmt.b32 a, $19, $23, sel;",
            "prmt.b32 b, $27, $31, sel;",
            "lop3.b32 hi, a, b, m, 0xD8;",
        ]
    elif bits == 2:
        body = [
            "and.b32 w, w, 0x03030303;",
            "shr.b32 t, w, 4;",
            "or.b32 t, t, w;",
            "prmt.b32 sel, t, t, 0x0020;",
            "prmt.b32 lo, $3, $3, sel;",
            "prmt.b32 hi, $19, $19, sel;",
        ]
    else:  # 3 bits: the bytes already hold codes < 8
        body = [
            "shr.b32 t, w, 4;",
            "or.b32 t, t, w;",
            "prmt.b32 sel, t, t, 0x0020;",
            "prmt.b32 lo, $3, $7, sel;",
            "prmt.b32 hi, $19, $23, sel;",
        ]
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
    args = [
        raw,
        z + tl.load(tab_ptr + 0),
        z + tl.load(tab_ptr + 1),
        z + tl.load(tab_ptr + 2),
        z + tl.load(tab_ptr + 3),
        z + tl.load(tab_ptr + 4),
        z + tl.load(tab_ptr + 5),
        z + tl.load(tab_ptr + 6),
        z + tl.load(tab_ptr + 7),
        z + shift,
    ]
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
    args = [
        raw,
        z + tl.load(tab_ptr + 0),
        z + tl.load(tab_ptr + 1),
        z + tl.load(tab_ptr + 2),
        z + tl.load(tab_ptr + 3),
        z + tl.load(tab_ptr + 4),
        z + tl.load(tab_ptr + 5),
        z + tl.load(tab_ptr + 6),
        z + tl.load(tab_ptr + 7),
    ]
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
def _load_codes(
    lo_ptr,
    hi_ptr,
    rows,
    row_mask,
    g,
    offs_j,
    stride_lo,
    stride_hi,
    ROWS_FIRST: tl.constexpr,
    BITS: tl.constexpr,
    T: tl.constexpr,
    MASKED: tl.constexpr = True,
    RAW: tl.constexpr = False,
):
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
def _splitk_epilogue(
    acc,
    offs_m,
    offs_n,
    M,
    N,
    y_ptr,
    stride_ym,
    bias_ptr,
    ws_ptr,
    lock_ptr,
    tile_id,
    pid_k,
    split_k,
    HAS_BIAS: tl.constexpr,
):
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
