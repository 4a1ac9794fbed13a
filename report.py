"""Write the evaluation report of a run: python report.py [saved_models/<run>].

Evaluates the run's model.keras on its train, validation and test splits (the data is
read again with the run's config, from the decoded-image cache when it is there) and
writes report.html (one self-contained page), report.md and the report/ folder of
PNG figures and CSV tables into the run folder. train.py does this at the end of
every run; use this command for other options or older runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out

# Imported here: modules without TensorFlow. The library's TensorFlow parts are imported
# in the functions that use them, so that --help and flag errors answer in 0.3 s instead
# of about 8 s (tests/test_architecture.py).
from app.report.options import ORDERS, SPLITS, ReportOptions  # noqa: E402
from fruitcnn import browser, runs  # noqa: E402
from fruitcnn.config import INPUT_RANGE_CHOICES  # noqa: E402
from fruitcnn.data import load_and_report  # noqa: E402
from fruitcnn.data.cache import add_cache_dir_argument, use_cache_dir  # noqa: E402

EXAMPLES = """examples:
  python report.py                                   # the latest run under saved_models/
  python report.py saved_models/line-single-20261122-101500
  python report.py RUN --grid-split test --top-k 8   # grids of test images, 8 per side
  python report.py RUN --order confusion             # confused classes next to each other
  python report.py RUN --dataset ~/data/fruits-360   # the run's data moved
  python report.py RUN --screenshot shot.png --check # and look at it in headless Chromium
"""

_DEFAULTS = ReportOptions()


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (defaults come from ReportOptions)."""
    parser = argparse.ArgumentParser(
        prog="report.py",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run", nargs="?", default=None, help="run folder (default: the latest under saved_models/)"
    )
    parser.add_argument(
        "--grid-split",
        choices=SPLITS,
        default=_DEFAULTS.grid_split,
        help=f"split of the most-confident image grids (default: {_DEFAULTS.grid_split})",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=_DEFAULTS.top_k,
        metavar="K",
        help=f"images per class and side (default: {_DEFAULTS.top_k})",
    )
    parser.add_argument(
        "--order",
        choices=ORDERS,
        default=_DEFAULTS.order,
        help="class order of the confusion matrices: as trained, or confused classes together "
        f"(default: {_DEFAULTS.order})",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=_DEFAULTS.pairs,
        metavar="N",
        help=f"rows of the most-confused-pairs tables (default: {_DEFAULTS.pairs})",
    )
    parser.add_argument(
        "--quality-images",
        type=int,
        default=_DEFAULTS.quality_images,
        metavar="N",
        help="test images whose explanations are measured in the explanation-quality section "
        f"(pointing game, deletion/insertion, randomisation check); 0 leaves it out "
        f"(default: {_DEFAULTS.quality_images})",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="PATH",
        help="read the run's data from PATH instead of where it was at training (same data, moved)",
    )
    parser.add_argument(
        "--input-range",
        choices=INPUT_RANGE_CHOICES,
        default="auto",
        help="for a model.keras made elsewhere: the pixel range it was trained on (auto: 0-255 for "
        "fruitcnn's models and models that begin with Rescaling/Normalization) (default: auto)",
    )
    add_cache_dir_argument(parser)
    parser.add_argument(
        "--screenshot",
        default=None,
        metavar="PNG",
        help="also save a screenshot of the top of report.html (needs Chromium or Chrome)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="load report.html in headless Chromium and fail on broken images or horizontal overflow",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, write the report, print where it went."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        use_cache_dir(args.cache_dir)
        options = ReportOptions(
            grid_split=args.grid_split,
            top_k=args.top_k,
            order=args.order,
            pairs=args.pairs,
            quality_images=args.quality_images,
        )
        run = Path(args.run) if args.run else _latest_run()
        result = _write(run, options, args.dataset, args.input_range)
        if args.screenshot or args.check:
            _look(result.html, args.screenshot, args.check)
    except ValueError as error:
        parser.exit(2, f"report.py: error: {error}\n")
    except RuntimeError as error:  # the browser failed
        parser.exit(1, f"report.py: error: {error}\n")
    return 0


def _latest_run() -> Path:
    finished = runs.finished_runs()
    if not finished:
        raise ValueError(
            f"no finished run (metrics.json and {runs.MODEL_FILE}, not being trained now) under "
            f"{runs.DEFAULT_ROOT}/; train one (python train.py) or name the run folder: "
            "python report.py saved_models/<run>."
        )
    print(f"run: {finished[-1]} (the latest finished run)")
    return finished[-1]


def _write(run: Path, options: ReportOptions, dataset_path: str | None, input_range: str):
    from app.report.build import RunRecord, build_report  # TensorFlow: not for --help

    record = RunRecord.read(run)  # a clear error before the data is read
    data = record.config.data
    if dataset_path:
        data = dataclasses.replace(data, dataset=dataset_path)
    result = build_report(run, dataset=load_and_report(data), options=options, input_range=input_range)
    print(f"report written in {result.seconds:.1f} s: {result.html}")
    print(f"  markdown: {result.markdown} (figures and CSV tables in {result.folder}/)")
    return result


def _look(page: Path, screenshot: str | None, check: bool) -> None:
    if screenshot:
        print(f"  screenshot: {browser.screenshot(page, screenshot)}")
    if check:
        found = browser.problems(browser.render_check(page))
        if found:
            raise RuntimeError("report.html does not render cleanly: " + "; ".join(found))
        print("  Chromium: every image renders, no horizontal overflow")


if __name__ == "__main__":
    sys.exit(main())
