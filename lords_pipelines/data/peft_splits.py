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
- ``lords_prophets_word`` and ``lords_prophets_half`` (multiple choice, lm-eval semantics), in place of
  ``lords_kjv_prophets`` (at chance for every model): a verse of Isaiah or Jeremiah without its last word against
  that word and the last words of three other verses of its chapter; the first half of a verse (to its first colon
  or semicolon) against its second half and three second halves of like length from other chapters. Chapters are
  split (500 test items, 200 validation items, the rest of the verses for training, as prompt → answer pairs); a
  training verse that shares an 8-word run with any held-out chapter is dropped (:func:`_prophet_task`).
"""

from __future__ import annotations

import random
import re
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


def _last_word(text: str):
    """``(verse without its last word, last word)`` when the verse has 8–40 words and ends on a lower-case word of
    four letters or more (names and short function words are too easy or ambiguous to guess), else None."""
    words = text.rstrip(".;:,!?").split(" ")
    if 8 <= len(words) <= 40 and re.fullmatch(r"[a-z]{4,}", words[-1]):
        return " ".join(words[:-1]), words[-1]
    return None


def _halves(text: str):
    """``(first half + ":" or ";", second half)`` of a verse cut at its first colon (else semicolon), each half of
    four words or more, else None."""
    cut = ":" if ":" in text else ";"
    if cut not in text:
        return None
    first, second = (x.strip() for x in text.split(cut, 1))
    return (first + cut, second) if len(first.split()) >= 4 and len(second.split()) >= 4 else None


def _prophet_task(extract, seed: int, pool_of) -> dict[str, list[dict]]:
    """Train/val/test of a task whose items come one per verse of Isaiah and Jeremiah (``extract(verse)`` →
    ``(context, answer)`` or None). Chapters, shuffled with seed 0 as in :func:`prophet_splits`, go to the test split
    until it holds :data:`TEST_ITEMS` candidates, then to validation until :data:`VAL_ITEMS`, the rest to training.
    A context that occurs more than once in the two books (``Thus saith the LORD;``) makes no item: its continuation
    is not determined, and the splits share no context. Each held-out item gets three distractors from ``pool_of(candidates, chapter, answer)``. Training pairs whose verse shares
    an 8-word run with any verse of a held-out chapter are dropped (Jeremiah repeats itself and Isaiah)."""
    from lords_pipelines.data.texts import _ngrams

    chapters = _prophet_chapters()
    unique = Counter(x[0] for vs in chapters.values() for v in vs if (x := extract(v)) is not None)
    keys = sorted(chapters)
    random.Random(0).shuffle(keys)
    split_of, counts, split = {}, {"test": 0, "val": 0, "train": 0}, "test"
    for key in keys:
        if split == "test" and counts["test"] >= TEST_ITEMS:
            split = "val"
        if split == "val" and counts["val"] >= VAL_ITEMS:
            split = "train"
        split_of[key] = split
        counts[split] += sum(unique[x[0]] == 1 for v in chapters[key] if (x := extract(v)) is not None)
    cands: dict[str, list] = {"test": [], "val": [], "train": []}
    for key in keys:
        cands[split_of[key]] += [(*x, key, v) for v in chapters[key] if (x := extract(v)) is not None]
    cands = {k: [x for x in v if unique[x[0]] == 1] for k, v in cands.items()}
    rng = random.Random(seed)
    out: dict[str, list] = {}
    for name, n in (("test", TEST_ITEMS), ("val", VAL_ITEMS)):
        out[name] = []
        for context, answer, key, _ in rng.sample(cands[name], n):
            pool = sorted(set(pool_of(cands[name], key, answer)) - {answer})
            if len(pool) < 3:  # a chapter with too few candidates: the split's
                pool = sorted({a for _, a, _, _ in cands[name]} - {answer})
            choices = rng.sample(pool, 3) + [answer]
            rng.shuffle(choices)
            out[name].append({"context": context, "choices": choices, "label": choices.index(answer)})
    held = set().union(*(_ngrams(v) for k, vs in chapters.items() if split_of[k] != "train" for v in vs))
    out["train"] = [{"prompt": c, "answer": " " + a} for c, a, _, v in cands["train"] if not _ngrams(v) & held]
    return out


def prophet_word_splits() -> dict[str, list[dict]]:
    """``lords_prophets_word``: the last word of a verse of Isaiah or Jeremiah against the last words of three other
    verses of the same chapter (same topic and register: the sentence, not the subject, decides)."""
    return _prophet_task(_last_word, 2, lambda cands, key, answer: [a for _, a, k, _ in cands if k == key])


def prophet_half_splits() -> dict[str, list[dict]]:
    """``lords_prophets_half``: the second half of a verse (after its first colon or semicolon) against the second
    halves of three verses of other chapters, each within a quarter of its length in words (so that neither ``acc``,
    which favours short choices, nor ``acc_norm`` reads the answer off its length)."""

    def pool(cands, key, answer):
        n = len(answer.split())
        return [a for _, a, k, _ in cands if k != key and abs(len(a.split()) - n) <= n / 4]

    return _prophet_task(_halves, 3, pool)
