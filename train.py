"""Train a fruitcnn model: python train.py --dataset line|PATH|tfds:NAME [--multihead].

Every flag sets one field of the run configuration (``fruitcnn.config``); flags left
out keep the defaults shown by ``--help``. The data is read (and its problems reported)
before the model is built. The run folder (``saved_models/<run>/`` or ``--out``)
receives model.keras (best validation epoch), config.json, classes.json, data.json,
environment.json, history.csv, metrics.json, TensorBoard logs in tb/, a checkpoint/
for --resume and, at the end, the evaluation report (report.html, report.md and
report/; see report.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out

from fruitcnn.config import (  # noqa: E402
    BN_LAYERS,
    FLIPS,
    INITS,
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    TTAS,
    ArchConfig,
    AugmentConfig,
    DataConfig,
    RunConfig,
    TrainConfig,
    config_from_settings,
)
from fruitcnn.config import SETTING_FIELDS as _FIELDS  # noqa: E402  (flag -> config field)
from fruitcnn.data.cache import add_cache_dir_argument, use_cache_dir  # noqa: E402

EXAMPLES = """examples:
  python train.py                                  # line dataset, 96-class softmax
  python train.py --dataset line --multihead       # four heads: length, width, colour, angle
  python train.py --dataset ../shared/data/fruits-360-24.tgz   # an archive as downloaded
  python train.py --dataset ~/data/stl10_binary --split 8000/2000/3000 --time-budget 10m
  python train.py --dataset ~/data/stl10_binary --split 8000/2000/3000 --arch ece4179-deep
  python train.py --dataset ~/data/mnist --epochs 5             # MNIST IDX files
  python train.py --dataset photos/ --split 70/10/20 --image-size 64 --flip horizontal --translate 4
  python train.py --arch cs671-part1 --epochs 5 --optimizer sgd --lr 0.05
  python train.py --arch "conv(32,3) bn relu maxpool(2) conv(64,3) bn relu gap fc(128) relu"
  python train.py --arch cs671-part1 --image-size 28 --num-classes 96 --summary
  python train.py --arch ece4179-deep --image-size 96 --num-classes 10 --summary
  python train.py --arch "3*[conv(32,3) bn relu maxpool(2)] flatten fc(128) relu"   # repeats
  python train.py --resume                         # continue the last interrupted run
  tensorboard --logdir saved_models                # learning curves, confusion matrices
  python report.py saved_models/<run>              # the report again, other options
"""

RECIPES = """recipes (settings the flags leave out; any flag given wins, --config gets none):
  colour photos without --arch: an airbench-like network (frozen 2x2 whitening, three
    conv-pool-bn-relu blocks, global max pooling, a hidden fc layer) sized to the time
    budget (--time-budget, 5m unless --epochs is given) and this machine's speed; SGD with
    Nesterov momentum, weight decay, label smoothing, linear warm-up and decay, flips,
    translations and test-time flips; printed at the start and saved in config.json
  an architecture without batch norm: Adam at 0.001 and He-normal kernels
  everything else: the defaults below
"""

# Characters per line of --summary's table.
SUMMARY_WIDTH = 110

_DEFAULTS = {
    "data": DataConfig(),
    "arch": ArchConfig(layers=["gap"]),
    "train": TrainConfig(),
    "augment": AugmentConfig(),
}


def _default(flag: str):
    section, name = _FIELDS[flag]
    return getattr(_DEFAULTS[section], name)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (defaults come from the config dataclasses)."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES + "\n" + RECIPES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    add = _adder(data)
    add(
        "--dataset",
        "'line' (generated, no download); a folder or archive (.tgz/.tar/.zip) of class folders, "
        "Training/Test or train/val/test folders, MNIST IDX, CIFAR-10/100 batches, STL-10 binary or "
        "mini-ImageNet; or tfds:NAME",
        metavar="NAME|PATH",
    )
    add("--image-size", "resize images to N x N pixels; default: the data's own size", type=int, metavar="N")
    add("--images-per-class", "line dataset: images per class", type=int, metavar="N")
    add(
        "--split",
        "'auto' (the data's own train/test split, else 60/40), or train/test or train/val/test "
        "in percent or counts; explicit on data with its own split: pool and re-split",
        metavar="A/B[/C]",
    )
    add("--val-fraction", "validation share of the training part", type=float, metavar="F")
    add("--data-seed", "seed of data generation and splitting", type=int, metavar="N")
    add("--data-dir", "tensorflow-datasets folder for tfds:NAME", metavar="DIR")
    add(
        "--strict",
        "stop on any skipped file (corrupt image, stray file) instead of listing it",
        action="store_true",
    )
    add(
        "--unpack-limits",
        "largest file read, all files read, and unpacked/packed ratio of archives and .gz files; beyond "
        "them a source is refused as a possible decompression bomb (give any of them, e.g. ratio=500)",
        metavar="member=SIZE,total=SIZE,ratio=N",
    )
    add_cache_dir_argument(data)
    augment = parser.add_argument_group("augmentation (training images only)")
    add = _adder(augment)
    add("--flip", "random mirroring", choices=FLIPS)
    add("--translate", "random shift by up to N pixels (reflection padding)", type=int, metavar="N")
    add("--rotate", "random rotation by up to D degrees", type=float, metavar="D")
    add(
        "--color-jitter",
        "random brightness/contrast/saturation factor in [1-J, 1+J]",
        type=float,
        metavar="J",
    )
    model = parser.add_argument_group("model")
    add = _adder(model)
    model.add_argument(
        "--arch",
        default=None,
        metavar="ARCH",
        help=f"preset ({', '.join(PRESETS)}), a layer list in quotes, or a .json file "
        "(default: 'line' for the line dataset; else mnist, cifar10 or fruits by image size and colour)",
    )
    model.add_argument(
        "--multihead",
        action="store_true",
        default=None,
        help="four heads (length, width, colour, angle) instead of one softmax",
    )
    add(
        "--head-layers",
        "layers of each head before its logits: 'fc(64) relu' for every head, or per head "
        "'angle=fc(64) relu; colour=fc(8) relu'",
        metavar="LAYERS",
    )
    add("--l2", "L2 weight decay on conv and dense kernels", type=float, metavar="F")
    add("--dropout", "dropout rate before the heads", type=float, metavar="F")
    add("--bn-momentum", "momentum of the batch-norm moving statistics", type=float, metavar="F")
    add("--bn-test-batch-stats", "batch norm uses batch statistics at test time too", action="store_true")
    add("--bn-layer", "batch-norm implementation", choices=BN_LAYERS)
    add(
        "--init",
        "conv and dense kernel initialiser (auto: he for ReLU networks without batch norm, else glorot)",
        choices=INITS,
    )
    model.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        default=None,
        help="divide the pixels by 255 only, instead of standardising each channel with the training "
        "split's mean and variance (to measure what normalisation brings)",
    )
    training = parser.add_argument_group("training")
    add = _adder(training)
    add("--epochs", "epochs", type=int, metavar="N")
    training.add_argument(
        "--time-budget",
        type=_duration,
        default=None,
        metavar="T",
        help="instead of --epochs: train for T (300, 300s, 5m, 1h30m) of steps and per-epoch evaluations, "
        "the learning-rate decay ending when the time is up; data loading, the final evaluation and the "
        "report are outside it (default: none; colour photos without --epochs: 5m, see the recipe below)",
    )
    add("--batch-size", "images per step", type=int, metavar="N")
    add("--optimizer", "optimizer", choices=OPTIMIZERS)
    add("--lr", "peak learning rate", type=float, metavar="F")
    add("--momentum", "momentum of sgd and rmsprop", type=float, metavar="F")
    add("--schedule", "learning-rate schedule", choices=SCHEDULES)
    add("--warmup-epochs", "cosine, linear: warm-up length in epochs", type=float, metavar="F")
    add("--step-epochs", "step: epochs between decays", type=int, metavar="N")
    add("--step-factor", "step: decay factor", type=float, metavar="F")
    add("--plateau-patience", "plateau: epochs without val-loss improvement", type=int, metavar="N")
    add("--plateau-factor", "plateau: decay factor", type=float, metavar="F")
    add("--seed", "seed of initialisation, dropout and batch order", type=int, metavar="N")
    add("--label-smoothing", "label smoothing of the cross-entropy", type=float, metavar="S")
    add(
        "--weight-decay",
        "decoupled weight decay: each step every weight shrinks by lr x F of itself",
        type=float,
        metavar="F",
    )
    add(
        "--tta",
        "test-time augmentation of val/test evaluation (flip: average with the mirror image)",
        choices=TTAS,
    )
    training.add_argument(
        "--no-test-each-epoch",
        dest="test_each_epoch",
        action="store_false",
        default=None,
        help="evaluate the test split only at the end (default: after every epoch)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run folder (default: saved_models/<dataset>-<head>-<date>-<time>)",
    )
    run.add_argument("--run", default=None, metavar="NAME", help="run name under saved_models/")
    run.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="start from a saved config.json; flags override its fields",
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="continue an interrupted run from its last finished epoch (DIR, "
        "--out/--run, or else the latest unfinished run)",
    )
    run.add_argument(
        "--no-report",
        action="store_true",
        help="skip report.html/report.md at the end (write it later with python report.py RUN)",
    )
    run.add_argument(
        "--summary",
        action="store_true",
        help="print the model's layers, output shapes and parameters, then exit",
    )
    run.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="K",
        help="with --summary: class count, so no dataset is loaded",
    )
    run.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="0 silent, 1 progress bars, 2 one line per epoch (default: 1 on a terminal, else 2)",
    )
    return parser


def _duration(text: str) -> float:
    from fruitcnn.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _adder(group):
    def add(flag, help_text, **kwargs):
        key = flag.lstrip("-").replace("-", "_")
        help_text += f" (default: {_default(key)})"
        group.add_argument(flag, default=None, help=help_text, **kwargs)

    return add


def _base(args: argparse.Namespace) -> RunConfig | None:
    """The run to start from: ``--config``, or None for the defaults."""
    if not args.config:
        return None
    from fruitcnn import runs

    return RunConfig.from_dict(runs.read_json(Path(args.config)))


def _settings(args: argparse.Namespace) -> dict:
    """The flags given on the command line, by setting name (see config.SETTING_FIELDS)."""
    settings = {flag: getattr(args, flag) for flag in _FIELDS if getattr(args, flag) is not None}
    if args.arch:
        settings["arch"] = args.arch
    if args.multihead:
        settings["multihead"] = True
    return settings


def data_config(args: argparse.Namespace) -> DataConfig:
    """The data section alone (to load the data before choosing the default model)."""
    return make_config(args).data


def make_config(args: argparse.Namespace, dataset=None) -> RunConfig:
    """The run configuration: ``--config`` (or defaults) with the given flags applied.

    With the loaded ``dataset`` and no ``--config``, the settings the flags leave out come
    from the recipe for the data and architecture (``fruitcnn.recipes``; e.g. colour
    photos get a network sized to a time budget).
    """
    if dataset is None:
        return config_from_settings(_settings(args), base=_base(args))
    from fruitcnn.recipes import run_config

    return run_config(_settings(args), base=_base(args), dataset=dataset)


def load_data(config: DataConfig):
    """Load the data and print what was read (and what was skipped, and warnings) before training."""
    from fruitcnn.data import load_dataset

    dataset = load_dataset(config)
    info = dataset.info
    height, width, channels = dataset.image_shape
    origin = ""
    if "load_seconds" in info:
        origin = f"; {'from the cache' if info.get('from_cache') else 'read'} in {info['load_seconds']:.1f} s"
    print(
        f"data: {dataset.name} ({info.get('format', '?')}): {len(dataset.class_names)} classes, "
        f"{height}x{width}x{channels}; train {len(dataset.train)} / val {len(dataset.val)} / "
        f"test {len(dataset.test)} ({info.get('split', '')}){origin}"
    )
    for note in info.get("notes", [])[1:]:
        print(f"  {note}")
    for line in [*info.get("messages", []), *info.get("warnings", [])]:
        print(line, file=sys.stderr)
    return dataset


def _summary(config: RunConfig, num_classes: int | None) -> None:
    from fruitcnn.data import line
    from fruitcnn.model import build_model, flops_per_image
    from heads import line_attribute_specs, single_head_specs

    if config.head == "multi":
        specs = line_attribute_specs(
            line.ATTRIBUTES,
            {
                "length": ["len7", "len15"],
                "width": ["w1", "w3"],
                "colour": list(line.COLOURS),
                "angle": [str(angle) for angle in line.ANGLES],
            },
        )
    elif num_classes is not None:
        specs = single_head_specs([f"class{index}" for index in range(num_classes)])
    elif config.data.dataset == "line":
        specs = single_head_specs(line.CLASS_NAMES)
    else:
        raise ValueError("--summary needs --num-classes K for datasets other than 'line'.")
    if config.data.image_size is None and config.data.dataset != "line":
        raise ValueError("--summary needs --image-size N for datasets other than 'line' (no data is read).")
    size = config.data.image_size or line.IMAGE_SIZE
    shape = (size, size, 3)
    model = build_model(config.arch, input_shape=shape, heads=specs)
    # rich draws the table 80 characters wide when the output is no terminal (a pipe, a
    # file), cutting the last column; COLUMNS sets its width
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(SUMMARY_WIDTH)
    try:
        model.summary(line_length=SUMMARY_WIDTH)
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    flops = flops_per_image(model)
    print(
        f"architecture {config.arch.name}: input {shape[0]}x{shape[1]}x{shape[2]}, "
        f"{model.count_params():,} parameters, {flops / 1e6:.2f} MFLOP per image (forward)"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train (or resume, or summarise), print where the run went."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from fruitcnn import runs

    try:
        use_cache_dir(args.cache_dir)
        if args.resume is not None:
            return _resume(args)
        if args.num_classes is not None and not args.summary:
            raise ValueError("--num-classes only applies to --summary (the dataset decides the classes).")
        if args.summary:
            _summary(make_config(args), args.num_classes)
            return 0
        make_config(args)  # every flag checked before the data is read
        run_dir = _run_dir(args)
        dataset = load_data(data_config(args))
        config = make_config(args, dataset)
        if config.recipe:
            print(config.recipe)
        return _train_and_report(args, config, dataset, run_dir, runs)
    except ValueError as error:
        parser.exit(2, f"train.py: error: {error}\n")
    except KeyboardInterrupt:
        return 130


def _train_and_report(args, config, dataset, run_dir: Path | None, runs, *, resume: bool = False) -> int:
    """Train (or resume) and write the report, holding the run folder throughout (so no
    other process can take it between the two); 1 when training stopped early."""
    from fruitcnn.training import TrainingFailed, check_run, train

    check_run(config, dataset)  # before a folder is made for it
    created = run_dir is None
    if run_dir is None:
        run_dir = runs.create_run_folder(
            runs.DEFAULT_ROOT, runs.new_run_name(config.data.dataset, config.head)
        )
    with runs.hold(run_dir, "resuming" if resume else "training", created=created):
        try:
            result = train(config, dataset=dataset, run_dir=run_dir, resume=resume, verbose=_verbosity(args))
        except TrainingFailed as error:
            print(f"train.py: {error}", file=sys.stderr)
            return 1
        _print_result(result, runs)
        return _report(args, result, dataset)


def _report(args, result, dataset) -> int:
    """Write the run's report (unless --no-report); 1 when that fails (the model is saved)."""
    if args.no_report:
        return 0
    from fruitcnn.report import build_report

    try:
        report = build_report(result.run_dir, dataset=dataset, model=result.model)
    except Exception as error:  # the trained model is safe: say so and how to retry
        print(
            f"train.py: the report failed ({type(error).__name__}: {error}); the run itself is saved. "
            f"Retry with: python report.py {result.run_dir}",
            file=sys.stderr,
        )
        return 1
    also = f"{report.markdown.name} and {report.folder.name}/"
    print(f"report: {report.html} ({report.seconds:.0f} s; also {also})")
    return 0


def _run_dir(args) -> Path | None:
    """The run folder of --out or --run (checked), or None for a new automatic name."""
    from fruitcnn import runs

    if args.out and args.run:
        raise ValueError("give either --out DIR or --run NAME, not both.")
    if args.out:
        return runs.check_out_folder(Path(args.out))
    if args.run:
        return runs.DEFAULT_ROOT / runs.check_run_name(args.run)
    return None


def _verbosity(args) -> int:
    if args.verbose is not None:
        return args.verbose
    return 1 if sys.stdout.isatty() else 2


def _resume(args) -> int:
    from fruitcnn import runs
    from fruitcnn.training import check_resumable

    settings = [*_FIELDS, "arch", "multihead", "config", "summary", "num_classes", "cache_dir"]
    given = [flag for flag in settings if getattr(args, flag) not in (None, False)]
    if given:
        names = ", ".join("--" + flag.replace("_", "-") for flag in given)
        raise ValueError(
            f"--resume continues a run with its saved config.json; drop {names} (or start "
            "a new run without --resume)."
        )
    if args.resume and (args.out or args.run):
        raise ValueError("give the run to resume once: --resume DIR, or --resume with --out/--run.")
    run_dir = Path(args.resume) if args.resume else _run_dir(args) or runs.latest_resumable_run()
    with runs.hold(run_dir, "resuming"):  # refused at once, before the data is loaded, if in use
        check_resumable(run_dir, runs.read_state(run_dir))
        config = RunConfig.from_dict(runs.read_json(run_dir / runs.CONFIG_FILE))
        print(f"resuming {run_dir}")
        dataset = load_data(config.data)
        return _train_and_report(args, config, dataset, run_dir, runs, resume=True)


def _print_result(result, runs) -> None:
    metrics = result.metrics
    multi = any(key.startswith("test_angle") for key in metrics)
    kind = "aggregate (all four heads right)" if multi else "accuracy"
    print(
        f"test {kind}: {100 * metrics['test_accuracy']:.2f}% on {metrics['test_images']} images "
        f"| best epoch {metrics['best_epoch']} of {metrics['epochs']} "
        f"| {metrics['train_seconds']:.0f} s training"
    )
    spent = metrics.get("time_budget")
    if spent:
        print(
            f"time budget {spent['budget_s']:g} s: {spent['used_s']:.0f} s used "
            f"({100 * spent['used_s'] / spent['budget_s']:.0f}%), {spent['steps']} steps = "
            f"{spent['epochs']:g} epochs at {spent.get('step_ms', 0):.0f} ms per step"
        )
    print(
        f"run saved in {result.run_dir}/ ({runs.MODEL_FILE}, {runs.HISTORY_FILE}, "
        f"{runs.METRICS_FILE}; tensorboard --logdir {result.run_dir / runs.TENSORBOARD_DIR})"
    )


if __name__ == "__main__":
    sys.exit(main())
