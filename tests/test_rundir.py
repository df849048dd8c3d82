"""rundir.py: history.csv written and read back, and the time a run has left."""

from latentbench.rundir import RunPaths, format_time_left, read_history, time_left, write_history


def test_time_left_is_the_median_recent_epoch_times_the_epochs_left():
    rows = [{"seconds": s} for s in (300.0, 900.0, 320.0, 5000.0)]  # the median of the last three: 900
    assert time_left(rows, 10) == "; ~2.5 h left"
    assert time_left(rows[:3], 4) == "; ~21 min left"  # 320 x 4 s: the median of 300, 900, 320
    assert time_left(rows[1:3], 4) == "; ~60 min left"  # of two, the larger: 900 x 4 s
    assert time_left([{"seconds": 20.0}], 3) == "; ~60 s left"
    assert time_left(rows, 0) == "" and time_left([], 5) == ""


def test_history_round_trips_with_columns_in_first_seen_order_and_empty_cells_left_out(tmp_path):
    path = RunPaths(tmp_path / "run").history
    path.parent.mkdir()
    rows = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25, "val_acc": 0.75}]
    write_history(path, rows)
    assert path.read_text().splitlines() == ["epoch,train_loss,val_acc", "1,0.5,", "2,0.25,0.75"]
    assert read_history(path) == [{"epoch": 1.0, "train_loss": 0.5}, {"epoch": 2.0, "train_loss": 0.25, "val_acc": 0.75}]
    write_history(path, [])  # nothing to write: the file is left as it was
    assert len(read_history(path)) == 2
    assert not list(path.parent.glob("*.tmp*"))  # written atomically, no temp file left


def test_run_paths_name_every_file_of_the_run_directory(tmp_path):
    paths = RunPaths(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in
            (paths.config, paths.info, paths.history, paths.steps, paths.last, paths.best)] == [
        "config.json", "run_info.json", "history.csv", "steps.csv", "checkpoints/last.pt", "checkpoints/best.pt"]


def test_format_time_left_picks_a_readable_unit():
    assert [format_time_left(s) for s in (90, 1500, 25200)] == ["~90 s left", "~25 min left", "~7.0 h left"]
