"""Regenerate the small offline data sets shipped with the pipelines (deterministic, seconds).

    python -m lords_pipelines.data.make

- ``lords_pipelines/data/unicode_names.jsonl``: prompt/answer pairs, ``Unicode name of "é":`` → ``LATIN SMALL
  LETTER E WITH ACUTE``, for every letter of Latin-1 Supplement and Latin Extended-A (Python's
  ``unicodedata``; character names are facts of the Unicode standard). A fine-tuning set whose answers have a
  learnable structure, so held-out pairs measure generalisation, not recall. Shuffled with seed 0.
- ``lords_pipelines/evaluation/tasks/lords_cloze.jsonl``: multiple-choice cloze items for lm-eval: a sentence of the shipped
  licence texts (verbatim copies permitted) without its last word, the true word and three distractors
  drawn from other sentences' last words.
- ``lords_pipelines/evaluation/tasks/lords_unicode.jsonl``: multiple choice over four Unicode names (the held-out pairs only).
- The zero-shot tasks of the PTQ tables (group ``lords_zero_shot``), 500 items each, from the King James Version
  (1611, public domain; ``lords_pipelines.data.texts``), each from books that no evaluation or training text uses:
  ``lords_kjv_cloze`` (the last word of a Gospel verse, as LAMBADA, against three other verses' last words),
  ``lords_kjv_next`` (the verse of a Psalm that follows, as HellaSwag, against three verses of other Psalms) and
  ``lords_kjv_proverbs`` (the second half of a verse of Proverbs or Ecclesiastes after its first colon or
  semicolon, against three other verses' second halves).
- The PEFT table's fine-tuning tasks (``lords_pipelines.data.peft_splits``): ``lords_pipelines/data/peft/<task>_<split>.jsonl``
  for ``lords_roman`` (exact match; train, val, test) and ``lords_kjv_prophets`` (multiple choice; train, val; its
  test split is the lm-eval task ``lords_pipelines/evaluation/tasks/lords_kjv_prophets.jsonl``) and ``lords_unicode_names``
  (multiple choice, likewise: ``lords_pipelines/evaluation/tasks/lords_unicode_names.jsonl``), ``lords_prophets_word``
  and ``lords_prophets_half`` (multiple choice, likewise).
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

DATA = Path(__file__).parent
TASKS = DATA.parent / "evaluation" / "tasks"
VAL_ITEMS = 48
TASK_ITEMS = 500


def unicode_pairs() -> list[dict]:
    pairs = []
    for code in range(0x00C0, 0x0180):
        ch = chr(code)
        if unicodedata.category(ch) in ("Lu", "Ll"):
            pairs.append({"prompt": f'Unicode name of "{ch}":', "answer": " " + unicodedata.name(ch)})
    random.Random(0).shuffle(pairs)
    return pairs


def cloze_items(n: int = 120) -> list[dict]:
    from lords_pipelines.data.texts import eval_text

    text = re.sub(r"\s+", " ", eval_text())
    sentences = [s.strip() for s in re.split(r"(?<=[.;])\s+", text)]
    good = []
    for s in sentences:
        words = s.rstrip(".;").split(" ")
        if 8 <= len(words) <= 30 and re.fullmatch(r"[a-z]{4,}", words[-1]):
            good.append((" ".join(words[:-1]), words[-1]))
    rng = random.Random(0)
    rng.shuffle(good)
    vocab = sorted({w for _, w in good})
    items = []
    for context, word in good:
        if len(items) == n:
            break
        distractors = rng.sample([w for w in vocab if w != word], 3)
        choices = distractors + [word]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(word)})
    return items


def _choice_item(rng, context: str, answer: str, pool: list[str]) -> dict:
    choices = rng.sample([x for x in pool if x != answer], 3) + [answer]
    rng.shuffle(choices)
    return {"context": context, "choices": choices, "label": choices.index(answer)}


def kjv_cloze_items(n: int = TASK_ITEMS) -> list[dict]:
    from lords_pipelines.data.texts import kjv_verses

    good = []
    for book, _, _, text in kjv_verses():
        words = text.rstrip(".;:,!?").split(" ")
        if book in ("Mat", "Mark", "Luke", "John") and 8 <= len(words) <= 40 and re.fullmatch(r"[a-z]{4,}", words[-1]):
            good.append((" ".join(words[:-1]), words[-1]))
    rng = random.Random(0)
    vocab = sorted({w for _, w in good})
    return [_choice_item(rng, c, w, vocab) for c, w in rng.sample(good, n)]


def kjv_next_items(n: int = TASK_ITEMS) -> list[dict]:
    from lords_pipelines.data.texts import kjv_verses

    psalms = [(c, t) for b, c, _, t in kjv_verses() if b == "Psa"]
    pairs = [(a[1], b[1], a[0]) for a, b in zip(psalms, psalms[1:]) if a[0] == b[0]]
    rng = random.Random(0)
    items = []
    for context, answer, chapter in rng.sample(pairs, n):
        others = [t for c, t in rng.sample(psalms, 12) if c != chapter][:3]
        choices = others + [answer]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(answer)})
    return items


def kjv_proverb_items(n: int = TASK_ITEMS) -> list[dict]:
    from lords_pipelines.data.texts import kjv_verses

    halves = []
    for book, _, _, text in kjv_verses():
        cut = ":" if ":" in text else ";"
        if book in ("Prv", "Eccl") and cut in text:
            first, second = (x.strip() for x in text.split(cut, 1))
            if len(first.split()) >= 4 and len(second.split()) >= 4:
                halves.append((first + cut, second))
    rng = random.Random(0)
    pool = sorted({s for _, s in halves})
    return [_choice_item(rng, f, s, pool) for f, s in rng.sample(halves, n)]


def unicode_choice_items(pairs: list[dict]) -> list[dict]:
    rng = random.Random(1)
    names = [p["answer"].strip() for p in pairs]
    items = []
    for p in pairs[-VAL_ITEMS:]:
        name = p["answer"].strip()
        choices = rng.sample([x for x in names if x != name], 3) + [name]
        rng.shuffle(choices)
        items.append({"context": p["prompt"], "choices": choices, "label": choices.index(name)})
    return items


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{path}: {len(rows)} rows")


def main():
    pairs = unicode_pairs()
    write_jsonl(DATA / "unicode_names.jsonl", pairs)
    write_jsonl(TASKS / "lords_cloze.jsonl", cloze_items())
    write_jsonl(TASKS / "lords_unicode.jsonl", unicode_choice_items(pairs))
    write_jsonl(TASKS / "lords_kjv_cloze.jsonl", kjv_cloze_items())
    write_jsonl(TASKS / "lords_kjv_next.jsonl", kjv_next_items())
    write_jsonl(TASKS / "lords_kjv_proverbs.jsonl", kjv_proverb_items())
    from lords_pipelines.data.peft_splits import (
        prophet_half_splits,
        prophet_splits,
        prophet_word_splits,
        roman_splits,
        unicode_name_splits,
    )

    for task, splits in (
        ("lords_roman", roman_splits()),
        ("lords_kjv_prophets", prophet_splits()),
        ("lords_unicode_names", unicode_name_splits()),
        ("lords_prophets_word", prophet_word_splits()),
        ("lords_prophets_half", prophet_half_splits()),
    ):
        for split, rows in splits.items():
            if split == "test" and task != "lords_roman":  # an lm-eval task, beside the zero-shot ones
                write_jsonl(TASKS / f"{task}.jsonl", rows)
            else:
                write_jsonl(DATA / "peft" / f"{task}_{split}.jsonl", rows)


if __name__ == "__main__":
    main()
