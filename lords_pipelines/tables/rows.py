"""The rows of a PTQ table (``conf/tables/<table>.yaml``): which methods at which bits, block sizes, steps and
rank multiples, and the Hydra overrides of the ``quant`` group that build each row's library config.

A row whose config reads calibration text (an ``act_diag`` objective, or the sensitivity rule of mixed precision)
runs once per disjoint calibration sample; every other row runs once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lords.errors import ConfigError
from lords_pipelines import CONF

TABLES = CONF / "tables"
CALIBRATED = ("act_diag", "act")


@dataclass(frozen=True)
class Row:
    method: str
    bits: float | None = None
    block_size: int | None = None
    rule: str | None = None
    """Mixed precision's rule (loftq or sensitivity) at a fractional width; None at an integer width."""
    steps: int = 0
    rank_scale: float = 1.0
    sample: int | None = None
    """Calibration sample index (tokens ``[k·T, (k+1)·T)`` of the calibration text), None for data-free rows."""
    calib_tokens: int | None = None
    """``T`` of this row where a part of the spec sets its own ``calib.tokens`` (a calibration-size sweep); None:
    the spec's."""

    @property
    def key(self) -> str:
        """A file-name-safe identity: the run folder name and the resume key."""
        parts = [
            self.method,
            f"b{self.bits}",
            f"bs{self.block_size}",
            self.rule or "",
            f"T{self.steps}",
            f"r{self.rank_scale:g}",
            "" if self.sample is None else f"s{self.sample}",
            "" if self.calib_tokens is None else f"c{self.calib_tokens}",
        ]
        return "_".join(p for p in parts if p)

    def to_dict(self) -> dict:
        return asdict(self)


def load_spec(table: str, overrides: dict | None = None) -> DictConfig:
    """A table's spec (a name in ``conf/tables`` or a YAML path) merged over its ``defaults`` (names in
    ``conf/tables``, themselves with defaults), then ``overrides`` (the ``spec.*`` keys of a table run, None values
    left out), and, for the PTQ kinds, the method definitions of ``conf/tables/methods.yaml``."""
    path = Path(table) if table.endswith(".yaml") else TABLES / f"{table}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in TABLES.glob("*.yaml") if p.stem not in ("common", "methods"))
        raise ConfigError(f"table={table!r}: no conf/tables/{table}.yaml (tables: {known})")
    merged = _with_defaults(path)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        merged = OmegaConf.merge(merged, given)
    if kind_of(merged) != "peft":
        merged.method_defs = OmegaConf.load(TABLES / "methods.yaml")
    return merged


def kind_of(spec: DictConfig) -> str:
    """Which runner module a spec's rows go to: ``peft`` (a spec with ``tasks``: runs of ``tables.peft``),
    ``report`` (a spec with calibrated ``objectives`` to pick from: the main job, ``tables.ptq_report``), else
    ``ptq`` (``tables.ptq``, QAT rows included)."""
    return "peft" if "tasks" in spec else "report" if "objectives" in spec else "ptq"


def _with_defaults(path: Path) -> DictConfig:
    spec = OmegaConf.load(path)
    merged = OmegaConf.create()
    for name in spec.pop("defaults", []):
        merged = OmegaConf.merge(merged, _with_defaults(TABLES / f"{name}.yaml"))
    return OmegaConf.merge(merged, spec)


def _needs_calibration(spec, method: str, rule: str | None) -> bool:
    d = spec.method_defs[method]
    return d.objective in CALIBRATED or rule == "sensitivity" or bool(d.get("calibrated"))


def peer_of(spec: DictConfig, method: str) -> str | None:
    """The peer library method a row runs (``quant: peer`` in methods.yaml), None for the library's own."""
    d = spec.method_defs[method]
    return d.get("peer") if d.quant == "peer" else None


def table_rows(spec: DictConfig) -> list[Row]:
    """Every row of the table, the float model first."""
    rows = [Row("fp")]
    for part in [spec] + [OmegaConf.merge(spec, extra) for extra in spec.get("extra", [])]:
        rows += _part_rows(part, None if part.calib.tokens == spec.calib.tokens else part.calib.tokens)
    return rows


def _part_rows(spec: DictConfig, calib_tokens: int | None) -> list[Row]:
    rows = []
    steps_list = list(spec.get("steps", [spec.refine.steps]))
    for block in spec.block_sizes:
        for bits in spec.bits:
            integer = float(bits).is_integer()
            groups = [(None, spec.methods)] if integer else list(spec.rules.items())
            for rule, methods in groups:
                for method in methods:
                    for steps in steps_list:
                        for scale in spec.get("rank_scales", [1.0]):
                            rows += _expand(spec, method, bits, block, rule, steps, scale, calib_tokens)
    return rows


def _expand(spec, method, bits, block, rule, steps, scale, calib_tokens=None) -> list[Row]:
    if method not in spec.method_defs:
        raise ConfigError(
            f"method {method!r} is not defined in conf/tables/methods.yaml (defined: {sorted(spec.method_defs)})"
        )
    refined = spec.method_defs[method].objective is not None
    lords = spec.method_defs[method].quant == "lords"
    if not lords and scale != 1.0:  # block scales spend the same floats as rank × scale at block / scale
        block, scale = int(round(block / scale)), 1.0
    bits = int(bits) if float(bits).is_integer() else float(bits)
    if spec.method_defs[method].quant == "peer" and not isinstance(bits, int):
        raise ConfigError(f"method {method!r} (a peer library) runs integer widths only, not bits={bits}")
    calibrated = _needs_calibration(spec, method, rule)
    samples = range(spec.calib.samples) if calibrated else [None]
    tokens = calib_tokens if calibrated else None  # a data-free row is the same row whatever the calibration size
    return [Row(method, bits, block, rule, steps if refined else 0, scale, k, tokens) for k in samples]


def overrides(spec: DictConfig, row: Row, objective: str | None = None) -> list[str]:
    """Hydra overrides of the ``ptq`` config that build ``row``'s quant config; ``objective`` replaces the
    method's calibrated objective (the main job picks one of its spec's ``objectives``)."""
    d = spec.method_defs[row.method]
    chosen = objective if objective and d.objective in CALIBRATED else d.objective
    if d.quant == "none":
        return ["quant=none"]
    if d.quant == "peer":
        raise ConfigError(
            f"method {row.method!r} is run by its own library (lords_pipelines.tables.peers), not by a quant config"
        )
    mixed = row.rule is not None
    at = "quant.base." if mixed else "quant."
    out = [
        f"quant={d.quant}_mixed" if mixed else f"quant={d.quant}",
        f"quant.bits={row.bits}",
        f"{at}block_size={row.block_size}",
        f"{at}calib_tokens={row.calib_tokens or spec.calib.tokens}",
        f"seed={spec.seed}",
    ]
    if mixed:
        out.append(f"quant.rule={row.rule}")
    if d.get("target"):  # a subclass of the group's config (GPTQ: its Hessian accumulates every token, no sample)
        out += [f"{at}_target_={d.target}", f"{at}sample_tokens=0"]
    if d.quant == "lords":
        out.append(f"{at}rank_scale={row.rank_scale}")
    if d.quant != "loftq":
        out.append(
            f"{at}refine=null"
            if chosen is None
            else f"{at}refine={{_target_: lords.RefineConfig, steps: {row.steps}, lr: {spec.refine.lr}, "
            f"objective: {chosen}}}"
        )
    return out
