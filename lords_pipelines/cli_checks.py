"""What the ``lords`` command checks before any model loads (folders, files, devices, numbers, the model's context),
each refusal a ``BadInput`` that the command prints in one line with exit status 2; and its two-column output."""

from __future__ import annotations

import os
from pathlib import Path


class BadInput(Exception):
    """A command-line value the subcommand cannot use (reported in one line, exit status 2)."""


def table(rows: list[tuple[str, object]]) -> str:
    """Two aligned columns."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _folder(path: str) -> Path:
    from lords.checkpoint import recover  # a save killed mid-swap: its whole folder is put back first

    p = recover(Path(path))
    if not (p / "config.json").is_file():
        raise BadInput(f"{path}: not a model folder (no config.json)")
    return p


def _calibration(arg: str | None) -> str | None:
    if arg is None:
        return None
    if arg == "pydoc":
        from lords_pipelines.data.texts import calibration_text

        return calibration_text()
    if not Path(arg).is_file():
        raise BadInput(f"--calib {arg}: no such file (give a text file, or 'pydoc' for Python's own docs)")
    try:
        text = Path(arg).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"--calib {arg}: not UTF-8 text (byte {e.start}); give a UTF-8 text file") from None
    if not text.strip():
        raise BadInput(f"--calib {arg}: the file holds no text (an empty calibration would be a data-free run)")
    return text


def _positive(flag: str, value, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise BadInput(f"{flag} {value}: must be at least {minimum}")


def _writable(out: Path) -> None:
    """``--out`` can be created and written: found before the model loads, not after the quantization."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: exists and is not a folder")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"--out {out}: cannot write there ({parent} is not a writable folder)")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _device(arg: str | None) -> str:
    import torch

    if arg is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(arg)
    except (RuntimeError, ValueError):
        raise BadInput(f"--device {arg}: not a device (cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise BadInput(f"--device {arg}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise BadInput(f"--device {arg}: not supported (cpu or cuda)")
    return arg


def _context(folder: Path) -> int | None:
    """The model's context length from its config.json (read before any weight loads), None when it names none."""
    import json

    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (ValueError, RecursionError) as e:
        raise BadInput(f"{folder}/config.json is not JSON ({type(e).__name__})") from None
    value = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    return value if isinstance(value, int) and value > 0 else None
