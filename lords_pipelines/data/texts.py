"""The texts every run here uses, offline, in three disjoint roles:

- evaluation: ``licenses`` (GPL-3, Apache-2.0, MPL-2.0, LGPL-2.1: legal prose) and ``kjv_genesis`` (the book of
  Genesis, King James Version, 1611: narrative prose, public domain);
- calibration: ``pydoc_topics`` (Python's reference-manual pages from ``pydoc_data``: technical prose and code);
- training (QAT, domain adaptation): ``kjv_train``, the KJV books that no evaluation text or shipped task uses
  (neither the zero-shot tasks' books nor the PEFT task's, :data:`KJV_PEFT_BOOKS`).

The KJV ships whole in ``data/kjv.txt.gz`` (one verse a line, ``<book><chapter>:<verse> <text>``, as Debian's
``bible-kjv-text`` 4.38 prints it with ``bible -f``); the cloze and next-verse tasks of ``lords_pipelines.tasks``
draw on the books in :data:`KJV_TASK_BOOKS`.
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache
from importlib import resources

import torch

EVAL_CORPUS = "licenses"
CALIB_CORPUS = "pydoc_topics"
EVAL_CORPORA = ("licenses", "kjv_genesis")
CORPORA = ("licenses", "kjv_genesis", "pydoc_topics", "kjv_train")
KJV_EVAL_BOOKS = ("Ge",)
KJV_TASK_BOOKS = ("Psa", "Prv", "Eccl", "Mat", "Mark", "Luke", "John")
KJV_PEFT_BOOKS = ("Isa", "Jer")
"""Books of the PEFT multiple-choice task (``lords_kjv_prophets``: train, validation and test splits by chapter)."""
_REF = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def eval_text() -> str:
    """GPL-3, Apache-2.0, MPL-2.0 and LGPL-2.1 as Debian ships them (verbatim copies are permitted)."""
    return resources.files(__package__).joinpath("licenses.txt").read_text()


def calibration_text() -> str:
    """Python's pydoc topic pages (reference-manual prose and code), in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


@lru_cache(maxsize=1)
def kjv_verses() -> tuple[tuple[str, int, int, str], ...]:
    """Every verse of the KJV as ``(book, chapter, verse, text)``, in canonical order (31,102 verses)."""
    raw = resources.files(__package__).joinpath("kjv.txt.gz").read_bytes()
    verses = []
    for line in gzip.decompress(raw).decode().splitlines():
        m = _REF.match(line)
        if m:
            verses.append((m[1], int(m[2]), int(m[3]), m[4].strip()))
    return tuple(verses)


def kjv_text(books=None, exclude=()) -> str:
    """Prose of the given KJV books (all when None, minus ``exclude``): a paragraph per chapter, no verse numbers."""
    chapters: dict[tuple[str, int], list[str]] = {}
    for book, chapter, _, text in kjv_verses():
        if (books is None or book in books) and book not in exclude:
            chapters.setdefault((book, chapter), []).append(text)
    return "\n\n".join(" ".join(v) for v in chapters.values())


def _ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def kjv_train_text() -> str:
    """The KJV books outside evaluation and tasks, less every verse sharing an 8-word run with those books (the
    genealogies of Chronicles repeat Genesis): training text that never overlaps what is evaluated."""
    held = KJV_EVAL_BOOKS + KJV_TASK_BOOKS + KJV_PEFT_BOOKS
    seen = set().union(*(_ngrams(t) for b, _, _, t in kjv_verses() if b in held))
    chapters: dict[tuple[str, int], list[str]] = {}
    for book, chapter, _, text in kjv_verses():
        if book not in held and not (_ngrams(text) & seen):
            chapters.setdefault((book, chapter), []).append(text)
    return "\n\n".join(" ".join(v) for v in chapters.values())


def corpus_text(name: str) -> str:
    texts = {
        EVAL_CORPUS: eval_text,
        CALIB_CORPUS: calibration_text,
        "kjv_genesis": lambda: kjv_text(KJV_EVAL_BOOKS),
        "kjv_train": kjv_train_text,
    }
    if name not in texts:
        from lords.errors import ConfigError

        raise ConfigError(f"corpus={name!r} is not one of {tuple(texts)} (HF datasets load through pipelines)")
    return texts[name]()


def tokenize(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids ``(1, T)`` of ``text``, cut to ``max_tokens`` (no special tokens: windows add BOS themselves)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return ids[:, :max_tokens] if max_tokens else ids


def bos_id(tokenizer) -> int | None:
    """The BOS id when the tokenizer adds one to every text it encodes (Llama-2/3, Gemma), else None (GPT-2, SmolLM2)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True).input_ids
    return bos if ids and ids[0] == bos else None
