"""Run a parameter study: python study.py STUDY_FILE [--out DIR] [--plan].

A study file (TOML or JSON; examples in studies/) holds the settings of every trial
under [base] and what varies under [grid] (every combination) or [[variants]] (a
list). Each trial is one ordinary training run (as train.py makes) in
<study>/runs/<trial>/. The study folder (saved_models/studies/<name>/ or --out) gets
study.csv, study.md and study.png (accuracy against each parameter), the best
trial's report, and Keras Tuner's state in tuner/: run the same command again to
continue an interrupted study (finished trials are kept; the interrupted one
restarts from scratch).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out

# Imported here: modules without TensorFlow. The library's TensorFlow parts are imported
# in the functions that use them, so that --help and flag errors answer in 0.3 s instead
# of about 8 s (tests/test_architecture.py).
from app.study.plan import (  # noqa: E402
    DEFAULT_ROOT,
    REPORT_CHOICES,
    STUDY_CSV,
    STUDY_MD,
    STUDY_PLOT,
    check_folder,
    check_settings,
    load_study,
    missing_data,
    override_suffix,
    parse_override,
)
from fruitcnn.data.cache import add_cache_dir_argument, use_cache_dir  # noqa: E402

EXAMPLES = """examples:
  python study.py studies/line-filters.toml               # 2x2 grid on the line dataset, ~1 min
  python study.py studies/fruits-dropout-bn.toml          # dropout with and without batch norm
  python study.py studies/miniimagenet-module-cifar10.toml --plan   # list the trials, train nothing
  python study.py studies/cs671-part2-mnist.toml --out saved_models/studies/mine
  python study.py studies/cs671-part2-mnist.toml --dataset ~/data/mnist      # your copy of the data
  python study.py studies/line-filters.toml --set epochs=4 --set batch_size=128
  tensorboard --logdir saved_models/studies/line-filters/runs     # HParams dashboard and curves

several machines (Keras Tuner's chief/worker mode; same command and study file on each):
  python study.py S.toml --oracle 0.0.0.0:8000 --tuner-id chief           # machine A: serves the trials
  python study.py S.toml --oracle A-ADDRESS:8000 --tuner-id worker1       # machines B, C...: train them
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="study.py",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study", metavar="STUDY_FILE", help="the study file (.toml or .json)")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="study folder (default: saved_models/studies/<name>)"
    )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="PATH",
        help="run the study on this data instead of the study file's (every trial; the folder gets its name)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set one more base entry for every trial, e.g. --set epochs=5 (repeatable)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="list the trials and check each one against its data, then exit without training",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard the folder's earlier trials and start the study afresh",
    )
    parser.add_argument(
        "--reports",
        choices=REPORT_CHOICES,
        default="best",
        help="evaluation reports to write: the best trial's (default), every trial's, or none",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="training output per trial: 0 none, 1 progress bars, 2 one line per epoch "
        "(default: 1 on a terminal, else 2)",
    )
    add_cache_dir_argument(parser)
    parser.add_argument(
        "--oracle",
        default=None,
        metavar="HOST:PORT",
        help="distributed study: the chief's address (the chief itself listens there, e.g. 0.0.0.0:8000)",
    )
    parser.add_argument(
        "--tuner-id",
        default=None,
        metavar="ID",
        help="distributed study: 'chief' on the machine that serves the trials, a distinct name per worker",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run (or plan) the study, print where the tables went."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        use_cache_dir(args.cache_dir)
        overrides = dict(parse_override(text) for text in args.set)
        if args.dataset:
            overrides["dataset"] = args.dataset
        study = load_study(args.study, overrides)
        missing = missing_data(study)
        if missing:
            raise ValueError(
                f"the data of study {study.name} is not here: {', '.join(missing)} does not exist. Give "
                f"your copy: python study.py {args.study} --dataset PATH."
            )
        check_settings(study)
        name = f"{study.name}-{override_suffix(overrides)}" if overrides else study.name
        folder = Path(args.out) if args.out else DEFAULT_ROOT / name
        if args.plan:
            return _plan(study, folder, restart=args.restart)
        # TensorFlow and Keras Tuner load only when trials run: --help and --plan stay at 0.2 s
        from app.study.tuning import run_study, set_distributed

        set_distributed(args.oracle, args.tuner_id)
        verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
        outcome = run_study(study, folder, restart=args.restart, verbose=verbose, reports=args.reports)
    except ValueError as error:
        parser.exit(2, f"study.py: error: {error}\n")
    except KeyboardInterrupt:
        print(
            "study interrupted: run the same command again to go on (finished trials are kept, "
            "the interrupted one restarts)",
            file=sys.stderr,
        )
        return 130
    if outcome.role == "worker":
        return 0
    done = [row for row in outcome.rows if row["status"] == "done"]
    print(f"study {study.name}: {len(done)} of {len(outcome.rows)} trials done")
    _print_table(study, outcome.rows)
    print(
        f"tables: {folder / STUDY_MD}, {folder / STUDY_CSV}"
        + (f", {folder / STUDY_PLOT}" if done else "")
        + (f"; best trial's report: {outcome.best_report}" if outcome.best_report else "")
    )
    missing = len(outcome.rows) - len(done)
    if missing:
        print(f"study.py: {missing} trial(s) not done; see {folder / STUDY_MD}", file=sys.stderr)
    return 1 if missing else 0


def _plan(study, folder: Path, *, restart: bool) -> int:
    from app.study.tuning import TrialData  # Keras Tuner (see main)

    continues = not restart and check_folder(study, folder)
    print(
        f"study {study.name}: {len(study.trials)} trials -> {folder}" + (" (continued)" if continues else "")
    )
    for trial in study.trials:
        labels = ", ".join(f"{name}={label}" for name, label in trial.labels.items())
        print(f"  {trial.number:>3}  {labels}")
    for key, value in study.base.items():
        print(f"  base {key} = {value!r}")
    TrialData(study).check_all()  # reads the data; no tuner state is touched
    print("every trial fits its data; run without --plan to train them")
    return 0


# Console table: characters per column (trial number, parameter label, percentage, status).
_TRIAL_WIDTH, _LABEL_WIDTH, _SCORE_WIDTH, _STATUS_WIDTH = 5, 12, 8, 8


def _print_table(study, rows) -> None:
    names = [parameter.name for parameter in study.parameters]
    header = [f"{'trial':>{_TRIAL_WIDTH}}", *[f"{name[:_LABEL_WIDTH]:>{_LABEL_WIDTH}}" for name in names]]
    header += [f"{'val %':>{_SCORE_WIDTH}}", f"{'test %':>{_SCORE_WIDTH}}", f"{'status':>{_STATUS_WIDTH}}"]
    print("  " + "  ".join(header))
    for row in rows:
        done = row["status"] == "done"
        cells = [f"{row['trial']:>{_TRIAL_WIDTH}}"]
        cells += [f"{str(row[name])[:_LABEL_WIDTH]:>{_LABEL_WIDTH}}" for name in names]
        for column in ("best_val_accuracy", "test_accuracy"):
            cells.append(f"{100 * row[column]:{_SCORE_WIDTH}.2f}" if done else " " * _SCORE_WIDTH)
        cells.append(f"{row['status']:>{_STATUS_WIDTH}}")
        print("  " + "  ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
