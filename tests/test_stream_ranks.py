"""Streamed PTQ on several ranks (one process per GPU) writes the same journal, hence the same checkpoint, as one
process: float-prefix inputs split the blocks, quantized-prefix inputs split the linears of each block."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lords
from lords.distribute import Ranks, assign_linears, block_range
from lords.errors import ConfigError
from lords.stream import load_streamed, quantize_streamed
from lords_pipelines.models import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
CFG = lords.LordsConfig(
    bits=3,
    block_size=16,
    calib_tokens=256,
    sample_tokens=32,
    refine=lords.RefineConfig(steps=3, lr=1e-2, objective="act_diag"),
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 3-block tiny Llama saved as safetensors shards, and calibration tokens."""
    folder = tmp_path_factory.mktemp("tiny")
    tiny_llama(seed=0, layers=3).save_pretrained(folder, max_shard_size="200KB")
    ids = torch.randint(0, 512, (1, 300), generator=torch.Generator().manual_seed(0))
    return folder, ids


def _state(folder, journal, config=CFG):
    return load_streamed(folder, config, journal).state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_blocks_split_into_contiguous_runs_that_cover_every_block_once():
    runs = [block_range(32, Ranks(r, 3)) for r in range(3)]
    assert [list(r)[:1] + [len(r)] for r in runs] == [[0, 11], [11, 11], [22, 10]]
    assert block_range(1, Ranks(1, 2)) == range(1, 1)  # more ranks than blocks: an idle rank


def test_linears_of_a_block_go_largest_first_to_the_least_loaded_rank():
    sizes = {"q": 16, "k": 4, "v": 4, "o": 16, "gate": 56, "up": 56, "down": 56}  # Llama-3-8B's shapes / 1M
    owner = assign_linears(sizes, 2)
    load = [sum(s for n, s in sizes.items() if owner[n] == r) for r in range(2)]
    assert list(owner) == list(sizes) and sorted(load) == [96, 112]  # the best split of these sizes


def test_two_ranks_by_hand_on_float_inputs_give_one_process_journal_bit_for_bit(saved, tmp_path):
    folder, ids = saved
    quantize_streamed(folder, CFG, tmp_path / "one", ids, inputs="float", progress=False)
    for rank in (1, 0):  # in either order: blocks on float inputs are independent
        quantize_streamed(folder, CFG, tmp_path / "two", ids, inputs="float", progress=False, ranks=Ranks(rank, 2))
    assert _same(_state(folder, tmp_path / "two"), _state(folder, tmp_path / "one"))


def test_a_rank_on_float_inputs_quantizes_only_its_blocks(saved, tmp_path):
    folder, ids = saved
    report = quantize_streamed(folder, CFG, tmp_path / "j", ids, inputs="float", progress=False, ranks=Ranks(1, 2))
    assert {r.name.split(".")[2] for r in report.layers} == {"2"}  # blocks (0, 1) are rank 0's, (2,) rank 1's


def test_quantized_inputs_on_ranks_without_a_process_group_are_refused(saved, tmp_path):
    folder, ids = saved
    with pytest.raises(ConfigError, match="needs an initialized torch.distributed group"):
        quantize_streamed(folder, CFG, tmp_path / "j", ids, progress=False, ranks=Ranks(0, 2))


@pytest.mark.slow
@pytest.mark.parametrize("inputs", ["float", "quantized"])
def test_two_gloo_processes_under_torchrun_give_one_process_checkpoint_bit_for_bit(saved, tmp_path, inputs):
    """``torchrun --nproc-per-node 2 -m lords_pipelines.stages.stream_ptq`` (gloo on the CPU) against one process."""
    folder, _ = saved
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    common = [
        "-m",
        "lords_pipelines.stages.stream_ptq",
        str(folder),
        "--bits",
        "3",
        "--block-size",
        "16",
        "--steps",
        "3",
        "--calib-tokens",
        "256",
        "--random-calib",
        "--inputs",
        inputs,
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"ranks{n}"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(n),
            "--master-port",
            str(29400 + n + (inputs == "float") * 10),
            *common,
            "--out",
            str(outs[n]),
        ]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (lords.load_quantized(outs[n] / "quantized")[0].state_dict() for n in (1, 2))
    assert _same(two, one)


def test_the_report_times_the_setup_and_the_blocks_of_the_run(saved, tmp_path):
    import time

    folder, ids = saved
    t0 = time.perf_counter()
    report = quantize_streamed(folder, CFG, tmp_path / "j", ids, inputs="float", progress=False, ranks=Ranks(1, 2))
    took = time.perf_counter() - t0
    assert set(report.seconds) == {"setup", "blocks"} and 0 < sum(report.seconds.values()) <= took
