"""ΔW after PEFT and its effective rank (Figure 3): a rank-r LoRA's ΔW holds 90% of its energy in at most r
singular values; LoRDS's ΔW = grid[Q] ⊙ (B'A' − BA) with a rank-r change of scales is of far higher rank; the ranks
are the textbook ones on matrices whose spectrum is known; the functions read ΔW off real trained tiny Llamas."""

import copy

import pytest
import torch

from lords.spectrum import energy_rank, entropy_rank, lora_delta, lords_delta, singular_values


@pytest.mark.parametrize("k", [1, 3, 7])
def test_k_equal_singular_values_have_entropy_rank_and_energy_rank_k(k):
    sv = torch.tensor([2.0] * k + [0.0] * 5)
    assert entropy_rank(sv) == pytest.approx(k) and energy_rank(sv) == k


def test_energy_rank_counts_the_leading_values_that_reach_the_share():
    sv = torch.tensor([3.0, 2.0, 1.0, 0.5]).sqrt()  # energies 3, 2, 1, 0.5 of 6.5
    assert [energy_rank(sv, e) for e in (0.4, 0.5, 0.9, 0.95, 1.0)] == [1, 2, 3, 4, 4]
    assert energy_rank(torch.zeros(4)) == 0 and entropy_rank(torch.zeros(4)) == 0.0


@pytest.mark.parametrize("r", [1, 2, 4])
def test_a_rank_r_lora_delta_has_90_percent_energy_rank_at_most_r(r):
    g = torch.Generator().manual_seed(r)
    delta = lora_delta(torch.randn(r, 48, generator=g), torch.randn(64, r, generator=g), scaling=0.5)
    sv = singular_values(delta)
    assert delta.shape == (64, 48) and sv.shape == (48,)
    assert energy_rank(sv) <= r and entropy_rank(sv) <= r + 1e-6
    assert float(sv[r:].max()) < 1e-9 * float(sv[0])  # exactly rank r


@pytest.mark.parametrize("r", [1, 2, 4])
def test_a_rank_r_change_of_lords_scales_is_a_high_rank_delta(r):
    g = torch.Generator().manual_seed(r)
    values = torch.randn(64, 48, generator=g).sign() * torch.rand(64, 48, generator=g)  # code values in [-1, 1]
    B0, A0 = torch.rand(64, r, generator=g), torch.rand(r, 48, generator=g)
    B1, A1 = B0 + 0.1 * torch.randn(64, r, generator=g), A0 + 0.1 * torch.randn(r, 48, generator=g)
    delta = lords_delta(values, B0, A0, B1, A1)
    # float64 against the float32 product: equal to float32 rounding of values of order 1
    assert torch.allclose(delta, values.double() * (B1 @ A1 - B0 @ A0).double(), atol=1e-6)
    sv = singular_values(delta)
    assert energy_rank(sv) > 4 * r and entropy_rank(sv) > 4 * r  # the codes spread a rank-≤2r change over all ranks


def test_the_delta_of_trained_lords_and_lora_layers_reads_as_the_functions_say(tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    from lords_pipelines.data.peft_splits import roman
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.peft_methods import prepare
    from lords_pipelines.stages.common import bpe_tokenizer
    from lords_pipelines.stages.datamodule import encode_pair
    from lords_pipelines.tables.peft_delta import LAYERS, plot_spectra, spectrum_rows
    from lords_pipelines.tables.peft_train import train

    model, tok = tiny_llama(seed=0), bpe_tokenizer(512)
    items = [encode_pair(tok, f"Roman numeral of {k}:", " " + roman(k), 32) for k in range(1, 9)]
    spectra = {}
    for method in ("lords_peft", "qlora"):
        p = prepare(model, method, block_size=32)
        before = copy.deepcopy(p.model)
        train(p.model, items, tok, steps=2, batch_size=4, lr=1e-2, seed=0)
        spectra[method] = rows = spectrum_rows(before, p.model)
        assert set(rows) == set(LAYERS)
        for name, row in rows.items():
            rank = p.ranks[name]
            assert len(row["sv"]) == min(row["shape"]) and row["sv"][0] > 0  # training moved every layer
            if method == "qlora":
                assert row["energy_rank"] <= rank and row["entropy_rank"] <= rank + 1e-6
            else:
                assert row["energy_rank"] > 2 * rank  # ΔW of a rank-r scale change: far above r
    path = plot_spectra(spectra, tmp_path / "spectrum.png")
    assert path.stat().st_size > 10_000
