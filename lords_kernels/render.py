"""Render ``outputs/reports/kernels.{md,png}`` from the benchmark's JSON (``python -m lords_kernels.bench --render``)."""
from __future__ import annotations

import json
import os

from .bench import SHAPES


def render(path_json: str, out_dir: str) -> None:
    with open(path_json) as fh:
        data = json.load(fh)
    rows = data["rows"]
    cell = {(r["N"], r["K"], r["M"], r["impl"], r["bits"]): r for r in rows}
    shapes = sorted({(r["N"], r["K"]) for r in rows}, key=lambda s: SHAPES.index(s) if s in SHAPES else 99)
    ms = sorted({r["M"] for r in rows})
    cols = [("fp16", 16), ("bnb_nf4", 4), ("gemlite_w4g64", 4), ("lords", 4), ("lords", 3), ("lords", 2),
            ("floor", 4)]
    lines = [f"# Linear-layer timings on {data['device']}", "",
             f"Copy bandwidth measured in the same run: {data['bandwidth_TBps']:.2f} TB/s. {data['method']}.",
             f"torch {data.get('torch')}, triton {data.get('triton')}. Missing peers: {data.get('missing_peers') or 'none'}.",
             "", "µs, eager / graph (cold L2). Last column: LoRDS 4-bit speed-up over fp16 (graph). The floor is the "
             "memory floor (a decode bound); at M ≥ 256 the work is compute-bound and the floor says little.", "",
             "| N×K | M | " + " | ".join(f"{i} {b}b" if i == "lords" else i for i, b in cols) + " | ×fp16 |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for N, K in shapes:
        for M in ms:
            vals = []
            for impl, b in cols:
                r = cell.get((N, K, M, impl, b))
                if r is None:
                    vals.append("—")
                elif impl == "floor":
                    vals.append(f"{r['us_graph']:.1f}")
                else:
                    vals.append(f"{r['us']:.1f} / {r['us_graph']:.1f}")
            f16, l4 = cell.get((N, K, M, "fp16", 16)), cell.get((N, K, M, "lords", 4))
            sp = f"{f16['us_graph'] / l4['us_graph']:.2f}" if f16 and l4 else "—"
            lines.append(f"| {N}×{K} | {M} | " + " | ".join(vals) + f" | {sp} |")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "kernels.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.6), sharey=True)
    for ax, (N, K) in zip(axes, shapes):
        for impl, b in cols:
            if impl in ("fp16",):
                continue
            pts = [(M, cell[(N, K, M, "fp16", 16)]["us_graph"] / cell[(N, K, M, impl, b)]["us_graph"])
                   for M in ms if (N, K, M, impl, b) in cell and (N, K, M, "fp16", 16) in cell
                   and (impl != "floor" or M <= 64)]  # the memory floor bounds decode, not compute-bound prefill
            if pts:
                label = f"lords {b}-bit" if impl == "lords" else ("4-bit memory floor" if impl == "floor" else impl)
                ax.plot(*zip(*pts), marker="o", label=label, linestyle="--" if impl == "floor" else "-")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(f"{N}×{K}")
        ax.set_xlabel("M (tokens)")
    axes[0].set_ylabel("speed-up over cuBLAS fp16 (graph, cold L2)")
    axes[-1].legend(fontsize=7)
    fig.suptitle(data["device"], fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "kernels.png"), dpi=120)
