"""The PEFT table as people read it: per task and method, the chosen learning rate and the test score as mean ± std
over the seeds at that lr, beside the untrained base; a markdown table per task, the JSON of the aggregated rows
(every run inside), and a plot."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from lords_pipelines.tables.peft_runs import choose_lr
from lords_pipelines.tables.peft_tasks import KINDS
from lords_pipelines.tables.render import not_run_note

COPIED = ("model", "task", "method", "bits", "block_size", "base", "init", "rank", "trainable_floats", "alpha_ratio")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def aggregate(records: list[dict], spec: dict) -> list[dict]:
    """One row per (task, method) in the spec's order: ``seed`` (the seeds), ``<task>/acc`` (mean) and
    ``<task>/acc_std``, ``ppl`` / ``ppl_std`` (text → value), ``decode_ms_per_token`` (mean over the seeds' runs),
    ``decode_ms_per_token_merged``, ``lr`` (chosen), ``lr_grid`` (lr → validation score), ``before`` (the untrained
    base's scores) and ``runs`` (every journal record of the row)."""
    by_key = {r["key"]: r for r in records}
    rows = []
    for task in spec["tasks"]:
        for method in spec["methods"]:
            mine = [r for r in records if r["task"] == task and r["method"] == method]
            if not mine:
                continue
            lr = choose_lr(by_key, _Spec(spec), task, method)
            runs = [r for r in mine if r["lr"] == lr and r["seed"] in spec["seeds"]]
            before = next(r for r in mine if r["lr"] is None)
            first = runs[0]
            row = {k: first[k] for k in COPIED}
            row.update(lr=lr, lr_grid={f"{r['lr']:g}": r["val_score"] for r in mine if r["phase"] == "grid"},
                       steps=first["steps"], tokens=first["tokens"], loss_tokens=first["loss_tokens"],
                       seed=[r["seed"] for r in runs])
            acc = f"{task}/acc"
            if acc in first:
                row[acc], row[f"{acc}_std"] = _mean_std([r[acc] for r in runs])
                row[f"{task}/items"] = first.get(f"{task}/items")
            ppl = {t: _mean_std([r["ppl"][t] for r in runs]) for t in first["ppl"]}
            row["ppl"], row["ppl_std"] = {t: m for t, (m, _) in ppl.items()}, {t: s for t, (_, s) in ppl.items()}
            row["val_score"] = _mean_std([r["val_score"] for r in runs])[0]
            for key in ("decode_ms_per_token", "decode_ms_per_token_merged", "train_seconds"):
                row[key] = _mean([r.get(key) for r in runs])
            row["before"] = {k: before.get(k) for k in (acc, "ppl", "val_score", "decode_ms_per_token",
                                                        "decode_ms_per_token_merged") if k in before}
            row["runs"] = mine
            rows.append(row)
    return rows


class _Spec(dict):
    """Attribute access over the plain spec dict, as ``choose_lr`` reads an OmegaConf spec."""

    def __getattr__(self, name):
        return self[name]


def _pm(mean: float | None, std: float, n: int, fmt: str) -> str:
    if mean is None:
        return "—"
    return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def _ms(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def markdown(table: str, rows: list[dict], meta: dict) -> str:
    spec = meta["spec"]
    texts = list(spec["eval"]["texts"])
    lines = [f"# `{table}`: PEFT on {rows[0]['model']} at {spec['bits']} bits, block {spec['block_size']}", "",
             "Methods at matched trainable floats: every LoRA rank is LoRDS's parity rank of its layer, so each "
             "method trains the floats shown. `lords_peft` trains only B, A (codes unchanged, nothing merged); "
             "`qlora` is bitsandbytes NF4 `Linear4bit` + peft LoRA; `loftq` and `qpissa` start the LoRA from LoftQ's "
             "alternation and from PiSSA's principal directions (base = the quantized residual). Learning rate: the "
             f"grid {spec['lrs']} at seed {spec['seeds'][0]}, chosen on the validation split by the same rule for "
             f"every method; scores are mean ± std over seeds {spec['seeds']} at that lr. `before`: the quantized "
             "base untrained. Decode: batch-1 greedy ms per token after training, the model as served (LoRDS "
             "through its kernels on CUDA, nothing merged; LoRA unmerged, and merged where peft allows). "
             f"Perplexity on {spec['eval']['tokens']:,} tokens of each text. Device: {meta['device']} "
             f"(torch {meta['torch']}).", ""]
    for task in spec["tasks"]:
        mine = [r for r in rows if r["task"] == task]
        if not mine:
            continue
        kind = KINDS[task]
        score = "test acc" if kind != "text" else f"ppl {texts[0]} (test)"
        shown = texts[1:] if kind == "text" else texts  # a text task's test is already the first perplexity
        floats = sorted({r["trainable_floats"] for r in mine})
        lines += [f"## `{task}` ({kind}; {mine[0]['steps']} steps, {mine[0]['tokens']:,} tokens per run; "
                  f"trainable floats {', '.join(f'{f:,}' for f in floats)})", "",
                  f"| method | rank | init | lr | {score} | before | " + " | ".join(f"ppl {t}" for t in shown)
                  + " | ms/token | merged ms/token | before ms/token |", "|" + "---|" * (9 + len(shown))]
        for r in mine:
            n = len(r["seed"])
            acc = f"{task}/acc"
            if kind == "text":
                main, before = _pm(r["ppl"][texts[0]], r["ppl_std"][texts[0]], n, ".2f"), r["before"]["ppl"][texts[0]]
                before = f"{before:.2f}"
            else:
                main, before = _pm(r[acc], r[f"{acc}_std"], n, ".3f"), f"{r['before'][acc]:.3f}"
            ppl = " | ".join(_pm(r["ppl"][t], r["ppl_std"][t], n, ".2f") for t in shown)
            lines.append(f"| {r['method']} | {r['rank']:g} | {r['init']} | {r['lr']:g} | {main} | {before} | {ppl} | "
                         f"{_ms(r['decode_ms_per_token'])} | {_ms(r['decode_ms_per_token_merged'])} | "
                         f"{_ms(r['before']['decode_ms_per_token'])} |")
        lines.append("")
    compute = sum(run["seconds"] for r in rows for run in r["runs"])
    lines.append(f"{sum(len(r['runs']) for r in rows)} runs, {compute / 60:.1f} min of training and evaluation summed "
                 "over runs (model loading excluded; per-run seconds in the JSON).")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], spec: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in spec["tasks"] if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.5 * (len(tasks) + 1), 4))
    for ax, task in zip(axes, tasks):
        mine = [r for r in rows if r["task"] == task]
        if KINDS[task] == "text":
            text = spec["eval"]["texts"][0]
            y, e, before, label = ([r["ppl"][text] for r in mine], [r["ppl_std"][text] for r in mine],
                                   [r["before"]["ppl"][text] for r in mine], f"perplexity on {text}")
        else:
            acc = f"{task}/acc"
            y, e, before, label = ([r[acc] for r in mine], [r[f"{acc}_std"] for r in mine],
                                   [r["before"][acc] for r in mine], "test accuracy")
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


def add_serving(rows: list[dict], serving: list[dict]) -> None:
    """Fill each row's decode times from the serving benchmark (``peft_serving``: every variant timed alone on
    one GPU, interleaved) where the row's own runs were not timed: the method's variant, its ``_merged`` variant,
    and for ``lords_peft`` the ``lords_before`` variant as the untrained base (the LoRA methods' bases were not timed
    apart from their adapters: their ``before`` stays empty rather than repeating the trained figure)."""
    by = {r["variant"]: r["decode_ms_per_token"] for r in serving}
    for row in rows:
        if row["decode_ms_per_token"] is None:
            row["decode_ms_per_token"] = by.get(row["method"])
            row["decode_ms_per_token_merged"] = by.get(f"{row['method']}_merged")
            if row["method"] == "lords_peft":
                row["before"]["decode_ms_per_token"] = row["before"].get("decode_ms_per_token") or by.get("lords_before")
            row["decode_source"] = "peft_serving"


def write_table(table: str, records: list[dict], meta: dict, dest: Path) -> str:
    """``<dest>/<table>.{json,md,png}``; returns the markdown. A ``<dest>/<table>_serving.{json,md}`` beside it
    (``peft_serving``) supplies the decode times and is appended to the markdown."""
    dest.mkdir(parents=True, exist_ok=True)
    rows = aggregate(records, meta["spec"])
    serving = dest / f"{table}_serving.json"
    if serving.is_file():
        add_serving(rows, json.loads(serving.read_text()))
    md = markdown(table, rows, meta) + not_run_note(table, meta.get("missing") or [], "runs",
                                                    " A row's ± is over the seeds it has.")
    if serving.is_file():
        md += "\n" + serving.with_suffix(".md").read_text().replace("# Serving", "## Serving", 1)
    (dest / f"{table}.json").write_text(json.dumps(rows, indent=1))
    (dest / f"{table}.md").write_text(md)
    try:
        plot(rows, meta["spec"], dest / f"{table}.png")
    except ImportError:  # the GPU machine has no matplotlib: `--render` redraws from the rows journal
        print(f"matplotlib missing: no {table}.png (python -m lords_pipelines.tables.peft {table} --render ...)")
    return md
