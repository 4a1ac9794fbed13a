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
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out

# Imported here: modules without TensorFlow. The library's TensorFlow parts are imported
# in the functions that use them, so that --help and flag errors answer in 0.3 s instead
# of about 8 s (tests/test_architecture.py).
from fruitcnn import runs  # noqa: E402
from fruitcnn.config import (  # noqa: E402
    PRESETS,
    ArchConfig,
    AugmentConfig,
    DataConfig,
    RunConfig,
    TrainConfig,
    config_from_settings,
)
from fruitcnn.config import SETTING_FIELDS as _FIELDS  # noqa: E402  (flag -> config field)
from fruitcnn.data import line, load_and_report  # noqa: E402
from fruitcnn.data.cache import add_cache_dir_argument, use_cache_dir  # noqa: E402
from fruitcnn.distributed import finish_together  # noqa: E402

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
  python -m fruitcnn.distributed --workers 2 -- train.py --dataset line   # two local workers
  tensorboard --logdir saved_models                # learning curves, confusion matrices
  python report.py saved_models/<run>              # the report again, other options
"""

RECIPES = """recipes (settings the flags leave out; any flag given wins, --config gets none):
  colour photos without --arch: an airbench-like network (frozen 2x2 whitening, three
    conv-pool-bn-relu blocks, global max pooling, a hidden fc layer) sized to the time
    budget (--time-budget, 5m unless --epochs is given) and this machine's speed; SGD with
    Nesterov momentum, weight decay, label smoothing, linear warm-up and decay, flips,
    translations and test-time flips; mixed bfloat16 where this CPU's bfloat16 matmuls are
    >= 2x as fast as float32 ones; on a budget the test split only at the end; printed at
    the start and saved in config.json
  an architecture without batch norm: Adam at 0.001 and He-normal kernels
  everything else: the defaults below
"""

# Characters per line of --summary's table.
SUMMARY_WIDTH = 110


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (defaults come from the config dataclasses)."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES + "\n" + RECIPES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    _add_settings(data, DataConfig)
    add_cache_dir_argument(data)
    _add_settings(parser.add_argument_group("augmentation (training images only)"), AugmentConfig)
    model = parser.add_argument_group("model")
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
    _add_settings(model, ArchConfig)
    _add_settings(parser.add_argument_group("training"), TrainConfig)
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


def _add_settings(group, config_class) -> None:
    """A flag for every field of ``config_class`` that declares one (its metadata, see
    ``fruitcnn.config.fields.setting_field``), in field order unless it is listed after
    another flag; ``--help`` shows the dataclass default."""
    declared = [item for item in dataclasses.fields(config_class) if "flag" in item.metadata]
    ordered = [item for item in declared if "listed_after" not in item.metadata]
    for item in declared:
        if "listed_after" in item.metadata:
            flags = [other.metadata["flag"] for other in ordered]
            ordered.insert(flags.index(item.metadata["listed_after"]) + 1, item)
    for item in ordered:
        options = dict(item.metadata)
        options.pop("listed_after", None)
        flag, setting, help_text = options.pop("flag"), options.pop("setting"), options.pop("help")
        shown = options.pop("shown_default", str(item.default))
        if shown is not None:
            help_text += f" (default: {shown})"
        if "type" in options:
            options["type"] = _argument_type(options["type"])
        group.add_argument(flag, dest=setting, default=None, help=help_text, **options)


def _argument_type(parse):
    """``parse`` as an argparse type: int and float as they are (argparse names them in
    its message); another parser's ValueError shown with its own words."""
    if parse in (int, float):
        return parse

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _base(args: argparse.Namespace) -> RunConfig | None:
    """The run to start from: ``--config``, or None for the defaults."""
    if not args.config:
        return None

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


def _summary(config: RunConfig, num_classes: int | None) -> None:
    from fruitcnn.model import build_model, flops_per_image
    from heads import line_attribute_specs, single_head_specs

    if config.head == "multi":
        specs = line_attribute_specs(line.ATTRIBUTES, line.attribute_values())
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
    code = _main(parser, args)
    if code == 0:  # the workers of a multi-worker run end together (after the chief's report)
        finish_together()
    return code


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """What :func:`main` does, its exit code; bad input exits with 2 and the reason."""
    try:
        use_cache_dir(args.cache_dir)
        _strategy_first(args)
        if args.resume is not None:
            return _resume(args)
        if args.num_classes is not None and not args.summary:
            raise ValueError("--num-classes only applies to --summary (the dataset decides the classes).")
        if args.summary:
            _summary(make_config(args), args.num_classes)
            return 0
        make_config(args)  # every flag checked before the data is read
        run_dir = _run_dir(args)
        dataset = load_and_report(data_config(args))
        config = make_config(args, dataset)
        if config.recipe:
            print(config.recipe)
        return _train_and_report(args, config, dataset, run_dir, runs)
    except ValueError as error:
        parser.exit(2, f"train.py: error: {error}\n")
    except KeyboardInterrupt:
        return 130


def _strategy_first(args) -> None:
    """Set up a distributed strategy before anything runs TensorFlow (TensorFlow's rule
    for multi-worker collectives): the flag's, or on --resume the run's own."""
    name = args.strategy
    if name is None and args.resume is None and not args.summary:
        name = make_config(args).train.strategy
    elif name is None and args.resume is not None:
        folder = Path(args.resume) if args.resume else _run_dir(args) if args.out or args.run else None
        saved = folder / runs.CONFIG_FILE if folder else None
        if saved and saved.is_file():
            name = RunConfig.from_dict(runs.read_json(saved)).train.strategy
    if name and name != "default":
        from fruitcnn.distributed import make_strategy

        make_strategy(name)


def _worker(config) -> bool:
    """Whether this process is a multi-worker run's worker other than the chief."""
    if config.train.strategy != "multiworker":
        return False
    from fruitcnn.distributed import cluster

    return not cluster().is_chief


def _train_as_worker(config, dataset, run_dir: Path | None, *, resume: bool) -> int:
    """A worker of a multi-worker run that is not the chief: the same training, its
    files in a temporary folder (the chief writes the run folder and the report)."""
    from fruitcnn.distributed import cluster
    from fruitcnn.training import TrainingFailed, train

    try:
        train(config, dataset=dataset, run_dir=run_dir, resume=resume, verbose=0, interrupt_advice="")
    except TrainingFailed as error:
        print(f"train.py ({cluster().describe()}): {error}", file=sys.stderr)
        return 1
    print(f"{cluster().describe()}: finished; the chief writes the run folder")
    return 0


def _train_and_report(args, config, dataset, run_dir: Path | None, runs, *, resume: bool = False) -> int:
    """Train (or resume) and write the report, holding the run folder throughout (so no
    other process can take it between the two); 1 when training stopped early."""
    from fruitcnn.training import TrainingFailed, check_run, train

    check_run(config, dataset)  # before a folder is made for it
    if _worker(config):
        return _train_as_worker(config, dataset, run_dir, resume=resume)
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
    from app.report.build import build_report

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
    from fruitcnn.training import check_resumable

    # --strategy says where the steps run, not what they compute: it may change on resume
    settings = [*(flag for flag in _FIELDS if flag != "strategy"), "arch", "multihead", "config"]
    settings += ["summary", "num_classes", "cache_dir"]
    given = [flag for flag in settings if getattr(args, flag) not in (None, False)]
    if given:
        names = ", ".join("--" + flag.replace("_", "-") for flag in given)
        raise ValueError(
            f"--resume continues a run with its saved config.json; drop {names} (or start "
            "a new run without --resume)."
        )
    if args.resume and (args.out or args.run):
        raise ValueError("give the run to resume once: --resume DIR, or --resume with --out/--run.")
    explicit = Path(args.resume) if args.resume else _run_dir(args)
    run_dir = explicit or runs.latest_resumable_run()
    check_resumable(run_dir, runs.read_state(run_dir))  # its words first: no run, finished, diverged
    config = RunConfig.from_dict(runs.read_json(run_dir / runs.CONFIG_FILE))
    if args.strategy:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, strategy=args.strategy))
    if config.train.strategy == "multiworker" and explicit is None:
        raise ValueError(
            "every worker must resume the same run: name it (--resume DIR, or --resume with --out/--run)."
        )
    if _worker(config):  # the chief holds the run folder; this worker only reads it
        return _train_as_worker(config, load_and_report(config.data), run_dir, resume=True)
    with runs.hold(run_dir, "resuming"):  # refused at once, before the data is loaded, if in use
        check_resumable(run_dir, runs.read_state(run_dir))
        print(f"resuming {run_dir}")
        dataset = load_and_report(config.data)
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
            + (
                ""
                if spent.get("plans", 1)
                else " (the time ran out before the first plan: give a longer budget)"
            )
        )
    shared = metrics.get("distributed")
    if shared:
        agree = (
            "agree"
            if shared["weights_disagreement"] == 0
            else f"differ by {shared['weights_disagreement']:g}"
        )
        print(
            f"strategy {shared['strategy']}: {shared['workers']} worker(s), {shared['replicas']} replica(s); "
            f"the workers' weights {agree}"
        )
    print(
        f"run saved in {result.run_dir}/ ({runs.MODEL_FILE}, {runs.HISTORY_FILE}, "
        f"{runs.METRICS_FILE}; tensorboard --logdir {result.run_dir / runs.TENSORBOARD_DIR})"
    )


if __name__ == "__main__":
    sys.exit(main())
