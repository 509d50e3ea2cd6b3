"""README's "Use it from transformers" section: every command parses (fast) and runs as written (slow, the embedded
SmolLM2-135M, in a temporary folder)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Use it from transformers", 1)[1].split("\n## ", 1)[0]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), re.S)


def _commands() -> list[list[str]]:
    """Each shell line of the section, its comment dropped, as argv."""
    lines = [line.split("  #")[0].strip() for block in _blocks("bash") for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


def _argv(words: list[str]) -> list[str]:
    """``lords ...`` is the installed script of ``lords_pipelines.cli``; ``python`` is this interpreter."""
    head = {"lords": [sys.executable, "-m", "lords_pipelines.cli"], "python": [sys.executable]}[words[0]]
    return head + words[1:]


def test_the_section_has_the_commands_and_the_python_example():
    assert [c[1] if c[0] == "lords" else c[2] for c in _commands()] == ["quantize", "info", "eval", "bench", "lm-eval"]
    assert len(_blocks("python")) == 1 and "from_pretrained" in _blocks("python")[0]


def test_every_lords_command_of_the_section_parses():
    from lords_pipelines.cli import parser

    for words in _commands():
        if words[0] == "lords":
            parser().parse_args(words[1:])  # exits 2 on an unknown flag


@pytest.mark.slow
def test_every_command_of_the_section_runs_as_written(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for words in _commands():
        done = subprocess.run(_argv(words), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(words)}\n{done.stderr[-3000:]}"
    script = tmp_path / "example.py"
    script.write_text(_blocks("python")[0])
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    base = sum(f.stat().st_size for f in (tmp_path / "smollm2-lords-4bit").glob("*.safetensors"))
    adapter = sum(f.stat().st_size for f in (tmp_path / "my-adapter").iterdir())
    assert 0.02 < adapter / base < 0.04  # the README's "~3% of the checkpoint here"
