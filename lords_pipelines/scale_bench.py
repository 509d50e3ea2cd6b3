"""QAT and PEFT training throughput on 1 and N GPUs through Lightning's DDP or FSDP (issue 18's scaling goal).

    python -m lords_pipelines.scale_bench --devices 1 2      # → outputs/reports/scale_ddp.{json,md}
    python -m lords_pipelines.scale_bench --strategy fsdp --out outputs/reports/scale_fsdp

A random Llama of about 1.1B parameters (hidden 2048, 24 layers, MLP 5632; random weights and the offline 512-token
tokenizer: speed only, not quality), LoRDS 3 bits at block 64. Each run is the real stage (``python -m
lords_pipelines.qat`` / ``peft``) with ``trainer=gpu trainer.strategy=ddp trainer.devices=N``, the per-device batch
fixed (so the global batch grows with N); the metric is the stage's steady-state ``train_tokens_per_s`` (all ranks,
after 5 warm-up steps).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = ["model=tiny-llama", "model.tiny.hidden=2048", "model.tiny.layers=24", "model.tiny.heads=16",
         "model.tiny.kv_heads=4", "model.tiny.intermediate=5632"]
COMMON = ["trainer=gpu", "logger=none", "quant.bits=3", "quant.refine=null",
          "eval.perplexity_tokens=0", "stage.save=false", "trainer.checkpoint_every_n_steps=100000",
          "trainer.limit_val_batches=0"]
WINDOWS = ["data.train_tokens=1048576", "data.window=512", "data.batch_size=8"]
# Both stages train on the same packed 512-token windows (PEFT as domain adaptation): the same tokens per step,
# so the two speedups compare. PEFT on short pairs (32 × ≤ 64 tokens a step) measured 0.94× on 2 GPUs.
STAGES = {"qat": WINDOWS, "peft": ["stage.data=calib", *WINDOWS]}
WORKLOAD = "packed 512-token windows, 8 per GPU a step"


def run_stage(stage: str, devices: int, steps: int, strategy: str = "ddp") -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", f"lords_pipelines.{stage}", *MODEL, *COMMON, *STAGES[stage], f"trainer.strategy={strategy}",
               f"trainer.devices={devices}", f"trainer.max_steps={steps}", f"out_dir={out}", f"hydra.run.dir={out}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{stage} on {devices} GPU(s) failed:\n{done.stderr[-3000:]}")
        metrics = json.loads((Path(out) / "metrics.json").read_text())["metrics"]
    return {"stage": stage, "devices": devices, "steps": steps, "workload": WORKLOAD, "tokens_per_s": metrics["train_tokens_per_s"],
            "train_seconds": metrics["train_seconds"], "trainable_floats": metrics["trainable_floats"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    p.add_argument("--out", default="outputs/reports/scale_ddp")
    args = p.parse_args(argv)
    import torch

    rows = []
    for stage in args.stages:
        for n in args.devices:
            rows.append(run_stage(stage, n, args.steps, args.strategy) | {"strategy": args.strategy})
            print(json.dumps(rows[-1]), flush=True)
    lines = [f"# Training throughput under {args.strategy.upper()} ({torch.cuda.get_device_name()} × {max(args.devices)})", "",
             "Random Llama, hidden 2048, 24 layers, MLP 5632 (~1.1B parameters), LoRDS 3 bits block 64; QAT on packed "
             "512-token windows (8 per GPU), PEFT (B, A only) on the same windows; bf16 autocast; "
             f"steady-state tokens/s over all GPUs after 5 warm-up steps, {args.steps} steps.", "",
             "| stage | GPUs | tokens/s | × one GPU | trainable floats |", "|---|---|---|---|---|"]
    for r in rows:
        one = next(x for x in rows if x["stage"] == r["stage"] and x["devices"] == min(args.devices))
        lines.append(f"| {r['stage']} | {r['devices']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tokens_per_s'] / one['tokens_per_s']:.2f} | {r['trainable_floats']:,} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
