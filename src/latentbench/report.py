"""Run directories -> one report: ``report.html`` (self-contained, images embedded) and ``report.md``.

    latentbench report runs/study_quick          # a study folder (study.json + runs/)
    latentbench report runs/                     # or any folder of run directories

The report reads only run directories (``config.json``, ``run_info.json``, ``metrics.json``,
``figures/*.png``) and, when present, the study's ``study.json`` (which grid cell and seed each run is,
and the commands). Runs of the same dataset and model are aggregated over seeds as mean ± sample std.
The original report's numbers come from ``latentbench/reference/report_numbers.json`` (source named
there); its three tables are rebuilt with our number, the original and the difference side by side.
This module decides what the report says (a :class:`render.Document`); :mod:`latentbench.render` lays it out.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from latentbench.config import RUN_SETTINGS, flatten
from latentbench.io import RunFileError, atomic_write_text, lock_holder, read_json
from latentbench.render import Cell, Document, Table, render_html, render_markdown
from latentbench.status import find_runs
from latentbench.study import STUDY_FILE

MODEL_ORDER = ("autoencoder", "autoencoder_skip", "denoising", "supervised", "contrastive")
MODEL_LABELS = {
    "autoencoder": "Autoencoder",
    "autoencoder_skip": "Autoencoder (skip)",
    "denoising": "Denoising autoencoder",
    "supervised": "Supervised",
    "contrastive": "Contrastive",
}
DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
FIGURES = (("reconstructions", "Reconstructions (top: test images, bottom: decoded)"),
           ("interpolation", "Latent interpolation"),
           ("tsne", "t-SNE: latent space vs image space"),
           ("curves", "Learning curves"))
SPLITS = ("train", "val", "test")
SPLIT_LABELS = {"train": "Train", "val": "Validation", "test": "Test"}

# Columns of the "all metrics" table: (key, header, kind). Kinds: acc (%), mae, float.
EXTRA_COLUMNS = (
    ("probe_mlp_test_acc", "MLP probe", "acc"),
    ("probe_mlp_plain_test_acc", "MLP probe, no views", "acc"),
    ("probe_linear_test_acc", "Linear probe", "acc"),
    ("knn_test_acc", "kNN", "acc"),
    ("e2e_test_acc", "End-to-end", "acc"),
    ("e2e_test_acc_flip", "End-to-end, flip TTA", "acc"),
    ("recon_test_mae", "Test MAE", "mae"),
    ("recon_test_psnr", "PSNR (dB)", "float2"),
    ("silhouette", "Silhouette", "float3"),
    ("alignment", "Alignment", "float3"),
    ("uniformity", "Uniformity", "float3"),
    ("effective_rank", "Eff. rank", "float1"),
    ("tsne_trustworthiness", "t-SNE trust.", "float3"),
)
BASELINES = (
    ("Raw pixels", {"probe_linear_test_acc": "pixel_linear_test_acc", "knn_test_acc": "pixel_knn_test_acc"}),
    ("PCA-128 of pixels", {"probe_linear_test_acc": "pca_linear_test_acc", "knn_test_acc": "pca_knn_test_acc"}),
)


# --------------------------------------------------------------------------------------------- model
@dataclass
class Run:
    """One run directory as the report sees it."""

    path: Path
    name: str
    dataset: str
    model: str
    seed: int
    config: dict[str, Any]
    info: dict[str, Any]
    metrics: dict[str, float]
    protocol: dict[str, str]
    figures: dict[str, Path]
    eval_seconds: float
    command: str

    @property
    def status(self) -> str:
        """run_info.json's status; 'running' told apart as 'training' (a process holds the run's lock) or
        'killed' (nothing does: the trainer ended without a word; --resume continues it from its last save)."""
        status = str(self.info.get("status", "unknown"))
        if status == "running":
            return "training" if lock_holder(self.path) else "killed (resume with latentbench train --resume)"
        return status if status != "finished" or self.metrics else "finished, not evaluated"


@dataclass
class Group:
    """The runs of one (dataset, model) over seeds."""

    dataset: str
    model: str
    runs: list[Run] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        out = []
        for run in self.runs:
            v = run.metrics.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out.append(float(v))
        return out

    def stat(self, key: str) -> tuple[float, float | None, int] | None:
        """(mean, sample std or None for one seed, number of seeds) of a metric, or None when absent."""
        values = self.values(key)
        if not values:
            return None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


@dataclass
class Study:
    folder: Path
    groups: dict[tuple[str, str], Group]
    runs: list[Run]
    meta: dict[str, Any]  # study.json, or {} for a plain folder of runs


def infer_model(config: dict[str, Any]) -> str:
    """The grid model a config trains: objective name, refined by decoder skips and input noise."""
    objective = config.get("objective", {})
    name = objective.get("name", "?")
    if name != "autoencoder":
        return name
    if config.get("model", {}).get("skips"):
        return "autoencoder_skip"
    return "denoising" if objective.get("noise_std", 0) > 0 else "autoencoder"


def _read_optional(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def load_run(path: Path, entry: dict[str, Any] | None) -> Run:
    config = read_json(path / "config.json")
    info = _read_optional(path / "run_info.json")
    metrics_file = _read_optional(path / "metrics.json")
    figures = {key: path / rel for key, rel in metrics_file.get("figures", {}).items() if (path / rel).is_file()}
    seconds = metrics_file.get("seconds", {})
    eval_seconds = float(seconds.get("total", sum(v for v in seconds.values() if isinstance(v, (int, float)))))
    entry = entry or {}
    return Run(
        path=path, name=path.name,
        dataset=entry.get("dataset") or config.get("data", {}).get("name", "?"),
        model=entry.get("model") or infer_model(config),
        seed=int(entry.get("seed", config.get("train", {}).get("seed", 0))),
        config=config, info=info,
        metrics={k: v for k, v in metrics_file.get("metrics", {}).items() if isinstance(v, (int, float))},
        protocol=dict(metrics_file.get("protocol", {})),
        figures=figures, eval_seconds=eval_seconds,
        command=entry.get("command") or f"latentbench train --set ... (see {path / 'config.json'}) && "
                                        f"latentbench eval {path}",
    )


def load_study(folder: Path) -> Study:
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFileError(f"'{folder}' is not a folder; give a study folder or a folder of run directories")
    meta = _read_optional(folder / STUDY_FILE)
    entries = {Path(e["dir"]).name: e for e in meta.get("runs", [])}
    dirs = find_runs(folder, depth=2)  # a study's runs/<run>, or a plain folder of runs
    if not dirs:
        raise RunFileError(f"no run directories (folders holding config.json) under '{folder}'; train or "
                           "reproduce into it first")
    runs = [load_run(d, entries.get(d.name)) for d in dirs]
    order = {name: i for i, name in enumerate(entries)}
    known = list(DATASET_LABELS)
    runs.sort(key=lambda r: (order.get(r.name, len(order)),
                             known.index(r.dataset) if r.dataset in known else len(known),
                             r.dataset, _model_rank(r.model), r.seed))
    groups: dict[tuple[str, str], Group] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.model), Group(run.dataset, run.model)).runs.append(run)
    return Study(folder, groups, runs, meta)


def _model_rank(model: str) -> int:
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


def load_reference() -> dict[str, Any]:
    text = resources.files("latentbench").joinpath("reference", "report_numbers.json").read_text()
    return json.loads(text)


# ----------------------------------------------------------------------------------------- numbers
def fmt_value(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "acc":
        return f"{100 * value:.2f}%"
    if kind == "mae":
        return f"{value:.6f}"
    digits = int(kind[-1]) if kind.startswith("float") and kind[-1].isdigit() else 3
    return f"{value:.{digits}f}"


def fmt_stat(stat: tuple[float, float | None, int] | None, kind: str) -> str:
    if stat is None:
        return "—"
    mean, std, _ = stat
    if std is None:
        return fmt_value(mean, kind)
    if kind == "acc":
        return f"{100 * mean:.2f} ± {100 * std:.2f}%"
    return f"{fmt_value(mean, kind)} ± {fmt_value(std, kind)}"


def rounded(value: float, kind: str) -> float:
    """``value`` at the precision the original report prints (0.01 pp for accuracy, 6 decimals for MAE)."""
    return round(value, 4 if kind == "acc" else 6)


def compare(ours: float | None, original: float | None, kind: str) -> tuple[str, bool | None]:
    """(difference text, whether ours is at least as good) - higher is better for accuracy, lower for MAE."""
    if ours is None or original is None:
        return "—", None
    a, b = rounded(ours, kind), rounded(original, kind)
    diff = a - b
    good = diff >= 0 if kind == "acc" else diff <= 0
    text = f"{100 * diff:+.2f} pp" if kind == "acc" else f"{diff:+.6f}"
    return text, good


def _views_note(row: dict[str, Any], group: "Group | None") -> str:
    """Says so when our probe also trained on augmented copies of the training images (eval.probe_views)."""
    key = row["keys"].get("test")
    text = group.runs[0].protocol.get(key, "") if group and key else ""
    if "augmented copies" not in text:
        return ""
    return ("; ours also trains it on the codes of augmented copies of the training images (without them: "
            "'MLP probe, no views' below)")


def reference_table(spec: dict[str, Any], study: Study) -> Table:
    """One of the original report's tables: per split our mean ± std, the report's number, the difference."""
    splits = [s for s in SPLITS if any(s in row["keys"] for row in spec["rows"])]
    header = ["Model", "Protocol"]
    for s in splits:
        header += [f"{SPLIT_LABELS[s]}: ours", "report", "Δ"]
    beside = spec.get("beside", [])
    header += [f"ours: {_column_header(k)} (test)" for k in beside]
    rows = []
    for row in spec["rows"]:
        group = study.groups.get((spec["dataset"], row["model"]))
        seeds = len(group.runs) if group else 0
        cells = [Cell(row["label"] + (f" — {seeds} seed(s)" if seeds > 1 else ""), numeric=False),
                 Cell(row["protocol"] + _views_note(row, group), numeric=False)]
        for s in splits:
            key = row["keys"].get(s)
            stat = group.stat(key) if group and key else None
            original = row["report"].get(s)
            diff, good = compare(stat[0] if stat else None, original, row["kind"])
            cells += [Cell(fmt_stat(stat, row["kind"]) if group else "not run"),
                      Cell(fmt_value(original, row["kind"])), Cell(diff, good)]
        for key in beside:
            kind = _column_kind(key)
            cells.append(Cell(fmt_stat(group.stat(key), kind) if group else "—"))
        rows.append(cells)
    note = ("Δ = ours − report, compared at the report's printed precision; green: ours at least as good "
            "(higher accuracy, lower MAE).")
    return Table(spec["title"], header, rows, note, section="reference")


def _column_header(key: str) -> str:
    for k, header, _ in EXTRA_COLUMNS:
        if k == key:
            return header
    return {"recon_test_mse": "MSE", "recon_test_psnr": "PSNR (dB)"}.get(key, key)


def _column_kind(key: str) -> str:
    for k, _, kind in EXTRA_COLUMNS:
        if k == key:
            return kind
    return "float4" if key == "recon_test_mse" else ("float2" if "psnr" in key else "acc" if "acc" in key else "float3")


def metrics_table(dataset: str, study: Study) -> Table:
    """Every model of ``dataset`` with the extra metrics, then the pixel and PCA baselines."""
    groups = sorted((g for g in study.groups.values() if g.dataset == dataset), key=lambda g: _model_rank(g.model))
    header = ["Model", "Seeds"] + [h for _, h, _ in EXTRA_COLUMNS]
    rows = []
    for g in groups:
        cells = [Cell(MODEL_LABELS.get(g.model, g.model), numeric=False), Cell(str(len(g.runs)))]
        for key, _, kind in EXTRA_COLUMNS:
            text = fmt_stat(g.stat(key), kind)
            if key == "recon_test_mae" and text != "—" and any(r.metrics.get("recon_is_probe") for r in g.runs):
                text += " †"
            cells.append(Cell(text))
        rows.append(cells)
    for label, mapping in BASELINES:
        pooled = Group(dataset, label, [r for g in groups for r in g.runs])
        if not any(pooled.values(v) for v in mapping.values()):
            continue
        cells = [Cell(label, numeric=False), Cell("—")]
        for key, _, kind in EXTRA_COLUMNS:
            source = mapping.get(key)
            cells.append(Cell(fmt_stat(_distinct_stat(pooled.values(source)), kind) if source else "—"))
        rows.append(cells)
    note = ("Test-set numbers, mean ± std over seeds. † reconstruction by a decoder probe trained on the frozen "
            "encoder (the model has no decoder of its own). Baseline rows: the same probes on raw pixels and "
            "on PCA-128 of the pixels.")
    return Table(f"{DATASET_LABELS.get(dataset, dataset)}: every model, every metric", header, rows, note)


def _distinct_stat(values: list[float]) -> tuple[float, float | None, int] | None:
    """A baseline depends only on the data, so every run of a dataset repeats it: summarise distinct values."""
    distinct = sorted(set(values))
    if not distinct:
        return None
    return statistics.fmean(distinct), (statistics.stdev(distinct) if len(distinct) > 1 else None), len(distinct)


def runs_table(study: Study) -> Table:
    header = ["Run", "Dataset", "Model", "Seed", "Status", "Epochs", "Best epoch", "Train images", "Train time",
              "Eval time"]
    rows = []
    for r in study.runs:
        ds = r.info.get("dataset", {})
        rows.append([Cell(r.name, numeric=False), Cell(r.dataset, numeric=False),
                     Cell(MODEL_LABELS.get(r.model, r.model), numeric=False), Cell(str(r.seed)),
                     Cell(r.status, numeric=False),
                     Cell(f"{r.info.get('epochs_done', '?')}/{r.config.get('train', {}).get('epochs', '?')}"),
                     Cell(str(r.info.get("best_epoch", "—"))), Cell(str(ds.get("train", "—"))),
                     Cell(_duration(r.info.get("train_seconds"))), Cell(_duration(r.eval_seconds or None))])
    return Table("Runs", header, rows, "Epochs: done / budget (early stopping on validation may stop sooner).",
                 section="runs")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def total_seconds(study: Study) -> tuple[float, float]:
    """(training, evaluation) seconds summed over the runs."""
    return (sum(float(r.info.get("train_seconds", 0) or 0) for r in study.runs),
            sum(r.eval_seconds for r in study.runs))


def environment(study: Study) -> list[tuple[str, str]]:
    keys = (("latentbench", "latentbench"), ("git revision", "git_revision"), ("Python", "python"),
            ("PyTorch", "torch"), ("torchvision", "torchvision"), ("platform", "platform"), ("device", "device"),
            ("device name", "device_name"), ("precision", "precision"), ("CPU threads", "threads"),
            ("freed CPU memory kept for reuse (hostmem)", "host_heap_kept"), ("processes", "world_size"))
    rows = []
    for label, key in keys:
        values = sorted({str(r.info[key]) for r in study.runs if key in r.info})
        if values:
            rows.append((label, ", ".join(values)))
    train_s, eval_s = total_seconds(study)
    rows.append(("training time (sum over runs)", _duration(train_s)))
    rows.append(("evaluation time (sum over runs)", _duration(eval_s)))
    if "wall_seconds" in study.meta:
        rows.append(("study wall time (all sessions)", _duration(study.meta["wall_seconds"])))
    return rows


def protocols(study: Study) -> list[tuple[str, str, str]]:
    """(metric key, which runs, protocol text) from metrics.json, each distinct text once.

    A group of seeds is represented by its first run; a text shared by every model of a dataset (or of the
    whole study) is listed once for all of them.
    """
    groups = sorted(study.groups.values(), key=lambda g: (_dataset_rank(study, g.dataset), _model_rank(g.model)))
    keys = list(dict.fromkeys(k for g in groups for k in g.runs[0].protocol))
    rows = []
    for key in keys:
        by_text: dict[str, list[Group]] = {}
        having = [g for g in groups if key in g.runs[0].protocol]
        for g in having:
            by_text.setdefault(g.runs[0].protocol[key], []).append(g)
        for text, members in by_text.items():
            rows.append((key, _who(members, having, study), text))
    return _fold_splits(rows)


SPLITS = ("train", "val", "test")


def _split_family(key: str, text: str) -> tuple[str, str, str] | None:
    """(key with its split replaced by ``{}``, the split, the text without its opening split word) for a number
    measured on one split whose protocol text opens with that split's name; None otherwise."""
    for split in SPLITS:
        token = f"_{split}_"
        if token in f"_{key}_" and text.startswith(f"{split} "):
            family = f"_{key}_".replace(token, "_{}_", 1)[1:-1]
            return family, split, text[len(split) + 1:]
    return None


def _fold_splits(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """One row for the train / val / test numbers of a metric measured the same way on the same runs:
    ``probe_mlp_{train,val,test}_acc`` instead of three rows that differ only in the split's name."""
    folded: dict[tuple, list] = {}
    for key, who, text in rows:
        family = _split_family(key, text)
        group = (family[0], who, family[2]) if family else (key, who, text)
        folded.setdefault(group, []).append(family[1] if family else None)
    out = []
    for (key, who, text), splits in folded.items():
        if None in splits:
            out.append((key, who, text))
        elif len(splits) == 1:
            out.append((key.replace("{}", splits[0]), who, f"{splits[0]} {text}"))
        else:
            ordered = sorted(splits, key=SPLITS.index)
            out.append((key.replace("{}", "{" + ",".join(ordered) + "}"), who, f"{' / '.join(ordered)}: {text}"))
    return out


def _dataset_rank(study: Study, dataset: str) -> int:
    order = list(dict.fromkeys(r.dataset for r in study.runs))
    return order.index(dataset) if dataset in order else len(order)


def _who(members: list[Group], having: list[Group], study: Study) -> str:
    if len(members) == len(having) and len(having) > 1:
        return "all runs"
    parts = []
    for dataset in dict.fromkeys(g.dataset for g in members):
        mine = [g for g in members if g.dataset == dataset]
        total = [g for g in having if g.dataset == dataset]
        names = "all models" if len(mine) == len(total) and len(total) > 1 else \
            ", ".join(MODEL_LABELS.get(g.model, g.model) for g in mine)
        parts.append(f"{DATASET_LABELS.get(dataset, dataset)}: {names}")
    return "; ".join(parts)


def figure_sets(study: Study) -> list[tuple[str, Run, list[tuple[str, Path]]]]:
    """Per (dataset, model): the first seed's figures, in the report's order."""
    sets = []
    datasets = list(dict.fromkeys(r.dataset for r in study.runs))
    for g in sorted(study.groups.values(), key=lambda g: (datasets.index(g.dataset), _model_rank(g.model))):
        run = next((r for r in g.runs if r.figures), None)
        if run is None:
            continue
        titles = dict(FIGURES)
        ordered = [k for k, _ in FIGURES if k in run.figures] + [k for k in run.figures if k not in titles]
        label = f"{DATASET_LABELS.get(g.dataset, g.dataset)} — {MODEL_LABELS.get(g.model, g.model)}"
        sets.append((label, run, [(titles.get(k, k), run.figures[k]) for k in ordered]))
    return sets


# ----------------------------------------------------------------------------------------- in short
# (metric key, what it says, format kind, higher is better); each line ranks the models of one dataset
RANKINGS = (
    ("probe_linear_test_acc", "linear probe on the frozen codes (test)", "acc", True),
    ("knn_test_acc", "kNN on the frozen codes (test)", "acc", True),
    ("silhouette", "class structure of the codes (silhouette, test)", "float3", True),
    ("recon_test_mae", "reconstruction by the model's own decoder (test MAE)", "mae", False),
)
PIXEL_BASELINES = {"probe_linear_test_acc": "pixel_linear_test_acc", "knn_test_acc": "pixel_knn_test_acc"}


def reference_summary(table: Table) -> str:
    """How many of a reference table's numbers ours matches or beats, and which test numbers fall short."""
    good = compared = test_good = test_compared = 0
    short = []
    for i, heading in enumerate(table.header):
        if heading != "Δ":
            continue
        on_test = table.header[i - 2].startswith(SPLIT_LABELS["test"])
        for row in table.rows:
            cell = row[i]
            if cell.good is None:
                continue
            good, compared = good + cell.good, compared + 1
            if on_test:
                test_good, test_compared = test_good + cell.good, test_compared + 1
                if not cell.good:
                    short.append(f"{row[0].text} ({cell.text})")
    if not compared:
        return ""
    numbers = "number" if compared == 1 else "numbers"
    text = f"{table.title.split(':')[0]}: ours matches or beats {good} of the report's {compared} {numbers}"
    if test_compared:
        text += f" ({test_good} of {test_compared} on the test split)"
    return text + (f"; short on test: {'; '.join(short)}." if short else ".")


def ranking(dataset: str, study: Study, key: str, what: str, kind: str, higher: bool) -> str:
    """The models of ``dataset`` ordered by the mean of ``key``, best first (with the pixel baseline where
    there is one); '' with fewer than two models to order. Reconstruction counts own decoders only."""
    scored = []
    for g in sorted((g for g in study.groups.values() if g.dataset == dataset), key=lambda g: _model_rank(g.model)):
        if key == "recon_test_mae" and any(r.metrics.get("recon_is_probe") for r in g.runs):
            continue
        stat = g.stat(key)
        if stat is not None:
            scored.append((stat[0], MODEL_LABELS.get(g.model, g.model)))
    if len(scored) < 2:
        return ""
    scored.sort(key=lambda item: -item[0] if higher else item[0])
    shown = [(label, fmt_value(value, kind)) for value, label in scored]
    order = f"{shown[0][0]} {shown[0][1]}"
    for (_, before), (label, text) in zip(shown, shown[1:]):  # equal as printed: '=', not a ranking
        order += f" {'=' if text == before else '>' if higher else '<'} {label} {text}"
    pixels = Group(dataset, "pixels", [r for g in study.groups.values() if g.dataset == dataset for r in g.runs])
    baseline = _distinct_stat(pixels.values(PIXEL_BASELINES[key])) if key in PIXEL_BASELINES else None
    tail = f"; raw pixels {fmt_value(baseline[0], kind)}" if baseline else ""
    return f"{DATASET_LABELS.get(dataset, dataset)}, {what}: {order}{tail}."


def summary(study: Study, tables: list[Table]) -> list[str]:
    """The report in a few sentences, each computed from the tables and the runs."""
    lines = [reference_summary(t) for t in tables if t.section == "reference"]
    for dataset in dict.fromkeys(r.dataset for r in study.runs):
        lines += [ranking(dataset, study, *spec) for spec in RANKINGS]
    pending = [r.name for r in study.runs if not r.metrics]
    if pending:
        lines.append(f"Not evaluated yet, so in no number above: {', '.join(pending)} (latentbench eval RUN).")
    train_s, eval_s = total_seconds(study)
    lines.append(f"Cost: {_duration(train_s)} of training and {_duration(eval_s)} of evaluation over "
                 f"{len(study.runs)} run(s).")
    return [line for line in lines if line]


# ------------------------------------------------------------------------------------------ assembling
NOT_RECIPE = RUN_SETTINGS | {"train.seed"}  # runs that differ only in these are seeds of one recipe


def _where(run: Run, study: Study) -> str:
    """The run directory relative to the report's folder (two pilots may share a run name)."""
    try:
        return run.path.relative_to(study.folder).as_posix()
    except ValueError:
        return run.name


def mixed_recipes(study: Study) -> list[str]:
    """A warning for each group whose runs differ in more than the seed (a folder of pilots, say): its mean
    and std would mix recipes, or count one seed twice."""
    warnings = []
    for g in study.groups.values():
        if len(g.runs) < 2:
            continue
        configs = [flatten(r.config) for r in g.runs]
        keys = sorted({k for c in configs for k in c if k not in NOT_RECIPE and not k.startswith("eval.")})
        differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
        seeds = [r.seed for r in g.runs]
        repeated = len(set(seeds)) < len(seeds)
        if not differ and not repeated:
            continue
        what = f"the {len(g.runs)} runs counted as {DATASET_LABELS.get(g.dataset, g.dataset)} " \
               f"{MODEL_LABELS.get(g.model, g.model)} ({', '.join(_where(r, study) for r in g.runs)})"
        why = [f"differ in more than the seed ({', '.join(differ[:6])}{', ...' if len(differ) > 6 else ''})"] \
            if differ else []
        if repeated:
            why.append(f"repeat seeds ({', '.join(map(str, seeds))})")
        warnings.append(f"Caution: {what} {' and '.join(why)}, so their mean and std mix recipes or count a seed "
                        "twice; report each recipe's runs from a folder of their own.")
    return warnings


def cifar_is_jpeg_copy(study: Study) -> bool:
    """The cifar10 loader prefers ``<root>/cifar10-jpeg`` when present; say so when the runs' root holds it."""
    from latentbench.data import resolve_root

    roots = {r.config.get("data", {}).get("root", "") for r in study.runs
             if r.config.get("data", {}).get("name") == "cifar10"}
    return any((resolve_root(root) / "cifar10-jpeg" / "train").is_dir() for root in roots)


def assemble(study: Study) -> Document:
    ref = load_reference()
    datasets = list(dict.fromkeys(r.dataset for r in study.runs))
    tables = [reference_table(spec, study) for spec in ref["tables"] if spec["dataset"] in datasets]
    tables += [metrics_table(d, study) for d in datasets]
    tables.append(runs_table(study))
    meta = study.meta
    intro = []
    if meta:
        intro.append(f"Preset '{meta.get('preset')}': {meta.get('description', '')}. "
                     f"Status: {meta.get('status', '?')}.")
        intro.append(f"Produced by: {meta.get('command', '?')}")
    intro.append(f"{len(study.runs)} run(s) in {study.folder}; numbers are mean ± sample std over seeds. "
                 f"Original numbers: {ref['source']} ({ref['document']}).")
    if cifar_is_jpeg_copy(study):
        intro.append("CIFAR-10 here is the JPEG copy (cifar10-jpeg/, lossy baseline JPEGs of the standard split): "
                     "close to, but not exactly, the numbers the original binary CIFAR-10 gives.")
    if any(r.dataset == "synthetic" or r.config.get("data", {}).get("name") == "synthetic" for r in study.runs):
        intro.append("These runs use SYNTHETIC stand-in data: the numbers only check the pipeline and are not "
                     "comparable with the report's.")
    intro += mixed_recipes(study)
    commands = [(r.name, r.command) for r in study.runs]
    return Document("latentbench: latent spaces of autoencoding, supervised and contrastive encoders", intro, tables,
                    figure_sets(study), protocols(study), commands, environment(study), ref, summary(study, tables))


# ------------------------------------------------------------------------------------------ writing
def report_paths(folder: Path, out: Path | None) -> tuple[Path, Path]:
    """``out`` may be a folder (report.html/report.md inside) or a file name ending in .html or .md."""
    if out is None:
        return folder / "report.html", folder / "report.md"
    if out.suffix in (".html", ".md"):
        return out.with_suffix(".html"), out.with_suffix(".md")
    return out / "report.html", out / "report.md"


def build_report(folder: Path, out: Path | None = None) -> tuple[Path, Path]:
    """Read the run directories under ``folder`` and write ``report.html`` and ``report.md``."""
    folder = Path(folder)
    study = load_study(folder)
    doc = assemble(study)
    html_path, md_path = report_paths(folder, Path(out) if out else None)
    atomic_write_text(html_path, render_html(doc))
    atomic_write_text(md_path, render_markdown(doc, md_path.parent))
    return html_path, md_path
