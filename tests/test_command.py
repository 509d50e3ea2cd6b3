"""The ``lords`` command: quantize a folder, then info, eval and bench on it; --help everywhere; bad input is one
line on stderr and exit status 2."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lords_pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("quantize", "eval", "info", "bench")


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    """A tiny random Llama saved with the offline BPE tokenizer, as a user's float model folder."""
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import bpe_tokenizer

    path = tmp_path_factory.mktemp("float")
    tok = bpe_tokenizer(512)
    tiny_llama(seed=0, vocab=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lords_dir(float_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny-lords-3bit"
    assert main(["quantize", str(float_dir), "--bits", "3", "--block-size", "16", "--out", str(out)]) == 0
    return out


def test_pyproject_declares_the_lords_command():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lords"] == "lords_pipelines.cli:main"


def test_help_lists_every_subcommand():
    done = subprocess.run(
        [sys.executable, "-m", "lords_pipelines.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and all(s in done.stdout for s in SUBCOMMANDS)


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_each_subcommand_has_help(sub, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([sub, "--help"])
    assert exit_.value.code == 0 and f"usage: lords {sub}" in capsys.readouterr().out


def test_quantize_writes_a_folder_that_transformers_opens(lords_dir):
    from transformers import AutoModelForCausalLM

    from lords.linear import LoRDSLinear

    model = AutoModelForCausalLM.from_pretrained(lords_dir)
    assert isinstance(model.model.layers[0].mlp.up_proj, LoRDSLinear) and (lords_dir / "tokenizer.json").is_file()


def test_quantize_with_calibration_text_refines_on_its_activations(float_dir, tmp_path, capsys):
    out = tmp_path / "cal"
    assert (
        main(
            [
                "quantize",
                str(float_dir),
                "--bits",
                "3",
                "--block-size",
                "16",
                "--calib",
                "pydoc",
                "--steps",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "act_diag x 1" in capsys.readouterr().out
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["config"]["refine"] == {"steps": 1, "lr": 0.01, "objective": "act_diag"}


def test_info_reports_bits_floats_and_sizes_without_building_a_model(lords_dir, capsys):
    assert main(["info", str(lords_dir)]) == 0
    out = capsys.readouterr().out
    assert "code bits                      3.000" in out
    # parity rank at block 16 stays within the block budget: 3 + 32/16 bits at most, float32 scales
    bpw = float(next(line for line in out.splitlines() if line.startswith("bits per weight")).split()[-1])
    assert 3 < bpw <= 5
    qc = json.loads((lords_dir / "config.json").read_text())["quantization_config"]
    assert f"quantized modules              {len(qc['modules'])} (lords)" in out


@pytest.mark.parametrize("config", ["lords", "loftq"])
def test_info_counts_what_the_library_counts_for_every_registered_layout(tmp_path, capsys, config):
    """Bits per weight and stored floats from the folder's metadata alone equal ``lords.storage_bits`` of the model
    that was saved: LoftQ's low-rank correction counts beside its block scales, as in the tables."""
    import lords
    from lords_pipelines.models import tiny_llama

    model = tiny_llama(seed=0)
    cfg = (
        lords.LordsConfig(bits=3, block_size=16)
        if config == "lords"
        else lords.LoftQConfig(bits=3, block_size=16, rank=4)
    )
    lords.quantize_(model, cfg, progress=False)
    lords.save_quantized(model, tmp_path / "q")
    assert main(["info", str(tmp_path / "q")]) == 0
    out = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in capsys.readouterr().out.splitlines() if "  " in line)
    layers = [m for m in model.modules() if isinstance(m, lords.QuantizedLinear)]
    assert int(out["scale floats"].strip().replace(",", "")) == sum(m.float_params() for m in layers)
    assert float(out["bits per weight (with scales)"]) == pytest.approx(
        lords.storage_bits(model)["bits_per_weight"], abs=1e-3
    )


def test_eval_scores_perplexity_and_a_shipped_task(lords_dir, capsys):
    assert main(["eval", str(lords_dir), "--tokens", "128", "--tasks", "lords_cloze", "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "lords_cloze/acc" in out


def test_bench_reports_decode_tokens_per_second(lords_dir, capsys):
    assert main(["bench", str(lords_dir), "--tokens", "4", "--prompt", "8"]) == 0
    rate = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("decode tokens/s"))
    assert float(rate.split()[-1]) > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "no/such/folder"], "not a model folder"),
        (["quantize", "x", "--bits", "5", "--out", "o"], "argument --bits: invalid choice"),
        (["quantize", "x", "--block-size", "0", "--out", "o"], "block_size=0 must be an integer"),
        (["quantize", "x", "--calib", "no-such-file.txt", "--out", "o"], "--calib no-such-file.txt: no such file"),
        (["eval", "no/such/folder"], "not a model folder"),
    ],
    ids=["missing-folder", "bits", "block-size", "calib-file", "eval-folder"],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("offline_by", ["env", "no-dns"])
def test_an_unknown_model_name_fails_at_once_naming_the_embedded_models(monkeypatch, tmp_path, capsys, offline_by):
    """A typo of an embedded name is neither a folder nor reachable on a hub here: one line, exit 2, before any
    model library loads and without a network retry (offline mode, or the hub's name not resolving)."""
    from lords_pipelines import models

    if offline_by == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(models, "_hub_resolves", lambda *a, **k: False)
    code = main(["quantize", "smollm2-135", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "did you mean 'smollm2-135m'" in err[0] and "embedded models: smollm2-135m" in err[0]
    assert not (tmp_path / "o").exists()


def test_info_refuses_a_float_folder_in_one_line(float_dir, capsys):
    assert main(["info", str(float_dir)]) == 2
    assert "not quant_method 'lords'" in capsys.readouterr().err
