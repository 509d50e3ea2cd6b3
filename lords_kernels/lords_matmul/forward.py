"""The forward kernels of ``y = x · (grid[Q] ⊙ (B·A))ᵀ + bias`` on :mod:`.layout` codes, and their launcher.

- ``_gemv_kernel`` (M = 1, decode): the activation-side identity ``y = Σ_j B[:, j] ⊙ (grid[Q] · (A[j] ⊙ x))``.
  ``_xa_kernel`` forms ``(A ⊙ x)ᵀ (K_pad, R)`` once; the tensor cores multiply raw code values ``(BN, T)`` by
  its ``(T, R)`` tiles into ``Z (BN, R)``; one ``Σ_j B ⊙ Z`` at the end. No per-weight multiply by a scale.
- ``_gemm_t_kernel`` (M ≥ 2): the weight-side form with the weight rows on the MMA's wide side ("swap AB"); see its
  docstring. ``Q ⊙ (BA)`` never reaches memory.

Split-K: each split writes an fp32 partial; the last split of a tile to arrive (an atomic counter, reset by that
split) sums them, adds the bias and writes ``y``: one launch, no memset. The math is :mod:`.reference`'s.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from .code_tables import grid_as, prmt_table  # noqa: F401 (re-exported: dispatch and the tests read them here)
from .dequant import _dequant_kernel, dequant_launch, scratch
from .launch import Launch, io_key
from .layout import T, KernelCodes, group_size
from .primitives import (INTERPRET, _code_values, _dot, _field, _grouped_tile, _load_codes, _lut, _lut_prmt, _mm,
                         _row_tile, _split_range, _splitk_epilogue)
from .tuning import TileConfig, default_config, pick_config, rank_pad


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
def _xa_kernel(x_ptr, A_ptr, xa_ptr, K, r, stride_ar, R: tl.constexpr, BK: tl.constexpr,
               SCALE_RND: tl.constexpr = 0):
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
def _gemv_kernel(xa_ptr, lo_ptr, hi_ptr, grid_ptr, tab_ptr, B_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
                 N, r, n_groups, split_k, stride_lo, stride_hi, stride_bn,
                 HAS_BIAS: tl.constexpr, BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr,
                 BN: tl.constexpr, Q_AS_B: tl.constexpr, EVEN_N: tl.constexpr, PRMT: tl.constexpr,
                 ONES: tl.constexpr, DOT_FP32: tl.constexpr, SCALE_RND: tl.constexpr = 0):
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
                z = _dot(xa, q, z, DOT_FP32)
            else:
                xa = tl.load(xa_ptr + k[:, None] * R + offs_r[None, :])  # (T, R)
                z = _dot(q, xa, z, DOT_FP32)
    if Q_AS_B:
        bt = _round_scale(tl.load(B_ptr + offs_n[None, :] * stride_bn + offs_r[:, None],
                                  mask=n_mask[None, :] & r_mask[:, None], other=0.0), SCALE_RND)
        y = tl.sum(z * bt, axis=0)
    else:
        b = _round_scale(tl.load(B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :],
                                 mask=n_mask[:, None] & r_mask[None, :], other=0.0), SCALE_RND)
        y = tl.sum(z * b, axis=1)
    offs_m = tl.zeros((1,), dtype=tl.int32)
    _splitk_epilogue(y[None, :], offs_m, offs_n, 1, N, y_ptr, 0, bias_ptr, ws_ptr, lock_ptr, pid_n, pid_k,
                     split_k, HAS_BIAS)


@triton.jit(do_not_specialize=["M", "r", "n_groups", "split_k"])
def _gemm_t_kernel(x_ptr, lo_ptr, hi_ptr, grid_ptr, tab_ptr, B_ptr, A_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
                   M, N, K, r, n_groups, split_k, stride_xm, stride_ym, stride_lo, stride_hi, stride_bn, stride_ar,
                   HAS_BIAS: tl.constexpr, BITS: tl.constexpr, T: tl.constexpr, F: tl.constexpr, R: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr, PRMT: tl.constexpr,
                   S16: tl.constexpr, DOT_FP32: tl.constexpr):
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
        if S16 and not DOT_FP32:  # fp16 accumulation of the rank-R sum (fp16 activations): no convert before the multiply
            s = tl.dot(b, a, out_dtype=tl.float16)
        else:
            s = _mm(b, a, DOT_FP32)  # S tile (BN, T), fp32
        w = q.to(cdt) * s.to(cdt)  # one packed half multiply per two weights, not two converts and a float multiply
        xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + k[:, None], mask=m_mask[None, :] & k_mask[:, None],
                     other=0.0).to(cdt)  # xᵀ (T, BM)
        acc = _dot(w, xt, acc, DOT_FP32)
    _splitk_epilogue(tl.trans(acc), offs_m, offs_n, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, lock_ptr,
                     pid_m * num_n + pid_n, pid_k, split_k, HAS_BIAS)


# ----------------------------------------------------------------------------------------------- launcher

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


def _xa_buffer(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """The gemv's ``(A ⊙ x)ᵀ`` buffer, one per device and dtype, shared by every layer (grown on demand)."""
    key = ("xa", device.type, device.index, dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf


Runner = Callable[[torch.Tensor, torch.Tensor], None]
"""``run(x2 (M, K) row-contiguous, y (M, N))``: one layer's launches for a tile choice, everything else bound.
``x2``/``y`` are in the dtype the runner was made for, or fp32 where the runner has ``fp32_io`` (the gemv: its
``_xa`` pass reads x in fp32 and its epilogue stores in y's dtype, so an fp32 model pays no cast launches).
``run.launches``: its kernels as :class:`~.launch.Launch` es (the binaries they launch directly after a first call)."""


def scale_rounding(dtype: torch.dtype) -> int:
    """``SCALE_RND`` of the gemv kernels for a runner computing in ``dtype`` (see :func:`_round_scale`)."""
    return {torch.float16: 1, torch.bfloat16: 2}.get(dtype, 0)


def make_runner(codes: KernelCodes, grid: torch.Tensor, B: torch.Tensor, A: torch.Tensor, bias: torch.Tensor | None,
                M: int, dtype: torch.dtype, cfg: TileConfig) -> Runner:
    """Bind every launch argument that does not depend on the call's ``x``/``y`` (tile constants, strides, LUT
    tables, code tensors) for token counts that share ``M``'s tile choice; what a layer's plan caches.
    ``bias (N,)`` in ``dtype``; ``B (N, r)``, ``A (r, K)`` in ``dtype`` or any float dtype: every kernel rounds the
    scales it loads to ``dtype`` (on the GPU; the interpreter's fp32 operands skip that in gemm_t and dequant), so
    fp32 scales give the same result as scales cast before the call, with no cast launch."""
    K, bits = codes.K, codes.bits
    N, r = B.shape
    R = rank_pad(r)
    device = B.device
    n_groups = codes.k_pad // group_size(bits)
    split = max(1, min(cfg.split_k, n_groups))
    F = 8 // (2 if bits == 3 else bits)
    lo = codes.lo
    hi = codes.hi if bits == 3 else codes.lo
    A = A if A.stride(-1) == 1 else A.contiguous()
    B = B if B.stride(-1) == 1 else B.contiguous()
    has_bias = bias is not None
    common = dict(HAS_BIAS=has_bias, BITS=bits, T=T, F=F, R=R, DOT_FP32=INTERPRET,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.kernel == "gemv" and M != 1:
        cfg = default_config(M, N, K, bits, r)  # a gemv tile asked for M > 1: the heuristic's gemm_t tile
    fp16 = dtype == torch.float16

    if cfg.kernel == "dequant":  # prefill: W_hat once into the shared buffer, then cuBLAS
        dq_grid, n_g, meta = dequant_launch(codes, N, r, cfg)
        dq_grid = (*dq_grid, 1)  # a compiled binary takes all three grid dimensions
        dq = Launch(_dequant_kernel, **meta)
        tab = prmt_table(grid, dtype) if meta["PRMT"] else grid
        view = [None, None]  # (buffer, its (N, K) view): re-made only when the shared buffer is replaced

        def run(x2, y):
            buf = scratch(device, dtype, N * K)
            if view[0] is not buf:
                view[:] = [buf, buf[: N * K].view(N, K)]
            w = view[1]
            dq(dq_grid, 0, lo, hi, grid, tab, B, A, w, N, K, r, n_g, lo.stride(0), hi.stride(0), B.stride(0),
               A.stride(0), K)  # every argument but the scratch bound: one binary
            if has_bias:
                torch.addmm(bias, x2, w.t(), out=y)
            else:
                torch.mm(x2, w.t(), out=y)
        run.launches = (dq,)
        return run

    prmt = (cfg.PRMT if cfg.PRMT is not None else (bits != 3 or cfg.kernel != "gemm_t")) and not INTERPRET
    tab = prmt_table(grid, dtype) if prmt else None
    # the gathered code values feed the tensor cores directly: fetch them in the operand dtype
    g_op = grid if INTERPRET else grid_as(grid, dtype)
    tiles_n = triton.cdiv(N, cfg.BN)
    assert tiles_n <= _LOCKS

    if cfg.kernel == "gemv":  # M = 1: (A ⊙ x)ᵀ by _xa_kernel, then the gemv
        xdt = torch.float32 if INTERPRET else dtype
        xa_grid, gv_grid = (codes.k_pad // 64, 1, 1), (tiles_n, split, 1)
        rnd = scale_rounding(dtype)
        xa_kern = Launch(_xa_kernel, R=R, BK=64, SCALE_RND=rnd, num_warps=4)
        kern = Launch(_gemv_kernel, BN=cfg.BN, Q_AS_B=cfg.Q_AS_B, EVEN_N=N % cfg.BN == 0, PRMT=prmt,
                      ONES=cfg.ONES and not INTERPRET and fp16, SCALE_RND=rnd, **common)

        def run(x2, y):  # x2 and y may be fp32 here (run.fp32_io): _xa reads x in fp32, the epilogue stores y's dtype
            key = io_key(x2, y)
            ws, locks = _scratch(device, split * N if split > 1 else 1)
            xa = _xa_buffer(device, xdt, codes.k_pad * R)
            xa_kern(xa_grid, key, x2, A, xa, K, r, A.stride(0))
            kern(gv_grid, key, xa, lo, hi, g_op, locks if tab is None else tab, B, bias if has_bias else y, y, ws,
                 locks, N, r, n_groups, split, lo.stride(0), hi.stride(0), B.stride(0))
        run.fp32_io = True
        run.launches = (xa_kern, kern)
        return run

    # gemm_t
    bm, bn = cfg.BM, cfg.BN
    gm = Launch(_gemm_t_kernel, BM=bm, BN=bn, GROUP_M=cfg.GROUP_M, PRMT=prmt, S16=cfg.S16 and fp16, **common)

    def run(x2, y):
        m = x2.shape[0]
        tiles = triton.cdiv(m, bm) * tiles_n
        assert tiles <= _LOCKS
        ws, locks = _scratch(device, split * m * N if split > 1 else 1)
        gm((tiles, split, 1), io_key(x2, y), x2, lo, hi, grid, locks if tab is None else tab, B, A,
           bias if has_bias else y, y, ws, locks, m, N, K, r, n_groups, split, x2.stride(0), y.stride(0),
           lo.stride(0), hi.stride(0), B.stride(0), A.stride(0))
    run.launches = (gm,)
    return run


def lords_matmul(x: torch.Tensor, codes: KernelCodes, grid: torch.Tensor, B: torch.Tensor, A: torch.Tensor,
                 bias: torch.Tensor | None, config: TileConfig | dict | None = None) -> torch.Tensor:
    """``y (..., N) = x @ W_hat.T + bias`` in ``x.dtype``; ``x (..., K)`` fp16/bf16, ``bias (N,)`` in ``x.dtype``,
    ``B (N, r)``, ``A (r, K)`` in ``x.dtype`` or fp32 (rounded to ``x.dtype`` in the kernels: :func:`make_runner`). ``config``: a tile choice, else the table's or the heuristic's."""
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
    cfg = TileConfig.of(config) if config is not None else pick_config(M, N, K, codes.bits, r)
    make_runner(codes, grid, B, A, bias, M, x.dtype, cfg)(x2, y)
    return y.reshape(*lead, N)
