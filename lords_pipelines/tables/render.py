"""PTQ tables as people read them: rows aggregated over calibration samples (mean ± std), a markdown table with
the float model and each method's baseline side by side, the JSON of the aggregated rows, and a plot."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

GROUP = ("method", "bits", "block_size", "rule", "steps", "rank_scale")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


QAT_FIELDS = ("trainable_floats", "train_steps", "train_tokens", "train_source", "train_distinct_tokens",
              "lr_weight", "lr_scale", "train_seconds", "train_tokens_per_s")


def aggregate(records: list[dict]) -> list[dict]:
    """One row per method setting; calibrated rows carry the mean and std over their samples and the runs."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in GROUP), []).append(r)
    rows = []
    for runs in groups.values():
        first = runs[0]
        texts = list(first["ppl"])
        tasks = [k[: -len("/acc")] for k in first if k.endswith("/acc")]
        row = {k: first[k] for k in ("model", *GROUP, "rank", "float_params", "bits_per_weight", "code_bits")}
        row["objective"] = (((first.get("config") or {}).get("refine") or
                             ((first.get("config") or {}).get("base") or {}).get("refine") or {}).get("objective"))
        row["seed"] = first.get("seed", 0)
        row["samples"] = len(runs) if first["sample"] is not None else 0
        ppl = {t: _mean_std([r["ppl"][t] for r in runs]) for t in texts}
        row["ppl"] = {t: m for t, (m, _) in ppl.items()}
        row["ppl_std"] = {t: s for t, (_, s) in ppl.items()}
        row["ppl_tokens"] = first["ppl_tokens"]
        for key in ("weight_rel_error", "zero_shot_mean", "quant_seconds"):
            if key in first:
                row[key], row[f"{key}_std"] = _mean_std([r[key] for r in runs])
        row["seconds"] = sum(r["seconds"] for r in runs)
        row["zero_shot_ci95"] = first.get("zero_shot_ci95")
        for task in tasks:
            row[f"{task}/acc"] = statistics.fmean(r[f"{task}/acc"] for r in runs)
            row[f"{task}/items"] = first[f"{task}/items"]
        # `steps`/`tokens`: what the row trained (0 for PTQ rows); `refine_steps`: Algorithm 1's T before it
        row["refine_steps"], row["steps"], row["tokens"] = row["steps"], first.get("train_steps", 0), 0
        if "train_steps" in first:  # a QAT row: what it trained, at what budget
            row.update({k: first.get(k) for k in QAT_FIELDS}, tokens=first.get("train_tokens"))
        row["runs"] = [{"sample": r["sample"], "ppl": r["ppl"], "zero_shot_mean": r.get("zero_shot_mean")}
                       for r in runs]
        rows.append(row)
    return rows


def not_run_note(table: str, missing: list[str], unit: str, after: str = "", shown: int = 12) -> str:
    """The markdown line naming what a partial journal lacks (the first ``shown`` keys), or "" when nothing."""
    if not missing:
        return ""
    keys = ", ".join(f"`{k}`" for k in missing[:shown]) + (f" and {len(missing) - shown} more" if
                                                            len(missing) > shown else "")
    return f"\nNot run yet: {len(missing)} {unit} of `conf/tables/{table}.yaml` ({keys}).{after}\n"


def _pm(mean: float, std: float, samples: int, fmt: str = ".2f") -> str:
    return f"{mean:{fmt}} ± {std:{fmt}}" if samples > 1 else f"{mean:{fmt}}"


def markdown(table: str, rows: list[dict], meta: dict) -> str:
    spec = meta["spec"]
    texts = list(rows[0]["ppl"])
    tasks = [k[: -len("/acc")] for k in rows[0] if k.endswith("/acc")]
    fp = next(r for r in rows if r["method"] == "fp")
    scored = ", ".join(f"{fp['ppl_tokens'][t]:,} tokens of `{t}`" for t in texts)
    zs = (f"zero-shot accuracy on {', '.join(tasks)} ({fp[tasks[0] + '/items']} items each, lords' scorer, equal "
          f"to lm-eval's), mean over tasks with its 95% half-width (±{fp['zero_shot_ci95']:.3f} at the float model)"
          if tasks else "no zero-shot tasks in this table")
    lines = [f"# `{table}`: {fp['model']}", "",
             f"Perplexity on {scored} (2048-token windows, BOS-led where the tokenizer adds BOS); {zs}. "
             f"Calibrated rows: mean ± std over "
             f"{spec['calib']['samples']} disjoint samples of {spec['calib']['tokens']:,} tokens of "
             f"`{spec['calib']['source']}`. Algorithm 1: Adam lr {spec['refine']['lr']}, T as listed, the same for "
             f"block scales and LoRDS. Bits per weight include every stored scale float (fp32) and LoftQ's correction.",
             "", "| bits | block | rule | method | T | rank | floats | bits/weight | weight err. | "
             + " | ".join(f"ppl {t}" for t in texts) + " | zero-shot | n |",
             "|" + "---|" * (11 + len(texts))]
    for r in rows:
        n = r["samples"]
        ppl = " | ".join(_pm(r["ppl"][t], r["ppl_std"][t], n) for t in texts)
        bpw = "—" if r["method"] == "fp" or r["bits_per_weight"] is None else f"{r['bits_per_weight']:.3f}"
        rank = "" if r["rank"] is None else f"{r['rank']:g}"
        zero_shot = _pm(r["zero_shot_mean"], r["zero_shot_mean_std"], n, ".3f") if "zero_shot_mean" in r else "—"
        lines.append(f"| {r['bits'] or 16} | {r['block_size'] or ''} | {r['rule'] or ''} | {r['method']} | "
                     f"{r['refine_steps'] if r.get('objective') or r['refine_steps'] else ''} | {rank} | {r['float_params']:,} | {bpw} | "
                     f"{r['weight_rel_error']:.4f} | {ppl} | {zero_shot} | {n or 1} |")
    compute = sum(r["seconds"] for r in rows)
    lines += ["", f"{len(rows)} rows ({sum(max(r['samples'], 1) for r in rows)} runs): {compute / 60:.1f} min of "
              f"quantization and evaluation summed over runs on {meta['device']} (torch {meta['torch']}; model "
              f"loading excluded; per-run seconds in the JSON)."]
    return "\n".join(lines) + "\n"


PLOTTED = ("nf", "loftq", "nf_calibrated", "lords_refined", "lords_calibrated", "blockwise_refined")


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
        series.setdefault(label, []).append((x, r["ppl"][text], r["ppl_std"][text]))
    return series


def plot(table: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = list(rows[0]["ppl"])
    fp = next(r for r in rows if r["method"] == "fp")
    colours = {m: f"C{i}" for i, m in enumerate(PLOTTED)}
    fig, axes = plt.subplots(1, len(texts), figsize=(6.5 * len(texts), 4.5))
    for ax, text in zip(axes, texts):
        for label, pts in sorted(_series(table, rows, text).items()):
            pts.sort()
            x, y, e = ([p[i] for p in pts] for i in range(3))
            low = [min(err, 0.5 * val) for val, err in zip(y, e)]  # log axis: keep the bar above zero
            ax.errorbar(x, y, yerr=[low, e], marker="s" if "sensitivity" in label else "o", ms=4, capsize=2,
                        label=label, color=colours.get(label.split()[0]), ls="--" if "b128" in label else "-")
        ax.axhline(fp["ppl"][text], color="k", lw=0.8, ls=":", label="float")
        ax.set_yscale("log")
        ax.set_ylim(fp["ppl"][text] / 1.3, min(ax.get_ylim()[1], 1e5))
        ax.set_title(f"perplexity on {text} (clipped at 1e5)")
        ax.set_xlabel("Algorithm 1 steps T" if "refine" in table else "float parameters" if "rank" in table
                      else "bits per weight (codes + scales)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(records: list[dict], path: Path) -> bool:
    """Training (lines) and validation (markers) loss of every QAT run against steps, one panel per bit width,
    block-wise runs dashed; False when no run has curves."""
    runs = [r for r in records if r.get("curves") and r["curves"]["train/loss"]]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({r["bits"] for r in runs}, reverse=True)
    fig, axes = plt.subplots(1, len(widths), figsize=(5.5 * len(widths), 4.5), squeeze=False)
    for ax, bits in zip(axes[0], widths):
        mine = [r for r in runs if r["bits"] == bits]
        for i, r in enumerate(mine):
            label = r["method"] + (f" ({r['rule']})" if r["rule"] else "")
            style = "--" if not r["method"].startswith("lords") else "-"
            train, val = r["curves"]["train/loss"], r["curves"]["val/loss"]
            ax.plot([s for s, _ in train], [v for _, v in train], style, lw=0.9, color=f"C{i}", label=label)
            if val:
                ax.plot([s for s, _ in val], [v for _, v in val], "o", ms=4, color=f"C{i}")
        ax.set_title(f"{bits} bits")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("next-token loss (lines: train, dots: validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_table(table: str, records: list[dict], meta: dict, dest: Path) -> str:
    """``<dest>/<table>.{json,md,png}``; returns the markdown."""
    dest.mkdir(parents=True, exist_ok=True)
    rows = aggregate(records)
    md = markdown(table, rows, meta) + not_run_note(table, meta.get("missing") or [], "rows")
    (dest / f"{table}.json").write_text(json.dumps(rows, indent=1))
    (dest / f"{table}.md").write_text(md)
    try:
        plot(table, rows, dest / f"{table}.png")
        if plot_curves(records, dest / f"{table}_curves.png"):
            (dest / f"{table}.md").write_text(md + f"\nTraining curves: `{table}_curves.png`.\n")
    except ImportError:  # the GPU machine has no matplotlib: `--render` redraws from the rows journal
        print(f"matplotlib missing: no {table}.png (python -m lords_pipelines.tables.ptq {table} --render ...)")
    return md
