"""What every table's rows share: the journal they land in (``<run dir>/<table>/rows.jsonl``, one JSON record per
line, each with its ``key``) and the machine facts each record carries."""

from __future__ import annotations

import json
import platform
import re
import subprocess
from pathlib import Path

import torch

from lords.errors import ConfigError
from lords_pipelines import CONF


def read_journal(path: Path, eval_tokens: int | None = None) -> dict[str, dict]:
    """``{key: record}`` of a table's journal (the last line of a key wins: merged journals may repeat one); with
    ``eval_tokens``, only the records scored on that many tokens (a spec whose evaluation changed runs again)."""
    if not path.is_file():
        return {}
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["key"]: r for r in records if eval_tokens is None or r.get("eval_tokens") == eval_tokens}


def append_record(path: Path, record: dict) -> None:
    """One finished row, appended at once as one line: a crash loses the row in progress, never a written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def check_only(only: str | None, keys: list[str], what: str) -> None:
    """Refuse, before any work, an ``only`` regex that selects none of ``keys`` (a typo would otherwise run
    nothing, quietly): the one-line reason names what the keys look like."""
    if only and not any(re.search(only, k) for k in keys):
        raise ConfigError(
            f"only={only!r} selects no {what} of the table; its {what} look like "
            + ", ".join(keys[:3])
            + f" ({len(keys)} in all)"
        )


def model_label(spec) -> str:
    """The model's name in the records: SmolLM2's by its release name, any other as the spec gives it."""
    return "SmolLM2-135M-Instruct" if "smol" in str(spec.model).lower() else str(spec.model)


def loaded_model(spec, memo: dict):
    """``(model, tokenizer)`` of ``spec.model``, loaded once per process (on the GPU when there is one)."""
    if ("model", spec.model) not in memo:
        from lords_pipelines.models import load_model

        model, tok = load_model(spec.model)
        memo["model", spec.model] = (model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tok)
    return memo["model", spec.model]


def device_name() -> str:
    """The GPU's name, or the CPU's with the torch thread count (recorded in every table row)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def commit() -> str:
    """The checkout's short commit, ``+dirty`` when tracked files changed (recorded beside every table)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=CONF.parent)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=CONF.parent
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
