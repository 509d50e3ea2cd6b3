"""The PEFT table's fine-tuning tasks: shipped, rebuilt identically by make_data, with disjoint train, validation
and test splits, at least 500 exactly scored test items each, and books kept out of every other text."""

import json
import unicodedata

import pytest
import torch

from lords_pipelines.data.peft_splits import (
    prophet_half_splits,
    prophet_splits,
    prophet_word_splits,
    roman,
    roman_splits,
    unicode_name_splits,
)
from lords_pipelines.data.texts import KJV_EVAL_BOOKS, KJV_PEFT_BOOKS, KJV_TASK_BOOKS, _ngrams, kjv_verses
from lords_pipelines.evaluation.multiple_choice import TASKS_DIR, load_items
from lords_pipelines.tables.peft_tasks import DATA_DIR


def _shipped(name):
    return [json.loads(line) for line in (DATA_DIR / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "n, numeral",
    [
        (1, "I"),
        (4, "IV"),
        (9, "IX"),
        (14, "XIV"),
        (40, "XL"),
        (90, "XC"),
        (400, "CD"),
        (1987, "MCMLXXXVII"),
        (2024, "MMXXIV"),
        (3999, "MMMCMXCIX"),
    ],
)
def test_roman_numerals_follow_the_subtractive_rules(n, numeral):
    assert roman(n) == numeral


def test_roman_splits_cover_every_number_once_and_are_shipped_as_built():
    splits = roman_splits()
    assert {k: len(v) for k, v in splits.items()} == {"test": 500, "val": 200, "train": 3299}
    prompts = [p["prompt"] for rows in splits.values() for p in rows]
    assert len(set(prompts)) == 3999 == len(prompts)
    for split, rows in splits.items():
        assert _shipped(f"lords_roman_{split}") == rows


def test_prophet_splits_share_no_verse_and_are_shipped_as_built():
    splits = prophet_splits()
    test, val, train = splits["test"], splits["val"], splits["train"]
    assert len(test) == 500 and len(val) == 200 and len(train) > 800
    train_text = {p["prompt"] for p in train} | {p["answer"].strip() for p in train}
    for items in (test, val):
        assert all(len(it["choices"]) == 4 and 0 <= it["label"] < 4 for it in items)
        held = {it["context"] for it in items} | {it["choices"][it["label"]] for it in items}
        assert not held & train_text
    assert not {it["context"] for it in test} & {it["context"] for it in val}
    assert all(80 < sum(it["label"] == k for it in test) < 170 for k in range(4))  # no favoured position
    assert _shipped("lords_kjv_prophets_train") == train and _shipped("lords_kjv_prophets_val") == val
    assert [json.loads(x) for x in (TASKS_DIR / "lords_kjv_prophets.jsonl").read_text().splitlines()] == test
    assert len(load_items("lords_kjv_prophets")) == 500  # the lm-eval task (and the batched scorer) read it


def test_unicode_name_splits_hold_out_letters_with_same_family_distractors_and_are_shipped_as_built():
    splits = unicode_name_splits()
    test, val, train = splits["test"], splits["val"], splits["train"]
    assert (len(test), len(val), len(train)) == (500, 200, 1090)
    letters = [it["context"] for it in test + val] + [p["prompt"] for p in train]
    assert len(set(letters)) == len(letters) == 1790  # every letter in exactly one split
    for it in test + val:
        name = it["choices"][it["label"]]
        assert len(set(it["choices"])) == 4 and unicodedata.ucd_3_2_0.name(it["context"][-3]) == name
        assert all(c.split(" ")[0] == name.split(" ")[0] for c in it["choices"])  # same script: the letter decides
    assert all(80 < sum(it["label"] == k for it in test) < 170 for k in range(4))  # no favoured position
    assert _shipped("lords_unicode_names_train") == train and _shipped("lords_unicode_names_val") == val
    assert [json.loads(x) for x in (TASKS_DIR / "lords_unicode_names.jsonl").read_text().splitlines()] == test
    assert len(load_items("lords_unicode_names")) == 500


@pytest.mark.parametrize(
    "name, build", [("lords_prophets_word", prophet_word_splits), ("lords_prophets_half", prophet_half_splits)]
)
def test_prophet_word_and_half_splits_share_no_8_word_run_between_training_and_held_out_text(name, build):
    splits = build()
    test, val, train = splits["test"], splits["val"], splits["train"]
    assert len(test) == 500 and len(val) == 200 and len(train) > 700
    # every text the items show: each verse (context + answer) and each choice (a piece of another held-out verse)
    held = [it["context"] + " " + it["choices"][it["label"]] for it in test + val]
    held += [c for it in test + val for c in it["choices"]]
    held_ngrams = set().union(*(_ngrams(t) for t in held))
    assert not any(_ngrams(p["prompt"] + p["answer"]) & held_ngrams for p in train)  # no evaluation text leaks
    assert not {it["context"] for it in test} & {it["context"] for it in val}
    for items in (test, val):
        assert all(len(set(it["choices"])) == 4 and 0 <= it["label"] < 4 for it in items)
    assert all(80 < sum(it["label"] == k for it in test) < 170 for k in range(4))  # no favoured position
    verses = {t for b, _, _, t in kjv_verses() if b in KJV_PEFT_BOOKS}
    truth = [it["context"] + " " + it["choices"][it["label"]] for it in test[:50]]
    assert all(any(v.startswith(t) for v in verses) for t in truth)  # each item is a real verse, cut where it says
    assert _shipped(f"{name}_train") == train and _shipped(f"{name}_val") == val
    assert [json.loads(x) for x in (TASKS_DIR / f"{name}.jsonl").read_text().splitlines()] == test
    assert len(load_items(name)) == 500


def test_prophet_books_are_neither_evaluated_nor_used_by_the_zero_shot_tasks():
    assert not set(KJV_PEFT_BOOKS) & set(KJV_EVAL_BOOKS + KJV_TASK_BOOKS)
    prophets = {t for b, _, _, t in kjv_verses() if b in KJV_PEFT_BOOKS}
    for task in ("lords_kjv_cloze", "lords_kjv_next", "lords_kjv_proverbs"):
        assert not {c for it in load_items(task) for c in it.choices} & prophets


@pytest.mark.parametrize(
    "name",
    ["lords_roman", "lords_kjv_prophets", "lords_unicode_names", "lords_prophets_word", "lords_prophets_half", "kjv"],
)
def test_each_task_trains_on_answers_or_text_and_scores_validation_and_test(name):
    from omegaconf import OmegaConf

    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import bpe_tokenizer
    from lords_pipelines.tables.peft_tasks import held_out_scores, load_task, validation_score

    tok, model = bpe_tokenizer(512), tiny_llama(seed=0)
    spec = OmegaConf.create(
        {"max_length": 96, "window": 32, "train_tokens": 96, "val_tokens": 64, "val_limit": 3, "test_limit": 4}
    )
    task = load_task(name, tok, spec)
    first = task.train[0]
    assert all((x["labels"] != -100).any() for x in task.train)  # pairs whose answer max_length cuts are dropped
    if name == "kjv":
        assert len(task.train) == 3 and torch.equal(first["labels"], first["input_ids"])
        assert validation_score(model, tok, task) < -1  # minus a perplexity
        assert held_out_scores(model, tok, task) == {}  # its test is the kjv_genesis perplexity of every row
        return
    prompt_tokens = int((first["labels"] == -100).sum())
    assert prompt_tokens > 0  # no loss on the prompt
    assert 0 <= validation_score(model, tok, task) <= 1
    scores = held_out_scores(model, tok, task)
    assert scores[f"{name}/items"] == 4 and 0 <= scores[f"{name}/acc"] <= 1


def test_the_prophets_test_split_runs_in_lm_eval_and_scores_as_the_batched_scorer():
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lords_pipelines.evaluation.multiple_choice import score_task
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import bpe_tokenizer

    model, tok = tiny_llama(seed=0), bpe_tokenizer(512)
    out = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu"),
        tasks=["lords_kjv_prophets"],
        limit=6,
        bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
    )
    assert (
        score_task(model, tok, "lords_kjv_prophets", limit=6)["lords_kjv_prophets/acc"]
        == out["results"]["lords_kjv_prophets"]["acc,none"]
    )
