"""transformers integration: ``quant_method: "lords"`` for ``from_pretrained`` / ``save_pretrained``.

Importing this module registers the config and the quantizer with transformers (``register_quantization_config`` /
``register_quantizer``); after ``import lords`` that happens as soon as transformers loads its quantizer registry
(``lords.hf_registration``). Then

    model = AutoModelForCausalLM.from_pretrained(lords_dir, device_map="auto", dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=LordsQuantConfig(LordsConfig(bits=4)))
    model.save_pretrained(out_dir)

A pre-quantized folder is checked first (every shard's hashes, every module's shapes and dtypes; ``lords.integrity``,
``lords.layouts``), then the quantizer replaces the listed ``nn.Linear`` modules by empty modules of their registered
layouts (``LoRDSLinear``, ``BlockLinear``, ``LoftQLinear``, ...) on the meta device and transformers loads the stored
tensors into them: no float weight of a quantized layer is ever built.
A float folder with a ``LordsQuantConfig`` is quantized layer by layer as its weights load (``LordsQuantize``: the
same handler, seed and result as ``quantize_``, one float linear in memory at a time). Data-free configs only: a
calibrated refinement needs the whole float model's activations, so ``quantize_`` with calibration tokens.

Importing this module also hooks ``quantize_`` (``lords.quantize.after_quantize``): a transformers model quantized in
memory gets the lords quantizer attached, so its ``save_pretrained`` writes a lords folder.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer, register_quantizer
from transformers.quantizers.auto import register_quantization_config
from transformers.utils.quantization_config import QuantizationConfigMixin

from .config import QuantConfig, config_from_dict
from .errors import CheckpointError, ConfigError, LordsError, UnsupportedModuleError
from .folder import (
    FIELDS,
    FORMAT_VERSION,
    QUANT_METHOD,
    check_layout,
    check_model_fits,
    check_quantization_config,
    install_layout,
    layout,
    metadata_digest,
    swap_in,
)
from .handlers import handler_for
from .integrity import MANIFEST_KEY, QUANTIZATION_KEY, manifest_json, tensor_specs, text_digest, verify
from .linear import QuantizedLinear
from .quantize import after_quantize, fused_params_left_in_float, plan
from .version import __version__


class LordsQuantConfig(QuantizationConfigMixin):
    """``quantization_config`` of a lords model: the lords config (any ``QuantConfig``: ``LordsConfig``,
    ``BlockwiseConfig``, ``LayerwiseConfig``, ``MixedPrecisionConfig``...), and once quantized the layout of every
    quantized module and the SHA-256 of the tensor manifest. ``LordsQuantConfig(lords.LordsConfig(bits=4))``."""

    def __init__(
        self,
        config: QuantConfig | dict | None = None,
        modules: dict | None = None,
        manifest_sha256: str | None = None,
        format_version: int = FORMAT_VERSION,
        library_version: str = __version__,
        extra: dict | None = None,
        quant_method: str = QUANT_METHOD,
        **unknown,
    ):
        if unknown:
            raise CheckpointError(f"quantization_config: unknown field(s) {sorted(unknown)} for quant_method 'lords'")
        if config is None:
            raise ConfigError("LordsQuantConfig(config=...) needs a lords config, e.g. lords.LordsConfig(bits=4)")
        if isinstance(config, dict):  # read from config.json
            try:
                config = config_from_dict(config)
            except LordsError as e:
                raise CheckpointError(f"quantization_config.config is malformed ({e})") from e
        if not isinstance(config, QuantConfig):
            raise ConfigError(f"config={config!r} is not a lords config (LordsConfig, BlockwiseConfig, ...)")
        self.quant_method = QUANT_METHOD
        self.config = config.to_dict()
        self.modules = modules
        self.manifest_sha256 = manifest_sha256
        self.format_version = format_version
        self.library_version = library_version
        self.extra = extra or {}

    @property
    def lords_config(self) -> QuantConfig:
        return config_from_dict(self.config)


@register_quantizer(QUANT_METHOD)
class LordsHfQuantizer(HfQuantizer):
    """Builds quantized modules before weights load (pre-quantized folders) or quantizes each planned linear as its
    weight loads (float folders with a ``LordsQuantConfig``)."""

    requires_calibration = False
    quantization_config: LordsQuantConfig

    @property
    def is_compileable(self) -> bool:
        """True: the LoRDS layers trace without graph breaks (the Triton forward is a custom op with a fake kernel),
        so ``generate(cache_implementation="static")`` compiles a LoRDS model as it would a float one."""
        return True

    def validate_environment(self, *args, **kwargs):
        config = self.quantization_config.lords_config
        if not self.pre_quantized and config.needs_calibration:
            raise ConfigError(
                "this lords config refines on calibration activations: quantize-on-load is data-free. "
                "Load the float model, then lords.quantize_(model, config, calib_ids=...)"
            )

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        """Float folders: the ``weight`` of each planned linear, quantized as it loads (pre-quantized tensors
        load as they are)."""
        module, _, tensor = param_name.rpartition(".")
        return not self.pre_quantized and tensor == "weight" and module in getattr(self, "plan", {})

    def get_quantize_ops(self):
        return LordsQuantize(self)

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if not self.pre_quantized:
            config = self.quantization_config.lords_config
            chosen = plan(model, config)  # on the meta model: module types and names only
            fused = fused_params_left_in_float(model, config, chosen)
            if fused:
                raise UnsupportedModuleError(
                    f"fused expert parameter(s) {fused[:4]} are not nn.Linear and would stay "
                    "in float; exclude them to keep them in float knowingly"
                )
            self.plan, self.errors = {name: leaf for name, (_, leaf) in chosen.items()}, {}
            return model
        qc = self.quantization_config
        stored = check_quantization_config({k: getattr(qc, k, None) for k in FIELDS}, "config.json")
        files = [Path(f) for f in checkpoint_files or ()]
        if not files or any(f.suffix != ".safetensors" for f in files):
            raise CheckpointError(f"a lords checkpoint is safetensors shards, got {[f.name for f in files]}")
        folders = {Path(os.path.normpath(os.path.abspath(f))).parent for f in files}
        local = getattr(model, "name_or_path", None)  # a local folder, or a hub id whose snapshot holds the files
        local = Path(os.path.normpath(os.path.abspath(local))) if local and Path(local).is_dir() else None
        if len(folders) > 1 or (local is not None and folders != {local}):
            raise CheckpointError(
                f"the shard index names files outside the checkpoint folder ({sorted(map(str, folders))})"
            )
        specs = tensor_specs(files)  # the headers first: a layout that contradicts them is named before any hashing
        check_layout(qc.modules, specs)
        verify(files, qc.manifest_sha256, metadata_digest(stored))
        check_model_fits(model, qc.modules, specs, strict=False)
        install_layout(model, qc.modules, specs)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        config = self.quantization_config.lords_config
        if self.pre_quantized:
            model.lords_config = config
            model.save_pretrained = types.MethodType(_save_pretrained_swapped, model)
            return model
        if self.errors:
            raise next(iter(self.errors.values()))  # lords errors name the layer
        model.lords_config = config.stored_config
        attach(model, model.lords_config)  # the layout, for save_pretrained
        return model

    def get_state_dict_and_metadata(self, model):
        """The tensors to save (tied duplicates removed as transformers does) and, in every shard's header, their
        manifest; the layout and the manifest's SHA-256 go into ``config.json``."""
        # Not at the top: this module loads while transformers imports its quantizer registry, which its
        # modeling_utils does halfway through its own import (lords.hf_registration).
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(model.state_dict(), model)
        manifest = manifest_json(state)
        qc = self.quantization_config
        qc.modules = layout(model)
        qc.manifest_sha256 = text_digest(manifest)
        return state, {
            MANIFEST_KEY: manifest,
            QUANTIZATION_KEY: metadata_digest({k: getattr(qc, k, None) for k in FIELDS}),
        }

    def _dequantize(self, model, dtype=None):
        """``model.dequantize()``: every quantized module back to an ``nn.Linear`` holding ``grid[Q] ⊙ S``."""
        for name, m in list(model.named_modules()):
            if isinstance(m, QuantizedLinear):
                weight = m.dequantized_weight().to(dtype or m.scale_dtype)
                linear = nn.Linear(
                    m.in_features, m.out_features, bias=m.bias is not None, device=weight.device, dtype=weight.dtype
                )
                linear.weight.data.copy_(weight)
                if m.bias is not None:
                    linear.bias.data.copy_(m.bias)
                model.set_submodule(name, linear)
        model.__dict__.pop("lords_config", None)
        return model

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self) -> bool:
        return True  # B, A (PEFT) and the float parameters train; the codes are buffers


class LordsQuantize(ConversionOps):
    """Quantize-on-load of one linear: its float weight arrives, the planned handler builds the quantized module
    (the same call, seed and layer order as ``quantize_``) and it replaces the ``nn.Linear``; the float weight
    is dropped. Only one layer's float weight exists at a time."""

    def __init__(self, hf_quantizer: LordsHfQuantizer):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict, model=None, full_layer_name=None, missing_keys=None, **kwargs):
        value = next(iter(input_dict.values()))
        value = value[0] if isinstance(value, list) else value
        name = full_layer_name.rpartition(".")[0]
        leaf = self.hf_quantizer.plan[name]
        linear = model.get_submodule(name)
        late_bias = linear.bias is not None and linear.bias.is_meta  # loads after the weight: keep its slot
        shell = nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
        shell.weight = nn.Parameter(value, requires_grad=False)
        shell.bias = None if linear.bias is None or late_bias else linear.bias
        torch.manual_seed(leaf.seed)
        try:
            new, _ = handler_for(leaf)(name, shell, leaf, None)
        except Exception as e:  # transformers would log it and raise a generic error: keep it, raise it after loading
            self.hf_quantizer.errors.setdefault(name, e)
            return {}
        if late_bias:
            new.bias = nn.Parameter(torch.empty(linear.out_features, device="meta"), requires_grad=False)
        for t in (*new.parameters(), *new.buffers()):
            t._is_hf_initialized = True
        model.set_submodule(name, new)
        if missing_keys is not None:
            missing_keys.discard(full_layer_name)
        return {}


def attach(model: nn.Module, config: QuantConfig, extra: dict | None = None, manifest_sha256: str | None = None):
    """Make a model quantized by ``quantize_`` savable with ``save_pretrained``: a lords quantizer and its
    ``quantization_config`` on the model (what ``from_pretrained`` would have set)."""
    if not any(isinstance(m, QuantizedLinear) for m in model.modules()) or not hasattr(model, "config"):
        return model
    qc = LordsQuantConfig(config, modules=layout(model), manifest_sha256=manifest_sha256, extra=extra)
    model.hf_quantizer = LordsHfQuantizer(qc, pre_quantized=True)
    model.config.quantization_config = qc
    model.quantization_method = QUANT_METHOD
    model.save_pretrained = types.MethodType(_save_pretrained_swapped, model)
    return model


def _save_pretrained_swapped(self, save_directory, *args, **kwargs):
    """``save_pretrained`` of a lords model: over an existing model folder, the new one is written beside and swapped in
    whole (``lords.checkpoint.swap_in``), so a kill never leaves a half-written checkpoint where a whole one was;
    the old folder's other files (a tokenizer) are kept, as an in-place save keeps them."""
    import shutil

    path = Path(os.path.abspath(save_directory))
    if kwargs.get("push_to_hub") or not (path / "config.json").is_file() or path == Path.cwd():
        return type(self).save_pretrained(self, save_directory, *args, **kwargs)  # nothing whole to keep

    def write(tmp: Path) -> None:
        type(self).save_pretrained(self, tmp, *args, **kwargs)
        for entry in path.iterdir():
            weights = entry.name.startswith(("model.safetensors", "model-", "pytorch_model"))
            if not weights and not (tmp / entry.name).exists():
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)

    swap_in(path, write)


_save_pretrained_swapped.__name__ = "save_pretrained"  # a pickled model finds its class's method by this name


@after_quantize
def _attach_after_quantize(model: nn.Module, config: QuantConfig) -> None:
    """After ``quantize_``: ``model.save_pretrained(dir)`` now writes a lords folder (transformers models only)."""
    if not hasattr(model, "save_pretrained"):
        return
    try:
        attach(model, config)
    except CheckpointError:
        pass  # a module class with no registered layout: quantized all the same; save_quantized names it


register_quantization_config(QUANT_METHOD)(LordsQuantConfig)
