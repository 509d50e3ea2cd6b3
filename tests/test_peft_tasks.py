"""The PEFT table's fine-tuning tasks: shipped, rebuilt identically by make_data, with disjoint train, validation
and test splits, at least 500 exactly scored test items each, and books kept out of every other text."""
import json

import pytest

from lords.texts import KJV_PEFT_BOOKS, KJV_TASK_BOOKS, KJV_EVAL_BOOKS, kjv_verses
from lords_pipelines.multiple_choice import TASKS_DIR, load_items
from lords_pipelines.peft_data import prophet_splits, roman, roman_splits
from lords_pipelines.peft_tasks import DATA_DIR


def _shipped(name):
    return [json.loads(line) for line in (DATA_DIR / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("n, numeral", [(1, "I"), (4, "IV"), (9, "IX"), (14, "XIV"), (40, "XL"), (90, "XC"),
                                        (400, "CD"), (1987, "MCMLXXXVII"), (2024, "MMXXIV"), (3999, "MMMCMXCIX")])
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


def test_prophet_books_are_neither_evaluated_nor_used_by_the_zero_shot_tasks():
    assert not set(KJV_PEFT_BOOKS) & set(KJV_EVAL_BOOKS + KJV_TASK_BOOKS)
    prophets = {t for b, _, _, t in kjv_verses() if b in KJV_PEFT_BOOKS}
    for task in ("lords_kjv_cloze", "lords_kjv_next", "lords_kjv_proverbs"):
        assert not {c for it in load_items(task) for c in it.choices} & prophets
