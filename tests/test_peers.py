"""The peers by their own libraries (``lords_pipelines.tables.peers``) on a tiny Llama, and their table rows.

The libraries are optional (docs/peers.md): each test skips, naming why, where its library does not import.
"""

import json

import pytest
import torch
from torch import nn

from lords_pipelines.tables.peers import PEERS, quantize_peer, unavailable


def needs(method):
    reason = unavailable(method)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture(scope="module")
def tiny():
    from lords_pipelines.data.texts import calibration_text, tokenize
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import bpe_tokenizer

    tok = bpe_tokenizer(512)
    return tiny_llama(seed=0), tok, tokenize(tok, calibration_text(), 256)


@pytest.mark.parametrize(
    "method,bits,group", [(m, b, g) for m in PEERS for b, g in ((3, 64), (4, 32))], ids=lambda v: str(v)
)
def test_peer_model_holds_the_library_s_dequantized_weights(tiny, method, bits, group):
    if unavailable(method):
        pytest.skip(unavailable(method))
    model, tok, ids = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = quantize_peer(model, method, bits, group, ids, tok)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the float model is untouched
    assert type(result.model) is type(model) and not any(
        hasattr(m, "quantization_scheme") for m in result.model.modules()
    )  # a plain float architecture
    layers = {n: m for n, m in result.model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    assert len(layers) == 14
    for name, layer in layers.items():
        w = layer.weight.detach()
        assert not torch.equal(w, model.get_submodule(name).weight)
        # Every group holds at most 2^bits values: an integer grid under one scale (and zero point) per group.
        groups = w.reshape(-1, group)
        assert max(len(torch.unique(g)) for g in groups[:64]) <= 2**bits, name
    assert torch.equal(result.model.lm_head.weight, model.lm_head.weight)
    assert 0 < result.weight_rel_error < (0.35 if bits == 3 else 0.2)
    # Codes plus per-group scales (and zero points where stored): above the code width, below double it.
    assert bits <= result.code_bits < bits + 0.5 and result.code_bits < result.bits_per_weight < 2 * bits
    assert result.float_params > 0 and "==" in result.library
    with torch.no_grad():
        assert torch.isfinite(result.model(ids[:, :32]).logits).all()


@needs("gptq")
def test_gptq_counts_one_float32_scale_per_group_and_no_zero_point(tiny):
    model, tok, ids = tiny
    result = quantize_peer(model, "gptq", 3, 64, ids, tok)
    weights = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
    assert result.float_params == weights // 64
    assert result.bits_per_weight == pytest.approx(3 + 32 / 64)  # symmetric: compressed-tensors stores no zero point


def test_unknown_peer_and_missing_calibration_are_refused(tiny):
    model, tok, _ = tiny
    assert "not a peer" in unavailable("bnb")
    if unavailable("gptq") is None:
        with pytest.raises(ValueError, match="calibration"):
            quantize_peer(model, "gptq", 3, 64, None, tok)


def test_peer_and_gptq_rows_run_through_the_table_multirun(tmp_path, model_dir, run_table):
    """A mini table with the peers and lords_gptq beside lords_calibrated: rows by their libraries carry the same
    columns; a peer whose library does not import is named as not run, with the reason."""
    spec = tmp_path / "peers_mini.yaml"
    spec.write_text(
        "defaults: [common]\nbits: [3]\nblock_sizes: [32]\n"
        "methods: [lords_calibrated, lords_gptq, gptq, hqq]\nrules: {}\n"
        "eval: {tokens: 128, task_limit: 2, batch_size: 4}\ncalib: {tokens: 128, samples: 1}\n"
        "refine: {steps: 2, lr: 0.01}\n"
    )
    run_table(f"table={spec}", f"spec.model={model_dir}", f"run_dir={tmp_path / 'run'}", f"out={tmp_path / 'out'}")
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "peers_mini.json").read_text())}
    expected = {"fp", "lords_calibrated", "lords_gptq"} | {m for m in ("gptq", "hqq") if unavailable(m) is None}
    assert set(rows) == expected
    for method in expected - {"fp"}:
        r = rows[method]
        for key in (
            "method",
            "bits",
            "block_size",
            "float_params",
            "bits_per_weight",
            "ppl",
            "ppl_std",
            "zero_shot_mean",
        ):
            assert key in r, (method, key)
        assert set(r["ppl"]) == {"licenses", "kjv_genesis"}
    assert rows["lords_gptq"]["float_params"] == rows["lords_calibrated"]["float_params"]
    journal = [json.loads(line) for line in (tmp_path / "run" / "peers_mini" / "rows.jsonl").read_text().splitlines()]
    assert all("library" in r for r in journal if r["method"] in ("gptq", "hqq"))
    md = (tmp_path / "out" / "peers_mini.md").read_text()
    for method in {"gptq", "hqq"} - expected:
        assert "Not run yet" in md and unavailable(method)[:20] in md


@needs("gptq")
def test_llmcompressor_groups_that_do_not_divide_the_inputs_are_refused_with_the_reason():
    """SmolLM2's 576-wide inputs at block 128: llmcompressor refuses such groups, so those rows are not run."""
    from lords_pipelines.models import tiny_llama

    model = tiny_llama(seed=0, hidden=192, intermediate=320)
    assert "refuses group_size=128" in unavailable("gptq", model, 128) and "192" in unavailable("awq", model, 128)
    assert unavailable("gptq", model, 64) is None
    with pytest.raises(RuntimeError, match="columns % group_size"):
        quantize_peer(model, "gptq", 4, 128, torch.zeros(1, 8, dtype=torch.long), tokenizer=object())
