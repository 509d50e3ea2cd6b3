"""Multi-GPU streamed PTQ against one GPU on a Llama-3-8B-shaped model (random weights: time and memory only).

    python -m benchmarks.scale.stream_ptq_bench --inputs float       # ~7 min on 2 H200s → outputs/reports/scale_ptq_float.{json,md}
    python -m benchmarks.scale.stream_ptq_bench --inputs quantized   # → outputs/reports/scale_ptq_quantized.{json,md}
    python -m benchmarks.scale.report                         # sets both beside the cost model in scale.md

A random Llama with ``--layers`` decoder blocks of Llama-3-8B's shapes (hidden 4096, 32 / 8 heads, MLP 14336,
vocab 128,256) is saved in bfloat16 shards; then ``lords_pipelines.stages.stream_ptq`` quantizes it (LoRDS 3 bits, block
64, calibrated Algorithm 1 at T = ``--steps``, 2,048 random calibration tokens) once per GPU count under
``torchrun --nproc-per-node N``. Each row: wall seconds of the whole call (slowest rank), seconds of the block phase
(what spreads over the GPUs; the rest, building the shell and embedding the calibration tokens, every rank pays at
once), peak CUDA memory of the largest rank, the speedups, and whether the checkpoint equals the one-GPU checkpoint
bit for bit (the SHA-256 of the per-tensor manifest in the checkpoint's ``config.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = {
    "8b": dict(hidden=4096, heads=32, kv_heads=8, intermediate=14336, vocab=128256),
    "tiny": dict(hidden=128, heads=4, kv_heads=2, intermediate=256, vocab=512),
}


def _manifest(out: Path) -> str:
    """The SHA-256 of the checkpoint's per-tensor manifest: equal manifests, equal tensors bit for bit."""
    return json.loads((out / "quantized" / "config.json").read_text())["quantization_config"]["manifest_sha256"]


def _run(folder: Path, out: Path, ranks: int, args) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "-m",
        "lords_pipelines.stages.stream_ptq",
        str(folder),
        "--out",
        str(out),
        "--inputs",
        args.inputs,
        "--steps",
        str(args.steps),
        "--calib-tokens",
        str(args.tokens),
        "--random-calib",
        "--dtype",
        "bfloat16",
        "--device",
        args.device,
        "--bits",
        "3",
        "--block-size",
        str(args.block_size),
    ]
    if args.device == "cpu":  # one BLAS thread a rank: CPU sums otherwise differ with the thread count
        cmd += ["--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{ranks} GPU(s) failed:\n{done.stderr[-4000:]}")
    return json.loads((out / "timing.json").read_text())


def _render(rows: list[dict]) -> str:
    lines = [
        "# Streamed PTQ on several GPUs",
        "",
        f"Random {rows[0]['shape']}-shaped blocks in bfloat16 ({rows[0]['layers_blocks']} blocks, random weights: "
        f"time and memory only), LoRDS 3 bits block {rows[0]['block_size']}, calibrated Algorithm 1 at "
        f"T = {rows[0]['steps']}, "
        f"{rows[0]['tokens']} calibration tokens; one process per GPU under torchrun "
        f"(`python -m benchmarks.scale.stream_ptq_bench`, {rows[0]['device']}).",
        "",
        "| inputs | GPUs | wall s | block phase s | × one GPU (wall) | × one GPU (blocks) | peak GiB | "
        "checkpoint = one GPU's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['inputs']} | {r['ranks']} | {r['seconds']:.1f} | {r['blocks_seconds']:.1f} | "
            f"{r['speedup_wall']:.2f} | {r['speedup_blocks']:.2f} | {r['peak_bytes'] / 2**30:.2f} | "
            f"{'bit for bit' if r['identical'] else 'DIFFERS'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="GPU counts; the first is the reference")
    p.add_argument("--inputs", default="float", choices=["float", "quantized"])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument(
        "--out", default=None, help="report path without suffix (default outputs/reports/scale_ptq_<inputs>)"
    )
    p.add_argument("--shape", default="8b", choices=list(SHAPES), help="tiny: a CPU smoke run of this script")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    args.block_size = 64 if args.shape == "8b" else 16
    import torch

    from lords_pipelines.models import tiny_llama

    report = Path(args.out or f"outputs/reports/scale_ptq_{args.inputs}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        model = tiny_llama(seed=0, layers=args.layers, max_positions=max(args.tokens, 2048), **SHAPES[args.shape])
        model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="2GB")
        del model
        runs = {n: _run(folder, Path(tmp) / f"out{n}", n, args) for n in args.ranks}
        ref = args.ranks[0]
        for n, t in runs.items():
            rows.append(
                {
                    "inputs": args.inputs,
                    "ranks": n,
                    "shape": {"8b": "Llama-3-8B"}.get(args.shape, args.shape),
                    "block_size": args.block_size,
                    "layers_blocks": args.layers,
                    "steps": args.steps,
                    "tokens": args.tokens,
                    "device": t["device"],
                    "seconds": t["seconds"],
                    "blocks_seconds": t["blocks_seconds"],
                    "peak_bytes": t["peak_bytes"],
                    "speedup_wall": runs[ref]["seconds"] / t["seconds"],
                    "speedup_blocks": runs[ref]["blocks_seconds"] / t["blocks_seconds"],
                    "identical": _manifest(Path(tmp) / f"out{n}") == _manifest(Path(tmp) / f"out{ref}"),
                    "per_rank": t["per_rank"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    report.with_suffix(".md").write_text(_render(rows))
    print(_render(rows))


if __name__ == "__main__":
    main()
