"""Adding a quantization method is one config class + one handler + its layer with a registered layout: a test-only
method, one absmax scale per output row, registered here and nowhere else, gets quantize_, Algorithm 1, QAT,
per-layer configs, and checkpoints that reload bit for bit and open with transformers' from_pretrained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from lords import (
    LayerwiseConfig,
    LordsConfig,
    LoRDSLinear,
    QATConfig,
    QuantizedLinear,
    RefineConfig,
    ScaleConfig,
    ScaleMethod,
    config_from_dict,
    load_quantized,
    quantize_,
    register_handler,
    register_layout,
    save_quantized,
)
from lords.blockwise import block_absmax, quantize_with_scale
from lords.errors import CheckpointError


@dataclass(frozen=True)
class RowwiseConfig(ScaleConfig):
    """Test-only method: one scale per output row."""

    method: ClassVar[str] = "rowwise_test"


class RowScale(nn.Module):
    def __init__(self, scales: torch.Tensor, in_features: int):
        super().__init__()
        self.scales, self.in_features = nn.Parameter(scales.float().clone()), in_features

    def forward(self) -> torch.Tensor:
        return self.scales.expand(-1, self.in_features)  # no grads(): Algorithm 1 asks autograd


@register_layout("rowwise_test")
class RowLinear(QuantizedLinear):
    """``scales (out, 1)``: the layout needs no field beyond the sizes, bits, bias and dtype every layer records."""

    def __init__(self, in_features, out_features, bits, grid, bias=None, dtype=torch.float32):
        super().__init__(in_features, out_features, bits, grid, bias)
        self.scales = nn.Parameter(torch.zeros(out_features, 1, dtype=dtype), requires_grad=False)

    @classmethod
    def from_scale(cls, weight, scale, config, grid, bias):
        module = cls(weight.shape[1], weight.shape[0], config.bits, grid, bias).to(weight.device)
        module.scales.data.copy_(scale.scales.detach())
        module.set_codes(quantize_with_scale(weight, scale(), grid))
        return module

    @property
    def scale_dtype(self):
        return self.scales.dtype

    def scale_matrix(self):
        return self.scales.float().expand(-1, self.in_features)

    def float_params(self):
        return self.scales.numel()

    def forward(self, x):
        return nn.functional.linear(x, self.weight_for(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


register_handler(RowwiseConfig)(
    ScaleMethod(
        init_scale=lambda w, c, name: RowScale(block_absmax(w, w.shape[1]), w.shape[1]), build=RowLinear.from_scale
    )
)


def test_the_new_method_quantizes_through_the_verb(tiny_model, tokens):
    report = quantize_(tiny_model, RowwiseConfig(bits=4), progress=False)
    assert len(report.layers) == 14 and report.rel_error < 0.2
    assert isinstance(tiny_model.model.layers[0].mlp.up_proj, RowLinear)
    assert torch.isfinite(tiny_model(tokens).logits).all()


def test_the_new_method_gets_algorithm_1(tiny_model):
    import copy

    plain = quantize_(copy.deepcopy(tiny_model), RowwiseConfig(bits=3), progress=False)
    refined = quantize_(tiny_model, RowwiseConfig(bits=3, refine=RefineConfig(steps=20, lr=1e-2)), progress=False)
    assert refined.rel_error < plain.rel_error


def test_the_new_method_gets_qat(tiny_model, tokens):
    cfg = RowwiseConfig(bits=3)
    quantize_(tiny_model, QATConfig(cfg, "prepare"), progress=False)
    tiny_model(tokens, labels=tokens).loss.backward()
    quantize_(tiny_model, QATConfig(cfg, "convert"), progress=False)
    assert isinstance(tiny_model.model.layers[1].self_attn.v_proj, RowLinear)


def test_the_new_method_mixes_with_lords_per_layer(tiny_model):
    cfg = LayerwiseConfig(
        rules=((r"\.mlp\.", RowwiseConfig(bits=4)), (r"\.k_proj$", None)), default=LordsConfig(bits=3, block_size=16)
    )
    quantize_(tiny_model, cfg, progress=False)
    layer = tiny_model.model.layers[0]
    assert isinstance(layer.mlp.down_proj, RowLinear) and isinstance(layer.self_attn.q_proj, LoRDSLinear)
    assert type(layer.self_attn.k_proj) is nn.Linear
    assert config_from_dict(cfg.to_dict()) == cfg


def test_an_unregistered_config_type_is_refused_naming_the_registered_ones(tiny_model):
    @dataclass(frozen=True)
    class Unregistered(ScaleConfig):
        method: ClassVar[str] = "unregistered_test"

    with pytest.raises(Exception, match="no quantizer registered for config type Unregistered.*LordsConfig"):
        quantize_(tiny_model, Unregistered(), progress=False)


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def test_the_new_method_saves_and_reloads_bit_for_bit(tiny_model, tokens, tmp_path):
    cfg = LayerwiseConfig(rules=((r"\.mlp\.", RowwiseConfig(bits=4)),), default=LordsConfig(bits=3, block_size=16))
    quantize_(tiny_model, cfg, progress=False)
    save_quantized(tiny_model, tmp_path / "q")
    loaded, loaded_cfg = load_quantized(tmp_path / "q")
    assert loaded_cfg == cfg and type(loaded.model.layers[1].mlp.up_proj) is RowLinear
    assert _same_state(loaded, tiny_model)
    assert torch.equal(_logits(loaded, tokens), _logits(tiny_model, tokens))


def test_the_new_methods_folder_opens_with_from_pretrained(tiny_model, tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    quantize_(tiny_model, RowwiseConfig(bits=3), progress=False)
    tiny_model.save_pretrained(tmp_path / "q")  # quantize_ attached the lords quantizer: a lords folder
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert type(loaded.model.layers[0].self_attn.q_proj) is RowLinear
    assert _same_state(loaded, tiny_model)
    assert torch.equal(_logits(loaded, tokens), _logits(tiny_model, tokens))


def test_a_layer_class_without_a_registered_layout_is_refused_when_saved_naming_it(tiny_model, tmp_path):
    class UnsavedRowLinear(RowLinear):  # a subclass does not inherit its parent's kind: its state may differ
        pass

    quantize_(tiny_model, RowwiseConfig(bits=4), progress=False)
    tiny_model.model.layers[0].mlp.up_proj.__class__ = UnsavedRowLinear
    with pytest.raises(CheckpointError, match="UnsavedRowLinear has no registered layout.*rowwise_test"):
        save_quantized(tiny_model, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_a_kind_belongs_to_one_class():
    from lords.errors import ConfigError

    with pytest.raises(ConfigError, match="kind 'rowwise_test' is already registered by .*RowLinear"):
        register_layout("rowwise_test")(type("OtherRowLinear", (RowLinear,), {}))
