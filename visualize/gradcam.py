"""Class activation maps: where in a conv layer's feature maps the target class's
evidence lies. Three ways to weigh the feature maps ``A`` (channels k, positions ij)
by the gradient ``g = dS/dA`` of the target's logit ``S``, one function each:

* :func:`gradcam` (Selvaraju et al., ICCV 2017): one weight per channel, the spatial
  mean of ``g``; map = ReLU(sum_k w_k A_k).
* :func:`gradcam_plus_plus` (Chattopadhay et al., WACV 2018): one weight per channel,
  w_k = sum_ij alpha_kij ReLU(g_kij) with alpha = g^2 / (2 g^2 + sum_ab A_kab g^3) (the
  closed form for exp(S), whose higher derivatives are powers of g; alpha = 0 where
  g = 0), so that a few strong positions count as much as a large weak region.
* :func:`layercam` (Jiang et al., IEEE TIP 2021): a weight per position,
  map = ReLU(sum_k ReLU(g_kij) A_kij), which stays sharp on the high-resolution maps
  of earlier layers.

Each map is resized (bilinear) to the input. The sub-model is built from the layers'
symbolic outputs, so models loaded from .keras files work as freshly built ones do.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from visualize.targets import (
    as_images,
    check_per_image,
    class_logit,
    compiled,
    logits_model,
    resolve_head,
    resolve_targets,
)

DEFAULT_BATCH = 64
# XLA off, as for saliency: it recompiles for every batch size (0.74 s for a Grad-CAM
# of 32 images after one of a single image, against 0.01 s without, on the line model).
JIT = False


def conv_layers(model: keras.Model) -> list[str]:
    """Names of the model's Conv2D layers, in order."""
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def check_layer(model: keras.Model, layer: str, *, spatial: bool = True) -> None:
    """A clear error for a layer name that is not in the model (or not spatial)."""
    names = [item.name for item in model.layers]
    if layer not in names:
        convs = conv_layers(model)
        raise ValueError(
            f"unknown layer {layer!r}; this model's conv layers are {', '.join(convs) or 'none'} "
            f"(all layers: {', '.join(names)})."
        )
    if spatial and len(model.get_layer(layer).output.shape) != 4:
        shape = tuple(model.get_layer(layer).output.shape)
        raise ValueError(
            f"layer {layer!r} has output shape {shape}, not feature maps; choose a conv layer: "
            f"{', '.join(conv_layers(model))}."
        )


def default_layer(model: keras.Model) -> str:
    """The last layer with feature maps (4-D output) from the last conv layer on: with
    ``conv bn relu`` blocks the rectified maps (``relu3``), as Grad-CAM intends."""
    convs = conv_layers(model)
    if not convs:
        raise ValueError("this model has no conv layer; Grad-CAM, activations and filters need one.")
    names = [layer.name for layer in model.layers]
    after = names[names.index(convs[-1]) :]
    return [name for name in after if len(model.get_layer(name).output.shape) == 4][-1]


def _weighted(rule: str, features, gradients):
    """The feature maps weighted by the gradient as ``rule`` says, summed over channels
    (B, h, w, 1), before the ReLU."""
    if rule == "gradcam":
        weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    elif rule == "gradcam++":
        squared, total = tf.square(gradients), tf.reduce_sum(features, axis=[1, 2], keepdims=True)
        alpha = tf.math.divide_no_nan(squared, 2.0 * squared + total * squared * gradients)  # 0 where g = 0
        weights = tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=[1, 2], keepdims=True)
    else:  # layercam: a weight per position
        weights = tf.nn.relu(gradients)
    return tf.reduce_sum(weights * features, axis=-1, keepdims=True)


def _cam_function(model: keras.Model, head: str, layer: str, shape, rule: str):
    explained = logits_model(model, head, [layer])

    @tf.function(
        jit_compile=JIT,
        input_signature=[tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec([None], tf.int32)],
    )
    def cam(batch, chosen):
        with tf.GradientTape() as tape:
            features, logits = explained(batch, training=False)
            tape.watch(features)
            score = class_logit(logits, chosen)
        gradients = tape.gradient(score, features)
        maps = tf.nn.relu(_weighted(rule, features, gradients))
        return tf.image.resize(maps, shape[:2], method="bilinear")[..., 0]

    return cam


def gradcam(
    model: keras.Model,
    images,
    *,
    head: str | None = None,
    target=None,
    layer: str | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """Grad-CAM maps at input resolution, float32 (N, H, W), not normalised (>= 0).

    Args:
        model, images, head, target: see ``visualize.targets``.
        layer: a layer with feature maps (default: :func:`default_layer`, e.g. ``relu3``).
        batch_size: images per compiled call (the maps do not depend on it).
    """
    return _class_activation_maps("gradcam", model, images, head, target, layer, batch_size)


def gradcam_plus_plus(
    model: keras.Model,
    images,
    *,
    head: str | None = None,
    target=None,
    layer: str | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """Grad-CAM++ maps at input resolution, float32 (N, H, W), >= 0 (arguments as
    :func:`gradcam`)."""
    return _class_activation_maps("gradcam++", model, images, head, target, layer, batch_size)


def layercam(
    model: keras.Model,
    images,
    *,
    head: str | None = None,
    target=None,
    layer: str | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """LayerCAM maps at input resolution, float32 (N, H, W), >= 0 (arguments as
    :func:`gradcam`; an earlier layer gives a sharper map)."""
    return _class_activation_maps("layercam", model, images, head, target, layer, batch_size)


def _class_activation_maps(rule, model, images, head, target, layer, batch_size) -> np.ndarray:
    images = as_images(images)
    head = resolve_head(model, head)
    check_per_image(model)
    layer = layer or default_layer(model)
    check_layer(model, layer)
    targets = resolve_targets(model, images, head, target).astype(np.int32)
    shape = tuple(images.shape[1:])
    cam = compiled(model, (rule, head, layer, shape), lambda: _cam_function(model, head, layer, shape, rule))
    parts = [
        cam(
            tf.constant(images[start : start + batch_size]), tf.constant(targets[start : start + batch_size])
        ).numpy()
        for start in range(0, images.shape[0], batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)
