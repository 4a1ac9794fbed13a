"""What the report shows (:class:`ReportOptions`) and the names report.py's flags take.

Apart from the rest of ``app.report`` because report.py's ``--help`` and flag checks read
it: this module imports no TensorFlow (``python report.py --help`` in 0.2 s rather than
the 8 s of importing TensorFlow).
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")
SPLIT_TITLES = {"train": "training", "val": "validation", "test": "test"}
ORDERS = ("classes", "confusion")


@dataclass(frozen=True)
class ReportOptions:
    """What the report shows.

    Attributes:
        grid_split: split whose most confident right and wrong images are shown.
        top_k: images per class on each side of the grids.
        order: class order of the confusion matrices: ``classes`` (as trained) or
            ``confusion`` (confused classes next to each other; the order is taken
            from the validation split and used for all three matrices).
        pairs: rows of the "most confused pairs" tables.
        grid_classes: classes per image-grid figure (long class lists are split).
        quality_images: test images whose explanations are measured in the
            "Explanation quality" section (0, the default: no such section; it takes
            longer than the rest of the report, e.g. 28 s against 12 s for the line
            model with 32 images, so it is written on request: --quality-images 32).
    """

    grid_split: str = "val"
    top_k: int = 5
    order: str = "classes"
    pairs: int = 15
    grid_classes: int = 12
    quality_images: int = 0

    def __post_init__(self):
        if self.grid_split not in SPLITS:
            raise ValueError(f"grid split must be one of {', '.join(SPLITS)}, got {self.grid_split!r}.")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}.")
        for name in ("top_k", "pairs", "grid_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.quality_images < 0:
            raise ValueError(
                f"quality_images must be 0 (no quality section) or more, got {self.quality_images}."
            )
