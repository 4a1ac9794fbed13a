"""Explain a trained model's predictions: not implemented yet.

The explanation methods (occlusion sensitivity, gradient saliency, Grad-CAM,
intermediate activations, filter visualisation) arrive with the explanations issue.
Until then this command accepts the planned flags and says so, so scripts and muscle
memory fail clearly instead of strangely.
"""

from __future__ import annotations

import argparse
import sys

NOT_YET = (
    "explain.py: explanations are not implemented yet in this version of fruitcnn; "
    "they arrive with the explanations issue (occlusion, saliency, Grad-CAM, activations, "
    "filters). Training and evaluation work now: python train.py --help."
)


def build_parser() -> argparse.ArgumentParser:
    """Parser of the planned command line (parsed, then refused)."""
    parser = argparse.ArgumentParser(
        prog="explain.py",
        description="NOT IMPLEMENTED YET: will explain a saved model's predictions for image "
        "files (occlusion, saliency, Grad-CAM, activations, filters). It currently only "
        "prints that it is not implemented and exits with status 2.",
        epilog="planned use: python explain.py --layer conv2 --image x.png",
    )
    parser.add_argument("--model", help="run folder (planned; default: latest run)")
    parser.add_argument("--image", action="append", help="image file (planned; repeatable)")
    parser.add_argument("--layer", help="layer name such as conv2 (planned)")
    parser.add_argument("--method", help="explanation method(s) (planned)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and report that explanations are not implemented yet."""
    build_parser().parse_args(argv)
    print(NOT_YET, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
