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

from collections.abc import Callable

import torch
import triton

from .code_tables import grid_as, prmt_table  # noqa: F401 (re-exported: dispatch and the tests read them here)
from .dequant import _dequant_kernel, dequant_launch, scratch
from .forward_kernels import _gemm_t_kernel, _gemv_kernel, _round_scale, _xa_kernel  # noqa: F401
from .launch import Launch, io_key
from .layout import KernelCodes, T, group_size
from .primitives import INTERPRET
from .tuning import TileConfig, default_config, pick_config, rank_pad

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


def make_runner(
    codes: KernelCodes,
    grid: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    bias: torch.Tensor | None,
    M: int,
    dtype: torch.dtype,
    cfg: TileConfig,
) -> Runner:
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
    common = dict(
        HAS_BIAS=has_bias,
        BITS=bits,
        T=T,
        F=F,
        R=R,
        DOT_FP32=INTERPRET,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
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
            dq(
                dq_grid,
                0,
                lo,
                hi,
                grid,
                tab,
                B,
                A,
                w,
                N,
                K,
                r,
                n_g,
                lo.stride(0),
                hi.stride(0),
                B.stride(0),
                A.stride(0),
                K,
            )  # every argument but the scratch bound: one binary
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
        kern = Launch(
            _gemv_kernel,
            BN=cfg.BN,
            Q_AS_B=cfg.Q_AS_B,
            EVEN_N=N % cfg.BN == 0,
            PRMT=prmt,
            ONES=cfg.ONES and not INTERPRET and fp16,
            SCALE_RND=rnd,
            **common,
        )

        def run(x2, y):  # x2 and y may be fp32 here (run.fp32_io): _xa reads x in fp32, the epilogue stores y's dtype
            key = io_key(x2, y)
            ws, locks = _scratch(device, split * N if split > 1 else 1)
            xa = _xa_buffer(device, xdt, codes.k_pad * R)
            xa_kern(xa_grid, key, x2, A, xa, K, r, A.stride(0))
            kern(
                gv_grid,
                key,
                xa,
                lo,
                hi,
                g_op,
                locks if tab is None else tab,
                B,
                bias if has_bias else y,
                y,
                ws,
                locks,
                N,
                r,
                n_groups,
                split,
                lo.stride(0),
                hi.stride(0),
                B.stride(0),
            )

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
        gm(
            (tiles, split, 1),
            io_key(x2, y),
            x2,
            lo,
            hi,
            grid,
            locks if tab is None else tab,
            B,
            A,
            bias if has_bias else y,
            y,
            ws,
            locks,
            m,
            N,
            K,
            r,
            n_groups,
            split,
            x2.stride(0),
            y.stride(0),
            lo.stride(0),
            hi.stride(0),
            B.stride(0),
            A.stride(0),
        )

    run.launches = (gm,)
    return run


def lords_matmul(
    x: torch.Tensor,
    codes: KernelCodes,
    grid: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    bias: torch.Tensor | None,
    config: TileConfig | dict | None = None,
) -> torch.Tensor:
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
