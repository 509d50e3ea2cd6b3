"""The kernel benchmark in one call: cuBLAS fp16, the fused kernels, dequantize + cuBLAS and
the optional peers (bitsandbytes NF4, gemlite w4g64), forward and backward, plus the dequant pass against its memory
floor and the per-shape crossover as a table section.

    python -m benchmarks.kernels.bench_k16 --out-dir $OUT          # GPU: ~5-8 min on one H100/H200 (prints a table last)
    TRITON_INTERPRET=1 python -m benchmarks.kernels.bench_k16 --smoke --out-dir /tmp/k16   # CPU: the same code, tiny shape

Timing (GPU): every implementation of a cell is captured in a CUDA graph over enough weight copies (≥ 150 MB) that
each call reads its weights from DRAM (cold L2); the implementations of a cell are timed in ``--rounds`` alternating
rounds and the median is kept (the GPU's clock moves fp16 timings by ~10%). ``eager`` rows: ``do_bench`` median of
the Python call (launch overhead included). On the CPU (``--smoke``) the "timings" are wall-clock of one call and mean
nothing: the mode exists so the script cannot crash on the GPU for a reason the CPU could have shown.

Writes ``kernels_k16.json`` (every row, the crossover section, the dequant floors) and ``kernels_k16.md`` (the table printed last).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from benchmarks.kernels import DEFAULT_TABLE
from benchmarks.kernels.peers import Peers, lords_bytes, lords_layers
from benchmarks.kernels.timing import Clock, bandwidth_TBps, n_copies
from benchmarks.kernels.timing import alternate as _alternate
from lords.lowrank import parity_rank

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]
MS = [1, 4, 16, 64, 2048, 8192]
CROSS_MS = [256, 512, 1024]  # timed for fused vs dequant only: with 2048 and 8192 they place the crossover
BWD_MS = [2048, 8192]
BLOCK = 64


def make_layers(torch, N, K, copies, dtype, device):
    return lords_layers(torch, N, K, 4, copies, dtype, r=parity_rank(N, K, BLOCK), device=device)


def fused_config(M, N, K, r):
    from lords_kernels.lords_matmul import tuning

    key = f"{tuning.m_bucket(M)},{N},{K},4,{tuning.rank_pad(r)}"
    return tuning._TABLE.get(key) or tuning.default_config(M, N, K, 4, r)


def alternate(clock, impls: dict, rounds: int):
    """Median over ``rounds`` alternating rounds of each implementation's graph timing (failures recorded)."""
    samples, errors = _alternate({k: (lambda fns=fns: clock.graph(fns)) for k, fns in impls.items()}, rounds)
    return {k: statistics.median(v) for k, v in samples.items() if v}, errors


def run(args):
    import torch
    import triton

    import lords_kernels
    from lords_kernels.lords_matmul import triton as tk
    from lords_kernels.lords_matmul.dequant import dequantize, scratch_bytes
    from lords_kernels.lords_matmul.tuning import dequant_config

    cuda = torch.cuda.is_available() and not tk.INTERPRET
    dev = "cuda" if cuda else "cpu"
    dtype = torch.float16
    clock = Clock(torch, triton, cuda)
    if args.table and os.path.exists(args.table):
        lords_kernels.load_table(args.table)
    peers = Peers() if cuda else None
    bw = bandwidth_TBps(torch, triton) if cuda else float("nan")
    out = dict(
        device=torch.cuda.get_device_name() if cuda else "cpu (smoke: timings meaningless)",
        torch=torch.__version__,
        triton=triton.__version__,
        bandwidth_TBps=bw,
        missing_peers=peers.missing if peers else {"all": "smoke mode"},
        rows=[],
        dequant=[],
        crossover={},
        errors={},
        method="graph: CUDA graph over >=150 MB of weight copies (cold L2), median of alternating "
        "rounds; eager: do_bench median of the Python call; fp16 activations; LoRDS 4-bit, "
        "parity rank at block 64, NF grid",
    )
    t_start = time.time()
    os.makedirs(args.out_dir, exist_ok=True)

    def save():
        with open(os.path.join(args.out_dir, "kernels_k16.json"), "w") as fh:
            json.dump(out, fh, indent=1)

    def add(N, K, M, impl, us, kind="graph", **extra):
        out["rows"].append(dict(N=N, K=K, M=M, impl=impl, us=us, kind=kind, **extra))
        print(f"{N:>6}x{K:<6} M={M:<5} {kind:<6} {impl:<18} {us:9.1f} us", flush=True)

    def over_budget():
        return time.time() - t_start > args.budget_s

    for N, K in args.shapes:
        r = parity_rank(N, K, BLOCK)
        copies = n_copies(lords_bytes(N, K, 4)) if cuda else 1
        layers = make_layers(torch, N, K, copies, dtype, dev)
        codes = [lords_kernels.kernel_codes(L) for L in layers]
        Ws = (
            [torch.randn(N, K, dtype=dtype, device=dev) for _ in range(n_copies(2 * N * K))]
            if cuda
            else [torch.randn(N, K, dtype=dtype)]
        )
        cur = {}
        bnb = gml = None
        if peers is not None and peers.bnb is not None:
            bnb = peers.bnb_fns(torch, N, K, cur, n_copies(N * K // 2))
        if peers is not None and peers.gemlite is not None:
            try:
                gml = peers.gemlite_fns(torch, N, K, cur, n_copies(N * K // 2))
            except Exception as e:
                out["missing_peers"].setdefault("gemlite_w4g64_pack", repr(e)[:200])

        # the dequant pass alone, against its memory floor (codes read + W_hat written + B, A read)
        dq = [
            (lambda c=c, L=L: dequantize(c, L.grid, L.B, L.A, dtype, cfg=dequant_config(N, K, 4, r)))
            for c, L in zip(codes, layers)
        ]
        med, errs = alternate(clock, {"dequant": dq}, args.rounds)
        out["errors"].update({f"{N}x{K} dequant pass": e for e in errs.values()})
        if med:
            us = med["dequant"]
            floor = (N * K // 2 + 2 * N * K + 2 * r * (N + K)) / (bw * 1e12) * 1e6
            out["dequant"].append(
                dict(N=N, K=K, us=us, floor_us=floor, ratio=us / floor, cfg=str(dequant_config(N, K, 4, r)))
            )
            print(f"{N:>6}x{K:<6} dequant pass {us:.1f} us, floor {floor:.1f} us ({us / floor:.2f}x)", flush=True)

        fused_vs_dequant = {}
        for M in sorted(set(args.ms) | (set(CROSS_MS) if not args.smoke else set())):
            if over_budget():
                out["errors"]["budget"] = f"stopped before {N}x{K} M={M} after {args.budget_s} s"
                break
            x = cur["x"] = torch.randn(M, K, dtype=dtype, device=dev)
            fcfg = fused_config(M, N, K, r)
            impls = {
                "fused": [
                    (lambda c=c, L=L: tk.lords_matmul(x, c, L.grid, L.B, L.A, None, fcfg))
                    for c, L in zip(codes, layers)
                ]
            }
            if M >= 64:
                dcfg = dequant_config(N, K, 4, r)
                impls["dequant_cublas"] = [
                    (lambda c=c, L=L: tk.lords_matmul(x, c, L.grid, L.B, L.A, None, dcfg))
                    for c, L in zip(codes, layers)
                ]
            if M in args.ms:
                impls["fp16"] = [(lambda W=W: torch.nn.functional.linear(x, W)) for W in Ws]
                if bnb is not None:
                    impls["bnb_nf4"] = bnb
                if gml is not None:
                    impls["gemlite_w4g64"] = gml
            med, errs = alternate(clock, impls, args.rounds)
            for k, e in errs.items():
                out["errors"][f"{N}x{K} M={M} {k}"] = e
            for k, v in med.items():
                add(N, K, M, k, v, **({"cfg": str(fcfg)} if k == "fused" else {}))
            if "fused" in med and "dequant_cublas" in med:
                fused_vs_dequant[M] = (med["fused"], med["dequant_cublas"])
            if M in (1, 16) and M in args.ms:  # eager: the layer's plan (what a model calls), old functional path
                eager = {
                    "fp16": lambda: torch.nn.functional.linear(x, Ws[0]),
                    "lords_plan": lambda: lords_kernels.triton_forward(layers[0], x),
                    "lords_functional": lambda: tk.lords_matmul(
                        x, codes[0], layers[0].grid, layers[0].B, layers[0].A, None
                    ),
                }
                if bnb is not None:
                    eager["bnb_nf4"] = bnb[0]
                if gml is not None:
                    eager["gemlite_w4g64"] = gml[0]
                for k, fn in eager.items():
                    try:
                        add(N, K, M, k, clock.eager(fn), kind="eager")
                    except Exception as e:
                        out["errors"][f"eager {N}x{K} M={M} {k}"] = repr(e)[:300]
            save()
        wins = [M for M, (f, d) in sorted(fused_vs_dequant.items()) if d < f]
        # the crossover: the smallest timed M from which dequant + cuBLAS wins at every larger timed M
        cross = next(
            (
                M
                for M in sorted(fused_vs_dequant)
                if all(fused_vs_dequant[m][1] < fused_vs_dequant[m][0] for m in fused_vs_dequant if m >= M)
            ),
            None,
        )
        if cross is not None:
            out["crossover"][f"{N},{K},4"] = cross
        out.setdefault("crossover_timings", {})[f"{N},{K}"] = {
            str(M): dict(fused=f, dequant=d) for M, (f, d) in fused_vs_dequant.items()
        }
        print(f"{N}x{K}: dequant wins at M in {wins}; crossover {cross}", flush=True)

        # backward: fp16 (dx = dy·W, dW = dyᵀx) against LoRDS fused / cuBLAS, full (x, B, A) and PEFT (B, A)
        for M in args.bwd_ms:
            if over_budget():
                out["errors"]["budget_bwd"] = f"stopped before backward {N}x{K} M={M}"
                break
            x = torch.randn(M, K, dtype=dtype, device=dev)
            dy = torch.randn(M, N, dtype=dtype, device=dev)
            impls = {"fp16_bwd": [(lambda W=W: (torch.mm(dy, W), torch.mm(dy.t(), x))) for W in Ws]}
            for name, cub, dx in (
                ("lords_cublas_bwd", True, True),
                ("lords_cublas_peft", True, False),
                ("lords_fused_bwd", False, True),
                ("lords_fused_peft", False, False),
            ):
                if not cub and M > 2048:
                    continue  # the fused backward at 8192 tokens takes tens of ms per call: not worth the budget
                impls[name] = [
                    (
                        lambda c=c, L=L, cub=cub, dx=dx: tk.lords_matmul_backward(
                            dy, x, c, L.grid, L.B, L.A, need_dx=dx, cublas=cub
                        )
                    )
                    for c, L in zip(codes, layers)
                ]
            med, errs = alternate(clock, impls, args.rounds)
            for k, e in errs.items():
                out["errors"][f"bwd {N}x{K} M={M} {k}"] = e
            for k, v in med.items():
                add(N, K, M, k, v)
            save()
        del layers, codes, Ws, bnb, gml
        if cuda:
            torch.cuda.empty_cache()
    out["scratch_MiB"] = scratch_bytes() / 2**20
    out["wall_s"] = time.time() - t_start
    save()
    table = render(out)
    with open(os.path.join(args.out_dir, "kernels_k16.md"), "w") as fh:
        fh.write(table + "\n")
    print(table)
    return out


def render(out) -> str:
    """The short table: one line per cell, µs (graph unless marked), × fp16."""
    rows = out["rows"]
    cells = sorted({(r["N"], r["K"], r["M"]) for r in rows}, key=lambda c: (c[0], c[1], c[2]))
    fwd = ["fp16", "fused", "dequant_cublas", "bnb_nf4", "gemlite_w4g64"]
    bwd = ["fp16_bwd", "lords_cublas_bwd", "lords_fused_bwd", "lords_cublas_peft", "lords_fused_peft"]
    lines = [
        f"# Kernel bench ({out['device']}, copy {out['bandwidth_TBps']:.2f} TB/s)",
        "",
        "Forward, graph, cold L2, µs (× fp16):",
        "",
        "| N×K | M | " + " | ".join(fwd) + " |",
        "|---|---|" + "---|" * len(fwd),
    ]

    def get(N, K, M, impl, kind="graph"):
        for r in rows:
            if (r["N"], r["K"], r["M"], r["impl"], r["kind"]) == (N, K, M, impl, kind):
                return r["us"]
        return None

    for N, K, M in cells:
        f16 = get(N, K, M, "fp16")
        vals = [get(N, K, M, i) for i in fwd]
        if f16 is None:
            continue
        lines.append(
            f"| {N}×{K} | {M} | "
            + " | ".join(
                "—" if v is None else (f"{v:.1f}" if i == "fp16" else f"{v:.1f} ({v / f16:.2f})")
                for i, v in zip(fwd, vals)
            )
            + " |"
        )
    lines += [
        "",
        "Backward, graph, µs (dx + dB + dA; peft: dB + dA; fp16: dx + dW):",
        "",
        "| N×K | M | " + " | ".join(bwd) + " |",
        "|---|---|" + "---|" * len(bwd),
    ]
    for N, K, M in cells:
        vals = [get(N, K, M, i) for i in bwd]
        if any(v is not None for v in vals):
            lines.append(f"| {N}×{K} | {M} | " + " | ".join("—" if v is None else f"{v:.1f}" for v in vals) + " |")
    eager = ["fp16", "lords_plan", "lords_functional", "bnb_nf4", "gemlite_w4g64"]
    lines += [
        "",
        "Eager (Python call included), µs:",
        "",
        "| N×K | M | " + " | ".join(eager) + " |",
        "|---|---|" + "---|" * len(eager),
    ]
    for N, K, M in cells:
        vals = [get(N, K, M, i, "eager") for i in eager]
        if any(v is not None for v in vals):
            lines.append(f"| {N}×{K} | {M} | " + " | ".join("—" if v is None else f"{v:.1f}" for v in vals) + " |")
    lines += [
        "",
        "Dequant pass vs its memory floor: "
        + "; ".join(f"{d['N']}×{d['K']} {d['us']:.1f} µs = {d['ratio']:.2f}× floor" for d in out["dequant"]),
        f"Crossover (dequant + cuBLAS from M): {out['crossover']}; scratch {out.get('scratch_MiB', 0):.0f} MiB; "
        f"errors: {len(out['errors'])}; wall {out.get('wall_s', 0):.0f} s",
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=os.path.join("outputs", "reports"))
    p.add_argument("--table", default=str(DEFAULT_TABLE))
    p.add_argument("--shapes", default=None, help="e.g. 4096x4096,14336x4096")
    p.add_argument("--ms", type=int, nargs="+", default=MS)
    p.add_argument("--bwd-ms", type=int, nargs="+", default=BWD_MS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=480, help="stop starting new cells after this many seconds")
    p.add_argument("--smoke", action="store_true", help="tiny shape, few M (CPU under TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    args.shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    if args.smoke:
        args.shapes, args.ms, args.bwd_ms, args.rounds = [(96, 256)], [1, 4, 64], [64], 1
    return run(args)


if __name__ == "__main__":
    main()
