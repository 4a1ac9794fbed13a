"""All of fruitcnn's drawing, in one place: every function returns a
:class:`matplotlib.figure.Figure` made without pyplot (no global state, nothing shown,
safe in threads and servers), and :func:`png_bytes` renders one to PNG and releases it.

- :mod:`fruitcnn.plots.results`: figures of a run and of a study (learning curves,
  confusion matrices, most-confident image grids, the heads' branches, study panels);
- :mod:`fruitcnn.plots.maps`: figures of explanations (heatmaps over images, activation
  and filter tiles, perturbation curves, randomisation cascades).

The numbers come from elsewhere (``fruitcnn.evaluation``, ``visualize``): this package
only draws. It sits in the core, below ``visualize``, because training itself draws
(the validation confusion matrices it writes to TensorBoard every epoch).
"""

from fruitcnn.plots.maps import (
    cascade_figure,
    curves_figure,
    filters_figure,
    heatmap_figure,
    tile_figure,
    unit_range,
)
from fruitcnn.plots.results import (
    GridRow,
    branches_figure,
    confident_grid,
    confusion_figure,
    learning_curves,
    png_bytes,
    short_name,
    study_figure,
)

__all__ = [
    "GridRow",
    "branches_figure",
    "cascade_figure",
    "confident_grid",
    "confusion_figure",
    "curves_figure",
    "filters_figure",
    "heatmap_figure",
    "learning_curves",
    "png_bytes",
    "short_name",
    "study_figure",
    "tile_figure",
    "unit_range",
]
