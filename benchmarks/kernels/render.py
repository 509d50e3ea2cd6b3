"""Render the kernel report from its JSON, on any machine (no GPU, no Triton):

    python -m benchmarks.kernels.render [--dir outputs/reports]    # kernels.md + kernels.png (+ decode.md if decode.json)

``kernels.md`` holds one forward table per block size (fp16 repeated in each, as the reference), the backward table
when ``kernels_backward.json`` sits beside ``kernels.json``; ``kernels.png`` one panel per block size and shape.
JSON written before rows carried ``block_size`` (block 64 only, gemlite named ``gemlite_w4g64``) renders too.
"""

from __future__ import annotations

import argparse
import json
import os

SHAPE_ORDER = [(4096, 4096), (14336, 4096), (4096, 14336), (1024, 4096)]
PEERS = ("bnb_nf4", "gemlite_w4")


def normalize(rows: list[dict]) -> list[dict]:
    """Rows with ``block_size`` (null for fp16) and the current impl names, whatever JSON version they come from."""
    out = []
    for r in rows:
        r = dict(r)
        if r.get("impl") == "gemlite_w4g64":
            r["impl"] = "gemlite_w4"
        if "block_size" not in r:
            r["block_size"] = None if r.get("impl") == "fp16" else 64
        out.append(r)
    return out


def _fmt(v, nd=1):
    return "—" if v is None else f"{v:.{nd}f}"


def _grid(data: dict):
    """``(rows, cell, shapes, ms, blocks)`` of a kernels JSON: its rows (normalized), the row of each
    ``(N, K, M, impl, bits, block_size)``, the shapes in report order, the Ms and the block sizes."""
    rows = normalize(data["rows"])
    cell = {(r["N"], r["K"], r["M"], r["impl"], r["bits"], r["block_size"]): r for r in rows}
    shapes = sorted(
        {(r["N"], r["K"]) for r in rows}, key=lambda s: (SHAPE_ORDER.index(s) if s in SHAPE_ORDER else 99, s)
    )
    ms = sorted({r["M"] for r in rows})
    blocks = sorted({r["block_size"] for r in rows if r["block_size"] is not None})
    return rows, cell, shapes, ms, blocks


def forward_tables(data: dict) -> list[str]:
    rows, cell, shapes, ms, blocks = _grid(data)
    lines = []
    for blk in blocks:
        lbits = sorted({r["bits"] for r in rows if r["impl"] == "lords" and r["block_size"] == blk}, reverse=True)
        cols = (
            [("fp16", 16, None)]
            + [(p, 4, blk) for p in PEERS]
            + [("lords", b, blk) for b in lbits]
            + [("floor", 4, blk)]
        )
        head = [("fp16" if i == "fp16" else f"lords {b}b" if i == "lords" else i) for i, b, _ in cols]
        lines += [
            f"## Block size {blk}",
            "",
            f"bnb NF4 blocksize {blk}, gemlite group {blk}, LoRDS at the parity rank of block {blk}; fp16 is the "
            "same in every table. µs, eager / graph (cold L2); the floor is the 4-bit memory floor at this "
            "block's scale bytes (a decode bound; at M ≥ 256 the work is compute-bound and it says little). "
            "Last columns: LoRDS 4-bit speed-up (graph) over fp16 and over bnb NF4 at the same block.",
            "",
            "| N×K | M | " + " | ".join(head) + " | ×fp16 | ×bnb |",
            "|---|---|" + "---|" * (len(cols) + 2),
        ]
        for N, K in shapes:
            for M in ms:
                vals = []
                for impl, b, bk in cols:
                    r = cell.get((N, K, M, impl, b, bk))
                    if r is None:
                        vals.append("—")
                    elif impl == "floor":
                        vals.append(_fmt(r["us_graph"]))
                    else:
                        vals.append(f"{_fmt(r['us'])} / {_fmt(r['us_graph'])}")
                if all(v == "—" for v in vals[:-1]):
                    continue
                l4 = cell.get((N, K, M, "lords", 4, blk))
                ref = [cell.get((N, K, M, "fp16", 16, None)), cell.get((N, K, M, "bnb_nf4", 4, blk))]
                sp = [
                    f"{r['us_graph'] / l4['us_graph']:.2f}" if r and l4 and r["us_graph"] and l4["us_graph"] else "—"
                    for r in ref
                ]
                lines.append(f"| {N}×{K} | {M} | " + " | ".join(vals) + f" | {sp[0]} | {sp[1]} |")
        lines.append("")
    return lines


def backward_table(data: dict) -> list[str]:
    rows = normalize(data["rows"])
    keys = sorted({(r["impl"], r["block_size"]) for r in rows}, key=lambda k: (k[0] != "fp16", k[1] or 0, k[0]))
    cell = {(r["N"], r["K"], r["M"], r["impl"], r["block_size"]): r for r in rows}
    cells = sorted({(r["N"], r["K"], r["M"]) for r in rows})
    lines = [
        "## Backward",
        "",
        f"{data.get('method', '')}. µs of forward + backward (fp16: dx and dW; lords: dx, dB, dA; lords_peft: dB, dA).",
        "",
        "| N×K | M | " + " | ".join(i if b is None else f"{i} @{b}" for i, b in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for N, K, M in cells:
        vals = [cell.get((N, K, M, i, b)) for i, b in keys]
        lines.append(
            f"| {N}×{K} | {M} | " + " | ".join("—" if v is None else _fmt(v["us_fwd_bwd"]) for v in vals) + " |"
        )
    return lines + [""]


def render(path_json: str, out_dir: str, backward_json: str | None = None) -> None:
    """``kernels.md`` (+ ``kernels.png`` when matplotlib imports) from ``path_json``; the backward section from
    ``backward_json`` (default: ``kernels_backward.json`` beside ``path_json``, if it exists)."""
    with open(path_json) as fh:
        data = json.load(fh)
    bw = data.get("bandwidth_TBps")
    lines = [
        f"# Linear-layer timings on {data['device']}",
        "",
        f"Copy bandwidth measured in the same run: {_fmt(bw, 2)} TB/s. {data['method']}.",
        f"torch {data.get('torch')}, triton {data.get('triton')}. Missing peers: "
        f"{', '.join(data.get('missing_peers') or {}) or 'none'}."
        + (f" Stopped early: {data['stopped']}." if data.get("stopped") else "")
        + (f" Errors: {len(data['errors'])} (in the JSON)." if data.get("errors") else ""),
        "",
    ]
    lines += forward_tables(data)
    backward_json = backward_json or os.path.join(os.path.dirname(path_json), "kernels_backward.json")
    if os.path.exists(backward_json):
        with open(backward_json) as fh:
            lines += backward_table(json.load(fh))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "kernels.md"), "w") as fh:
        fh.write("\n".join(lines).rstrip() + "\n")
    plot(data, os.path.join(out_dir, "kernels.png"))


def plot(data: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    rows, cell, shapes, ms, blocks = _grid(data)
    fig, axes = plt.subplots(
        len(blocks), len(shapes), figsize=(4.2 * len(shapes), 3.4 * len(blocks)), sharey=True, squeeze=False
    )

    def label_of(impl, b):
        return f"lords {b}-bit" if impl == "lords" else ("4-bit memory floor" if impl == "floor" else impl)

    order = sorted({(r["impl"], r["bits"]) for r in rows}, key=lambda s: (s[0] == "floor", s[0], -s[1]))
    colours = {label_of(*s): "k" if s[0] == "floor" else f"C{i}" for i, s in enumerate(order)}  # one per series
    for i, blk in enumerate(blocks):
        series = [s for s in order if any(r["block_size"] == blk and (r["impl"], r["bits"]) == s for r in rows)]
        for ax, (N, K) in zip(axes[i], shapes):
            for impl, b in series:
                pts = []
                for M in ms:
                    f16, r = cell.get((N, K, M, "fp16", 16, None)), cell.get((N, K, M, impl, b, blk))
                    if f16 and r and f16["us_graph"] and r["us_graph"] and (impl != "floor" or M <= 64):
                        pts.append((M, f16["us_graph"] / r["us_graph"]))  # the floor bounds decode, not prefill
                if pts:
                    label = label_of(impl, b)
                    ax.plot(
                        *zip(*pts),
                        marker="o",
                        label=label,
                        color=colours[label],
                        linestyle="--" if impl == "floor" else "-",
                    )
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_title(f"{N}×{K}, block {blk}", fontsize=9)
            ax.set_xlabel("M (tokens)")
        axes[i][0].set_ylabel("speed-up over cuBLAS fp16\n(graph, cold L2)")
        axes[i][-1].legend(fontsize=7)
    fig.suptitle(data["device"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_decode(data: dict, out_dir: str) -> str:
    """``decode.md`` from ``decode.json``'s content (rows grouped by step: each batch, then the prefill)."""
    rows = []
    for r in data["rows"]:
        r = dict(r)
        if "block_size" not in r and "error" not in r:  # written before rows carried it: block 64 only
            r["block_size"] = None if r["kind"] == "fp16" else 64
        rows.append(r)
    ok = [r for r in rows if "error" not in r]
    steps = list(dict.fromkeys(r["batch"] for r in ok))
    ref = {(r["kind"], r.get("block_size"), r["batch"]): r for r in ok}
    shape = data.get("shape")
    dims = (
        "Llama-3-8B-shaped"
        if not shape
        else f"Llama-shaped (hidden {shape['hidden']}, MLP {shape['inter']}, {shape['heads']} query / "
        f"{shape['kv_heads']} KV heads of {shape['head_dim']}, vocabulary {shape['vocab']})"
    )
    lines = [
        f"# End-to-end decode and prefill on {data['device']}",
        "",
        f"{data['layers']} {dims} layers, decode context {data['ctx']}"
        + (f", prefill {data['prefill_tokens']} tokens (batch 1)" if data.get("prefill_tokens") else "")
        + f". {data['method']}.",
        "",
    ]
    if data.get("missing_peers"):
        lines += [f"Missing peers: {', '.join(data['missing_peers'])}.", ""]
    if data.get("errors"):
        lines += ["Not measured: " + "; ".join(f"{k}: {v[:120]}" for k, v in data["errors"].items()) + ".", ""]
    if data.get("stopped"):
        lines += [f"Stopped early: {data['stopped']}.", ""]
    bad = [f"{r['kind']}@{r.get('block_size')} {r['batch']}" for r in ok if r.get("finite") is False]
    if bad:
        lines += [f"Non-finite logits (timing kept; random weights overflowed fp16): {', '.join(bad)}.", ""]
    lines += [
        "| step | linears | block | ms/step (min–max) | tokens/s | GB/s | peak GiB | × fp16 | × bnb NF4 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for st in steps:
        for r in (r for r in ok if r["batch"] == st):
            f16, bnb = ref.get(("fp16", None, st)), ref.get(("bnb_nf4", r.get("block_size"), st))
            sp = r.get("step_ms_spread")
            ms = f"{r['step_ms']:.3f}" + (f" ({sp[0]:.3f}–{sp[1]:.3f})" if sp else "")
            peak = r.get("peak_mem_bytes")
            cells = [
                "prefill" if st == "prefill" else f"batch {st}",
                r["kind"],
                str(r.get("block_size") or "—"),
                ms,
                f"{r['tokens_per_s']:.1f}",
                f"{r['GB_per_s']:.0f}",
                "—" if peak is None else f"{peak / 2**30:.2f}",
                f"{r['tokens_per_s'] / f16['tokens_per_s']:.2f}" if f16 else "—",
                f"{r['tokens_per_s'] / bnb['tokens_per_s']:.2f}" if bnb else "—",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "decode.md"), "w") as fh:
        fh.write(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dir",
        default=os.path.join("outputs", "reports"),
        help="folder holding kernels.json (and kernels_backward.json, decode.json); outputs go there",
    )
    args = p.parse_args(argv)
    kernels = os.path.join(args.dir, "kernels.json")
    if os.path.exists(kernels):
        render(kernels, args.dir)
        print("wrote", os.path.join(args.dir, "kernels.md"))
    decode = os.path.join(args.dir, "decode.json")
    if os.path.exists(decode):
        with open(decode) as fh:
            render_decode(json.load(fh), args.dir)
        print("wrote", os.path.join(args.dir, "decode.md"))


if __name__ == "__main__":
    main()
