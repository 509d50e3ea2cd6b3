"""Where an eager batch-1 call's time goes: one LoRDS layer against bitsandbytes NF4 and a plain
fp16 linear, and Triton's JIT launch path against a launch of the compiled kernel (``CompiledKernel[grid]``).

    python -m benchmarks.kernels.launch_probe [--shapes 576x576,14336x4096] [--out outputs/reports/launch_probe.json]

Per call, microseconds of wall clock over ``--calls`` back-to-back eager calls (the GPU synchronised before and after,
median of ``--rounds``): a small layer is host-bound, so its time is the host's cost of the call; a large one is
bounded by the kernel. Rows: ``fp16`` (``nn.Linear``), ``bnb_nf4`` (``matmul_4bit``), ``lords`` (``layer(x)``
through ``use_triton``), ``lords_plan`` (the layer's plan: no module or backend dispatch), ``empty`` (one
``torch.empty``: the floor of any op), and for the ``_xa_kernel`` of the batch-1 gemv ``xa_jit`` (``kernel[grid](…)``)
against ``xa_direct`` (the compiled kernel launched directly, the stream bound once). ``xa_direct`` equals
``xa_jit``'s output bit for bit or the probe says so. A GPU tool; prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def per_call_us(torch, fn, calls: int, rounds: int) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(out)


def probe_shape(torch, N: int, K: int, peers, calls: int, rounds: int) -> list[dict]:
    from torch import nn

    import lords_kernels
    from benchmarks.kernels.peers import lords_rank, make_module
    from lords_kernels.dispatch import plan_of
    from lords_kernels.lords_matmul.forward import _xa_buffer, _xa_kernel
    from lords_kernels.lords_matmul.tuning import rank_pad

    x = torch.randn(1, K, dtype=torch.float16, device="cuda")
    rows = []

    def row(impl, fn, **extra):
        with torch.no_grad():
            rows.append(
                {"N": N, "K": K, "M": 1, "impl": impl, "us_eager": per_call_us(torch, fn, calls, rounds), **extra}
            )
        print(f"{N}x{K} {impl:10s} {rows[-1]['us_eager']:7.1f} us", flush=True)

    row("empty", lambda: torch.empty(1, N, dtype=torch.float16, device="cuda"))
    lin = make_module("fp16", N, K, None, peers)
    row("fp16", lambda: lin(x))
    if peers.bnb is not None:
        bnb = make_module("bnb_nf4", N, K, 64, peers)
        row("bnb_nf4", lambda: bnb(x))
    layer = lords_kernels.use_triton(nn.Sequential(make_module("lords", N, K, 64, peers)))[0]
    row("lords", lambda: layer(x), rank=lords_rank(N, K))
    plan = plan_of(layer)
    row("lords_plan", lambda: plan.forward(layer, x))

    # _xa_kernel alone: the JIT path against the compiled kernel's own launcher.
    B, A, _ = plan.scales(layer, torch.float16)
    r = A.shape[0]
    R = rank_pad(r)
    # the shared buffer may be larger (grown by an earlier, larger layer): compare only what this launch writes
    xa = _xa_buffer(x.device, torch.float16, plan.codes.k_pad * R)[: plan.codes.k_pad * R]
    grid = (plan.codes.k_pad // 64, 1, 1)
    args = (x, A, xa, K, r, A.stride(0))
    compiled = _xa_kernel[grid](*args, R=R, BK=64, num_warps=4)
    want = xa.clone()
    row("xa_jit", lambda: _xa_kernel[grid](*args, R=R, BK=64, num_warps=4))
    stream = torch.cuda.current_stream().cuda_stream
    launch = compiled[grid]
    xa.zero_()
    try:  # every parameter in order, the constexprs included (what JITFunction.run hands the launcher)
        launch(*args, R, 64, stream=stream)
        torch.cuda.synchronize()
    except Exception as e:  # this Triton's launcher takes other arguments: say so, time nothing
        rows.append({"N": N, "K": K, "M": 1, "impl": "xa_direct", "us_eager": None, "error": repr(e)[:300]})
        print(f"  xa_direct failed on {N}x{K}: {repr(e)[:200]}")
        return rows
    same = bool(torch.equal(xa, want))
    row("xa_direct", lambda: launch(*args, R, 64, stream=stream), equal_to_jit=same)
    if not same:
        print(f"  xa_direct DIFFERS from xa_jit on {N}x{K}: the direct launch's argument list is wrong here")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="576x576,14336x4096")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="outputs/reports/launch_probe.json")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("launch_probe times eager CUDA calls: it needs a GPU")
    import triton

    from benchmarks.kernels.peers import Peers

    peers = Peers("cuda")
    rows = []
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split("x"))
        rows += probe_shape(torch, N, K, peers, args.calls, args.rounds)
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "calls": args.calls,
        "rounds": args.rounds,
        "missing_peers": peers.missing,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n| shape | {' | '.join(dict.fromkeys(r['impl'] for r in rows))} |")
    for shape in dict.fromkeys((r["N"], r["K"]) for r in rows):
        mine = {r["impl"]: r["us_eager"] for r in rows if (r["N"], r["K"]) == shape}
        print(
            f"| {shape[0]}x{shape[1]} | " + " | ".join("—" if v is None else f"{v:.1f}" for v in mine.values()) + " |"
        )


if __name__ == "__main__":
    main()
