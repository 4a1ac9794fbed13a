"""fruitcnn: train convolutional image classifiers with Keras 3 and see what they learned.

The library: ``config`` (the one run configuration and the architecture presets),
``layers`` (the reduce_mean BatchNorm), ``model`` (``build_model``), ``training``
(``train``, the one training path), ``runs`` (the run folder), ``data`` (datasets),
``evaluation``/``plots``/``report`` (the evaluation report), and ``study``/``tuning``
(parameter studies: study files and tables; trials run through Keras Tuner).
"""

from __future__ import annotations

from fruitcnn.allocator import tune_allocator

__version__ = "0.1.0"

# Before TensorFlow allocates anything: see fruitcnn/allocator.py (1.8x faster steps).
tune_allocator()


def load_model(path):
    """Load a saved fruitcnn ``.keras`` model (or a run folder's model.keras).

    Importing fruitcnn's layers and heads registers their classes, so the file loads
    without ``custom_objects``; the model is returned uncompiled.
    """
    from pathlib import Path

    import keras

    import fruitcnn.layers  # noqa: F401  (registers BatchNorm)
    import heads  # noqa: F401  (registers AggregateAccuracy)

    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise ValueError(
            f"no model file at {path}; expected a .keras file or a run folder holding model.keras."
        )
    return keras.models.load_model(path, compile=False)
