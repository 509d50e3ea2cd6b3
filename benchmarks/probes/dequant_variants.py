"""Where the dequantize pass's time goes: the library's `_dequant_kernel` against variants of it timed alone (same
store; a block-pointer store; no store, a checksum; no B·A product; one MMA per code group), do_bench with L2 flushed,
median of 3 alternating rounds (docs/kernels.md). The variants were measured and rejected: they live here,
not in the library.

    PYTHONPATH=. python benchmarks/probes/dequant_variants.py      # one CUDA GPU
"""

import statistics

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

import lords_kernels
from benchmarks.kernels.peers import lords_layers, lords_rank
from lords_kernels.lords_matmul.dequant import dequant_launch, dequantize
from lords_kernels.lords_matmul.forward import prmt_table
from lords_kernels.lords_matmul.primitives import _code_values, _load_codes, _mm, _row_tile
from lords_kernels.lords_matmul.tuning import dequant_config


@triton.jit(do_not_specialize=["r"])
def _dq_var(
    lo_ptr,
    hi_ptr,
    grid_ptr,
    tab_ptr,
    B_ptr,
    A_ptr,
    w_ptr,
    N,
    K,
    r,
    n_groups,
    stride_lo,
    stride_hi,
    stride_bn,
    stride_ar,
    stride_wn,
    BITS: tl.constexpr,
    T: tl.constexpr,
    F: tl.constexpr,
    R: tl.constexpr,
    BN: tl.constexpr,
    GROUPS: tl.constexpr,
    EVEN: tl.constexpr,
    PRMT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    MODE: tl.constexpr,
):
    pid_n = tl.program_id(0)
    g0 = tl.program_id(1) * GROUPS
    cdt = tl.float32 if DOT_FP32 else w_ptr.dtype.element_ty
    offs_n, n_mask, offs_j, offs_r, r_mask = _row_tile(pid_n, N, r, BN, T, R)
    b = tl.load(B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=r_mask[None, :], other=0.0).to(cdt)
    acc = tl.zeros((BN, T), dtype=tl.float32)
    for g in range(g0, g0 + GROUPS):
        lo, hi = _load_codes(
            lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T, False, PRMT
        )
        for f in tl.static_range(F):
            q = _code_values(lo, hi, f, grid_ptr, tab_ptr, w_ptr, BITS, PRMT)
            k = g * (F * T) + f * T + offs_j
            a = tl.load(A_ptr + offs_r[:, None] * stride_ar + k[None, :], mask=r_mask[:, None], other=0.0)
            s = _mm(b, a.to(cdt), DOT_FP32)
            if MODE == 3:  # no dot: the code values alone (store cost + code path)
                w = q.to(w_ptr.dtype.element_ty)
            else:
                w = (q.to(tl.float32) * s).to(w_ptr.dtype.element_ty)
            if MODE == 0 or MODE == 3:
                tl.store(w_ptr + offs_n[:, None] * stride_wn + k[None, :], w)
            elif MODE == 1:  # block pointer store
                bp = tl.make_block_ptr(
                    w_ptr, (N, K), (stride_wn, 1), (pid_n * BN, g * (F * T) + f * T), (BN, T), (1, 0)
                )
                tl.store(bp, w)
            else:  # MODE 2: no store, a checksum (the compute alone)
                acc += w.to(tl.float32)
    if MODE == 2:
        tl.store(w_ptr + offs_n[:, None] * stride_wn + offs_j[None, :], acc.to(w_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["r"])
def _dq_group(
    lo_ptr,
    hi_ptr,
    grid_ptr,
    tab_ptr,
    B_ptr,
    A_ptr,
    w_ptr,
    N,
    K,
    r,
    n_groups,
    stride_lo,
    stride_hi,
    stride_bn,
    stride_ar,
    stride_wn,
    BITS: tl.constexpr,
    T: tl.constexpr,
    F: tl.constexpr,
    R: tl.constexpr,
    BN: tl.constexpr,
    GROUPS: tl.constexpr,
    EVEN: tl.constexpr,
    PRMT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """4-bit only (F = 2): one (BN, R) x (R, 2T) MMA per code group, the two fields' code values joined to match."""
    pid_n = tl.program_id(0)
    g0 = tl.program_id(1) * GROUPS
    cdt = tl.float32 if DOT_FP32 else w_ptr.dtype.element_ty
    offs_n, n_mask, offs_j, offs_r, r_mask = _row_tile(pid_n, N, r, BN, T, R)
    offs_c = tl.arange(0, 2 * T)
    b = tl.load(B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=r_mask[None, :], other=0.0).to(cdt)
    for g in range(g0, g0 + GROUPS):
        lo, hi = _load_codes(
            lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T, False, PRMT
        )
        q0 = _code_values(lo, hi, 0, grid_ptr, tab_ptr, w_ptr, BITS, PRMT)
        q1 = _code_values(lo, hi, 1, grid_ptr, tab_ptr, w_ptr, BITS, PRMT)
        q = tl.reshape(tl.permute(tl.join(q0, q1), (0, 2, 1)), (BN, 2 * T))
        k = g * (2 * T) + offs_c
        a = tl.load(A_ptr + offs_r[:, None] * stride_ar + k[None, :], mask=r_mask[:, None], other=0.0)
        s = _mm(b, a.to(cdt), DOT_FP32)
        w = (q.to(tl.float32) * s).to(w_ptr.dtype.element_ty)
        tl.store(w_ptr + offs_n[:, None] * stride_wn + k[None, :], w)


for N, K in [(4096, 4096), (14336, 4096), (4096, 14336)]:
    r = lords_rank(N, K, 64)
    L = lords_layers(torch, N, K, 4, 1, torch.float16, r=r, device="cuda")[0]
    c = lords_kernels.kernel_codes(L)
    B, A = L.B.detach().half().contiguous(), L.A.detach().half().contiguous()
    cfg = dequant_config(N, K, 4, r)
    grid_, n_g, meta = dequant_launch(c, N, r, cfg)
    tab = prmt_table(L.grid, torch.float16)
    w = torch.empty(N, K, dtype=torch.float16, device="cuda")
    ref = dequantize(c, L.grid, B, A, torch.float16, cfg=cfg).clone()

    def var(mode, nw=None, ns=None):
        m = dict(meta, MODE=mode, num_warps=nw or meta["num_warps"], num_stages=ns or meta["num_stages"])
        return lambda: _dq_var[grid_](
            c.lo,
            c.lo,
            L.grid,
            tab,
            B,
            A,
            w,
            N,
            K,
            r,
            n_g,
            c.lo.stride(0),
            c.lo.stride(0),
            B.stride(0),
            A.stride(0),
            w.stride(0),
            **m,
        )

    fns = {
        "library": lambda: dequantize(c, L.grid, B, A, torch.float16, out=w, cfg=cfg),
        "v0 same": var(0),
        "v1 blockptr": var(1),
        "v1 bp 8w": var(1, 8),
        "v2 no store": var(2),
        "v3 no dot": var(3),
    }

    def grp(nw=None, ns=None):
        m = dict(meta, num_warps=nw or meta["num_warps"], num_stages=ns or meta["num_stages"])
        return lambda: _dq_group[grid_](
            c.lo,
            c.lo,
            L.grid,
            tab,
            B,
            A,
            w,
            N,
            K,
            r,
            n_g,
            c.lo.stride(0),
            c.lo.stride(0),
            B.stride(0),
            A.stride(0),
            w.stride(0),
            **m,
        )

    fns.update({"v4 group": grp(), "v4 group 4w": grp(4), "v4 group 4w3s": grp(4, 3), "v4 8w3s": grp(8, 3)})
    if not meta["EVEN"]:
        print("not even", N, K)
        continue
    grp()()
    torch.cuda.synchronize()
    same = ((w.double() - ref.double()).norm() / ref.double().norm()).item()
    samples = {k: [] for k in fns}
    for _ in range(3):
        for k, fn in fns.items():
            samples[k].append(do_bench(fn, warmup=25, rep=100))
    floor = (N * K // 2 + 2 * N * K + 2 * r * (N + K)) / 4.25e12 * 1e6
    print(
        f"{N}x{K} r={r} cfg={cfg.BN},{cfg.GROUPS},{cfg.num_warps}w,{cfg.num_stages}s floor {floor:.1f} us; group variant rel. diff {same:.2e}"
    )
    for k, v in samples.items():
        us = statistics.median(v) * 1e3
        print(f"   {k:12s} {us:7.1f} us  {us / floor:5.2f}x floor", flush=True)
