"""The report from hand-made run directories: tables beside the original numbers, mean ± std, figures."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from latentbench.cli import main as cli_main
from latentbench.config import load_config
from latentbench.io import RunFileError
from latentbench.report import (build_report, compare, fmt_stat, infer_model, load_reference, load_study,
                                runs_table)

# A 1x1 transparent PNG; the report only embeds/links the files.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360"
                    "0000000200015e2ff3e40000000049454e44ae426082")

RECIPES = {
    "autoencoder": [], "supervised": ['objective.name="supervised"'], "contrastive": ['objective.name="contrastive"'],
    "autoencoder_skip": ["model.skips=true"], "denoising": ["objective.noise_std=0.1"],
}


def make_run(root: Path, dataset: str, model: str, seed: int, metrics: dict[str, float] | None,
             status: str = "finished") -> Path:
    run = root / "runs" / f"{dataset}_{model}_s{seed}"
    cfg = load_config(None, [f'data.name="{dataset}"', f"train.seed={seed}", *RECIPES[model]])
    (run / "figures").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "run_info.json").write_text(json.dumps({
        "status": status, "epochs_done": 3, "best_epoch": 2, "train_seconds": 12.5, "torch": "2.x-test",
        "python": "3.x", "device": "cpu", "host_heap_kept": True, "latentbench": "0.1.0",
        "dataset": {"train": 54000}}))
    if metrics is not None:
        figures = {}
        for name in ("reconstructions", "interpolation", "tsne", "curves"):
            (run / "figures" / f"{name}.png").write_bytes(PNG)
            figures[name] = f"figures/{name}.png"
        (run / "metrics.json").write_text(json.dumps({
            "run": run.name, "dataset": dataset, "objective": model, "metrics": metrics,
            "protocol": {k: f"{k} on the test split, 3 epochs" for k in metrics}, "figures": figures,
            "seconds": {"probes": 2.0, "tsne": 3.0}}))
    return run


def mnist_metrics(acc: float, mae: float = 0.0113) -> dict[str, float]:
    m = {f"probe_mlp_{s}_acc": acc for s in ("train", "val", "test")}
    m.update({f"probe_linear_{s}_acc": acc - 0.01 for s in ("train", "val", "test")})
    m.update({f"recon_{s}_mae": mae for s in ("train", "val", "test")}, knn_test_acc=0.97, silhouette=0.25,
             pixel_knn_test_acc=0.96, pixel_linear_test_acc=0.92, pca_knn_test_acc=0.965, pca_linear_test_acc=0.91)
    return m


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    make_run(tmp_path, "mnist", "autoencoder", 0, mnist_metrics(0.98, 0.0110))
    make_run(tmp_path, "mnist", "autoencoder", 1, mnist_metrics(0.99, 0.0120))
    make_run(tmp_path, "mnist", "supervised", 0,
             {**mnist_metrics(0.985), "e2e_train_acc": 0.999, "e2e_val_acc": 0.99, "e2e_test_acc": 0.9861,
              "recon_is_probe": 1.0})
    make_run(tmp_path, "mnist", "contrastive", 0, mnist_metrics(0.97))
    make_run(tmp_path, "cifar10", "autoencoder_skip", 0, {"probe_linear_test_acc": 0.70, "recon_test_mae": 0.05})
    make_run(tmp_path, "cifar10", "denoising", 0, None)  # trained, not evaluated yet
    return tmp_path


def test_tables_put_our_numbers_beside_the_reports(study_dir):
    html_path, md_path = build_report(study_dir)
    md, page = md_path.read_text(), html_path.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| Classifier on frozen autoencoder"))
    # mean ± sample std of 98% and 99%, the report's 97.64%, and the difference of the means
    assert "98.50 ± 0.71%" in row and "97.64%" in row and "+0.86 pp ✓" in row
    mae_row = next(line for line in md.splitlines() if line.startswith("| Self-supervised autoencoder"))
    assert "0.011500 ± 0.000707" in mae_row and "0.011579" in mae_row and "-0.000079 ✓" in mae_row
    sup_row = next(line for line in md.splitlines() if line.startswith("| Classification-guided"))
    assert "98.61%" in sup_row and "+0.00 pp ✓" in sup_row  # equal at the printed precision counts as good
    con_row = next(line for line in md.splitlines() if line.startswith("| Contrastive encoder (1.2.3)"))
    assert "-1.54 pp ✗" in con_row
    for title in ("Table 1 - MNIST", "Table 2 - CIFAR-10", "Table 3 - CIFAR-10"):
        assert title in md and title in page
    table2 = md.split("### Table 2 - CIFAR-10")[1].split("###")[0]
    assert "| Autoencoder (no skip) | " in table2 and "not run" in table2  # missing cell is said, not hidden
    assert 'class="num good"' in page and 'class="num bad"' in page


def test_cifar_supervised_row_compares_the_plain_accuracy_and_shows_flip_tta_beside_it(study_dir):
    make_run(study_dir, "cifar10", "supervised", 0,
             {"e2e_train_acc": 0.95, "e2e_val_acc": 0.875, "e2e_test_acc": 0.8684, "e2e_test_acc_flip": 0.8871})
    md = build_report(study_dir)[1].read_text()
    table2 = md.split("### Table 2 - CIFAR-10")[1].split("###")[0]
    header = next(line for line in table2.splitlines() if line.startswith("| Model"))
    assert header.rstrip(" |").endswith("ours: End-to-end, flip TTA (test)")
    row = next(line for line in table2.splitlines() if line.startswith("| Supervised encoder"))
    cells = [c.strip() for c in row.strip(" |").split("|")]
    assert cells[-1] == "88.71%"  # beside, not compared
    assert "86.84%" in cells and "88.66%" in cells and "-1.82 pp ✗" in cells
    skip_row = next(line for line in table2.splitlines() if line.startswith("| Autoencoder (skip)"))
    assert skip_row.strip(" |").endswith("—")  # no classifier head: no flip number


def test_extra_metrics_baselines_and_probe_marker(study_dir):
    md = build_report(study_dir)[1].read_text()
    every = md.split("### MNIST: every model, every metric")[1].split("###")[0]
    # the same in every run: shown once, no "± 0"
    assert "| Raw pixels | — | — | — | 92.00% | 96.00% |" in every
    assert "| PCA-128 of pixels | — | — | — | 91.00% | 96.50% |" in every
    supervised = next(line for line in every.splitlines() if line.startswith("| Supervised |"))
    assert "†" in supervised  # its reconstruction came from a decoder probe
    assert "finished, not evaluated" in md


def test_html_is_self_contained_and_markdown_links_resolve(study_dir):
    html_path, md_path = build_report(study_dir)
    page = html_path.read_text()
    evaluated_groups = 4  # mnist ae/sup/con + cifar skip (denoising has no figures yet)
    assert page.count("data:image/png;base64,") == 4 * evaluated_groups
    assert "src=\"figures" not in page and "<style>" in page
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text())
    assert len(links) == 4 * evaluated_groups
    assert all((md_path.parent / link).is_file() for link in links)


def test_environment_protocol_and_source_are_listed(study_dir):
    md = build_report(study_dir)[1].read_text()
    assert "2.x-test" in md and "cpu" in md
    assert "| freed CPU memory kept for reuse (hostmem) | True |" in md  # timings depend on it
    assert "| `probe_mlp_test_acc` | all runs | probe_mlp_test_acc on the test split, 3 epochs |" in md
    assert "Hassan & Hassan, Deep Learning Wet Report, April 2025" in md
    assert "training time (sum over runs) | 75.0 s" in md  # 6 runs x 12.5 s


def test_report_into_another_folder_keeps_links_valid(study_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("elsewhere") / "deep"
    html_path, md_path = build_report(study_dir, out)
    assert html_path == out / "report.html" and html_path.is_file()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text())
    assert links and all((md_path.parent / link).resolve().is_file() for link in links)


def test_study_json_gives_cells_and_commands(study_dir):
    (study_dir / "study.json").write_text(json.dumps({
        "preset": "quick", "description": "test", "command": "latentbench reproduce --preset quick",
        "status": "finished", "wall_seconds": 600,
        "runs": [{"name": "mnist_autoencoder_s0", "dir": "runs/mnist_autoencoder_s0", "dataset": "mnist",
                  "model": "autoencoder", "seed": 0, "command": "latentbench train configs/x.toml"}]}))
    md = build_report(study_dir)[1].read_text()
    assert "Produced by: latentbench reproduce --preset quick" in md
    assert "latentbench train configs/x.toml" in md
    assert "study wall time (all sessions) | 10.0 min" in md


def test_model_inferred_from_config_without_study_json():
    assert infer_model({"objective": {"name": "autoencoder"}, "model": {"skips": True}}) == "autoencoder_skip"
    assert infer_model({"objective": {"name": "autoencoder", "noise_std": 0.1}, "model": {}}) == "denoising"
    assert infer_model({"objective": {"name": "autoencoder", "noise_std": 0.0}, "model": {}}) == "autoencoder"
    assert infer_model({"objective": {"name": "contrastive", "noise_std": 0.1}}) == "contrastive"


def test_groups_and_formatting(study_dir):
    study = load_study(study_dir)
    group = study.groups[("mnist", "autoencoder")]
    mean, std, n = group.stat("probe_mlp_test_acc")
    assert n == 2 and mean == pytest.approx(0.985) and std == pytest.approx(0.00707, abs=1e-5)
    assert fmt_stat((0.5, None, 1), "acc") == "50.00%"
    assert compare(0.9764, 0.9764, "acc") == ("+0.00 pp", True)
    assert compare(0.011580, 0.011579, "mae") == ("+0.000001", False)
    assert compare(None, 0.5, "acc") == ("—", None)


def test_reference_numbers_are_data_with_their_source():
    ref = load_reference()
    assert ref["source"] == "Hassan & Hassan, Deep Learning Wet Report, April 2025"
    by_id = {t["id"]: t for t in ref["tables"]}
    assert set(by_id) == {"table1", "table2", "table3"}
    t1 = {r["label"]: r for r in by_id["table1"]["rows"]}
    assert t1["Classifier on frozen autoencoder encoder (1.2.1.2)"]["report"]["test"] == 0.9764
    assert [r["report"].get("test") for r in by_id["table3"]["rows"][:3]] == [0.0615, 0.0597, 0.1644]


def test_cli_report_and_clear_error_on_empty_folder(study_dir, tmp_path_factory, capsys):
    assert cli_main(["report", str(study_dir)]) == 0
    assert (study_dir / "report.html").is_file()
    empty = tmp_path_factory.mktemp("empty")
    assert cli_main(["report", str(empty)]) == 2
    assert "no run directories" in capsys.readouterr().err
    with pytest.raises(RunFileError):
        build_report(empty / "missing")


def test_protocols_listed_once_per_distinct_text(study_dir):
    path = study_dir / "runs" / "mnist_supervised_s0" / "metrics.json"
    doc = json.loads(path.read_text())
    doc["protocol"]["knn_test_acc"] = "kNN, k=5"
    path.write_text(json.dumps(doc))
    md = build_report(study_dir)[1].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| `knn_test_acc` |")]
    assert rows == ["| `knn_test_acc` | MNIST: Autoencoder, Contrastive | knn_test_acc on the test split, 3 epochs |",
                    "| `knn_test_acc` | MNIST: Supervised | kNN, k=5 |"]


def test_protocols_give_one_row_to_the_splits_of_a_number_measured_alike(tmp_path):
    split_texts = {f"probe_{kind}_{split}_acc": f"{split} accuracy of the {kind} probe, kept epoch 9"
                   for kind in ("mlp", "linear") for split in ("train", "val", "test")}
    split_texts.update(recon_test_mae="test mean |x_hat - x| over the train split's decoder",
                       recon_val_mae="the val split, another way")
    for model in ("autoencoder", "contrastive"):
        metrics_file = make_run(tmp_path, "mnist", model, 0, mnist_metrics(0.98)) / "metrics.json"
        m = json.loads(metrics_file.read_text())
        m["protocol"].update(split_texts)
        if model == "contrastive":
            m["protocol"]["probe_mlp_val_acc"] = "val accuracy of the mlp probe, kept epoch 4"
        metrics_file.write_text(json.dumps(m))
    rows = [line for line in build_report(tmp_path)[1].read_text().splitlines()
            if line.startswith(("| `probe_", "| `recon_"))]
    assert "| `probe_linear_{train,val,test}_acc` | all runs | train / val / test: accuracy of the linear probe, " \
        "kept epoch 9 |" in rows
    assert "| `probe_mlp_{train,test}_acc` | all runs | train / test: accuracy of the mlp probe, kept epoch 9 |" in rows
    assert "| `probe_mlp_val_acc` | MNIST: Autoencoder | val accuracy of the mlp probe, kept epoch 9 |" in rows
    assert "| `probe_mlp_val_acc` | MNIST: Contrastive | val accuracy of the mlp probe, kept epoch 4 |" in rows
    # a lone split keeps its key and text; a text that does not open with its split is not folded
    assert "| `recon_test_mae` | all runs | test mean /x_hat - x/ over the train split's decoder |" in rows
    assert "| `recon_val_mae` | all runs | the val split, another way |" in rows
    assert not any("recon_{" in line for line in rows)


def test_table_1_says_when_our_probe_trained_on_augmented_copies(tmp_path):
    runs = [make_run(tmp_path, "mnist", "autoencoder", 0, mnist_metrics(0.98)),
            make_run(tmp_path, "mnist", "contrastive", 0, mnist_metrics(0.99))]
    first = build_report(tmp_path)[1].read_text().split("### Table 1")[1].split("###")[0]
    assert "augmented copies" not in first
    metrics_file = runs[0] / "metrics.json"
    m = json.loads(metrics_file.read_text())
    m["protocol"]["probe_mlp_test_acc"] += "; its training set also holds the codes of 2 augmented copies"
    metrics_file.write_text(json.dumps(m))
    table = build_report(tmp_path)[1].read_text().split("### Table 1")[1].split("###")[0]
    rows = table.splitlines()
    autoencoder = next(line for line in rows if line.startswith("| Classifier on frozen autoencoder"))
    contrastive = next(line for line in rows if line.startswith("| Contrastive"))
    assert "augmented copies" in autoencoder and "augmented copies" not in contrastive


def test_a_running_run_is_training_while_its_lock_is_held_and_killed_after(tmp_path):
    from latentbench.io import run_directory_lock

    run = make_run(tmp_path, "mnist", "autoencoder", 0, None, status="running")
    with run_directory_lock(run):
        assert load_study(tmp_path).runs[0].status == "training"
    assert load_study(tmp_path).runs[0].status == "killed (resume with latentbench train --resume)"
    row = runs_table(load_study(tmp_path)).rows[0]
    assert any(cell.text.startswith("killed") for cell in row)


def test_in_short_counts_the_comparisons_and_ranks_the_models_from_the_numbers(study_dir):
    html_path, md_path = build_report(study_dir)
    md = md_path.read_text()
    lines = md[md.index("## In short"):md.index("## The report's tables")].splitlines()
    # Table 1: MAE 0.0115 beats val/test but not train; the probe's 98.5% beats val/test; supervised all
    # three (98.61% equals at the printed precision); contrastive's 97% none: 7 of 12, 3 of 4 on test
    assert ("- Table 1 - MNIST: ours matches or beats 7 of the report's 12 numbers (3 of 4 on the test split); "
            "short on test: Contrastive encoder (1.2.3) (-1.54 pp).") in lines
    assert "- Table 2 - CIFAR-10: ours matches or beats 1 of the report's 1 number (1 of 1 on the test split)." in lines
    # equal as printed is '=', not a ranking; the pixel baseline beside it
    assert ("- MNIST, linear probe on the frozen codes (test): Autoencoder 97.50% = Supervised 97.50% > "
            "Contrastive 96.00%; raw pixels 92.00%.") in lines
    # the supervised run's MAE comes from a decoder probe: not ranked as reconstruction by its own decoder
    assert ("- MNIST, reconstruction by the model's own decoder (test MAE): Contrastive 0.011300 < "
            "Autoencoder 0.011500.") in lines
    assert not any(line.startswith("- CIFAR-10, linear probe") for line in lines)  # one evaluated model: no order
    assert "- Not evaluated yet, so in no number above: cifar10_denoising_s0 (latentbench eval RUN)." in lines
    assert "- Cost: 75.0 s of training and 25.0 s of evaluation over 6 run(s)." in lines
    page = html_path.read_text()
    assert "<h2>In short</h2><ul><li>Table 1 - MNIST: ours matches or beats 7 of" in page


def test_a_group_of_runs_that_differ_in_more_than_the_seed_is_flagged(tmp_path):
    make_run(tmp_path, "mnist", "autoencoder", 0, mnist_metrics(0.98))
    make_run(tmp_path, "mnist", "autoencoder", 1, mnist_metrics(0.99))
    make_run(tmp_path, "mnist", "supervised", 0, mnist_metrics(0.99))
    assert "Caution" not in build_report(tmp_path)[1].read_text()  # seeds of one recipe: nothing to say
    made = make_run(tmp_path.parent / f"{tmp_path.name}-elsewhere", "mnist", "autoencoder", 1, mnist_metrics(0.97))
    pilot = tmp_path / "pilot" / made.name  # seed 1 again, in a folder of its own beside runs/
    shutil.move(made, pilot)
    config = json.loads((pilot / "config.json").read_text())
    config["train"]["epochs"], config["train"]["threads"] = 5, 1  # a recipe change, and a setting that is none
    (pilot / "config.json").write_text(json.dumps(config))
    md = build_report(tmp_path)[1].read_text()
    caution = [line for line in md.splitlines() if line.startswith("Caution")]
    assert len(caution) == 1 and "the 3 runs counted as MNIST Autoencoder" in caution[0]
    assert "pilot/mnist_autoencoder_s1" in caution[0] and "runs/mnist_autoencoder_s0" in caution[0]
    assert "differ in more than the seed (train.epochs)" in caution[0]  # not train.threads
    assert "repeat seeds (0, 1, 1)" in caution[0]
