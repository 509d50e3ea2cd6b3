"""What every table runner shares: its command line, its run folder, and the machine facts each row records."""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

from lords_pipelines import CONF


def table_cli(doc: str, runner: str, only_help: str, table_arg: dict) -> argparse.ArgumentParser:
    """The command line both table runners share: the table argument(s), ``--run-dir`` (default
    ``outputs/runs/<runner>/<time>``, see :func:`run_dir_of`), ``--out``, ``--model``, ``--only``, ``--render``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(*table_arg.pop("names"), **table_arg)
    p.add_argument("--run-dir", default=None, help=f"rows journal and reports (default outputs/runs/{runner}/<time>)")
    p.add_argument("--out", default=None, help="also write <out>/<table>.{md,json,png} (outputs/reports/tables)")
    p.add_argument("--model", default=None, help="override the model (e.g. a GGUF path on the GPU machine)")
    p.add_argument("--only", default=None, help=only_help)
    p.add_argument("--render", action="store_true", help="only redraw the reports from <run-dir>/<table>/rows.jsonl")
    return p


def check_only(only: str | None, keys: list[str], what: str) -> None:
    """Stop before any work when ``--only`` selects none of ``keys`` (a typo would otherwise run nothing, quietly)."""
    if only and not any(re.search(only, k) for k in keys):
        raise SystemExit(
            f"--only {only!r} selects no {what} of the table(s); its {what} look like "
            + ", ".join(keys[:3])
            + f" ({len(keys)} in all)"
        )


def run_dir_of(args, runner: str) -> Path:
    return Path(args.run_dir or f"outputs/runs/{runner}/{time.strftime('%Y-%m-%d_%H-%M-%S')}")


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
