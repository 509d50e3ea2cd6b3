"""QAT rows of the tables: the Hydra ``qat`` stage run on a row's quant config, with the training text, token budget
and learning rates of the table's ``qat`` section; the trained, converted model comes back for the table's
evaluation, with its training and validation curves (Lightning's CSV log, or wandb offline where it is installed).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from lords_pipelines.tables.rows import Row, overrides


def qat_overrides(spec, row: Row, out: Path) -> list[str]:
    """The ``qat`` stage's overrides for ``row``: its quant group and the table's training budget."""
    q = spec.qat
    steps = q.tokens // (q.window * q.batch_size)
    gpu = torch.cuda.is_available()
    return [
        *overrides(spec, row),
        f"model.name={spec.model}",
        f"out_dir={out}",
        "stage.save=false",
        f"stage.lr_weight={q.lr_weight}",
        f"stage.lr_scale={lr_scale(spec, row)}",
        f"stage.scale_step={scale_step(spec, row)}",
        f"data.calib_source={q.source}",
        f"data.train_tokens={q.distinct_tokens}",
        f"data.window={q.window}",
        f"data.batch_size={q.batch_size}",
        f"trainer={'gpu' if gpu else 'cpu'}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={min(q.val_every, steps)}",
        f"trainer.log_every_n_steps={q.log_every}",
        "trainer.limit_val_batches=1.0",
        f"logger={q.logger}",
        "eval.perplexity_tokens=0",
        "eval.tasks=[]",
    ]


def lr_scale(spec, row: Row) -> float:
    """The scale learning rate of ``row``: its method's ``lr_scale`` where it sets one, else the table's."""
    return spec.method_defs[row.method].get("lr_scale", spec.qat.lr_scale)


def scale_step(spec, row: Row) -> str:
    """The scale step rule of ``row`` (``lords.scale_steps``): its method's ``scale_step`` where it sets one, else the
    table's (``per_factor`` when the table names none)."""
    return spec.method_defs[row.method].get("scale_step", spec.qat.get("scale_step", "per_factor"))


def curves(out: Path) -> dict[str, list[tuple[int, float]]]:
    """``{"train/loss": [(step, value)], "val/loss": [...]}`` from the run's last Lightning CSV log (empty without one)."""
    found: dict[str, list] = {"train/loss": [], "val/loss": []}
    versions = sorted(out.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in versions[-1:]:  # a run killed and rerun logs again from step 0: the last attempt is the curve
        with path.open() as f:
            for rec in csv.DictReader(f):
                for key in found:
                    if rec.get(key):
                        found[key].append((int(rec["step"]), float(rec[key])))
    return found


def run_qat(spec: DictConfig, row: Row, out: Path) -> tuple[nn.Module, dict]:
    """``(converted model, record fields)`` of one QAT row."""
    from lords_pipelines.stages import qat
    from lords_pipelines.stages.launch import compose
    from lords_pipelines.stages.settings import settings_from_cfg

    s = settings_from_cfg(compose("qat", qat_overrides(spec, row, out)))
    metrics, extra = qat.run(s)
    q = spec.qat
    steps = metrics["train_steps"]
    fields = {
        "train_steps": steps,
        "train_tokens": steps * q.window * q.batch_size,
        "train_source": q.source,
        "train_distinct_tokens": q.distinct_tokens,
        "train_seconds": metrics["train_seconds"],
        "train_tokens_per_s": metrics.get("train_tokens_per_s"),
        "trainable_floats": metrics["trainable_floats"],
        "lr_weight": q.lr_weight,
        "lr_scale": lr_scale(spec, row),
        "scale_step": scale_step(spec, row),
        "curves": curves(out),
        "config": s.quant.to_dict(),
    }
    return extra["model"], fields
