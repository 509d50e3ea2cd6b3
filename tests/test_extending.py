"""Adding a quantization method is one config class + one handler (+ its layer): a test-only method, one absmax
scale per output row, registered here and nowhere else, gets quantize_, Algorithm 1, QAT and per-layer configs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from lords import (LayerwiseConfig, LoRDSLinear, LordsConfig, QATConfig, QuantizedLinear, RefineConfig, ScaleConfig,
                   ScaleMethod, config_from_dict, quantize_, register_handler)
from lords.blockwise import block_absmax, quantize_with_scale


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


class RowLinear(QuantizedLinear):
    def __init__(self, in_features, out_features, bits, grid, bias=None):
        super().__init__(in_features, out_features, bits, grid, bias)
        self.scales = nn.Parameter(torch.zeros(out_features, 1), requires_grad=False)

    @classmethod
    def from_scale(cls, weight, scale, config, grid, bias):
        module = cls(weight.shape[1], weight.shape[0], config.bits, grid, bias).to(weight.device)
        module.scales.data.copy_(scale.scales.detach())
        module.set_codes(quantize_with_scale(weight, scale(), grid))
        return module

    scale_dtype = torch.float32

    def scale_matrix(self):
        return self.scales.expand(-1, self.in_features)

    def float_params(self):
        return self.scales.numel()

    def forward(self, x):
        return nn.functional.linear(x, self.weight_for(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


register_handler(RowwiseConfig)(ScaleMethod(
    init_scale=lambda w, c, name: RowScale(block_absmax(w, w.shape[1]), w.shape[1]),
    build=RowLinear.from_scale))


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
    cfg = LayerwiseConfig(rules=((r"\.mlp\.", RowwiseConfig(bits=4)), (r"\.k_proj$", None)),
                          default=LordsConfig(bits=3, block_size=16))
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


def test_a_module_the_checkpoint_format_cannot_hold_is_refused_when_saved(tiny_model, tmp_path):
    from lords import save_quantized
    from lords.errors import CheckpointError

    quantize_(tiny_model, RowwiseConfig(bits=4), progress=False)
    with pytest.raises(CheckpointError, match="RowLinear is not a module the checkpoint format holds"):
        save_quantized(tiny_model, tmp_path / "q")
