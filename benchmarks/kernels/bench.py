"""Linear-layer benchmark on one GPU, the kernel report's one entry point: cuBLAS fp16, bitsandbytes NF4, gemlite w4
and LoRDS at block sizes 64 and 128 (bnb ``blocksize`` and gemlite ``group_size`` = the block; LoRDS at the parity rank
of the block), and the 4-bit memory floor of each block size from a copy bandwidth measured in the same run.

    python -m benchmarks.kernels.bench                      # outputs/reports/kernels.json (+ md/png)
    python -m benchmarks.kernels.bench --backward outputs/reports/kernels_backward.json --ms 2048 \\
        --shapes 4096x4096,14336x4096                  # forward + backward
    python -m benchmarks.kernels.bench --tune OUT.json      # sweep LoRDS tile configs (benchmarks.kernels.tune), best per cell
    python -m benchmarks.kernels.bench --render             # md + png from an existing kernels.json (CPU is enough)
    TRITON_INTERPRET=1 python -m benchmarks.kernels.bench --smoke --json /tmp/k/kernels.json --out-dir /tmp/k   # CPU

Rows (``kernels.json``): ``N, K, M, bits, impl, block_size, us, us_graph`` (+ ``us_graph_spread``, ``rounds``);
``impl`` is ``fp16`` (``block_size`` null), ``bnb_nf4``, ``gemlite_w4``, ``lords`` or ``floor``. LoRDS runs ``--bits``
at the first block size and 4 bits at the others. LoRDS goes through ``lords_kernels.triton_forward``, the backend a
``LoRDSLinear`` gets from ``use_triton``: its plan picks the table's tile and
dequantize + cuBLAS from the crossover (``tuning.dequant_min_m``).

Timing: ``us_graph`` = the calls captured in one CUDA graph, replayed, over enough weight copies (≥ 150 MB) that every
call reads its weights from DRAM (cold L2), median of replays / calls; ``us`` = ``triton.testing.do_bench`` median of
the Python call (launch overhead included, L2 flushed). The implementations of a cell are timed in ``--rounds``
alternating rounds (the order rotated each round; the GPU's clock moves timings by ~10% with its power state); a row
keeps the median of the rounds and the spread of the graph timings. bnb and gemlite are optional peers: a missing one
is skipped and named in the output. Weights are random (timings do not depend on values; zeros are avoided).

``--smoke`` runs the same code on the CPU (Triton's interpreter, a tiny shape): its "timings" are one wall-clock call
each and mean nothing; it exists so that a GPU call cannot fail for a reason the CPU could have shown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from benchmarks.kernels import DEFAULT_TABLE
from benchmarks.kernels.peers import BLOCK, Peers, lords_bytes, lords_layers, lords_rank  # noqa: F401 (re-exported)
from benchmarks.kernels.timing import (  # noqa: F401 (re-exported)
    Clock,
    alternate,
    bandwidth_TBps,
    median_replay_ms,
    n_copies,
    time_eager,
    time_graph,
)

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (1024, 4096)]
MS = [1, 4, 16, 64, 256, 2048, 8192]
BLOCKS = [64, 128]
REPORTS = os.path.join("outputs", "reports")
SMOKE = dict(shapes=[(256, 512)], ms=[1, 16, 512], bits=[4, 2], blocks=[64, 128], rounds=2)


# ----------------------------------------------------------------------------------------------- timing


def parse_shapes(text: str):
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")]


# ----------------------------------------------------------------------------------------------- forward


def lords_variants(bits: list[int], blocks: list[int]) -> list[tuple[int, int]]:
    """``(bits, block)`` of the LoRDS rows: every width at the first block size, 4 bits at the others."""
    out = [(b, blocks[0]) for b in bits]
    out += [(4, blk) for blk in blocks[1:] if (4, blk) not in out]
    return out


def floor_us(N: int, K: int, M: int, block: int, bw_TBps: float | None) -> float | None:
    """Decode memory floor: 4-bit codes + fp16 scales per group of ``block`` + activations in and out."""
    if not bw_TBps or bw_TBps != bw_TBps:
        return None
    return (N * K // 2 + 2 * N * K // block + 2 * M * (K + N)) / (bw_TBps * 1e12) * 1e6


def bench(args, torch, triton):
    import lords_kernels
    from lords_kernels.lords_matmul import triton as tk

    cuda = torch.cuda.is_available() and not tk.INTERPRET
    dev = "cuda" if cuda else "cpu"
    clock = Clock(torch, triton, cuda, eager_warmup=10, eager_rep=40)
    peers = Peers(dev)
    bw = bandwidth_TBps(torch, triton) if cuda else None
    blocks, variants = args.blocks, lords_variants(args.bits, args.blocks)
    print(
        f"device {torch.cuda.get_device_name() if cuda else 'cpu'}  copy bandwidth {bw}  "
        f"missing peers: {peers.missing}",
        flush=True,
    )
    rows, errors = [], {}
    out = dict(
        device=torch.cuda.get_device_name() if cuda else "cpu (smoke: timings meaningless)",
        bandwidth_TBps=bw,
        torch=torch.__version__,
        triton=triton.__version__,
        missing_peers=peers.missing,
        blocks=blocks,
        rounds=args.rounds,
        table=args.table,
        rows=rows,
        errors=errors,
        method=f"us: do_bench median (warmup 10 ms, rep 40 ms), eager Python call, L2 flushed; us_graph: "
        "CUDA graph, weights rotated over >=150 MB of copies (cold L2), median replay / calls; "
        f"implementations of a cell timed in {args.rounds} alternating rounds, median of rounds; "
        "fp16 activations; LoRDS: NF grid, B/A fp16, parity rank of the row's block size, through "
        "triton_forward (the layer plan); bnb NF4 blocksize = block, no double quant; gemlite "
        "GemLiteLinear(4, group_size = block); floor = (4-bit codes + fp16 scales per block + "
        "activations in/out) / copy bandwidth",
    )
    t_start = time.time()

    def save():
        out["wall_s"] = time.time() - t_start
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        return out

    def add(N, K, M, bits, impl, block, us, us_graph, spread=None, rounds=1):
        rows.append(
            dict(
                N=N,
                K=K,
                M=M,
                bits=bits,
                impl=impl,
                block_size=block,
                us=us,
                us_graph=us_graph,
                us_graph_spread=spread,
                rounds=rounds,
            )
        )
        g = "—" if us_graph is None else f"{us_graph:8.1f}"
        e = "—" if us is None else f"{us:8.1f}"
        print(f"{N:>6}x{K:<6} M={M:<5} {impl:<11} bits={bits:<2} block={block!s:<4} eager {e}  graph {g}", flush=True)

    for N, K in args.shapes:
        copies = (lambda nbytes: n_copies(nbytes)) if cuda else (lambda nbytes: 1)
        cur = {}
        impls = {}  # key -> (impl, bits, block, fns)
        Ws = [torch.randn(N, K, dtype=torch.float16, device=dev) for _ in range(copies(2 * N * K))]
        impls["fp16"] = ("fp16", 16, None, [(lambda W=W: torch.nn.functional.linear(cur["x"], W)) for W in Ws])
        for blk in blocks:
            try:
                if peers.bnb is not None:
                    impls[f"bnb{blk}"] = ("bnb_nf4", 4, blk, peers.bnb_fns(torch, N, K, cur, copies(N * K // 2), blk))
            except Exception as e:
                errors[f"{N}x{K} bnb_nf4 block {blk} quantize"] = repr(e)[:300]
            try:
                if peers.gemlite is not None:
                    impls[f"gemlite{blk}"] = (
                        "gemlite_w4",
                        4,
                        blk,
                        peers.gemlite_fns(torch, N, K, cur, copies(N * K // 2), blk),
                    )
            except Exception as e:
                errors[f"{N}x{K} gemlite_w4 block {blk} pack"] = repr(e)[:300]
        for bits, blk in variants:
            try:
                layers = lords_layers(
                    torch,
                    N,
                    K,
                    bits,
                    copies(lords_bytes(N, K, bits, blk)),
                    torch.float16,
                    r=lords_rank(N, K, blk),
                    device=dev,
                )
                for layer in layers:
                    lords_kernels.kernel_codes(layer)
            except Exception as e:
                errors[f"{N}x{K} lords {bits}-bit block {blk} build"] = repr(e)[:300]
                continue
            impls[f"lords{bits}@{blk}"] = (
                "lords",
                bits,
                blk,
                [(lambda L=L: lords_kernels.triton_forward(L, cur["x"])) for L in layers],
            )
        for M in args.ms:
            if time.time() - t_start > args.budget_s:
                out["stopped"] = f"budget of {args.budget_s} s spent before {N}x{K} M={M}"
                break
            cur["x"] = torch.randn(M, K, dtype=torch.float16, device=dev)
            for blk in blocks:
                f = floor_us(N, K, M, blk, bw)
                add(N, K, M, 4, "floor", blk, f, f)
            cell = {k: v for k, v in impls.items() if v[0] in ("fp16", "lords") or M <= args.peer_max_m}
            timers = {k: (lambda fns=v[3]: (clock.eager(fns[0]), clock.graph(fns))) for k, v in cell.items()}
            samples, errs = alternate(timers, args.rounds)
            for k, e in errs.items():
                errors[f"{N}x{K} M={M} {k}"] = e
            for k, (impl, bits, blk, _) in cell.items():
                vals = samples[k]
                if vals:
                    g = [v[1] for v in vals]
                    add(
                        N,
                        K,
                        M,
                        bits,
                        impl,
                        blk,
                        statistics.median(v[0] for v in vals),
                        statistics.median(g),
                        [min(g), max(g)],
                        len(vals),
                    )
            save()
        del Ws, impls, cur
        if cuda:
            torch.cuda.empty_cache()
    return save()


# ----------------------------------------------------------------------------------------------- backward


def backward(args, torch, triton):
    """Forward + backward at large M, eager (``do_bench``), alternating rounds: LoRDS at each block size (grads for
    x, B, A; ``lords_peft``: B, A only) against cuBLAS fp16 (grads for x, W). Rows ``N, K, M, impl, block_size,
    us_fwd_bwd`` (+ spread, rounds)."""
    import lords_kernels
    from lords_kernels.lords_matmul import triton as tk

    cuda = torch.cuda.is_available() and not tk.INTERPRET
    dev = "cuda" if cuda else "cpu"
    clock = Clock(torch, triton, cuda)
    rows, errors = [], {}
    for N, K in args.shapes:
        for M in args.ms:
            x = torch.randn(M, K, dtype=torch.float16, device=dev, requires_grad=True)
            W = torch.randn(N, K, dtype=torch.float16, device=dev, requires_grad=True)
            dy = torch.randn(M, N, dtype=torch.float16, device=dev)
            fns = {("fp16", None): lambda: torch.nn.functional.linear(x, W).backward(dy)}
            for blk in args.blocks:
                layer = lords_layers(torch, N, K, 4, 1, torch.float16, r=lords_rank(N, K, blk), device=dev)[0]
                layer.B.requires_grad_(True)
                layer.A.requires_grad_(True)
                lords_kernels.kernel_codes(layer)
                fns[("lords", blk)] = lambda L=layer: lords_kernels.triton_forward(L, x).backward(dy)
                fns[("lords_peft", blk)] = lambda L=layer: lords_kernels.triton_forward(L, x.detach()).backward(dy)
            samples, errs = alternate({k: (lambda fn=fn: clock.eager(fn)) for k, fn in fns.items()}, args.rounds)
            for (name, blk), e in errs.items():
                errors[f"{N}x{K} M={M} {name} block {blk}"] = e
            for (name, blk), vals in samples.items():
                if vals:
                    us = statistics.median(vals)
                    rows.append(
                        dict(
                            N=N,
                            K=K,
                            M=M,
                            impl=name,
                            block_size=blk,
                            us_fwd_bwd=us,
                            us_fwd_bwd_spread=[min(vals), max(vals)],
                            rounds=len(vals),
                        )
                    )
                    print(f"bwd {N}x{K} M={M} {name:<11} block={blk!s:<4} fwd+bwd {us:9.1f} us", flush=True)
            x.grad = W.grad = None
    out = dict(
        device=torch.cuda.get_device_name() if cuda else "cpu (smoke: timings meaningless)",
        rows=rows,
        errors=errors,
        blocks=args.blocks,
        rounds=args.rounds,
        method=f"do_bench median of forward+backward, eager, fp16, {args.rounds} alternating rounds, median; "
        f"LoRDS 4-bit at the parity rank of block_size; from the crossover (tuning.dequant_min_m) the "
        f"backward goes through dequantize + cuBLAS",
    )
    os.makedirs(os.path.dirname(args.backward) or ".", exist_ok=True)
    with open(args.backward, "w") as fh:
        json.dump(out, fh, indent=1)
    return out


# ----------------------------------------------------------------------------------------------- entry point


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--render", action="store_true", help="only write md/png from --json")
    p.add_argument("--json", default=os.path.join(REPORTS, "kernels.json"))
    p.add_argument("--out-dir", default=REPORTS)
    p.add_argument("--tune", default=None, help="sweep LoRDS configs, write the table here")
    p.add_argument("--backward", default=None, help="time forward+backward at --ms, write JSON here")
    p.add_argument("--log", default=None, help="with --tune: every timing, as JSON")
    p.add_argument("--table", default=str(DEFAULT_TABLE), help="tuning table to load (missing: built-in heuristic)")
    p.add_argument(
        "--bits",
        type=int,
        nargs="+",
        default=[4, 3, 2],
        help="LoRDS widths at the first block size (4 bits at the others)",
    )
    p.add_argument(
        "--blocks",
        type=int,
        nargs="+",
        default=None,
        help=f"block sizes (default {BLOCKS}; with --tune: [64], the parity ranks to sweep)",
    )
    p.add_argument("--ms", type=int, nargs="+", default=MS)
    p.add_argument("--shapes", default=None, help="e.g. 4096x4096,1024x4096")
    p.add_argument("--peer-max-m", type=int, default=1 << 30, help="skip peers above this M")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell (median kept)")
    p.add_argument("--budget-s", type=float, default=1e9, help="stop starting new cells after this many seconds")
    p.add_argument("--smoke", action="store_true", help="tiny shape, few M (CPU under TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    if args.shapes:
        SHAPES[:] = parse_shapes(args.shapes)
    args.shapes = list(SHAPES)
    if args.blocks is None:
        args.blocks = [BLOCK] if args.tune else list(BLOCKS)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v if k != "ms" or not args.backward else [64, 512])
    if args.render:
        from benchmarks.kernels.render import render

        render(args.json, args.out_dir)
        return
    import torch
    import triton

    if args.table and not os.path.exists(args.table):
        args.table = None
    if args.table:
        import lords_kernels

        lords_kernels.load_table(args.table)
    if args.tune:
        from benchmarks.kernels.tune import tune

        tune(args, torch, triton)
        return
    if args.backward:
        return backward(args, torch, triton)
    out = bench(args, torch, triton)
    try:
        from benchmarks.kernels.render import render

        render(args.json, args.out_dir)
    except Exception as e:  # plotting is optional on the GPU machine
        print("render failed:", e, file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
