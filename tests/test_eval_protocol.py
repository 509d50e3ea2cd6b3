"""The evaluation protocol of the tables: BOS-led perplexity windows, disjoint texts, shipped zero-shot tasks
scored exactly as lm-eval scores them."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lords_pipelines.data import make as make_data
from lords_pipelines.data.texts import (
    KJV_EVAL_BOOKS,
    KJV_PEFT_BOOKS,
    KJV_TASK_BOOKS,
    bos_id,
    corpus_text,
    kjv_train_text,
    kjv_verses,
)
from lords_pipelines.evaluation.multiple_choice import (
    TASKS_DIR,
    ZERO_SHOT,
    choice_loglikelihoods,
    load_items,
    score_task,
)
from lords_pipelines.evaluation.perplexity import perplexity
from lords_pipelines.models import tiny_llama
from lords_pipelines.stages.common import bpe_tokenizer


def test_bos_is_found_only_where_the_tokenizer_adds_it():
    assert bos_id(bpe_tokenizer(512, add_bos=True)) == 0
    assert bos_id(bpe_tokenizer(512)) is None


@torch.no_grad()
def test_bos_led_windows_match_an_independent_prefix_by_prefix_loop(tiny_model, tokens):
    ids = tokens[:, :40]
    ppl, n = perplexity(tiny_model, ids, window=16, bos=1)
    nll = 0.0  # every text token scored once, from BOS plus the tokens before it in its 15-token window
    for i in range(ids.shape[1]):
        start = i - i % 15
        prefix = torch.cat([torch.tensor([[1]]), ids[:, start:i]], dim=1)
        nll -= float(F.log_softmax(tiny_model(prefix).logits[0, -1], -1)[ids[0, i]])
    assert n == 40
    assert ppl == pytest.approx(math.exp(nll / 40), rel=1e-5)


def test_evaluation_texts_are_long_and_never_in_calibration_or_training_text():
    genesis, licenses = corpus_text("kjv_genesis"), corpus_text("licenses")
    assert len(genesis.split()) > 30_000 and len(licenses.split()) > 12_000
    calib, train = corpus_text("pydoc_topics"), kjv_train_text()
    for probe in (genesis[5000:5200], genesis[-300:], licenses[2000:2200]):
        assert probe not in calib and probe not in train
    held = [t.split() for b, _, _, t in kjv_verses() if b in KJV_EVAL_BOOKS + KJV_TASK_BOOKS + KJV_PEFT_BOOKS]
    probes = [" ".join(words[1:10]) for words in held[::10] if len(words) >= 12]
    assert len(probes) > 700 and not [p for p in probes if p in train]


def test_zero_shot_tasks_are_shipped_with_500_valid_items_and_rebuild_identically():
    built = {
        "lords_kjv_cloze": make_data.kjv_cloze_items(),
        "lords_kjv_next": make_data.kjv_next_items(),
        "lords_kjv_proverbs": make_data.kjv_proverb_items(),
    }
    for task in ZERO_SHOT:
        items = load_items(task)
        assert len(items) == 500 and all(len(it.choices) == 4 and 0 <= it.label < 4 for it in items)
        assert len({it.choices[it.label] for it in items}) > 250  # answers vary
        assert all(90 < sum(it.label == k for it in items) < 160 for k in range(4))  # no favoured position
        shipped = [json.loads(line) for line in (TASKS_DIR / f"{task}.jsonl").read_text().splitlines()]
        assert shipped == built[task]


@pytest.mark.parametrize("add_bos", [False, True])
def test_scorer_gives_lm_evals_loglikelihoods_and_accuracies(add_bos):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok = tiny_llama(seed=0), bpe_tokenizer(512, add_bos=add_bos)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    out = simple_evaluate(
        model=lm,
        tasks=list(ZERO_SHOT),
        limit=6,
        bootstrap_iters=0,
        log_samples=True,
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
    )
    for task in ZERO_SHOT:
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        ours = choice_loglikelihoods(model, tok, load_items(task, 6), batch_size=5)
        theirs = [[ll for ll, _ in s["filtered_resps"]] for s in samples]
        assert torch.allclose(torch.tensor(ours), torch.tensor(theirs), rtol=1e-4, atol=1e-3)
        scores = score_task(model, tok, task, limit=6)
        assert scores[f"{task}/acc"] == out["results"][task]["acc,none"]
        assert scores[f"{task}/acc_norm"] == out["results"][task]["acc_norm,none"]
