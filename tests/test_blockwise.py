import pytest
import torch

from lords.blockwise import (
    block_absmax,
    dequantize,
    double_dequantize,
    double_quantize,
    expand_blocks,
    quantize_blockwise,
)
from lords.errors import ConfigError, NumericsError
from lords.grids import normal_float, symmetric_int


def _w(n=16, m=256, seed=0):
    return torch.randn(n, m, generator=torch.Generator().manual_seed(seed))


def test_nf4_block64_matches_bitsandbytes_code_for_code():
    functional = pytest.importorskip("bitsandbytes.functional")
    w = _w(32, 512)
    packed, state = functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
    # bitsandbytes stores two codes per byte, the first in the high nibble, in flat row-major order.
    flat = packed.flatten()
    bnb_codes = torch.stack([flat >> 4, flat & 15], dim=1).flatten().view(32, 512)
    codes, scales = quantize_blockwise(w, normal_float(4), 64)
    assert torch.equal(scales.flatten(), state.absmax.float())
    assert torch.equal(codes, bnb_codes)


def test_partial_last_block_gets_its_own_absmax():
    w = torch.zeros(1, 100)
    w[0, 99] = -3.0
    w[0, 0] = 2.0
    scales = block_absmax(w, 64)
    assert scales.tolist() == [[2.0, 3.0]]
    assert expand_blocks(scales, 100, 64).shape == (1, 100)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_more_bits_give_less_error(bits):
    w = _w()
    errs = []
    for b in (bits, min(bits + 1, 4)):
        codes, scales = quantize_blockwise(w, symmetric_int(b), 64)
        errs.append(float((w - dequantize(codes, expand_blocks(scales, 256, 64), symmetric_int(b))).norm()))
    assert errs[1] <= errs[0]


def test_block_maxima_are_reconstructed_exactly():
    w = _w()
    codes, scales = quantize_blockwise(w, normal_float(3), 64)
    w_hat = dequantize(codes, expand_blocks(scales, 256, 64), normal_float(3))
    blocks, hat_blocks = w.view(16, 4, 64), w_hat.view(16, 4, 64)
    idx = blocks.abs().argmax(-1, keepdim=True)
    assert torch.allclose(blocks.gather(-1, idx), hat_blocks.gather(-1, idx))


def test_zero_rows_quantize_to_zero_without_nan():
    w = torch.zeros(4, 128)
    codes, scales = quantize_blockwise(w, normal_float(4), 64)
    assert torch.equal(dequantize(codes, expand_blocks(scales, 128, 64), normal_float(4)), w)


def test_double_quantized_scales_stay_within_int8_rounding():
    scales = block_absmax(_w(64, 512), 64)
    back = double_dequantize(*double_quantize(scales), shape=scales.shape)
    assert (back - scales).abs().max() <= (scales - scales.mean()).abs().max() / 127


def test_nan_weights_are_refused():
    w = _w()
    w[3, 5] = float("nan")
    with pytest.raises(NumericsError, match="NaN"):
        block_absmax(w, 64)


def test_bad_block_size_is_refused():
    with pytest.raises(ConfigError, match="block_size=0"):
        block_absmax(_w(), 0)
