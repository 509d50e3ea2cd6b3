"""The training-step profiler runs both stages end to end on a tiny model (CPU smoke: its timings mean nothing)."""

import json

import pytest

from benchmarks.scale.profile_step import main


@pytest.mark.parametrize("stage", ["peft", "qat"])
def test_profile_step_times_and_profiles_a_training_step(stage, tmp_path, capsys):
    result = main(["--stage", stage, "--smoke", "--out", str(tmp_path)])
    assert result["step_s"] > 0 and result["trainable_floats"] > 0 and result["top"]
    assert json.loads((tmp_path / f"profile_{stage}.json").read_text())["stage"] == stage
    assert "ms a step" in capsys.readouterr().out


def test_under_torchrun_each_rank_trains_through_ddp_and_writes_its_own_profile(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "benchmarks.scale.profile_step",
            "--stage",
            "peft",
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"profile_peft_rank{r}.json").read_text()) for r in (0, 1)]
    assert [(x["rank"], x["world_size"]) for x in ranks] == [(0, 2), (1, 2)] and all(x["step_s"] > 0 for x in ranks)
