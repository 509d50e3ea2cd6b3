"""``make reproduce-peft``: LoRDS PEFT against QLoRA at matched trainable floats on the embedded SmolLM2-135M.

    python -m lords_pipelines.tables.peft_report            # → outputs/reports/peft_smollm2.{md,json,png}

Runs the Hydra sweep ``python -m lords_pipelines.stages.peft --multirun experiment=peft_smollm2_lords,peft_smollm2_qlora``
(one process, wandb offline), then aggregates its two ``metrics.json`` into the committed report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lords_pipelines.stages.aggregate import aggregate

EXPERIMENTS = "peft_smollm2_lords,peft_smollm2_qlora"


def note(rows: list[dict], seconds: float, settings: dict) -> str:
    t, d, q = settings["trainer"], settings["data"], settings["quant"]
    pairs = sum(1 for line in open(d["finetune_source"]) if line.strip())
    floats = sorted({r.get("trainable_floats") for r in rows})
    return (
        f"Both start from `{settings['model']['name']}` at {q['bits']} bits, block {q['block_size']}, every decoder "
        "linear quantized (lm_head kept in float): LoRDS from its SVD init (no PTQ refinement), QLoRA from "
        "bitsandbytes NF4 (`Linear4bit`, fp32 absmax). LoRDS trains only B, A (the model stays Q ⊙ BA, nothing merged); "
        "QLoRA trains an additive LoRA (peft's 4-bit LoRA layer) whose rank per layer is LoRDS's parity rank, so both train "
        f"{', '.join(f'{f:,}' for f in floats)} floats. Task: the Unicode name of a Latin letter "
        f"(`{d['finetune_source']}`, {pairs - d['val_items']} training pairs, {d['val_items']} held out), loss on "
        f"answers only; AdamW, {t['max_steps']} steps of batch {d['batch_size']}, lr {settings['stage']['lr']}. "
        "`answer_nll` / `answer_exact`: mean answer-token NLL and the share of held-out pairs whose every answer token "
        "is the greedy next token, after training (`before/…`: the quantized model before training); "
        "`lords_unicode/acc`: lm-eval 4-way multiple choice on the same held-out letters; `ppl`: perplexity on "
        "the first tokens of the shipped licence texts (forgetting check). SmolLM2's weights come from a Q4_1 GGUF: "
        "a 4-bit base is biased towards grids that contain the original 4-bit points (NF4's fixed grid more than "
        "LoRDS's continuous scales). One seed; small held-out set: differences of a few points are noise. "
        "`train_seconds` depends on what else ran on the machine at the time: it is not a speed comparison. "
        f"Wall time {seconds / 60:.1f} min on {os.cpu_count()} CPU cores shared with another job ({platform.machine()})."
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep-dir", default="outputs/sweeps/peft_smollm2")
    p.add_argument("--out", default="outputs/reports/peft_smollm2")
    p.add_argument("--render", action="store_true", help="only re-aggregate an existing sweep (no training)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for both runs (e.g. trainer.max_steps=5)")
    args = p.parse_args(argv)
    sweep = Path(args.sweep_dir)
    if not args.render:
        shutil.rmtree(sweep, ignore_errors=True)
        start = time.time()
        cmd = [
            sys.executable,
            "-m",
            "lords_pipelines.stages.peft",
            "--multirun",
            f"experiment={EXPERIMENTS}",
            f"hydra.sweep.dir={sweep}",
            *args.overrides,
        ]
        subprocess.run(cmd, check=True, env=dict(os.environ, WANDB_MODE=os.environ.get("WANDB_MODE", "offline")))
        (sweep / "wall_seconds.json").write_text(json.dumps(time.time() - start))
    seconds = json.loads((sweep / "wall_seconds.json").read_text())
    first = json.loads(next(sweep.rglob("metrics.json")).read_text())["settings"]
    rows = aggregate(sweep)["rows"]
    result = aggregate(
        sweep, args.out, "PEFT on SmolLM2-135M: LoRDS vs QLoRA at matched trainable floats", note(rows, seconds, first)
    )
    print(result["markdown"].read_text())


if __name__ == "__main__":
    main()
