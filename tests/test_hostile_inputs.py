"""Bad values fed to every front door of lords (library configs, the ``lords`` command, Hydra targets): each is
refused by name, or in one line with exit status 2 before a model loads, never a raw exception, a machine-sized
allocation or a silent downgrade. The checkpoint and resume attacks: ``test_hostile.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_hostile import TINY, calibrated, cfg, tiny  # the same tiny model and configs as the attacks on reads

import lords
from lords.errors import CheckpointError, ConfigError, LordsError


def same_state(a, b) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A quantized tiny Llama saved as a lords folder (with no tokenizer: nothing here gets as far as needing one)."""
    path = tmp_path_factory.mktemp("saved") / "q"
    model = tiny()
    lords.quantize_(model, cfg(), progress=False)
    lords.save_quantized(model, path)
    return path


# --- inputs that would exhaust the machine, silent downgrades, raw exceptions: named at the front door -------------


def test_a_block_larger_than_the_row_is_the_row_without_allocating_it():
    from lords.blockwise import block_absmax, expand_blocks

    w = torch.randn(4, 40)
    assert torch.equal(block_absmax(w, 10**12), block_absmax(w, 40))
    assert expand_blocks(block_absmax(w, 10**12), 40, 10**12).shape == (4, 40)
    huge, row = tiny(0), tiny(0)
    lords.quantize_(huge, lords.BlockwiseConfig(bits=4, block_size=10**9), progress=False)
    lords.quantize_(row, lords.BlockwiseConfig(bits=4, block_size=128), progress=False)  # every row is ≤ 128 wide
    assert same_state(huge, row)
    with pytest.raises(LordsError, match="block_size"):  # LoRDS at that budget has rank 0: refused by name
        lords.quantize_(tiny(0), cfg(block_size=10**9), progress=False)


def test_weights_near_the_float32_range_report_a_finite_error():
    model = tiny(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(1e38)
    report = lords.quantize_(model, cfg(), progress=False)
    assert 0 < report.rel_error < 1


def _nested(depth: int) -> dict:
    d = {"method": "lords"}
    for _ in range(depth):
        d = {"method": "layerwise", "default": d}
    return d


@pytest.mark.parametrize(
    "make",
    [
        lambda: lords.RefineConfig(lr=float("nan")),
        lambda: lords.RefineConfig(lr=float("inf")),
        lambda: lords.LordsConfig(bits=4.0),
        lambda: lords.LordsConfig(include=5),
        lambda: lords.LayerwiseConfig(rules=[("a{99999999999}", None)]),
        lambda: lords.LayerwiseConfig(rules=5),
        lambda: lords.config_from_dict({"method": "lords", "refine": {"bogus": 1}}),
        lambda: lords.config_from_dict({"method": "lords", "bits": [4]}),
        lambda: lords.config_from_dict(["lords"]),
        lambda: lords.config_from_dict({"method": ["lords"]}),
        lambda: lords.config_from_dict({"method": "layerwise", "rules": [["a"]]}),
        lambda: lords.config_from_dict(_nested(5000)),
    ],
    ids=[
        "lr-nan",
        "lr-inf",
        "bits-float",
        "include-int",
        "regex-overflow",
        "rules-int",
        "refine-unknown",
        "bits-list",
        "not-a-mapping",
        "method-list",
        "rule-unpacking",
        "nested-too-deep",
    ],
)
def test_malformed_config_fields_are_config_errors(make):
    with pytest.raises(ConfigError):
        make()


def test_deeply_nested_config_json_is_a_checkpoint_error(tmp_path):
    (tmp_path / "config.json").write_text('{"quantization_config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError):
        lords.load_quantized(tmp_path)


def test_out_of_vocabulary_calibration_ids_are_refused_before_a_forward_pass():
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        lords.quantize_(tiny(0), calibrated(), calib_ids=torch.full((1, 64), TINY["vocab"]), progress=False)


def test_checking_a_hydra_target_imports_nothing(tmp_path, monkeypatch):
    from lords_pipelines.stages.settings import build_quant

    (tmp_path / "hostile_target.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nclass Config: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="_target_"):
        build_quant({"_target_": "hostile_target.Config", "bits": 4})
    assert not (tmp_path / "ran").exists()
    assert type(build_quant({"_target_": "lords.LordsConfig", "bits": 4})) is lords.LordsConfig


@pytest.fixture
def cli(monkeypatch, capsys):
    """``lords`` in this process, any model load an error: ``cli(*argv) -> (status, stderr)``."""
    from lords_pipelines import cli as lords_cli
    from lords_pipelines import models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the bad value was refused")

    monkeypatch.setattr(models, "load_model", no_load)
    monkeypatch.setattr(lords_cli, "_load", no_load)

    def run(*argv):
        status = lords_cli.main([str(a) for a in argv])
        return status, capsys.readouterr().err

    return run


def _bad_text(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.txt"
    path.write_bytes(b"" if kind == "empty" else b"\xff\xfe\x00bad")
    return path


@pytest.mark.parametrize(
    "argv, message",
    [
        (lambda t, s: ["quantize", "tiny", "--calib", _bad_text(t, "empty"), "--out", t / "o"], "holds no text"),
        (lambda t, s: ["quantize", "tiny", "--calib", _bad_text(t, "latin"), "--out", t / "o"], "not UTF-8"),
        (lambda t, s: ["quantize", "tiny", "--lr", "nan", "--steps", "3", "--out", t / "o"], "refine.lr"),
        (lambda t, s: ["quantize", "tiny", "--steps", "-1", "--out", t / "o"], "--steps"),
        (lambda t, s: ["quantize", "tiny", "--out", s / "config.json" / "o"], "--out"),
        (lambda t, s: ["eval", s, "--tokens", "0"], "--tokens"),
        (lambda t, s: ["bench", s, "--tokens", "1"], "--tokens"),
        (lambda t, s: ["bench", s, "--prompt", "100000"], "context"),
        (lambda t, s: ["bench", s, "--device", "cuda:7"], "--device"),
        (lambda t, s: ["eval", s, "--device", "warp-drive"], "--device"),
    ],
    ids=[
        "calib-empty",
        "calib-not-utf8",
        "lr-nan",
        "steps-negative",
        "out-unwritable",
        "eval-tokens-0",
        "bench-tokens-1",
        "bench-prompt-past-context",
        "device-cuda-absent",
        "device-nonsense",
    ],
)
def test_the_command_refuses_bad_values_in_one_line_before_loading_a_model(cli, saved, tmp_path, argv, message):
    if "cuda:7" in map(str, argv(tmp_path, saved)) and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    status, err = cli(*argv(tmp_path, saved))
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
