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


def load_model(path, *, input_range: str = "auto", head_names=None):
    """Load a ``.keras`` model (or a run folder's model.keras) in fruitcnn's form,
    uncompiled: fruitcnn's own models as they are, models made elsewhere adapted (see
    ``fruitcnn.modelfile.load_model``); a damaged or unusable file is a ValueError
    that says why."""
    # Keras on first use: every command line imports this package, and --help stays at 0.2 s
    from fruitcnn.modelfile import load_model as load

    return load(path, input_range=input_range, head_names=head_names)
