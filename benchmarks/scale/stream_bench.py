"""Peak memory of streamed PTQ against PTQ in memory, on a random Llama saved as shards (random weights: memory and
time only, not quality).

    python -m benchmarks.scale.stream_bench                     # → outputs/reports/stream_memory.{json,md}
    python -m benchmarks.scale.stream_bench --hidden 4096 --intermediate 14336 --layers 4 --device cuda

Each variant runs in its own process (peak resident memory, or peak CUDA memory, is per process): ``memory``
loads the whole float model and calls ``lords.quantize_``; ``streamed`` calls ``lords.quantize_streamed``. Both use
the same config (LoRDS, block 64, act_diag refinement) and calibration tokens.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _config(steps: int):
    import lords

    return lords.LordsConfig(
        bits=3,
        block_size=64,
        calib_tokens=2048,
        sample_tokens=0,
        refine=lords.RefineConfig(steps=steps, lr=1e-2, objective="act_diag"),
    )


def _child(args) -> None:
    import torch

    import lords

    ids = torch.randint(0, args.vocab, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    start = time.time()
    if args.variant == "memory":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=getattr(torch, args.dtype)).to(args.device)
        lords.quantize_(model, _config(args.steps), calib_ids=ids, progress=False)
    else:
        lords.quantize_streamed(
            args.folder,
            _config(args.steps),
            Path(args.folder) / "journal",
            ids,
            device=args.device,
            dtype=getattr(torch, args.dtype),
            progress=True,
        )
    peak = (
        torch.cuda.max_memory_allocated()
        if args.device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        json.dumps(
            {
                "variant": args.variant,
                "peak_bytes": peak,
                "seconds": time.time() - start,
                "seconds_per_block": (time.time() - start) / args.layers,
                "gpu": gpu,
            }
        )
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=None, help="attention heads (default hidden / 64)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default heads / 4)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="+", default=["memory", "streamed"], choices=["memory", "streamed"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="saved weights and blocks")
    p.add_argument("--out", default="outputs/reports/stream_memory")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        return _child(args)
    from lords_pipelines.models import tiny_llama

    with tempfile.TemporaryDirectory() as folder:
        heads = args.heads or args.hidden // 64
        model = tiny_llama(
            seed=0,
            hidden=args.hidden,
            layers=args.layers,
            heads=heads,
            kv_heads=args.kv_heads or max(heads // 4, 1),
            intermediate=args.intermediate,
            vocab=args.vocab,
            max_positions=max(args.tokens, 2048),
        )
        params = sum(p.numel() for p in model.parameters())
        import torch

        model.to(getattr(torch, args.dtype)).save_pretrained(folder, max_shard_size="2GB")
        del model
        rows = []
        for variant in args.variants:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.scale.stream_bench",
                "--variant",
                variant,
                "--folder",
                folder,
                *[
                    f"--{k.replace('_', '-')}={v}"
                    for k, v in vars(args).items()
                    if k not in ("variant", "folder", "out", "variants") and v is not None
                ],
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    float_bytes = params * 4
    lines = [
        f"# Peak memory: PTQ in memory vs streamed ({args.device})",
        "",
        f"Random Llama, hidden {args.hidden}, intermediate {args.intermediate}, {args.layers} layers, vocab "
        f"{args.vocab}: {params / 1e6:.0f}M parameters ({float_bytes / 2**30:.2f} GiB in float32). LoRDS 3 bits, "
        f"block 64, act_diag × {args.steps}, {args.tokens} calibration tokens. Peak "
        f"{'CUDA memory' if args.device == 'cuda' else 'resident memory of the process'}.",
        "",
        "| variant | peak GiB | × float model | seconds | seconds per block |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['peak_bytes'] / 2**30:.2f} | {r['peak_bytes'] / float_bytes:.2f} | "
            f"{r['seconds']:.1f} | {r['seconds_per_block']:.1f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(vars(args), params=params, rows=rows), indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
