"""Property tests over random shapes, bits, block sizes and ranks, against float64 brute force."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lords import BlockwiseConfig, LordsConfig, quantize_
from lords.blockwise import block_absmax, dequantize, expand_blocks, quantize_blockwise
from lords.grids import make_grid, nearest_code
from lords.lowrank import init_from_blocks
from lords.packing import pack_codes, unpack_codes

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
bits = st.sampled_from([2, 3, 4])
grids = st.sampled_from(["nf", "int"])


def _weight(seed, n, m, kind):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, m, generator=g, dtype=torch.float64)
    if kind == "outlier_columns":
        w[:, :: max(m // 3, 1)] *= 100
    elif kind == "zero_rows":
        w[:: max(n // 2, 1)] = 0
    elif kind == "huge":
        w *= 1e30
    elif kind == "denormal":
        w *= 1e-41
    return w.float()


KINDS = st.sampled_from(["normal", "outlier_columns", "zero_rows", "huge", "denormal"])


@FUZZ
@given(seed=st.integers(0, 10**6), n=st.integers(1, 40), m=st.integers(1, 100), b=bits)
def test_packing_round_trips_any_shape(seed, n, m, b):
    codes = torch.randint(0, 2**b, (n, m), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(unpack_codes(pack_codes(codes, b), b, m), codes.to(torch.uint8))


@FUZZ
@given(seed=st.integers(0, 10**6), b=bits, grid=grids, scale=st.floats(1e-3, 1e3))
def test_nearest_code_is_the_float64_argmin(seed, b, grid, scale):
    g = make_grid(grid, b)
    x = torch.randn(500, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    dist = (x[:, None] - g.double()[None, :]).abs()
    picked = dist.gather(1, nearest_code(x.float(), g).long()[:, None])[:, 0]
    # Equal distance is allowed (ties, and float32 rounding of x): never a strictly farther code.
    assert torch.all(picked <= dist.min(1).values + 1e-6 * scale)


@FUZZ
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(1, 24),
    m=st.integers(1, 150),
    block=st.integers(1, 96),
    b=bits,
    grid=grids,
    kind=KINDS,
)
def test_blockwise_error_is_bounded_by_half_a_grid_step_per_block(seed, n, m, block, b, grid, kind):
    w = _weight(seed, n, m, kind)
    g = make_grid(grid, b)
    codes, scales = quantize_blockwise(w, g, block)
    S = expand_blocks(scales, m, block)
    w_hat = dequantize(codes, S, g)
    assert torch.isfinite(w_hat).all()
    half_step = float(torch.diff(g).max()) / 2
    err = (w.double() - w_hat.double()).abs()
    assert torch.all(err <= S.double() * half_step * (1 + 1e-5) + 1e-45)


@FUZZ
@given(seed=st.integers(0, 10**6), n=st.integers(1, 30), m=st.integers(2, 120), block=st.integers(1, 64), kind=KINDS)
def test_svd_init_matches_block_scales_at_full_rank(seed, n, m, block, kind):
    w = _weight(seed, n, m, kind)
    scales = block_absmax(w, block)
    rank = min(n, scales.shape[1])
    B, A = init_from_blocks(scales, m, block, rank)
    S = expand_blocks(scales, m, block).double()
    assert torch.isfinite(B).all() and torch.isfinite(A).all()
    assert float((B.double() @ A.double() - S).norm()) <= 1e-5 * float(S.norm()) + 1e-30


@FUZZ
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(8, 48),
    m=st.integers(8, 96),
    b=bits,
    kind=KINDS,
    method=st.sampled_from(["lords", "blockwise"]),
)
def test_quantized_layers_are_finite_for_any_weights(seed, n, m, b, kind, method):
    layer = torch.nn.Sequential(torch.nn.Linear(m, n))
    with torch.no_grad():
        layer[0].weight.copy_(_weight(seed, n, m, kind))
    cfg = LordsConfig(bits=b, block_size=8, rank=2) if method == "lords" else BlockwiseConfig(bits=b, block_size=8)
    report = quantize_(layer, cfg, progress=False)
    assert torch.isfinite(layer[0].dequantized_weight()).all()
    x = torch.randn(3, m, generator=torch.Generator().manual_seed(seed))
    if kind != "huge":  # 1e30 weights overflow any float32 matmul, quantized or not
        assert torch.isfinite(layer(x)).all()
    assert report.layers[0].float_params > 0
