import pytest
import torch
from torch import nn

from lords import BlockLinear, BlockwiseConfig, LordsConfig, LoRDSLinear, RefineConfig, quantize_
from lords.errors import ConfigError, NumericsError, ShapeError, UnsupportedModuleError


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize(
    "config", [LordsConfig(bits=4, block_size=32), BlockwiseConfig(bits=4, block_size=32)], ids=["lords", "blockwise"]
)
def test_quantize_swaps_every_linear_but_the_lm_head(tiny_model, tokens, config):
    ref = _logits(tiny_model, tokens)
    report = quantize_(tiny_model, config, progress=False)
    kinds = {name: type(m) for name, m in tiny_model.named_modules() if "proj" in name or name == "lm_head"}
    assert kinds.pop("lm_head") is nn.Linear
    assert set(kinds.values()) == {LoRDSLinear if isinstance(config, LordsConfig) else BlockLinear}
    assert len(report.layers) == 14  # 2 decoder layers x (q, k, v, o, gate, up, down)
    out = _logits(tiny_model, tokens)
    # 4-bit quantization of a random model: logits stay close in direction.
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.95


def test_lords_float_budget_is_at_most_the_block_budget(tiny_model):
    import copy

    lords = quantize_(copy.deepcopy(tiny_model), LordsConfig(bits=3, block_size=16), progress=False)
    blocks = quantize_(tiny_model, BlockwiseConfig(bits=3, block_size=16), progress=False)
    assert lords.float_params <= blocks.float_params


def test_calibrated_refinement_lowers_the_activation_weighted_error_below_the_svd_init(tiny_model, tokens):
    import copy

    from lords.calibration import collect_stats

    weights = {
        n: m.weight.detach().clone() for n, m in tiny_model.named_modules() if type(m) is nn.Linear and n != "lm_head"
    }
    stats = collect_stats(tiny_model, tokens, {n: tiny_model.get_submodule(n) for n in weights}, 0)

    def weighted_error(model):  # measured here, independently of the refinement's own loss curve
        return sum(
            float(((w - model.get_submodule(n).dequantized_weight()) ** 2 * stats[n].diag).sum())
            for n, w in weights.items()
        )

    base = copy.deepcopy(tiny_model)
    quantize_(base, LordsConfig(bits=3, block_size=16), progress=False)
    cfg = LordsConfig(bits=3, block_size=16, refine=RefineConfig(steps=10, lr=1e-2, objective="act_diag"))
    quantize_(tiny_model, cfg, calib_ids=tokens, progress=False)
    assert weighted_error(tiny_model) < 0.97 * weighted_error(base)


def test_include_and_exclude_select_modules(tiny_model):
    report = quantize_(tiny_model, LordsConfig(block_size=16, include=("mlp",), exclude=("down_proj",)), progress=False)
    assert {layer.name.split(".")[-1] for layer in report.layers} == {"gate_proj", "up_proj"}


def test_a_model_without_linear_layers_is_refused():
    with pytest.raises(UnsupportedModuleError, match="no nn.Linear"):
        quantize_(nn.Sequential(nn.ReLU()), LordsConfig(), progress=False)


def test_nan_in_a_weight_is_refused_naming_the_module(tiny_model):
    with torch.no_grad():
        tiny_model.model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(NumericsError, match="layers.1.mlp.up_proj"):
        quantize_(tiny_model, BlockwiseConfig(block_size=16), progress=False)


def test_parity_rank_zero_is_refused_naming_the_layer(tiny_model):
    with pytest.raises(ShapeError, match="q_proj.*block_size"):
        quantize_(tiny_model, LordsConfig(block_size=128), progress=False)


def test_calibrated_objective_without_calibration_tokens_is_refused(tiny_model):
    cfg = LordsConfig(block_size=16, refine=RefineConfig(steps=1, objective="act"))
    with pytest.raises(ConfigError, match="calib_ids"):
        quantize_(tiny_model, cfg, progress=False)


def test_config_round_trips_through_a_dict():
    from lords.config import config_from_dict

    cfg = LordsConfig(bits=2, block_size=128, refine=RefineConfig(steps=3, objective="act"), rank=7)
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("field,value", [("bits", 5), ("block_size", 0), ("grid", "fp8"), ("rank", 0)])
def test_bad_config_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        LordsConfig(**{field: value})


def test_the_readme_api_is_reachable_from_the_package_with_torch_alone():
    import subprocess
    import sys

    code = (
        "import sys, lords; from lords_pipelines.models import load_model; "
        "from lords_pipelines.data.texts import tokenize; lords.QATConfig; "
        "assert 'transformers' not in sys.modules and 'lightning' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
