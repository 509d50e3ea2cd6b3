"""Regenerate the small offline data sets shipped with the pipelines (deterministic, seconds).

    python -m lords_pipelines.make_data

- ``lords_pipelines/data/unicode_names.jsonl``: prompt/answer pairs, ``Unicode name of "é":`` → ``LATIN SMALL
  LETTER E WITH ACUTE``, for every letter of Latin-1 Supplement and Latin Extended-A (Python's
  ``unicodedata``; character names are facts of the Unicode standard). A fine-tuning set whose answers have a
  learnable structure, so held-out pairs measure generalisation, not recall. Shuffled with seed 0.
- ``lords_pipelines/tasks/lords_cloze.jsonl``: multiple-choice cloze items for lm-eval: a sentence of the shipped
  licence texts (verbatim copies permitted) without its last word, the true word and three distractors
  drawn from other sentences' last words.
- ``lords_pipelines/tasks/lords_unicode.jsonl``: multiple choice over four Unicode names (the held-out pairs only).
"""
from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

HERE = Path(__file__).parent
VAL_ITEMS = 48


def unicode_pairs() -> list[dict]:
    pairs = []
    for code in range(0x00C0, 0x0180):
        ch = chr(code)
        if unicodedata.category(ch) in ("Lu", "Ll"):
            pairs.append({"prompt": f'Unicode name of "{ch}":', "answer": " " + unicodedata.name(ch)})
    random.Random(0).shuffle(pairs)
    return pairs


def cloze_items(n: int = 120) -> list[dict]:
    from lords.texts import eval_text

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
    write_jsonl(HERE / "data" / "unicode_names.jsonl", pairs)
    write_jsonl(HERE / "tasks" / "lords_cloze.jsonl", cloze_items())
    write_jsonl(HERE / "tasks" / "lords_unicode.jsonl", unicode_choice_items(pairs))


if __name__ == "__main__":
    main()
