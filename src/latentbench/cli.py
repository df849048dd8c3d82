"""Command-line interface: parse, load the config, call one function per subcommand.

    latentbench list
    latentbench check-data --dataset cifar10 --data-root ../shared/data
    latentbench train configs/mnist_supervised.toml [--set train.epochs=5] [--data-root DIR] [--out DIR]
    latentbench train --resume runs/mnist_supervised_s0
    latentbench eval runs/mnist_supervised_s0 [--force] [--only e2e,e2e_flip] [--blind]
    latentbench report runs/            (or a study folder)
    latentbench reproduce [--preset quick|paper|smoke] [--datasets mnist,cifar10] [--seeds N] [--out DIR]
    latentbench status [FOLDER ...]     (what each run under runs/ or FOLDER is doing)
    latentbench compare RUN_OR_FOLDER ... [--blind] [--keys probe_linear,recon] [--json]

Errors a user can fix (bad config, missing data, broken run files, a full disk) end with a one-paragraph
message and exit status 2, never a traceback; Ctrl-C exits with status 130 after saving what can be
saved (SIGTERM likewise, with status 143). LATENTBENCH_DEBUG=1 re-raises those errors with their
traceback (for developers).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import textwrap
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

from latentbench.config import ConfigError


def _user_errors() -> tuple[type[BaseException], ...]:
    from latentbench.data import DataError
    from latentbench.io import RunFileError
    from latentbench.registry import RegistryError
    from latentbench.train import TrainingDiverged

    return ConfigError, DataError, RunFileError, RegistryError, TrainingDiverged, ValueError


def _common_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.set or [])
    if getattr(args, "data_root", None):
        overrides.append(f'data.root="{args.data_root}"')
    if getattr(args, "device", None):
        overrides.append(f'train.device="{args.device}"')
    if getattr(args, "out", None):
        overrides.append(f'out_dir="{args.out}"')
    if getattr(args, "deterministic", False):
        overrides.append("train.deterministic=true")
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from latentbench.config import load_config
    from latentbench.train import resume_config, train

    if args.resume:
        run_dir = Path(args.resume)
        cfg = resume_config(run_dir, _common_overrides(args))
        train(cfg, run_dir=run_dir, resume=True)
        return 0
    cfg = load_config(args.config, _common_overrides(args))  # no file: defaults + --set overrides
    train(cfg)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from latentbench.registry import names

    for kind in ("dataset", "encoder", "objective"):
        print(f"{kind}s: {', '.join(names(kind))}")
    configs = Path("configs")
    if configs.is_dir():
        print(f"configs: {', '.join(sorted(p.name for p in configs.glob('*.toml')))}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    """Report every problem of a dataset without training: exit 0 when it would load, 2 when it would not."""
    from latentbench.config import load_config
    from latentbench.data import check_image_folder, image_folder_source

    overrides = _common_overrides(args) + ([f'data.name="{args.dataset}"'] if args.dataset else [])
    cfg = load_config(args.config, overrides)
    source = image_folder_source(cfg.data)
    errors, notes = check_image_folder(*source) if source else ([], [])
    if not errors:
        notes = _summarize_dataset(cfg.data, notes if source else None)
    for note in notes:
        print(f"  warning: {note}")
    for error in errors:
        print(f"  error: {error}")
    if errors:
        print(f"problems: {len(errors)} error(s) and {len(notes)} warning(s); training would stop at the first error")
        return 2
    print("problems: none" if not notes else f"problems: {len(notes)} warning(s) above; training would proceed")
    return 0


def _summarize_dataset(data_cfg, notes: list[str] | None) -> list[str]:
    """Load the dataset, print its shape and split sizes; return the warnings (``notes`` when given)."""
    from latentbench.data import load_splits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_splits(data_cfg)
    spec = splits.spec
    print(f"dataset {spec.name}: images {spec.channels}x{spec.height}x{spec.width}, {spec.num_classes} classes "
          f"({', '.join(spec.class_names[:10])}{', ...' if spec.num_classes > 10 else ''})")
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        counts = part.y.bincount(minlength=spec.num_classes).tolist()
        print(f"  {name:5s}: {len(part):6d} images; per class min {min(counts)}, max {max(counts)}")
    print(f"  mean {spec.mean}, std {spec.std}")
    return notes if notes is not None else [str(w.message) for w in caught]


def cmd_eval(args: argparse.Namespace) -> int:
    from latentbench.evaluate import evaluate_run

    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only is not None else None
    evaluate_run(Path(args.run_dir), force=args.force, overrides=list(args.set or []), only=only, blind=args.blind)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from latentbench.report import build_report

    html, md = build_report(Path(args.folder), out=Path(args.output) if args.output else None)
    print(f"wrote {html} and {md}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from latentbench.study import reproduce

    datasets = [d.strip() for d in args.datasets.split(",")] if args.datasets else None
    reproduce(preset=args.preset, datasets=datasets, seeds=args.seeds, out=Path(args.out) if args.out else None,
              data_root=args.data_root, device=args.device, extra_overrides=list(args.set or []),
              dry_run=args.dry_run)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from latentbench.status import as_json, collect, find_studies, format_table, study_line

    folders = [Path(f) for f in args.folders or ["runs"]]
    rows = collect(folders)
    if args.json:
        print(as_json(rows))
        return 0
    print(format_table(rows))
    for study_folder in find_studies(folders):
        print(study_line(study_folder, rows))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from latentbench.compare import as_json, compare_runs, format_table

    parts = [part.strip() for part in args.keys.split(",") if part.strip()] if args.keys else []
    comparison = compare_runs([Path(f) for f in args.folders], blind=args.blind, parts=parts)
    print(as_json(comparison) if args.json else format_table(comparison))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentbench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_common(p: argparse.ArgumentParser, out: bool = True) -> None:
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        p.add_argument("--data-root", help="folder holding the datasets (default $LATENTBENCH_DATA or ./data)")
        p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
        if out:
            p.add_argument("--out", help="folder for run directories (default runs/)")

    p = sub.add_parser("train", help="train one encoder into a run directory")
    p.add_argument("config", nargs="?", help="TOML recipe (see configs/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--deterministic", action="store_true", help="deterministic torch algorithms")
    add_common(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("list", help="registered datasets, encoders, objectives and configs")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("check-data", help="load a dataset and report its problems without training")
    p.add_argument("config", nargs="?", help="TOML recipe whose [data] section to check")
    p.add_argument("--dataset", help="dataset name (mnist | cifar10 | imagefolder | synthetic)")
    add_common(p, out=False)
    p.set_defaults(fn=cmd_check_data)

    p = sub.add_parser("eval", help="probes, reconstruction, latent metrics and figures for a run")
    p.add_argument("run_dir")
    p.add_argument("--force", action="store_true", help="recompute outputs that already exist")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an eval.* key")
    p.add_argument("--only", metavar="STAGES",
                   help="comma-separated stages to run, e.g. e2e,e2e_flip or probe_linear,figures (the other "
                        "results in the run directory are kept; an unknown name lists the run's stages)")
    p.add_argument("--blind", action="store_true",
                   help="leave the test split's numbers (*_test_* metrics) out of the progress lines, to choose a "
                        "recipe without seeing them (they are still written to metrics.json for the final report)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("report", help="build report.html and report.md from run directories")
    p.add_argument("folder", help="a study folder or a folder of run directories")
    p.add_argument("--output", help="where to write the report (default: inside FOLDER)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("reproduce", help="run the report's whole study and write one report")
    p.add_argument("--preset", default="quick", help="smoke | quick | paper (default quick)")
    p.add_argument("--datasets", help="comma-separated subset, e.g. mnist")
    p.add_argument("--seeds", type=int, help="number of seeds (default from the preset)")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would run (state, estimated time, stand-alone commands) and write nothing")
    add_common(p)
    p.set_defaults(fn=cmd_reproduce)

    p = sub.add_parser("status", help="what each run directory is doing: training, killed, interrupted, "
                                      "trained, evaluated, diverged")
    p.add_argument("folders", nargs="*", metavar="FOLDER", help="run directories or folders of them (default runs)")
    p.add_argument("--json", action="store_true", help="one JSON object per run, for scripts and dashboards")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("compare", help="runs' metrics side by side, with mean and std across them")
    p.add_argument("folders", nargs="+", metavar="RUN_OR_FOLDER", help="run directories or folders of them")
    p.add_argument("--blind", action="store_true",
                   help="leave out the test split's metrics (*_test_*), to choose a recipe on validation")
    p.add_argument("--keys", metavar="PARTS",
                   help="comma-separated parts of metric names to keep, e.g. probe_linear,recon_val")
    p.add_argument("--json", action="store_true", help="one JSON object (values, mean, std per metric)")
    p.set_defaults(fn=cmd_compare)
    return parser


def _say(message: str) -> None:
    print(textwrap.fill(f"latentbench: error: {message}", width=100, break_long_words=False,
                        break_on_hyphens=False), file=sys.stderr)


# OS errors a user can fix; any other OSError is a bug and keeps its traceback.
_USER_OS_ERRORS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EACCES, errno.EPERM, errno.EROFS}


def _os_error_message(err: OSError) -> str:
    where = f" '{err.filename}'" if err.filename else ""
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (f"the disk is full (writing{where}). Finished files were written atomically and are intact; "
                "free some space (or choose another --out) and resume the run with --resume.")
    return f"{err.strerror or err}{where}; check the path and its permissions, or choose another --out"


@contextmanager
def _plain_data_warnings():
    """Print latentbench's data warnings as one plain line each, not Python's 'file:line: UserWarning'."""
    from latentbench.data import DataWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"latentbench: warning: {message}", file=sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default


@contextmanager
def _sigterm_stops_cleanly():
    """SIGTERM (``kill``, a scheduler's time limit) raises :class:`~latentbench.train.Terminated`, a
    KeyboardInterrupt, so that it stops a command the way Ctrl-C does (an interrupted study records it;
    files are written atomically) instead of ending the process on the spot. Only where SIGTERM has its
    default handler and in the main thread; the previous handler comes back afterwards."""
    from latentbench.train import sigterm_as_interrupt

    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentbench.train import Terminated, TrainingInterrupted

    debug = os.environ.get("LATENTBENCH_DEBUG", "") not in ("", "0")
    if args.command != "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _say(f"'latentbench {args.command}' runs in one process; only 'train' runs under torchrun. "
             f"Train with torchrun, then run 'latentbench {args.command}' without it.")
        return 2
    try:
        with _plain_data_warnings(), _sigterm_stops_cleanly():
            return args.fn(args)
    except TrainingInterrupted as err:
        print(f"latentbench: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"latentbench: {'stopped by SIGTERM' if terminated else 'interrupted'}; finished work is kept on "
              "disk.", file=sys.stderr)
        return Terminated.exit_code if terminated else 130
    except _user_errors() as err:
        if debug:
            raise
        _say(str(err))
        return 2
    except OSError as err:
        if debug or err.errno not in _USER_OS_ERRORS:
            raise
        _say(_os_error_message(err))
        return 2
