"""The tables' plots: perplexity against bits, steps or floats (PTQ), QAT training curves, PEFT scores and decode."""

from __future__ import annotations

import math
from pathlib import Path

from lords_pipelines.tables.peft_tasks import KINDS

PLOTTED = (
    "nf",
    "loftq",
    "nf_calibrated",
    "lords_refined",
    "lords_calibrated",
    "blockwise_refined",
    "gptq",
    "awq",
    "hqq",
    "lords_gptq",
)


def _bar(r: dict, text: str) -> tuple[float, float]:
    """(below, above) the point: ± std, or the log-perplexity's spread where the row collapsed (log axis)."""
    y = r["ppl"][text]
    if r.get("ppl_collapsed", {}).get(text):
        s = r["log_ppl_std"][text]
        return y - y * math.exp(-s), y * math.exp(s) - y
    return min(r["ppl_std"][text], 0.5 * y), r["ppl_std"][text]  # log axis: keep the bar above zero


def _series(table: str, rows: list[dict], text: str) -> dict[str, list]:
    series: dict[str, list] = {}
    for r in rows:
        if r["method"] == "fp" or (table.startswith("ptq_bits") and r["method"] not in PLOTTED):
            continue
        if table.startswith("ptq_bits"):
            label = f"{r['method']} b{r['block_size']}" + (" sensitivity" if r["rule"] == "sensitivity" else "")
            x = r["bits_per_weight"]
        else:
            label, x = r["method"], r["refine_steps"] if "refine" in table else r["float_params"]
        series.setdefault(label, []).append((x, r["ppl"][text], *_bar(r, text)))
    return series


def plot_ptq(table: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = list(rows[0]["ppl"])
    fp = next(r for r in rows if r["method"] == "fp")
    colours = {m: f"C{i}" for i, m in enumerate(PLOTTED)}
    fig, axes = plt.subplots(1, len(texts), figsize=(6.5 * len(texts), 5.5))
    for ax, text in zip(axes, texts):
        for label, pts in sorted(_series(table, rows, text).items()):
            pts.sort()
            x, y, low, high = ([p[i] for p in pts] for i in range(4))
            ax.errorbar(
                x,
                y,
                yerr=[low, high],
                marker="s" if "sensitivity" in label else "o",
                ms=4,
                capsize=2,
                label=label,
                color=colours.get(label.split()[0]),
                ls="--" if "b128" in label else "-",
            )
        ax.axhline(fp["ppl"][text], color="k", lw=0.8, ls=":", label="float")
        ax.set_yscale("log")
        ax.set_ylim(fp["ppl"][text] / 1.3, min(ax.get_ylim()[1], 1e5))
        ax.set_title(f"{text} (clipped at 1e5)")
        ax.set_xlabel(
            "Algorithm 1 steps T"
            if "refine" in table
            else "float parameters"
            if "rank" in table
            else "bits per weight (codes + scales)"
        )
        ax.set_ylabel("perplexity (log scale)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()  # one legend below the panels, clear of every curve
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) - 1) // 5), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(records: list[dict], path: Path) -> bool:
    """Training (lines) and validation (markers) loss of every QAT run against steps: one panel per bit width for the
    methods, and one per width for a learning-rate grid (runs named ``*_lr<value>``); block-wise runs dashed, one
    colour per method in every panel; False when no run has curves."""
    runs = [r for r in records if r.get("curves") and r["curves"]["train/loss"]]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def panel(r):
        return (-r["bits"], "_lr" in r["method"])

    panels = sorted({panel(r) for r in runs})
    colours = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(r["method"] for r in runs))}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.5), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for r in [r for r in runs if panel(r) == key]:
            label = r["method"] + (f" ({r['rule']})" if r["rule"] else "")
            style = "--" if not r["method"].startswith("lords") else "-"
            train, val = r["curves"]["train/loss"], r["curves"]["val/loss"]
            colour = colours[r["method"]]
            ax.plot([s for s, _ in train], [v for _, v in train], style, lw=0.9, color=colour, label=label)
            if val:
                ax.plot([s for s, _ in val], [v for _, v in val], "o", ms=4, color=colour)
        ax.set_title(f"{-key[0]:g} bits" + (": scale learning-rate grid" if key[1] else ""))
        ax.set_xlabel("training step")
        ax.set_ylabel("next-token loss (lines: train, dots: validation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_peft(rows: list[dict], spec: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in spec["tasks"] if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.5 * (len(tasks) + 1), 4))
    for ax, task in zip(axes, tasks):
        mine = [r for r in rows if r["task"] == task]
        if KINDS[task] == "text":
            text = spec["eval"]["texts"][0]
            y, e, before, label = (
                [r["ppl"][text] for r in mine],
                [r["ppl_std"][text] for r in mine],
                [r["before"]["ppl"][text] for r in mine],
                f"perplexity on {text}",
            )
        else:
            acc = f"{task}/acc"
            y, e, before, label = (
                [r[acc] for r in mine],
                [r[f"{acc}_std"] for r in mine],
                [r["before"][acc] for r in mine],
                "test accuracy",
            )
        x = range(len(mine))
        ax.bar(x, y, yerr=e, capsize=3, color=[f"C{i}" for i in x], label="after PEFT")
        ax.scatter(x, before, marker="_", s=300, color="k", label="before")
        ax.set_xticks(list(x), [r["method"] for r in mine], rotation=20)
        ax.set_title(f"{task}: {label}")
        ax.legend(fontsize=7)
    timed = [t for t in tasks if any(r["decode_ms_per_token"] for r in rows if r["task"] == t)] or tasks
    ax, mine = axes[-1], [r for r in rows if r["task"] == timed[0]]
    x = range(len(mine))
    ax.bar([i - 0.2 for i in x], [r["decode_ms_per_token"] or 0 for r in mine], 0.4, label="as served")
    ax.bar([i + 0.2 for i in x], [r["decode_ms_per_token_merged"] or 0 for r in mine], 0.4, label="merged")
    ax.set_xticks(list(x), [r["method"] for r in mine], rotation=20)
    ax.set_title("batch-1 decode, ms per token")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
