"""The training-step profiler runs both stages end to end on a tiny model (CPU smoke: its timings mean nothing)."""
import json

import pytest

from lords_pipelines.profile_step import main


@pytest.mark.parametrize("stage", ["peft", "qat"])
def test_profile_step_times_and_profiles_a_training_step(stage, tmp_path, capsys):
    result = main(["--stage", stage, "--smoke", "--out", str(tmp_path)])
    assert result["step_s"] > 0 and result["trainable_floats"] > 0 and result["top"]
    assert json.loads((tmp_path / f"profile_{stage}.json").read_text())["stage"] == stage
    assert "ms a step" in capsys.readouterr().out
