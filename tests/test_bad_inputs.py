"""Every refusal is a LordsError whose message names what is wrong (one row per refusal: what the user gave, the error it raises)."""

import pytest
import torch
from torch import nn

from lords import BlockwiseConfig, LordsConfig, RefineConfig, quantize_
from lords.config import config_from_dict
from lords.errors import LordsError
from lords_pipelines.models import tiny_llama


def _quantized_layer():
    layer = nn.Sequential(nn.Linear(64, 32))
    quantize_(layer, LordsConfig(block_size=16), progress=False)
    return layer[0]


def _nan_model():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight[1, 2] = float("nan")
    return model


CASES = {
    "bits=5": (lambda: LordsConfig(bits=5), "bits=5"),
    "grid=fp4": (lambda: BlockwiseConfig(grid="fp4"), "grid='fp4'"),
    "block_size=0": (lambda: LordsConfig(block_size=0), "block_size=0"),
    "block_size=1.5": (lambda: LordsConfig(block_size=1.5), "block_size=1.5"),
    "rank=-1": (lambda: LordsConfig(rank=-1), "rank=-1"),
    "rank above full": (
        lambda: quantize_(nn.Sequential(nn.Linear(64, 8)), LordsConfig(rank=9, block_size=8), progress=False),
        r"rank 9.*\[1, 8\]",
    ),
    "parity rank 0": (
        lambda: quantize_(nn.Sequential(nn.Linear(8, 8)), LordsConfig(block_size=64), progress=False),
        "rank 0",
    ),
    "refine.steps=-1": (lambda: RefineConfig(steps=-1), "refine.steps"),
    "objective needs data": (
        lambda: quantize_(
            tiny_llama(), LordsConfig(block_size=16, refine=RefineConfig(objective="act_diag")), progress=False
        ),
        "calib_ids",
    ),
    "NaN weight": (
        lambda: quantize_(_nan_model(), LordsConfig(block_size=16), progress=False),
        "layers.0.self_attn.k_proj.weight holds 1 NaN/Inf",
    ),
    "no linear layer": (
        lambda: quantize_(nn.Sequential(nn.Conv1d(4, 4, 3)), LordsConfig(), progress=False),
        "no nn.Linear",
    ),
    "include matches nothing": (
        lambda: quantize_(tiny_llama(), LordsConfig(include=("conv",)), progress=False),
        "include=\\('conv',\\)",
    ),
    "unknown config field": (lambda: config_from_dict({"method": "lords", "bitz": 4}), "bitz"),
    "unknown method": (lambda: config_from_dict({"method": "gptq"}), "method='gptq'"),
    "wrong input width": (lambda: _quantized_layer()(torch.randn(2, 63)), "63 features.*expects 64"),
    "unknown backend": (lambda: _quantized_layer().set_backend("cuda"), "backend='cuda'"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_refused_with_a_precise_message(case):
    make, message = CASES[case]
    with pytest.raises(LordsError, match=message):
        make()


def test_errors_are_also_the_builtin_kinds_callers_expect():
    from lords.errors import CheckpointError, ConfigError, ShapeError

    assert issubclass(ConfigError, ValueError) and issubclass(ShapeError, ValueError)
    assert issubclass(CheckpointError, OSError)


def test_a_block_larger_than_the_row_is_one_partial_block():
    layer = nn.Sequential(nn.Linear(48, 16))
    report = quantize_(layer, BlockwiseConfig(block_size=64), progress=False)
    assert layer[0].scales.shape == (16, 1) and report.float_params == 16
