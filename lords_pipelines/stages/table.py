"""The paper's tables, each a Hydra multirun over its spec: one job per row, resumable, every row logged and journaled,
the table drawn when the multirun ends.

    python -m lords_pipelines.stages.table -m table=ptq_bits_cpu out=outputs/reports/tables      # every row
    python -m lords_pipelines.stages.table -m table=ptq_bits_cpu run_dir=outputs/runs/tables/x   # rerun: resumes
    python -m lords_pipelines.stages.table -m table=ptq_bits only='^(lords|nf)_b3_' spec.model=/m/smol.gguf
    python -m lords_pipelines.stages.table table=ptq_bits render=true run_dir=outputs/runs/tables/x out=...
    python -m lords_pipelines.stages.table table=ptq_bits row=nf_b4_bs64_T0_r1 run_dir=...    # one row, no drawing

The config is ``conf/table.yaml``; a table is ``conf/tables/<table>.yaml`` (or a YAML path), and its kind
(``rows.kind_of``) names the module that knows its rows: ``tables.ptq`` (PTQ and QAT rows), ``tables.peft`` (PEFT
runs), ``tables.ptq_report`` (the main job, each row a ``ptq`` stage run). Each of them gives ``jobs(spec, only)``,
``journal_key``, ``run_job``, ``summary`` and ``render``; this module is what they share.

- The job list. Before Hydra starts, :func:`main` composes ``conf/table.yaml`` with the command line, loads the spec
  and appends its jobs as the sweep ``row=<key>,<key>,...`` (in spec order, ``only`` applied), so Hydra's own
  BasicSweeper and BasicLauncher run them one after another in this process. Computed here rather than by a resolver
  in ``hydra.sweeper.params`` because the list depends on the spec, the model and the filter, and what is wrong
  with them (an unknown table or row, a filter that selects no row, a spec key that does not compose) must stop the
  command with one line (exit 2) before Hydra makes a folder or anything loads; ``multirun.yaml`` then records the
  jobs. One table per multirun: the rows of two tables differ, so ``table=a,b`` is refused (run the command twice).
- Resume. Each finished row is appended to ``<run_dir>/<table>/rows.jsonl`` at once (the record format of every
  earlier journal: a ``key``, and ``eval_tokens`` for the PTQ kinds); a job whose key the journal holds (scored on
  the same number of tokens) returns at once, before any model loads. A crash loses the row in progress; rerunning
  the same command (same ``run_dir``) runs the rest. A PEFT seed job's key is known once its lr grid is journaled.
- Logging. Every row is a run of the ``logger`` group (wandb offline by default) in ``<table>/jobs/<row>/``, grouped
  as ``table-<table>``: the row's settings as config, its numbers as summary. The main job's rows are ``ptq`` stage
  runs, which log themselves with the same logger settings.
- Drawing. :class:`TableCallback` (``hydra.callbacks`` of ``conf/table.yaml``) draws the table from the journal
  when the multirun ends (``tables/render.write_table``: ``<run_dir>/<table>.{md,json,png}``, and ``<out>/``),
  naming the rows not run and why; ``render=true`` does only that.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lords.errors import ConfigError
from lords_pipelines.stages.launch import check_command_line, compose, start
from lords_pipelines.tables import peft, ptq, ptq_report
from lords_pipelines.tables.journal import append_record, read_journal
from lords_pipelines.tables.rows import kind_of, load_spec

KINDS = {"ptq": ptq, "peft": peft, "report": ptq_report}
_MEMO: dict = {}  # what one process loads once: models by name, tokenized texts, a PEFT table's tasks


def table_name(table: str) -> str:
    """``ptq_bits`` for ``ptq_bits`` and for ``/any/where/ptq_bits.yaml``: the journal's folder and the reports' name."""
    return Path(str(table)).stem if str(table).endswith(".yaml") else str(table)


OmegaConf.register_new_resolver("table_name", table_name, replace=True)


@dataclass
class Plan:
    """What a table command resolves to: its spec, the module of its kind, and the jobs the sweep runs."""

    name: str
    spec: DictConfig
    kind: Any
    jobs: list[str]
    table_dir: Path
    dests: list[Path]

    @property
    def journal(self) -> Path:
        return self.table_dir / "rows.jsonl"

    def done(self) -> dict[str, dict]:
        """The journal's records; the PTQ kinds' only where scored on the spec's ``eval.tokens``."""
        return read_journal(self.journal, None if self.kind is peft else self.spec.eval.tokens)


def plan_of(cfg: DictConfig, check: bool = False) -> Plan:
    """The table ``cfg`` names, resolved; ``check``: also compose every row's stage config where the kind has one
    (the main job). Raises ``ConfigError`` with one line on an unknown table, row, filter or logger value."""
    from lords_pipelines.stages.settings import LoggerSettings
    from lords_pipelines.stages.validate import _build

    ls = _build(LoggerSettings, OmegaConf.to_container(cfg.logger, resolve=True), "logger")
    if check and ls.kind == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("logger=wandb: wandb is not installed here (pip install wandb), or log with logger=csv")
    spec = load_spec(str(cfg.table), OmegaConf.to_container(cfg.spec, resolve=True))
    kind = KINDS[kind_of(spec)]
    if check and hasattr(kind, "check"):
        kind.check(spec)
    jobs = kind.jobs(spec, cfg.only)
    if cfg.row is not None and cfg.row not in kind.jobs(spec, None):
        every = kind.jobs(spec, None)
        raise ConfigError(f"row={cfg.row!r} is not a row of the table; its rows look like {', '.join(every[:3])}")
    run_dir = Path(cfg.run_dir)
    name = table_name(cfg.table)
    return Plan(name, spec, kind, jobs, run_dir / name, [run_dir] + ([Path(cfg.out)] if cfg.out else []))


def run(cfg: DictConfig) -> dict:
    """One job: its row, unless the journal holds it (``render=true``: draw the table instead)."""
    plan = plan_of(cfg)
    if cfg.render:
        print(render(plan, {}))
        return {}
    job, spec = cfg.row, plan.spec
    plan.table_dir.mkdir(parents=True, exist_ok=True)
    (plan.table_dir / "spec.yaml").write_text(OmegaConf.to_yaml(spec))
    done = plan.done()
    key = plan.kind.journal_key(spec, job, done)
    if key is not None and key in done:
        print(f"{job}: in {plan.journal} already, skipped", flush=True)
        return {"row": job}
    print(progress(plan, job), flush=True)
    t = time.time()
    group = cfg.logger.group or f"table-{plan.name}"
    record = plan.kind.run_job(spec, job, plan.table_dir, _MEMO, stage_logger(cfg, group))
    if isinstance(record, str):
        print(f"{job}: not run: {record}", flush=True)
        return {"row": job, "note": record}
    append_record(plan.journal, record)
    if plan.kind is not ptq_report:  # the main job's rows are stage runs that logged themselves
        log_row(cfg, plan.table_dir / "jobs" / job, group, record)
    _MEMO.setdefault(("seconds", plan.table_dir), []).append(time.time() - t)
    print(f"{job}: {plan.kind.summary(record)}; {time.time() - t:.0f} s", flush=True)
    return {"row": job}


def progress(plan: Plan, job: str) -> str:
    """``[i/n] <job>``, with the time left at the mean of the rows this process ran so far."""
    i = plan.jobs.index(job) + 1 if job in plan.jobs else 0
    ran = _MEMO.get(("seconds", plan.table_dir), [])
    eta = f", about {(len(plan.jobs) - i + 1) * sum(ran) / len(ran) / 60:.0f} min left" if ran and i else ""
    return f"[{i}/{len(plan.jobs)}] {job}{eta}"


def stage_logger(cfg: DictConfig, group: str) -> list[str]:
    """The ``logger`` group's settings as overrides of a stage the row runs (the main job's ``ptq`` runs)."""
    ls = cfg.logger
    out = [f"logger={ls.kind}", f"logger.mode={ls.mode}", f"logger.project={ls.project}", f"logger.group={group}"]
    return out + ([f"logger.tags=[{','.join(ls.tags)}]"] if ls.tags else [])


def _flat(record: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def log_row(cfg: DictConfig, out: Path, group: str, record: dict) -> None:
    """The row as a run of the ``logger`` group in ``out``: its settings as config, its numbers as metrics."""
    from lords_pipelines.stages.common import finish_logger, open_logger
    from lords_pipelines.stages.settings import LoggerSettings
    from lords_pipelines.stages.validate import _build

    flat = _flat(record)
    numbers = {k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    config = {k: v for k, v in flat.items() if k not in numbers or k in ("bits", "block_size", "steps", "seed")}
    out.mkdir(parents=True, exist_ok=True)
    ls = _build(LoggerSettings, OmegaConf.to_container(cfg.logger, resolve=True), "logger")
    finish_logger(open_logger(ls, out, "table", group, {"table": table_name(cfg.table), **config}), numbers)


def render(plan: Plan, notes: dict[str, str]) -> str:
    """The table drawn from its journal into every destination; returns its markdown."""
    md = plan.kind.render(plan.name, plan.spec, plan.done(), plan.jobs, notes, plan.dests)
    print(f"{plan.name}: drawn from {plan.journal} into " + " and ".join(str(d) for d in plan.dests), flush=True)
    return md


class TableCallback(Callback):
    """Hydra callback: collect why rows were not run (a peer library missing here, a PEFT grid incomplete), then
    draw the table when the multirun ends."""

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, dict):
            if job_return.return_value.get("note"):
                self.notes[job_return.return_value["row"]] = job_return.return_value["note"]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.render:
            return  # its one job drew the table
        try:
            print(render(plan_of(config), self.notes))
        except ConfigError as e:  # a journal with nothing to draw yet
            print(f"not drawn: {e}", flush=True)


def _sweeps(overrides: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


def _refuse(reason: str) -> None:
    print(f"config error: {reason}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    """Check the command line, add the table's rows as the sweep, then hand it to Hydra."""
    argv = sys.argv[1:]
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return start("table", run)  # --help, --cfg, --info ...: Hydra's own
    overrides = [a for a in argv if a not in ("-m", "--multirun") and not a.startswith("hydra.")]
    try:
        swept = _sweeps(overrides)
    except Exception:  # the grammar itself: check_command_line names it
        swept = []
    for key in swept:
        if key != "row":
            given = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), key)
            _refuse(f"{given}: one value per table command (a multirun's jobs are its table's rows)")
    check_command_line("table", argv, validate=lambda cfg: plan_of(cfg, check=True))
    if "row" not in swept:
        cfg = compose("table", overrides)
        multirun = any(a in ("-m", "--multirun") for a in argv)
        if cfg.row is None and not cfg.render:
            jobs = plan_of(cfg).jobs
            if not multirun:
                _refuse(
                    f"table={cfg.table}: --multirun runs its {len(jobs)} rows (row=<key> runs one, render=true draws)"
                )
            sys.argv.append("row=" + ",".join(f"'{k}'" for k in jobs))
    start("table", run)


if __name__ == "__main__":
    main()
