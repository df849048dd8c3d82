"""`latentbench compare`: runs' metrics side by side, on run directories written by hand."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from latentbench import cli
from latentbench.compare import compare_runs, format_table, labels
from latentbench.io import RunFileError


def make_run(path: Path, metrics: dict[str, float] | None, train_seconds: float = 100.0) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "run_info.json").write_text(json.dumps({"train_seconds": train_seconds, "status": "completed"}))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps({"run": path.name, "metrics": metrics, "protocol": {}}))
    return path


def seeds(tmp_path: Path) -> list[Path]:
    """Three seeds of one recipe in three pilot folders: the same run name in each."""
    values = [(0.5102, 0.5128, 0.0594), (0.5086, 0.5077, 0.0599), (0.5104, 0.5070, 0.0596)]
    return [make_run(tmp_path / f"pilot_s{s}" / "cifar10_autoencoder", {
        "probe_linear_val_acc": val, "probe_linear_test_acc": test, "recon_val_mae": mae, "recon_test_mae": mae,
        "e2e_test_acc_flip": 0.9}, train_seconds=1200.0 + s) for s, (val, test, mae) in enumerate(values)]


def test_mean_and_sample_std_across_runs(tmp_path):
    runs = seeds(tmp_path)
    cmp = compare_runs(runs)
    row = {r.key: r for r in cmp.rows}["probe_linear_val_acc"]
    assert row.values == [0.5102, 0.5086, 0.5104]
    assert row.mean() == pytest.approx(statistics.fmean([0.5102, 0.5086, 0.5104]))
    assert row.std() == pytest.approx(statistics.stdev([0.5102, 0.5086, 0.5104]))
    assert cmp.rows[-1].key == "train_seconds" and cmp.rows[-1].values == [1200.0, 1201.0, 1202.0]
    table = format_table(cmp).splitlines()
    assert table[0].split() == ["metric", "pilot_s0/cifar10_autoencoder", "pilot_s1/cifar10_autoencoder",
                                "pilot_s2/cifar10_autoencoder", "mean", "std"]
    line = next(t for t in table if t.startswith("probe_linear_val_acc")).split()
    assert line[1:] == ["51.02%", "50.86%", "51.04%", "50.97%", "0.10%"]


def test_blind_leaves_out_every_test_metric_and_keys_filter(tmp_path):
    runs = seeds(tmp_path)
    blind = [r.key for r in compare_runs(runs, blind=True).rows]
    assert blind == ["probe_linear_val_acc", "recon_val_mae", "train_seconds"]
    assert not any("test" in line for line in format_table(compare_runs(runs, blind=True)).splitlines())
    picked = [r.key for r in compare_runs(runs, parts=["recon"]).rows]
    assert picked == ["recon_test_mae", "recon_val_mae", "train_seconds"]


def test_a_single_run_has_no_spread_and_missing_values_show_as_dashes(tmp_path):
    one = make_run(tmp_path / "a", {"knn_val_acc": 0.9})
    other = make_run(tmp_path / "b", {"recon_val_mae": 0.05})
    cmp = compare_runs([one, other])
    knn = {r.key: r for r in cmp.rows}["knn_val_acc"]
    assert knn.values == [0.9, None] and knn.mean() is None and knn.std() is None
    line = next(t for t in format_table(cmp).splitlines() if t.startswith("knn_val_acc")).split()
    assert line[1:] == ["90.00%", "-", "-", "-"]


def test_a_study_folder_lists_its_runs_and_names_the_unevaluated_ones(tmp_path):
    make_run(tmp_path / "study" / "runs" / "mnist_autoencoder_s0", {"knn_val_acc": 0.97})
    waiting = make_run(tmp_path / "study" / "runs" / "mnist_autoencoder_s1", None)
    cmp = compare_runs([tmp_path / "study"])
    assert cmp.labels == ["mnist_autoencoder_s0"]
    assert cmp.not_evaluated == [waiting]
    assert f"not evaluated yet: {waiting} (latentbench eval {waiting})" in format_table(cmp)


def test_labels_add_parent_folders_only_as_far_as_needed():
    assert labels([Path("/x/a/run"), Path("/x/b/run")]) == ["a/run", "b/run"]
    assert labels([Path("/x/a/run_s0"), Path("/x/a/run_s1")]) == ["run_s0", "run_s1"]


def test_bad_folders_are_user_errors(tmp_path, capsys):
    with pytest.raises(RunFileError, match="does not exist"):
        compare_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFileError, match="no run directory"):
        compare_runs([tmp_path / "empty"])
    assert cli.main(["compare", str(tmp_path / "empty")]) == 2
    assert "no run directory" in capsys.readouterr().err


def test_the_command_prints_the_table_or_json(tmp_path, capsys):
    runs = seeds(tmp_path)
    assert cli.main(["compare", *map(str, runs), "--blind", "--keys", "probe_linear"]) == 0
    out = capsys.readouterr().out
    assert "probe_linear_val_acc" in out and "_test_" not in out
    assert cli.main(["compare", str(tmp_path), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in obj["runs"]] == ["pilot_s0/cifar10_autoencoder", "pilot_s1/cifar10_autoencoder",
                                                 "pilot_s2/cifar10_autoencoder"]
    assert obj["metrics"]["recon_val_mae"]["values"] == [0.0594, 0.0599, 0.0596]
    assert obj["metrics"]["recon_val_mae"]["std"] == pytest.approx(statistics.stdev([0.0594, 0.0599, 0.0596]))
