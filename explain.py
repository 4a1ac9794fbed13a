"""Explain a trained model's predictions: python explain.py [--model RUN] --image x.png.

For every image (files given with --image, or --samples N drawn from the run's own
data split) it prints the top predictions of every head, then writes per method a PNG
(the image, the heatmap with its colour bar, the overlay; titled with the prediction
and, when known, the true class) and the raw float32 arrays as .npy, named
``<image stem>_<method>[_<variant>][_<head>]`` (``_<head>`` for four-head models),
e.g. ``x_occlusion_prob.npy``, ``x_occlusion_loss.npy``, ``x_saliency.npy``,
``x_gradcam.npy``, ``x_gradcampp.npy``, ``x_layercam.npy``,
``x_integrated_gradients.npy``, ``x_rise.npy``, ``x_activations_conv2.png``, ``x_filters_conv2.png``, and
explained.csv (per image and head the predicted, true and explained class); with
--quality it also measures the heatmaps drawn (visualize.quality), prints the scores
and writes quality.csv. Without
--model the most recently finished run under saved_models/ is used (and named).

With --serve it starts the inspection page instead (app.page): a local web page to
choose a run, browse its test images or drop one, and see the predictions and every
method; bound to 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out

# Imported here: modules without TensorFlow. The library's TensorFlow parts (the model,
# the methods, training) are imported in the functions that use them, so that --help and
# flag errors answer in 0.3 s instead of about 8 s (tests/test_architecture.py).
import numpy as np  # noqa: E402

from fruitcnn import runs  # noqa: E402
from fruitcnn.config import INPUT_RANGE_CHOICES, RunConfig  # noqa: E402
from fruitcnn.data import load_dataset  # noqa: E402
from fruitcnn.data.images import read_image_file  # noqa: E402
from visualize.methods import (  # noqa: E402  (no TensorFlow)
    CAM_METHODS,
    ENGINES,
    EXPLAIN_DEFAULT,
    EXPLAIN_METHODS,
    FILLS,
    FILTER_OBJECTIVES,
    HEATMAP_METHODS,
    SALIENCY_OF,
    SMOOTHGRAD_COPIES,
    SPREADS,
    ExplainSettings,
    parse_methods,
)

METHODS = EXPLAIN_METHODS
DEFAULT_METHODS = ",".join(EXPLAIN_DEFAULT)
SPLITS = ("train", "val", "test")
# Top predictions printed per head.
TOP = 3
# Training and test images sampled for the filter images (energy bound, dead filters, percentiles).
REFERENCE_IMAGES = 256

EXAMPLES = """examples:
  python explain.py --layer conv2 --image x.png            # the latest run, default methods
  python explain.py --model saved_models/<run> --image a.png --image b.jpg --method all
  python explain.py --samples 10 --split test --method occlusion --patch 10 --stride 2 --fill blur
  python explain.py --image x.png --method occlusion --occlusion-engine batched   # the plain path
  python explain.py --image x.png --target len15_w3_ang045_red       # explain another class
  python explain.py --model saved_models/<multi run> --image x.png --target angle:45
  python explain.py --samples 20 --quality                 # how far the maps can be trusted
  python explain.py --serve                                # the inspection page: http://127.0.0.1:8000
  python explain.py --serve saved_models/<run> --port 8080 # opens with that run chosen
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="explain.py",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="RUN",
        help="run folder or .keras file (default: the latest finished run)",
    )
    parser.add_argument(
        "--image", action="append", default=[], metavar="FILE", help="image file (repeatable)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="N",
        help="explain N images of the run's own data split instead",
    )
    parser.add_argument("--split", choices=SPLITS, default="test", help="split of --samples (default: test)")
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="PATH",
        help="--samples: read the run's data from PATH instead of where it was at training (moved)",
    )
    parser.add_argument(
        "--cued",
        action="store_true",
        help="--samples of a run trained with --cue: the test images with the cue planted, as in training "
        "(default: the clean test images)",
    )
    parser.add_argument(
        "--input-range",
        choices=INPUT_RANGE_CHOICES,
        default="auto",
        help="for a model made elsewhere: the pixel range it was trained on (auto: 0-255 for fruitcnn's "
        "models and models that begin with Rescaling/Normalization) (default: auto)",
    )
    parser.add_argument(
        "--method",
        default=DEFAULT_METHODS,
        help=f"comma list of {', '.join(METHODS)}, or all (default: {DEFAULT_METHODS})",
    )
    parser.add_argument(
        "--layer",
        default=None,
        help="layer(s) of gradcam, gradcampp, layercam, activations and filters: a name, a comma list "
        "(conv1,conv2), or all (the last layer of every conv block: relu1, relu2 ...) (default: the last "
        "feature maps, e.g. relu3)",
    )
    parser.add_argument(
        "--filter-objective",
        choices=FILTER_OBJECTIVES,
        default="centre",
        help="filters: maximise the unit at the centre of the filter's map (its receptive field shows what "
        "it responds to) or the map's mean (a texture over the whole image) (default: centre)",
    )
    parser.add_argument(
        "--target",
        default="auto",
        help="auto (the predicted class; the true class for --samples), a class name, the number in "
        "a class name (45 for ang045) or a class index, or HEAD:CLASS (default: auto)",
    )
    parser.add_argument(
        "--patch",
        type=int,
        default=None,
        metavar="N",
        help="occlusion square side in pixels (default: a tenth of the image's smaller side, at least 3: "
        "3 for 28x28, 10 for 100x100)",
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=1,
        metavar="S",
        help="occlusion: every S-th row and column, each value filling its SxS block (default: 1)",
    )
    parser.add_argument(
        "--fill",
        default="mean",
        help="occlusion fill: mean, gray, zero, blur or a number 0-255 (default: mean)",
    )
    parser.add_argument(
        "--occlusion-engine",
        choices=ENGINES,
        default="auto",
        help="occlusion: incremental (recompute only the part of each layer the square changes: the "
        "same maps, many times faster), batched (every occluded copy through the whole model) or auto "
        "(incremental when the model allows it, else batched with the reason printed) (default: auto)",
    )
    parser.add_argument(
        "--occlusion-spread",
        choices=SPREADS,
        default="window",
        help="occlusion: each pixel the mean over every square that hides it (window) or the value of the "
        "square centred on it (centre) (default: window)",
    )
    parser.add_argument(
        "--saliency",
        choices=SALIENCY_OF,
        default="loss",
        help="saliency of the class's loss or of its logit (default: loss)",
    )
    parser.add_argument(
        "--smoothgrad",
        type=int,
        default=SMOOTHGRAD_COPIES,
        metavar="N",
        help="saliency: average the gradients of N noisy copies (SmoothGrad; 0: the plain gradient); the "
        f"figure clips the map at its 99th percentile (default: {SMOOTHGRAD_COPIES})",
    )
    parser.add_argument("--times-input", action="store_true", help="saliency: gradient x input")
    parser.add_argument(
        "--filters",
        default=None,
        metavar="LIST",
        help="filters: all, or indices such as 0,3,7 (default: the first 32)",
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="output folder (default: <run>/explanations)"
    )
    parser.add_argument(
        "--quality",
        action="store_true",
        help="also measure the heatmaps drawn and print the scores (quality.csv): deletion and insertion "
        "areas against a random order, the rank correlation with a fully randomised copy of the model, "
        "and for --samples of data with object masks (the line dataset) the pointing game and mask mass",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --samples (default: 0)")
    page = parser.add_argument_group("inspection page")
    page.add_argument(
        "--serve",
        nargs="?",
        const="",
        default=None,
        metavar="FOLDER",
        help="start the inspection page for the runs under FOLDER (default: saved_models), or with the run "
        "FOLDER chosen; prints its address and opens nothing",
    )
    page.add_argument("--host", default="127.0.0.1", help="--serve: address to bind (default: 127.0.0.1)")
    page.add_argument(
        "--port", type=int, default=8000, help="--serve: port, 0 for a free one (default: 8000)"
    )
    return parser


def _serve(args) -> int:
    """The inspection page until Ctrl-C (the folder and the port are checked first)."""
    folder = Path(args.serve) if args.serve else runs.DEFAULT_ROOT
    if not folder.is_dir():
        raise ValueError(f"--serve {folder}: no such folder; give saved_models or a run folder in it.")
    chosen = folder.name if runs.is_finished(folder) else None
    root = folder.parent if chosen else folder
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
    except OSError as error:
        listener.close()
        raise ValueError(
            f"--host {args.host} --port {args.port}: {error.strerror or error}; choose another port "
            "(--port 0: any free one)."
        ) from None
    # TensorFlow, Starlette and uvicorn: only for the page (see the imports at the top)
    import uvicorn

    from app.page.server import make_app

    port = listener.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    address = f"http://{host}:{port}/" + (f"?run={chosen}" if chosen else "")
    print(f"inspection page for the runs under {root}/: {address}\n(Ctrl-C stops it)", flush=True)
    config = uvicorn.Config(make_app(root, input_range=args.input_range), log_level="warning")
    uvicorn.Server(config).run(sockets=[listener])
    return 0


def _methods(text: str) -> list[str]:
    return parse_methods(text, METHODS)


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"--{name} must be at least 1 pixel, got {value}.")
    return value


def _check_patch(patch: int | None, stride: int, model) -> None:
    """--patch and --stride must fit inside the model's images."""
    height, width = (int(size) for size in model.inputs[0].shape[1:3])
    for name, value in (("patch", patch), ("stride", stride)):
        if value is not None and value > min(height, width):
            raise ValueError(
                f"--{name} {value} is larger than the model's {height}x{width} images: "
                + (
                    "every position would hide the whole image"
                    if name == "patch"
                    else "only the first row and column would be evaluated"
                )
                + f"; use at most {min(height, width)}."
            )


def _layers(text: str | None, model, methods) -> tuple[str, ...]:
    """The layers of --layer: checked names, or every conv block's last layer for all."""
    if not text:
        return ()
    from visualize.gradcam import check_layer
    from visualize.quality import gradcam_method_layers

    if text == "all":
        layers = tuple(dict.fromkeys(gradcam_method_layers(model).values()))
        if not layers:
            raise ValueError("--layer all: this model has no conv layer.")
        return tuple(sorted(layers, key=[layer.name for layer in model.layers].index))
    layers = tuple(item.strip() for item in text.split(",") if item.strip())
    for layer in layers:  # activations take any layer; Grad-CAM and filters need feature maps
        check_layer(model, layer, spatial=bool({*CAM_METHODS, "filters"} & set(methods)))
    return layers


def _filters(text: str | None, model, layers: tuple[str, ...], methods) -> tuple[int, ...] | str | None:
    """The filter indices of --filters ("all": every filter of each layer; None: the
    default first ones)."""
    if text is None or "filters" not in methods:
        return None
    if text == "all":
        return "all"
    from visualize.gradcam import default_layer

    count = min(int(model.get_layer(layer).output.shape[-1]) for layer in layers or (default_layer(model),))
    try:
        chosen = tuple(int(item) for item in text.split(","))
    except ValueError:
        raise ValueError(
            f"--filters {text!r}: expected all or comma-separated indices such as 0,3,7."
        ) from None
    if any(index < 0 or index >= count for index in chosen):
        raise ValueError(f"--filters {text!r}: the layer has filters 0..{count - 1}.")
    return chosen


def _reference(args, run: Path, methods):
    """Real images of the run for the filter images (visualize.explain_run.Reference):
    a seeded sample of its training and test images, or why there are none."""
    from visualize.explain_run import Reference

    if "filters" not in methods:
        return Reference()

    folder = run if run.is_dir() else run.parent
    try:
        config = RunConfig.from_dict(runs.read_json(folder / runs.CONFIG_FILE))
        data = dataclasses.replace(config.data, dataset=args.dataset) if args.dataset else config.data
        dataset = load_dataset(data)
    except ValueError as error:
        note = str(error).splitlines()[0]
        return Reference(note=f"no real images to compare with: {note}; dead filters are not detected")
    rng = np.random.default_rng(args.seed)

    def sample(split):
        return split.images[np.sort(rng.choice(len(split), min(REFERENCE_IMAGES, len(split)), replace=False))]

    return Reference(train=sample(dataset.train), test=sample(dataset.test))


def _fill(text: str):
    if text in FILLS:
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"--fill {text!r}: expected one of {', '.join(FILLS)} or a number of pixel units 0-255."
        ) from None
    if not 0 <= value <= 255:
        raise ValueError(f"--fill {value}: a number must be a pixel value in 0..255.")
    return value


def _run_folder(model_arg: str | None) -> Path:
    if model_arg:
        return Path(model_arg)
    finished = runs.finished_runs()
    if not finished:
        raise ValueError(
            "no finished run (metrics.json and model.keras, not being trained now) under "
            f"{runs.DEFAULT_ROOT}/; "
            "train one (python train.py) or pass --model saved_models/<run> or a .keras file."
        )
    print(f"model: {finished[-1]} (the latest finished run; choose another with --model)")
    return finished[-1]


def _parse_target(text: str, classes: dict[str, list[str]]) -> tuple[str | None, int | None]:
    """(head or None, class index or None for auto)."""
    if text == "auto":
        return None, None
    heads = list(classes)
    head, _, name = text.rpartition(":") if ":" in text else ("", "", text)
    if head and head not in heads:
        raise ValueError(
            f"--target {text!r}: unknown head {head!r}; this model's heads are {', '.join(heads)}."
        )
    if not head:
        if len(heads) > 1:
            example = f"{heads[-1]}:{classes[heads[-1]][0]}"
            raise ValueError(
                f"--target {text!r}: this model has heads {', '.join(heads)}; write HEAD:CLASS, e.g. "
                f"{example}."
            )
        head = heads[0]
    names = classes[head]
    if name in names:
        return head, names.index(name)
    if name.isdigit():
        # the number in a class name first (angle:45 -> ang045), else a class index
        numbered = [index for index, text in enumerate(names) if _number_in(text) == int(name)]
        if len(numbered) == 1:
            return head, numbered[0]
        if int(name) < len(names):
            return head, int(name)
    shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
    raise ValueError(f"--target {text!r}: head {head!r} has no class {name!r}; its classes are {shown}.")


def _number_in(text: str) -> int | None:
    digits = "".join(char for char in text if char.isdigit())
    return int(digits) if digits else None


def _inputs(args, run: Path, model):
    """(images uint8 (N,H,W,C), stems, true class per head or None, object masks or None)."""

    if args.samples is not None:
        if args.image:
            raise ValueError("give either --image files or --samples N, not both.")
        if args.samples < 1:
            raise ValueError(f"--samples must be at least 1, got {args.samples}.")
        return _samples(args, run)
    height, width, channels = (int(size) for size in model.inputs[0].shape[1:])
    if not args.image:
        if set(_methods(args.method)) <= {"filters"}:  # filter images need no input image
            return np.zeros((0, height, width, channels), np.uint8), [], None, None
        raise ValueError("nothing to explain: give --image FILE (repeatable) or --samples N.")
    images = np.stack([read_image_file(path, (height, width), channels) for path in args.image])
    return images, [Path(path).stem for path in args.image], None, None


def _samples(args, run: Path):

    from fruitcnn.training import head_specs
    from heads import head_targets

    folder = run if run.is_dir() else run.parent
    if not (folder / runs.CONFIG_FILE).is_file():
        raise ValueError(
            f"--samples draws images of the run's own data, but {folder} holds no {runs.CONFIG_FILE} (not a "
            "fruitcnn run folder); explain image files with --image instead."
        )
    config = RunConfig.from_dict(runs.read_json(folder / runs.CONFIG_FILE))
    data = dataclasses.replace(config.data, dataset=args.dataset) if args.dataset else config.data
    dataset = load_dataset(data)
    split = dataset.splits[args.split]
    if args.cued and split.cued is None:
        raise ValueError(
            f"--cued explains test images with the run's planted cue, but {folder.name} was trained without "
            f"one (--cue {config.data.cue}) or --split is {args.split} (cued copies exist for test only)."
        )
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(len(split), size=min(args.samples, len(split)), replace=False))
    specs = head_specs(config, dataset)
    targets = head_targets(
        specs, split.labels[chosen], None if split.attributes is None else split.attributes[chosen]
    )
    truth = {spec.name: np.asarray(targets[spec.name]).reshape(-1).astype(int) for spec in specs}
    masks = None if split.masks is None else split.masks[chosen]
    if args.cued:
        return split.cued[chosen], [f"{args.split}-cued{int(index):05d}" for index in chosen], truth, masks
    return split.images[chosen], [f"{args.split}{int(index):05d}" for index in chosen], truth, masks


def _print_predictions(probabilities, stems, classes) -> None:
    for head, names in classes.items():
        for stem, row in zip(stems, probabilities[head]):
            best = np.argsort(-row)[:TOP]
            listed = ", ".join(f"{names[index]} {row[index]:.3f}" for index in best)
            print(f"{stem}{' [' + head + ']' if len(classes) > 1 else ''}: {listed}")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, explain the images, print where the results went."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.serve is not None:
            return _serve(args)
        methods = _methods(args.method)
        if args.quality and not set(HEATMAP_METHODS) & set(methods):
            raise ValueError(
                f"--quality measures heatmaps ({', '.join(HEATMAP_METHODS)}); --method {args.method} "
                "draws none; add one, e.g. --method occlusion."
            )
        fill = _fill(args.fill)
        if args.patch is not None:
            _positive("patch", args.patch)
        _positive("stride", args.stride)
        if args.smoothgrad < 0:
            raise ValueError(
                f"--smoothgrad must be 0 (off) or a number of noisy copies, got {args.smoothgrad}."
            )
        if args.dataset and args.samples is None:
            raise ValueError("--dataset names the run's data for --samples; with --image it has no use.")
        if args.cued and args.samples is None:
            raise ValueError("--cued chooses the cued copies of --samples; with --image it has no use.")
        run = _run_folder(args.model)
        from visualize.targets import load_explained_model

        model, classes = load_explained_model(run, input_range=args.input_range)
        _check_patch(args.patch, args.stride, model)
        head, target = _parse_target(args.target, classes)
        layers = _layers(args.layer, model, methods)
        images, stems, truth, masks = _inputs(args, run, model)
        out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / "explanations"

        from visualize.explain_run import explain_images
        from visualize.targets import class_probabilities

        if len(images):
            probabilities = class_probabilities(model, images, classes)
            _print_predictions(probabilities, stems, classes)
        else:  # only filter images, which need no input image
            probabilities = {
                head: images[:0, :1, 0, 0].astype(float).repeat(len(names), 1)
                for head, names in classes.items()
            }

        options = ExplainSettings(
            layers=layers,
            patch=args.patch,
            stride=args.stride,
            fill=fill,
            occlusion_engine=args.occlusion_engine,
            occlusion_spread=args.occlusion_spread,
            saliency_of=args.saliency,
            saliency_smoothgrad=args.smoothgrad,
            times_input=args.times_input,
            filters=_filters(args.filters, model, layers, methods),
            filter_objective=args.filter_objective,
        )

        written = explain_images(
            model, images, stems, classes, probabilities, methods=methods, head=head, target=target,
            truth=truth, options=options, measure_quality=args.quality, out=out, masks=masks,
            reference=_reference(args, run, methods),
        )  # fmt: skip
    except ValueError as error:
        parser.exit(2, f"explain.py: error: {error}\n")
    print(f"wrote {written} files to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
