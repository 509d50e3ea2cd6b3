"""Where dequantize-then-cuBLAS overtakes the fused kernel: LoRDS 4-bit, fp16, graph-timed with a cold L2, the
fused ``gemm_t`` pick, the dequant path and cuBLAS fp16 timed in alternation, median of the rounds.

    python -m lords_kernels.crossover            # → outputs/reports/kernels_crossover.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

from .bench import BLOCK, REPORTS, SHAPES, lords_bytes, lords_layers, n_copies, time_graph


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ms", type=int, nargs="+", default=[256, 512, 1024, 2048, 8192])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=os.path.join(REPORTS, "kernels_crossover"))
    args = p.parse_args(argv)
    import torch

    import lords_kernels
    from lords.lowrank import parity_rank
    from lords_kernels.lords_matmul import triton as tk
    from lords_kernels.lords_matmul import tuning
    from lords_kernels.lords_matmul.dequant import scratch_bytes

    lords_kernels.load_table(os.path.join(os.path.dirname(__file__), "lords_matmul", "tuned_h100.json"))
    rows = []
    for N, K in SHAPES:
        copies = n_copies(lords_bytes(N, K, 4))
        layers = lords_layers(torch, N, K, 4, copies, torch.float16)
        codes = [lords_kernels.kernel_codes(layer) for layer in layers]
        ws = [torch.randn(N, K, dtype=torch.float16, device="cuda") for _ in range(n_copies(2 * N * K))]
        for M in args.ms:
            x = torch.randn(M, K, dtype=torch.float16, device="cuda")
            fused = tuning.TileConfig.of(tuning._TABLE.get(
                f"{tuning.m_bucket(M)},{N},{K},4,{tuning.rank_pad(parity_rank(N, K, BLOCK))}")
                or tuning.default_config(4096 if M >= 512 else M, N, K, 4, parity_rank(N, K, BLOCK)))
            impls = {
                "fused": [(lambda c=c, L=L: tk.lords_matmul(x, c, L.grid, L.B, L.A, None, fused))
                          for c, L in zip(codes, layers)],
                "dequant": [(lambda c=c, L=L: tk.lords_matmul(x, c, L.grid, L.B, L.A, None,
                                                             tuning.TileConfig("dequant", BN=128)))
                            for c, L in zip(codes, layers)],
                "fp16": [(lambda w=w: torch.mm(x, w.t())) for w in ws],
            }
            times = {k: [] for k in impls}
            for _ in range(args.rounds):  # alternate: the GPU's clock moves fp16 timings by ~10%
                for k, fns in impls.items():
                    times[k].append(time_graph(torch, fns))
            row = dict(N=N, K=K, M=M, fused_cfg=str(fused), **{k: statistics.median(v) for k, v in times.items()})
            rows.append(row)
            print(f"{N}x{K} M={M}: fused {row['fused']:.1f}  dequant {row['dequant']:.1f}  fp16 {row['fp16']:.1f} us",
                  flush=True)
        del layers, codes, ws
        torch.cuda.empty_cache()
    lines = [f"# Fused kernel vs dequantize + cuBLAS ({torch.cuda.get_device_name()})", "",
             "LoRDS 4-bit, block-64 parity rank, fp16; µs per call, CUDA graph over enough weight copies to exceed L2, "
             f"median of {args.rounds} alternating rounds; scratch buffer {scratch_bytes() / 2**20:.0f} MiB.", "",
             "| N×K | M | fused | dequant + cuBLAS | cuBLAS fp16 | dequant / fp16 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['N']}×{r['K']} | {r['M']} | {r['fused']:.1f} | {r['dequant']:.1f} | {r['fp16']:.1f} | "
                     f"{r['dequant'] / r['fp16']:.2f} |")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(rows, fh, indent=1)
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
