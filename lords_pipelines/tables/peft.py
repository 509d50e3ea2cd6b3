"""The PEFT table of the paper on one model: LoRDS PEFT against QLoRA, LoftQ and QPiSSA at matched trainable floats,
as the jobs of a Hydra multirun (``lords_pipelines.stages.table``):

    python -m lords_pipelines.stages.table -m table=peft spec.model=/tmp/m/smol.gguf out=outputs/reports/tables
    python -m lords_pipelines.stages.table -m table=peft only='^lords_roman_' run_dir=outputs/runs/peft_tables/x
    python -m lords_pipelines.stages.table table=peft render=true run_dir=outputs/runs/peft_tables/x out=...

The spec is ``conf/tables/peft.yaml``. For every task and method: a ``before`` run (the quantized base, untrained),
then the learning-rate grid at the first seed, each run scored on the validation split; the lr with the best
validation score (the smaller on a tie; the same rule for every method) is then run at the other seeds. Every run
scores the test split, perplexity on the evaluation texts, and batch-1 decode latency of the model as served
(LoRDS: nothing merged, through its Triton kernels on CUDA; LoRA methods: adapter unmerged, then merged where peft
allows). The sweep's jobs are the grid runs, then one job per further seed (``<task>_<method>_s<seed>``) whose lr
the journal's grid decides when it starts (the jobs run in order, in one process). This module is the table kind
``peft``: its job list, one run's record, its rendering.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lords.errors import ConfigError
from lords_pipelines.tables.journal import check_only, device_name
from lords_pipelines.tables.peft_runs import Run, choose_lr, grid_runs, seed_runs  # noqa: F401 (re-exported)


def load_spec(table: str, overrides: dict | None = None) -> DictConfig:
    """A PEFT table's spec (a name in ``conf/tables`` or a YAML path), its methods and tasks checked."""
    from lords_pipelines.tables.rows import load_spec as load

    return check_spec(load(table, overrides))


def check_spec(spec: DictConfig) -> DictConfig:
    from lords_pipelines.peft_methods import METHODS
    from lords_pipelines.tables.peft_tasks import KINDS

    for m in spec.methods:
        if m not in METHODS:
            raise ConfigError(f"spec.methods: {m!r} is not one of {METHODS}")
    for t in spec.tasks:
        if t not in KINDS:
            raise ConfigError(f"spec.tasks: {t!r} is not one of {tuple(KINDS)}")
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
    from lords_pipelines.peft_methods import prepare
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
    spectrum = spec.get("spectrum") or {}
    before = (  # Figure 3: ΔW of the trained run against its start
        copy.deepcopy(p.model)
        if run.lr is not None and run.task == spectrum.get("task") and run.method in spectrum.get("methods", [])
        else None
    )
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
    if before is not None:
        from lords_pipelines.tables.peft_delta import spectrum_rows

        record["spectrum"] = spectrum_rows(before, p.model)
        del before
    if p.base != "lords":  # last: merging re-quantizes the base in place (the deployable form of a LoRA method)
        from lords_pipelines.tables.peft_merged import merged_scores

        model, fields = merged_scores(p.model, tok, task, spec.eval.texts, spec.eval.tokens, bs, ctx.text_ids)
        record.update(fields)
        if model is not None and timed:
            record["decode_ms_per_token_merged"] = decode_ms_per_token(model, prompt, **timing)
    record["seconds"] = time.time() - t
    del p
    if torch.cuda.is_available():  # one model copy per run: give its memory back before the next
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    return record


def jobs(spec: DictConfig, only: str | None) -> list[str]:
    """Per task and method that ``only`` (a regex over ``<task>_<method>_``) selects: the grid runs' keys, then
    ``<task>_<method>_s<seed>`` for each further seed (its lr is the grid's choice, known when it starts)."""
    check_spec(spec)
    check_only(only, [f"{t}_{m}_" for t in spec.tasks for m in spec.methods], "task_method_ pairs")
    out = []
    for t, m in _pairs(spec, only):
        out += [r.key for r in grid_runs(spec, t, m)] + [f"{t}_{m}_s{s}" for s in spec.seeds[1:]]
    return out


def _pairs(spec: DictConfig, only: str | None) -> list[tuple[str, str]]:
    return [(t, m) for t in spec.tasks for m in spec.methods if not only or re.search(only, f"{t}_{m}_")]


def _run_of(spec: DictConfig, job: str, done: dict) -> Run | None:
    """The run job ``job`` stands for; a seed job's lr is the grid's choice (None while the grid is incomplete)."""
    for t, m in _pairs(spec, None):
        grid = grid_runs(spec, t, m)
        for r in grid:
            if r.key == job:
                return r
        for s in spec.seeds[1:]:
            if job == f"{t}_{m}_s{s}":
                if not all(r.key in done for r in grid):
                    return None
                return Run(t, m, choose_lr(done, spec, t, m), s)
    raise ConfigError(f"row={job!r} is not a run of the table")


def journal_key(spec: DictConfig, job: str, done: dict) -> str | None:
    run = _run_of(spec, job, done)
    return None if run is None else run.key


def run_job(spec: DictConfig, job: str, table_dir: Path, memo: dict, stage_overrides: list[str]) -> dict | str:
    """The journal record of the run ``job`` stands for, or why it cannot run yet (a seed run before its grid)."""
    from lords_pipelines.tables.journal import read_journal

    run = _run_of(spec, job, read_journal(table_dir / "rows.jsonl"))
    if run is None:
        return "its learning-rate grid is not complete yet"
    if ("context", table_dir) not in memo:
        from lords_pipelines.tables.journal import loaded_model, model_label

        spec.model_label = model_label(spec)
        memo["context", table_dir] = Context(spec, *loaded_model(spec, memo))
    return run_one(memo["context", table_dir], run)


def summary(record: dict) -> str:
    acc = record.get(f"{record['task']}/acc")
    return (
        f"val {record['val_score']:.4f}"
        + (f", test acc {acc:.4f}" if acc is not None else "")
        + ", ppl "
        + ", ".join(f"{k} {v:.2f}" for k, v in record["ppl"].items())
        + f", {record['decode_ms_per_token'] or float('nan'):.2f} ms/token"
    )


def render(name: str, spec: DictConfig, done: dict, keys: list[str], notes: dict, dests: list[Path]) -> str:
    """``<dest>/<name>.{md,json,png}``: the task and method pairs of ``keys`` whose grid is done (their lr is
    chosen; their seeds may be partial); the runs the journal lacks are named as not run."""
    from lords_pipelines.tables.render import write_table

    pairs = [(t, m) for t, m in _pairs(spec, None) if any(k.startswith(f"{t}_{m}_") for k in keys)]
    missing: list[str] = []
    drawn: set[str] = set()
    for t, m in pairs:
        grid = grid_runs(spec, t, m)
        missing += [r.key for r in grid if r.key not in done]
        if all(r.key in done for r in grid):  # an incomplete grid has no lr yet: its seed runs are not named
            seeds = seed_runs(spec, t, m, choose_lr(done, spec, t, m))
            missing += [r.key for r in seeds if r.key not in done]
            drawn |= {r.key for r in grid + seeds}
    records = [r for k, r in done.items() if k in drawn]
    if not records:
        raise ConfigError(f"{name}: no task and method of the table has its lr grid done yet: nothing to draw")
    meta = {
        "table": name,
        "spec": OmegaConf.to_container(spec, resolve=True),
        "device": " / ".join(sorted({r["device"] for r in records})),
        "torch": " / ".join(sorted({r["torch"] for r in records})),
        "missing": missing,
    }
    for dest in dests:
        md = write_table(name, records, meta, dest)
    return md
