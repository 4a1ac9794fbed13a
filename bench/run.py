"""fruitcnn's one benchmark entry point: ``python bench/run.py TASK [--data PATH]``.

Tasks:
  line             96-class softmax on the generated line dataset (default settings)
  line-multihead   the four-head model (length, width, colour, angle) on the same data
  fruits           a Fruits-360-style archive or folder (Training/ + Test/), target
                   >= 99% test accuracy within 180 s from the archive
  mnist            MNIST IDX files, target >= 99.4% within 60 s
  cifar10          CIFAR-10 (JPEG folders/archive or python batches) with the photo
                   recipe that picks itself (fruitcnn.recipes) and a training time budget
                   of 270 s (30 s left for reading the archive and building), target
                   >= 85% within 300 s; ``--time-budget 1160 --target 0.9`` for the
                   longer goal (the wall budget is the time budget + 40 s)
  stl96            96-px photos with the ECE4179 split (an STL-10 binary folder; default:
                   a stand-in built once from ../shared/data's CIFAR-10 by
                   bench/standins.py, resized to 96 px): the ECE4179 deep net with the
                   settings the recipe gives a net without batch norm, and the photo
                   recipe, each for the same time budget (default 300 s); reports each
                   one's test accuracy after every epoch against its elapsed time
                   (``deep`` and ``recipe``) and the time each took to reach the
                   ECE4179 deep net's final accuracy
  study            the line-filters study (studies/line-filters.toml: 4 trials) through
                   study.py's engine (Keras Tuner, tables, HParams) against the same four
                   trainings in a plain loop of train() calls (``plain_loop_s``), both in
                   this run: what the study machinery costs (``overhead_ratio``)
  occlusion        occlusion of a 100x100 image by a Fruits-360-sized model (three
                   conv3x3-BN-ReLU-maxpool stages of 32/64/128 filters, dense 128, 24
                   classes; 103 M multiply-adds per image): the incremental engine
                   (``incremental_s``) against plain batched re-inference of every
                   occluded copy (``batched_reference_s``), ``speedup``, exactness
                   (``max_abs_difference``), for patch 5/10/20 and stride 1/2
                   (``grid``; the headline figures are patch 10, stride 1: 10,000
                   positions); explain.py's batched engine (``batched_engine_s``); and
                   saliency, Grad-CAM, Grad-CAM++, LayerCAM and Integrated Gradients
                   in ms per image (single and batched), RISE (single)
  explain-quality  how far the explanations of a trained line model can be trusted
                   (visualize.quality): trains it with train.py's defaults and a
                   second one on shuffled labels until it memorises them, then per
                   method on 200 test images the pointing game and mask mass against
                   the line masks, the Spearman correlation with the maps of a fully
                   randomised copy (and per cascade stage, from the head down) and of
                   the shuffled-label model, and the deletion / insertion areas
                   against random orders; the same curves (and the randomisation) for
                   the fruits recipe's model on 32 Fruits-360 test images when
                   ../shared/data has them; every mean with its number of images and
                   a 95% bootstrap interval (images resampled); ``--background
                   noise|texture`` draws the lines on clutter; figures and CSV tables
                   go to saved_models/bench-explain-quality-<time>/ (``folder``)
  shortcut         explanations on clutter and a shortcut detector: Fruits-360 objects
                   (``--data``) pasted on CIFAR-10 photos (``--backgrounds``; train.py
                   --paste-on), a model trained on them (the fruits network, 4 epochs),
                   the pointing game and mask mass of its maps on 200 test images
                   beside the objects' area share; then per cue (patch, border, hue) a
                   model trained with it planted (train.py --cue) and both models
                   checked on the cued test images (``visualize.quality.region_check``):
                   the share flagged as relying on the cue, accuracy with and without
                   it, importance shares on object / cue / rest (``cues``)
  distributed      the line model (100 images per class, 3 epochs) by one process and by
                   two local workers (python -m fruitcnn.distributed) with the same
                   global batch and seed: step times and the speed-up here (both workers
                   share this machine's cores: none expected), the largest relative
                   difference of their losses (beside that of one process with one
                   intra-op thread: float rounding alone), the bytes each step all-reduces
                   (gradients and batch-norm sums), the time of one all-reduce between
                   the two workers (chained in a graph, as in a step), and the speed-up
                   that implies for two machines, with the all-reduce times measured here
                   (``_here``) and over a LAN of 10 Gbit/s and 0.1 ms (``_lan``)
  stream           train.py --stream (decoded rows on disk, read batch by batch) against
                   the in-memory path on a Fruits-360-style source (--data; default
                   ../shared/data's archive) at two sizes, its images once and four
                   times (hard links): each process's peak resident memory (reading
                   the source the first time, and training with the report from the
                   cache), how much it grows with the data (``peak_growth_mb`` beside
                   ``decoded_mb_added``), the second epoch's images per second and the
                   in-memory over streamed throughput at the smaller size (goal <= 1.3:
                   ``meets_throughput_goal``)
  page             the inspection page (explain.py --serve) on a 100x100 image through its
                   own HTTP API: upload, prediction, saliency, SmoothGrad, Grad-CAM and
                   stride-1 occlusion, first and warm request times, for the occlusion
                   task's model and the fruits preset, against the goals (saliency and
                   Grad-CAM <= 0.3 s, occlusion <= 1.5 s: ``meets_goals``)

The data tasks read ``--data PATH`` (default: the copy in ``../shared/data`` when it
exists) with a fresh, empty decoded-image cache (``--warm-cache`` uses the normal
one), so ``wall_s`` runs from the file as downloaded to a tested model (TensorFlow is
imported before the clock starts; ``import_s`` reports how long that took). Each trains
with a recipe: settings named like ``train.py``'s flags (``RECIPES`` in
bench/tasks/data.py; printed as the equivalent ``train.py`` command line, ``command``),
then reloads the data from the cache it filled (``cache_load_s``), and
with ``--baseline`` also trains a plain Keras CNN (no batch norm, Adam, the Keras
examples' layout) on the same arrays for the same wall time, for comparison.

The line tasks train with exactly the defaults ``python train.py --dataset line
[--multihead]`` uses, then measure, in the same process:

* the machine's fp32 matmul peak (best of several 2048x2048 products), so throughput
  can be read against it;
* the step time of the model with fruitcnn's BatchNorm against the same network with
  ``keras.layers.BatchNormalization`` (interleaved rounds, median), i.e. what the
  hand-built layer costs;
* ``report_s``: the time to write the run's report (``app.report``), outside
  ``wall_s``.

Progress goes to stderr; the last stdout line is one JSON object with at least
``task``, ``test_accuracy`` (the aggregate for four heads) and ``wall_s`` (seconds
from data generation or the data file to a tested model). The data tasks add
``target_accuracy``, ``budget_s``, ``meets_target``, ``time_to_target_s`` (data
loading plus the elapsed time of the first epoch whose test accuracy reached the
target), ``data_s``, ``cache_load_s``, ``train_img_per_s``, ``train_gflops`` and
``peak_fraction`` against the measured matmul peak.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any task imports TensorFlow
# bench/ is a package of the repository: run as a script, its root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.tasks import (  # noqa: E402
    data,
    distributed,
    explain,
    line,
    page,
    quality,
    shortcut,
    stl96,
    stream,
    study,
)
from fruitcnn.config.data import LINE_BACKGROUNDS  # noqa: E402
from visualize.methods import method_of  # noqa: E402  (no TensorFlow)

# Each task and its kind: the line tasks' head, or the family of the module that runs it.
TASKS = {
    "line": "single",
    "line-multihead": "multi",
    "fruits": "data",
    "mnist": "data",
    "cifar10": "data",
    "stl96": "stl",
    "occlusion": "explain",
    "study": "study",
    "explain-quality": "quality",
    "shortcut": "shortcut",
    "page": "page",
    "distributed": "distributed",
    "stream": "stream",
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (the module docstring is its description and epilog)."""
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", choices=sorted(TASKS), help="what to measure")
    parser.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="data file or folder of a data task (default: its copy in ../shared/data)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the trained run under saved_models/ (default: temp dir)"
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="data tasks: use the normal decoded-image cache (default: empty)",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="data tasks: also train a plain Keras CNN for the same time"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="S",
        help="cifar10, stl96: the training time budget in seconds (cifar10: its wall budget is this "
        f"+ {common.SETUP_ALLOWANCE_S} s)",
    )
    parser.add_argument(
        "--target", type=float, default=None, metavar="F", help="data tasks: the target test accuracy"
    )
    parser.add_argument(
        "--backgrounds",
        default=None,
        metavar="PATH",
        help="shortcut: the photos the objects are pasted on (default: ../shared/data's CIFAR-10)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        metavar="M,M",
        help="explain-quality, shortcut: measure only these maps (names as in the quality tables, "
        "e.g. occlusion_prob,occlusion_loss; default: every method the task measures)",
    )
    parser.add_argument(
        "--background",
        choices=LINE_BACKGROUNDS,
        default="black",
        help="explain-quality: what the line dataset's lines are drawn on (train.py --background); "
        "default: black",
    )
    return parser


def _check(args: argparse.Namespace) -> None:
    """Refuse flags the task does not take, or values out of range (ValueError)."""
    kind = TASKS[args.task]
    if args.time_budget is not None and args.task not in ("cifar10", "stl96"):
        raise ValueError(f"--time-budget is for the cifar10 and stl96 tasks, not {args.task}.")
    if args.time_budget is not None and args.time_budget <= 0:
        raise ValueError(f"--time-budget must be a number of seconds above 0, got {args.time_budget:g}.")
    if args.target is not None and not 0 < args.target <= 1:
        raise ValueError(f"--target must be an accuracy in (0, 1], got {args.target:g}.")
    if kind == "stl" and args.data is not None and not Path(args.data).exists():
        raise ValueError(f"task stl96: {args.data} does not exist; pass --data PATH (a stl10_binary folder).")
    if args.background != "black" and kind != "quality":
        raise ValueError(f"--background is for the explain-quality task, not {args.task}.")
    if args.backgrounds is not None and kind != "shortcut":
        raise ValueError(f"--backgrounds is for the shortcut task, not {args.task}.")
    if args.methods is not None:
        if kind not in ("quality", "shortcut"):
            raise ValueError(f"--methods is for the explain-quality and shortcut tasks, not {args.task}.")
        _methods(args)
    if kind not in ("stl", "data", "shortcut", "stream") and args.data is not None:
        raise ValueError(f"task {args.task} generates its data; --data is not used (got {args.data!r}).")


def _methods(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--methods`` as names (ValueError for a name no quality table has), or None."""
    if args.methods is None:
        return None
    names = tuple(name.strip() for name in args.methods.split(",") if name.strip())
    unknown = []
    for name in names:
        try:
            method_of(name)
        except ValueError:
            unknown.append(name)
    if not names or unknown:
        raise ValueError(
            f"--methods {args.methods!r}: {'unknown ' + ', '.join(unknown) if unknown else 'no method'}; "
            "expected map names as in the quality tables, e.g. occlusion_prob,occlusion_loss,gradcam,"
            "gradcam_relu2,integrated_gradients."
        )
    return names


def _data(args: argparse.Namespace) -> str | None:
    """The data the task reads: a data task's ``--data`` or its default copy (ValueError
    when that is missing); else ``--data`` as given."""
    if TASKS[args.task] == "shortcut":
        problems = []
        for given, default, flag in (
            (args.data, shortcut.OBJECTS, "--data"),
            (args.backgrounds, shortcut.BACKGROUNDS, "--backgrounds"),
        ):
            try:
                common.data_path(args.task, given, default, flag)
            except ValueError as error:
                problems.append(str(error))
        if problems:
            raise ValueError(" ".join(problems))
        return args.data or str(shortcut.OBJECTS)
    if TASKS[args.task] == "stream":
        return common.data_path(args.task, args.data, stream.DATA)
    if TASKS[args.task] != "data":
        return args.data
    return common.data_path(args.task, args.data, data.RECIPES[args.task]["data"])


def _run_data_task(args: argparse.Namespace, path: str) -> dict:
    """A data task on ``path``, with --time-budget replacing the recipe's settings."""
    settings, budget = None, None
    if args.time_budget is not None:  # cifar10
        settings, budget = {"time_budget": args.time_budget}, args.time_budget + common.SETUP_ALLOWANCE_S
    return data.run_data(
        args.task,
        path,
        args.keep,
        args.warm_cache,
        args.baseline,
        settings=settings,
        target=args.target,
        budget_s=budget,
    )


def _run(args: argparse.Namespace, path: str | None) -> dict:
    """Run the task the arguments name on the data at ``path`` and return its report."""
    kind = TASKS[args.task]
    if kind == "data":
        return _run_data_task(args, path)
    if kind == "stl":
        return stl96.run_stl96(path, args.keep, args.time_budget)
    if kind == "explain":
        return explain.run_explain()
    if kind == "study":
        return study.run_study_task()
    if kind == "quality":
        return quality.run_explain_quality(args.keep, args.background, _methods(args))
    if kind == "page":
        return page.run_page()
    if kind == "distributed":
        return distributed.run_distributed()
    if kind == "stream":
        return stream.run_stream(path)
    if kind == "shortcut":
        return shortcut.run_shortcut(
            path, args.backgrounds or str(shortcut.BACKGROUNDS), args.keep, _methods(args)
        )
    return line.run_line(args.task, kind, args.keep)


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark task and print its JSON line last."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # checked before any long work starts
        _check(args)
        path = _data(args)
    except ValueError as error:
        parser.error(str(error))
    common.print_report(_run(args, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
