import pytest
import torch

from lords.errors import ConfigError, ShapeError
from lords.packing import pack_codes, packed_width, unpack_codes


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("k", [8, 64, 100, 576, 13])
def test_pack_unpack_round_trips(bits, k):
    codes = torch.randint(0, 2**bits, (7, k), generator=torch.Generator().manual_seed(k))
    q = pack_codes(codes, bits)
    assert q.dtype == torch.uint8 and q.shape == (7, packed_width(k, bits))
    assert torch.equal(unpack_codes(q, bits, k), codes.to(torch.uint8))


@pytest.mark.parametrize("bits,bytes_per_8", [(2, 2), (3, 3), (4, 4)])
def test_packing_costs_exactly_bits_per_weight(bits, bytes_per_8):
    assert packed_width(4096, bits) == 4096 // 8 * bytes_per_8


def test_four_bit_layout_is_low_nibble_first():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    assert pack_codes(codes, 4)[0, :2].tolist() == [1 | 2 << 4, 3 | 4 << 4]


def test_three_bit_layout_is_a_two_bit_plane_then_a_high_bit_plane():
    codes = torch.tensor([[4, 5, 6, 7, 0, 1, 2, 3]])
    q = pack_codes(codes, 3)
    assert q[0].tolist() == [0 | 1 << 2 | 2 << 4 | 3 << 6, 0 | 1 << 2 | 2 << 4 | 3 << 6, 0b00001111]


def test_codes_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="out of range"):
        pack_codes(torch.tensor([[16, 0]]), 4)


def test_unpacking_with_the_wrong_width_names_the_shapes():
    q = pack_codes(torch.zeros(3, 64, dtype=torch.uint8), 4)
    with pytest.raises(ShapeError, match=r"\(3, 32\)"):
        unpack_codes(q, 3, 64)
