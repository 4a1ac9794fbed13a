"""Intermediate activations: the outputs of any named layer for one or several images."""

from __future__ import annotations

import keras
import numpy as np

from visualize.gradcam import check_layer
from visualize.targets import as_images

DEFAULT_BATCH = 128


def activations(model: keras.Model, images, *, layer: str, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """The layer's output for every image, float32 (N, h, w, C) or (N, D), in inference mode."""
    images = as_images(images)
    check_layer(model, layer, spatial=False)
    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    return np.asarray(probe.predict(images, batch_size=batch_size, verbose=0), np.float32)
