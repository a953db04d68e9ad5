"""A run's logged history from the CSV logger's versions, as the report reads it."""

import csv
import json

from addernet.experiments.report import curve_rows, mark_version_start, read_curves


def write_version(run_dir, n, rows, start=None):
    version = run_dir / "csv" / f"version_{n}"
    version.mkdir(parents=True)
    with open(version / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "val/acc"])
        writer.writeheader()
        writer.writerows({"epoch": e, "step": s, "val/acc": a} for e, s, a in rows)
    if start is not None:
        mark_version_start(version, start)


def test_a_resumed_run_continues_its_history_from_the_checkpoints_step(tmp_path):
    write_version(tmp_path, 0, [(0, 9, 0.1), (1, 19, 0.2), (2, 29, 0.3)], start=0)  # died after step 29
    write_version(tmp_path, 1, [(2, 29, 0.35), (3, 39, 0.4)], start=20)  # resumed from the checkpoint of step 20
    assert read_curves(tmp_path)["val/acc"] == [(0, 0.1), (1, 0.2), (2, 0.35), (3, 0.4)]


def test_a_new_run_in_a_used_directory_replaces_the_history_even_before_it_logs(tmp_path):
    write_version(tmp_path, 0, [(0, 3, 0.1), (1, 7, 0.2)], start=0)  # a short debug run
    write_version(tmp_path, 1, [(0, 49, 0.5)], start=0)  # a new run logs first at step 49
    assert read_curves(tmp_path)["val/acc"] == [(0, 0.5)]
    write_version(tmp_path, 2, [], start=0)  # a new run that died before logging
    assert curve_rows(tmp_path) == []
    assert json.loads((tmp_path / "csv" / "version_2" / "start.json").read_text()) == {"step": 0}


def test_the_single_file_of_older_versions_is_read_first(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step,val/acc\n0,9,0.1\n1,19,0.2\n")
    write_version(tmp_path, 0, [(1, 19, 0.25)], start=10)
    assert read_curves(tmp_path)["val/acc"] == [(0, 0.1), (1, 0.25)]
