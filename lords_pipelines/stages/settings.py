"""Typed, frozen settings of a run: Hydra config → these dataclasses (run-level groups) and the library's own
quantization config (the ``quant`` group names its class with ``_target_``: ``lords.LordsConfig`` ...).

``settings_from_cfg(cfg)`` checks every key and value of the composed Hydra config before anything
runs: an unknown key, a wrong type or a bad value raises ``lords.errors.ConfigError`` whose message
starts with the dotted key (``quant.bits=5 ...``). The ``quant`` group is instantiated once, here, into the
object the library receives; nothing restates its fields or defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

from lords.config import QuantConfig, RefineConfig
from lords.errors import ConfigError
from lords.scale_steps import SCALE_STEPS
from lords_pipelines.peft_methods import METHODS as PEFT_METHODS

from .validate import _build, _choice, _fail, _is_instance, _positive  # noqa: F401

STAGES = ("ptq", "ptq_refine", "qat", "peft", "eval")


@dataclass(frozen=True)
class TinySettings:
    """Shape of the random tiny Llama (model=tiny-llama)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    vocab: int = 512


@dataclass(frozen=True)
class ModelSettings:
    name: str
    """Embedded alias (smollm2-135m), 'tiny-llama', a hub id or a local folder."""
    dtype: str = "float32"
    """Weights' dtype: float32, bfloat16 or float16."""
    gguf_file: str | None = None
    """A GGUF file inside the folder/repo ``name``."""
    tiny: TinySettings | None = None
    """Shape of the tiny random Llama (only with name=tiny-llama)."""

    def check(self, key):
        _choice(f"{key}.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if (self.name == "tiny-llama") != (self.tiny is not None):
            _fail(f"{key}.tiny", self.tiny, "must be set exactly when model.name is 'tiny-llama'")


def _locate(path: str, key: str):
    """The class ``path`` names, found without importing anything: a lords config class (``lords.LordsConfig`` or
    its defining module's name) or one in a module already imported (a registered extension). Checking a name
    never runs a module's code."""
    import sys

    import lords
    from lords.config import _CONFIG_TYPES

    if not isinstance(path, str):
        raise ConfigError(f"{key}._target_={path!r} is not a dotted class name")
    known = {f"{c.__module__}.{c.__qualname__}": c for c in (*_CONFIG_TYPES.values(), RefineConfig)}
    known.update({f"lords.{n}": getattr(lords, n) for n in dir(lords) if isinstance(getattr(lords, n), type)})
    if path in known:
        return known[path]
    module, _, name = path.rpartition(".")
    if module in sys.modules and hasattr(sys.modules[module], name):
        return getattr(sys.modules[module], name)
    raise ConfigError(
        f"{key}._target_={path!r}: not a lords config class (lords.LordsConfig, lords.BlockwiseConfig, "
        "...; a class of another module is looked up only once that module is imported)"
    )


def build_quant(d, key: str = "quant"):
    """The library config a ``quant`` mapping describes (``_target_`` + fields, nested configs likewise), or
    None for an empty mapping (``quant=none``: the float model). Unknown keys and bad values name their key."""
    if d is None or d == {}:
        return None
    if not isinstance(d, dict) or "_target_" not in d:
        _fail(key, d, "must be a mapping with _target_ naming a lords config class (e.g. lords.LordsConfig)")
    cls = _locate(d["_target_"], key)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and issubclass(cls, (QuantConfig, RefineConfig))):
        _fail(f"{key}._target_", d["_target_"], "is not a lords quantization config class")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields - {"_target_"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key for {cls.__name__} (known: {sorted(fields)})")
    # Nested configs with a _target_ are built here; plain mappings (refine: {steps: 3}) go to the class as they are.
    kwargs = {
        k: build_quant(v, f"{key}.{k}") if isinstance(v, dict) and "_target_" in v else v
        for k, v in d.items()
        if k != "_target_"
    }
    try:
        try:
            return cls(**kwargs)
        except (TypeError, ValueError, AttributeError, OverflowError, RecursionError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{key}: malformed value ({type(e).__name__}: {str(e)[:200]})") from None
    except ConfigError as e:
        msg, (head, _, last) = str(e), key.rpartition(".")
        if msg.startswith(last + "."):  # the class named itself ("refine.lr=..."): keep the path above it
            msg = f"{head}.{msg}" if head else msg
        raise ConfigError(msg if msg.startswith(key) else f"{key}.{msg}") from None


@dataclass(frozen=True)
class DataSettings:
    calib_source: str = "pydoc_topics"
    """Calibration text (how many tokens quantization reads is the quant config's ``calib_tokens``)."""
    train_tokens: int = 2048
    """Tokens of the calibration source cut into training windows (QAT with ``stage.data=calib``)."""
    window: int = 256
    finetune_source: str = "lords_pipelines/data/unicode_names.jsonl"
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    text_field: str = "text"
    split: str = "train"
    max_length: int = 64
    val_items: int = 48
    batch_size: int = 8
    num_workers: int = 0

    def check(self, key):
        for name in ("train_tokens", "window", "max_length", "batch_size"):
            _positive(f"{key}.{name}", getattr(self, name))
        _positive(f"{key}.val_items", self.val_items, allow_zero=True)
        _positive(f"{key}.num_workers", self.num_workers, allow_zero=True)


@dataclass(frozen=True)
class PTQStage:
    name: str
    save: bool = True
    journal: bool = True
    """Keep the library's per-layer journal in <out_dir>/journal: a rerun with the same out_dir resumes."""
    progress: bool = False
    """A progress bar over the layers being quantized (method, bits, objective and steps on its label)."""


@dataclass(frozen=True)
class RefineStage:
    name: str
    save: bool = True


@dataclass(frozen=True)
class QATStage:
    name: str
    data: str = "calib"
    lr_weight: float = 1e-5
    lr_scale: float = 1e-3
    scale_step: str = "per_factor"
    """How ``lr_scale`` reaches the scales (``lords.scale_steps``): ``per_factor`` (LoRDS's ``B`` and ``A`` each at
    the rate that makes their step in ``S = B·A`` a block scale's) or ``shared`` (one rate for every scale)."""
    weight_decay: float = 0.0
    save: bool = True

    def check(self, key):
        _choice(f"{key}.data", self.data, ("calib", "finetune"))
        _choice(f"{key}.scale_step", self.scale_step, SCALE_STEPS)
        _positive(f"{key}.lr_weight", self.lr_weight, allow_zero=True)
        _positive(f"{key}.lr_scale", self.lr_scale)


@dataclass(frozen=True)
class PEFTStage:
    name: str
    method: str = "lords_peft"
    data: str = "finetune"
    lr: float = 1e-3
    weight_decay: float = 0.0
    lora_alpha_ratio: float = 2.0
    init_checkpoint: str | None = None
    save: bool = True

    def check(self, key):
        _choice(f"{key}.method", self.method, PEFT_METHODS)
        _choice(f"{key}.data", self.data, ("finetune", "calib"))
        _positive(f"{key}.lr", self.lr)
        _positive(f"{key}.lora_alpha_ratio", self.lora_alpha_ratio)
        if self.init_checkpoint and self.method != "lords_peft":
            raise ConfigError(
                f"{key}.init_checkpoint: only lords_peft starts from a checkpoint (the LoRA methods "
                "rebuild their base from the float model)"
            )


@dataclass(frozen=True)
class EvalStage:
    name: str
    checkpoint: str | None = None
    adapter: str | None = None


STAGE_TYPES = {"ptq": PTQStage, "ptq_refine": RefineStage, "qat": QATStage, "peft": PEFTStage, "eval": EvalStage}


@dataclass(frozen=True)
class TrainerSettings:
    accelerator: str = "cpu"
    devices: Union[int, str] = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 50
    max_epochs: int = -1
    log_every_n_steps: int = 5
    val_check_interval: Union[int, float, None] = None
    limit_val_batches: Union[int, float] = 1.0
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    fast_dev_run: Union[bool, int] = False
    checkpoint_every_n_steps: int = 25
    resume: str | None = None
    deterministic: bool = False
    backend: str = "auto"
    """LoRDSLinear forward: auto (Triton kernels for CUDA inputs when Triton is installed), torch, triton."""
    activation_checkpointing: bool = False
    """QAT / PEFT: recompute each decoder block in the backward pass, so what backward keeps is one block's worth
    instead of every block's (QAT keeps 5 bytes per weight otherwise; ``docs/scale.md``)."""

    def check(self, key):
        _choice(f"{key}.accelerator", self.accelerator, ("cpu", "gpu", "cuda", "mps", "auto"))
        _choice(f"{key}.backend", self.backend, ("auto", "torch", "triton"))
        _positive(f"{key}.max_steps", self.max_steps)
        _positive(f"{key}.checkpoint_every_n_steps", self.checkpoint_every_n_steps)

    def trainer_kwargs(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("checkpoint_every_n_steps", "resume", "backend", "activation_checkpointing"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class LoggerSettings:
    kind: str = "wandb"
    mode: str = "offline"
    project: str = "lords"
    group: str | None = None
    tags: tuple[str, ...] = ()

    def check(self, key):
        _choice(f"{key}.kind", self.kind, ("wandb", "csv", "none"))
        _choice(f"{key}.mode", self.mode, ("offline", "online", "disabled"))


@dataclass(frozen=True)
class EvalSettings:
    perplexity_tokens: int = 8192
    window: int = 2048
    corpus: str = "licenses"
    extra_corpora: tuple[str, ...] = ()
    """Further texts scored like ``corpus`` (metrics ``ppl/<name>``; ``ppl`` stays ``corpus``'s)."""
    tasks: tuple[str, ...] = ()
    task_limit: int | None = None
    batch_size: int = 1
    float_reference: bool = False
    """ptq stage: also score the float model before quantizing (``fp_ppl``), the reference of every ``ppl``."""
    heldout_calib_tokens: int = 0
    """Also score perplexity on this many calibration-source tokens right after the quant config's calibration
    tokens (held out from calibration: for picking between calibrated variants, never the evaluation text)."""

    def check(self, key):
        _positive(f"{key}.perplexity_tokens", self.perplexity_tokens, allow_zero=True)
        _positive(f"{key}.heldout_calib_tokens", self.heldout_calib_tokens, allow_zero=True)
        _positive(f"{key}.window", self.window)


@dataclass(frozen=True)
class RunSettings:
    model: ModelSettings
    quant: QuantConfig | None
    data: DataSettings
    stage: Any
    trainer: TrainerSettings
    logger: LoggerSettings
    eval: EvalSettings
    seed: int = 0
    out_dir: str = "outputs/runs/default"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d = {
            k: v.to_dict()
            if isinstance(v, QuantConfig)
            else dataclasses.asdict(v)
            if dataclasses.is_dataclass(v)
            else v
            for k, v in d.items()
        }
        return d


def settings_from_dict(d: dict[str, Any]) -> RunSettings:
    """Validate a plain (resolved) config dict; see the module docstring."""
    d = dict(d)
    d.pop("experiment", None)  # the experiment group is overrides only
    stage = d.get("stage")
    name = stage.get("name") if isinstance(stage, dict) else None
    if name not in STAGE_TYPES:
        _fail("stage.name", name, f"is not one of {STAGES}")
    known = {f.name for f in dataclasses.fields(RunSettings)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level key (known: {sorted(known)})")
    parts = {}
    types_ = {
        "model": ModelSettings,
        "data": DataSettings,
        "stage": STAGE_TYPES[name],
        "trainer": TrainerSettings,
        "logger": LoggerSettings,
        "eval": EvalSettings,
    }
    for key in (*types_, "quant"):
        if key not in d:
            raise ConfigError(f"{key}: missing config group")
    for key, cls in types_.items():
        parts[key] = _build(cls, d[key], key)
    parts["quant"] = build_quant(d["quant"])
    for key in ("seed", "out_dir"):
        if key in d:
            parts[key] = d[key]
    if not isinstance(parts.get("seed", 0), int):
        _fail("seed", parts["seed"], "must be an integer")
    return RunSettings(**parts)


def settings_or_exit(cfg) -> RunSettings:
    """For ``@hydra.main``: the validated settings, or exit status 2 with the one-line message naming the key."""
    import sys

    try:
        return settings_from_cfg(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def settings_from_cfg(cfg) -> RunSettings:
    """Validate a composed Hydra/OmegaConf config (interpolations resolved)."""
    from omegaconf import OmegaConf

    return settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
