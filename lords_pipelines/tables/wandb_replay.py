"""Replay the training curves a table recorded into offline wandb runs, one run per trained row.

    python -m lords_pipelines.tables.wandb_replay outputs/reports/tables/rows/qat.jsonl --dir outputs/runs/wandb_qat
    wandb sync outputs/runs/wandb_qat/wandb/offline-run-*        # later, online

The GPU image has no wandb, so the table's QAT runs log to Lightning's CSV files and each row of the journal keeps
its curves (``train/loss``, ``val/loss`` against the optimizer step). This writes them, step by step, into an
offline wandb run per row (project ``lords``, group ``<table>-table``, job type ``qat``), with the row's settings
as config and its final metrics (perplexity per text, zero-shot mean) as summary: what a run on a machine with
wandb logs live, replayed from the record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CONFIG_KEYS = (
    "model",
    "method",
    "bits",
    "block_size",
    "rule",
    "steps",
    "rank",
    "float_params",
    "bits_per_weight",
    "train_steps",
    "train_tokens",
    "train_source",
    "lr_weight",
    "lr_scale",
    "device",
    "torch",
)


def history(curves: dict[str, list]) -> list[tuple[int, dict[str, float]]]:
    """``[(step, {metric: value})]`` in step order, the metrics of one step together (wandb wants steps rising)."""
    by_step: dict[int, dict[str, float]] = {}
    for metric, points in curves.items():
        for step, value in points:
            by_step.setdefault(int(step), {})[metric] = float(value)
    return sorted(by_step.items())


def summary(row: dict) -> dict[str, float]:
    out = {f"ppl/{text}": v for text, v in (row.get("ppl") or {}).items()}
    out.update({k: v for k, v in row.items() if k.endswith("/acc") or k == "weight_rel_error"})
    return out


def replay(rows: list[dict], out: Path, table: str) -> list[str]:
    """One offline run per row with curves; returns the run ids."""
    import wandb

    ids = []
    for row in rows:
        curves = row.get("curves") or {}
        if not any(curves.values()):
            continue
        run = wandb.init(
            project="lords",
            group=f"{table}-table",
            job_type="qat",
            name=row["key"],
            dir=str(out),
            mode="offline",
            config={k: row.get(k) for k in CONFIG_KEYS if k in row},
            reinit="create_new",
        )
        for step, metrics in history(curves):
            run.log(metrics, step=step)
        run.summary.update(summary(row))
        ids.append(run.id)
        run.finish()
    # finish() can return before wandb's service has written the run's file (seen in 1 of ~30 replays of one run:
    # the file held its 7-byte header alone); teardown waits for the service, so the files are whole on return.
    wandb.teardown()
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", help="a table's rows journal (outputs/reports/tables/rows/<table>.jsonl)")
    p.add_argument("--dir", default="outputs/runs/wandb_tables", help="wandb's dir (runs under <dir>/wandb/)")
    args = p.parse_args(argv)
    path = Path(args.rows)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = replay(rows, out, path.stem)
    print(f"{len(ids)} offline runs under {out / 'wandb'} (wandb sync {out / 'wandb'}/offline-run-*)")


if __name__ == "__main__":
    main()
