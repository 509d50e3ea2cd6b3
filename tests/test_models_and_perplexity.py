import math

import pytest
import torch
import torch.nn.functional as F

from lords.errors import ConfigError
from lords_pipelines.data.texts import calibration_text, eval_text
from lords_pipelines.evaluation.perplexity import perplexity
from lords_pipelines.models import load_model


def test_perplexity_is_exp_of_mean_nll_over_non_overlapping_windows(tiny_model, tokens):
    ppl, n = perplexity(tiny_model, tokens, window=32)
    with torch.no_grad():
        nll = [F.cross_entropy(tiny_model(c).logits[0, :-1], c[0, 1:], reduction="sum") for c in tokens.split(32, 1)]
    assert n == 3 * 31
    assert ppl == pytest.approx(math.exp(float(sum(nll)) / n), rel=1e-5)


def test_perplexity_refuses_a_batch():
    with pytest.raises(ConfigError, match=r"\(1, T\)"):
        perplexity(None, torch.zeros(2, 8, dtype=torch.long))


def test_evaluation_and_calibration_texts_do_not_overlap():
    ev, cal = eval_text(), calibration_text()
    assert len(ev) > 50_000 and len(cal) > 50_000
    assert ev[1000:1200] not in cal


def test_embedded_smollm2_loads_and_answers():
    model, tok = load_model("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, ids.shape[1] :]).strip().startswith("Paris")


def test_a_local_folder_loads_with_its_tokenizer(tmp_path, tiny_model, tokens):
    _, tok = load_model("smollm2-135m")
    tiny_model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model, tok2 = load_model(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, tiny_model(tokens).logits)
    assert tok2("hello").input_ids == tok("hello").input_ids


@pytest.mark.slow
def test_a_gguf_file_path_loads():
    from lords_pipelines.models import embedded_gguf

    model, _ = load_model(str(embedded_gguf("smollm2-135m")))
    assert model.config.num_hidden_layers == 30


def test_an_unknown_model_alias_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: refused at once, the embedded names listed
    with pytest.raises(ConfigError, match="embedded models: smollm2-135m"):
        load_model(str(tmp_path / "no-such-model"))
