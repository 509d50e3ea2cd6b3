import pytest
import torch

from lords.blockwise import block_absmax, expand_blocks
from lords.errors import ShapeError
from lords.lowrank import check_rank, init_from_blocks, parity_rank

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (4096, 4096), (14336, 4096), (1024, 4096)]


@pytest.mark.parametrize("n,m", SHAPES, ids=[f"{n}x{m}" for n, m in SHAPES])
@pytest.mark.parametrize("block", [32, 64, 128, 256])
def test_parity_rank_never_exceeds_the_block_float_budget(n, m, block):
    r = parity_rank(n, m, block)
    assert r * (n + m) <= n * m // block
    assert (r + 1) * (n + m) > n * m // block  # and it is the largest such rank


def test_parity_ranks_of_llama3_8b_at_block_128_are_the_papers():
    assert parity_rank(4096, 4096, 128) == 16  # q, o
    assert parity_rank(1024, 4096, 128) == 6  # k, v
    assert parity_rank(14336, 4096, 128) == 24  # gate, up, down


@pytest.mark.parametrize("m,block", [(256, 64), (200, 64), (96, 32)])
def test_svd_init_reproduces_block_scales_exactly_at_full_block_rank(m, block):
    w = torch.randn(24, m, generator=torch.Generator().manual_seed(m))
    scales = block_absmax(w, block)
    B, A = init_from_blocks(scales, m, block, rank=scales.shape[1])
    assert B.shape == (24, scales.shape[1]) and A.shape == (scales.shape[1], m)
    torch.testing.assert_close(B @ A, expand_blocks(scales, m, block), rtol=1e-5, atol=1e-6)


def test_svd_init_is_the_best_rank_r_approximation():
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(1))
    scales = block_absmax(w, 32)
    S = expand_blocks(scales, 512, 32).double()
    B, A = init_from_blocks(scales, 512, 32, rank=4)
    sv = torch.linalg.svdvals(S)
    # Eckart–Young: the truncation error is the norm of the dropped singular values.
    assert float((S - (B @ A).double()).norm()) == pytest.approx(float(sv[4:].norm()), rel=1e-4)


def test_rank_zero_or_above_full_rank_is_refused_with_the_layer_named():
    with pytest.raises(ShapeError, match="q_proj.*rank 0"):
        check_rank(0, 64, 64, where="q_proj")
    with pytest.raises(ShapeError, match=r"\[1, 8\]"):
        check_rank(9, 8, 64)


def test_rank_above_the_block_rank_starts_exact_and_its_extra_directions_train():
    from lords.config import RefineConfig
    from lords.grids import normal_float
    from lords.refine import refine
    from lords.scales import LowRankScale

    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(2))
    scales = block_absmax(w, 32)  # 4 blocks per row: block rank ≤ 4
    scale = LowRankScale(*init_from_blocks(scales, 128, 32, rank=8))
    torch.testing.assert_close(scale().detach(), expand_blocks(scales, 128, 32), rtol=1e-5, atol=1e-6)
    refine(w, scale, normal_float(3), RefineConfig(steps=5, lr=1e-2))
    assert scale.B.detach()[:, 4:].abs().sum() > 0  # the extra directions moved off their start
