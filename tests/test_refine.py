import pytest
import torch

from lords.blockwise import block_absmax
from lords.config import RefineConfig
from lords.errors import ConfigError
from lords.grids import normal_float
from lords.lowrank import init_from_blocks, parity_rank
from lords.refine import LayerStats, objective_fn, refine
from lords.scales import BlockScale, LowRankScale


def _layer(n=96, m=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, m, generator=g) * (1 + 3 * torch.rand(1, m, generator=g))  # uneven input channels
    x = torch.randn(256, m, generator=g) * (0.1 + 2 * torch.rand(1, m, generator=g))
    return w, LayerStats(diag=x.pow(2).mean(0), sample=x)


def _lowrank(w, block=32):
    n, m = w.shape
    return LowRankScale(*init_from_blocks(block_absmax(w, block), m, block, parity_rank(n, m, block)))


def _blocks(w, block=32):
    return BlockScale(block_absmax(w, block), w.shape[1], block)


@pytest.mark.parametrize("objective", ["weight", "act_diag", "act"])
@pytest.mark.parametrize("make_scale", [_lowrank, _blocks], ids=["lords", "blockwise"])
@pytest.mark.parametrize("lr", [1e-3, 1e-1])  # a large lr makes bad steps likely: the best iterate must still win
def test_refine_never_returns_worse_than_its_start(objective, make_scale, lr):
    w, stats = _layer()
    scale = make_scale(w)
    result = refine(w, scale, normal_float(3), RefineConfig(steps=15, lr=lr, objective=objective), stats)
    assert result.best_loss <= result.start_loss
    assert len(result.losses) == 16
    # The scale is left at the best iterate and the codes are its nearest codes.
    loss = objective_fn(objective, stats, w.shape[1])(w - scale().detach() * normal_float(3)[result.codes.long()])
    assert float(loss) == pytest.approx(result.best_loss, rel=1e-5)


def test_refine_lowers_lords_weight_error_below_its_svd_init():
    w, _ = _layer(seed=1)
    result = refine(w, _lowrank(w), normal_float(3), RefineConfig(steps=40, lr=1e-2))
    assert result.best_loss < 0.95 * result.start_loss


def test_zero_steps_keeps_the_init():
    w, _ = _layer()
    scale = _lowrank(w)
    before = scale().detach().clone()
    result = refine(w, scale, normal_float(4), RefineConfig(steps=0))
    assert torch.equal(scale().detach(), before) and len(result.losses) == 1


def test_calibrated_objectives_need_statistics():
    w, _ = _layer()
    with pytest.raises(ConfigError, match="act_diag.*calibration"):
        refine(w, _lowrank(w), normal_float(4), RefineConfig(steps=1, objective="act_diag"))


def test_refine_config_names_the_bad_field():
    with pytest.raises(ConfigError, match="refine.objective='mse'"):
        RefineConfig(objective="mse")
    with pytest.raises(ConfigError, match="refine.lr"):
        RefineConfig(lr=0)
