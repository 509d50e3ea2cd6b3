"""The fine-tuning tasks of the PEFT table, shipped and rebuilt by ``python -m lords_pipelines.data.make``.

- ``lords_roman`` (exact match): ``Roman numeral of 1987:`` → `` MCMLXXXVII`` for every integer 1 … 3999, shuffled with
  seed 0: 500 test items, 200 validation items, the other 3,299 for training. The answers are built from a few rules
  (thousands, hundreds, tens, units, each with its subtractive forms), so held-out numbers measure whether the rules
  were learnt, not recall. Scored by exact match: every answer token and the EOS after it is the greedy next token
  (teacher-forced, which is the same as greedy decoding producing exactly the answer).
- ``lords_kjv_prophets`` (multiple choice, lm-eval semantics): the verse of Isaiah or Jeremiah (KJV,
  :data:`lords_pipelines.data.texts.KJV_PEFT_BOOKS`, kept out of ``kjv_train``) that follows a given verse, against three verses of
  other chapters, as HellaSwag. Chapters, not verses, are split (seed 0): test chapters give 500 items (an lm-eval
  task, ``lords_pipelines/evaluation/tasks/lords_kjv_prophets.yaml``), validation chapters 200 items, training chapters every
  ``(verse, next verse)`` pair as a prompt/answer pair with the answer after lm-eval's target delimiter `` ``.
- ``lords_unicode_names`` (multiple choice, lm-eval semantics): ``Unicode name of "ж":`` against the true name and three
  names of the same family (``CYRILLIC SMALL``, ``GREEK CAPITAL``, …: the letter, not the script or case, decides), for
  the 1,790 letters of twelve scripts in Unicode 3.2 (Python's frozen ``unicodedata.ucd_3_2_0``, so every Python
  builds the same set). Letters, shuffled with seed 0, are split: 500 test items (the lm-eval task
  ``lords_pipelines/evaluation/tasks/lords_unicode_names.yaml``), 200 validation items, 1,090 training pairs. Names follow rules
  (script, case, base letter, diacritics) that training letters teach and held-out letters test.
"""

from __future__ import annotations

import random
import unicodedata
from collections import Counter

TEST_ITEMS = 500
VAL_ITEMS = 200
ROMAN = (
    (1000, "M"),
    (900, "CM"),
    (500, "D"),
    (400, "CD"),
    (100, "C"),
    (90, "XC"),
    (50, "L"),
    (40, "XL"),
    (10, "X"),
    (9, "IX"),
    (5, "V"),
    (4, "IV"),
    (1, "I"),
)


def roman(n: int) -> str:
    """The Roman numeral of ``1 <= n <= 3999`` (subtractive forms: ``IV``, ``XC``, ``CM``)."""
    if not 1 <= n <= 3999:
        raise ValueError(f"no Roman numeral for {n}")
    out = []
    for value, letters in ROMAN:
        count, n = divmod(n, value)
        out.append(letters * count)
    return "".join(out)


def roman_splits() -> dict[str, list[dict]]:
    """``{train, val, test}`` prompt/answer pairs of ``lords_roman``."""
    numbers = list(range(1, 4000))
    random.Random(0).shuffle(numbers)
    pairs = [{"prompt": f"Roman numeral of {n}:", "answer": " " + roman(n)} for n in numbers]
    return {
        "test": pairs[:TEST_ITEMS],
        "val": pairs[TEST_ITEMS : TEST_ITEMS + VAL_ITEMS],
        "train": pairs[TEST_ITEMS + VAL_ITEMS :],
    }


def _prophet_chapters():
    from lords_pipelines.data.texts import KJV_PEFT_BOOKS, kjv_verses

    chapters: dict[tuple[str, int], list[str]] = {}
    for book, chapter, _, text in kjv_verses():
        if book in KJV_PEFT_BOOKS:
            chapters.setdefault((book, chapter), []).append(text)
    return chapters


def _choice_items(rng, pairs, pool, n):
    """``n`` four-way items: ``(context, answer, chapter)`` against three verses of other chapters in ``pool``."""
    items = []
    for context, answer, chapter in rng.sample(pairs, n):
        others = [t for c, t in rng.sample(pool, 12) if c != chapter and t != answer][:3]
        choices = others + [answer]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(answer)})
    return items


def prophet_splits() -> dict[str, list[dict]]:
    """``{train: [{prompt, answer}], val: [items], test: [items]}`` of ``lords_kjv_prophets``."""
    chapters = _prophet_chapters()
    keys = sorted(chapters)
    rng = random.Random(0)
    rng.shuffle(keys)
    by_split: dict[str, list] = {"test": [], "val": [], "train": []}
    split = "test"
    for key in keys:  # test chapters until they hold enough pairs for 2× the items, then validation, then training
        verses = chapters[key]
        pairs = [(a, b, key) for a, b in zip(verses, verses[1:])]
        if split == "test" and len(by_split["test"]) >= 2 * TEST_ITEMS:
            split = "val"
        if split == "val" and len(by_split["val"]) >= 2 * VAL_ITEMS:
            split = "train"
        by_split[split] += pairs
    out: dict[str, list] = {}
    for split, n in (("test", TEST_ITEMS), ("val", VAL_ITEMS)):
        pool = [(c, b) for _, b, c in by_split[split]]
        out[split] = _choice_items(rng, by_split[split], pool, n)
    held = {t for a, b, _ in by_split["test"] + by_split["val"] for t in (a, b)}  # verses repeated across chapters
    out["train"] = [
        {"prompt": a, "answer": " " + b} for a, b, _ in by_split["train"] if a not in held and b not in held
    ]
    return out


UNICODE_BLOCKS = (
    (0x00C0, 0x0250),
    (0x0370, 0x0700),
    (0x0900, 0x0980),
    (0x0E00, 0x0E80),
    (0x10A0, 0x1100),
    (0x1E00, 0x2000),
    (0x3040, 0x3100),
)
"""Latin-1 letters to IPA, Greek, Cyrillic, Armenian, Hebrew, Arabic, Devanagari, Thai, Georgian, Latin and Greek
Extended, Hiragana and Katakana: the letters (categories Lu, Ll, Lo) of these ranges in Unicode 3.2."""


def unicode_letters() -> list[tuple[str, str]]:
    """``(letter, name)`` of every letter of :data:`UNICODE_BLOCKS` in Unicode 3.2, shuffled with seed 0."""
    ucd = unicodedata.ucd_3_2_0
    letters = [
        (chr(c), ucd.name(chr(c)))
        for a, b in UNICODE_BLOCKS
        for c in range(a, b)
        if ucd.category(chr(c)) in ("Lu", "Ll", "Lo")
    ]
    random.Random(0).shuffle(letters)
    return letters


def _family(name: str, sizes: Counter) -> str:
    """``CYRILLIC SMALL`` for ``CYRILLIC SMALL LETTER ZHE``; the script alone where that family has under 4 names."""
    head = name.split(" LETTER ")[0]
    return head if sizes[head] >= 4 else name.split(" ")[0]


def unicode_name_splits() -> dict[str, list[dict]]:
    """``{train: [{prompt, answer}], val: [items], test: [items]}`` of ``lords_unicode_names``."""
    letters = unicode_letters()
    heads = Counter(name.split(" LETTER ")[0] for _, name in letters)
    families: dict[str, list[str]] = {}
    for _, name in letters:
        families.setdefault(_family(name, heads), []).append(name)
    rng = random.Random(1)

    def item(letter: str, name: str) -> dict:
        family = families[_family(name, heads)]
        pool = [x for x in family if x != name]
        if len(pool) < 3:  # a family of its own (ARMENIAN SMALL LIGATURE ECH YIWN): its script's other names
            pool = [x for _, x in letters if x != name and x.split(" ")[0] == name.split(" ")[0]]
        choices = rng.sample(pool, 3) + [name]
        rng.shuffle(choices)
        return {"context": f'Unicode name of "{letter}":', "choices": choices, "label": choices.index(name)}

    test, val = letters[:TEST_ITEMS], letters[TEST_ITEMS : TEST_ITEMS + VAL_ITEMS]
    return {
        "test": [item(*x) for x in test],
        "val": [item(*x) for x in val],
        "train": [
            {"prompt": f'Unicode name of "{c}":', "answer": " " + n} for c, n in letters[TEST_ITEMS + VAL_ITEMS :]
        ],
    }
