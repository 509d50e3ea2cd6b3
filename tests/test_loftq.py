"""LoftQ, the low-rank-corrected NF baseline of the PTQ tables: peft's alternation at every width."""

import pytest
import torch
from torch import nn

import lords
from lords import BlockwiseConfig, LoftQConfig, LoftQLinear, MixedPrecisionConfig, RefineConfig, quantize_
from lords.blockwise import block_absmax, dequantize, expand_blocks, quantize_with_scale
from lords.errors import ConfigError
from lords.grids import make_grid
from lords_pipelines.models import tiny_llama


def _linear(n=96, m=128, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(m, n, bias=False)
    layer.weight.data = torch.randn(n, m) * (1 + torch.rand(n, 1))
    return nn.Sequential(layer)


def test_one_alternation_is_nf_codes_of_w_plus_the_svd_of_their_residual():
    model = _linear()
    w = model[0].weight.detach().clone()
    quantize_(model, LoftQConfig(bits=2, block_size=32, rank=8, iters=1, exclude=()), progress=False)
    grid = make_grid("nf", 2)
    s = expand_blocks(block_absmax(w, 32), 128, 32)
    nf = dequantize(quantize_with_scale(w, s, grid), s, grid)
    U, S, Vh = torch.linalg.svd(w - nf, full_matrices=False)
    expected = nf + U[:, :8] @ torch.diag(S[:8]) @ Vh[:8]
    assert isinstance(model[0], LoftQLinear)
    assert torch.allclose(model[0].dequantized_weight(), expected, atol=1e-4)


def test_correction_lowers_the_error_of_nf_and_more_alternations_lower_it_further():
    errors = {}
    for name, cfg in {
        "nf": BlockwiseConfig(bits=2, block_size=32, exclude=()),
        "loftq1": LoftQConfig(bits=2, block_size=32, rank=8, iters=1, exclude=()),
        "loftq5": LoftQConfig(bits=2, block_size=32, rank=8, iters=5, exclude=()),
    }.items():
        errors[name] = quantize_(_linear(), cfg, progress=False).rel_error
    assert errors["loftq5"] < errors["loftq1"] < errors["nf"]


def test_layer_output_and_float_count():
    model = _linear()
    report = quantize_(model, LoftQConfig(bits=3, block_size=32, rank=8, exclude=()), progress=False)
    layer = model[0]
    x = torch.randn(5, 128)
    assert torch.allclose(layer(x), x @ layer.dequantized_weight().T, atol=1e-4)
    assert report.float_params == 96 * 4 + 8 * (96 + 128)


def test_mixed_widths_and_refusals():
    model = tiny_llama(seed=0)
    quantize_(model, MixedPrecisionConfig(LoftQConfig(bits=2, block_size=32, rank=4), bits=3.0), progress=False)
    widths = {m.bits for m in model.modules() if isinstance(m, LoftQLinear)}
    assert widths == {2, 4}
    with pytest.raises(ConfigError, match="refine must be None"):
        LoftQConfig(refine=RefineConfig(steps=5))
    with pytest.raises(ConfigError, match="rank"):
        LoftQConfig(rank=0)


@pytest.fixture
def loftq_llama():
    """A tiny Llama under LoftQ (biased q_proj, so the bias round trip is tested too) and its logits on 32 tokens."""
    model = tiny_llama(seed=0)
    q_proj = model.model.layers[0].self_attn.q_proj
    q_proj.bias = nn.Parameter(torch.randn(q_proj.out_features) * 0.1)
    quantize_(model, LoftQConfig(bits=2, block_size=32, rank=4, iters=2), progress=False)
    tokens = torch.arange(32)[None] * 7 % 512
    with torch.no_grad():
        logits = model(tokens).logits
    return model, tokens, logits


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def test_a_loftq_checkpoint_keeps_the_correction_and_reloads_bit_for_bit(loftq_llama, tmp_path):
    model, tokens, logits = loftq_llama
    lords.save_quantized(model, tmp_path / "q")
    qc = lords.checkpoint.read_quantization_config(tmp_path / "q")
    assert qc["modules"]["model.layers.0.mlp.up_proj"] == dict(
        kind="loftq", in_features=128, out_features=256, bits=2, bias=False, dtype="float32", block_size=32, rank=4
    )
    for loaded in (
        lords.load_quantized(tmp_path / "q")[0],
        lords.load_quantized(tmp_path / "q", model=tiny_llama(seed=1))[0],
    ):
        assert type(loaded.model.layers[1].mlp.down_proj) is LoftQLinear and _same_state(loaded, model)
        with torch.no_grad():
            assert torch.equal(loaded(tokens).logits, logits)


def test_a_loftq_folder_opens_with_from_pretrained(loftq_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokens, logits = loftq_llama
    model.save_pretrained(tmp_path / "q")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert type(loaded.model.layers[0].self_attn.q_proj) is LoftQLinear and _same_state(loaded, model)
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, logits)


def test_a_loftq_run_resumes_from_its_journal_without_redoing_a_layer(tmp_path, monkeypatch):
    import lords.handlers as handlers

    cfg = LoftQConfig(bits=3, block_size=32, rank=4, iters=1)
    first = tiny_llama(seed=0)
    quantize_(first, cfg, progress=False, resume_dir=tmp_path / "journal")

    def redo(name, *args):
        raise AssertionError(f"{name} was quantized again instead of read from the journal")

    monkeypatch.setitem(handlers._HANDLERS, LoftQConfig, handlers._Registered(redo, handlers._is_plain_linear))
    resumed = tiny_llama(seed=0)
    report = quantize_(resumed, cfg, progress=False, resume_dir=tmp_path / "journal")
    assert len(report.layers) == 14 and type(resumed.model.layers[1].mlp.up_proj) is LoftQLinear
    assert _same_state(resumed, first)
