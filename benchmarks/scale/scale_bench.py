"""QAT and PEFT training throughput on 1 and N GPUs through Lightning's DDP or FSDP.

    python -m benchmarks.scale.scale_bench --devices 1 2                    # → outputs/reports/scale_train.{json,md}
    python -m benchmarks.scale.scale_bench --devices 1 2 --strategy fsdp    # appends its rows to the same report
    python -m benchmarks.scale.scale_bench --render                         # redraws the markdown from the JSON

A random Llama of about 1.1B parameters (hidden 2048, 24 layers, MLP 5632; random weights and the offline 512-token
tokenizer: speed only, not quality), LoRDS 3 bits at block 64. Each run is the real stage (``python -m
lords_pipelines.stages.qat`` / ``peft``) with ``trainer=gpu trainer.strategy=ddp trainer.devices=N``, the per-device batch
fixed (so the global batch grows with N); the metric is the stage's steady-state ``train_tokens_per_s`` (all ranks,
after 5 warm-up steps).

Every row is appended to the JSON the moment it is measured (a device call cut by its time limit keeps what it
measured), labelled with its ``run`` (date, hour and GPU) and the GPUs' link (``nvidia-smi topo -m``: ``NV18`` is NVLink,
``SYS``/``PHB``/``NODE`` go through PCIe/the host). QAT's gradient (1.1B floats) all-reduces in 12.8 ms over an
H200 pair's NVLink (``allreduce_bench``), a few percent of a step: the link was expected to decide the speedup and
over NVLink it does not.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.scale.cost_model import DDP_1B

MODEL = [
    "model=tiny-llama",
    f"model.tiny.hidden={DDP_1B.hidden}",
    f"model.tiny.layers={DDP_1B.layers}",
    f"model.tiny.heads={DDP_1B.heads}",
    f"model.tiny.kv_heads={DDP_1B.kv_heads}",
    f"model.tiny.intermediate={DDP_1B.intermediate}",
]
COMMON = [
    "trainer=gpu",
    "logger=none",
    "quant.bits=3",
    "quant.refine=null",
    "eval.perplexity_tokens=0",
    "stage.save=false",
    "trainer.checkpoint_every_n_steps=100000",
    "trainer.limit_val_batches=0",
]
BATCH, WINDOW = 8, 512  # windows per GPU a micro-batch, tokens a window
WINDOWS = ["data.train_tokens=1048576", f"data.window={WINDOW}", f"data.batch_size={BATCH}"]
# Both stages train on the same packed windows (PEFT as domain adaptation): the same tokens per step, so the two
# speedups compare.
STAGES = {"qat": WINDOWS, "peft": ["stage.data=calib", *WINDOWS]}
_PER_GPU = f"packed {WINDOW}-token windows, {BATCH} per GPU"
WORKLOAD = f"{_PER_GPU} a step"


def gpu_link() -> str | None:
    """The link between GPU 0 and GPU 1 as ``nvidia-smi topo -m`` names it (``NV18``, ``PHB``, ``SYS``...); None
    without two GPUs or without nvidia-smi."""
    try:
        text = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return link_of(text)


def link_of(topo: str) -> str | None:
    """GPU 0's link to GPU 1 in ``nvidia-smi topo -m``'s matrix (its header row also starts with ``GPU0``)."""
    for line in topo.splitlines():
        cells = line.split()
        if len(cells) > 2 and cells[0] == "GPU0" and cells[1] == "X":
            return cells[2]  # GPU0's row: its name, X (itself), its link to GPU1
    return None


def workload(accumulate: int) -> str:
    return WORKLOAD if accumulate == 1 else f"{_PER_GPU} a micro-batch, {accumulate} micro-batches a step"


def run_stage(stage: str, devices: int, steps: int, strategy: str = "ddp", accumulate: int = 1) -> dict:
    """One stage on ``devices`` GPUs; ``accumulate`` micro-batches an optimizer step (the gradient reduced once a
    step, so its cost spreads over more tokens)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            f"lords_pipelines.stages.{stage}",
            *MODEL,
            *COMMON,
            *STAGES[stage],
            f"trainer.strategy={strategy}",
            f"trainer.devices={devices}",
            f"trainer.max_steps={steps}",
            f"trainer.accumulate_grad_batches={accumulate}",
            f"out_dir={out}",
            f"hydra.run.dir={out}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{stage} on {devices} GPU(s) failed:\n{done.stderr[-3000:]}")
        metrics = json.loads((Path(out) / "metrics.json").read_text())["metrics"]
    return {
        "stage": stage,
        "devices": devices,
        "steps": steps,
        "workload": workload(accumulate),
        "tokens_per_s": metrics["train_tokens_per_s"],
        "train_seconds": metrics["train_seconds"],
        "trainable_floats": metrics["trainable_floats"],
        "peak_gpu_bytes": metrics.get("peak_gpu_bytes"),
    }


def pairs(rows: list[dict]) -> list[dict]:
    """Each multi-GPU row with its one-GPU partner: the nearest earlier one-GPU row of the same (run, strategy, stage,
    workload), since a bench call measures 1 GPU and then N (an earlier, unpaired one-GPU row of the same label was
    cut from its own pair)."""

    def key(x):
        return x["run"], x["strategy"], x["stage"], x["workload"]

    out = []
    for i, r in enumerate(rows):
        if r["devices"] == 1:
            continue
        one = next((x for x in reversed(rows[:i]) if key(x) == key(r) and x["devices"] == 1), None)
        if one is not None:
            out.append(
                {
                    "run": r["run"],
                    "strategy": r["strategy"],
                    "stage": r["stage"],
                    "workload": r["workload"],
                    "devices": r["devices"],
                    "link": r.get("link"),
                    "speedup": r["tokens_per_s"] / one["tokens_per_s"],
                    "tokens_per_s_1gpu": one["tokens_per_s"],
                    "tokens_per_s": r["tokens_per_s"],
                }
            )
    return out


def _gib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**30:.1f}"


def render(rows: list[dict]) -> str:
    lines = [
        "# Training throughput on 1 and 2 GPUs under DDP and FSDP",
        "",
        "Random Llama, hidden 2048, 24 layers, MLP 5632 (~1.1B parameters), LoRDS 3 bits block 64; QAT trains the "
        "latent weights and the scales (1.1B floats), PEFT only B, A (16.6M floats); bf16 autocast; steady-state "
        "tokens/s over all GPUs after 5 warm-up steps, the per-GPU batch fixed. `python -m "
        "benchmarks.scale.scale_bench --devices 1 2 [--strategy fsdp]`; every row as measured, runs kept apart "
        "(a row whose partner is missing was cut by the device call's time limit).",
        "",
        "| run | strategy | stage | workload | GPUs | link | tokens/s | × one GPU | steps | peak GiB (rank 0) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    speed = {(p["run"], p["strategy"], p["stage"], p["workload"], p["devices"]): p["speedup"] for p in pairs(rows)}
    for r in rows:
        x = 1.0 if r["devices"] == 1 else speed.get((r["run"], r["strategy"], r["stage"], r["workload"], r["devices"]))
        lines.append(
            f"| {r['run']} | {r['strategy']} | {r['stage']} | {r['workload']} | {r['devices']} | "
            f"{r.get('link') or '—'} | {r['tokens_per_s']:,.0f} | {'—' if x is None else f'{x:.2f}'} | "
            f"{r['steps']} | {_gib(r.get('peak_gpu_bytes'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches an optimizer step")
    p.add_argument("--out", default="outputs/reports/scale_train", help="JSON and markdown path without suffix")
    p.add_argument("--run", help="this run's label (default: the date, the hour and the GPU's name)")
    p.add_argument("--render", action="store_true", help="only redraw the markdown from the JSON")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else []
    if not args.render:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() < max(args.devices):
            raise SystemExit(
                f"scale_bench needs {max(args.devices)} CUDA GPUs; this machine has {torch.cuda.device_count()}"
            )
        label = args.run or f"{datetime.datetime.now():%Y-%m-%d %H:%M} {torch.cuda.get_device_name()}"
        link = gpu_link()
        for stage in args.stages:
            for n in args.devices:
                rows.append(
                    run_stage(stage, n, args.steps, args.strategy, args.accumulate)
                    | {"strategy": args.strategy, "run": label, "link": link}
                )
                print(json.dumps(rows[-1]), flush=True)
                out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(render(rows))
    print(render(rows))


if __name__ == "__main__":
    main()
