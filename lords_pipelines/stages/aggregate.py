"""Turn a sweep (every ``metrics.json`` under a directory) into one markdown table, a JSON list and a plot.

    python -m lords_pipelines.stages.aggregate outputs/sweeps/ptq/2026-01-01_12-00-00      # writes summary.{md,json,png}

Runs automatically at the end of every ``--multirun`` (``AggregateCallback`` in ``conf/config.yaml``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

KEYS = ("model", "stage", "method", "bits", "block_size", "grid", "refine")
ORDER = (
    "weight_rel_error",
    "float_params",
    "code_bits",
    "bits_per_weight",
    "ppl",
    "fp_ppl",
    "answer_nll",
    "answer_exact",
    "trainable_floats",
    "quant_seconds",
    "train_seconds",
)


def load_rows(root: Path) -> list[dict[str, Any]]:
    """One flat row per run: its identifying settings, then its numeric metrics."""
    rows = []
    for path in sorted(root.rglob("metrics.json")):
        rec = json.loads(path.read_text())
        s, m = rec["settings"], rec["metrics"]
        q, st = s["quant"] or {"method": "float", "bits": 16}, s["stage"]
        leaf = q.get("base", q)  # mixed precision: the fields of its base config
        refine = leaf.get("refine")
        method = q["method"] if st["name"] != "peft" else f"{st['method']}-peft"
        row = {
            "model": s["model"]["name"],
            "stage": st["name"],
            "method": method,
            "bits": q["bits"],
            "block_size": leaf.get("block_size", ""),
            "grid": leaf.get("grid", ""),
            "refine": "" if not refine else f"{refine['objective']}×{refine['steps']}",
            "run": path.parent.name,
        }
        row.update({k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["stage"], r["method"], -float(r["bits"]), str(r["block_size"])))
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(rows: list[dict[str, Any]], title: str, note: str | None = None) -> str:
    metrics = [k for k in ORDER if any(k in r for r in rows)]
    # lm-eval task/metric columns and before/after pairs (item counts stay in the JSON).
    metrics += sorted({k for r in rows for k in r if "/" in k and not k.endswith("_items")})
    cols = list(KEYS) + metrics
    if note is None and any("fp_ppl" in r for r in rows):
        note = (
            "`fp_ppl`: the same model in float on the same tokens (the reference every `ppl` is read against; "
            "a random tiny model scores near its vocabulary size either way)."
        )
    lines = [
        f"# {title}",
        "",
        *([note, ""] if note else []),
        f"{len(rows)} runs.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, metric: str | None = None) -> Path | None:
    """Sweeps over bits: ``metric`` (perplexity, else weight error) against bits, a line per model/method/block.
    Fine-tuning runs (``answer_nll`` present): held-out answer NLL before and after training, a bar pair per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if all("answer_nll" in r for r in rows):
        labels = [f"{r['model']} {r['method']} b{r['block_size']}" for r in rows]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r.get("before/answer_nll", float("nan")) for r in rows], 0.4, label="before")
        ax.bar([i + 0.2 for i in x], [r["answer_nll"] for r in rows], 0.4, label="after")
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_ylabel("held-out answer NLL (nats/token)")
    else:
        metric = metric or next((k for k in ("ppl", "weight_rel_error") if any(k in r for r in rows)), None)
        if metric is None:
            plt.close(fig)
            return None
        lines: dict[str, list] = {}
        for r in rows:
            if metric in r:
                label = f"{r['model']} {r['method']} {r['refine']} b{r['block_size']}".replace("  ", " ")
                lines.setdefault(label, []).append((float(r["bits"]), r[metric]))
        for label, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel("bits per weight (codes)")
        ax.set_ylabel(metric)
        values = [v for pts in lines.values() for _, v in pts]
        if metric == "ppl" and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def aggregate(
    root: str | Path, out: str | Path | None = None, title: str | None = None, note: str | None = None
) -> dict[str, Any]:
    """Write ``<out>.md``, ``<out>.json`` and ``<out>.png`` (default ``<root>/summary``); returns paths and rows."""
    root = Path(root)
    out = Path(out) if out else root / "summary"
    rows = load_rows(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = out.with_suffix(".md")
    md.write_text(markdown(rows, title or f"Sweep {root.name}", note))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    png = plot(rows, out.with_suffix(".png")) if rows else None
    return {"rows": rows, "markdown": md, "json": out.with_suffix(".json"), "plot": png}


class AggregateCallback(Callback):
    """Hydra callback: aggregate the sweep directory when a --multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        result = aggregate(config.hydra.sweep.dir)
        print(f"aggregated {len(result['rows'])} runs → {result['markdown']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="a sweep directory (searched recursively for metrics.json)")
    p.add_argument("--out", default=None, help="output path without suffix (default <root>/summary)")
    p.add_argument("--title", default=None)
    p.add_argument("--note", default=None, help="a paragraph printed under the title (what, how, caveats)")
    args = p.parse_args(argv)
    result = aggregate(args.root, args.out, args.title, args.note)
    print(result["markdown"].read_text())


if __name__ == "__main__":
    main()
