"""A QAT row's curves come from its run's Lightning CSV log; a run killed and rerun logs again from step 0, and the
row keeps only the last attempt's curve."""

from lords_pipelines.tables.qat_rows import curves


def _log(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.csv").write_text("step,train/loss,val/loss\n" + "".join(f"{s},{t},{v}\n" for s, t, v in rows))


def test_a_rerun_s_curve_replaces_the_killed_attempt_s(tmp_path):
    _log(tmp_path / "csv" / "version_0", [(0, 9.0, ""), (8, 8.0, "")])
    _log(tmp_path / "csv" / "version_1", [(0, 7.0, ""), (8, 6.0, 6.5)])
    assert curves(tmp_path) == {"train/loss": [(0, 7.0), (8, 6.0)], "val/loss": [(8, 6.5)]}


def test_versions_sort_by_number_not_by_name(tmp_path):
    for n in (2, 10):
        _log(tmp_path / "csv" / f"version_{n}", [(0, float(n), "")])
    assert curves(tmp_path)["train/loss"] == [(0, 10.0)]
