import pytest
import torch

from lords.errors import ConfigError
from lords.grids import (
    NF4_BITSANDBYTES,
    _normal_float_construction,
    make_grid,
    nearest_code,
    normal_float,
    symmetric_int,
)


def test_nf4_equals_bitsandbytes_table():
    assert torch.equal(normal_float(4), torch.tensor(NF4_BITSANDBYTES))


def test_the_nf_construction_reproduces_the_nf4_table_to_float_rounding():
    torch.testing.assert_close(_normal_float_construction(4), torch.tensor(NF4_BITSANDBYTES), rtol=0, atol=3e-7)


def test_nf4_equals_the_installed_bitsandbytes_codebook():
    functional = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(normal_float(4), functional.get_4bit_type("nf4", device="cpu").float())


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("name", ["nf", "int"])
def test_grid_is_sorted_spans_unit_interval_and_holds_zero(name, bits):
    g = make_grid(name, bits)
    assert g.shape == (2**bits,)
    assert torch.all(torch.diff(g) >= 0)
    assert g.min() == -1 and g.max() == 1
    assert (g == 0).any()


def test_nf_grids_are_asymmetric_like_qlora():
    # One more positive level than negative ones: 2**(b-1) positives, 2**(b-1) - 1 negatives.
    for bits in (2, 3, 4):
        g = normal_float(bits)
        assert int((g > 0).sum()) == 2 ** (bits - 1)
        assert int((g < 0).sum()) == 2 ** (bits - 1) - 1


def test_int_grid_is_symmetric_round_to_nearest():
    assert symmetric_int(3)[:7].tolist() == pytest.approx([-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1])


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_nearest_code_matches_brute_force_argmin(bits):
    g = normal_float(bits)
    x = torch.randn(4000, generator=torch.Generator().manual_seed(bits)) * 0.7
    brute = (x[:, None] - g[None, :]).abs().argmin(dim=1)
    assert torch.equal(nearest_code(x, g).long(), brute)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_the_gpu_formula_bucketize_gives_the_cpu_loops_codes_ties_and_infinities_included(bits):
    g = normal_float(bits)
    mids = (g[1:] + g[:-1]) / 2
    x = torch.cat(
        [
            torch.randn(4000, generator=torch.Generator().manual_seed(bits)),
            mids,
            torch.tensor([float("inf"), -float("inf")]),
        ]
    )
    assert torch.equal(torch.bucketize(x, mids, out_int32=True).to(torch.uint8), nearest_code(x, g))
    if torch.cuda.is_available():
        assert torch.equal(nearest_code(x.cuda(), g).cpu(), nearest_code(x, g))


def test_nearest_code_clips_out_of_range_values_to_the_ends():
    g = normal_float(3)
    assert nearest_code(torch.tensor([-5.0, 5.0]), g).tolist() == [0, 7]


@pytest.mark.parametrize("bad", [1, 5, 8])
def test_unsupported_bits_are_refused_with_the_value_named(bad):
    with pytest.raises(ConfigError, match=f"bits={bad}"):
        make_grid("nf", bad)


def test_unknown_grid_is_refused():
    with pytest.raises(ConfigError, match="grid='fp4'"):
        make_grid("fp4", 4)
