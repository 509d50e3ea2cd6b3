"""Linear-layer benchmark on one GPU: cuBLAS fp16, bitsandbytes NF4, gemlite w4g64, LoRDS 4/3/2 bits, and the
4-bit memory floor from a copy bandwidth measured in the same run.

    python -m lords_kernels.bench                      # time everything, write outputs/reports/kernels.json (+ md/png)
    python -m lords_kernels.bench --tune OUT.json      # sweep LoRDS tile configs (lords_kernels.tune), best per cell
    python -m lords_kernels.bench --render             # md + png from an existing kernels.json (CPU is enough)

Two timings per cell, in µs: ``us`` = ``triton.testing.do_bench`` median of the Python call (launch overhead
included, L2 flushed between calls); ``us_graph`` = the calls captured in one CUDA graph, replayed, over enough
weight copies (≥ 150 MB) that every call reads its weights from DRAM (cold L2), median of replays / calls.
bnb and gemlite are optional peers: a missing one is skipped and named in the output. Weights are random
(timings do not depend on values; zeros are avoided on purpose).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import types

from lords.lowrank import parity_rank

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (1024, 4096)]
MS = [1, 4, 16, 64, 256, 2048, 8192]
REPORTS = os.path.join("outputs", "reports")


BLOCK = 64  # the float budget LoRDS matches: block-wise scales of 64 inputs, like the NF4 and gemlite peers


# ----------------------------------------------------------------------------------------------- timing

def bandwidth_TBps(torch, triton) -> float:
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e12


def time_eager(triton, fn) -> float:
    return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def time_graph(torch, fns, min_calls: int = 16, reps: int = 15) -> float:
    """µs per call: ``fns`` (one per weight copy) captured round-robin in one CUDA graph."""
    calls = list(fns) * max(1, math.ceil(min_calls / len(fns)))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in calls[: len(fns)]:
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in calls:
            f()
    g.replay()
    torch.cuda.synchronize()
    ms = median_replay_ms(torch, g, reps)
    del g
    return 1e3 * ms / len(calls)


def median_replay_ms(torch, graph, reps: int) -> float:
    """Median milliseconds of ``reps`` replays of a captured CUDA graph, each timed with device events."""
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1))
    return statistics.median(times)


def n_copies(nbytes: int, target: int = 150 << 20, cap: int = 64) -> int:
    return max(2, min(cap, math.ceil(target / max(nbytes, 1))))


# ----------------------------------------------------------------------------------------------- implementations

def lords_layers(torch, N, K, bits, copies, dtype, r=None):
    """``copies`` random LoRDS layers on CUDA (rank ``r``, default the block-64 parity rank)."""
    from lords.grids import make_grid
    from lords.packing import pack_codes

    r = r or parity_rank(N, K, BLOCK)
    grid = make_grid("nf", bits).cuda()
    layers = []
    for i in range(copies):
        g = torch.Generator(device="cuda").manual_seed(i)
        codes = torch.randint(0, 2**bits, (N, K), device="cuda", generator=g, dtype=torch.uint8)
        layers.append(types.SimpleNamespace(
            qweight=pack_codes(codes, bits), grid=grid, bits=bits, in_features=K, out_features=N, bias=None,
            B=(torch.randn(N, r, device="cuda", generator=g) / r**0.5).to(dtype),
            A=(torch.rand(r, K, device="cuda", generator=g) + 0.5).to(dtype)))
    return layers


def lords_bytes(N, K, bits):
    r = parity_rank(N, K, BLOCK)
    return N * K * bits // 8 + 2 * r * (N + K)


class Peers:
    def __init__(self):
        self.missing = {}
        try:
            import bitsandbytes  # noqa: F401
            import bitsandbytes.functional as bf

            self.bnb, self.bf = bitsandbytes, bf
        except Exception as e:  # a peer, optional: report and go on
            self.bnb = None
            self.missing["bnb_nf4"] = repr(e)[:200]
        try:
            import gemlite
            from gemlite.core import DType, GemLiteLinear

            cfg = os.path.join(os.path.dirname(gemlite.__file__), "configs", "h100.json")
            if os.path.exists(cfg):
                gemlite.load_config(cfg)
            self.gemlite, self.GemLiteLinear, self.DType = gemlite, GemLiteLinear, DType
        except Exception as e:
            self.gemlite = None
            self.missing["gemlite_w4g64"] = repr(e)[:200]

    def bnb_fns(self, torch, N, K, cur, copies):
        objs = []
        for _ in range(copies):
            W = torch.randn(N, K, dtype=torch.float16, device="cuda")
            qW, st = self.bf.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=False)
            objs.append((qW, st))
            del W
        return [(lambda qW=qW, st=st: self.bnb.matmul_4bit(cur["x"], qW.t(), quant_state=st)) for qW, st in objs]

    def gemlite_fns(self, torch, N, K, cur, copies):
        layers = []
        for _ in range(copies):
            lin = self.GemLiteLinear(4, group_size=64, in_features=K, out_features=N,
                                     input_dtype=self.DType.FP16, output_dtype=self.DType.FP16)
            W_q = torch.randint(0, 16, (N, K), dtype=torch.uint8, device="cuda")
            scales = (torch.rand(N, K // 64, device="cuda") * 0.01 + 1e-3).half()
            zeros = torch.full((N, K // 64), 7.5, device="cuda").half()
            lin.pack(W_q, scales, zeros, bias=None)
            layers.append(lin)
        return [(lambda lin=lin: lin(cur["x"])) for lin in layers]


# ----------------------------------------------------------------------------------------------- bench

def bench(args, torch, triton):
    import lords_kernels

    peers = Peers()
    bw = bandwidth_TBps(torch, triton)
    print(f"device {torch.cuda.get_device_name()}  copy bandwidth {bw:.2f} TB/s  missing peers: {peers.missing}",
          flush=True)
    rows = []

    def save():
        out = dict(device=torch.cuda.get_device_name(), bandwidth_TBps=bw, torch=torch.__version__,
                   triton=triton.__version__, missing_peers=peers.missing,
                   method="us: do_bench median, eager Python call, L2 flushed; us_graph: CUDA graph, weights rotated "
                          "over >=150 MB of copies (cold L2), median replay / calls; fp16 activations; LoRDS rank = "
                          "parity rank at block 64, NF grid, B/A fp16; bnb NF4 blocksize 64 without double quant; "
                          "floor = (4-bit codes + fp16 group-64 scales + activations in/out) / copy bandwidth",
                   rows=rows)
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        return out

    def add(N, K, M, bits, impl, us, us_graph):
        rows.append(dict(N=N, K=K, M=M, bits=bits, impl=impl, us=us, us_graph=us_graph))
        print(f"{N:>6}x{K:<6} M={M:<5} {impl:<14} bits={bits:<2} eager {us:8.1f}  graph {us_graph:8.1f}", flush=True)

    for N, K in SHAPES:
        # fp16 weights: copies sized for cold L2
        Ws = [torch.randn(N, K, dtype=torch.float16, device="cuda") for _ in range(n_copies(2 * N * K))]
        lords = {b: lords_layers(torch, N, K, b, n_copies(lords_bytes(N, K, b)), torch.float16) for b in args.bits}
        for layer_list in lords.values():
            for layer in layer_list:
                lords_kernels.kernel_codes(layer)
        cur = {}
        bnb = peers.bnb_fns(torch, N, K, cur, n_copies(N * K // 2)) if peers.bnb is not None else None
        try:
            gml = peers.gemlite_fns(torch, N, K, cur, n_copies(N * K // 2)) if peers.gemlite is not None else None
        except Exception as e:
            gml = None
            peers.missing.setdefault("gemlite_w4g64_pack", repr(e)[:200])
        for M in args.ms:
            x = cur["x"] = torch.randn(M, K, dtype=torch.float16, device="cuda")
            floor = (N * K // 2 + 2 * N * K // 64 + 2 * M * (K + N)) / (bw * 1e12) * 1e6
            add(N, K, M, 4, "floor", floor, floor)
            fns = [(lambda W=W: torch.nn.functional.linear(x, W)) for W in Ws]
            add(N, K, M, 16, "fp16", time_eager(triton, fns[0]), time_graph(torch, fns))
            if bnb is not None and M <= args.peer_max_m:
                add(N, K, M, 4, "bnb_nf4", time_eager(triton, bnb[0]), time_graph(torch, bnb))
            if gml is not None and M <= args.peer_max_m:
                try:
                    add(N, K, M, 4, "gemlite_w4g64", time_eager(triton, gml[0]), time_graph(torch, gml))
                except Exception as e:
                    peers.missing.setdefault(f"gemlite_w4g64_call_M{M}", repr(e)[:200])
            for b, layers in lords.items():
                fns = [(lambda L=L: lords_kernels.triton_forward(L, x)) for L in layers]
                add(N, K, M, b, "lords", time_eager(triton, fns[0]), time_graph(torch, fns))
            torch.cuda.empty_cache()
        del Ws, lords, bnb, gml
        torch.cuda.empty_cache()
        save()  # after every shape: a run cut short keeps what it measured
    return save()


def backward(args, torch, triton):
    """Forward + backward at large M: LoRDS (grads for x, B, A) against cuBLAS fp16 (grads for x, W)."""
    import lords_kernels

    rows = []
    for N, K in SHAPES:
        for M in args.ms:
            x = torch.randn(M, K, dtype=torch.float16, device="cuda", requires_grad=True)
            W = torch.randn(N, K, dtype=torch.float16, device="cuda", requires_grad=True)
            dy = torch.randn(M, N, dtype=torch.float16, device="cuda")

            def fp16():
                torch.nn.functional.linear(x, W).backward(dy)

            layer = lords_layers(torch, N, K, 4, 1, torch.float16)[0]
            layer.B.requires_grad_(True)
            layer.A.requires_grad_(True)
            lords_kernels.kernel_codes(layer)

            def lords():
                lords_kernels.triton_forward(layer, x).backward(dy)

            def lords_peft():  # PEFT: no grad for x
                lords_kernels.triton_forward(layer, x.detach()).backward(dy)

            for name, fn in (("fp16", fp16), ("lords", lords), ("lords_peft", lords_peft)):
                us = time_eager(triton, fn)
                rows.append(dict(N=N, K=K, M=M, impl=name, us_fwd_bwd=us))
                print(f"bwd {N}x{K} M={M} {name:<11} fwd+bwd {us:9.1f} us", flush=True)
            x.grad = W.grad = None
    with open(args.backward, "w") as fh:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows,
                       method="do_bench median of forward+backward, eager, fp16"), fh, indent=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--render", action="store_true", help="only write md/png from --json")
    p.add_argument("--json", default=os.path.join(REPORTS, "kernels.json"))
    p.add_argument("--out-dir", default=REPORTS)
    p.add_argument("--tune", default=None, help="sweep LoRDS configs, write the table here")
    p.add_argument("--backward", default=None, help="time forward+backward at --ms, write JSON here")
    p.add_argument("--log", default=None, help="with --tune: every timing, as JSON")
    p.add_argument("--table", default=os.path.join(os.path.dirname(__file__), "lords_matmul", "tuned_h100.json"),
                   help="tuning table to load (missing: built-in heuristic)")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    p.add_argument("--blocks", type=int, nargs="+", default=[64],
                   help="with --tune: sweep at the parity rank of these block sizes")
    p.add_argument("--ms", type=int, nargs="+", default=MS)
    p.add_argument("--shapes", default=None, help="e.g. 4096x4096,1024x4096")
    p.add_argument("--peer-max-m", type=int, default=1 << 30, help="skip peers above this M")
    args = p.parse_args(argv)
    if args.shapes:
        SHAPES[:] = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.render:
        from .render import render

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
        from .tune import tune

        tune(args, torch, triton)
        return
    if args.backward:
        backward(args, torch, triton)
        return
    bench(args, torch, triton)
    try:
        from .render import render

        render(args.json, args.out_dir)
    except Exception as e:  # plotting is optional on the GPU machine
        print("render failed:", e, file=sys.stderr)


if __name__ == "__main__":
    main()
