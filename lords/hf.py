"""transformers integration: ``quant_method: "lords"`` for ``from_pretrained`` / ``save_pretrained``.

``import lords`` imports this module when transformers is installed, which registers the config and the
quantizer with transformers (``register_quantization_config`` / ``register_quantizer``). Then

    model = AutoModelForCausalLM.from_pretrained(lords_dir, device_map="auto", dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=LordsQuantConfig(LordsConfig(bits=4)))
    model.save_pretrained(out_dir)

A pre-quantized folder is checked first (every shard's hashes, every module's shapes; ``lords.integrity``), then
the quantizer replaces the listed ``nn.Linear`` modules by empty ``LoRDSLinear`` / ``BlockLinear`` on the meta
device and transformers loads the stored tensors into them: no float weight of a quantized layer is ever built.
A float folder with a ``LordsQuantConfig`` is loaded, then quantized by ``quantize_`` (data-free configs only:
a calibrated refinement needs ``quantize_`` with calibration tokens).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers.quantizers import HfQuantizer, register_quantizer
from transformers.quantizers.auto import register_quantization_config
from transformers.utils.quantization_config import QuantizationConfigMixin

from . import __version__
from .checkpoint import FORMAT_VERSION, QUANT_METHOD, check_layout, install_layout, layout
from .config import QuantConfig, config_from_dict
from .errors import CheckpointError, ConfigError
from .integrity import MANIFEST_KEY, manifest_json, shapes, text_digest, verify
from .linear import QuantizedLinear


class LordsQuantConfig(QuantizationConfigMixin):
    """``quantization_config`` of a lords model: the lords config (any ``QuantConfig``: ``LordsConfig``,
    ``BlockwiseConfig``, ``LayerwiseConfig``, ``MixedPrecisionConfig``...), and once quantized the layout of every
    quantized module and the SHA-256 of the tensor manifest. ``LordsQuantConfig(lords.LordsConfig(bits=4))``."""

    def __init__(self, config: QuantConfig | dict | None = None, modules: dict | None = None,
                 manifest_sha256: str | None = None, format_version: int = FORMAT_VERSION,
                 library_version: str = __version__, extra: dict | None = None, **kwargs):
        if config is None:
            raise ConfigError("LordsQuantConfig(config=...) needs a lords config, e.g. lords.LordsConfig(bits=4)")
        if isinstance(config, dict):
            config = config_from_dict(config)  # validates a hand-written or loaded dict
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
    """Builds quantized modules before weights load (pre-quantized folders) or quantizes after (float folders)."""

    requires_calibration = False
    quantization_config: LordsQuantConfig

    def validate_environment(self, *args, **kwargs):
        config = self.quantization_config.lords_config
        if not self.pre_quantized and config.needs_calibration:
            raise ConfigError("this lords config refines on calibration activations: quantize-on-load is data-free. "
                              "Load the float model, then lords.quantize_(model, config, calib_ids=...)")

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        return False  # pre-quantized tensors load as they are; float models are quantized after loading

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if not self.pre_quantized:
            return model
        qc = self.quantization_config
        files = [Path(f) for f in checkpoint_files or ()]
        if not files or any(f.suffix != ".safetensors" for f in files):
            raise CheckpointError(f"a lords checkpoint is safetensors shards, got {[f.name for f in files]}")
        verify(files, qc.manifest_sha256)
        check_layout(qc.modules, shapes(files))
        install_layout(model, qc.modules)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        config = self.quantization_config.lords_config
        if self.pre_quantized:
            model.lords_config = config
            return model
        from .quantize import quantize_

        quantize_(model, config, progress=False)  # attaches a quantizer that records the layout
        return model

    def get_state_dict_and_metadata(self, model):
        """The tensors to save (tied duplicates removed as transformers does) and, in every shard's header, their
        manifest; the layout and the manifest's SHA-256 go into ``config.json``."""
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(model.state_dict(), model)
        manifest = manifest_json(state)
        self.quantization_config.modules = layout(model)
        self.quantization_config.manifest_sha256 = text_digest(manifest)
        return state, {MANIFEST_KEY: manifest}

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self) -> bool:
        return True  # B, A (PEFT) and the float parameters train; the codes are buffers


def attach(model: nn.Module, config: QuantConfig, extra: dict | None = None, manifest_sha256: str | None = None):
    """Make a model quantized by ``quantize_`` savable with ``save_pretrained``: a lords quantizer and its
    ``quantization_config`` on the model (what ``from_pretrained`` would have set)."""
    if not any(isinstance(m, QuantizedLinear) for m in model.modules()) or not hasattr(model, "config"):
        return model
    qc = LordsQuantConfig(config, modules=layout(model), manifest_sha256=manifest_sha256, extra=extra)
    model.hf_quantizer = LordsHfQuantizer(qc, pre_quantized=True)
    model.config.quantization_config = qc
    model.quantization_method = QUANT_METHOD
    return model


register_quantization_config(QUANT_METHOD)(LordsQuantConfig)
