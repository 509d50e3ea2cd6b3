"""The PEFT table of the paper on one model: LoRDS PEFT against QLoRA, LoftQ and QPiSSA at matched trainable floats.

    python -m lords_pipelines.tables.peft peft --model /tmp/m/smol.gguf --out outputs/reports/tables   # GPU
    python -m lords_pipelines.tables.peft peft --only 'lords_roman_' --run-dir outputs/runs/peft_tables/x
    python -m lords_pipelines.tables.peft peft --render --run-dir outputs/runs/peft_tables/x --out ...

The spec is ``conf/tables/peft.yaml``. For every task and method: a ``before`` run (the quantized base, untrained),
then the learning-rate grid at the first seed, each run scored on the validation split; the lr with the best
validation score (the smaller on a tie; the same rule for every method) is then run at the other seeds. Every run
scores the test split, perplexity on the evaluation texts, and batch-1 decode latency of the model as served
(LoRDS: nothing merged, through its Triton kernels on CUDA; LoRA methods: adapter unmerged, then merged where peft
allows). Each finished run is appended to ``<run-dir>/<table>/rows.jsonl`` at once: a rerun with the same
``--run-dir`` skips what it holds (a run killed by a time limit loses one run at most; rerun until it says done).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lords.errors import ConfigError
from lords_pipelines import CONF
from lords_pipelines.tables.peft_runs import Run, choose_lr, grid_runs, seed_runs  # noqa: F401 (re-exported)
from lords_pipelines.tables.runner import check_only, device_name, run_dir_of, table_cli

TABLES = CONF / "tables"


def load_spec(table: str) -> DictConfig:
    """A PEFT table's spec: a name in ``conf/tables`` or a YAML path."""
    path = Path(table) if table.endswith(".yaml") else TABLES / f"{table}.yaml"
    if not path.is_file():
        raise ConfigError(f"table={table!r}: no {path}")
    spec = OmegaConf.load(path)
    from lords_pipelines.peft_methods import METHODS
    from lords_pipelines.tables.peft_tasks import KINDS

    for m in spec.methods:
        if m not in METHODS:
            raise ConfigError(f"{path}: method {m!r} is not one of {METHODS}")
    for t in spec.tasks:
        if t not in KINDS:
            raise ConfigError(f"{path}: task {t!r} is not one of {tuple(KINDS)}")
    return spec


class Context:
    """What every run of one table shares: the float model, its tokenizer, tokenized texts, loaded tasks."""

    def __init__(self, spec: DictConfig, model, tok):
        self.spec, self.model, self.tok = spec, model, tok
        self.cache: dict = {}
        self.tasks: dict = {}

    def task(self, name: str):
        from lords_pipelines.tables.peft_tasks import load_task

        if name not in self.tasks:
            self.tasks[name] = load_task(name, self.tok, self.spec.data, self.cache)
        return self.tasks[name]

    def lords_refine(self):
        """``(RefineConfig, calibration ids)`` of the spec's ``lords_refine`` (``(None, None)`` when null): the
        first ``calib_tokens`` tokens of the pydoc calibration text, never an evaluation or training text."""
        cfg = self.spec.get("lords_refine")
        if not cfg:
            return None, None
        from lords import RefineConfig
        from lords_pipelines.data.texts import calibration_text, tokenize

        if "calib" not in self.cache:
            self.cache["calib"] = tokenize(self.tok, calibration_text(), cfg.calib_tokens)
        return RefineConfig(steps=cfg.steps, lr=cfg.lr, objective=cfg.objective), self.cache["calib"]

    def text_ids(self, text: str):
        from lords_pipelines.evaluation.scores import corpus_ids

        if text not in self.cache:
            self.cache[text] = corpus_ids(self.tok, text, self.spec.eval.tokens)
        return self.cache[text]


def run_one(ctx: Context, run: Run) -> dict:
    """Prepare, train (unless ``before``), score and time one run; returns its journal record."""
    from lords_pipelines.evaluation.latency import decode_ms_per_token
    from lords_pipelines.evaluation.scores import corpus_perplexity
    from lords_pipelines.peft_methods import merged, prepare
    from lords_pipelines.stages.common import apply_backend
    from lords_pipelines.tables.peft_tasks import held_out_scores, validation_score
    from lords_pipelines.tables.peft_train import train

    spec, tok = ctx.spec, ctx.tok
    t = time.time()
    refine, calib = ctx.lords_refine() if run.method == "lords_peft" else (None, None)
    p = prepare(
        ctx.model, run.method, spec.bits, spec.block_size, run.seed, spec.alpha_ratio, spec.loftq_iters, refine, calib
    )
    if p.base == "lords":
        apply_backend(p.model, "auto")  # the Triton kernels on CUDA (training and serving), the reference on CPU
    task, settings = ctx.task(run.task), spec.tasks[run.task]
    record = {
        "model": spec.model_label,
        **asdict(run),
        "key": run.key,
        "phase": "before" if run.lr is None else "grid" if run.seed == spec.seeds[0] else "seed",
        "bits": spec.bits,
        "block_size": spec.block_size,
        "base": p.base,
        "init": p.init,
        "rank": round(p.mean_rank, 2),
        "trainable_floats": p.trainable_floats,
        "alpha_ratio": None if p.base == "lords" else spec.alpha_ratio,
        "device": device_name(),
        "torch": torch.__version__,
    }
    if run.lr is None:
        record.update(steps=0, tokens=0, loss_tokens=0, train_seconds=0.0, final_loss=None)
    else:
        cuda = next(p.model.parameters()).is_cuda
        record.update(
            train(
                p.model,
                task.train,
                tok,
                settings.steps,
                settings.batch_size,
                run.lr,
                run.seed,
                precision=spec.precision if cuda else "32-true",
            )
        )
    bs = spec.eval.batch_size
    record["val_score"] = validation_score(p.model, tok, task, bs)
    record.update(held_out_scores(p.model, tok, task, bs))
    record["ppl"] = {
        text: corpus_perplexity(p.model, tok, text, spec.eval.tokens, ids=ctx.text_ids(text))[0]
        for text in spec.eval.texts
    }
    lat = spec.latency
    prompt = ctx.text_ids(spec.eval.texts[0])[:, : lat.prompt_tokens]
    timing = dict(new_tokens=lat.new_tokens, repeats=lat.repeats, warmup=lat.get("warmup", 8))
    timed = run.task in lat.get("tasks", spec.tasks)  # the speed of a served model does not depend on its task
    record["decode_ms_per_token"] = decode_ms_per_token(p.model, prompt, **timing) if timed else None
    record["decode_ms_per_token_merged"] = None
    if p.base != "lords" and timed:  # last: merging re-quantizes the base in place
        model = merged(p.model)
        if model is not None:
            record["decode_ms_per_token_merged"] = decode_ms_per_token(model, prompt, **timing)
    record["seconds"] = time.time() - t
    del p
    if torch.cuda.is_available():  # one model copy per run: give its memory back before the next
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    return record


def _journal(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {r["key"]: r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())}


def run_table(
    table: str, run_dir: Path, model_name: str | None, only: str | None, render_only: bool = False
) -> tuple[DictConfig, list[dict], list[str]]:
    """Every run of the table that ``only`` (a regex over ``<task>_<method>_``) selects, resumed from the journal;
    returns the spec, the journal's records of the selected runs and the keys not run (``render_only``: nothing
    runs; a task and method whose lr grid is incomplete is left out of the records, its seeds may be partial)."""
    spec = load_spec(table)
    check_only(only, [f"{t}_{m}_" for t in spec.tasks for m in spec.methods], "task_method_ pairs")
    name = Path(table).stem
    if model_name:
        spec.model = model_name
    spec.model_label = "SmolLM2-135M-Instruct" if "smol" in str(spec.model).lower() else str(spec.model)
    out = run_dir / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.yaml").write_text(OmegaConf.to_yaml(spec))
    journal = out / "rows.jsonl"
    done = _journal(journal)
    pairs = [(t, m) for t in spec.tasks for m in spec.methods if not only or re.search(only, f"{t}_{m}_")]
    ctx = None
    missing: list[str] = []
    for task, method in pairs:
        for phase in ("grid", "seeds"):
            runs = (
                grid_runs(spec, task, method)
                if phase == "grid"
                else seed_runs(spec, task, method, choose_lr(done, spec, task, method))
            )
            todo = [r for r in runs if r.key not in done]
            if render_only:
                missing += [r.key for r in todo]
                if todo:  # an incomplete grid has no lr yet, so its seed runs are not even named
                    break
                continue
            for run in todo:
                ctx = ctx or _context(spec)
                record = run_one(ctx, run)
                with journal.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                done[run.key] = record
                acc = record.get(f"{task}/acc")
                print(
                    f"  {run.key}: val {record['val_score']:.4f}"
                    + (f", test acc {acc:.4f}" if acc is not None else "")
                    + ", ppl "
                    + ", ".join(f"{k} {v:.2f}" for k, v in record["ppl"].items())
                    + f", {record['decode_ms_per_token'] or float('nan'):.2f} ms/token, {record['seconds']:.0f} s",
                    flush=True,
                )
    # Drawn: the pairs whose grid is done (their lr is chosen); their seeds may be partial.
    complete = [(t, m) for t, m in pairs if all(r.key in done for r in grid_runs(spec, t, m))]
    keys = {r.key for t, m in complete for r in grid_runs(spec, t, m)}
    keys |= {r.key for t, m in complete for r in seed_runs(spec, t, m, choose_lr(done, spec, t, m))}
    if missing:
        print(f"{journal}: {len(missing)} runs not done yet (first: {missing[0]}); drawing the rest", flush=True)
    return spec, [r for k, r in done.items() if k in keys], missing


def _context(spec: DictConfig) -> Context:
    from lords_pipelines.models import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_model(spec.model)
    return Context(spec, model.to(device).eval(), tok)


def main(argv: list[str] | None = None) -> None:
    from lords_pipelines.tables.render import write_table

    args = table_cli(
        __doc__,
        "peft_tables",
        "regex over '<task>_<method>_': run only those",
        dict(names=["table"], nargs="?", default="peft", help="conf/tables/<table>.yaml name or a YAML path"),
    ).parse_args(argv)
    run_dir = run_dir_of(args, "peft_tables")
    t = time.time()
    spec, records, missing = run_table(args.table, run_dir, args.model, args.only, render_only=args.render)
    if not records:
        raise SystemExit(f"{run_dir}: no task and method of the table has its lr grid done yet: nothing to draw")
    name = Path(args.table).stem
    meta = {
        "table": name,
        "spec": OmegaConf.to_container(spec, resolve=True),
        "device": " / ".join(sorted({r["device"] for r in records})),
        "torch": " / ".join(sorted({r["torch"] for r in records})),
        "missing": missing,
    }
    for dest in [run_dir] + ([Path(args.out)] if args.out else []):
        md = write_table(name, records, meta, dest)
    print(md)
    print(
        f"done: written under {run_dir}"
        + (f" and {args.out}" if args.out else "")
        + f" in {(time.time() - t) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
